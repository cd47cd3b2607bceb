"""Contrastive pretraining of the tiny CLIP on the world's captioned scenes (``mudpt world pretrain``).

Symmetric InfoNCE with a learnable temperature, AdamW, linear warm-up then cosine decay. Every
batch is generated on the fly from ``(seed, step)``, so a run is reproducible from its recipe
alone and can resume from its last checkpoint with exactly the same data.

A run is sized in steps; ``--minutes`` measures the speed of the first steps and fixes the
number of steps that fit (recorded in the recipe, so ``--steps`` reproduces it anywhere).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mudpt.core.errors import ConfigError, MissingFileError, RunFolderError
from mudpt.engine.checkpointing import load_checkpoint, save_checkpoint
from mudpt.world import generator as G
from mudpt.world.model import (DEFAULT_ARCH, IMAGE_MEAN, IMAGE_STD, build_world_clip, encode_text_bucketed, encode_text_truncated,
                               export_weights, initial_token_embedding, world_tokenizer)

DEFAULT_RECIPE = {
    "seed": 0,
    "batch_size": 256,
    "lr": 5e-4,
    "weight_decay": 0.1,
    "warmup_steps": 100,
    "min_lr_ratio": 0.05,
    "object_probs": [0.6, 0.25, 0.15],
    # Hard negatives: the first object of every scene of a batch takes one of only this many
    # colours (drawn per batch). With all 8 colours, colour, size and fill already tell a batch's
    # captions apart and shape stays at chance (measured: 18% after 90k images); with few
    # colours per batch, telling captions apart needs the shape.
    "colours_per_batch": 2,
    "init_logit_scale": math.log(1 / 0.07),
}
# Parameters that get no weight decay (besides 1-d gains and biases): decaying the embedding
# table would also move rows no caption uses, which the shipped file must be able to omit.
NO_DECAY = ("token_embedding.weight", "positional_embedding", "visual.positional_embedding",
            "visual.class_embedding", "logit_scale")


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (CLIP normalisation)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_batch(seed: int, step: int, batch_size: int, object_probs,
               colours_per_batch: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The pretraining batch of a step: a pure function of ``(seed, step)``."""
    rng = np.random.default_rng([int(seed), 1, int(step)])
    colour = None
    if colours_per_batch:
        palette = rng.choice(len(G.COLOURS), size=int(colours_per_batch), replace=False)
        colour = palette[rng.integers(0, len(palette), batch_size)]
    images, captions, _ = G.generate(rng, batch_size, object_probs=tuple(object_probs), colour=colour)
    return images, captions


def lr_at(step: int, total: int, recipe: dict) -> float:
    """The recipe's learning rate at ``step``: linear warm-up, then cosine down to
    ``min_lr_ratio * lr`` (the arithmetic the shipped model was trained with)."""
    warmup = recipe["warmup_steps"]
    if step < warmup:
        return recipe["lr"] * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = recipe["min_lr_ratio"]
    return recipe["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if name in NO_DECAY or parameter.ndim < 2:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------ monitoring (zero-shot)

def monitor_set(n_per_class: int = 4, seed: int = 12345, style: str = "plain"):
    """A small fixed evaluation set: single-object scenes, every (colour, shape) pair, in the
    pretraining rendering (``style="plain"``) or one of the downstream-only ``G.STYLES``."""
    if style not in G.STYLES:
        raise ValueError(f"monitor_set: style must be one of {G.STYLES}, got {style!r}")
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in range(len(G.COLOURS)) for s in range(len(G.SHAPES))]
    colour = np.repeat([p[0] for p in pairs], n_per_class)
    shape = np.repeat([p[1] for p in pairs], n_per_class)
    scenes = G.sample_scenes(rng, len(colour), n_objects=1, colour=colour, shape=shape,
                             style=G.STYLES.index(style))
    return G.render_scenes(scenes), colour, shape


@torch.no_grad()
def zero_shot_monitor(model, tokenizer, images, colour, shape,
                      templates=(("photo", "a photo of a {}."), ("plain", "a {}."))) -> dict:
    """Zero-shot accuracy (percent) of shape and of colour x shape on a fixed set, per template."""
    was_training = model.training
    model.eval()
    feats = []
    for start in range(0, len(images), 256):
        feats.append(F.normalize(model.encode_image(images_to_tensor(images[start:start + 256])), dim=-1))
    image_features = torch.cat(feats)
    result = {}
    for (template_name, template), (task, names, target) in ((t, k) for t in templates for k in (
        ("shape", list(G.SHAPES), torch.as_tensor(shape)),
        ("colour_shape", [f"{c} {s}" for c in G.COLOURS for s in G.SHAPES],
         torch.as_tensor(colour * len(G.SHAPES) + shape)),
    )):
        text = F.normalize(encode_text_truncated(model, tokenizer([template.format(n) for n in names])), dim=-1)
        pred = (image_features @ text.T).argmax(dim=1)
        result[f"{task}/{template_name}"] = round(100.0 * (pred == target).float().mean().item(), 2)
    model.train(was_training)
    return result


