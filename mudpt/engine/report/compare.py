"""Published numbers matched to a report's rows (the numbers and their lookup live in
:mod:`mudpt.engine.published`)."""

from __future__ import annotations

import math
import statistics

from mudpt.core.vocabulary import harmonic_mean
from mudpt.engine.report.aggregate import Aggregate

__all__ = ["BENCHMARK_11", "over", "published_entries", "published_target_average"]

# The 11 datasets whose average the published base-to-new numbers are.
BENCHMARK_11 = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


def _entry(agg: Aggregate, published, protocol: str, dataset, label: str, shots=None):
    info = agg.labels.get((protocol, label), {"method": label.split(" [")[0], "setting": {}})
    if protocol == "base2new":
        return published.base2new(dataset, info["method"], info["setting"], shots)
    if protocol in ("xd", "dg"):
        return published.transfer(protocol, dataset, info["method"], info["setting"], shots)
    return published.fewshot(dataset, info["method"], info["setting"])


def published_entries(agg: Aggregate, published) -> dict:
    """Published entries of the report's rows: ``{("base2new", dataset, label, shots): entry,
    ("base2new", None, label, shots): entry}`` (None: the average over datasets), ``{("fewshot",
    dataset, label): entry}`` and ``{(protocol, source, label, shots): entry}`` for xd and dg."""
    found: dict = {}
    if published is None:
        return found
    b2n = agg.base2new
    if b2n:
        for r in b2n.rows:
            entry = _entry(agg, published, "base2new", r.dataset, r.method, r.shots)
            if entry:
                found[("base2new", r.dataset, r.method, r.shots)] = entry
        if b2n.datasets and set(b2n.datasets) <= set(BENCHMARK_11):
            for a in b2n.average:  # one per method and shot count
                shots = a.shots
                entry = _entry(agg, published, "base2new", None, a.method, shots)
                mine = [r for r in b2n.rows if r.method == a.method and r.shots == shots and not math.isnan(r.new_mean)]
                same = [found.get(("base2new", r.dataset, r.method, shots)) for r in mine]
                if len(mine) < len(BENCHMARK_11) and mine and all(same) and len({e["source"] for e in same}) == 1:
                    # the per-dataset tables have ours' datasets: average them over the same ones
                    b = statistics.fmean(float(e["base"]) for e in same)
                    n = statistics.fmean(float(e["new"]) for e in same)
                    entry = {"method": a.method, "base": b, "new": n, "hm": harmonic_mean(b, n),
                             "source": same[0]["source"], "label": (entry or {}).get("label", a.method),
                             "over": len(same)}
                if entry:
                    found[("base2new", None, a.method, shots)] = entry
    fs = agg.fewshot
    if fs:
        for d in fs.datasets:
            for m in fs.methods:
                entry = _entry(agg, published, "fewshot", d, m)
                if entry:
                    found[("fewshot", d, m)] = entry
    for protocol in ("xd", "dg"):
        block = agg.block(protocol)
        for r in (block.rows if block else []):
            entry = _entry(agg, published, protocol, r.source, r.method, r.shots)
            if entry:
                found[(protocol, r.source, r.method, r.shots)] = entry
    return found


def published_target_average(entry: dict, targets: list[str]):
    """The published average over the report's targets: the table's own average when they are
    the table's targets, the mean of its numbers for a subset, None when one is missing."""
    published = entry.get("targets") or {}
    if not targets or any(t not in published for t in targets):
        return None
    if set(targets) == set(published) and "average" in entry:
        return entry["average"]
    return statistics.fmean(float(published[t]) for t in targets)


def over(entry: dict) -> str:
    """What a published average is over."""
    n = entry.get("over")
    return "the 11 datasets" if n is None else f"the same {n} dataset{'s' if n != 1 else ''}"
