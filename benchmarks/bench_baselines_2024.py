"""Training-step cost of the 2024 prompt baselines (TCP, MMA, CoPrompt, DePT) relative to MaPLe:
wall time of one step and the peak memory it needs.

Each method runs in a fresh process (ViT-B/16 at random init, 100 class names (CIFAR-100's),
batch 4, fp32 unless ``--precision``), with its defaults at ViT-B/16 (CoPrompt: MaPLe's prompts
at depth 9 with its adapters, two augmented views, a description file written for the classes;
DePT over MaPLe and over CoOp). One step = the method's objective (``method(images, labels)``),
its backward, an SGD step; the median of ``--repeats`` steps after one warm-up step. Printed per
row: the step time and its ratio to MaPLe's, the process's peak RSS and its growth over the
built model (CPU), and on CUDA torch's peak allocated memory during the steps.

Usage::

    python benchmarks/bench_baselines_2024.py [--methods maple,tcp,mma,coprompt,dept_maple,coop,dept_coop]
        [--device cpu|cuda] [--precision fp32|bf16|fp16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_METHODS = "maple,tcp,mma,coprompt,dept_maple,coop,dept_coop"


def child(args) -> None:
    import torch

    import mudpt
    from bench_core import CIFAR100
    from mudpt.engine.evaluation import autocast_context

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    clip = mudpt.load_clip("ViT-B-16", device=args.device)
    options = {}
    cls = mudpt.methods.get_method_class(args.child)
    if "descriptions" in cls.Config.option_names():
        path = os.path.join(tempfile.mkdtemp(), "descriptions.json")
        with open(path, "w") as f:
            json.dump({c: [f"a photo of a {c}.", f"a blurry photo of a {c}.", f"a drawing of a {c}."]
                       for c in CIFAR100}, f)
        options["descriptions"] = path
    method = mudpt.create(args.child, clip, CIFAR100, **options).to(device).train()
    shape = (args.batch, cls.train_views, 3, 224, 224) if cls.train_views > 1 else (args.batch, 3, 224, 224)
    images = torch.randn(*shape, device=device)
    labels = torch.randint(0, len(CIFAR100), (args.batch,), device=device)
    params = [p for _, p in method.trainable_parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9)

    def step():
        with autocast_context(device, args.precision):
            out = method(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up (CoPrompt's description features, cached frozen text)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "seconds": statistics.median(times), "built_mb": built,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable": method.num_trainable_parameters()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    methods = args.methods.split(",")
    if "maple" not in methods:
        methods = ["maple"] + methods  # the reference row
    print(f"ViT-B-16 (random init), 100 class names, batch {args.batch}, {args.precision}, {args.device}; "
          f"median of {args.repeats} steps after a warm-up, one fresh process per method")
    print(f"{'method':<12} {'step s':>7} {'vs MaPLe':>9} {'peak RSS MB':>12} {'step adds MB':>13} {'CUDA peak MB':>13} "
          f"{'trainable':>11}")
    reference = None
    for method in methods:
        command = [sys.executable, os.path.abspath(__file__), "--child", method, "--batch", str(args.batch),
                   "--device", args.device, "--precision", args.precision, "--repeats", str(args.repeats)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                            os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1][:70]
            print(f"{method:<12} failed: {tail}")
            continue
        r = json.loads(lines[-1])
        if method == "maple":
            reference = r
        ratio = f"{r['seconds'] / reference['seconds']:.2f}x" if reference else "-"
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
        print(f"{method:<12} {r['seconds']:7.2f} {ratio:>9} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] - r['built_mb']:13.0f} {cuda:>13} {r['trainable']:>11,}")


if __name__ == "__main__":
    main()
