"""The engine's sub-commands: ``mudpt train``, ``eval``, ``sweep``, ``report`` and ``predict``.

Each is a thin layer over the Python API of :mod:`mudpt.engine`. Errors that come from the
user's input (unknown names, bad values, a run folder of another run, a diverging loss) are
printed as one paragraph without a traceback and the command exits with status 2; set
``MUDPT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

DEFAULT_OUTPUT = "runs"


def _user_error_types():
    from mudpt.engine.trainer import TrainingDivergedError

    return (ValueError, FileNotFoundError, NotADirectoryError, TrainingDivergedError)


def _guard(handler):
    """Run a handler; print user errors as one paragraph (no traceback) and return 2."""

    @functools.wraps(handler)
    def wrapper(args):
        try:
            return handler(args)
        except _user_error_types() as err:
            if os.environ.get("MUDPT_DEBUG"):
                raise
            print(f"mudpt {args.command}: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"mudpt {args.command}: interrupted (rerun the same command to resume).", file=sys.stderr)
            return 130

    return wrapper


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a comma-separated list of integers, e.g. 1,2,4,8,16") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------- train


def _add_run_options(p: argparse.ArgumentParser, with_data: bool = True) -> None:
    if with_data:
        p.add_argument("--method", help="method name: zsclip, coop, cocoop, vpt, ivlp, maple, mudpt")
        p.add_argument("--dataset", help="dataset name (see docs/DATASETS.md) or path to an image folder / CSV / JSON list")
        p.add_argument("--shots", type=int, help="training images per class (0 = all)")
        p.add_argument("--seed", type=int, help="seed of the few-shot split and of training")
        p.add_argument("--subsample", choices=["all", "base", "new"], help="class subset (base-to-new protocol)")
    p.add_argument("--root", help="data root holding the datasets' folders (default: the world's generated cache)")
    p.add_argument("--backbone", help="open_clip model name (ViT-B-16, ...) or 'world-tiny' (default)")
    p.add_argument("--pretrained", help="open_clip tag or a local weights file (OpenAI .pt, .safetensors, .bin)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size", help="global batch size (split across DDP processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, dest="num_workers", help="data loader worker processes")
    p.add_argument("--eval-batch-size", type=int, dest="eval_batch_size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_items",
                   help="override any config key, e.g. --set warmup_epochs=0 --set method_options.n_ctx=4 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


_FLAG_KEYS = ("method", "dataset", "shots", "seed", "subsample", "root", "backbone", "pretrained", "epochs",
              "batch_size", "lr", "precision", "device", "num_workers", "eval_batch_size")


def _flag_overrides(args) -> dict:
    return {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}


def build_train_config(args):
    """Preset < flags < --set; without --config the method's default preset is used."""
    from mudpt.engine.config import load_config, parse_set_items
    from mudpt.engine.sweep import default_preset

    overrides = _flag_overrides(args)
    overrides.update(parse_set_items(args.set_items))
    preset = args.config
    if preset is None:
        method = overrides.get("method", "mudpt")
        backbone = overrides.get("backbone")
        try:
            preset = default_preset(method, "fewshot", backbone, overrides.get("shots"))
            from mudpt.engine.config import resolve_preset_path

            resolve_preset_path(preset)
        except ValueError:
            preset = None  # e.g. an unknown method: validation below names the valid ones
    if getattr(args, "eval_every_epoch", False):
        overrides["eval_every_epoch"] = True
    if getattr(args, "tensorboard", False):
        overrides["tensorboard"] = True
    if getattr(args, "overwrite", False):
        overrides["overwrite"] = True
    from mudpt.engine.sweep import pretrained_for_backbone

    overrides = pretrained_for_backbone(preset, overrides)
    if preset is not None and args.config is None and os.environ.get("MUDPT_QUIET_PRESET") is None and not args.quiet:
        print(f"[mudpt] using preset {preset} (choose another with --config)", file=sys.stderr)
    cfg = load_config(preset, overrides=overrides)
    if args.output is None and "output_dir" not in overrides:
        cfg.output_dir = os.path.join(DEFAULT_OUTPUT, "train", os.path.basename(str(cfg.dataset).rstrip("/")) or "dataset",
                                      cfg.method, f"shots_{cfg.shots}", f"seed_{cfg.seed}")
    elif args.output is not None:
        cfg.output_dir = args.output
    cfg.validate(check_registries=True)
    return cfg


@_guard
def _cmd_train(args) -> int:
    from mudpt.engine.trainer import train

    cfg = build_train_config(args)
    result = train(cfg, progress=not args.quiet)
    if not args.quiet:
        print(json.dumps({"run_dir": str(result.run_dir), "accuracy": round(result.metrics["accuracy"], 4),
                          "macro_f1": round(result.metrics["macro_f1"], 4)}))
    return 0


# ---------------------------------------------------------------------- eval


@_guard
def _cmd_eval(args) -> int:
    from mudpt.engine.evaluation import evaluate

    metrics = evaluate(args.run, dataset=args.dataset, root=args.root, subsample=args.subsample, split=args.split,
                       batch_size=args.batch_size, precision=args.precision, progress=not args.quiet,
                       device=args.device, num_workers=args.num_workers)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{metrics['dataset']} ({metrics['subsample']}, {metrics['split']}, {metrics['n']} images): "
              f"accuracy {metrics['accuracy']:.2f}%, macro-F1 {metrics['macro_f1']:.2f}")
    return 0


