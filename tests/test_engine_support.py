"""Helpers for the engine tests (no tests here): small generated image folders and configs.

Datasets are bring-your-own image-folder trees (``train/``, ``val/``, ``test/`` of class
folders) of 24x24 images whose colour identifies the class, so that even a randomly initialised
tiny backbone has something learnable and every test stays in seconds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "test-vit-tiny"

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
OTHER_COLOURS = {"purple": (150, 30, 160), "orange": (240, 140, 20), "grey": (128, 128, 128)}


def make_image_folder(root: Path, colours: dict | None = None, train: int = 6, val: int = 2, test: int = 4) -> Path:
    """Write ``root/{train,val,test}/<class>/<i>.png``; returns ``root``."""
    colours = colours or COLOURS
    for split, count in (("train", train), ("val", val), ("test", test)):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = random.Random(f"{split}-{name}-{i}")
                jitter = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in colour)
                image = Image.new("RGB", (24, 24), jitter)
                # a small square of noise so that crops and flips change something
                for _ in range(20):
                    image.putpixel((rng.randrange(24), rng.randrange(24)), tuple(rng.randrange(256) for _ in range(3)))
                image.save(folder / f"{i}.png")
    write_descriptions(root / "descriptions.json", colours)  # CoPrompt's class descriptions, beside the data
    return root


def write_descriptions(path: Path, classes=None) -> str:
    """A class-descriptions file (CoPrompt's data) for ``classes`` (default: the colour classes);
    returns its path."""
    import json

    path.write_text(json.dumps({name: [f"a {name} square.", f"something {name}."] for name in classes or COLOURS}))
    return str(path)


def needed_options(name: str, classes, options: dict | None = None) -> dict:
    """``options`` plus what method ``name`` cannot train without on a class list of its own: the
    class descriptions CoPrompt reads (a file written for ``classes``)."""
    import tempfile

    import mudpt

    options = dict(options or {})
    if "descriptions" in mudpt.methods.get_method_class(name).Config.option_names() and "descriptions" not in options:
        options["descriptions"] = write_descriptions(Path(tempfile.mkdtemp()) / "descriptions.json", list(classes))
    return options


def tiny_config(dataset: Path, output: Path, method: str = "coop", **changes):
    """A fast TrainConfig on the tiny test backbone."""
    from mudpt.engine import TrainConfig

    # Smaller prompts for the methods that have those options (any registered method works).
    options = {"coop": {"n_ctx": 4}, "cocoop": {"n_ctx": 2}, "vpt": {"n_ctx": 2, "depth": 2},
               "ivlp": {"n_ctx": 2, "depth": 2}, "maple": {"n_ctx": 2, "depth": 2},
               "mudpt": {"n_ctx": 2, "depth": 2}, "promptsrc": {"n_ctx": 2, "depth": 2}}.get(method, {})
    fields = dict(method=method, dataset=str(dataset), shots=2, seed=1, backbone=BACKBONE, pretrained=None,
                  output_dir=str(output), epochs=2, batch_size=4, lr=0.01, warmup_epochs=0, precision="fp32",
                  method_options=options, eval_batch_size=50, device="cpu")
    fields.update(changes)
    return TrainConfig(**fields)


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mudpt ARGS`` in a subprocess (no progress bars)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mudpt", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def learned_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "learned.safetensors"))
