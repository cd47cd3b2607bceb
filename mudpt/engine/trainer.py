"""The training loop (the only one in the package; ``mudpt demo`` uses it too).

As the reference (Dassl): SGD with momentum and weight decay on the method's trainable tensors
only, cross-entropy, a learning rate set once per epoch by Dassl's constant warm-up + cosine
schedule (``torch.optim.lr_scheduler``), test evaluation at the end.

Reproducibility does not depend on the number of processes or on where a run was resumed:
the order of images in epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)``, every global batch is split evenly across DDP ranks, and the random augmentation
of image ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)`` (seeds
derived with ``numpy.random.SeedSequence``). A resumed run and a 2-process run therefore see
exactly the images of an uninterrupted single-process run.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mudpt.core.errors import ConfigError, RunFolderError, TrainingDivergedError, UserError
from mudpt.core.files import atomic_write_json, atomic_write_text
from mudpt.engine import distributed as D
from mudpt.engine.checkpointing import CHECKPOINT_NAME, load_checkpoint, restore_rng_state, save_checkpoint
from mudpt.engine.checkpointing import identity_differences as checkpoint_differences
from mudpt.engine.config import TrainConfig, save_config
from mudpt.engine.evaluation import (autocast_context, compute_metrics, effective_precision, predict_items,
                                     resolve_device)
from mudpt.engine.sampling import RankBatchSampler, SeededAugmentDataset, epoch_batches
from mudpt.engine.runs import (CONFIG_FILE, LEARNED_STEM, LOG_FILE, METRICS_FILE, RESULTS_FILE, RunLock,
                               load_run_method, prepare_run_dir, read_results, record_files, run_identity,
                               start_run_record)
from mudpt.engine.schedules import warmup_cosine
from mudpt.methods.base import FitContext, PromptMethod, StepContext


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, the trained method, its test metrics and
    what happened (``"trained"``, ``"resumed"`` or ``"finished"``: found finished, not retrained)."""

    run_dir: Path
    method: torch.nn.Module
    metrics: dict
    status: str = "trained"


# ---------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class RunLogger:
    """What a run tells: ``metrics.jsonl`` (one JSON line per step and epoch), ``log.txt`` (the
    same, readable, with the config, the data and the timings, as the CoOp family's log.txt),
    optionally TensorBoard and Weights & Biases (``engine/tracking.py``: the same scalars under
    the same names); rank 0 only. Notes (a precision or warm-up the run adjusted) are also
    printed once, unless quiet."""

    def __init__(self, run_dir: Path, enabled: bool, cfg: Optional[TrainConfig] = None, quiet: bool = False):
        from mudpt.engine.tracking import TensorBoardTracker, WandbTracker

        self.run_dir = run_dir
        self.path = run_dir / METRICS_FILE
        self.enabled, self.quiet = enabled, quiet
        self.trackers: list = []
        self.notes: list[str] = []
        self.last_step = 0
        if enabled and cfg is not None and cfg.tensorboard:
            self.trackers.append(TensorBoardTracker(run_dir))
        if enabled and cfg is not None and cfg.wandb:
            self.trackers.append(WandbTracker(run_dir, cfg.wandb, cfg.wandb_group, _tracker_name(cfg),
                                              cfg.to_dict()))

    def keep_epochs_before(self, epoch: int) -> None:
        """On resume: drop lines logged after the checkpoint (the interrupted epoch)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if record.get("epoch", -1) < epoch:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def line(self, text: str) -> None:
        if self.enabled:
            with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {text}\n")

    def note(self, text: str) -> None:
        """Something the run adjusted or the user should know: said once, kept in results."""
        self.notes.append(text)
        self.line(f"note: {text}")
        if self.enabled and not self.quiet:
            print(f"[mudpt] note: {text}", file=sys.stderr)

    def write(self, record: dict) -> None:
        from mudpt.engine.tracking import scalar_metrics

        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if record.get("kind") == "epoch":
            extra = f", val accuracy {record['val_accuracy']:.2f}%" if "val_accuracy" in record else ""
            self.line(f"epoch {record['epoch'] + 1}: loss {record['loss']:.4f}, accuracy {record['accuracy']:.2f}%, "
                      f"lr {record['lr']:.3e}, {record['seconds']:.1f} s{extra}")
        if not self.trackers or record.get("kind") == "resume":
            return
        metrics = scalar_metrics(record)
        self.last_step = int(record.get("global_step", self.last_step))
        for tracker in self.trackers:
            if record.get("kind") == "test":
                tracker.summary(metrics, self.last_step)
            elif "global_step" in record:
                tracker.log(metrics, self.last_step)

    def close_files(self) -> list[str]:
        """The trackers' files so far (relative to the run folder), flushed."""
        return [name for tracker in self.trackers for name in tracker.files()]

    def close(self) -> list[str]:
        """Close the trackers; their files (relative to the run folder), for the run's manifest."""
        for tracker in self.trackers:
            tracker.close()
        return self.close_files()


