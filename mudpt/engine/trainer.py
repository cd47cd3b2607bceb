"""The training loop of methods (``mudpt train``, sweeps and ``mudpt demo`` use it; the world's
backbone pretraining, world/pretrain.py, has its own).

As the reference (Dassl): the optimiser (SGD with momentum and weight decay, Adam or AdamW) on the
method's trainable tensors only, the method's objective (cross-entropy by default), a
learning rate from Dassl's constant warm-up + cosine schedule (``torch.optim.lr_scheduler``)
stepped per epoch or per step, test evaluation at the end.

Reproducibility does not depend on the number of processes or on where a run was resumed:
the order of images in epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)``, every global batch is split evenly across DDP ranks, and the random augmentation
of image ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)`` (seeds
derived with ``numpy.random.SeedSequence``). A resumed run and a 2-process run therefore see
exactly the images of an uninterrupted single-process run.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mudpt._version import __version__
from mudpt.core.errors import ConfigError, RunFolderError, TrainingDivergedError, UserError
from mudpt.core.files import atomic_write_json, atomic_write_text, make_dir
from mudpt.data import dataset_identity
from mudpt.engine import distributed as D
from mudpt.engine.checkpointing import CHECKPOINT_NAME, load_checkpoint, restore_rng_state, save_checkpoint
from mudpt.engine.config import TrainConfig, save_config
from mudpt.engine.evaluation import (autocast_context, compute_metrics, effective_precision, predict_items,
                                     resolve_device)
from mudpt.engine.identity import RunIdentity, describe_differences
from mudpt.engine.runs import (CONFIG_FILE, LEARNED_STEM, LOG_FILE, METRICS_FILE, RESULTS_FILE, RunLock,
                               load_run_method, prepare_run_dir, read_results, record_files, start_run_record,
                               write_sample)
from mudpt.engine.sampling import RankBatchSampler, SeededAugmentDataset
from mudpt.core.schedules import warmup_cosine
from mudpt.methods.base import PromptMethod
from mudpt.methods.hooks import FitContext, StepContext


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


def method_config_for(cfg: TrainConfig, folder=None):
    """The method's typed config for this run: the config's options, adapted to the dataset
    (and its ``folder``) by the method (e.g. zero-shot CLIP takes CoOp's hand-crafted template
    of a benchmark, CoPrompt finds the class descriptions beside the dataset)."""
    from mudpt.methods import make_config

    return make_config(cfg.method, cfg.method_options).for_dataset(
        str(cfg.dataset), str(folder) if folder is not None else None)


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


@dataclass
class _Run:
    """One run's state as it moves through the phases of :func:`train`."""

    cfg: TrainConfig
    info: D.DistInfo
    device: torch.device
    run_dir: Path
    progress: bool
    quiet: bool
    dataset: object = None
    precision: str = "fp32"
    precision_note: Optional[str] = None
    method_config: object = None
    identity: Optional[RunIdentity] = None
    state: Optional[str] = None  # "fresh", "resume" or "finished" (prepare_run_dir)
    clip: object = None
    method: Optional[PromptMethod] = None
    log: Optional[RunLogger] = None
    timings: dict = field(default_factory=dict)


