"""Checkpoints that let an interrupted run continue exactly: atomic files, RNG states, identity.

A checkpoint is one file holding whatever its loop needs to continue (learned tensors or
model weights, optimiser, scheduler, grad scaler, position) plus the RNG states of Python,
NumPy and torch and the identity of the run that wrote it. It is written to a temporary file
in the same folder and moved into place, so a process killed at any moment leaves the previous
checkpoint or the new one, never a torn file. The training loop and the world's pretraining
both use these pieces.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from mudpt.core.errors import CorruptFileError
from mudpt.core.files import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2

__all__ = ["CHECKPOINT_NAME", "capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint"]


def capture_rng_state() -> dict:
    """RNG states of Python, NumPy, torch (CPU) and CUDA when in use."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
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


def save_checkpoint(path: str | Path, payload: dict, identity: dict) -> Path:
    """Atomically write ``payload`` (plus the RNG states and the run's ``identity``, a JSON-able
    dict the caller compares on load) to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "identity": identity, "rng": capture_rng_state(), **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint at ``path``, or ``None`` when there is none; an unreadable or foreign file
    is a :class:`~mudpt.core.errors.CorruptFileError` saying what to do."""
    path = Path(path)
    if not path.is_file():
        return None
    advice = f"Delete {path} to start that run from scratch (its finished epochs are lost)."
    try:
        # RNG states hold NumPy arrays and tuples, so the full unpickler is needed; the file is
        # one this package wrote into the user's own run folder.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CorruptFileError(f"The checkpoint {path} cannot be read ({type(err).__name__}: {err}). {advice}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CorruptFileError(f"The checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT} "
                               f"(written by another mudpt version?). {advice}")
    return payload