# ---------------------------------------------------------------------- sweep / report / predict


def _parse_config_map(items: list[str]) -> dict:
    mapping = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--config {item!r} must look like METHOD=PRESET, e.g. --config coop=coop/vit_b16_ep50.")
        method, preset = item.split("=", 1)
        mapping[method.strip()] = preset.strip()
    return mapping


@_guard
def _cmd_sweep(args) -> int:
    from mudpt.engine.config import parse_set_items
    from mudpt.engine.sweep import sweep

    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "precision", "device", "num_workers",
                                              "eval_batch_size") if getattr(args, k, None) is not None}
    overrides.update(parse_set_items(args.set_items))
    result = sweep(args.protocol, args.methods, datasets=args.datasets, shots=args.shots, seeds=args.seeds,
                   output=args.output, backbone=args.backbone, pretrained=args.pretrained, root=args.root,
                   configs=_parse_config_map(args.config), overrides=overrides, targets=args.targets,
                   progress=not args.quiet, make_report=not args.no_report, keep_going=args.keep_going)
    if result["failed"]:
        print(f"mudpt sweep: {len(result['failed'])} run(s) failed:", file=sys.stderr)
        for line in result["failed"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


@_guard
def _cmd_report(args) -> int:
    from mudpt.engine.report import report

    paths = report(args.runs_dir, output_dir=args.output, plots=not args.no_plots)
    print(f"{paths['n_runs']} run(s) -> {paths['markdown']}, {paths['csv']}"
          + (f", {len(paths['plots'])} plot(s)" if paths["plots"] else ""))
    if args.print:
        print(paths["markdown"].read_text())
    return 0


@_guard
def _cmd_predict(args) -> int:
    from mudpt.engine.predict import predict

    classnames = _str_list(args.classnames) if args.classnames else None
    outputs = predict(args.run, args.images, topk=args.topk, classnames=classnames, precision=args.precision,
                      device=args.device)
    if args.json:
        print(json.dumps(outputs, indent=2))
        return 0
    for item in outputs:
        print(item["image"])
        for rank, pred in enumerate(item["predictions"], 1):
            print(f"  {rank}. {pred['classname']}  {100.0 * pred['probability']:.2f}%")
    return 0


# ---------------------------------------------------------------------- registration


def register_commands(subparsers) -> None:
    """Add ``train``, ``eval``, ``sweep``, ``report`` and ``predict`` to the ``mudpt`` parser."""
    p = subparsers.add_parser("train", help="train one method on one dataset (resumable; torchrun for DDP)",
                              description="Train a prompt-tuning method. Re-running the same command resumes "
                                          "from the last completed epoch. Defaults: the built-in world "
                                          "(--dataset world_source --backbone world-tiny).")
    p.add_argument("--config", help="preset (e.g. mudpt/vit_b16_ep10, coop/world) or a YAML file")
    p.add_argument("--output", help="run folder (default runs/train/<dataset>/<method>/shots_K/seed_S)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in the output folder")
    p.add_argument("--eval-every-epoch", action="store_true", dest="eval_every_epoch",
                   help="also evaluate on the validation split after every epoch")
    p.add_argument("--tensorboard", action="store_true", help="log to TensorBoard when it is installed")
    _add_run_options(p)
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a trained run (also on another dataset or on new classes)")
    p.add_argument("--run", required=True, help="run folder written by mudpt train")
    p.add_argument("--dataset", help="evaluate on this dataset's classes instead (cross-dataset)")
    p.add_argument("--root", help="data root")
    p.add_argument("--subsample", default="all", choices=["all", "base", "new"])
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=100, dest="batch_size")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0, dest="num_workers")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("sweep", help="run a protocol over methods, datasets, shots and seeds, then report")
    p.add_argument("--protocol", required=True, choices=["fewshot", "base2new", "xd", "dg"])
    p.add_argument("--methods", required=True, type=_str_list, help="comma-separated, e.g. zsclip,coop,mudpt")
    p.add_argument("--datasets", type=_str_list,
                   help="comma-separated training datasets (xd/dg: the source, e.g. imagenet); default: the world's source")
    p.add_argument("--targets", type=_str_list,
                   help="xd/dg: comma-separated evaluation datasets (default: the world's targets / shifts, "
                        "or the published ones for --datasets imagenet)")
    p.add_argument("--shots", type=_int_list, help="default 1,2,4,8,16 (fewshot) or 16")
    p.add_argument("--seeds", type=_int_list, default=[1, 2, 3])
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="sweep folder (default runs)")
    p.add_argument("--config", action="append", default=[], metavar="METHOD=PRESET",
                   help="preset for a method (default: its world preset, or its published one for real backbones)")
    p.add_argument("--no-report", action="store_true", dest="no_report")
    p.add_argument("--keep-going", action="store_true", dest="keep_going",
                   help="when a run fails, go on with the others (exit status 1 at the end)")
    _add_run_options(p, with_data=False)
    p.set_defaults(func=_cmd_sweep)

    p = subparsers.add_parser("report", help="tables (Markdown, CSV) and plots of every finished run in a folder")
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument("--output", help="where to write the report (default RUNS_DIR)")
    p.add_argument("--no-plots", action="store_true", dest="no_plots")
    p.add_argument("--print", action="store_true", help="also print report.md")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser("predict", help="top-k class names with probabilities for image files")
    p.add_argument("--run", required=True, help="run folder written by mudpt train")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--classnames", help="comma-separated class names to predict among instead of the run's")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)
