"""Run folders: their identity, their lock, the files they own, and rebuilding their method.

A run folder (``output_dir``) holds:

- ``config.json``   the resolved :class:`TrainConfig` (written first)
- ``run.json``      the run's identity and the manifest of the files it wrote
- ``log.txt``       a readable log: config, data, per-epoch loss / accuracy / lr, test result, timings
- ``metrics.jsonl`` one JSON line per logged step and per epoch
- ``checkpoint.pt`` the latest per-epoch checkpoint (removed once the run has finished)
- ``learned.safetensors`` + ``learned.json``  the final learned state (``mudpt.save_learned``)
- ``results.json``  final test metrics, config, identity and timings (its presence = run finished)
- ``evaluations/``  later evaluations by ``mudpt eval`` (other datasets, new classes)

**Identity.** A run is what it learned from (:class:`~mudpt.engine.identity.RunIdentity`): a
folder is reused (resumed, or reported as finished) only for the same identity.

**Lock.** While a process writes a run folder it holds an OS lock on ``<run>/.lock`` (``flock``;
the OS releases it when the process ends, even by ``kill -9``, so a lock is never stale). A
second writer is refused with the holder's pid; evaluations of a finished run share the lock.

**Manifest.** ``run.json`` lists every file the run wrote; overwriting a run removes exactly
those (a user's own files in the folder are kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch

from mudpt.core.errors import (CorruptFileError, MissingFileError, RunFolderError, RunInUseError, UserError,
                               unwritable)
from mudpt._version import __version__
from mudpt.core.files import atomic_write_json, not_there
from mudpt.engine.config import TrainConfig, read_config
from mudpt.engine.identity import RunIdentity, describe_differences

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not locked
    fcntl = None

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
SAMPLE_FILE = "sample.json"  # the training images (relative paths): eval refuses test images among them
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
LEARNED_STEM = "learned"
LOCK_FILE = ".lock"
MANIFEST_LOCK = ".manifest.lock"
EVALUATIONS_DIR = "evaluations"
RUN_FORMAT = "mudpt-run/1"
# The files every run writes (listed in its manifest from the start; also what overwriting a
# folder written before manifests existed removes).
OWN_FILES = (RUN_FILE, CONFIG_FILE, LOG_FILE, METRICS_FILE, "checkpoint.pt", f"{LEARNED_STEM}.json",
             f"{LEARNED_STEM}.safetensors", RESULTS_FILE, SAMPLE_FILE)


def relative_paths(items, base) -> list[str]:
    """Image paths relative to the dataset folder ``base`` (absolute where outside it)."""
    base = os.path.abspath(str(base)) if base is not None else None
    out = []
    for item in items:
        path = os.path.abspath(item.path)
        out.append(os.path.relpath(path, base) if base and path.startswith(base + os.sep) else path)
    return out


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / RESULTS_FILE).is_file()


def read_json(path: Path, what: str) -> dict:
    """A JSON object written by this package; a clear error when it is missing or torn."""
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist ({what}).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); it is the {what}.") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} must hold a JSON object (the {what}).")
    return data


def read_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: the run in {run_dir} has not finished (train it again "
                               "with the same config to resume it).")
    return read_json(path, f"results of the run in {run_dir}")


# ---------------------------------------------------------------------- lock


class RunLock:
    """An OS lock on a run folder: exclusive for a writer, shared for evaluations."""

    def __init__(self, run_dir: str | Path, shared: bool = False, what: str = "training"):
        self.run_dir, self.shared, self.what = Path(run_dir), shared, what
        self._fd = None

    def __enter__(self) -> "RunLock":
        if fcntl is None:
            return self
        path = self.run_dir / LOCK_FILE
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if not self.shared:
                raise unwritable(self.run_dir, error, "the run folder") from None
            # reading a finished run needs no write access (a read-only share): a read-only lock
            # where the lock file exists, else none (nobody can write a folder nobody can write)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return self
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"process {info['pid']} ({info['what']}, since {info['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another process (evaluating it)"
            raise RunInUseError(
                f"The run folder {self.run_dir} is in use by {who}: two processes writing one run folder would "
                "corrupt it. Wait for that process to finish, stop it, or use another output folder.",
                field="output_dir") from None
        if not self.shared:
            record = json.dumps({"pid": os.getpid(), "what": self.what,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------- manifest


@contextlib.contextmanager
def _manifest_lock(run_dir: Path):
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(run_dir / MANIFEST_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:  # the manifest is about to be written: that needs write access
        raise unwritable(run_dir, error, "the run folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_run_record(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RUN_FILE
    return read_json(path, f"record of the run in {run_dir}") if path.is_file() else None


def start_run_record(run_dir: Path, identity: RunIdentity, dataset: Optional[str] = None) -> None:
    """``run.json``: the identity, the manifest and ``dataset``: the dataset argument resolved
    (a path made absolute), so that evaluating from another directory reads the same data."""
    atomic_write_json(run_dir / RUN_FILE, {"format": RUN_FORMAT, "mudpt_version": __version__,
                                           "identity": identity.to_dict(), "files": list(OWN_FILES),
                                           **({"dataset": dataset} if dataset is not None else {})})


def write_sample(run_dir: Path, dataset) -> None:
    """``sample.json``: the run's training images, so that an evaluation of changed data can
    refuse test images the run trained on."""
    atomic_write_json(run_dir / SAMPLE_FILE, {"train": relative_paths(dataset.train, dataset.dataset_dir)})


def trained_images(run_dir: str | Path) -> Optional[set]:
    """The run's training images as :func:`write_sample` kept them (None: not kept)."""
    path = Path(run_dir) / SAMPLE_FILE
    return set(read_json(path, f"training sample of the run in {run_dir}")["train"]) if path.is_file() else None