def train(cfg: TrainConfig, progress: bool = True, on_mismatch: str = "error", quiet: bool = False) -> RunResult:
    """Train (or resume, or just evaluate) one run described by ``cfg``; see the module doc.

    Re-running with the same config resumes from the last completed epoch; a finished run of
    the same identity is not retrained (its results are returned, ``status="finished"``). A
    folder holding a run of another identity is an error naming the differences, unless
    ``cfg.overwrite`` or ``on_mismatch="overwrite"``. A method that learns nothing from data is
    evaluated. Under ``torchrun`` the run is data-parallel over the processes (only rank 0
    writes; it holds the run folder's lock).

    The phases: prepare (data, identity, the folder's lock and state), build (backbone and
    method), fit or resume, train epochs, finish (learned state, test, results).
    """
    cfg.validate(check_registries=True, complete=True)
    if cfg.output_dir is None:
        raise ConfigError("output_dir is not set: give the run folder (load_config sets a default one)",
                          field="output_dir")
    if on_mismatch not in ("error", "overwrite"):
        raise ConfigError(f"on_mismatch={on_mismatch!r} is not one of 'error', 'overwrite'", field="on_mismatch")
    info = D.init_from_env(resolve_device(cfg.device).type)
    with contextlib.ExitStack() as stack:
        stack.callback(D.shutdown, info)
        run = _Run(cfg, info, resolve_device(cfg.device, info.local_rank), Path(cfg.output_dir),
                   progress and not quiet, quiet)
        _prepare(run)

        def lock_and_check() -> Optional[RunResult]:
            run.state = _lock_and_check_folder(run, stack, on_mismatch)
            return _finished_result(run) if run.state == "finished" else None

        # An existing folder is checked before anything is built (a finished run is not rebuilt);
        # a new one is created only once the backbone and method could be built, so that a run
        # failing at set-up leaves no folder behind.
        if run.run_dir.exists() and (done := lock_and_check()) is not None:
            return done
        _build(run)
        if run.state is None and (done := lock_and_check()) is not None:
            return done  # another process finished it meanwhile
        _open_folder(run)
        train_seconds, images_seen = _fit_and_train(run)
        run.timings["train_seconds"] = train_seconds
        run.timings["train_images_per_second"] = images_seen / train_seconds if train_seconds > 0 else None
        return _finish(run)


def _prepare(run: _Run) -> None:
    """Phase 1: the data, the method's config for it, the precision and the run's identity."""
    from mudpt.data import load_dataset

    cfg, t0 = run.cfg, time.perf_counter()
    if cfg.batch_size % run.info.world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must be divisible by the number "
            f"of processes ({run.info.world_size}).", field="batch_size")
    run.dataset = load_dataset(cfg.dataset, root=cfg.root, shots=cfg.shots, seed=cfg.seed, subsample=cfg.subsample)
    if not run.dataset.test:
        raise ConfigError(f"Dataset {cfg.dataset!r} (subsample={cfg.subsample}) has no test images: the run could "
                          "train but never be evaluated.", field="dataset")
    run.method_config = method_config_for(cfg, run.dataset.dataset_dir)
    run.precision, run.precision_note = effective_precision(cfg.precision, run.device)
    run.identity = RunIdentity.of_run(cfg, run.method_config.to_dict(), run.dataset.fingerprint,
                                      run.dataset.dataset_dir, run.precision)
    run.timings["setup_seconds"] = time.perf_counter() - t0


def _lock_and_check_folder(run: _Run, stack: contextlib.ExitStack, on_mismatch: str) -> str:
    """Rank 0 takes the folder's lock (held until the run ends) and says what the folder holds;
    every rank learns it (an error on rank 0 is raised on every rank)."""
    state, error = None, None
    if run.info.is_main:
        try:
            stack.enter_context(RunLock(run.run_dir, what=f"training {run.cfg.method}"))
            state = prepare_run_dir(run.cfg, run.identity, on_mismatch)
        except RunFolderError as err:
            error = err
    _sync_error(error, run.info)
    return D.broadcast_object(state, run.info)


def _finished_result(run: _Run) -> RunResult:
    results = read_results(run.run_dir)
    if run.progress and run.info.is_main:
        print(f"[mudpt] {run.run_dir} holds this finished run (same identity): training skipped; test accuracy "
              f"{results['accuracy']:.2f}%")
    method, _ = load_run_method(run.run_dir, device=run.device)
    return RunResult(run.run_dir, method, results, status="finished")


