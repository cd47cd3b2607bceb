"""Reports: collect finished runs under a folder, aggregate over seeds, write tables and plots.

``report(runs_dir)`` writes into ``runs_dir``:

- ``report.md``   Markdown tables per protocol: mean ± std over seeds per method and dataset,
  averages over datasets, base / new / harmonic mean for base-to-new, source and targets for
  cross-dataset and domain generalisation; published numbers beside ours where the package's
  data file (:mod:`mudpt.engine.published`) has them, with the difference and the source;
- ``report.tex``  the same tables in LaTeX (booktabs), to paste into a paper;
- ``report.csv``  the same numbers in long form (one row per protocol, dataset, method, shots,
  column), easy to load into a spreadsheet or pandas;
- PNG plots: ``fewshot_<dataset>.png`` and ``fewshot_average.png`` (accuracy vs shots),
  ``base2new_<dataset>.png`` and ``base2new_average.png`` (base / new / HM bars),
  ``xd.png`` and ``dg.png`` (accuracy per target).

The protocol of a run is the first folder of its path under ``runs_dir`` when that is a
protocol name (the sweep layout); otherwise base-class runs count as base-to-new and the rest
as few-shot.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from mudpt.core.errors import MissingFileError
from mudpt.core.files import atomic_write_bytes, atomic_write_text

PROTOCOLS = ("fewshot", "base2new", "xd", "dg")
PROTOCOL_TITLES = {
    "fewshot": "Few-shot recognition (top-1 accuracy, %)",
    "base2new": "Base-to-new generalisation (top-1 accuracy, %)",
    "xd": "Cross-dataset transfer (top-1 accuracy, %)",
    "dg": "Domain generalisation (top-1 accuracy, %)",
}


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2 b n / (b + n) (0 when both are 0)."""
    return 2.0 * base * new / (base + new) if (base + new) > 0 else 0.0


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float] | None) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}" if len(values) > 1 else f"{m:.2f}"


def display_name(dataset) -> str:
    """A dataset's name in tables: registered names as they are, bring-your-own paths by their
    folder or file name."""
    text = str(dataset)
    if "/" in text or "\\" in text:
        return Path(text.rstrip("/\\")).name
    return text


# Identity entries that are not part of a run's setting in a table: the seed (the samples of a
# row), what the protocol sets per row and column (dataset, shots, subsample) and where it ran.
_NOT_A_SETTING = ("config.seed", "config.shots", "config.dataset", "config.subsample", "sample", "data.location",
                  "data.content", "method_config")


def _legacy_identity(results: dict) -> dict:
    """Results written before identities were recorded: their config stands in for it."""
    from mudpt.engine.config import NON_IDENTITY_FIELDS

    cfg = {k: v for k, v in (results.get("config") or {}).items() if k not in NON_IDENTITY_FIELDS}
    return {"config": cfg, "data": {"location": str(cfg.get("dataset"))}}


def _flat(identity: dict) -> dict:
    from mudpt.engine.runs import _flatten

    return _flatten(identity)


