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

from mudpt.core.errors import MissingFileError, RunFolderError, UserError
from mudpt.engine.config import TrainConfig, read_config

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
LEARNED_STEM = "learned"
RUN_FILES = (CONFIG_FILE, RESULTS_FILE, METRICS_FILE, "checkpoint.pt", f"{LEARNED_STEM}.safetensors",
             f"{LEARNED_STEM}.json", "predictions.json")
RUN_DIRS = ("evaluations", "tensorboard")


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / RESULTS_FILE).is_file()


def read_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: the run in {run_dir} has not finished (train it again "
                               "with the same config to resume it).")
    return json.loads(path.read_text())


def config_differences(saved: TrainConfig, wanted: TrainConfig) -> dict:
    """Fields whose values differ between two configs' identities: {field: (saved, wanted)}."""
    from mudpt.engine.checkpointing import identity_differences

    return identity_differences(saved.identity(), wanted.identity())


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
                f"empty or new output folder, or overwrite to write the run there anyway "
                f"(only the run's own files are replaced).", field="overwrite")
        return "fresh"
    try:
        saved = read_config(config_path)
    except UserError as err:
        raise RunFolderError(f"The run folder {run_dir} has an unreadable {CONFIG_FILE} ({err}); overwrite the "
                             "run to start it again.", field="overwrite") from None
    diffs = config_differences(saved, cfg)
    if diffs:
        listed = "; ".join(f"{k}: folder has {a!r}, this run wants {b!r}" for k, (a, b) in diffs.items())
        raise RunFolderError(
            f"The run folder {run_dir} belongs to another run ({listed}). Use another output "
            f"folder, or overwrite to replace that run.", field="overwrite")
    return "finished" if is_finished(run_dir) else "resume"


def load_run_method(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a run's trained method from its saved config and learned state: ``(method, cfg)``.

    A folder without its learned state (``learned.json`` + ``learned.safetensors``, written at
    the end of training) is an error naming the missing file: evaluating it would evaluate an
    untrained model.
    """
    import mudpt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"Run folder {run_dir} does not exist.", field="run")
    cfg = read_config(run_dir / CONFIG_FILE)
    learned = run_dir / LEARNED_STEM
    missing = [str(learned) + suffix for suffix in (".json", ".safetensors") if not Path(str(learned) + suffix).is_file()]
    if missing:
        state = ("it has finished, so the file(s) were removed or never copied" if is_finished(run_dir)
                 else "it has not finished: train it again with the same config to resume it")
        raise MissingFileError(
            f"The run in {run_dir} has no final learned state: {', '.join(missing)} missing ({state}). "
            "Without it the run's trained model cannot be rebuilt.", field="run")
    clip = mudpt.load_clip(cfg.backbone, pretrained=cfg.pretrained, device=str(device))
    method = mudpt.load_learned(str(learned), clip=clip, device=str(device))
    return method.to(device), cfg
