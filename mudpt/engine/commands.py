"""The engine's sub-commands: ``mudpt train``, ``eval``, ``sweep``, ``report`` and ``predict``.

Each is a thin layer over the Python API of :mod:`mudpt.engine`: flags become overrides of
:func:`~mudpt.engine.config.load_config`, which decides everything else exactly as it does for
a Python caller. User errors are printed by :mod:`mudpt.cli` as one paragraph (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys

from mudpt.core.help import DefaultsHelpFormatter
from mudpt.core.vocabulary import EXPORT_FORMATS, PRECISIONS, PROTOCOLS, SUBSAMPLES

DEFAULT_OUTPUT = "runs"


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a comma-separated list of integers, e.g. 1,2,4,8,16") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------- train


PRESET_DEFAULT = " (default: the preset's value)"
# Sweep flags that are arguments of sweep() rather than overrides of every run's config.
_SWEEP_ARGUMENTS = ("root", "backbone", "pretrained")


def _add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command``'s config fields (generated from ``TrainConfig``'s declarations);
    without a flag the preset's value is used."""
    from mudpt.engine.config import add_setting_flags

    p.set_defaults(setting_flags=add_setting_flags(p, command, PRESET_DEFAULT))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_items",
                   help="override any config key, e.g. --set warmup_epochs=0 --set method_options.n_ctx=4 "
                        "(repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes (the result line is printed)")


def _flag_overrides(args, leave_out: tuple = ()) -> dict:
    return {k: getattr(args, k) for k in args.setting_flags if k not in leave_out and getattr(args, k) is not None}


def build_train_config(args):
    """``load_config(--config, flags + --set)``: the same function the Python API uses."""
    from mudpt.engine.config import load_config, parse_set_items

    overrides = _flag_overrides(args)
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    overrides.update(parse_set_items(args.set_items))
    cfg = load_config(args.config, overrides=overrides)
    if args.config is None and not args.quiet:
        print(f"[mudpt] using preset {cfg.config_name} (choose another with --config)", file=sys.stderr)
    return cfg


def _cmd_train(args) -> int:
    from mudpt.engine.trainer import train

    cfg = build_train_config(args)
    result = train(cfg, progress=not args.quiet, quiet=args.quiet)
    # the command's answer, quiet or not (--quiet silences the progress and the notes only)
    print(json.dumps({"run_dir": str(result.run_dir), "accuracy": round(result.metrics["accuracy"], 4),
                      "macro_f1": round(result.metrics["macro_f1"], 4)}))
    return 0


# ---------------------------------------------------------------------- eval


def _cmd_eval(args) -> int:
    from mudpt.engine.evaluation import evaluate

    metrics = evaluate(args.run, dataset=args.dataset, root=args.root, subsample=args.subsample, split=args.split,
                       batch_size=args.batch_size, precision=args.precision, progress=not args.quiet,
                       device=args.device, num_workers=args.num_workers)
    for note in metrics.get("notes", []):
        print(f"mudpt eval: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{metrics['dataset']} ({metrics['subsample']}, {metrics['split']}, {metrics['n']} images): "
              f"accuracy {metrics['accuracy']:.2f}%, macro-F1 {metrics['macro_f1']:.2f}")
    return 0


# ---------------------------------------------------------------------- sweep / report / predict


def _parse_config_map(items: list[str]) -> dict:
    from mudpt.core.errors import ConfigError

    mapping = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--config {item!r} must look like METHOD=PRESET, e.g. --config coop=coop/vit_b16_ep50.")
        method, preset = item.split("=", 1)
        mapping[method.strip()] = preset.strip()
    return mapping


