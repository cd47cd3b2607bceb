"""Benchmark of the engine: throughput of the full ``mudpt train`` loop and training-step memory.

Prints, for the tiny built-in backbone ("world-tiny" when its weights are installed, else
"test-vit-tiny") and for ViT-B-16 at random init:

- training images/s and evaluation images/s of the whole ``train()`` loop (data loading,
  augmentation, forward, backward, optimiser, checkpoint; then the test pass), MuDPT defaults;
- the peak memory of one MuDPT training step (batch 4) with 1000 class names, fp32 vs bf16:
  on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set size of a fresh
  process (``ru_maxrss``) and its growth over the step (each precision runs in its own process,
  because the peak RSS of a process never goes down).

Usage::

    python benchmarks/bench_train.py                 # everything (minutes on a laptop CPU)
    python benchmarks/bench_train.py --skip-vitb     # tiny backbone only
    python benchmarks/bench_train.py --classes 200   # lighter memory measurement
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _tiny_backbone() -> str:
    import mudpt

    try:
        mudpt.load_clip("world-tiny")
        return "world-tiny"
    except Exception as err:  # noqa: BLE001 - any failure means the shipped weights are not usable here
        print(f"(world-tiny unavailable: {str(err)[:120]}; using test-vit-tiny)")
        return "test-vit-tiny"


def _make_folder(root: Path, classes: int, per_class: int) -> Path:
    """A small image-folder dataset (train/test) of coloured 64x64 images."""
    from PIL import Image

    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class {c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour = ((c * 53 + i) % 256, (c * 97) % 256, (c * 31 + 7 * i) % 256)
                Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
    return root


def bench_loop(backbone: str, dataset: str, shots: int, device: str, epochs: int = 2, batch_size: int = 4,
               num_workers: int = 0, precision: str = "fp32") -> dict:
    from mudpt.engine import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="mudpt", dataset=dataset, shots=shots, backbone=backbone, pretrained=None,
                          output_dir=str(Path(tmp) / "run"), epochs=epochs, batch_size=batch_size,
                          warmup_epochs=0, precision=precision, device=device, num_workers=num_workers,
                          eval_batch_size=100)
        start = time.perf_counter()
        result = train(cfg, progress=False)
        wall = time.perf_counter() - start
        records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    t = result.metrics["timings"]
    # Steady state: the last epoch (the first one also pays for lazy initialisation).
    last = [r for r in records if r["kind"] == "epoch"][-1]
    last_images = sum(r["images"] for r in records if r["kind"] == "step" and r["epoch"] == last["epoch"])
    return {"backbone": backbone, "dataset": dataset, "train_img_s_all": t["train_images_per_second"],
            "train_img_s": last_images / last["seconds"], "eval_img_s": t["eval_images_per_second"],
            "test_images": result.metrics["n"], "wall_s": wall, "setup_s": t["setup_seconds"]}


def memory_step(backbone: str, classes: int, precision: str, device: str) -> dict:
    """One MuDPT training step (batch 4) with ``classes`` class names; peak memory."""
    import mudpt
    from mudpt.engine.evaluation import autocast_context, resolve_device

    dev = resolve_device(device)
    clip = mudpt.load_clip(backbone, device=str(dev))
    method = mudpt.create("mudpt", clip, [f"object {i}" for i in range(classes)]).to(dev)
    params = [p for _, p in method.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(4, 3, clip.image_size, clip.image_size, device=dev)
    labels = torch.randint(0, classes, (4,), device=dev)
    method.train()
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with autocast_context(dev, precision):
        logits = method(images)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"precision": precision, "classes": classes, "backbone": backbone, "step_s": seconds,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_step_mb": rss_before_kb / 1024, "device": dev.type}
    if dev.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_step_peak_over_model_mb"] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--classes", type=int, default=1000, help="class names of the memory measurement")
    parser.add_argument("--skip-vitb", action="store_true", help="only the tiny backbone")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--memory-step", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="ViT-B-16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_step:  # child process of the memory measurement
        print(json.dumps(memory_step(args.backbone, args.classes, args.memory_step, args.device)))
        return 0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    rows = []
    tiny = _tiny_backbone()
    if tiny == "world-tiny":
        rows.append(bench_loop(tiny, "world_source", shots=4, device=args.device, num_workers=args.num_workers))
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(_make_folder(Path(tmp) / "bench_data", classes=8, per_class=8))
        if tiny != "world-tiny":
            rows.append(bench_loop(tiny, folder, shots=8, device=args.device, num_workers=args.num_workers))
        if not args.skip_vitb:
            rows.append(bench_loop("ViT-B-16", folder, shots=4, device=args.device, num_workers=args.num_workers))
    print("\nFull `mudpt train` loop, MuDPT defaults, batch 4, fp32 (data loading included):")
    print("(train img/s: last of 2 epochs; in brackets: both epochs, including warm-up of the first steps)")
    print(f"{'backbone':<16}{'dataset':<14}{'train img/s':>20}{'eval img/s':>12}{'test imgs':>10}{'wall s':>9}")
    for r in rows:
        name = Path(r["dataset"]).name
        train_col = f"{r['train_img_s']:.1f} ({r['train_img_s_all']:.1f})"
        print(f"{r['backbone']:<16}{name:<14}{train_col:>20}{r['eval_img_s']:>12.1f}{r['test_images']:>10}"
              f"{r['wall_s']:>9.1f}")

    if not args.skip_memory:
        backbone = tiny if args.skip_vitb else "ViT-B-16"
        print(f"\nOne MuDPT training step, batch 4, {args.classes} classes, {backbone} (random init):")
        for precision in ("fp32", "bf16"):
            cmd = [sys.executable, __file__, "--memory-step", precision, "--classes", str(args.classes),
                   "--backbone", backbone, "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if done.returncode != 0:
                print(f"  {precision}: failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            line = (f"  {precision}: step {r['step_s']:.2f}s, peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"(+{r['peak_rss_mb'] - r['rss_before_step_mb']:.0f} MB over the step)")
            if "cuda_peak_allocated_mb" in r:
                line += f", CUDA peak allocated {r['cuda_peak_allocated_mb']:.0f} MB"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