def _build(run: _Run) -> None:
    """Phase 2: the backbone and the method, seeded by the run's seed."""
    from mudpt.core.backbones import load_clip
    from mudpt.methods import create

    cfg, t0 = run.cfg, time.perf_counter()
    seed_everything(cfg.seed)
    run.clip = load_clip(cfg.backbone, pretrained=cfg.pretrained, device=str(run.device), tokenizer=cfg.tokenizer)
    # Seeded again here: building a backbone may reset torch's generator (seeded random init),
    # and the method's own initial tensors must depend on the run's seed only.
    seed_everything(cfg.seed)
    run.method = create(cfg.method, run.clip, list(run.dataset.classnames),
                        config=run.method_config).to(run.device)
    run.method.text_chunk = cfg.text_chunk
    if run.method.learns_from_data and not run.dataset.train:
        raise ConfigError(f"Dataset {cfg.dataset!r} (subsample={cfg.subsample}, shots={cfg.shots}) has no "
                          "training images.", field="dataset")
    run.timings["setup_seconds"] += time.perf_counter() - t0


def _open_folder(run: _Run) -> None:
    """Phase 3: a fresh folder gets its record and config; the log starts."""
    from mudpt.core.backbones import weights_fingerprint

    cfg, info = run.cfg, run.info
    if info.is_main:
        make_dir(run.run_dir, "the run folder")
        if run.state == "fresh":
            start_run_record(run.run_dir, run.identity, dataset_identity(cfg.dataset))
            save_config(cfg, run.run_dir / CONFIG_FILE)
            write_sample(run.run_dir, run.dataset)
    D.barrier(info)
    run.log = RunLogger(run.run_dir, info.is_main, cfg, quiet=run.quiet)
    if run.state == "fresh":
        run.log.line(f"mudpt {__version__}: {cfg.method} on {cfg.dataset}, backbone {cfg.backbone} "
                     f"(weights {weights_fingerprint(cfg.backbone, cfg.pretrained)})")
        run.log.line("config: " + json.dumps(cfg.to_dict(), sort_keys=True))
        run.log.line(f"data: {run.dataset.summary()}" + "".join(f"; {n}" for n in run.dataset.notes))
    if run.precision_note:
        run.log.note(run.precision_note)


