"""Zero-shot quality of the world-tiny CLIP on every world task, as a table.

    python benchmarks/world_quality.py                        # the shipped weights
    python benchmarks/world_quality.py --pretrained runs/pt/world-tiny.safetensors
    python benchmarks/world_quality.py --json quality.json    # also write the numbers

For each world dataset: the number of classes, chance level, and zero-shot accuracy on the test
split (all classes, and the base and new halves of ``world_source``) with the default template
``"a photo of a {}."`` and with the bare caption-like template ``"a {}."``. The bar (issue 5): shape
>= 45%, colour x shape >= 40%, and below 90% on every task used to compare methods.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

TEMPLATES = {"photo": "a photo of a {}.", "bare": "a {}."}
TASKS = (
    ("world_source", "all"), ("world_source", "base"), ("world_source", "new"),
    ("world_source_plain", "all"), ("world_shape", "all"), ("world_source_tinted", "all"), ("world_source_foggy", "all"),
    ("world_source_camouflage", "all"), ("world_source_cluttered", "all"), ("world_source_sketch", "all"),
    ("world_fill", "all"), ("world_size", "all"), ("world_count", "all"), ("world_position", "all"),
    ("world_background", "all"),
)
BARS = {("world_shape", "all"): 45.0, ("world_source", "all"): 40.0, ("world_source", "base"): 40.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default=None, help="world-tiny weights (default: the shipped ones)")
    parser.add_argument("--root", default=None, help="world root (default: the cache; generated on demand)")
    parser.add_argument("--tasks", default=None, help="comma-separated dataset names (default: all)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    import mudpt
    import mudpt.data
    from mudpt.engine import evaluate

    torch.set_num_threads(args.threads)
    clip = mudpt.load_clip("world-tiny", pretrained=args.pretrained)
    wanted = set(args.tasks.split(",")) if args.tasks else None
    rows = []
    started = time.time()
    for dataset, subsample in TASKS:
        if wanted and dataset not in wanted:
            continue
        data = mudpt.data.load_dataset(dataset, root=args.root, subsample=subsample)
        row = {"dataset": dataset, "subsample": subsample, "classes": len(data.classnames),
               "chance": 100.0 / len(data.classnames), "n": len(data.test)}
        for key, template in TEMPLATES.items():
            method = mudpt.create("zsclip", clip, list(data.classnames), templates=[template])
            metrics = evaluate(method, dataset=dataset, root=args.root, subsample=subsample, progress=False,
                               device="cpu")
            row[key] = metrics["accuracy"]
        rows.append(row)
        print(f"  {dataset}/{subsample}: {row['photo']:.1f}% (chance {row['chance']:.1f}%)", file=sys.stderr)

    header = "| task | subsample | classes | chance | zero-shot 'a photo of a {}.' | zero-shot 'a {}.' | test images |"
    print(f"world-tiny zero-shot quality (weights: {args.pretrained or 'shipped'})\n")
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dataset']} | {r['subsample']} | {r['classes']} | {r['chance']:.1f} | {r['photo']:.1f} | "
              f"{r['bare']:.1f} | {r['n']} |")
    failures = []
    for (dataset, subsample), bar in BARS.items():
        for r in rows:
            if (r["dataset"], r["subsample"]) == (dataset, subsample) and r["photo"] < bar:
                failures.append(f"{dataset}: {r['photo']:.1f}% < {bar}%")
    print(f"\nbars (issue 5): shape >= 45%, colour x shape >= 40%: "
          f"{'met' if not failures else 'NOT met: ' + '; '.join(failures)} ({time.time() - started:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"pretrained": args.pretrained, "rows": rows, "failures": failures}, handle, indent=2)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
