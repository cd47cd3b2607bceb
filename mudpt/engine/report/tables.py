"""The report's tables as one model (:class:`Table` of typed cells), built once from the
aggregate and the published entries; :mod:`mudpt.engine.report.render` writes the same tables
as Markdown and as LaTeX."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from mudpt.core.vocabulary import ALL_IMAGES, shots_label
from mudpt.engine.report.aggregate import Aggregate, mean_std
from mudpt.engine.report.compare import over, published_target_average

__all__ = ["Delta", "MethodCell", "Num", "Published", "Row", "Stat", "Table", "Text", "build_tables"]

PROTOCOL_TITLES = {
    "fewshot": "Few-shot recognition (top-1 accuracy, %)",
    "base2new": "Base-to-new generalisation (top-1 accuracy, %)",
    "xd": "Cross-dataset transfer (top-1 accuracy, %)",
    "dg": "Domain generalisation (top-1 accuracy, %)",
}


@dataclass(frozen=True)
class Text:
    """Plain text (a dataset, a count, a source); ``bold`` for the average rows' label."""

    value: str
    bold: bool = False


@dataclass(frozen=True)
class MethodCell:
    """A row label (``coop [epochs=1]``): the registry name in Markdown, the method's display
    label in LaTeX (``CoOp [epochs=1]``)."""

    label: str


@dataclass(frozen=True)
class Stat:
    """Accuracies over seeds: mean ± sample std (the value alone for one seed); none: a dash."""

    values: tuple

    @property
    def mean(self) -> Optional[float]:
        return mean_std(list(self.values))[0] if self.values else None

    @property
    def std(self) -> Optional[float]:
        return mean_std(list(self.values))[1] if self.values else None


@dataclass(frozen=True)
class Num:
    """One number with two decimals; None or NaN: a dash."""

    value: Optional[float]


@dataclass(frozen=True)
class Delta:
    """A published number and, in brackets, ours − published; a dash when either is missing."""

    ours: Optional[float]
    theirs: Optional[float]


@dataclass(frozen=True)
class Published:
    """The label of a published row: ``published (source) (ours − published)``."""

    source: str


Cell = Union[Text, MethodCell, Stat, Num, Delta, Published]


@dataclass
class Row:
    cells: list


@dataclass
class Table:
    """One table: ``heading`` starts a section (Markdown), ``intro`` paragraphs precede it,
    ``caption`` names it (LaTeX); ``align`` is one letter per column (l or r)."""

    columns: list
    rows: list
    caption: str
    align: str
    heading: Optional[str] = None
    intro: list = field(default_factory=list)


def _num(value) -> Num:
    return Num(None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value))


def _stat(values) -> Stat:
    return Stat(tuple(values or ()))


def _fewshot(agg: Aggregate, found: dict) -> list[Table]:
    fs = agg.fewshot
    rows = []
    for d in fs.datasets:
        for m in fs.methods:
            if not any(fs.cells.get((d, m, k)) for k in fs.shots):
                continue
            rows.append(Row([Text(d), MethodCell(m)] + [_stat(fs.cells.get((d, m, k))) for k in fs.shots]))
            entry = found.get(("fewshot", d, m))
            if entry:
                by_shots = {int(k): v for k, v in (entry.get("shots") or {}).items()}
                rows.append(Row([Text(d), Published(entry["source"])]
                                + [Delta(_stat(fs.cells.get((d, m, k))).mean, by_shots.get(k)) if fs.cells.get((d, m, k))
                                   else Text("–") for k in fs.shots]))
    intro = []
    if len(fs.datasets) > 1:
        for m in fs.methods:
            rows.append(Row([Text("average", bold=True), MethodCell(m)]
                            + [_num(fs.average[(m, k)][0] if (m, k) in fs.average else None) for k in fs.shots]))
        if any((m, k) not in fs.average for m in fs.methods for k in fs.shots
               if any(fs.cells.get((d, m, k)) for d in fs.datasets)):
            intro.append(f"An average is over all {len(fs.datasets)} datasets; a method without runs on all of them at "
                         "a shot count has none there (–), so that every average compares the same datasets.")
    return [Table(["dataset", "method"] + [shots_label(k, learns=False) for k in fs.shots], rows,
                  "Few-shot recognition.", "ll" + "r" * len(fs.shots), heading=PROTOCOL_TITLES["fewshot"],
                  intro=intro)]


def _shots(k: int) -> Text:
    return Text("all" if k == ALL_IMAGES else str(k))


