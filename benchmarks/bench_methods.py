"""Training-step time of the regularised baselines against the methods they build on.

ViT-B/16 at random init on CPU, 100 class names (CIFAR-100's), batch 4, fp32, each method with
its defaults; one step = the method's objective (``method(images, labels)``), its backward
(``method.backward``: ProGrad's two gradients and projection), an SGD step. Timed in interleaved
rounds (medians, wall and process CPU time):

* KgCoOp against CoOp with its 4 context vectors, ProGrad against CoOp with 16: KgCoOp's frozen
  text features come from the cache, so its step should cost what CoOp's does; ProGrad
  back-propagates a second loss (the authors' method: two gradients per step).
* PromptSRC against IVLP with PromptSRC's prompts (4 + 4 tokens, depth 9): at most one extra
  frozen image-tower forward per step (the frozen text features are cached), printed beside it.

Usage::

    python benchmarks/bench_methods.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

import mudpt
from bench_core import CIFAR100, _interleaved_times
from mudpt.methods.base import StepContext


def make_step(method, images, labels):
    params = [p for _, p in method.trainable_parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    context = StepContext(scale=lambda loss: loss, average=lambda tensors: list(tensors), params=params)
    method.train()

    def step():
        outputs = method(images, labels)
        optimizer.zero_grad(set_to_none=True)
        method.backward(outputs, context)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = mudpt.load_clip("ViT-B-16")
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, len(CIFAR100), (args.batch,))
    # Each baseline at the settings of the method it is compared with (the same prompt shapes).
    methods = {
        "coop (16 ctx)": mudpt.create("coop", clip, CIFAR100),
        "prograd": mudpt.create("prograd", clip, CIFAR100),
        "coop (4 ctx)": mudpt.create("coop", clip, CIFAR100, ctx_init="a photo of a"),
        "kgcoop": mudpt.create("kgcoop", clip, CIFAR100),
        "ivlp (4+4, depth 9)": mudpt.create("ivlp", clip, CIFAR100, n_ctx=4, depth=9, ctx_init="a photo of a"),
        "promptsrc": mudpt.create("promptsrc", clip, CIFAR100),
    }
    steps = {name: make_step(method, images, labels) for name, method in methods.items()}

    def frozen_image_forward():
        methods["promptsrc"].frozen_image_features(images)

    steps["frozen image forward"] = frozen_image_forward
    times = _interleaved_times(steps, args.repeats)
    print(f"ViT-B-16 (random init), CPU, {torch.get_num_threads()} threads, {len(CIFAR100)} classes, batch "
          f"{args.batch}, fp32; median of {args.repeats} interleaved rounds")
    print(f"{'step':<22} {'wall s':>8} {'CPU s':>8} {'trainable':>10}")
    for name, (wall, cpu) in times.items():
        count = f"{methods[name].num_trainable_parameters():,}" if name in methods else ""
        print(f"{name:<22} {wall:8.2f} {cpu:8.2f} {count:>10}")
    w = {name: wall for name, (wall, _) in times.items()}
    coop4, coop16, ivlp = w["coop (4 ctx)"], w["coop (16 ctx)"], w["ivlp (4+4, depth 9)"]
    print(f"kgcoop - coop (4 ctx): {w['kgcoop'] - coop4:+.2f} s ({w['kgcoop'] / coop4:.2f}x)")
    print(f"prograd - coop (16 ctx): {w['prograd'] - coop16:+.2f} s ({w['prograd'] / coop16:.2f}x; a second backward)")
    print(f"promptsrc - ivlp (4+4, depth 9): {w['promptsrc'] - ivlp:+.2f} s vs one frozen image forward "
          f"{w['frozen image forward']:.2f} s")


if __name__ == "__main__":
    main()