def _cmd_sweep(args) -> int:
    from mudpt.engine.config import parse_set_items
    from mudpt.engine.sweep import sweep

    from mudpt.engine.launchers import SlurmOptions

    overrides = _flag_overrides(args, leave_out=_SWEEP_ARGUMENTS)
    overrides.update(parse_set_items(args.set_items))
    slurm = None
    if args.launcher == "slurm":
        slurm = SlurmOptions(partition=args.partition, account=args.account, time=args.time,
                             gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb,
                             array_parallelism=args.array_parallelism, sbatch=parse_set_items(args.sbatch),
                             cluster=args.submitit_cluster, wait=not args.no_wait)
    result = sweep(args.protocol, args.methods, datasets=args.datasets, shots=args.shots, seeds=args.seeds,
                   output=args.output, backbone=args.backbone, pretrained=args.pretrained, root=args.root,
                   configs=_parse_config_map(args.config), overrides=overrides, targets=args.targets,
                   progress=not args.quiet and args.workers == 1 and args.launcher == "local",
                   make_report=not args.no_report, keep_going=args.keep_going,
                   on_mismatch="overwrite" if args.rerun_changed else "error", launcher=args.launcher,
                   workers=args.workers, gpus_per_run=args.gpus_per_run, slurm=slurm)
    for run_dir in result["busy"]:
        print(f"mudpt sweep: {run_dir} is being trained by another process; not started twice", file=sys.stderr)
    if result["queued"]:
        print(f"mudpt sweep: {len(result['queued'])} run(s) queued on Slurm; rerun the same command to see them "
              "finished (it submits only what is neither finished nor queued) and to write the report",
              file=sys.stderr)
    if result["failed"]:
        print(f"mudpt sweep: {len(result['failed'])} run(s) failed:", file=sys.stderr)
        for line in result["failed"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args) -> int:
    from mudpt.engine.report import report

    paths = report(args.runs_dir, output_dir=args.output, plots=not args.no_plots,
                   published=False if args.no_published else args.published)
    for warning in paths["warnings"]:
        print(f"mudpt report: warning: {warning}", file=sys.stderr)
    print(f"{paths['n_runs']} run(s) -> {paths['markdown']}, {paths['latex']}, {paths['csv']}"
          + (f", {len(paths['plots'])} plot(s)" if paths["plots"] else ""))
    if args.print:
        print(paths["markdown"].read_text())
    return 0


def _cmd_predict(args) -> int:
    from mudpt.engine.predict import predict

    classnames = _str_list(args.classnames) if args.classnames is not None else None
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


def _cmd_export(args) -> int:
    from pathlib import Path

    from mudpt.core.classnames import read_classnames_file
    from mudpt.engine.export import export_run

    fmt = args.format or {".onnx": "onnx", ".pt2": "torch"}.get(Path(args.out).suffix.lower(), "onnx")
    classes = read_classnames_file(args.classes) if args.classes else None
    result = export_run(args.run, args.out, format=fmt, classnames=classes, precision=args.precision,
                        overwrite=args.overwrite, device=args.device)
    print(f"{fmt} model of {len(result.classnames)} classes -> {result.path} (description: {result.metadata})")
    return 0


def _cmd_interpret(args) -> int:
    from mudpt.engine.runs import load_run_method
    from mudpt.methods.interpret import format_interpretation, interpret_prompts

    from mudpt.core.errors import ConfigError

    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}", field="topk")
    method, _ = load_run_method(args.run, device=args.device)
    entries = interpret_prompts(method, topk=args.topk)
    if args.json:
        print(json.dumps([{"depth": e.depth, "position": e.position, "classname": e.classname, "norm": e.norm,
                           "nearest": [{"token": t, "id": i, "distance": d} for t, i, d in e.nearest]}
                          for e in entries], indent=2))
        return 0
    print(format_interpretation(method, entries))
    return 0


# ---------------------------------------------------------------------- registration


