"""CLI sub-commands of the world: ``mudpt demo`` and ``mudpt world generate|pretrain|list``."""

from __future__ import annotations

import sys


def register_commands(subparsers) -> None:
    """Add ``demo`` and ``world`` to the ``mudpt`` command's sub-parsers."""
    demo = subparsers.add_parser(
        "demo", help="prompt tuning end to end on the built-in world (no download; about a minute on an idle "
                     "2-core CPU)",
        description="Evaluate zero-shot CLIP and tune CoOp and MuDPT (16 shots, base classes) on the "
                    "built-in world with the shipped world-tiny CLIP; print base/new/HM and save a plot. About a "
                    "minute on an idle 2-core CPU, generating the world's data on first use included; a busy "
                    "machine takes longer (the demo says so when it starts).")
    demo.add_argument("--out", default="mudpt-demo", help="output folder (runs, results.json, demo.png)")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run (2 shots, 1 epoch)")
    demo.add_argument("--methods", default=None, help="comma-separated tuned methods (default: coop,mudpt)")
    demo.add_argument("--dataset", default=None, help="world dataset to tune on (default: world_source)")
    demo.add_argument("--shots", type=int, default=None, help="training images per base class (default 16)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default 10)")
    demo.add_argument("--seed", type=int, default=None, help="few-shot and training seed (default 1)")
    demo.add_argument("--pretrained", default=None, help="a world-tiny .safetensors from `mudpt world pretrain`")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    world = subparsers.add_parser("world", help="the built-in synthetic world: datasets and the tiny CLIP",
                                  description="Generate the built-in world's datasets, pretrain its tiny CLIP, list "
                                              "them.")
    sub = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND")

    generate = sub.add_parser("generate", help="write the world's datasets (benchmark layout) to a folder",
                              description="Write the world's datasets in the benchmark layout (as CoOp-style "
                                          "dataset folders) under a root folder.")
    generate.add_argument("--out", default=None, help="root folder (default: the cache, see `mudpt world list`)")
    generate.add_argument("--seed", type=int, default=0, help="world seed (default 0, the one the datasets use)")
    generate.add_argument("--scale", default="default", choices=("default", "small"),
                          help="images per class: default, or small (tests)")
    generate.add_argument("--datasets", default=None, help="comma-separated names (default: all)")
    generate.set_defaults(func=_generate)

    pretrain = sub.add_parser("pretrain", help="pretrain the tiny CLIP contrastively on the world's captions",
                              description="Pretrain world-tiny contrastively on generated captioned scenes "
                                          "(resumable; --steps reproduces a recipe).")
    pretrain.add_argument("--out", required=True, help="output folder (world-tiny.safetensors + .json, checkpoint)")
    budget = pretrain.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="time budget; the step count is fixed from measured speed")
    budget.add_argument("--steps", type=int, help="exact number of steps (reproduces a recipe)")
    pretrain.add_argument("--stop-at", type=int, default=None,
                          help="with --steps: stop at this step of the schedule (reproduces a snapshot)")
    pretrain.add_argument("--seed", type=int, default=0, help="seed of the data stream and the init (default 0)")
    pretrain.add_argument("--batch-size", type=int, default=None, help="captions per step (default 256)")
    pretrain.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 5e-4)")
    pretrain.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 100)")
    pretrain.add_argument("--init-from", default=None,
                          help="checkpoint.pt of an earlier run to continue (a second stage, fresh schedule)")
    pretrain.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    pretrain.add_argument("--checkpoint-minutes", type=float, default=5.0,
                          help="minutes between checkpoints (default 5)")
    pretrain.set_defaults(func=_pretrain)

    listing = sub.add_parser("list", help="list the world's datasets and where they are cached",
                             description="List the world's datasets and the cache folder they are generated in.")
    listing.set_defaults(func=_list)
    world.set_defaults(func=lambda args: (world.print_help(), 2)[1])


def _demo(args) -> int:
    from mudpt.world.demo import DemoSettings, run_demo

    changes = {}
    if args.methods:
        changes["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for key in ("dataset", "shots", "epochs", "seed", "pretrained"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    settings = DemoSettings.quick(**changes) if args.quick else DemoSettings(**changes)
    run_demo(args.out, settings, progress=not args.no_progress, plot=not args.no_plot)
    return 0


def _generate(args) -> int:
    from mudpt.world.datasets import available_world_datasets, generate_all

    names = [n.strip() for n in args.datasets.split(",")] if args.datasets else None
    unknown = sorted(set(names or []) - set(available_world_datasets()))
    if unknown:
        print(f"mudpt world generate: unknown dataset(s) {unknown}; available: {available_world_datasets()}",
              file=sys.stderr)
        return 2
    root = generate_all(args.out, seed=args.seed, scale=args.scale, names=names, progress=True)
    print(f"world datasets written under {root}")
    return 0


def _pretrain(args) -> int:
    from mudpt.world.pretrain import pretrain

    recipe = pretrain(args.out, minutes=args.minutes, steps=args.steps, seed=args.seed,
                      batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, threads=args.threads,
                      init_from=args.init_from, stop_at=args.stop_at,
                      checkpoint_minutes=args.checkpoint_minutes, progress=True)
    print(f"world-tiny written to {args.out}/world-tiny.safetensors ({recipe['steps_done']} steps); "
          f"zero-shot on the monitor set: {recipe.get('monitor')}")
    print(f"use it with: mudpt demo --pretrained {args.out}/world-tiny.safetensors")
    return 0


def _list(args) -> int:
    from mudpt.world.datasets import WORLD_DATASETS, world_root

    print(f"cache root: {world_root()}  (set $MUDPT_CACHE to move it)")
    for name, dataset in WORLD_DATASETS.items():
        print(f"  {name:<26} {len(dataset.classnames):>3} classes  {dataset.description}")
    return 0
