"""``mudpt demo``: prompt tuning end to end on the built-in world, no download, a few minutes on CPU.

It generates (or reuses) the world's data, evaluates zero-shot CLIP (the shipped ``world-tiny``),
tunes CoOp and MuDPT on 16 shots of the base classes of the demo task through the engine's
training loop (the one ``mudpt train`` uses), evaluates every method on the base classes, on
the new classes (compositions never seen in tuning) and on shifted renderings of the base
classes, prints a table and saves ``results.json`` and a bar plot ``demo.png``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mudpt.core.files import atomic_write
from mudpt.core.vocabulary import harmonic_mean, shots_label

DEMO_DATASET = "world_source"
# Shifted renderings evaluated by the demo (base classes), as domain-generalisation targets.
# Not world_source_plain: the shipped model's zero-shot on its base classes is 92.5%, too close to
# the ceiling to compare methods on (it stays in benchmarks/world_quality.py).
DEMO_SHIFTS = ("world_source_foggy", "world_source_cluttered", "world_source_sketch")
DEMO_METHODS = ("coop", "mudpt")


@dataclass
class DemoSettings:
    """Everything that defines a demo run (the defaults are ``mudpt demo`` with no options)."""

    dataset: str = DEMO_DATASET
    methods: tuple[str, ...] = DEMO_METHODS
    shifts: tuple[str, ...] = DEMO_SHIFTS
    shots: int = 16
    seed: int = 1
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.01
    backbone: str = "world-tiny"
    pretrained: str | None = None
    root: str | None = None
    method_options: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **changes) -> "DemoSettings":
        """A seconds-long smoke run: 2 shots, 1 epoch, no shifted renderings."""
        settings = cls(shots=2, epochs=1, shifts=())
        for key, value in changes.items():
            setattr(settings, key, value)
        return settings


def machine_load() -> str:
    """A warning when other processes keep the CPU busy (the demo's minute assumes an idle
    machine), else an empty string."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return ""
    cores = os.cpu_count() or 1
    if load < 0.5 * cores:
        return ""
    return (f"the machine is busy (load {load:.1f} on {cores} cores): the demo's minute on an idle 2-core CPU "
            f"will be several minutes here")


def _train_config(settings: DemoSettings, method: str, out: Path):
    from mudpt.engine import TrainConfig

    return TrainConfig(
        method=method, dataset=settings.dataset, root=settings.root, shots=settings.shots, seed=settings.seed,
        subsample="base", backbone=settings.backbone, pretrained=settings.pretrained,
        output_dir=str(out / method), epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
        warmup_epochs=1 if settings.epochs > 1 else 0, method_options=dict(settings.method_options.get(method, {})),
        # train's folder rules: its own finished runs are reused, another run's folder is refused
        overwrite=False, device="cpu", num_workers=0, eval_batch_size=256,
    )


def run_demo(out: str | os.PathLike = "mudpt-demo", settings: DemoSettings | None = None,
             progress: bool = True, plot: bool = True, log=print) -> dict:
    """Run the demo; returns ``{"rows": [...], "settings": {...}, "seconds": float}`` and writes
    ``out/results.json`` (and ``out/demo.png`` when ``plot``)."""
    import mudpt.data
    from mudpt.core.files import atomic_write_json
    from mudpt.engine import evaluate, train
    from mudpt.methods import get_method_class

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log(f"[demo] world data: {settings.dataset} (+ {len(settings.shifts)} shifted renderings), "
        f"backbone {settings.backbone}")
    busy = machine_load()
    if busy:
        log(f"[demo] {busy}")
    # Loading generates the world's datasets on first use (cached afterwards).
    for name in (settings.dataset, *settings.shifts):
        mudpt.data.load_dataset(name, root=settings.root)

    rows = []
    for method in ("zsclip", *settings.methods):
        t0 = time.time()
        learns = get_method_class(method).learns_from_data
        log(f"[demo] {method}: " + (f"{shots_label(settings.shots)} tuning on the base classes" if learns else
                                    "zero-shot evaluation"))
        result = train(_train_config(settings, method, out), progress=progress)
        base = float(result.metrics["accuracy"])
        new = float(evaluate(result.method, dataset=settings.dataset, root=settings.root, subsample="new",
                             progress=progress, device="cpu")["accuracy"])
        shifted = {}
        for shift in settings.shifts:
            shifted[shift] = float(evaluate(result.method, dataset=shift, root=settings.root, subsample="base",
                                            progress=progress, device="cpu")["accuracy"])
        row = {"method": method, "base": base, "new": new, "hm": harmonic_mean(base, new),
               "shifted": shifted, "shifted_mean": sum(shifted.values()) / len(shifted) if shifted else None,
               "trainable_parameters": int(result.metrics.get("trainable_parameters", 0)),
               "seconds": round(time.time() - t0, 1), "run_dir": str(result.run_dir)}
        rows.append(row)
    summary = {"rows": rows, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in settings.__dict__.items()},
               "seconds": round(time.time() - started, 1)}
    atomic_write_json(out / "results.json", summary)
    log("")
    log(format_table(rows, settings))
    if plot:
        path = save_plot(rows, out / "demo.png", settings)
        log(f"[demo] plot: {path}")
    log(f"[demo] results: {out / 'results.json'} ({summary['seconds']:.0f} s)")
    return summary


def format_table(rows: list[dict], settings: DemoSettings | None = None) -> str:
    """The demo's table: accuracy (%) on base classes, new classes, their HM, shifted renderings."""
    settings = settings or DemoSettings()
    shift_header = " shifted" if any(r.get("shifted") for r in rows) else ""
    header = f"{'method':<8} {'base':>6} {'new':>6} {'HM':>6}{shift_header:>9}  trainable"
    lines = [f"{settings.dataset}: {shots_label(settings.shots)} base-to-new, seed {settings.seed}", header,
             "-" * len(header)]
    for r in rows:
        shifted = f" {r['shifted_mean']:8.2f}" if r.get("shifted_mean") is not None else ""
        lines.append(f"{r['method']:<8} {r['base']:6.2f} {r['new']:6.2f} {r['hm']:6.2f}{shifted}  "
                     f"{r['trainable_parameters']:>9,}")
    if shift_header:
        lines.append("shifted = mean accuracy on the base classes of " + ", ".join(settings.shifts))
    return "\n".join(lines)


def save_plot(rows: list[dict], path: str | os.PathLike, settings: DemoSettings | None = None) -> Path:
    """Grouped bar plot of base / new / HM (/ shifted) per method, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = settings or DemoSettings()
    metrics = [("base", "base"), ("new", "new"), ("hm", "HM")]
    if any(r.get("shifted_mean") is not None for r in rows):
        metrics.append(("shifted_mean", "shifted"))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
        values = [row.get(key) or 0.0 for key, _ in metrics]
        bars = ax.bar(xs, values, width, label=row["method"])
        for x, v in zip(xs, values):
            ax.text(x, v + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        del bars
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"mudpt demo: {settings.dataset}, {shots_label(settings.shots)}, world-tiny CLIP")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
