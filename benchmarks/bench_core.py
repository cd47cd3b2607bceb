"""Speed of the core: MuDPT's training step and evaluation throughput vs the naive computation.

ViT-B/16 at random init on CPU, 100 class names (CIFAR-100's), MuDPT with its defaults.

* Training step (batch 4, SGD, forward + backward + step): mudpt's towers (text run on the
  first ``max_eot + 1`` positions with the prefix shared by all classes computed once; last
  vision block for the CLS token only) vs naive (all 77 positions for every class, full last
  block). Text features are recomputed at every step in both, as they must be.
* Evaluation (eval mode, no grad, a pass over ``--eval-batches`` batches): mudpt (class text
  features computed once per pass, then reused; the first computation is inside the timing)
  vs naive (all 77 positions, text recomputed for every batch) vs the image tower alone
  (``encode_image``, no prompts, no text at all).

On a GPU: ``--device cuda --precision bf16|fp16|fp32`` times the same under autocast (CUDA
synchronised) and prints the training step's peak CUDA memory; ``--classes 1000`` takes
open_clip's 1,000 ImageNet class names instead of CIFAR-100's; ``--backbone test-vit-tiny``
is a quick check that the script runs.

``--backbone NAME`` times any open_clip family (``EVA02-B-16``, ``ViT-B-16-SigLIP``,
``PE-Core-B-16``, ``ViT-L-14``, ...) and prints which exact speed-ups its layout keeps
(``towers.fast_paths``); the "naive" column turns off the ones that apply. Where the CLS-only
last block applies, the prompted image tower (forward + backward) is also timed with it and
without it, alone. A family whose
tokenizer is a Hugging Face one takes ``--tokenizer DIR`` (the saved tokenizer); without it,
a stand-in with the same layout (no leading token, end = pad = 1, ids within the vocabulary)
is built from open_clip's BPE, which gives the same step time.

Usage::

    python benchmarks/bench_core.py [--threads 2] [--repeats 3] [--eval-batch 16] [--eval-batches 4]
    python benchmarks/bench_core.py --device cuda --precision bf16 --classes 1000
    python benchmarks/bench_core.py --backbone ViT-B-16-SigLIP [--tokenizer DIR]
    python benchmarks/bench_core.py --counts      # trainable parameters at ViT-B/16 defaults
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mudpt

CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()
assert len(CIFAR100) == 100


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _interleaved_times(functions: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall and CPU time of each function, timed in interleaved rounds.

    The development machines are shared: interleaving makes every variant see the same load, and
    the process CPU time (all threads) is reported beside the wall time as a load-independent
    measure of the work done.
    """
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            _sync()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in functions}


def set_naive(method, naive: bool) -> None:
    """Naive = no exact tower speed-ups: all text positions for every class (no shared-prefix
    computation) and the last vision block over all tokens (on a layout where a speed-up does
    not apply, it is off in both)."""
    method.truncate_text = not naive
    method.cls_only_last_block = not naive


