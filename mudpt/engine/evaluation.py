"""Evaluation: top-1 accuracy, macro-F1 and per-class accuracy of a method on a dataset split.

The method is put in eval mode under ``torch.no_grad()``, so methods whose text side does not
depend on the image compute their class text features once for the whole pass (the core's
caching) instead of once per batch. With DDP, each rank evaluates an interleaved shard of the
split and the predictions are gathered, so the metrics equal a single-process evaluation.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from mudpt.core.errors import ConfigError, UnwritableError
from mudpt.core.files import atomic_write_json
from mudpt.engine import distributed as D
from mudpt.core.vocabulary import PRECISIONS, SUBSAMPLES

SPLITS = ("train", "val", "test")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's GPU when CUDA is available, else CPU."""
    if isinstance(device, torch.device):
        return device
    device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device!r} was asked for but no CUDA GPU is visible here; use 'cpu' or "
                              "'auto'.", field="device")
        if device == "cuda":
            return torch.device("cuda", local_rank % count)
        index = int(device[5:])
        if index >= count:
            raise ConfigError(f"device={device!r}: this machine has {count} visible GPU(s), numbered 0 to "
                              f"{count - 1}.", field="device")
        return torch.device("cuda", index)
    raise ConfigError(f"device={device!r} is not one of 'auto', 'cpu', 'cuda' or 'cuda:N'.", field="device")