def collect_runs(runs_dir: str | Path, warnings: list | None = None) -> list[dict]:
    """One record per finished run: protocol, dataset, method, shots, seed, metrics, evaluations,
    and what identifies its setting. Unreadable or incomplete ``results.json`` files are skipped
    with a line in ``warnings``."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise MissingFileError(f"Runs folder {runs_dir} does not exist.", field="runs_dir")
    warnings = [] if warnings is None else warnings
    records = []
    for results_path in sorted(runs_dir.rglob("results.json")):
        try:
            results = json.loads(results_path.read_text())
            accuracy = float(results["accuracy"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            warnings.append(f"{results_path}: unreadable ({type(err).__name__}), not reported")
            continue
        except (KeyError, TypeError, ValueError):
            warnings.append(f"{results_path}: holds no accuracy, not reported")
            continue
        cfg = results.get("config", {}) if isinstance(results.get("config"), dict) else {}
        rel_parts = results_path.parent.relative_to(runs_dir).parts
        protocol = rel_parts[0] if rel_parts and rel_parts[0] in PROTOCOLS else (
            "base2new" if cfg.get("subsample") == "base" else "fewshot")
        evaluations = {}
        for eval_path in sorted((results_path.parent / "evaluations").glob("*.json")):
            try:
                ev = json.loads(eval_path.read_text())
                float(ev["accuracy"])
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
                warnings.append(f"{eval_path}: unreadable or without accuracy, not reported")
                continue
            evaluations[(display_name(ev.get("dataset")), ev.get("subsample", "all"))] = ev
        identity = results.get("identity") if isinstance(results.get("identity"), dict) else _legacy_identity(results)
        flat = _flat(identity)
        records.append({
            "protocol": protocol,
            "dataset": display_name(cfg.get("dataset", results.get("dataset"))),
            "location": flat.get("data.location"),
            "method": cfg.get("method", results.get("method")),
            "shots": int(cfg.get("shots", 0)) if cfg.get("method") != "zsclip" else 0,
            "seed": int(cfg.get("seed", 1)),
            "accuracy": accuracy,
            "macro_f1": float(results.get("macro_f1", math.nan)),
            "evaluations": evaluations,
            "run_dir": str(results_path.parent),
            "setting": {k: v for k, v in flat.items() if not k.startswith(_NOT_A_SETTING)},
        })
    return records


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 48 else text[:24] + "..." + text[-20:]


def label_settings(records: list[dict], warnings: list) -> list[dict]:
    """Give every record the row label of its setting and drop duplicate seeds.

    Runs of one method under one protocol with different settings (another epoch count,
    backbone, weights, options...) are different rows: the label is the method followed by the
    keys that tell its settings apart (``coop [epochs=1]``). A dataset name shared by datasets at
    different locations gets the location's folder. Two runs of the same row with the same seed
    are one sample: the first (by path) is kept, the others are listed in ``warnings``.
    """
    by_method: dict = defaultdict(dict)
    for r in records:
        key = json.dumps(r["setting"], sort_keys=True)
        by_method[(r["protocol"], r["method"])].setdefault(key, r["setting"])
    labels = {}
    for (protocol, method), settings in by_method.items():
        if len(settings) == 1:
            labels.update({(protocol, method, k): method for k in settings})
            continue
        keys = sorted({k for s in settings.values() for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings.values()}) > 1]
        for key, setting in settings.items():
            shown = ", ".join(f"{k.removeprefix('config.')}={_short(setting.get(k))}" for k in differing)
            labels[(protocol, method, key)] = f"{method} [{shown}]"
    locations = defaultdict(set)
    for r in records:
        locations[(r["protocol"], r["dataset"])].add(r["location"])
    kept, seen = [], {}
    for r in records:
        r = dict(r, method_name=r["method"],
                 method=labels[(r["protocol"], r["method"], json.dumps(r["setting"], sort_keys=True))])
        if len(locations[(r["protocol"], r["dataset"])]) > 1:
            r["dataset"] = f"{r['dataset']} ({Path(str(r['location'])).parent.name or r['location']})"
        row = (r["protocol"], r["dataset"], r["method"], r["shots"], r["seed"])
        if row in seen:
            warnings.append(f"{r['run_dir']}: same setting and seed {r['seed']} as {seen[row]}; counted once "
                            "(the first), not as another seed")
            continue
        seen[row] = r["run_dir"]
        kept.append(r)
    return kept


def _method_order(methods) -> list[str]:
    """Row order: the field's usual order of methods, then others; variants of a method together."""
    preferred = ["zsclip", "linear_probe", "coop", "cocoop", "clip_adapter", "tip_adapter", "tip_adapter_f", "kgcoop",
                 "prograd", "vpt", "ivlp", "maple", "promptsrc", "mudpt"]

    def key(label):
        base = label.split(" [")[0]
        return (preferred.index(base) if base in preferred else len(preferred), base, label)

    return sorted(set(methods), key=key)