def _tracker_name(cfg: TrainConfig) -> str:
    """A run's name in a tracker: its folder's last four parts (dataset/method/shots/seed in a sweep)."""
    parts = Path(str(cfg.output_dir)).parts
    return "/".join(parts[-4:]) if parts else cfg.method


def method_config_for(cfg: TrainConfig):
    """The method's typed config for this run: the config's options, adapted to the dataset
    by the method (e.g. zero-shot CLIP takes CoOp's hand-crafted template of a benchmark)."""
    from mudpt.methods import make_config

    return make_config(cfg.method, cfg.method_options).for_dataset(str(cfg.dataset))


def _check_finite(loss: torch.Tensor, epoch: int, step: int, cfg: TrainConfig) -> None:
    if not torch.isfinite(loss).all():
        hint = "" if cfg.precision == "fp32" else f" or train in fp32 (precision fp32 instead of {cfg.precision})"
        kept = (f"The checkpoint of epoch {epoch} is kept." if epoch > 0
                else "No epoch had completed, so no checkpoint exists.")
        raise TrainingDivergedError(
            f"The training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
            f"(lr={cfg.lr}, precision={cfg.precision}). Training diverged: try a lower learning "
            f"rate{hint}. {kept}", field="lr")


def _sync_error(err: BaseException | None, info: D.DistInfo) -> None:
    """Raise on every rank when rank 0 found a problem (so no rank hangs in a collective)."""
    message = D.broadcast_object(None if err is None else err, info)
    if err is not None:
        raise err
    if message is not None:
        raise message if isinstance(message, UserError) else RuntimeError(str(message))


# ---------------------------------------------------------------------- train


def train(cfg: TrainConfig, progress: bool = True, on_mismatch: str = "error", quiet: bool = False) -> RunResult:
    """Train (or resume, or just evaluate) one run described by ``cfg``; see the module doc.

    Re-running with the same config resumes from the last completed epoch; a finished run of
    the same identity is not retrained (its results are returned, ``status="finished"``). A
    folder holding a run of another identity is an error naming the differences, unless
    ``cfg.overwrite`` or ``on_mismatch="overwrite"``. ``zsclip`` has nothing to train and is
    evaluated. Under ``torchrun`` the run is data-parallel over the processes (only rank 0
    writes; it holds the run folder's lock).
    """
    import mudpt
    import mudpt.data

    cfg.validate(check_registries=True, complete=True)
    if cfg.output_dir is None:
        raise ConfigError("output_dir is not set: give the run folder (load_config sets a default one)",
                          field="output_dir")
    if on_mismatch not in ("error", "overwrite"):
        raise ConfigError(f"on_mismatch={on_mismatch!r} is not one of 'error', 'overwrite'", field="on_mismatch")
    device_type = resolve_device(cfg.device).type
    info = D.init_from_env(device_type)
    locks: list = []  # the run folder's lock, once taken (rank 0)
    try:
        return _train(cfg, progress and not quiet, quiet, on_mismatch, info, mudpt, mudpt.data, locks)
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)
        D.shutdown(info)


