"""The one error type for mistakes a user can make, and its specialisations.

Every mistake a user can fix — an unknown name, a bad option value, a missing or unreadable
file, a corrupt image, weights that cannot be fetched offline, a run folder that belongs to
another run, a loss that diverged — is raised as a :class:`UserError` whose message names the
file, field or value and says what is valid, in library terms. The ``mudpt`` command prints it
as one paragraph and exits with status 2. Any other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in type a caller would expect (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working for them.
"""

from __future__ import annotations

import pickle

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "MissingFileError",
    "RunFolderError",
    "RunInUseError",
    "TrainingDivergedError",
    "UnsafePickleError",
    "UnwritableError",
    "UserError",
    "WeightsUnavailableError",
    "unwritable",
]

_WORKER_PREFIX = "Caught "
_WORKER_MARKER = "Original Traceback (most recent call last):"


def _original_message(message: str) -> str:
    """A message re-raised by a DataLoader worker carries the worker's whole traceback; keep the
    original message (the traceback's last line without the ``module.Class:`` prefix)."""
    if not (message.startswith(_WORKER_PREFIX) and _WORKER_MARKER in message):
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and " " not in head else last


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what is valid.

    Attributes:
        field: the configuration key or option concerned, when there is one (the command line
            adds the flag that sets it).
    """

    def __init__(self, message: str, *, field: str | None = None):
        message = _original_message(str(message))
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        # Exceptions cross process boundaries (DDP ranks, sweep workers): keep the field.
        return _rebuild, (type(self), str(self), self.field)


def _rebuild(cls, message, field):
    return cls(message, field=field)


class ConfigError(UserError, ValueError):
    """An invalid configuration key, option or value."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a run needs) does not exist."""


class CorruptFileError(UserError, ValueError):
    """A file exists but cannot be read: a corrupt image, cache, checkpoint or weight file."""


class UnsafePickleError(CorruptFileError, pickle.UnpicklingError):
    """A pickle referenced a global other than the allowed data-item class."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights named by a tag could not be fetched (no network, not in the cache)."""


class RunFolderError(UserError, ValueError):
    """A run folder cannot be used for this request (another run, foreign files, locked, partial)."""


class RunInUseError(RunFolderError):
    """Another process holds the run folder's lock (it is training or evaluating that run)."""


class UnwritableError(UserError, OSError):
    """A place the user named cannot be written: read-only, not permitted, full, or a file where a
    folder is needed. Still an ``OSError``, so code that handles those keeps working."""


def unwritable(path, error: OSError, what: str = "") -> UnwritableError:
    """An :class:`UnwritableError` for ``error`` (an ``OSError``) writing ``path``, saying what to do."""
    import errno

    reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "it is on a read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EEXIST: "a file is in the way of a folder", errno.ENOTDIR: "a file is in the way of a folder",
               errno.EISDIR: "it is a folder"}
    reason = reasons.get(error.errno, error.strerror or str(error))
    target = f"{what} {path}" if what else str(path)
    advice = ("free space and run the same command again (what was written before is intact)"
              if error.errno == errno.ENOSPC else "choose a writable place")
    return UnwritableError(f"cannot write {target}: {reason}; {advice}.")


class TrainingDivergedError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""
