"""Aggregate: the runs of each protocol pooled over seeds, in typed blocks, and the same numbers
in long form (one row per protocol, dataset, method, shots and column: ``report.csv``)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from mudpt.core.vocabulary import ALL_IMAGES, harmonic_mean
from mudpt.engine.report.collect import RunRecord, method_order

__all__ = ["Aggregate", "Base2NewAverage", "Base2NewBlock", "Base2NewRow", "FewShotBlock", "TransferBlock",
           "TransferRow", "aggregate", "mean_std"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _mean(values: list[float]) -> float:
    return mean_std(values)[0]


@dataclass
class FewShotBlock:
    """Few-shot: accuracies over seeds per (dataset, method, shots); the average over datasets
    per (method, shots) as (mean, number of datasets)."""

    cells: dict
    f1: dict
    datasets: list
    methods: list
    shots: list
    average: dict


@dataclass
class Base2NewRow:
    dataset: str
    method: str
    shots: int
    base: list
    new: list

    @property
    def base_mean(self) -> float:
        return _mean(self.base)

    @property
    def new_mean(self) -> float:
        return _mean(self.new)

    @property
    def hm(self) -> float:
        return harmonic_mean(self.base_mean, self.new_mean) if self.new else math.nan


@dataclass
class Base2NewAverage:
    method: str
    base_mean: float
    new_mean: float
    n_datasets: int
    shots: int = 16

    @property
    def hm(self) -> float:
        return harmonic_mean(self.base_mean, self.new_mean)


@dataclass
class Base2NewBlock:
    rows: list
    average: list
    datasets: list
    methods: list


@dataclass
class TransferRow:
    source: str
    method: str
    shots: int
    source_acc: list
    targets: dict  # target name -> accuracies over seeds

    @property
    def target_average(self) -> float:
        means = [_mean(v) for v in self.targets.values() if v]
        return statistics.fmean(means) if means else math.nan


@dataclass
class TransferBlock:
    rows: list
    targets: list


@dataclass
class Aggregate:
    """Every protocol's block (None without runs) and, per (protocol, row label), the method and
    setting the label stands for."""

    fewshot: Optional[FewShotBlock] = None
    base2new: Optional[Base2NewBlock] = None
    xd: Optional[TransferBlock] = None
    dg: Optional[TransferBlock] = None
    labels: dict = field(default_factory=dict)

    def block(self, protocol: str):
        return getattr(self, protocol)

    @property
    def empty(self) -> bool:
        return not (self.fewshot or self.base2new or self.xd or self.dg)

    def long_form(self) -> list[dict]:
        """The CSV rows: protocol, dataset, method, shots, column, mean, std, n_seeds (and
        n_datasets for averages, macro_f1 for few-shot cells)."""
        rows = []
        fs = self.fewshot
        if fs:
            for (d, m, k), values in sorted(fs.cells.items()):
                mu, sd = mean_std(values)
                rows.append({"protocol": "fewshot", "dataset": d, "method": m, "shots": k, "column": "accuracy",
                             "mean": mu, "std": sd, "n_seeds": len(values), "macro_f1": _mean(fs.f1[(d, m, k)])})
            for (m, k), (mu, n) in sorted(fs.average.items()):
                rows.append({"protocol": "fewshot", "dataset": "average", "method": m, "shots": k,
                             "column": "accuracy", "mean": mu, "std": "", "n_seeds": "", "macro_f1": "",
                             "n_datasets": n})
        b2n = self.base2new
        if b2n:
            for r in b2n.rows:
                for column in ("base", "new"):
                    mu, sd = mean_std(getattr(r, column))
                    rows.append({"protocol": "base2new", "dataset": r.dataset, "method": r.method, "shots": r.shots,
                                 "column": column, "mean": mu, "std": sd, "n_seeds": len(getattr(r, column))})
                rows.append({"protocol": "base2new", "dataset": r.dataset, "method": r.method, "shots": r.shots,
                             "column": "hm", "mean": r.hm, "std": "", "n_seeds": ""})
            for a in b2n.average:
                for column, value in (("base", a.base_mean), ("new", a.new_mean), ("hm", a.hm)):
                    rows.append({"protocol": "base2new", "dataset": "average", "method": a.method, "shots": a.shots,
                                 "column": column, "mean": value, "std": "", "n_seeds": "",
                                 "n_datasets": a.n_datasets})
        for protocol in ("xd", "dg"):
            block = self.block(protocol)
            for r in (block.rows if block else []):
                mu, sd = mean_std(r.source_acc)
                rows.append({"protocol": protocol, "dataset": r.source, "method": r.method, "shots": r.shots,
                             "column": "source", "mean": mu, "std": sd, "n_seeds": len(r.source_acc)})
                for t, values in r.targets.items():
                    mu, sd = mean_std(values)
                    rows.append({"protocol": protocol, "dataset": t, "method": r.method, "shots": r.shots,
                                 "column": "target", "mean": mu, "std": sd, "n_seeds": len(values)})
                rows.append({"protocol": protocol, "dataset": "average", "method": r.method, "shots": r.shots,
                             "column": "target", "mean": r.target_average, "std": "", "n_seeds": ""})
        for row in rows:  # every training image (--shots 0), not a count
            if row["shots"] == ALL_IMAGES:
                row["shots"] = "all"
        return rows


def _row_order(keys) -> list:
    """(dataset, method, shots) keys by dataset, the methods' order, then shots."""
    order = method_order(k[1] for k in keys)
    return sorted(keys, key=lambda k: (k[0], order.index(k[1]), k[2]))


