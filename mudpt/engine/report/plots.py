"""The report's plots: accuracy against shots (few-shot, as CoOp's figures), base / new / HM
bars (base-to-new), accuracy per target (cross-dataset, domain generalisation)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from mudpt.core.files import atomic_write_bytes
from mudpt.core.vocabulary import ALL_IMAGES
from mudpt.engine.report.aggregate import Aggregate, mean_std

__all__ = ["write_plots"]


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def write_plots(agg: Aggregate, out_dir: Path) -> list[str]:
    """Write the PNG plots into ``out_dir``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        _save(fig, out_dir / name)
        plt.close(fig)
        written.append(name)

    fs = agg.fewshot
    if fs:
        panels = [(d, {(m, k): mean_std(v) for (dd, m, k), v in fs.cells.items() if dd == d}) for d in fs.datasets]
        panels.append(("average", {(m, k): (mu, 0.0) for (m, k), (mu, _) in fs.average.items()}))
        for name, values in panels:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for m in fs.methods:
                points = sorted((k, mu, sd) for (mm, k), (mu, sd) in values.items() if mm == m)
                if not points:
                    continue
                if all(k == 0 for k, _, _ in points):
                    ax.axhline(points[0][1], linestyle="--", color="grey", label=f"{m} (zero-shot)")
                    continue
                counted = [p for p in points if 0 < p[0] < ALL_IMAGES]
                if counted:
                    xs, ys, es = zip(*counted)
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
                for k, mu, _ in points:  # every training image (--shots 0): a level, not a point on the axis
                    if k == ALL_IMAGES:
                        ax.axhline(mu, linestyle=":", color=ax.lines[-1].get_color() if counted else "black",
                                   label=f"{m} (all images)")
            low, high = ax.get_ylim()
            if high - low < 10:  # at least 10 points of accuracy: a 1.7-point gap is not a cliff
                middle = (low + high) / 2
                ax.set_ylim(middle - 5, middle + 5)
            ax.set_xscale("log", base=2)
            ticks = [k for k in fs.shots if 0 < k < ALL_IMAGES]
            if ticks:
                ax.set_xticks(ticks)
                ax.set_xticklabels([str(k) for k in ticks])
            ax.set_xlabel("shots per class")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(f"few-shot: {name}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            save(fig, f"fewshot_{_safe(name)}.png")
    b2n = agg.base2new
    if b2n:
        def label(method, shots, rows):  # a method at two shot counts: two bars that say which
            return f"{method} ({shots} shots)" if len({r.shots for r in rows if r.method == method}) > 1 else method

        groups = [(d, [(label(r.method, r.shots, b2n.rows), r.base_mean, r.new_mean, r.hm)
                       for r in b2n.rows if r.dataset == d]) for d in b2n.datasets]
        groups.append(("average", [(label(a.method, a.shots, b2n.average), a.base_mean, a.new_mean, a.hm)
                                   for a in b2n.average]))
        for name, bars in groups:
            if not bars:
                continue
            fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(bars) + 2), 4))
            width = 0.27
            for j, label in enumerate(("base", "new", "HM")):
                xs = [i + (j - 1) * width for i in range(len(bars))]
                ys = [0.0 if math.isnan(b[j + 1]) else b[j + 1] for b in bars]
                drawn = ax.bar(xs, ys, width=width, label=label)
                ax.bar_label(drawn, fmt="%.1f", fontsize=7, padding=1)
            ax.set_xticks(range(len(bars)))
            ax.set_xticklabels([b[0] for b in bars])
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(f"base-to-new: {name}")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            save(fig, f"base2new_{_safe(name)}.png")
    for protocol in ("xd", "dg"):
        block = agg.block(protocol)
        if not block or not block.targets:
            continue
        rows, columns = block.rows, ["source"] + block.targets
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(columns) * max(len(rows), 1) * 0.5 + 3), 4))
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            ys = [mean_std(r.source_acc)[0]] + [mean_std(r.targets[t])[0] if r.targets[t] else 0.0
                                               for t in block.targets]
            ax.bar([c + (i - (len(rows) - 1) / 2) * width for c in range(len(columns))], ys, width=width,
                   label=f"{r.method} ({r.source})")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(columns, rotation=30, ha="right")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("cross-dataset transfer" if protocol == "xd" else "domain generalisation")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        save(fig, f"{protocol}.png")
    return written