def effective_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision a device runs well, and a note when it differs from the request.

    fp16 autocast on a CPU is exact but about 20x slower than fp32 (measured: 304 s against
    13.6 s for one ViT-B/16 step), so fp16 (the published presets' precision, meant for GPUs)
    runs as fp32 on CPUs; bf16 runs as fp32 on GPUs without bf16 support.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}.", field="precision")
    if device.type == "cpu" and precision == "fp16":
        return "fp32", ("precision fp16 (mixed precision for GPUs) runs as fp32 on this CPU: fp16 autocast on a "
                        "CPU is about 20x slower; choose bf16 for reduced precision on a CPU")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp32", f"precision bf16 runs as fp32: GPU {torch.cuda.get_device_name(device)} has no bf16 support"
    return precision, None


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for the precision the device runs (:func:`effective_precision`);
    a null context for fp32."""
    precision, _ = effective_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


# ---------------------------------------------------------------------- metrics


def compute_metrics(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> dict:
    """Top-1 accuracy, macro-F1 (percent) and per-class accuracy from hard predictions.

    Macro-F1 averages over the classes present in the labels or the predictions (as
    scikit-learn's ``f1_score(average="macro")`` that the reference uses). Per-class accuracy
    is ``None`` for a class with no test item.
    """
    preds = torch.as_tensor(list(predictions), dtype=torch.long)
    gold = torch.as_tensor(list(labels), dtype=torch.long)
    n = int(gold.numel())
    if n == 0:
        raise ValueError("Cannot compute metrics on an empty split (0 items).")
    correct = preds == gold
    accuracy = 100.0 * correct.double().mean().item()
    support = torch.bincount(gold, minlength=num_classes)[:num_classes]
    hits = torch.bincount(gold[correct], minlength=num_classes)[:num_classes]
    predicted = torch.bincount(preds.clamp(0, num_classes - 1), minlength=num_classes)[:num_classes]
    per_class = [
        (100.0 * hits[c].item() / support[c].item()) if support[c] > 0 else None
        for c in range(num_classes)
    ]
    f1s = []
    for c in range(num_classes):
        if support[c] == 0 and predicted[c] == 0:
            continue
        tp = hits[c].item()
        denom = support[c].item() + predicted[c].item()
        f1s.append(2.0 * tp / denom if denom else 0.0)
    macro_f1 = 100.0 * sum(f1s) / len(f1s)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "per_class_accuracy": per_class, "n": n}


class _IndexedSubset(torch.utils.data.Dataset):
    """A shard of a dataset that also returns each item's global index."""

    def __init__(self, base, indices: Sequence[int]):
        self.base = base
        self.indices = list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        image, label = self.base[index]
        return image, label, index


def predict_items(method: torch.nn.Module, items: Sequence, transform, *, batch_size: int = 100,
                  precision: str = "fp32", device: torch.device | str = "auto", num_workers: int = 0,
                  progress: bool = True, desc: str = "eval", dist_info: D.DistInfo | None = None) -> tuple[list[int], list[int]]:
    """Predicted and true labels for ``items`` (in item order), sharded across DDP ranks."""
    from mudpt.data import ImageDataset

    info = dist_info or D.DistInfo()
    device = resolve_device(device, info.local_rank)
    dataset = ImageDataset(list(items), transform)
    shard = _IndexedSubset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = method.training
    method.eval()
    results: list[tuple[int, int, int]] = []
    bar = _progress(loader, progress and info.is_main, desc)
    correct = seen = 0
    try:
        with torch.no_grad():
            for images, labels, indices in bar:
                images = images.to(device, non_blocking=True)
                with autocast_context(device, precision):
                    logits = method(images)
                preds = logits.float().argmax(dim=1).cpu()
                results.extend(zip(indices.tolist(), preds.tolist(), labels.tolist()))
                correct += int((preds == labels).sum())
                seen += len(labels)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(acc=f"{100.0 * correct / max(seen, 1):.2f}")
    finally:
        method.train(was_training)
    gathered = [row for part in D.all_gather_objects(results, info) for row in part]
    gathered.sort(key=lambda row: row[0])
    return [row[1] for row in gathered], [row[2] for row in gathered]


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def evaluate_method(method: torch.nn.Module, items: Sequence, transform, classnames: Sequence[str], **kwargs) -> dict:
    """Metrics of ``method`` on ``items`` (the method's class names must match ``classnames``)."""
    preds, labels = predict_items(method, items, transform, **kwargs)
    metrics = compute_metrics(preds, labels, len(classnames))
    metrics["classnames"] = list(classnames)
    return metrics


# ---------------------------------------------------------------------- the public API


def evaluate(method_or_run_dir: Any, dataset: str | None = None, root: str | None = None,
             subsample: str = "all", split: str = "test", batch_size: int = 100,
             precision: str = "fp32", progress: bool = True, device: str = "auto",
             num_workers: int = 0, save: bool = True) -> dict:
    """Evaluate a trained run folder or an in-memory method on a dataset split.

    ``method_or_run_dir``: a run folder written by :func:`mudpt.engine.train` (the method is
    rebuilt from its saved config and learned state) or a method module. ``dataset`` defaults to
    the run's own; another dataset's name re-targets the method to that dataset's class names
    (cross-dataset transfer); ``subsample="new"`` evaluates on the new classes of base-to-new,
    which needs a run trained on the base classes (a run trained on all classes has seen them:
    that is an error, not a "new-class" number). For a run folder the metrics are also saved
    to ``<run>/evaluations/<dataset>__<subsample>__<split>.json``, with the evaluated data's
    fingerprint and the precision used.

    Returns ``dict(accuracy, macro_f1, per_class_accuracy, n, classnames, ...)`` (percentages).
    """
    import mudpt.data

    if subsample not in SUBSAMPLES:
        raise ConfigError(f"subsample={subsample!r} is not one of {', '.join(SUBSAMPLES)}.", field="subsample")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}.", field="split")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer of at least 1.", field="batch_size")
    run_dir = None
    shots, seed = 0, 1
    dev = resolve_device(device)
    if isinstance(method_or_run_dir, (str, Path)):
        from mudpt.engine.runs import load_run_method, run_dataset

        run_dir = Path(method_or_run_dir)
        method, cfg = load_run_method(run_dir, device=dev)
        trained_on = run_dataset(run_dir, cfg)  # resolved when it was trained, not from here
        # one dataset however it is spelled (data/tiny, ./data/tiny, /abs/data/tiny)
        identity = mudpt.data.dataset_identity
        same_dataset = dataset is None or identity(dataset) == identity(trained_on)
        if same_dataset:
            dataset = trained_on
            shots, seed = cfg.shots, cfg.seed
            if subsample == "new" and cfg.subsample != "base":
                raise ConfigError(
                    f"the run in {run_dir} was trained on {cfg.subsample} classes of {cfg.dataset!r} "
                    f"(subsample={cfg.subsample!r}), so its 'new' classes are classes it trained on; a new-class "
                    "accuracy needs a run trained on the base classes (subsample='base')", field="subsample")
        root = root if root is not None else cfg.root
    elif isinstance(method_or_run_dir, torch.nn.Module):
        method = method_or_run_dir
        if dataset is None:
            raise ConfigError("evaluate(method, ...) needs dataset=<name or path> for an in-memory method.",
                              field="dataset")
        method.to(dev)
    else:
        raise TypeError(f"evaluate() takes a run folder or a method module, got {type(method_or_run_dir).__name__}.")

    from mudpt.engine.config import check_dataset_name

    check_dataset_name(dataset)
    data = mudpt.data.load_dataset(dataset, root=root, shots=shots if split != "test" else 0,
                                   seed=seed, subsample=subsample)
    if run_dir is None or not same_dataset:
        method.use_dataset(str(dataset))
    if list(method.classnames) != list(data.classnames):
        method.set_classnames(list(data.classnames))
    items = getattr(data, split)
    notes = _changed_since_training(run_dir, data, items) if run_dir is not None and same_dataset else []
    if not items:
        raise ConfigError(f"Dataset {dataset!r} (subsample={subsample}) has no {split} items to evaluate on.",
                          field="subsample")
    transform = _test_transform(method)
    used, _ = effective_precision(precision, dev)
    metrics = evaluate_method(method, items, transform, data.classnames, batch_size=batch_size,
                              precision=used, device=dev, num_workers=num_workers,
                              progress=progress, desc=f"eval {dataset}/{subsample}")
    metrics.update(dataset=str(dataset), subsample=subsample, split=split, precision=used,
                   data_fingerprint=dict(data.fingerprint), notes=notes)
    if run_dir is not None and save:
        from mudpt.engine.runs import EVALUATIONS_DIR, RunLock, record_files

        name = f"{EVALUATIONS_DIR}/{evaluation_key(dataset, subsample, split)}.json"
        try:
            with RunLock(run_dir, shared=True):
                atomic_write_json(run_dir / name, metrics)
                record_files(run_dir, name)
        except UnwritableError as error:  # a finished run on a read-only share: the numbers, not the record
            metrics["notes"] = list(metrics.get("notes", [])) + [f"the evaluation was not saved: {error}"]
    return metrics


