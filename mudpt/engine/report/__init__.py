"""Reports: collect finished runs under a folder, aggregate over seeds, write tables and plots.

``report(runs_dir)`` writes into ``runs_dir``:

- ``report.md``   Markdown tables per protocol: mean ± std over seeds per method and dataset,
  averages over datasets, base / new / harmonic mean for base-to-new, source and targets for
  cross-dataset and domain generalisation; published numbers beside ours where the package's
  data file (:mod:`mudpt.engine.published`) has them, with the difference and the source;
- ``report.tex``  the same tables in LaTeX (booktabs, methods by their display labels), to paste
  into a paper;
- ``report.csv``  the same numbers in long form (one row per protocol, dataset, method, shots,
  column), easy to load into a spreadsheet or pandas;
- PNG plots: ``fewshot_<dataset>.png`` and ``fewshot_average.png`` (accuracy vs shots),
  ``base2new_<dataset>.png`` and ``base2new_average.png`` (base / new / HM bars),
  ``xd.png`` and ``dg.png`` (accuracy per target).

The steps, one module each: :mod:`~.collect` (runs -> labelled records) -> :mod:`~.aggregate`
(typed blocks per protocol; the long form) -> :mod:`~.compare` (the published entries of the
rows) -> :mod:`~.tables` (one :class:`~.tables.Table` model) -> :mod:`~.render` (Markdown,
LaTeX, CSV) and :mod:`~.plots`.
"""

from __future__ import annotations

from pathlib import Path

from mudpt.core.errors import UnwritableError
from mudpt.core.files import atomic_write_text, make_dir
from mudpt.engine.report.aggregate import Aggregate, aggregate, mean_std
from mudpt.engine.report.collect import RunRecord, collect_runs, display_name, label_settings
from mudpt.engine.report.compare import BENCHMARK_11, published_entries
from mudpt.engine.report.plots import write_plots
from mudpt.engine.report.render import to_csv, to_latex, to_markdown
from mudpt.engine.report.tables import Table, build_tables

__all__ = ["Aggregate", "BENCHMARK_11", "RunRecord", "Table", "aggregate", "build_tables", "collect_runs",
           "display_name", "label_settings", "mean_std", "report"]


def report(runs_dir: str | Path, output_dir: str | Path | None = None, plots: bool = True,
           published: str | Path | bool | None = None) -> dict:
    """Aggregate every finished run under ``runs_dir``; write report.md, report.tex, report.csv
    and plots.

    Rows pool the seeds of one setting (the run's identity without its seed); see
    :func:`label_settings`. ``published``: the published numbers set beside ours (``None``: the
    package's file, :mod:`mudpt.engine.published`; a path: another file of that form;
    ``False``: none). Returns ``{"markdown": path, "latex": path, "csv": path, "plots": [paths],
    "n_runs": int, "warnings": [str]}`` (skipped files, duplicate seeds).
    """
    from mudpt.engine.published import load_published

    runs_dir = Path(runs_dir)
    out_dir = Path(output_dir) if output_dir is not None else runs_dir
    warnings: list[str] = []
    records = label_settings(collect_runs(runs_dir, warnings), warnings)
    agg = aggregate(records)
    numbers = None if published is False else load_published(None if published in (None, True) else published)
    if numbers is not None:
        warnings += [f"published numbers {numbers.path}: {problem}" for problem in numbers.consistency_problems()]
    found = published_entries(agg, numbers)
    tables = build_tables(agg, found)
    sources = {entry["source"]: numbers.sources[entry["source"]] for entry in found.values()}
    markdown_path, latex_path, csv_path = out_dir / "report.md", out_dir / "report.tex", out_dir / "report.csv"
    try:
        make_dir(out_dir, "the report folder")
        plot_files = write_plots(agg, out_dir) if plots and records else []
        atomic_write_text(markdown_path, to_markdown(tables, runs_dir, len(records), plot_files, warnings, sources))
        atomic_write_text(latex_path, to_latex(tables))
        atomic_write_text(csv_path, to_csv(agg.long_form()))
    except UnwritableError as error:  # runs on a read-only share: reading them needs no write access
        raise UnwritableError(f"{str(error).rstrip('.')}; the report can be written to another folder (output_dir)",
                              field="output") from None
    return {"markdown": markdown_path, "latex": latex_path, "csv": csv_path,
            "plots": [out_dir / p for p in plot_files], "n_runs": len(records), "warnings": warnings}