# ------------------------------------------------------------------ the run

def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, recipe: dict) -> None:
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "step": step, "recipe": recipe},
                    identity=_identity(recipe))


def _schedule(optimizer, recipe: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` stepping :func:`lr_at`. The optimiser's base learning rate is 1 and the
    lambda returns the learning rate itself, so the values are bit for bit those of the recipe
    the shipped model was trained with (``lr * factor`` would differ in the last bit)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = 1.0

    def learning_rate(step: int) -> float:
        return lr_at(step, recipe["steps"] if recipe["steps"] is not None else 10**9, recipe)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate)


def _identity(recipe: dict) -> dict:
    """Recipe fields that define what is learned (a resumed run must match them)."""
    return {k: v for k, v in recipe.items()
            if k not in ("minutes", "measured_step_seconds", "threads", "elapsed_seconds", "steps_done",
                         "monitor", "kept_token_rows", "command", "stop_at")}


def pretrain(out_dir: str | os.PathLike, *, minutes: float | None = None, steps: int | None = None,
             seed: int = 0, batch_size: int | None = None, lr: float | None = None, warmup_steps: int | None = None,
             arch: dict | None = None, init_from: str | os.PathLike | None = None,
             threads: int | None = 2, checkpoint_minutes: float = 5.0, log_every: int = 50, log=print,
             progress: bool = False, stop_at: int | None = None) -> dict:
    """Pretrain the tiny CLIP into ``out_dir`` (``world-tiny.safetensors`` + ``world-tiny.json``
    + ``checkpoint.pt``, ``log.jsonl``). Resumes from ``out_dir/checkpoint.pt`` when its recipe
    matches. Returns the final recipe (with measured numbers).

    Exactly one of ``minutes`` (budget: the step count is fixed from the speed of the first
    steps) and ``steps`` must be given. ``stop_at`` ends the run early, at that step of the
    ``steps``-long schedule (exported like a finished run, ``steps_done`` < ``steps``): how a
    snapshot taken partway through a longer schedule is reproduced. ``init_from`` (a ``checkpoint.pt`` of an earlier run)
    continues training those weights with a fresh optimiser and schedule (a second stage); the
    earlier recipe is kept under ``"parent"`` so the chain stays reproducible.
    """
    if (minutes is None) == (steps is None):
        raise ConfigError("pretrain: give exactly one of minutes= (a time budget) or steps= (an exact step count)",
                          field="steps")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"pretrain: minutes must be > 0, got {minutes}", field="minutes")
    if steps is not None and steps <= 0:
        raise ConfigError(f"pretrain: steps must be > 0, got {steps}", field="steps")
    if stop_at is not None and (steps is None or not 0 < stop_at <= steps):
        raise ConfigError(f"pretrain: stop_at={stop_at} needs steps= and 0 < stop_at <= steps (got steps={steps})",
                          field="stop_at")
    if threads:
        # Note: on a CPU shared with other jobs, 1 thread is often faster than 2 (measured here:
        # 6x less CPU time per step under a load of ~7 on 2 cores, from threads spin-waiting).
        torch.set_num_threads(int(threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = dict(DEFAULT_RECIPE)
    recipe.update({"seed": int(seed), "arch": {**DEFAULT_ARCH, **(arch or {})}, "embedding_seed": int(seed) + 7919,
                   "world_version": "v2", "tokenizer": "open_clip ViT-B-32 (SimpleTokenizer, context 77)",
                   "steps": int(steps) if steps is not None else None, "minutes": minutes, "threads": threads})
    if batch_size is not None:
        recipe["batch_size"] = int(batch_size)
    if lr is not None:
        recipe["lr"] = float(lr)
    if warmup_steps is not None:
        recipe["warmup_steps"] = int(warmup_steps)

    torch.manual_seed(recipe["seed"])
    model = build_world_clip(recipe["arch"])
    with torch.no_grad():
        model.token_embedding.weight.copy_(initial_token_embedding(
            model.vocab_size, model.token_embedding.weight.shape[1], recipe["embedding_seed"]))
        model.logit_scale.fill_(recipe["init_logit_scale"])
    if init_from is not None:
        init_path = Path(init_from)
        if not init_path.is_file():
            raise MissingFileError(f"pretrain: init_from={init_path} does not exist; give the checkpoint.pt of a "
                                   "finished `mudpt world pretrain` run", field="init_from")
        parent = load_checkpoint(init_path)
        if "model" not in parent or "recipe" not in parent:
            raise ConfigError(f"pretrain: {init_path} is not a checkpoint.pt written by `mudpt world pretrain`",
                              field="init_from")
        if parent["recipe"].get("arch") != recipe["arch"]:
            raise ConfigError(f"pretrain: {init_path} has architecture {parent['recipe'].get('arch')}, this run "
                              f"{recipe['arch']}", field="init_from")
        model.load_state_dict(parent["model"])
        # Untouched embedding rows are those of the first stage's seeded initialisation.
        recipe["embedding_seed"] = parent["recipe"]["embedding_seed"]
        recipe["parent"] = dict(parent["recipe"])  # its own "parent", if any, keeps the chain
        recipe["parent"]["steps_done"] = int(parent["step"])
    optimizer = torch.optim.AdamW(_param_groups(model, recipe["weight_decay"]), lr=recipe["lr"],
                                  betas=(0.9, 0.98), eps=1e-6)
    scheduler = _schedule(optimizer, recipe)
    tokenizer = world_tokenizer()
    start_step = 0
    checkpoint_path = out / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path)
    if state is not None:
        saved = dict(state["recipe"])
        if recipe["steps"] is None:
            recipe["steps"] = saved.get("steps")
        if int(state["step"]) <= saved["warmup_steps"]:
            # Warm-up does not depend on the total step count, so a checkpoint still in warm-up
            # is exactly what a run of any length would have reached: its length may change.
            saved["steps"] = recipe["steps"]
        before, now = _identity(saved), _identity(recipe)
        differences = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if differences:
            raise RunFolderError(f"{checkpoint_path} was written by a different recipe ({', '.join(differences)} "
                                 "differ); use another output folder or delete it.", field="out")
        if stop_at is not None and int(state["step"]) > stop_at:
            raise RunFolderError(f"{checkpoint_path} is at step {state['step']}, past stop_at={stop_at}; use another "
                                 "output folder", field="out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = int(state["step"])
        log(f"resuming from step {start_step} of {recipe['steps']}")

    monitor = monitor_set()
    log_path = out / "log.jsonl"
    model.train()
    step = start_step
    started = time.time()
    last_checkpoint = time.time()
    timing_steps: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=recipe["steps"], initial=start_step, desc="pretraining world-tiny", unit="step")
    if stop_at is not None:
        recipe["stop_at"] = int(stop_at)
    while (recipe["steps"] is None or step < recipe["steps"]) and (stop_at is None or step < stop_at):
        tick = time.time()
        lr_used = optimizer.param_groups[0]["lr"]
        images, captions = make_batch(recipe["seed"], step, recipe["batch_size"], recipe["object_probs"],
                                      recipe.get("colours_per_batch"))
        image_features = F.normalize(model.encode_image(images_to_tensor(images)), dim=-1)
        text_features = F.normalize(encode_text_bucketed(model, tokenizer(captions), 3), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        target = torch.arange(len(captions))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        timing_steps.append(time.time() - tick)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if recipe["steps"] is None and len(timing_steps) == 10:
            # Budget mode: the first 10 steps (warm-up included) measure the speed.
            per_step = float(np.median(timing_steps[2:]))
            recipe["steps"] = max(step + 1, int(minutes * 60 / per_step))
            recipe["measured_step_seconds"] = round(per_step, 4)
            log(f"{per_step:.3f} s/step: {minutes} min -> {recipe['steps']} steps")
            if bar is not None:
                bar.total = recipe["steps"]
        if step % log_every == 0 or step in (recipe["steps"], stop_at):
            record = {"step": step, "loss": round(loss.item(), 4), "lr": lr_used,
                      "logit_scale": round(model.logit_scale.exp().item(), 2),
                      "elapsed_s": round(time.time() - started, 1),
                      "img_per_s": round(recipe["batch_size"] * len(timing_steps[-50:]) / sum(timing_steps[-50:]), 1)}
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if bar is None:
                log(json.dumps(record))
        done = step in (recipe["steps"], stop_at)
        if done or time.time() - last_checkpoint > checkpoint_minutes * 60:
            recipe["steps_done"] = step
            recipe["monitor"] = zero_shot_monitor(model, tokenizer, *monitor)
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, step, recipe)
            export_weights(model, recipe, out / "world-tiny.safetensors")
            log(json.dumps({"step": step, "checkpoint": True, "zero_shot": recipe["monitor"]}))
            last_checkpoint = time.time()
    if bar is not None:
        bar.close()
    recipe["steps_done"] = step
    recipe["elapsed_seconds"] = round(time.time() - started, 1)
    if step == start_step:  # nothing left to run: still export what the checkpoint holds
        recipe["monitor"] = zero_shot_monitor(model, tokenizer, *monitor)
    return export_weights(model, recipe, out / "world-tiny.safetensors")
