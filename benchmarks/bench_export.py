"""Inference throughput of an exported model against the run's own eval path and the bare image
tower: images per second on the CPU at batch 1 and 32.

A method (default MuDPT, its default options) on ViT-B/16 at random init with 100 class names
(CIFAR-100's) is exported as ONNX (run by onnxruntime) and as a ``torch.export`` program, and
timed beside:

* the method's eval path (``method(images)`` under no_grad, its class text features cached);
* the bare image tower (``model.encode_image``) plus one matrix product with the class
  embeddings: what an export cannot beat, since its graph is the tower with the method's
  image-side tensors and that product.

Usage::

    python benchmarks/bench_export.py [--method mudpt] [--threads 2] [--repeats 5] [--backbone ViT-B-16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

import mudpt
from bench_core import CIFAR100
from mudpt.engine.export import trace_method, write_program


def _rate(function, images, repeats: int) -> float:
    function(images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(images)
        times.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="mudpt")
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    clip = mudpt.load_clip(args.backbone)
    method = mudpt.create(args.method, clip, CIFAR100).eval()
    folder = tempfile.mkdtemp()
    start = time.perf_counter()
    program = trace_method(method)
    onnx_path, pt2_path = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.pt2")
    write_program(program, pt2_path, "torch")
    write_program(program, onnx_path, "onnx")
    export_seconds = time.perf_counter() - start

    import onnxruntime

    options = onnxruntime.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    exported = torch.export.load(pt2_path).module()
    with torch.no_grad():
        embeddings = method.class_text_features(method.compute_prompts())
    scale = float(method.logit_scale)

    def eval_path(x):
        with torch.no_grad():
            return method(x)

    def bare_tower(x):
        with torch.no_grad():
            return scale * F.normalize(clip.model.encode_image(x), dim=-1) @ embeddings.t()

    def pt2(x):
        with torch.no_grad():
            return exported(x)

    def onnx(x):
        return session.run(None, {"images": x.numpy()})[0]

    size = clip.image_size
    print(f"{args.backbone} (random init), {args.method}, {len(CIFAR100)} classes, CPU, "
          f"{torch.get_num_threads()} torch threads; export took {export_seconds:.1f} s "
          f"(ONNX {os.path.getsize(onnx_path) / 2**20:.0f} MiB); images/s, median of {args.repeats}")
    print(f"{'batch':>5} {'bare tower + matmul':>20} {'eval path':>10} {'ONNX (ort)':>11} {'torch.export':>13}")
    for batch in (int(b) for b in args.batches.split(",")):
        images = torch.randn(batch, 3, size, size)
        rates = [_rate(f, images, args.repeats) for f in (bare_tower, eval_path, onnx, pt2)]
        print(f"{batch:>5} {rates[0]:>20.1f} {rates[1]:>10.1f} {rates[2]:>11.1f} {rates[3]:>13.1f}")


if __name__ == "__main__":
    main()