def aggregate(records: list[RunRecord]) -> Aggregate:
    """Pool the seeds of every (protocol, dataset, row label, shots)."""
    out = Aggregate()
    by_protocol = defaultdict(list)
    for r in records:
        by_protocol[r.protocol].append(r)
        out.labels[(r.protocol, r.method)] = {"method": r.method_name, "setting": r.setting}

    if by_protocol["fewshot"]:
        cells, f1 = defaultdict(list), defaultdict(list)
        for r in by_protocol["fewshot"]:
            cells[(r.dataset, r.method, r.shots)].append(r.accuracy)
            f1[(r.dataset, r.method, r.shots)].append(r.macro_f1)
        datasets = sorted({k[0] for k in cells})
        methods = method_order(k[1] for k in cells)
        shots = sorted({k[2] for k in cells})
        average = {}
        for m in methods:
            for k in shots:
                means = [_mean(cells[(d, m, k)]) for d in datasets if cells.get((d, m, k))]
                if len(means) == len(datasets):  # an average over fewer datasets would not compare
                    average[(m, k)] = (statistics.fmean(means), len(means))
        out.fewshot = FewShotBlock(dict(cells), dict(f1), datasets, methods, shots, average)

    if by_protocol["base2new"]:
        base, new = defaultdict(list), defaultdict(list)
        for r in by_protocol["base2new"]:
            key = (r.dataset, r.method, r.shots)
            base[key].append(r.accuracy)
            ev = r.evaluations.get((r.dataset, "new"))
            if ev is not None:
                new[key].append(float(ev["accuracy"]))
        rows = [Base2NewRow(*key, base[key], new.get(key, [])) for key in _row_order(base)]
        methods = method_order(r.method for r in rows)
        averages = []
        for m in methods:
            for k in sorted({r.shots for r in rows if r.method == m}):  # never pool shot counts
                mine = [r for r in rows if r.method == m and r.shots == k and r.new]
                if mine:
                    averages.append(Base2NewAverage(m, statistics.fmean(r.base_mean for r in mine),
                                                    statistics.fmean(r.new_mean for r in mine), len(mine), k))
        out.base2new = Base2NewBlock(rows, averages, sorted({r.dataset for r in rows}), methods)

    for protocol in ("xd", "dg"):
        if not by_protocol[protocol]:
            continue
        source_acc, target_acc = defaultdict(list), defaultdict(lambda: defaultdict(list))
        targets: set = set()
        for r in by_protocol[protocol]:
            key = (r.dataset, r.method, r.shots)
            source_acc[key].append(r.accuracy)
            for (dataset, subsample), ev in r.evaluations.items():
                if dataset == r.dataset and subsample == "all":
                    continue
                name = dataset if subsample == "all" else f"{dataset} ({subsample})"
                target_acc[key][name].append(float(ev["accuracy"]))
                targets.add(name)
        names = sorted(targets)
        rows = [TransferRow(*key, source_acc[key], {t: target_acc[key].get(t, []) for t in names})
                for key in _row_order(source_acc)]
        setattr(out, protocol, TransferBlock(rows, names))
    return out