def _base2new(agg: Aggregate, found: dict) -> list[Table]:
    b2n = agg.base2new
    per_dataset = any(key[0] == "base2new" and key[1] is not None for key in found)
    columns = ["dataset", "method", "shots", "base", "new", "HM"]
    intro = ["HM is the harmonic mean of the mean base and mean new accuracies."]
    if per_dataset:
        columns += ["published base", "published new", "published HM", "source"]
        intro.append("Published columns: the published number, and in brackets ours − published.")
    rows = []
    for r in b2n.rows:
        cells = [Text(r.dataset), MethodCell(r.method), _shots(r.shots), _stat(r.base), _stat(r.new), _num(r.hm)]
        if per_dataset:
            entry = found.get(("base2new", r.dataset, r.method, r.shots))
            if entry:
                cells += [Delta(r.base_mean, entry.get("base")), Delta(r.new_mean, entry.get("new")),
                          Delta(_num(r.hm).value, entry.get("hm")), Text(entry["source"])]
            else:
                cells += [Text("–")] * 3 + [Text("")]
        rows.append(Row(cells))
    tables = [Table(columns, rows, "Base-to-new generalisation" + (" (published: the papers' per-dataset tables)."
                                                                   if per_dataset else "."),
                    "ll" + "r" * (len(columns) - 2), heading=PROTOCOL_TITLES["base2new"], intro=intro)]
    if not b2n.average:
        return tables
    with_published = any(("base2new", None, a.method, a.shots) in found for a in b2n.average)
    columns = ["method", "shots", "base", "new", "HM", "datasets"]
    if with_published:
        columns += ["published base", "published new", "published HM", "source"]
        intro = ["Average over datasets, beside the published averages (ours − published in brackets): over the same "
                 "datasets where the per-dataset tables have them, else the published 11-dataset averages (ours "
                 f"over {len(b2n.datasets)} of the 11):"]
    else:
        intro = ["Average over datasets:"]
    rows = []
    for a in b2n.average:
        cells = [MethodCell(a.method), _shots(a.shots), _num(a.base_mean), _num(a.new_mean), _num(a.hm),
                 Text(f"{a.n_datasets} of {len(b2n.datasets)}" if a.n_datasets < len(b2n.datasets) else str(a.n_datasets))]
        if with_published:
            entry = found.get(("base2new", None, a.method, a.shots))
            if entry:
                cells += [Delta(a.base_mean, entry["base"]), Delta(a.new_mean, entry["new"]),
                          Delta(a.hm, entry["hm"]),
                          Text(f"{entry.get('label', entry['method'])}: {entry['source']} ({over(entry)})")]
            else:
                cells += [Text("–")] * 3 + [Text("")]
        rows.append(Row(cells))
    tables.append(Table(columns, rows, "Base-to-new, average over datasets" + (
        " (published: over the same datasets where the per-dataset tables have them, else over the 11)."
        if with_published else "."), "l" + "r" * (len(columns) - 1), intro=intro))
    return tables


def _transfer(agg: Aggregate, found: dict, protocol: str) -> list[Table]:
    block = agg.block(protocol)
    targets = block.targets
    rows = []
    for r in block.rows:
        rows.append(Row([Text(r.source), MethodCell(r.method), _shots(r.shots), _stat(r.source_acc)]
                        + [_stat(r.targets[t]) for t in targets] + [_num(r.target_average)]))
        entry = found.get((protocol, r.source, r.method, r.shots))
        if entry:
            theirs = entry.get("targets") or {}
            rows.append(Row([Text(r.source), Published(entry["source"]), _shots(r.shots),
                             Delta(_stat(r.source_acc).mean, entry.get("source_acc"))]
                            + [Delta(_stat(r.targets[t]).mean, theirs.get(t)) for t in targets]
                            + [Delta(_num(r.target_average).value, published_target_average(entry, targets))]))
    caption = "Cross-dataset transfer." if protocol == "xd" else "Domain generalisation."
    return [Table(["source", "method", "shots", "source acc."] + list(targets) + ["target average"], rows, caption,
                  "lll" + "r" * (len(targets) + 2), heading=PROTOCOL_TITLES[protocol])]


def build_tables(agg: Aggregate, found: dict) -> list[Table]:
    """Every table of the report, in the order of the protocols."""
    tables = []
    if agg.fewshot:
        tables += _fewshot(agg, found)
    if agg.base2new:
        tables += _base2new(agg, found)
    for protocol in ("xd", "dg"):
        if agg.block(protocol):
            tables += _transfer(agg, found, protocol)
    return tables