def stand_in_tokenizer(name: str):
    """open_clip's BPE, laid out as SigLIP's tokenizers lay text out (no leading token; the end
    token 1 also pads) with ids inside the model's vocabulary: for timing without the real one."""
    import open_clip

    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    length, vocab = text_cfg.get("context_length", 77), text_cfg.get("vocab_size", 49408)
    bpe = open_clip.tokenizer.SimpleTokenizer(context_length=length)

    def tokenize(texts):
        rows = torch.ones(len(texts), length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [2 + t % (vocab - 2) for t in bpe.encode(text)][:length - 1] + [1]
            rows[i, :len(ids)] = torch.tensor(ids)
        return rows

    return tokenize


def print_counts() -> None:
    clip = mudpt.load_clip("ViT-B-16")
    rows = [(name, {}) for name in mudpt.available_methods()] + [
        ("mudpt", {"injection": "linear"}), ("ivlp", {"n_ctx": 4, "n_ctx_vision": 0})]
    print("trainable parameters at ViT-B-16 defaults")
    for name, options in rows:
        method = mudpt.create(name, clip, ["cat", "dog"], **options)
        label = name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
        print(f"  {label:<28} {method.num_trainable_parameters():>12,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    parser.add_argument("--eval-batch", type=int, default=16, help="evaluation batch size")
    parser.add_argument("--eval-batches", type=int, default=4, help="batches per evaluation pass")
    parser.add_argument("--counts", action="store_true", help="print trainable parameter counts and exit")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision")
    parser.add_argument("--classes", type=int, default=100,
                        help="class names: 100 = CIFAR-100's, more = open_clip's ImageNet names (up to 1000)")
    parser.add_argument("--backbone", default="ViT-B-16", help="backbone (random init): any open_clip name")
    parser.add_argument("--tokenizer", default=None,
                        help="a saved Hugging Face tokenizer folder (SigLIP-style names; default: a stand-in)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.counts:
        print_counts()
        return
    from mudpt.engine.evaluation import autocast_context

    device = torch.device(args.device)
    if args.classes <= 100:
        classes = CIFAR100[:args.classes]
    else:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        from bench_memory import distinct

        classes = distinct(list(IMAGENET_CLASSNAMES)[:args.classes])
    torch.manual_seed(0)
    import open_clip

    from mudpt.core import backbones, towers

    tokenizer = args.tokenizer
    config = None if backbones.is_registered(args.backbone) else open_clip.get_model_config(
        backbones.normalize_model_name(args.backbone))
    if tokenizer is None and config and config["text_cfg"].get("hf_tokenizer_name"):
        tokenizer = stand_in_tokenizer(backbones.normalize_model_name(args.backbone))
    clip = mudpt.load_clip(args.backbone, device=args.device, tokenizer=tokenizer)
    paths = towers.fast_paths(clip.model)
    print(f"exact speed-ups this layout keeps: {', '.join(k for k, v in paths.items() if v) or 'none'}"
          f"{'; off: ' + ', '.join(k for k, v in paths.items() if not v) if not all(paths.values()) else ''}")
    method = mudpt.create("mudpt", clip, classes).to(device)
    with torch.no_grad():  # non-zero injection outputs, as after some training
        method.injection.text_out.weight.normal_(std=0.02)
        method.injection.vision_out.weight.normal_(std=0.02)
    longest = int(clip.text_layout.end_positions(method.class_tokens).max()) + 1 if paths["text_truncation"] \
        else method.class_tokens.shape[1]
    where = f"CUDA ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.backbone} (random init), {where}, {args.precision}, {len(classes)} classes, "
          f"mudpt defaults ({method.num_trainable_parameters():,} trainable); text positions run: "
          f"{longest} (truncated) vs {method.class_tokens.shape[1]} (naive)")

    # ---- training step ------------------------------------------------------------------------
    size = clip.image_size if isinstance(clip.image_size, int) else clip.image_size[0]
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, len(classes), (args.batch,), device=device)
    optimizer = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=1e-5, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16" and device.type == "cuda")

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, args.precision):
            loss = F.cross_entropy(method(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def naive_train_step():
        set_naive(method, True)
        train_step()
        set_naive(method, False)

    method.train()
    set_naive(method, False)
    if device.type == "cuda":
        train_step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step()
        torch.cuda.synchronize(device)
        print(f"training step peak CUDA memory (allocated): {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    times = _interleaved_times({"mudpt": train_step, "naive": naive_train_step}, args.repeats)
    (fast_wall, fast_cpu), (naive_wall, naive_cpu) = times["mudpt"], times["naive"]
    print(f"training step (batch {args.batch}, fwd+bwd+SGD): mudpt {fast_wall:.3f} s wall / {fast_cpu:.3f} s CPU, "
          f"naive {naive_wall:.3f} s wall / {naive_cpu:.3f} s CPU -> {naive_wall / fast_wall:.2f}x faster "
          f"(wall), {naive_cpu / fast_cpu:.2f}x (CPU time); target >= 3x")

    # ---- the CLS-only last block alone --------------------------------------------------------
    if paths["vision_cls_only_last_block"]:
        # MuDPT's image side by itself: vision prompts (2 tokens, replaced up to depth 9) through
        # the image tower, forward + backward, with the last block for the class token or for all
        prompts = [torch.zeros(2, clip.vision_width, device=device, requires_grad=True)
                   for _ in range(min(9, clip.vision_layers))]

        def image_side(cls_only):
            def run():
                with autocast_context(device, args.precision):
                    towers.encode_image(clip.model, images, prompts, cls_only_last_block=cls_only).float().sum().backward()
            return run

        times = _interleaved_times({"cls only": image_side(True), "full": image_side(False)}, args.repeats)
        (fast_wall, fast_cpu), (full_wall, full_cpu) = times["cls only"], times["full"]
        print(f"prompted image tower (batch {args.batch}, fwd+bwd): last block for the class token "
              f"{fast_wall:.3f} s wall / {fast_cpu:.3f} s CPU, for every token {full_wall:.3f} s / {full_cpu:.3f} s "
              f"-> {full_wall / fast_wall:.3f}x (wall), {full_cpu / fast_cpu:.3f}x (CPU time)")

    # ---- evaluation ---------------------------------------------------------------------------
    eval_images = [torch.randn(args.eval_batch, 3, size, size, device=device) for _ in range(args.eval_batches)]
    n_images = args.eval_batch * args.eval_batches
    method.eval()

    @torch.no_grad()
    def eval_pass_mudpt():
        set_naive(method, False)
        method.clear_text_cache()  # a fresh evaluation pass: text computed once, inside the timing
        with autocast_context(device, args.precision):
            for batch in eval_images:
                method(batch)

    @torch.no_grad()
    def eval_pass_naive():
        set_naive(method, True)
        with autocast_context(device, args.precision):
            for batch in eval_images:
                method.clear_text_cache()  # naive: text recomputed for every batch
                method(batch)

    @torch.no_grad()
    def eval_pass_image_tower():
        with autocast_context(device, args.precision):
            for batch in eval_images:
                clip.model.encode_image(batch)

    times = _interleaved_times({"image tower": eval_pass_image_tower, "mudpt": eval_pass_mudpt,
                                "naive": eval_pass_naive}, args.repeats)
    rate = {name: (n_images / wall, n_images / cpu) for name, (wall, cpu) in times.items()}
    print(f"evaluation ({args.eval_batches} batches of {args.eval_batch}; images/s wall | per CPU-second): "
          + ", ".join(f"{name} {wall:.2f} | {cpu:.2f}" for name, (wall, cpu) in rate.items()))
    print(f"  mudpt / naive = {rate['mudpt'][0] / rate['naive'][0]:.2f}x wall, "
          f"{rate['mudpt'][1] / rate['naive'][1]:.2f}x CPU; mudpt / image tower = "
          f"{rate['mudpt'][0] / rate['image tower'][0]:.3f} wall, {rate['mudpt'][1] / rate['image tower'][1]:.3f} CPU "
          f"(target >= 0.90)")
    set_naive(method, False)


if __name__ == "__main__":
    main()
