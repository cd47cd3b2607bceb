"""The feature-space baselines' costs: Tip-Adapter's cache size and precision, the feature cache.

1. The size of a saved Tip-Adapter cache at ImageNet's 16 shots x 1,000 classes on ViT-B/16
   (fp16 keys, int32 labels), read from the ``learned.safetensors`` file ``save_learned`` writes.
2. fp16 against fp32 cache keys on the built-in world (world-tiny, world_source, 16 shots,
   seed 1): the largest change of an affinity and of a logit, and how many test predictions
   change, at the alpha and beta the search picks.
3. The feature cache: frozen features of the world's few-shot training and validation items
   extracted (first run) against read back from the cache (every later run on the same
   backbone, weights and items), wall time.
4. The fit of the methods that learn on cached features (GDA, LP++, CLAP; ``--methods`` adds
   others, e.g. ``tip_adapter``, whose 200 x 20 search at this size is hours on a CPU) at
   ImageNet's size: 1,000 classes x 16 shots of ViT-B/16's 512-dim features with each preset's
   augmented views and a 4-shot validation split, wall time of ``fit`` alone (features handed
   over as the feature cache hands them; the class text features computed before the clock
   starts).

Usage::

    python benchmarks/bench_feature_space.py [--threads 2] [--only-fit] [--methods gda,lpp,clap] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F

import mudpt
from mudpt.methods.base import FitContext


def cache_size() -> None:
    clip = mudpt.load_clip("ViT-B-16")
    classes = [f"class {i}" for i in range(1000)]
    tip = mudpt.create("tip_adapter", clip, classes, search=False)
    keys = F.normalize(torch.randn(16 * 1000, clip.embed_dim), dim=-1)
    tip._set_cache(keys, torch.arange(1000).repeat_interleave(16), 1.17, 1.0)
    with tempfile.TemporaryDirectory() as folder:
        tensors, _ = mudpt.save_learned(tip, os.path.join(folder, "learned"))
        size = os.path.getsize(tensors)
    keys_mib = 16 * 1000 * clip.embed_dim * 2 / 2**20
    print(f"1. Tip-Adapter cache, 16 shots x 1,000 classes x {clip.embed_dim} dims: keys {keys_mib:.1f} MiB fp16 "
          f"(fp32 would be {2 * keys_mib:.1f} MiB); learned.safetensors {size / 2**20:.2f} MiB")


def world_data():
    from mudpt.world.datasets import SOURCE

    return mudpt.data.load_dataset(SOURCE, shots=16, seed=1)


def cache_precision(clip, data, root) -> None:
    from mudpt.engine.features import FeatureExtractor

    extract = FeatureExtractor(clip, "cpu", root=root)
    tip = mudpt.create("tip_adapter", clip, list(data.classnames))
    notes = []
    tip.fit(FitContext(list(data.train), list(data.val), extract, notes.append))
    test = F.normalize(extract(list(data.test))[0], dim=-1)
    labels = torch.as_tensor([item.label for item in data.test])
    with torch.no_grad():
        half = tip.logits_of_features(test)
        affinity_half = test @ tip.cache_keys.float().t()
        views = extract(list(data.train), augment=True, views=tip.settings.augment_epochs, crop_scale=(0.5, 1.0))
        full_keys = F.normalize(views.mean(dim=0), dim=-1)
        tip.cache_keys = full_keys  # the same cache in fp32
        full = tip.logits_of_features(test)
        affinity_full = test @ full_keys.t()
    changed = int((half.argmax(1) != full.argmax(1)).sum())
    print(f"2. fp16 vs fp32 keys on world_source (16 shots, seed 1; {notes[-1]}):")
    print(f"   max |affinity change| {float((affinity_half - affinity_full).abs().max()):.2e} (bound 2^-11 = "
          f"{2 ** -11:.2e}), max |logit change| {float((half - full).abs().max()):.2e}; predictions changed "
          f"{changed} of {len(labels)}; accuracy fp16 {100 * float((half.argmax(1) == labels).float().mean()):.2f}% "
          f"fp32 {100 * float((full.argmax(1) == labels).float().mean()):.2f}%")


def feature_cache(clip, data, root) -> None:
    from mudpt.engine.features import FeatureExtractor

    items = list(data.train) + list(data.val)
    start = time.perf_counter()
    first = FeatureExtractor(clip, "cpu", root=root)
    first(items)
    extracted = time.perf_counter() - start
    start = time.perf_counter()
    again = FeatureExtractor(clip, "cpu", root=root)
    again(items)
    cached = time.perf_counter() - start
    print(f"3. frozen features of {len(items)} world items: extracted {extracted:.2f} s "
          f"({first.extractions} extraction), from the cache {cached:.3f} s ({again.extractions} extractions): "
          f"{extracted / cached:.0f}x")


def fit_times(methods, device: str = "cpu") -> None:
    from mudpt.methods.hooks import _TensorItem

    clip = mudpt.load_clip("ViT-B-16", device=device)
    classes, shots, val_shots, dim = 1000, 16, 4, clip.embed_dim
    names = [f"class {i}" for i in range(classes)]
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=generator)
    train = [_TensorItem(f"train:{i}", i // shots, "train") for i in range(classes * shots)]
    val = [_TensorItem(f"val:{i}", i // val_shots, "val") for i in range(classes * val_shots)]

    def image_features(items, augment=False, views=1, crop_scale=None):
        labels = torch.as_tensor([item.label for item in items])
        noise = torch.randn(views, len(items), dim, generator=torch.Generator().manual_seed(views + len(items)))
        return centres[labels] + 2.0 * noise

    print(f"4. fit at {classes:,} classes x {shots} shots, {dim}-dim features, validation {val_shots} shots "
          f"(on {device}" + (f", {torch.get_num_threads()} threads" if device == "cpu" else "") + "):")
    for name in methods:
        from mudpt.engine.config import load_config

        preset = mudpt.methods.get_method_class(name).published_preset("fewshot", shots)
        method = mudpt.create(name, clip, names, **load_config(preset).method_options)
        templates = getattr(method.settings, "templates", None)
        if templates:
            with torch.no_grad():  # computed once per class list in a run, not part of the fit
                method.frozen_text_features(templates)
                if name == "clap":
                    method.zero_shot_prototypes()
        notes = []
        context = FitContext(train, val, image_features, notes.append, seed=1)
        start = time.perf_counter()
        method.fit(context)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        print(f"   {name:<14} {elapsed:7.1f} s   {notes[-1] if notes else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only-fit", action="store_true", help="run part 4 only")
    parser.add_argument("--device", default="cpu", help="part 4's device (cpu, cuda)")
    parser.add_argument("--methods", default="gda,lpp,clap",
                        help="the methods of part 4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only_fit:
        fit_times(args.methods.split(","), args.device)
        return
    cache_size()
    clip = mudpt.load_clip("world-tiny")
    data = world_data()
    with tempfile.TemporaryDirectory() as root:
        cache_precision(clip, data, os.path.join(root, "a"))
        feature_cache(clip, data, os.path.join(root, "b"))
    fit_times(args.methods.split(","), args.device)


if __name__ == "__main__":
    main()
