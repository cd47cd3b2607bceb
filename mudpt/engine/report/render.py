"""The two renderers of the report's :class:`~mudpt.engine.report.tables.Table` s: Markdown
(``report.md``, with the run count, warnings, plots and the sources of the published numbers)
and LaTeX (``report.tex``, booktabs, to paste into a paper); and the long-form CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mudpt.engine.report.collect import method_label
from mudpt.engine.report.tables import Delta, MethodCell, Num, Published, Stat, Table, Text

__all__ = ["to_csv", "to_latex", "to_markdown"]


# ---------------------------------------------------------------------- cells


def _delta_text(cell: Delta) -> str | None:
    if cell.theirs is None or cell.ours is None or (isinstance(cell.ours, float) and math.isnan(cell.ours)):
        return None
    theirs = float(cell.theirs)
    return f"{theirs:.2f} ({cell.ours - theirs:+.2f})"


def _markdown_cell(cell) -> str:
    if isinstance(cell, Text):
        return f"**{cell.value}**" if cell.bold else cell.value
    if isinstance(cell, MethodCell):
        return cell.label
    if isinstance(cell, Stat):
        if not cell.values:
            return "–"
        mean, std = cell.mean, cell.std
        return f"{mean:.2f} ± {std:.2f}" if len(cell.values) > 1 else f"{mean:.2f}"
    if isinstance(cell, Num):
        return "–" if cell.value is None else f"{cell.value:.2f}"
    if isinstance(cell, Delta):
        return _delta_text(cell) or "–"
    if isinstance(cell, Published):
        return f"*published* ({cell.source}) (ours − published)"
    raise TypeError(f"not a report cell: {cell!r}")


def _tex(text) -> str:
    return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%") \
        .replace("&", "\\&").replace("#", "\\#")


def _latex_cell(cell) -> str:
    if isinstance(cell, Text):
        if cell.value in ("–", ""):
            return "--" if cell.value else ""
        return f"\\textbf{{{_tex(cell.value)}}}" if cell.bold else _tex(cell.value)
    if isinstance(cell, MethodCell):
        return _tex(method_label(cell.label))
    if isinstance(cell, Stat):
        if not cell.values:
            return "--"
        return f"{cell.mean:.2f}" if len(cell.values) == 1 else f"{cell.mean:.2f}$\\pm${cell.std:.2f}"
    if isinstance(cell, Num):
        return "--" if cell.value is None else f"{cell.value:.2f}"
    if isinstance(cell, Delta):
        text = _delta_text(cell)
        return "--" if text is None else text
    if isinstance(cell, Published):
        return f"\\emph{{published}} ({_tex(cell.source)})"
    raise TypeError(f"not a report cell: {cell!r}")


# ---------------------------------------------------------------------- Markdown


def _markdown_table(table: Table) -> list[str]:
    lines = []
    if table.heading:
        lines += [f"## {table.heading}", ""]
    for paragraph in table.intro:
        lines += [paragraph, ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    for row in table.rows:
        lines.append("|" + "".join(f" {text} |" if text else " |" for text in map(_markdown_cell, row.cells)))
    return lines + [""]


def to_markdown(tables: list[Table], runs_dir: Path, n_runs: int, plots: list[str], warnings: list[str],
                sources: dict) -> str:
    """``report.md``: the tables, with what the numbers are, the warnings, the plots and the
    sources of the published numbers used (``{name: description}``)."""
    lines = [f"# mudpt report: `{runs_dir}`", "",
             f"{n_runs} finished run(s). Numbers are top-1 accuracy in percent, mean ± sample standard "
             f"deviation over seeds (a single seed shows the value alone). A row pools the seeds of one "
             f"setting only; a method run with several settings has one row per setting, labelled with "
             f"what tells them apart.", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    for table in tables:
        lines += _markdown_table(table)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if sources:
        lines += ["## Sources of the published numbers", ""] + [f"- `{name}`: {text}"
                                                                 for name, text in sorted(sources.items())] + [""]
    if not tables:
        lines += ["No finished runs were found (a run is finished when its results.json exists).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- LaTeX


def to_latex(tables: list[Table]) -> str:
    """``report.tex``: every table as a booktabs table with its caption."""
    lines = ["% mudpt report: top-1 accuracy (%), mean $\\pm$ std over seeds; published numbers with ours - "
             "published in brackets. Needs \\usepackage{booktabs}.", ""]
    for table in tables:
        lines += ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{table.caption}}}",
                  f"\\begin{{tabular}}{{{table.align}}}", "\\toprule",
                  " & ".join(_tex(c) for c in table.columns) + " \\\\", "\\midrule"]
        lines += [" & ".join(_latex_cell(c) for c in row.cells) + " \\\\" for row in table.rows]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- CSV

CSV_COLUMNS = ["protocol", "dataset", "method", "shots", "column", "mean", "std", "n_seeds", "n_datasets", "macro_f1"]


def to_csv(rows: list[dict]) -> str:
    """``report.csv``: the aggregate in long form."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else
                             ("" if isinstance(v, float) else v)) for k, v in row.items()})
    return buffer.getvalue()
