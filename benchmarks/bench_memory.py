"""Peak memory of one training step at ImageNet's 1,000 class names, with and without the
text tower's memory saver (``TrainConfig.text_chunk``: class chunks under activation
checkpointing).

Each configuration runs in a fresh process (ViT-B/16 at random init, batch 4, fp32 unless
``--precision``): build the method on open_clip's 1,000 ImageNet class names, one step
(forward, backward, SGD). Printed per row: the process's peak RSS (CPU; the backbone and
Python take the "before the step" share), the step's wall time, and on CUDA the peak memory
allocated by torch. A configuration that does not fit under ``--limit-gb`` (an address-space
limit, so that a run that would swap the machine fails instead) is reported as such.

Usage::

    python benchmarks/bench_memory.py [--methods cocoop,maple,mudpt,promptsrc,clip_lora] [--chunk 100]
        [--device cpu|cuda] [--precision fp32|bf16|fp16] [--classes 1000] [--limit-gb 18]
        [--templates K]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def distinct(names: list) -> list:
    """open_clip's list names two classes "crane" and two "maillot": number the repeats."""
    seen: dict = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def child(args) -> None:
    import torch
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    import mudpt
    from mudpt.engine.evaluation import autocast_context

    if args.limit_gb:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    clip = mudpt.load_clip(args.backbone, device=args.device)
    classes = distinct(list(IMAGENET_CLASSNAMES)[:args.classes])
    method = mudpt.create(args.child, clip, classes).to(device).train()
    method.text_chunk = args.chunk or None
    if args.templates and hasattr(method, "_templates"):
        method._templates = method._templates[:args.templates]
    size = clip.image_size if isinstance(clip.image_size, int) else clip.image_size[0]
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, len(classes), (args.batch,), device=device)
    optimizer = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with autocast_context(device, args.precision):
            out = method(images, labels)
        out["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        status = "ok"
    except (RuntimeError, MemoryError) as err:  # an allocation beyond the limit
        status = "out of memory" if "memory" in str(err).lower() or isinstance(err, MemoryError) else str(err)[:80]
    seconds = time.perf_counter() - start
    print(json.dumps({
        "status": status, "seconds": seconds, "before_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable": method.num_trainable_parameters()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="cocoop,maple,mudpt,promptsrc,clip_lora")
    parser.add_argument("--chunk", type=int, default=100, help="class prompts per text-tower chunk with the saver")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit-gb", type=float, default=18.0, dest="limit_gb",
                        help="address-space limit of each run (0: none)")
    parser.add_argument("--backbone", default="ViT-B-16", help="backbone (random init)")
    parser.add_argument("--templates", type=int, default=None,
                        help="PromptSRC: frozen templates to average (default: all 60 on CUDA, 2 on CPU, where "
                             "the 60,000-prompt frozen pass alone takes tens of minutes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.templates is None:
        args.templates = 0 if args.device.startswith("cuda") else 2
    if args.child:
        child(args)
        return
    print(f"{args.backbone} (random init), {args.classes} ImageNet class names, batch {args.batch}, {args.precision}, "
          f"{args.device}; one training step per fresh process; saver = text_chunk {args.chunk}")
    if args.templates and "promptsrc" in args.methods.split(","):
        print(f"promptsrc averages the first {args.templates} of its 60 frozen templates: that pass runs without "
              "autograd in chunks of 1,024 prompts, so its peak is one chunk's whatever the template count")
    print(f"{'method':<10} {'saver':<6} {'status':<14} {'peak RSS MB':>12} {'before MB':>10} {'step s':>8} "
          f"{'CUDA peak MB':>13}")
    for method in args.methods.split(","):
        for chunk in (0, args.chunk):
            command = [sys.executable, os.path.abspath(__file__), "--child", method, "--chunk", str(chunk),
                       "--backbone", args.backbone,
                       "--classes", str(args.classes), "--batch", str(args.batch), "--device", args.device,
                       "--precision", args.precision, "--limit-gb", str(args.limit_gb),
                       "--templates", str(args.templates)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1][:60]
                print(f"{method:<10} {'on' if chunk else 'off':<6} {'failed':<14} {tail}")
                continue
            r = json.loads(lines[-1])
            cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
            print(f"{method:<10} {'on' if chunk else 'off':<6} {r['status']:<14} {r['peak_rss_mb']:12.0f} "
                  f"{r['before_mb']:10.0f} {r['seconds']:8.1f} {cuda:>13}")


if __name__ == "__main__":
    main()
