"""Per-epoch training checkpoints and RNG state capture.

A checkpoint (``checkpoint.pt`` in the run folder) holds everything needed to continue after
the last completed epoch: the learned tensors, the optimiser, the schedule position, the grad
scaler and the RNG states of Python, NumPy and torch. It is written to a temporary file in the
same folder and moved into place with ``os.replace``, so a process killed at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from mudpt.files import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def capture_rng_state() -> dict:
    """RNG states of Python, NumPy, torch (CPU) and CUDA when in use."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            # A different number of visible GPUs: data order does not depend on these states.
            pass


def save_checkpoint(run_dir: str | Path, *, epoch: int, global_step: int, learned: dict,
                    optimizer: torch.optim.Optimizer, scheduler_state: dict,
                    scaler_state: dict | None, config_identity: dict, extra: dict | None = None) -> Path:
    """Atomically write ``checkpoint.pt`` after ``epoch`` completed epochs."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "learned": {k: v.detach().cpu().clone() for k, v in learned.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler_state,
        "scaler": scaler_state,
        "rng": capture_rng_state(),
        "config": config_identity,
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(run_dir: str | Path) -> dict | None:
    """The checkpoint of a run folder, or ``None`` when there is none."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        # RNG states hold NumPy arrays and tuples, so the full unpickler is needed; the file is
        # one this package wrote into the user's own run folder.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RuntimeError(
            f"The checkpoint {path} cannot be read ({type(err).__name__}: {err}). Delete it to "
            f"restart the run from scratch, or rerun with --overwrite."
        ) from None
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"The checkpoint {path} has format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}.")
    return payload
