"""Time the data layer on an ImageNet-shaped tree of empty files (no real data needed).

    python benchmarks/bench_data.py --classes 200 --per-class 100

Reports: first load (folder listing + writing preprocessed.pkl), a second load (from the
pickle), a 16-shot sample with its cache written, a cached 16-shot base-class load, and the
rate of writing/reading reference-format pickles, and the built-in world's image generation
rate (images per second; it was a timed unit test before, a bound that a busy machine could fail).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time

import mudpt.data as data
from mudpt.data.fewshot import _RestrictedUnpickler, dumps_reference_pickle


def build_tree(root: str, classes: int, per_class: int, val_per_class: int) -> None:
    dataset_dir = os.path.join(root, "imagenet")
    lines = []
    for index in range(classes):
        wnid = f"n{index:08d}"
        lines.append(f"{wnid} class {index}")
        for split, count in (("train", per_class), ("val", val_per_class)):
            folder = os.path.join(dataset_dir, "images", split, wnid)
            os.makedirs(folder)
            for number in range(count):
                open(os.path.join(folder, f"{wnid}_{number}.JPEG"), "wb").close()
    with open(os.path.join(dataset_dir, "classnames.txt"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def timed(label: str, function):
    start = time.perf_counter()
    result = function()
    print(f"{label:55s} {time.perf_counter() - start:7.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=10)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="mudpt-bench-")
    try:
        build_tree(root, args.classes, args.per_class, args.val_per_class)
        total = args.classes * (args.per_class + args.val_per_class)
        print(f"{total} files, {args.classes} classes")
        timed("first load (listing + preprocessed.pkl)", lambda: data.load_dataset("imagenet", root=root))
        timed("second load (preprocessed.pkl)", lambda: data.load_dataset("imagenet", root=root))
        timed("16 shots, seed 1 (sample + write cache)",
              lambda: data.load_dataset("imagenet", root=root, shots=16, seed=1))
        timed("16 shots, seed 1, base classes (from cache)",
              lambda: data.load_dataset("imagenet", root=root, shots=16, seed=1, subsample="base"))
        items = data.load_dataset("imagenet", root=root).train
        blob = timed(f"write reference pickle of {len(items)} items",
                     lambda: dumps_reference_pickle({"train": items}))
        timed("read it back (restricted unpickler)",
              lambda: _RestrictedUnpickler(io.BytesIO(blob), "benchmark").load())
    finally:
        shutil.rmtree(root)
    import numpy as np

    from mudpt.world import generator

    rng = np.random.default_rng(0)
    generator.generate(rng, 64)  # warm-up
    start = time.perf_counter()
    generator.generate(rng, 1000)
    print(f"{'world generator: 1,000 scenes':55s} {1000 / (time.perf_counter() - start):7.0f} images/s")


if __name__ == "__main__":
    main()