def run_dataset(run_dir: str | Path, cfg) -> str:
    """The dataset a run trained on, as an argument that reads the same data from any directory:
    the resolved one its record keeps, else (a run written before it was kept) its config's."""
    record = read_run_record(run_dir) or {}
    return str(record.get("dataset") or cfg.dataset)


def record_files(run_dir: str | Path, *names: str) -> None:
    """Add files (paths relative to the run folder) to the run's manifest."""
    run_dir = Path(run_dir)
    with _manifest_lock(run_dir):
        record = read_run_record(run_dir)
        if record is None:
            return
        files = list(record.get("files", []))
        added = [n for n in names if n not in files]
        if added:
            record["files"] = files + added
            atomic_write_json(run_dir / RUN_FILE, record)


def clear_run_dir(run_dir: Path) -> list[str]:
    """Remove the files the run wrote (its manifest), and only those; returns them."""
    record = None
    try:
        record = read_run_record(run_dir)
    except UserError:
        pass  # a torn record: fall back to the files every run writes
    names = list(record.get("files", [])) if record else list(OWN_FILES)
    removed = []
    for name in names:
        path = (run_dir / name).resolve()
        if run_dir.resolve() not in path.parents:
            continue  # a manifest only names files inside its folder
        if path.is_file():
            path.unlink()
            removed.append(name)
    for folder in {Path(n).parts[0] for n in names if len(Path(n).parts) > 1}:
        with contextlib.suppress(OSError):
            (run_dir / folder).rmdir()  # only when empty: a user's files stay
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return removed


# ---------------------------------------------------------------------- preparing a folder


def prepare_run_dir(cfg: TrainConfig, identity: RunIdentity, on_mismatch: str = "error") -> str:
    """Check ``cfg.output_dir`` and say what to do: ``"fresh"``, ``"resume"`` or ``"finished"``.

    A folder of another run (any identity entry differs) or with files that are not a run's is
    an error naming the differences, unless ``cfg.overwrite`` (always start again) or
    ``on_mismatch="overwrite"`` (start again only when the identity differs); either way only the
    files the run wrote are removed.
    """
    run_dir = Path(cfg.output_dir)
    if cfg.overwrite and run_dir.exists():
        clear_run_dir(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        foreign = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir.is_dir() else []
        if foreign and not (cfg.overwrite or on_mismatch == "overwrite"):
            raise RunFolderError(
                f"The output folder {run_dir} already holds files that are not a mudpt run "
                f"({', '.join(foreign[:5])}{'...' if len(foreign) > 5 else ''}). Choose an "
                f"empty or new output folder, or overwrite to write the run there anyway "
                f"(only the run's own files are replaced).", field="overwrite")
        return "fresh"
    try:
        saved_cfg = read_config(run_dir / CONFIG_FILE)
        record = read_run_record(run_dir)
    except UserError as err:
        if on_mismatch == "overwrite":
            clear_run_dir(run_dir)
            return "fresh"
        raise RunFolderError(f"The run folder {run_dir} has an unreadable record ({err}); overwrite the run to "
                             "start it again.", field="overwrite") from None
    if record is not None and "identity" in record:
        differences = RunIdentity.from_dict(record["identity"]).diff(identity)
    else:  # a folder written before run identities were recorded: compare its config
        differences = RunIdentity.of_config(saved_cfg).diff(RunIdentity.of_config(cfg), parts=("config",))
    if differences:
        if on_mismatch == "overwrite":
            clear_run_dir(run_dir)
            return "fresh"
        raise RunFolderError(
            f"The run folder {run_dir} belongs to another run ({describe_differences(differences)}). Use another "
            f"output folder, or overwrite to replace that run.", field="overwrite")
    return "finished" if is_finished(run_dir) else "resume"


def load_run_method(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a run's trained method from its saved config and learned state: ``(method, cfg)``.

    A folder without its learned state (``learned.json`` + ``learned.safetensors``, written at
    the end of training) is an error naming the missing file: evaluating it would evaluate an
    untrained model.
    """
    from mudpt.core.backbones import load_clip
    from mudpt.methods.learned import load_learned

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"Run folder: {not_there(run_dir, 'folder')}.", field="run")
    cfg = read_config(run_dir / CONFIG_FILE)
    learned = run_dir / LEARNED_STEM
    missing = [str(learned) + suffix for suffix in (".json", ".safetensors") if not Path(str(learned) + suffix).is_file()]
    if missing:
        state = ("it has finished, so the file(s) were removed or never copied" if is_finished(run_dir)
                 else "it has not finished: train it again with the same config to resume it")
        raise MissingFileError(
            f"The run in {run_dir} has no final learned state: {', '.join(missing)} missing ({state}). "
            "Without it the run's trained model cannot be rebuilt.", field="run")
    clip = load_clip(cfg.backbone, pretrained=cfg.pretrained, device=str(device), tokenizer=cfg.tokenizer)
    method = load_learned(str(learned), clip=clip, device=str(device))
    return method.to(device), cfg