def aggregate(records: list[dict]) -> dict:
    """Per protocol: the aggregated tables (lists of row dicts) and the CSV rows."""
    out: dict = {"csv": [], "fewshot": None, "base2new": None, "xd": None, "dg": None, "labels": {}}
    by_protocol = defaultdict(list)
    for r in records:
        by_protocol[r["protocol"]].append(r)
        out["labels"][(r["protocol"], r["method"])] = {"method": r.get("method_name", r["method"]),
                                                      "setting": r.get("setting", {})}

    # ---- few-shot: (dataset, method, shots) -> accuracies over seeds
    if by_protocol["fewshot"]:
        cells = defaultdict(list)
        f1_cells = defaultdict(list)
        for r in by_protocol["fewshot"]:
            cells[(r["dataset"], r["method"], r["shots"])].append(r["accuracy"])
            f1_cells[(r["dataset"], r["method"], r["shots"])].append(r["macro_f1"])
        datasets = sorted({k[0] for k in cells})
        methods = _method_order(k[1] for k in cells)
        shots = sorted({k[2] for k in cells})
        average = {}
        for m in methods:
            for k in shots:
                means = [mean_std(cells[(d, m, k)])[0] for d in datasets if cells.get((d, m, k))]
                if means:
                    average[(m, k)] = (statistics.fmean(means), len(means))
        out["fewshot"] = {"cells": dict(cells), "datasets": datasets, "methods": methods, "shots": shots,
                          "average": average}
        for (d, m, k), values in sorted(cells.items()):
            mu, sd = mean_std(values)
            f1_mu, _ = mean_std(f1_cells[(d, m, k)])
            out["csv"].append({"protocol": "fewshot", "dataset": d, "method": m, "shots": k, "column": "accuracy",
                               "mean": mu, "std": sd, "n_seeds": len(values), "macro_f1": f1_mu})
        for (m, k), (mu, n) in sorted(average.items()):
            out["csv"].append({"protocol": "fewshot", "dataset": "average", "method": m, "shots": k,
                               "column": "accuracy", "mean": mu, "std": "", "n_seeds": "", "macro_f1": "",
                               "n_datasets": n})

    # ---- base-to-new: (dataset, method, shots) -> base and new accuracies over seeds
    if by_protocol["base2new"]:
        base, new = defaultdict(list), defaultdict(list)
        for r in by_protocol["base2new"]:
            key = (r["dataset"], r["method"], r["shots"])
            base[key].append(r["accuracy"])
            ev = r["evaluations"].get((r["dataset"], "new"))
            if ev is not None:
                new[key].append(float(ev["accuracy"]))
        rows = []
        for key in sorted(base, key=lambda k: (k[0], _method_order([x[1] for x in base]).index(k[1]), k[2])):
            b, _ = mean_std(base[key])
            n, _ = mean_std(new.get(key, []))
            rows.append({"dataset": key[0], "method": key[1], "shots": key[2], "base": base[key],
                         "new": new.get(key, []), "base_mean": b, "new_mean": n,
                         "hm": harmonic_mean(b, n) if new.get(key) else math.nan})
        averages = []
        methods = _method_order(r["method"] for r in rows)
        datasets = sorted({r["dataset"] for r in rows})
        for m in methods:
            mine = [r for r in rows if r["method"] == m and not math.isnan(r["new_mean"])]
            if mine:
                b = statistics.fmean(r["base_mean"] for r in mine)
                n = statistics.fmean(r["new_mean"] for r in mine)
                averages.append({"method": m, "base_mean": b, "new_mean": n, "hm": harmonic_mean(b, n),
                                 "n_datasets": len(mine)})
        out["base2new"] = {"rows": rows, "average": averages, "datasets": datasets, "methods": methods}
        for r in rows:
            for column in ("base", "new"):
                mu, sd = mean_std(r[column])
                out["csv"].append({"protocol": "base2new", "dataset": r["dataset"], "method": r["method"],
                                   "shots": r["shots"], "column": column, "mean": mu, "std": sd,
                                   "n_seeds": len(r[column])})
            out["csv"].append({"protocol": "base2new", "dataset": r["dataset"], "method": r["method"],
                               "shots": r["shots"], "column": "hm", "mean": r["hm"], "std": "", "n_seeds": ""})
        for a in averages:
            for column, key in (("base", "base_mean"), ("new", "new_mean"), ("hm", "hm")):
                out["csv"].append({"protocol": "base2new", "dataset": "average", "method": a["method"], "shots": "",
                                   "column": column, "mean": a[key], "std": "", "n_seeds": "",
                                   "n_datasets": a["n_datasets"]})

    # ---- cross-dataset / domain generalisation: (source, method, shots) -> source + targets
    for protocol in ("xd", "dg"):
        if not by_protocol[protocol]:
            continue
        source_acc, target_acc = defaultdict(list), defaultdict(lambda: defaultdict(list))
        targets: set = set()
        for r in by_protocol[protocol]:
            key = (r["dataset"], r["method"], r["shots"])
            source_acc[key].append(r["accuracy"])
            for (dataset, subsample), ev in r["evaluations"].items():
                if dataset == r["dataset"] and subsample == "all":
                    continue
                name = dataset if subsample == "all" else f"{dataset} ({subsample})"
                target_acc[key][name].append(float(ev["accuracy"]))
                targets.add(name)
        targets_sorted = sorted(targets)
        rows = []
        for key in sorted(source_acc, key=lambda k: (k[0], _method_order([x[1] for x in source_acc]).index(k[1]), k[2])):
            means = [mean_std(target_acc[key][t])[0] for t in targets_sorted if target_acc[key].get(t)]
            rows.append({"source": key[0], "method": key[1], "shots": key[2], "source_acc": source_acc[key],
                         "targets": {t: target_acc[key].get(t, []) for t in targets_sorted},
                         "target_average": statistics.fmean(means) if means else math.nan})
        out[protocol] = {"rows": rows, "targets": targets_sorted}
        for r in rows:
            mu, sd = mean_std(r["source_acc"])
            out["csv"].append({"protocol": protocol, "dataset": r["source"], "method": r["method"], "shots": r["shots"],
                               "column": "source", "mean": mu, "std": sd, "n_seeds": len(r["source_acc"])})
            for t, values in r["targets"].items():
                mu, sd = mean_std(values)
                out["csv"].append({"protocol": protocol, "dataset": t, "method": r["method"], "shots": r["shots"],
                                   "column": "target", "mean": mu, "std": sd, "n_seeds": len(values)})
            out["csv"].append({"protocol": protocol, "dataset": "average", "method": r["method"], "shots": r["shots"],
                               "column": "target", "mean": r["target_average"], "std": "", "n_seeds": ""})
    return out