def register_commands(subparsers) -> None:
    """Add ``train``, ``eval``, ``sweep``, ``report``, ``predict`` and ``interpret`` to the ``mudpt`` parser."""
    p = subparsers.add_parser(
        "train", help="train one method on one dataset (resumable; torchrun for DDP)",
        description="Train a prompt-tuning method. Without --config, the method's default preset for the "
                    "backbone is used (the built-in world's without --backbone). Re-running the same command "
                    "resumes from the last completed epoch; a finished run is not retrained.")
    p.add_argument("--config", help="a preset (e.g. mudpt/vit_b16_ep10, coop/world) or a YAML file "
                                    "(default: the method's preset for the backbone)")
    p.add_argument("--output", dest="output_dir",
                   help="run folder (default runs/train/<dataset>/<method>/shots_K/seed_S)")
    _add_run_options(p, "train")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser(
        "eval", help="evaluate a trained run (also on another dataset or on new classes)",
        description="Evaluate a run folder written by `mudpt train` on a split of its own dataset, on its new "
                    "classes (base-to-new) or on another dataset with that dataset's class names "
                    "(cross-dataset). The result is also saved under <run>/evaluations/.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="run folder written by mudpt train")
    p.add_argument("--dataset", help="evaluate on this dataset's classes instead (default: the run's own)")
    p.add_argument("--root", help="data root (default: the run's)")
    p.add_argument("--subsample", default="all", choices=SUBSAMPLES, help="class subset")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate")
    p.add_argument("--batch-size", type=int, default=100, dest="batch_size", help="evaluation batch size")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="mixed precision")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=0, dest="num_workers", help="data loader workers")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser(
        "sweep", help="run a protocol over methods, datasets, shots and seeds, then report",
        description="Run every (dataset, method, shots, seed) of a protocol into <output>/<protocol>/<dataset>/"
                    "<method>/shots_K/seed_S, skipping finished runs, then write the report. Presets are chosen "
                    "per method and protocol for the backbone (the built-in world's without --backbone).")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS, help="the protocol")
    p.add_argument("--methods", required=True, type=_str_list, help="comma-separated, e.g. zsclip,coop,mudpt")
    p.add_argument("--datasets", type=_str_list,
                   help="comma-separated training datasets (xd/dg: the source, e.g. imagenet); default: the "
                        "profile's dataset (the world's world_source)")
    p.add_argument("--targets", type=_str_list,
                   help="xd/dg: comma-separated evaluation datasets (default: the source's registered targets / "
                        "shifts, e.g. the other ten benchmarks or the four ImageNet variants for imagenet)")
    p.add_argument("--shots", type=_int_list, help="comma-separated shot counts (default 1,2,4,8,16 for fewshot, "
                                                   "16 otherwise)")
    p.add_argument("--seeds", type=_int_list, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="sweep folder (default runs)")
    p.add_argument("--config", action="append", default=[], metavar="METHOD=PRESET",
                   help="preset for a method (repeatable; default: the method's preset for the protocol)")
    p.add_argument("--no-report", action="store_true", dest="no_report", help="do not write the report at the end")
    p.add_argument("--keep-going", action="store_true", dest="keep_going",
                   help="when a run fails, go on with the others (exit status 1 at the end)")
    p.add_argument("--rerun-changed", action="store_true", dest="rerun_changed",
                   help="a folder holding a run of other settings (config, data or weights) is trained again "
                        "instead of being refused")
    g = p.add_argument_group("launcher", "where the runs execute (docs/ENGINE.md, 'Launchers')")
    g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: this machine; slurm: one Slurm job per run through submitit")
    g.add_argument("--workers", type=int, default=1,
                   help="local: worker processes, each on its own GPU(s) or share of the CPU cores")
    g.add_argument("--gpus-per-run", type=int, default=1, dest="gpus_per_run",
                   help="GPUs of one run (> 1: the run trains with torchrun / DDP)")
    g.add_argument("--partition", help="slurm: partition")
    g.add_argument("--account", help="slurm: account")
    g.add_argument("--time", default="04:00:00", help="slurm: time limit of one run's job (HH:MM:SS, D-HH:MM:SS or "
                                                      "minutes)")
    g.add_argument("--cpus-per-run", type=int, default=8, dest="cpus_per_run", help="slurm: CPUs of one run's job")
    g.add_argument("--mem-gb", type=int, dest="mem_gb", help="slurm: memory of one run's job in GB")
    g.add_argument("--array-parallelism", type=int, default=64, dest="array_parallelism",
                   help="slurm: how many of the sweep's jobs run at once")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: any other sbatch option, e.g. --sbatch qos=high --sbatch constraint=a100 "
                        "(repeatable)")
    g.add_argument("--submitit-cluster", choices=["slurm", "local"], default="slurm", dest="submitit_cluster",
                   help="slurm: 'local' runs the same jobs with submitit's local executor on this machine")
    g.add_argument("--no-wait", action="store_true", dest="no_wait",
                   help="slurm: submit and return; rerun the command to collect the finished runs")
    _add_run_options(p, "sweep")
    # a run folder of other settings: the sweep's way to replace it (it has no --overwrite)
    p.set_defaults(func=_cmd_sweep, field_flags={"overwrite": "--rerun-changed"})

    p = subparsers.add_parser(
        "report", help="tables (Markdown, LaTeX, CSV) and plots of every finished run in a folder",
        description="Collect every finished run under RUNS_DIR, aggregate over seeds and write report.md, "
                    "report.tex, report.csv and plots, with published numbers beside ours where the package "
                    "records them (the base-to-new averages of the 11 benchmark datasets).")
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder to search for finished runs")
    p.add_argument("--output", help="where to write the report (default: RUNS_DIR)")
    p.add_argument("--no-plots", action="store_true", dest="no_plots", help="tables only")
    p.add_argument("--published", metavar="FILE",
                   help="published numbers to compare with (a YAML file of the package's published.yaml form; "
                        "default: the package's)")
    p.add_argument("--no-published", action="store_true", dest="no_published", help="no published numbers")
    p.add_argument("--print", action="store_true", help="also print report.md")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser(
        "predict", help="top-k class names with probabilities for image files",
        description="Predict the classes of image files with a trained run (or other class names: open-"
                    "vocabulary prediction).", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", "--model", dest="run", required=True,
                   help="run folder written by mudpt train, or a model written by mudpt export (.onnx needs "
                        "onnxruntime)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--topk", type=int, default=5, help="how many classes per image")
    p.add_argument("--classnames", help="comma-separated class names to predict among instead of the run's")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="mixed precision")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=_cmd_predict)

    p = subparsers.add_parser(
        "export", help="a run as a standalone classifier (ONNX, torch.export, merged open_clip weights, a head)",
        description="Export a finished run as one model file mapping preprocessed images to logits over a fixed "
                    "class list, with a JSON beside it (class names, preprocessing, method, config, weights' "
                    "fingerprint, mudpt version). Formats: onnx (onnxruntime), torch (torch.export .pt2), head "
                    "(class embeddings for frozen open_clip: text-side methods), open_clip (a merged state dict: "
                    "methods that update the backbone's weights additively). docs/DEPLOY.md has the details.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="finished run folder written by mudpt train")
    p.add_argument("--out", required=True, help="the model file to write (its JSON goes beside it)")
    p.add_argument("--format", default=None, choices=EXPORT_FORMATS,
                   help="export format (default: from --out's suffix: .onnx, .pt2; else onnx)")
    p.add_argument("--classes", help="a file with one class name per line to export for (open-set methods; default: "
                                     "the run's classes)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"), help="weights and compute of the graph")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (where the graph is traced)")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "interpret", help="the vocabulary tokens nearest to a run's learned text context",
        description="For every learned text context vector of a run (every depth), print the nearest "
                    "vocabulary tokens by Euclidean distance to the token-embedding table (CoOp's "
                    "interpret_prompt.py). Depth 0 is the embedding space; deeper prompts are only indicative.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="run folder written by mudpt train")
    p.add_argument("--topk", type=int, default=5, help="nearest tokens per context vector")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the tokens and distances as JSON")
    p.set_defaults(func=_cmd_interpret)