def _finish(run: _Run) -> RunResult:
    """Phase 5: the learned state (before the test pass: evaluation cannot lose training), the
    test evaluation and the results file."""
    from mudpt.data import build_transform
    from mudpt.methods.learned import save_learned

    cfg, info, method, log, timings = run.cfg, run.info, run.method, run.log, run.timings
    if info.is_main:
        save_learned(method, str(run.run_dir / LEARNED_STEM))
    t1 = time.perf_counter()
    preds, labels = predict_items(method, run.dataset.test, build_transform(run.clip, train=False),
                                  batch_size=cfg.eval_batch_size, precision=run.precision, device=run.device,
                                  num_workers=cfg.num_workers, progress=run.progress, desc="test", dist_info=info)
    metrics = compute_metrics(preds, labels, len(run.dataset.classnames))
    timings["eval_seconds"] = time.perf_counter() - t1
    timings["eval_images_per_second"] = len(labels) / timings["eval_seconds"] if timings["eval_seconds"] > 0 else None
    metrics["classnames"] = list(run.dataset.classnames)
    results = {
        **metrics,
        "dataset": cfg.dataset,
        "subsample": cfg.subsample,
        "split": "test",
        "method": cfg.method,
        "mudpt_version": __version__,
        "trainable_parameters": int(method.num_trainable_parameters()),
        "learned_values": int(method.num_learned_values()),
        "world_size": info.world_size,
        "precision_used": run.precision,
        "config": cfg.to_dict(),
        "identity": run.identity.to_dict(),
        "notes": log.notes,
        "timings": timings,
    }
    if info.is_main:
        log.write({"kind": "test", "epoch": cfg.epochs, "accuracy": metrics["accuracy"],
                   "macro_f1": metrics["macro_f1"], "n": metrics["n"]})
        log.line(f"test: accuracy {metrics['accuracy']:.2f}%, macro-F1 {metrics['macro_f1']:.2f} on {metrics['n']} "
                 f"images; timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if v is not None))
        record_files(run.run_dir, *log.close())
        atomic_write_json(run.run_dir / RESULTS_FILE, results)
        # The checkpoint's optimiser state is no longer needed once results exist.
        (run.run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    else:
        log.close()
    D.barrier(info)
    if run.progress and info.is_main:
        print(f"[mudpt] {cfg.method} on {cfg.dataset} ({cfg.subsample}): test accuracy "
              f"{metrics['accuracy']:.2f}%, macro-F1 {metrics['macro_f1']:.2f} -> {run.run_dir}")
    return RunResult(run.run_dir, method, results, status="trained" if run.state == "fresh" else "resumed")


def effective_warmup(epochs: int, warmup_epochs: int) -> int:
    """Warm-up epochs actually used: at least one epoch always trains at the schedule's rate (a
    1-epoch run with the presets' 1 warm-up epoch would otherwise train only at ``warmup_lr``)."""
    return min(warmup_epochs, epochs - 1)


def _parameter_groups(cfg: TrainConfig, method, named: list) -> list:
    """The optimiser's parameter groups: one per learning-rate multiplier the method declares
    (``method.lr_multiplier(name)``, 1 first: DePT's staged lr), in trainable order."""
    groups: dict = {}
    for name, parameter in named:
        groups.setdefault(float(method.lr_multiplier(name)), []).append(parameter)
    order = sorted(groups, key=lambda m: (m != 1.0, m))
    return [{"params": groups[m], "lr": cfg.lr * m} for m in order]


def _optimizer(cfg: TrainConfig, params: list) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.optimizer_eps)
    if cfg.optimizer == "adam":  # Dassl's "adam": betas (0.9, 0.999), weight decay added to the gradient
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.optimizer_eps)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _fit_and_train(run: _Run) -> tuple[float, int]:
    """Phase 4: fitting (:meth:`PromptMethod.fit`) or resuming from the checkpoint, then the
    epochs; returns (seconds spent, images trained on by this process group)."""
    from mudpt.engine.features import FeatureExtractor

    cfg, method, dataset, info, log = run.cfg, run.method, run.dataset, run.info, run.log
    checkpoint_path = run.run_dir / CHECKPOINT_NAME
    checkpoint = load_checkpoint(checkpoint_path)
    extractor = FeatureExtractor(run.clip, run.device, precision=run.precision, batch_size=cfg.eval_batch_size,
                                 num_workers=cfg.num_workers, seed=cfg.seed, dist_info=info)
    fit_context = FitContext(train=list(dataset.train), val=list(dataset.val), image_features=extractor,
                             note=log.note, seed=cfg.seed)
    t_fit = time.perf_counter()
    if checkpoint is None:
        method.fit(fit_context)
    else:
        differences = _checkpoint_identity(checkpoint).diff(run.identity)
        if differences:
            raise RunFolderError(
                f"The checkpoint {checkpoint_path} was written by another run ({describe_differences(differences)});"
                " overwrite the run to restart it.", field="overwrite")
        method.load_learned_state_dict(checkpoint["learned"])
    if not method.trainable_parameters():  # fitted in closed form, or nothing to train
        method.on_train_end(fit_context)
        method.eval()
        return time.perf_counter() - t_fit, 0
    loop = _EpochLoop(run, checkpoint)
    try:
        seconds, images = loop.run()
    finally:
        loop.close()
    method.on_train_end(fit_context)
    method.eval()
    return seconds, images


def _checkpoint_identity(checkpoint: dict) -> RunIdentity:
    saved = checkpoint.get("identity") or {}
    if "config" in saved:
        return RunIdentity.from_dict(saved)
    # a checkpoint written before run identities: its config fields only
    return RunIdentity.of_config(saved)