# ---------------------------------------------------------------------- Markdown


# The 11 datasets whose average the published base-to-new numbers are.
BENCHMARK_11 = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


def _published_for(agg: dict, published, protocol: str, dataset, label: str, shots=None):
    if published is None:
        return None
    info = agg["labels"].get((protocol, label), {"method": label.split(" [")[0], "setting": {}})
    if protocol == "base2new":
        return published.base2new(dataset, info["method"], info["setting"], shots)
    if protocol in ("xd", "dg"):
        return published.transfer(protocol, dataset, info["method"], info["setting"], shots)
    return published.fewshot(dataset, info["method"], info["setting"])


def _published_columns(agg: dict, published) -> dict:
    """Published entries of the report's rows: ``{("base2new", dataset, label, shots): entry,
    ("base2new", None, label): entry}`` (None: the 11-dataset average), ``{("fewshot", dataset,
    label): entry}`` and ``{(protocol, source, label, shots): entry}`` for xd and dg."""
    found = {}
    b2n = agg["base2new"]
    if b2n:
        for r in b2n["rows"]:
            entry = _published_for(agg, published, "base2new", r["dataset"], r["method"], r["shots"])
            if entry:
                found[("base2new", r["dataset"], r["method"], r["shots"])] = entry
        if b2n["datasets"] and set(b2n["datasets"]) <= set(BENCHMARK_11):
            for a in b2n["average"]:
                shots = {r["shots"] for r in b2n["rows"] if r["method"] == a["method"]}
                if len(shots) != 1:
                    continue  # an average over rows of several shot counts has no published counterpart
                shots = shots.pop()
                entry = _published_for(agg, published, "base2new", None, a["method"], shots)
                mine = [r for r in b2n["rows"] if r["method"] == a["method"] and not math.isnan(r["new_mean"])]
                same = [found.get(("base2new", r["dataset"], r["method"], shots)) for r in mine]
                if len(mine) < len(BENCHMARK_11) and mine and all(same) and len({e["source"] for e in same}) == 1:
                    # the per-dataset tables have ours' datasets: average them over the same ones
                    b = statistics.fmean(float(e["base"]) for e in same)
                    n = statistics.fmean(float(e["new"]) for e in same)
                    entry = {"method": a["method"], "base": b, "new": n, "hm": harmonic_mean(b, n),
                             "source": same[0]["source"], "label": (entry or {}).get("label", a["method"]),
                             "over": len(same)}
                if entry:
                    found[("base2new", None, a["method"])] = entry
    fs = agg["fewshot"]
    if fs:
        for d in fs["datasets"]:
            for m in fs["methods"]:
                entry = _published_for(agg, published, "fewshot", d, m)
                if entry:
                    found[("fewshot", d, m)] = entry
    for protocol in ("xd", "dg"):
        for r in (agg[protocol] or {}).get("rows", []):
            entry = _published_for(agg, published, protocol, r["source"], r["method"], r["shots"])
            if entry:
                found[(protocol, r["source"], r["method"], r["shots"])] = entry
    return found


