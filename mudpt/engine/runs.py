"""Run folders: what a run folder holds, checking it before (re)using it, rebuilding its method.

A run folder (``output_dir``) holds:

- ``config.json``   the resolved :class:`TrainConfig` (written first)
- ``checkpoint.pt`` the latest per-epoch checkpoint (removed once the run has finished)
- ``metrics.jsonl`` one JSON line per logged step and per epoch
- ``learned.safetensors`` + ``learned.json``  the final learned state (``mudpt.save_learned``)
- ``results.json``  final test metrics, config and timings (its presence = run finished)
- ``evaluations/``  later evaluations by ``mudpt eval`` (other datasets, new classes)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mudpt.engine.config import ConfigError, TrainConfig, read_config

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
LEARNED_STEM = "learned"
RUN_FILES = (CONFIG_FILE, RESULTS_FILE, METRICS_FILE, "checkpoint.pt", f"{LEARNED_STEM}.safetensors",
             f"{LEARNED_STEM}.json", "predictions.json")
RUN_DIRS = ("evaluations", "tensorboard")


class RunFolderError(ValueError):
    """A run folder cannot be used for this config (other run, foreign files)."""


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / RESULTS_FILE).is_file()


def read_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run in {run_dir} has not finished (rerun `mudpt train` with the same arguments to resume it).")
    return json.loads(path.read_text())


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> dict:
    """Fields whose values differ between two configs' identities: {field: (saved, wanted)}."""
    a, b = saved.identity(), wanted.identity()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def clear_run_dir(run_dir: Path) -> None:
    """Remove the files a run writes (only those: other files in the folder are kept)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def prepare_run_dir(cfg: TrainConfig) -> str:
    """Check ``cfg.output_dir`` and say what to do: ``"fresh"``, ``"resume"`` or ``"finished"``.

    A folder with another run's config (different method, backbone, dataset, shots, ...) or with
    files that are not a run's is an error unless ``cfg.overwrite``; with ``overwrite`` the run's
    own files are removed first.
    """
    run_dir = Path(cfg.output_dir)
    if cfg.overwrite and run_dir.exists():
        clear_run_dir(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        foreign = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
        foreign = [n for n in foreign if not n.startswith(".")]
        if foreign and not cfg.overwrite:
            raise RunFolderError(
                f"The output folder {run_dir} already holds files that are not a mudpt run "
                f"({', '.join(sorted(foreign)[:5])}{'...' if len(foreign) > 5 else ''}). Choose an "
                f"empty or new --output folder, or pass --overwrite to write the run there anyway "
                f"(only the run's own files are replaced)."
            )
        return "fresh"
    try:
        saved = read_config(config_path)
    except (ConfigError, json.JSONDecodeError) as err:
        raise RunFolderError(f"The run folder {run_dir} has an unreadable {CONFIG_FILE} ({err}); pass --overwrite to start it again.") from None
    diffs = config_differences(saved, cfg)
    if diffs:
        listed = "; ".join(f"{k}: folder has {a!r}, this run wants {b!r}" for k, (a, b) in diffs.items())
        raise RunFolderError(
            f"The run folder {run_dir} belongs to another run ({listed}). Use another --output "
            f"folder, or pass --overwrite to replace that run."
        )
    return "finished" if is_finished(run_dir) else "resume"


def load_run_method(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a run's trained method from its saved config and learned state: ``(method, cfg)``."""
    import mudpt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run folder {run_dir} does not exist.")
    cfg = read_config(run_dir / CONFIG_FILE)
    learned = run_dir / LEARNED_STEM
    clip = mudpt.load_clip(cfg.backbone, pretrained=cfg.pretrained, device=str(device))
    if learned.with_suffix(".json").is_file():
        method = mudpt.load_learned(str(learned), clip=clip, device=str(device))
    elif is_finished(run_dir):
        # A run without learned tensors (zero-shot CLIP) is rebuilt from its config.
        classnames = read_results(run_dir)["classnames"]
        method = mudpt.create(cfg.method, clip, classnames, **cfg.method_options)
    else:
        raise FileNotFoundError(
            f"The run in {run_dir} has no final learned state ({learned}.safetensors): it has not "
            f"finished. Rerun the same `mudpt train` command to resume it."
        )
    return method.to(device), cfg