def _train(cfg: TrainConfig, progress: bool, quiet: bool, on_mismatch: str, info: D.DistInfo, mudpt, data_mod,
           locks: list) -> RunResult:
    device = resolve_device(cfg.device, info.local_rank)
    run_dir = Path(cfg.output_dir)
    if cfg.batch_size % info.world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must be divisible by the number "
            f"of processes ({info.world_size}).", field="batch_size")
    timings: dict = {}
    t0 = time.perf_counter()
    dataset = data_mod.load_dataset(cfg.dataset, root=cfg.root, shots=cfg.shots, seed=cfg.seed,
                                    subsample=cfg.subsample)
    if not dataset.test:
        raise ConfigError(f"Dataset {cfg.dataset!r} (subsample={cfg.subsample}) has no test images: the run could "
                          "train but never be evaluated.", field="dataset")
    method_config = method_config_for(cfg)
    precision, precision_note = effective_precision(cfg.precision, device)
    identity = run_identity(cfg, dataset.fingerprint, dataset.dataset_dir, method_config.to_dict(), precision)

    def lock_and_prepare() -> str:
        state, error = None, None
        if info.is_main:
            try:
                lock = RunLock(run_dir, what=f"training {cfg.method}")
                locks.append(lock.__enter__())
                state = prepare_run_dir(cfg, identity, on_mismatch)
            except RunFolderError as err:
                error = err
        _sync_error(error, info)
        return D.broadcast_object(state, info)

    # An existing folder is checked before anything is built (a finished run is not rebuilt);
    # a new one is created only once the backbone and method could be built, so that a run
    # failing at set-up leaves no folder behind.
    state = lock_and_prepare() if run_dir.exists() else None
    if state == "finished":
        if progress and info.is_main:
            print(f"[mudpt] {run_dir} holds this finished run (same identity): training skipped; test accuracy "
                  f"{read_results(run_dir)['accuracy']:.2f}%")
        method, _ = load_run_method(run_dir, device=device)
        return RunResult(run_dir, method, read_results(run_dir), status="finished")

    seed_everything(cfg.seed)
    clip = mudpt.load_clip(cfg.backbone, pretrained=cfg.pretrained, device=str(device))
    # Seeded again here: building a backbone may reset torch's generator (seeded random init),
    # and the method's own initial tensors must depend on the run's seed only.
    seed_everything(cfg.seed)
    method = mudpt.create(cfg.method, clip, list(dataset.classnames), config=method_config).to(device)
    method.text_chunk = cfg.text_chunk
    needs_training_data = bool(list(method.trainable_parameters())) or type(method).fit is not PromptMethod.fit
    if needs_training_data and not dataset.train:
        raise ConfigError(f"Dataset {cfg.dataset!r} (subsample={cfg.subsample}, shots={cfg.shots}) has no "
                          "training images.", field="dataset")
    timings["setup_seconds"] = time.perf_counter() - t0
    if state is None:
        state = lock_and_prepare()
        if state == "finished":  # another process finished it meanwhile
            return RunResult(run_dir, load_run_method(run_dir, device=device)[0], read_results(run_dir),
                             status="finished")

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state == "fresh":
            start_run_record(run_dir, identity)
            save_config(cfg, run_dir / CONFIG_FILE)
    D.barrier(info)
    log = RunLogger(run_dir, info.is_main, cfg, quiet=quiet)
    if state == "fresh":
        from mudpt.core.backbones import weights_fingerprint

        log.line(f"mudpt {mudpt.__version__}: {cfg.method} on {cfg.dataset}, backbone {cfg.backbone} "
                 f"(weights {weights_fingerprint(cfg.backbone, cfg.pretrained)})")
        log.line("config: " + json.dumps(cfg.to_dict(), sort_keys=True))
        log.line(f"data: {dataset.summary()}" + "".join(f"; {n}" for n in dataset.notes))
    if precision_note:
        log.note(precision_note)

    train_seconds, images_seen = _fit(cfg, method, dataset, clip, device, info, log, progress, data_mod, precision)
    named_params = list(method.trainable_parameters())
    timings["train_seconds"] = train_seconds
    timings["train_images_per_second"] = images_seen / train_seconds if train_seconds > 0 else None

    # The final learned state is written before the test pass: evaluation cannot lose training.
    if info.is_main:
        mudpt.save_learned(method, str(run_dir / LEARNED_STEM))

    t1 = time.perf_counter()
    transform = data_mod.build_transform(clip, train=False)
    preds, labels = predict_items(method, dataset.test, transform, batch_size=cfg.eval_batch_size,
                                  precision=precision, device=device, num_workers=cfg.num_workers,
                                  progress=progress, desc="test", dist_info=info)
    metrics = compute_metrics(preds, labels, len(dataset.classnames))
    timings["eval_seconds"] = time.perf_counter() - t1
    timings["eval_images_per_second"] = len(labels) / timings["eval_seconds"] if timings["eval_seconds"] > 0 else None
    metrics["classnames"] = list(dataset.classnames)
    results = {
        **metrics,
        "dataset": cfg.dataset,
        "subsample": cfg.subsample,
        "split": "test",
        "method": cfg.method,
        "mudpt_version": mudpt.__version__,
        "trainable_parameters": int(sum(p.numel() for _, p in named_params)),
        "learned_values": int(method.num_learned_values()),
        "world_size": info.world_size,
        "precision_used": precision,
        "config": cfg.to_dict(),
        "identity": identity,
        "notes": log.notes,
        "timings": timings,
    }
    if info.is_main:
        log.write({"kind": "test", "epoch": cfg.epochs, "accuracy": metrics["accuracy"],
                   "macro_f1": metrics["macro_f1"], "n": metrics["n"]})
        log.line(f"test: accuracy {metrics['accuracy']:.2f}%, macro-F1 {metrics['macro_f1']:.2f} on {metrics['n']} "
                 f"images; timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if v is not None))
        record_files(run_dir, *log.close())
        atomic_write_json(run_dir / RESULTS_FILE, results)
        # The checkpoint's optimiser state is no longer needed once results exist.
        (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    else:
        log.close()
    D.barrier(info)
    if progress and info.is_main:
        print(f"[mudpt] {cfg.method} on {cfg.dataset} ({cfg.subsample}): test accuracy "
              f"{metrics['accuracy']:.2f}%, macro-F1 {metrics['macro_f1']:.2f} -> {run_dir}")
    return RunResult(run_dir, method, results, status="trained" if state == "fresh" else "resumed")


def effective_warmup(epochs: int, warmup_epochs: int) -> int:
    """Warm-up epochs actually used: at least one epoch always trains at the schedule's rate (a
    1-epoch run with the presets' 1 warm-up epoch would otherwise train only at ``warmup_lr``)."""
    return min(warmup_epochs, epochs - 1)


def _optimizer(cfg: TrainConfig, params: list) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.optimizer_eps)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _fit(cfg, method, dataset, clip, device, info, log, progress, data_mod, precision) -> tuple[float, int]:
    """Fitting (:meth:`PromptMethod.fit`) and the epoch loop; returns (seconds spent, images
    trained on by this process group)."""
    from mudpt.engine.features import FeatureExtractor

    checkpoint_path = Path(cfg.output_dir) / CHECKPOINT_NAME
    checkpoint = load_checkpoint(checkpoint_path)
    extractor = FeatureExtractor(clip, device, precision=precision, batch_size=cfg.eval_batch_size,
                                 num_workers=cfg.num_workers, seed=cfg.seed, dist_info=info)
    fit_context = FitContext(train=list(dataset.train), val=list(dataset.val), image_features=extractor,
                             note=log.note, seed=cfg.seed)
    t_fit = time.perf_counter()
    if checkpoint is None:
        method.fit(fit_context)
    else:
        diffs = checkpoint_differences(checkpoint["identity"], cfg.identity())
        if diffs:
            raise RunFolderError(
                f"The checkpoint {checkpoint_path} was written by a different config "
                f"({', '.join(diffs)} differ); overwrite the run to restart it.", field="overwrite")
        method.load_learned_state_dict(checkpoint["learned"])
    named_params = list(method.trainable_parameters())
    if not named_params:  # fitted in closed form, or nothing to train
        method.on_train_end(fit_context)
        method.eval()
        return time.perf_counter() - t_fit, 0

    params = [p for _, p in named_params]
    optimizer = _optimizer(cfg, params)
    base = data_mod.ImageDataset(list(dataset.train),
                                 data_mod.build_transform(clip, train=True, crop_scale=method.train_crop_scale))
    train_set = SeededAugmentDataset(base, cfg.seed)
    batches_per_epoch = len(epoch_batches(len(train_set), cfg.batch_size, cfg.seed, 0))
    total_steps = batches_per_epoch * cfg.epochs
    warmup = effective_warmup(cfg.epochs, cfg.warmup_epochs)
    if warmup < cfg.warmup_epochs:
        log.note(f"warm-up shortened from {cfg.warmup_epochs} to {warmup} epoch(s) so that this {cfg.epochs}-epoch "
                 f"run trains at lr {cfg.lr} and not only at the warm-up's {cfg.warmup_lr}")
    per_step = cfg.schedule_unit == "step"
    unit = batches_per_epoch if per_step else 1
    scheduler = warmup_cosine(optimizer, cfg.epochs * unit, warmup * unit, cfg.warmup_lr)
    use_scaler = precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    start_epoch, global_step = 0, 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if use_scaler and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        method.load_training_state(checkpoint.get("method_state") or {})
        restore_rng_state(checkpoint["rng"])
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
    if info.is_main:
        log.keep_epochs_before(start_epoch)
        if start_epoch:
            log.write({"kind": "resume", "epoch": start_epoch, "global_step": global_step})
            log.line(f"resumed after epoch {start_epoch}/{cfg.epochs} from {checkpoint_path}")
            if progress:
                print(f"[mudpt] resuming {cfg.output_dir} after epoch {start_epoch}/{cfg.epochs}")

    model = method
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)

    context = StepContext(scale=scaler.scale, average=lambda tensors: D.all_reduce_mean_tensors(tensors, info),
                          params=params)

    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_epoch * batches_per_epoch, desc=f"train {cfg.method}",
                   dynamic_ncols=True)
    seconds, images = 0.0, 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]  # per-step schedules: the epoch's first step's
            sampler = RankBatchSampler(len(train_set), cfg.batch_size, cfg.seed, epoch, info.rank, info.world_size)
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                                                 pin_memory=device.type == "cuda")
            method.train()
            epoch_loss = epoch_correct = epoch_count = 0.0
            for step, (batch_images, batch_labels) in enumerate(loader):
                batch_images = batch_images.to(device, non_blocking=True)
                batch_labels = batch_labels.to(device, non_blocking=True)
                with autocast_context(device, precision):
                    outputs = model(batch_images, batch_labels)
                loss, logits = outputs["loss"], outputs["logits"]
                terms = {name: float(value) for name, value in (outputs.get("terms") or {}).items()}
                _check_finite(loss.detach(), epoch, step, cfg)
                optimizer.zero_grad(set_to_none=True)
                method.backward(outputs, context)
                scaler.step(optimizer)
                scaler.update()
                if per_step:
                    scheduler.step()
                global_step += 1

                n_local = batch_labels.numel()
                correct_local = (logits.detach().argmax(dim=1) == batch_labels).sum().item()
                reduced = D.all_reduce_sum([loss.item() * n_local, correct_local, n_local]
                                           + [value * n_local for value in terms.values()], info, device)
                loss_sum, correct, count = reduced[:3]
                term_means = {f"loss_{name}": total / count for name, total in zip(terms, reduced[3:])}
                epoch_loss += loss_sum
                epoch_correct += correct
                epoch_count += count
                images += int(count)
                if info.is_main and (global_step % cfg.log_every == 0):
                    log.write({"kind": "step", "epoch": epoch, "step": step, "global_step": global_step,
                               "loss": loss_sum / count, "accuracy": 100.0 * correct / count, "lr": lr,
                               "images": int(count), **term_means})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_sum / count:.4f}",
                                    acc=f"{100.0 * correct / count:.1f}", lr=f"{lr:.2e}")
            method.on_epoch_end(epoch, cfg.epochs)
            if not per_step:
                scheduler.step()
            seconds += time.perf_counter() - t_epoch
            record = {"kind": "epoch", "epoch": epoch, "global_step": global_step, "lr": lr,
                      "loss": epoch_loss / max(epoch_count, 1), "accuracy": 100.0 * epoch_correct / max(epoch_count, 1),
                      "seconds": time.perf_counter() - t_epoch}
            if cfg.eval_every_epoch and dataset.val:
                v_preds, v_labels = predict_items(method, dataset.val, data_mod.build_transform(clip, train=False),
                                                  batch_size=cfg.eval_batch_size, precision=precision,
                                                  device=device, num_workers=cfg.num_workers, progress=False,
                                                  dist_info=info)
                record["val_accuracy"] = compute_metrics(v_preds, v_labels, len(dataset.classnames))["accuracy"]
            if info.is_main:
                log.write(record)
                save_checkpoint(checkpoint_path, {
                    "epoch": epoch + 1, "global_step": global_step,
                    "learned": {k: v.detach().cpu().clone() for k, v in method.learned_state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "method_state": method.training_state(),
                }, identity=cfg.identity())
                if log.trackers:
                    record_files(cfg.output_dir, *log.close_files())
            D.barrier(info)
    finally:
        if bar is not None:
            bar.close()
    method.on_train_end(fit_context)
    method.eval()
    return seconds, images


__all__ = ["RunResult", "TrainConfig", "TrainingDivergedError", "train"]
