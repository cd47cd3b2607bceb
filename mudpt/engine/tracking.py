"""Experiment trackers beside ``metrics.jsonl``: TensorBoard and Weights & Biases.

Both receive the same scalars under the same names, made once by :func:`scalar_metrics` from
the run's metric records: ``step/loss``, ``step/accuracy``, ``step/lr``, ``step/loss_<term>``
(a method's loss terms), ``epoch/loss``, ``epoch/accuracy``, ``epoch/lr``, ``epoch/seconds``,
``epoch/val_accuracy``, and at the end ``test/accuracy``, ``test/macro_f1``. The x-axis is the
global optimiser step.

Weights & Biases: one mudpt run is one W&B run (``name`` = the run's folder path below the
sweep, ``group`` = the sweep), its config the run's; a resumed run continues the same W&B run
(its id is kept in ``<run>/wandb_run_id``). ``WANDB_MODE=offline`` is honoured (the files stay
under ``<run>/wandb/`` for a later ``wandb sync``), as are W&B's other environment variables.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

from mudpt.core.errors import ConfigError

__all__ = ["TensorBoardTracker", "WandbTracker", "scalar_metrics"]

# Record fields that are positions or counts, not metrics.
_NOT_METRICS = frozenset({"kind", "epoch", "step", "global_step", "images", "n"})


def scalar_metrics(record: dict) -> dict:
    """``{"<kind>/<name>": value}`` for every number of a metrics record."""
    kind = record.get("kind", "train")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in _NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardTracker:
    """Scalars to ``<run>/tensorboard`` (torch's ``SummaryWriter``)."""

    folder = "tensorboard"

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard=True needs the tensorboard package, which is not installed "
                              "(pip install tensorboard), or leave TensorBoard logging off",
                              field="tensorboard") from None
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir / self.folder))

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def summary(self, metrics: dict, step: int) -> None:
        self.log(metrics, step)

    def files(self) -> list[str]:
        self.writer.flush()
        return [str(p.relative_to(self.run_dir)) for p in (self.run_dir / self.folder).rglob("*") if p.is_file()]

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Scalars to a Weights & Biases run (see the module docstring)."""

    folder = "wandb"
    id_file = "wandb_run_id"

    def __init__(self, run_dir: Path, project: str, group: Optional[str], name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"wandb={project!r} needs the wandb package, which is not installed (pip install "
                              "wandb, or pip install mudpt[wandb]), or leave Weights & Biases logging off",
                              field="wandb") from None
        from mudpt.core.files import atomic_write

        self.run_dir = Path(run_dir)
        id_path = self.run_dir / self.id_file
        run_id = id_path.read_text().strip() if id_path.is_file() else uuid.uuid4().hex[:12]
        if not id_path.is_file():
            atomic_write(id_path, lambda tmp: Path(tmp).write_text(run_id))
        try:
            # the mode is read here, per run: W&B caches its settings per process at the first init
            self.run = wandb.init(project=project, group=group, name=name, config=config, id=run_id,
                                  resume="allow", dir=str(self.run_dir), reinit="create_new",
                                  mode=os.environ.get("WANDB_MODE") or None)
        except (wandb.errors.UsageError, wandb.errors.CommError) as error:  # no key, no network
            raise ConfigError(
                f"Weights & Biases could not start the online run of project {project!r} ({error}): log in "
                "(wandb login, or set WANDB_API_KEY), or log offline with WANDB_MODE=offline and upload later with "
                "wandb sync, or leave W&B logging off", field="wandb") from None

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)
        for name, value in metrics.items():
            self.run.summary[name] = value

    def files(self) -> list[str]:
        found = [p for p in (self.run_dir / self.folder).rglob("*") if p.is_file()]
        return [self.id_file] + [str(p.relative_to(self.run_dir)) for p in found]

    def close(self) -> None:
        self.run.finish()