def _published_target_average(entry: dict, targets: list[str]):
    """The published average over the report's targets: the table's own average when they are
    the table's targets, the mean of its numbers for a subset, None when one is missing."""
    published = entry.get("targets") or {}
    if not targets or any(t not in published for t in targets):
        return None
    if set(targets) == set(published) and "average" in entry:
        return entry["average"]
    return statistics.fmean(float(published[t]) for t in targets)


def _over(entry: dict) -> str:
    n = entry.get("over")
    return "the 11 datasets" if n is None else f"the same {n} dataset{'s' if n != 1 else ''}"


def _delta(ours: float, theirs) -> str:
    if theirs is None or ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return "–"
    return f"{float(theirs):.2f} ({ours - float(theirs):+.2f})"


def _markdown(agg: dict, runs_dir: Path, n_runs: int, plots: list[str], warnings: list[str] = (),
              published=None) -> str:
    lines = [f"# mudpt report: `{runs_dir}`", "",
             f"{n_runs} finished run(s). Numbers are top-1 accuracy in percent, mean ± sample standard "
             f"deviation over seeds (a single seed shows the value alone). A row pools the seeds of one "
             f"setting only; a method run with several settings has one row per setting, labelled with "
             f"what tells them apart.", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    found = _published_columns(agg, published)
    fs = agg["fewshot"]
    if fs:
        lines += [f"## {PROTOCOL_TITLES['fewshot']}", ""]
        header = "| dataset | method | " + " | ".join(f"{k}-shot" for k in fs["shots"]) + " |"
        lines += [header, "|" + "---|" * (2 + len(fs["shots"]))]
        for d in fs["datasets"]:
            for m in fs["methods"]:
                if not any(fs["cells"].get((d, m, k)) for k in fs["shots"]):
                    continue
                cells = [_fmt(fs["cells"].get((d, m, k))) for k in fs["shots"]]
                lines.append(f"| {d} | {m} | " + " | ".join(cells) + " |")
                entry = found.get(("fewshot", d, m))
                if entry:
                    shots_map = {int(k): v for k, v in (entry.get("shots") or {}).items()}
                    cells = [_delta(mean_std(fs["cells"][(d, m, k)])[0], shots_map.get(k))
                             if fs["cells"].get((d, m, k)) else "–" for k in fs["shots"]]
                    lines.append(f"| {d} | *published* ({entry['source']}) (ours − published) | "
                                 + " | ".join(cells) + " |")
        if len(fs["datasets"]) > 1:
            for m in fs["methods"]:
                cells = [(f"{fs['average'][(m, k)][0]:.2f}" if (m, k) in fs["average"] else "–") for k in fs["shots"]]
                lines.append(f"| **average** | {m} | " + " | ".join(cells) + " |")
        lines.append("")
    b2n = agg["base2new"]
    if b2n:
        lines += [f"## {PROTOCOL_TITLES['base2new']}", "",
                  "HM is the harmonic mean of the mean base and mean new accuracies.", "",
                  ]
        per_dataset = any(key[0] == "base2new" and key[1] is not None for key in found)
        if per_dataset:
            lines += ["Published columns: the published number, and in brackets ours − published.", "",
                      "| dataset | method | shots | base | new | HM | published base | published new | "
                      "published HM | source |", "|---|---|---|---|---|---|---|---|---|---|"]
        else:
            lines += ["| dataset | method | shots | base | new | HM |", "|---|---|---|---|---|---|"]
        for r in b2n["rows"]:
            hm = "–" if math.isnan(r["hm"]) else f"{r['hm']:.2f}"
            row = f"| {r['dataset']} | {r['method']} | {r['shots']} | {_fmt(r['base'])} | {_fmt(r['new'])} | {hm} |"
            if per_dataset:
                entry = found.get(("base2new", r["dataset"], r["method"], r["shots"]))
                if entry:
                    row += (f" {_delta(r['base_mean'], entry.get('base'))} | {_delta(r['new_mean'], entry.get('new'))} |"
                            f" {_delta(r['hm'], entry.get('hm'))} | {entry['source']} |")
                else:
                    row += " – | – | – | |"
            lines.append(row)
        if b2n["average"]:
            averages = [a for a in b2n["average"] if ("base2new", None, a["method"]) in found]
            if averages:
                lines += ["", "Average over datasets, beside the published averages (ours − published in brackets): "
                              "over the same datasets where the per-dataset tables have them, else the published "
                              f"11-dataset averages (ours over {len(b2n['datasets'])} of the 11):", "",
                          "| method | base | new | HM | datasets | published base | published new | published HM | "
                          "source |", "|---|---|---|---|---|---|---|---|---|"]
            else:
                lines += ["", "Average over datasets:", "", "| method | base | new | HM | datasets |",
                          "|---|---|---|---|---|"]
            for a in b2n["average"]:
                row = (f"| {a['method']} | {a['base_mean']:.2f} | {a['new_mean']:.2f} | {a['hm']:.2f} | "
                       f"{a['n_datasets']} |")
                if averages:
                    entry = found.get(("base2new", None, a["method"]))
                    if entry:
                        row += (f" {_delta(a['base_mean'], entry['base'])} | {_delta(a['new_mean'], entry['new'])} | "
                                f"{_delta(a['hm'], entry['hm'])} | {entry.get('label', entry['method'])}: "
                                f"{entry['source']} ({_over(entry)}) |")
                    else:
                        row += " – | – | – | |"
                lines.append(row)
        lines.append("")
    for protocol in ("xd", "dg"):
        block = agg[protocol]
        if not block:
            continue
        lines += [f"## {PROTOCOL_TITLES[protocol]}", ""]
        targets = block["targets"]
        lines.append("| source | method | shots | source acc. | " + " | ".join(targets) + " | target average |")
        lines.append("|" + "---|" * (5 + len(targets)))
        for r in block["rows"]:
            avg = "–" if math.isnan(r["target_average"]) else f"{r['target_average']:.2f}"
            lines.append(f"| {r['source']} | {r['method']} | {r['shots']} | {_fmt(r['source_acc'])} | "
                         + " | ".join(_fmt(r["targets"][t]) for t in targets) + f" | {avg} |")
            entry = found.get((protocol, r["source"], r["method"], r["shots"]))
            if entry:
                theirs = entry.get("targets") or {}
                cells = [_delta(mean_std(r["targets"][t])[0] if r["targets"][t] else None, theirs.get(t))
                         for t in targets]
                ours_avg = None if math.isnan(r["target_average"]) else r["target_average"]
                lines.append(f"| {r['source']} | *published* ({entry['source']}) (ours − published) | {r['shots']} | "
                             f"{_delta(mean_std(r['source_acc'])[0], entry.get('source_acc'))} | " + " | ".join(cells)
                             + f" | {_delta(ours_avg, _published_target_average(entry, targets))} |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if found:
        used = sorted({entry["source"] for entry in found.values()})
        lines += ["## Sources of the published numbers", ""] + [f"- `{name}`: {published.sources[name]}"
                                                                 for name in used] + [""]
    if not (fs or b2n or agg["xd"] or agg["dg"]):
        lines += ["No finished runs were found (a run is finished when its results.json exists).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- LaTeX


def _tex(text) -> str:
    return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%") \
        .replace("&", "\\&").replace("#", "\\#")


def _tex_cell(values) -> str:
    if not values:
        return "--"
    mu, sd = mean_std(values)
    return f"{mu:.2f}" if len(values) == 1 else f"{mu:.2f}$\\pm${sd:.2f}"


def _tex_table(caption: str, header: list[str], rows: list[list[str]], align: str) -> list[str]:
    return ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
            f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"] + \
        [" & ".join(r) + " \\\\" for r in rows] + ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]


def _latex(agg: dict, found: dict) -> str:
    """The report's tables as LaTeX (booktabs), one table per protocol, published numbers
    beside ours where the report has them."""
    lines = ["% mudpt report: top-1 accuracy (%), mean $\\pm$ std over seeds. Needs \\usepackage{booktabs}.", ""]
    fs = agg["fewshot"]
    if fs:
        rows = []
        for d in fs["datasets"]:
            for m in fs["methods"]:
                if any(fs["cells"].get((d, m, k)) for k in fs["shots"]):
                    rows.append([_tex(d), _tex(m)] + [_tex_cell(fs["cells"].get((d, m, k))) for k in fs["shots"]])
        if len(fs["datasets"]) > 1:
            for m in fs["methods"]:
                rows.append(["average", _tex(m)] + [f"{fs['average'][(m, k)][0]:.2f}" if (m, k) in fs["average"]
                                                    else "--" for k in fs["shots"]])
        lines += _tex_table("Few-shot recognition.", ["Dataset", "Method"] + [f"{k}-shot" for k in fs["shots"]],
                            rows, "ll" + "r" * len(fs["shots"]))
    b2n = agg["base2new"]
    if b2n:
        per_dataset = any(key[0] == "base2new" and key[1] is not None for key in found)
        rows = []
        for r in b2n["rows"]:
            row = [_tex(r["dataset"]), _tex(r["method"]), _tex_cell(r["base"]), _tex_cell(r["new"]),
                   "--" if math.isnan(r["hm"]) else f"{r['hm']:.2f}"]
            if per_dataset:
                entry = found.get(("base2new", r["dataset"], r["method"], r["shots"]))
                row += [f"{float(entry[k]):.2f}" if entry and k in entry else "--" for k in ("base", "new", "hm")]
            rows.append(row)
        header = ["Dataset", "Method", "Base", "New", "HM"] + (["Published base", "Published new", "Published HM"]
                                                              if per_dataset else [])
        lines += _tex_table("Base-to-new generalisation" + (" (published: the papers' per-dataset tables)."
                                                           if per_dataset else "."),
                            header, rows, "ll" + "r" * (len(header) - 2))
        if b2n["average"]:
            with_published = any(("base2new", None, a["method"]) in found for a in b2n["average"])
            header = ["Method", "Base", "New", "HM"] + (["Published base", "Published new", "Published HM"]
                                                      if with_published else [])
            rows = []
            for a in b2n["average"]:
                row = [_tex(a["method"]), f"{a['base_mean']:.2f}", f"{a['new_mean']:.2f}", f"{a['hm']:.2f}"]
                if with_published:
                    entry = found.get(("base2new", None, a["method"]))
                    row += [f"{entry[k]:.2f}" for k in ("base", "new", "hm")] if entry else ["--"] * 3
                rows.append(row)
            caption = ("Base-to-new, average over datasets" + (" (published: over the same datasets where the "
                                                                "per-dataset tables have them, else over the 11)."
                                                                if with_published else "."))
            lines += _tex_table(caption, header, rows, "l" + "r" * (len(header) - 1))
    for protocol in ("xd", "dg"):
        block = agg[protocol]
        if not block:
            continue
        targets = block["targets"]
        rows = []
        for r in block["rows"]:
            rows.append([_tex(r["source"]), _tex(r["method"]), _tex_cell(r["source_acc"])]
                        + [_tex_cell(r["targets"][t]) for t in targets]
                        + ["--" if math.isnan(r["target_average"]) else f"{r['target_average']:.2f}"])
            entry = found.get((protocol, r["source"], r["method"], r["shots"]))
            if entry:
                theirs = entry.get("targets") or {}
                average = _published_target_average(entry, targets)
                rows.append(["", f"\\emph{{published}} ({_tex(entry['source'])})",
                             f"{float(entry['source_acc']):.2f}" if "source_acc" in entry else "--"]
                            + [f"{float(theirs[t]):.2f}" if t in theirs else "--" for t in targets]
                            + ["--" if average is None else f"{float(average):.2f}"])
        title = "Cross-dataset transfer." if protocol == "xd" else "Domain generalisation."
        lines += _tex_table(title, ["Source", "Method", "Source"] + [_tex(t) for t in targets] + ["Average"], rows,
                            "ll" + "r" * (len(targets) + 2))
    return "\n".join(lines)


# ---------------------------------------------------------------------- plots


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _plots(agg: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    fs = agg["fewshot"]
    if fs:
        panels = [(d, {(m, k): mean_std(v) for (dd, m, k), v in fs["cells"].items() if dd == d}) for d in fs["datasets"]]
        panels.append(("average", {(m, k): (mu, 0.0) for (m, k), (mu, _) in fs["average"].items()}))
        for name, values in panels:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for m in fs["methods"]:
                points = sorted((k, mu, sd) for (mm, k), (mu, sd) in values.items() if mm == m)
                if not points:
                    continue
                if all(k == 0 for k, _, _ in points):
                    ax.axhline(points[0][1], linestyle="--", color="grey", label=f"{m} (zero-shot)")
                    continue
                points = [p for p in points if p[0] > 0]
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
            ax.set_xscale("log", base=2)
            shot_ticks = [k for k in fs["shots"] if k > 0]
            if shot_ticks:
                ax.set_xticks(shot_ticks)
                ax.set_xticklabels([str(k) for k in shot_ticks])
            ax.set_xlabel("shots per class")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(f"few-shot: {name}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            file_name = f"fewshot_{_safe(name)}.png"
            _save_figure(fig, out_dir / file_name)
            plt.close(fig)
            written.append(file_name)
    b2n = agg["base2new"]
    if b2n:
        groups = [(d, [r for r in b2n["rows"] if r["dataset"] == d]) for d in b2n["datasets"]]
        groups.append(("average", [{"method": a["method"], "base_mean": a["base_mean"], "new_mean": a["new_mean"],
                                    "hm": a["hm"]} for a in b2n["average"]]))
        for name, rows in groups:
            if not rows:
                continue
            fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(rows) + 2), 4))
            width = 0.27
            for j, (column, label) in enumerate((("base_mean", "base"), ("new_mean", "new"), ("hm", "HM"))):
                xs = [i + (j - 1) * width for i in range(len(rows))]
                ys = [0.0 if math.isnan(r[column]) else r[column] for r in rows]
                bars = ax.bar(xs, ys, width=width, label=label)
                ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([r["method"] for r in rows])
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title(f"base-to-new: {name}")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            file_name = f"base2new_{_safe(name)}.png"
            _save_figure(fig, out_dir / file_name)
            plt.close(fig)
            written.append(file_name)
    for protocol in ("xd", "dg"):
        block = agg[protocol]
        if not block or not block["targets"]:
            continue
        rows = block["rows"]
        columns = ["source"] + block["targets"]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(columns) * max(len(rows), 1) * 0.5 + 3), 4))
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            ys = [mean_std(r["source_acc"])[0]] + [mean_std(r["targets"][t])[0] if r["targets"][t] else 0.0
                                                   for t in block["targets"]]
            ax.bar([c + (i - (len(rows) - 1) / 2) * width for c in range(len(columns))], ys, width=width,
                   label=f"{r['method']} ({r['source']})")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(columns, rotation=30, ha="right")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("cross-dataset transfer" if protocol == "xd" else "domain generalisation")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        file_name = f"{protocol}.png"
        _save_figure(fig, out_dir / file_name)
        plt.close(fig)
        written.append(file_name)
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _csv_text(rows: list[dict]) -> str:
    columns = ["protocol", "dataset", "method", "shots", "column", "mean", "std", "n_seeds", "n_datasets", "macro_f1"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        formatted = {k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else ("" if isinstance(v, float) else v))
                     for k, v in row.items()}
        writer.writerow(formatted)
    return buffer.getvalue()


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
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files = _plots(agg, out_dir) if plots and records else []
    markdown_path, latex_path, csv_path = out_dir / "report.md", out_dir / "report.tex", out_dir / "report.csv"
    atomic_write_text(markdown_path, _markdown(agg, runs_dir, len(records), plot_files, warnings, numbers))
    atomic_write_text(latex_path, _latex(agg, _published_columns(agg, numbers)))
    atomic_write_text(csv_path, _csv_text(agg["csv"]))
    return {"markdown": markdown_path, "latex": latex_path, "csv": csv_path,
            "plots": [out_dir / p for p in plot_files], "n_runs": len(records), "warnings": warnings}