class _EpochLoop:
    """The optimiser, schedule, grad scaler and the run's one DataLoader (a batch sampler moved
    from epoch to epoch, so loader worker processes persist); :meth:`run` trains the epochs."""

    def __init__(self, run: _Run, checkpoint: Optional[dict]):
        from mudpt.data import ImageDataset, build_transform

        cfg, method, info = run.cfg, run.method, run.info
        self.run_, self.cfg, self.method, self.info, self.log = run, cfg, method, info, run.log
        named = method.trainable_parameters()
        self.params = [p for _, p in named]
        self.optimizer = _optimizer(cfg, _parameter_groups(cfg, method, named))
        base = ImageDataset(list(run.dataset.train),
                            build_transform(run.clip, train=True, crop_scale=method.train_crop_scale,
                                            augment=method.train_augment, views=method.train_views))
        train_set = SeededAugmentDataset(base, cfg.seed)
        self.sampler = RankBatchSampler(len(train_set), cfg.batch_size, cfg.seed, 0, info.rank, info.world_size)
        self.loader = torch.utils.data.DataLoader(train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                                  pin_memory=run.device.type == "cuda",
                                                  persistent_workers=cfg.num_workers > 0)
        self.batches_per_epoch = len(self.sampler)
        # An iteration budget (steps_per_shot) sets the steps; the epochs follow, the last one cut short.
        self.total_steps = cfg.total_steps(self.batches_per_epoch)
        self.epochs = -(-self.total_steps // self.batches_per_epoch)
        warmup = effective_warmup(self.epochs, cfg.warmup_epochs)
        if warmup < cfg.warmup_epochs:
            run.log.note(f"warm-up shortened from {cfg.warmup_epochs} to {warmup} epoch(s) so that this {self.epochs}-"
                         f"epoch run trains at lr {cfg.lr} and not only at the warm-up's {cfg.warmup_lr}")
        self.per_step = cfg.schedule_unit == "step" or cfg.steps_per_shot is not None
        if self.per_step:
            self.scheduler = warmup_cosine(self.optimizer, self.total_steps, warmup * self.batches_per_epoch,
                                           cfg.warmup_lr, cfg.min_lr or 0.0)
        else:
            self.scheduler = warmup_cosine(self.optimizer, self.epochs, warmup, cfg.warmup_lr, cfg.min_lr or 0.0)
        self.use_scaler = run.precision == "fp16"
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=self.use_scaler)
        self.start_epoch, self.global_step = 0, 0
        self.checkpoint_path = run.run_dir / CHECKPOINT_NAME
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if self.use_scaler and checkpoint.get("scaler"):
                self.scaler.load_state_dict(checkpoint["scaler"])
            method.load_training_state(checkpoint.get("method_state") or {})
            restore_rng_state(checkpoint["rng"])
            self.start_epoch, self.global_step = checkpoint["epoch"], checkpoint["global_step"]
        self.model = method
        if info.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                method, device_ids=[run.device.index] if run.device.type == "cuda" else None)
        self.context = StepContext(scale=self.scaler.scale,
                                   average=lambda tensors: D.all_reduce_mean_tensors(tensors, info),
                                   params=self.params)
        self.bar = None
        if run.progress and info.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps,
                            initial=self.start_epoch * self.batches_per_epoch, desc=f"train {cfg.method}",
                            dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.loader = None  # ends persistent worker processes

    def run(self) -> tuple[float, int]:
        cfg, info, log = self.cfg, self.info, self.log
        if info.is_main:
            log.keep_epochs_before(self.start_epoch)
            if self.start_epoch:
                log.write({"kind": "resume", "epoch": self.start_epoch, "global_step": self.global_step})
                log.line(f"resumed after epoch {self.start_epoch}/{self.epochs} from {self.checkpoint_path}")
                if self.run_.progress:
                    print(f"[mudpt] resuming {cfg.output_dir} after epoch {self.start_epoch}/{self.epochs}")
        seconds, images = 0.0, 0
        for epoch in range(self.start_epoch, self.epochs):
            t_epoch = time.perf_counter()
            record, seen = self.train_epoch(epoch)
            images += seen
            seconds += time.perf_counter() - t_epoch
            record["seconds"] = time.perf_counter() - t_epoch
            self.end_epoch(epoch, record)
        return seconds, images

    def train_epoch(self, epoch: int) -> tuple[dict, int]:
        cfg, info, method, device = self.cfg, self.info, self.method, self.run_.device
        lr = self.optimizer.param_groups[0]["lr"]  # per-step schedules: the epoch's first step's
        self.sampler.set_epoch(epoch)
        method.train()
        epoch_loss = epoch_correct = epoch_count = 0.0
        for step, (batch_images, batch_labels) in enumerate(self.loader):
            if self.global_step >= self.total_steps:
                break  # an iteration budget ends mid-epoch
            batch_images = batch_images.to(device, non_blocking=True)
            batch_labels = batch_labels.to(device, non_blocking=True)
            with autocast_context(device, self.run_.precision):
                outputs = self.model(batch_images, batch_labels)
            loss, logits = outputs["loss"], outputs["logits"]
            terms = {name: float(value) for name, value in (outputs.get("terms") or {}).items()}
            _check_finite(loss.detach(), epoch, step, cfg)
            self.optimizer.zero_grad(set_to_none=True)
            method.backward(outputs, self.context)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.per_step:
                self.scheduler.step()
            self.global_step += 1

            n_local = batch_labels.numel()
            correct_local = (logits.detach().argmax(dim=1) == batch_labels).sum().item()
            reduced = D.all_reduce_sum([loss.item() * n_local, correct_local, n_local]
                                       + [value * n_local for value in terms.values()], info, device)
            loss_sum, correct, count = reduced[:3]
            term_means = {f"loss_{name}": total / count for name, total in zip(terms, reduced[3:])}
            epoch_loss += loss_sum
            epoch_correct += correct
            epoch_count += count
            if info.is_main and (self.global_step % cfg.log_every == 0):
                self.log.write({"kind": "step", "epoch": epoch, "step": step, "global_step": self.global_step,
                                "loss": loss_sum / count, "accuracy": 100.0 * correct / count, "lr": lr,
                                "images": int(count), **term_means})
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{loss_sum / count:.4f}",
                                     acc=f"{100.0 * correct / count:.1f}", lr=f"{lr:.2e}")
        method.on_epoch_end(epoch, self.epochs)
        if not self.per_step:
            self.scheduler.step()
        record = {"kind": "epoch", "epoch": epoch, "global_step": self.global_step, "lr": lr,
                  "loss": epoch_loss / max(epoch_count, 1), "accuracy": 100.0 * epoch_correct / max(epoch_count, 1)}
        return record, int(epoch_count)

    def end_epoch(self, epoch: int, record: dict) -> None:
        """Validation (when asked), the epoch's log line and its checkpoint."""
        from mudpt.data import build_transform

        cfg, info, method, run = self.cfg, self.info, self.method, self.run_
        if cfg.eval_every_epoch and run.dataset.val:
            v_preds, v_labels = predict_items(method, run.dataset.val, build_transform(run.clip, train=False),
                                              batch_size=cfg.eval_batch_size, precision=run.precision,
                                              device=run.device, num_workers=cfg.num_workers, progress=False,
                                              dist_info=info)
            record["val_accuracy"] = compute_metrics(v_preds, v_labels, len(run.dataset.classnames))["accuracy"]
        if info.is_main:
            self.log.write(record)
            save_checkpoint(self.checkpoint_path, {
                "epoch": epoch + 1, "global_step": self.global_step,
                "learned": {k: v.detach().cpu().clone() for k, v in method.learned_state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_scaler else None,
                "method_state": method.training_state(),
            }, identity=run.identity.to_dict())
            if self.log.trackers:
                record_files(cfg.output_dir, *self.log.close_files())
        D.barrier(info)


__all__ = ["RunResult", "TrainConfig", "TrainingDivergedError", "train"]