def _changed_since_training(run_dir: Path, data, items) -> list[str]:
    """Notes when the run's own dataset changed since it trained (its listing digest differs); a
    :class:`ConfigError` when the evaluated images include images the run trained on (a test
    accuracy on them is not one)."""
    from mudpt.engine.runs import read_run_record, relative_paths, trained_images

    record = read_run_record(run_dir) or {}
    trained_content = ((record.get("identity") or {}).get("data") or {}).get("content")
    if not trained_content or trained_content == data.fingerprint.get("content"):
        return []
    note = (f"the dataset changed since the run in {run_dir} trained on it (images added, removed or renamed: its "
            "listing's digest differs), so this is not the split the run was tested on")
    trained = trained_images(run_dir)
    if trained:
        seen = [path for path in relative_paths(items, data.dataset_dir) if path in trained]
        if seen:
            raise ConfigError(
                f"{note}; {len(seen)} of the {len(items)} images to evaluate were training images of this run "
                f"(e.g. {seen[0]}), so an accuracy on them would not be a test accuracy. Restore the dataset as it "
                "was, or train again on the changed one.", field="dataset")
    return [note]


def evaluation_key(dataset: str, subsample: str, split: str) -> str:
    """File-name-safe key of one evaluation of a run: a registered dataset's name; a path's folder
    or file name with a digest of its resolved location, so that two datasets of the same name in
    different places never share (and overwrite) a record."""
    import hashlib

    import mudpt.data

    identity = mudpt.data.dataset_identity(dataset)
    text, digest = identity, ""
    if "/" in identity or "\\" in identity:  # a bring-your-own path
        text = Path(identity.rstrip("/\\")).name
        digest = "-" + hashlib.sha256(identity.encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"
    return f"{name}{digest}__{subsample}__{split}"


def _test_transform(method: torch.nn.Module):
    """The backbone's test transform (the data layer's single definition)."""
    from mudpt.data import build_transform

    clip = getattr(method, "clip", None)
    if clip is None:
        raise AttributeError("The method has no .clip backbone to take the test transform from.")
    return build_transform(clip, train=False)
