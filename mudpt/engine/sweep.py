"""Sweeps: every (dataset, method, shots, seed) of a protocol, in a fixed folder layout.

Layout: ``<output>/<protocol>/<dataset>/<method>/shots_<K>/seed_<S>/`` (a run folder). A run
whose ``results.json`` exists, and an evaluation whose file exists, is skipped, so a sweep can
be stopped at any moment and restarted with the same command. The protocols (docs/ENGINE.md):

- ``fewshot``: train on all classes with K shots; test on the dataset's test split.
- ``base2new``: train on the base classes; test on base and on new classes.
- ``xd`` (cross-dataset): train on the source dataset (all classes); evaluate on each target
  dataset with its own class names.
- ``dg`` (domain generalisation): train on the source; evaluate on its shifted versions.

Defaults come from the registries: the training dataset from the backbone's profile, the
cross-dataset targets and domain shifts from the source dataset's registration
(``transfer_targets``, ``domain_shifts``: ImageNet's are the other ten benchmarks and its four
variants). A method that learns nothing from data (``learns_from_data = False``: zero-shot
CLIP) has one run per dataset (``shots_0/seed_<first seed>``). A method is refused under a
protocol it does not support (``PromptMethod.protocols()``: closed-set methods such as
``linear_probe`` score only their training classes, so not ``base2new`` or ``xd``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from mudpt.core.errors import ConfigError
from mudpt.core.files import make_dir
from mudpt.core.vocabulary import PROTOCOLS
from mudpt.engine.config import default_preset, get_profile, load_config


def default_source_and_targets(protocol: str, datasets: Sequence[str] | None,
                               backbone: str | None = None) -> tuple[list[str], list[str]]:
    """(training datasets, evaluation targets) of a protocol when the user names none."""
    import mudpt.data

    if not datasets:
        profile = get_profile(backbone)
        if profile.dataset is None:
            raise ConfigError(f"name the dataset(s) to train on: the {profile.name!r} profile of backbone "
                              f"{backbone!r} has no default dataset", field="datasets")
        datasets = [profile.dataset]
    sources = list(datasets)
    if protocol in ("fewshot", "base2new"):
        return sources, []
    role = "transfer_targets" if protocol == "xd" else "domain_shifts"
    targets: list[str] = []
    for source in sources:
        spec = mudpt.data.get_dataset_spec(source)
        found = list(getattr(spec, role, ()) or ()) if spec is not None else []
        if not found:
            what = "cross-dataset targets" if protocol == "xd" else "domain shifts"
            raise ConfigError(f"dataset {source!r} registers no {what}; name the evaluation datasets "
                              f"(targets=[...])", field="targets")
        targets += [t for t in found if t not in targets]
    return sources, targets


def dataset_folder_name(dataset: str, others: Sequence[str] = ()) -> str:
    """The folder a dataset's runs go to: a registered name as is, a path by its folder name,
    plus a short digest of the path when another dataset of the sweep has the same name."""
    import hashlib

    def name(d: str) -> str:
        return Path(str(d)).name if Path(str(d)).exists() else str(d)

    own = name(dataset)
    if any(name(o) == own and Path(str(o)).resolve() != Path(str(dataset)).resolve() for o in others):
        return f"{own}-{hashlib.sha1(str(Path(str(dataset)).resolve()).encode()).hexdigest()[:8]}"
    return own


def run_dir_for(output: str | Path, protocol: str, dataset: str, method: str, shots: int, seed: int,
                others: Sequence[str] = ()) -> Path:
    return (Path(output) / protocol / dataset_folder_name(dataset, others) / method / f"shots_{shots}"
            / f"seed_{seed}")


def plan_sweep(protocol: str, methods: Sequence[str], datasets: Sequence[str] | None, shots: Sequence[int] | None,
               seeds: Sequence[int], output: str | Path, targets: Sequence[str] | None = None,
               backbone: str | None = None) -> list[dict]:
    """The list of runs a sweep consists of (no side effects)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown protocol {protocol!r}. Valid protocols: {', '.join(PROTOCOLS)}.", field="protocol")
    if not methods:
        raise ConfigError("A sweep needs at least one method (e.g. methods=['coop', 'mudpt']).", field="methods")
    if not seeds:
        raise ConfigError("A sweep needs at least one seed (e.g. seeds=[1, 2, 3]).", field="seeds")
    if targets and protocol in ("xd", "dg"):
        sources, _ = default_source_and_targets("fewshot", datasets, backbone)
        targets = list(targets)
    else:
        sources, targets = default_source_and_targets(protocol, datasets, backbone)
    from mudpt.methods import get_method_class

    unsupported = [m for m in methods if protocol not in get_method_class(m).protocols()]
    if unsupported:
        what = {"base2new": "new classes", "xd": "other datasets' classes"}.get(protocol, "other classes")
        raise ConfigError(f"{', '.join(unsupported)} score(s) only the classes they were fitted on, and the "
                          f"{protocol} protocol evaluates on {what}; run them under "
                          f"{' or '.join(get_method_class(unsupported[0]).protocols())}, or leave them out of "
                          "this sweep", field="methods")
    shots = list(shots or ([1, 2, 4, 8, 16] if protocol == "fewshot" else [16]))
    plan = []
    for dataset in sources:
        for method in methods:
            cls = get_method_class(method)
            # Nothing learned from data (zero-shot CLIP): one run, no shots, the first seed.
            method_shots = shots if cls.learns_from_data else [0]
            method_seeds = seeds if cls.learns_from_data else [seeds[0]]
            for k in method_shots:
                for seed in method_seeds:
                    plan.append({
                        "protocol": protocol, "dataset": dataset, "method": method, "shots": k, "seed": seed,
                        "subsample": "base" if protocol == "base2new" else "all",
                        "targets": (["new"] if protocol == "base2new" else list(targets)),
                        "run_dir": run_dir_for(output, protocol, dataset, method, k, seed, sources),
                    })
    return plan


def _overrides_for_method(method: str, overrides: dict, methods: Sequence[str]) -> dict:
    """A sweep's overrides for one method: ``method_options.<name>`` only reaches the methods
    that have that option (e.g. ``n_ctx`` is not an option of zsclip); one that no method of the
    sweep has is an error."""
    from mudpt.methods import get_method_class

    kept = {}
    for key, value in overrides.items():
        if key.startswith("method_options."):
            option = key.split(".", 1)[1]
            takers = [m for m in methods if option in get_method_class(m).Config.option_names()]
            if not takers:
                raise ConfigError(f"{key}: none of the sweep's methods ({', '.join(methods)}) has an option {option!r}.",
                                  field=key)
            if method not in takers:
                continue
        kept[key] = value
    return kept


def sweep(protocol: str, methods: Sequence[str], datasets: Sequence[str] | None = None,
          shots: Sequence[int] | None = None, seeds: Sequence[int] = (1, 2, 3), output: str | Path = "runs",
          backbone: str | None = None, pretrained: str | None = None, root: str | None = None,
          configs: dict | None = None, overrides: dict | None = None, targets: Sequence[str] | None = None,
          progress: bool = True, make_report: bool = True, keep_going: bool = False,
          log: Callable[[str], None] = print, on_mismatch: str = "error", launcher: str = "local",
          workers: int = 1, gpus_per_run: int = 1, slurm=None) -> dict:
    """Run every combination of a protocol (skipping finished ones), then write the report.

    A run folder is skipped only when it holds a finished run of the same full identity
    (method and options, backbone and weights, dataset location and content, the few-shot
    sample, every hyper-parameter, the precision used); one of another identity is refused with
    the differing keys, or trained again with ``on_mismatch="overwrite"``. An evaluation is
    skipped only when its file records the same evaluated data and precision.

    ``targets`` replaces the default evaluation datasets of ``xd``/``dg`` (the world's, or the
    published ones when the source is ``imagenet``). ``configs`` maps a method to a preset
    (default: :func:`default_preset`); ``overrides`` are applied to every run's config (e.g.
    ``{"epochs": 2, "precision": "bf16", "wandb": "my-project"}``; with ``wandb`` the runs are
    grouped under the sweep's name). With ``keep_going`` a failing run is logged and the sweep
    goes on.

    Where the runs execute (``engine/launchers.py``): ``launcher="local"`` with ``workers=1``
    runs them in this process; ``workers=N`` on N local worker processes, each with its own
    GPU(s) (``gpus_per_run=K``: DDP over K GPUs per run) or its share of the CPU cores, failures
    collected; ``launcher="slurm"`` submits one job per run through submitit with the
    :class:`~mudpt.engine.launchers.SlurmOptions` ``slurm``. Ctrl-C raises
    :class:`~mudpt.engine.launchers.SweepInterrupted`; the same call continues the sweep.

    Returns ``{"runs": [...], "trained": n, "skipped": n, "busy": [...], "queued": [...],
    "failed": [...], "results": [TaskResult, ...], "report": paths or None}``.
    """
    from mudpt.engine.config import check_method_name
    from mudpt.engine.launchers import RunTask, make_launcher

    for method in methods:
        check_method_name(method)
    plan = plan_sweep(protocol, methods, datasets, shots, seeds, output, targets=targets, backbone=backbone)
    overrides = dict(overrides or {})
    if overrides.get("wandb") and not overrides.get("wandb_group"):
        overrides["wandb_group"] = f"{protocol}:{Path(output).resolve().name}"
    # Validate every config before the first (long) run starts.
    configs = dict(configs or {})
    tasks = []
    for number, entry in enumerate(plan, 1):
        preset = configs.get(entry["method"]) or default_preset(entry["method"], protocol, backbone, entry["shots"])
        run_overrides = {"method": entry["method"], "dataset": entry["dataset"], "shots": entry["shots"],
                         "seed": entry["seed"], "subsample": entry["subsample"], "output_dir": str(entry["run_dir"])}
        if backbone is not None:
            run_overrides["backbone"] = backbone
        if pretrained is not None:
            run_overrides["pretrained"] = pretrained
        if root is not None:
            run_overrides["root"] = root
        run_overrides.update(_overrides_for_method(entry["method"], overrides, methods))
        cfg = load_config(preset, overrides=run_overrides)
        cfg.validate(check_registries=True, complete=True)
        label = f"[{number}/{len(plan)}] {protocol} {entry['dataset']} {entry['method']} shots={entry['shots']} " \
                f"seed={entry['seed']}"
        tasks.append(RunTask(number, len(plan), label, {**entry, "run_dir": str(entry["run_dir"])}, cfg.to_dict(),
                             on_mismatch))

    make_dir(output, "the sweep folder")
    runner = make_launcher(launcher, workers=workers, gpus_per_run=gpus_per_run, keep_going=keep_going,
                           progress=progress, slurm=slurm, sweep_dir=Path(output))
    start = time.perf_counter()
    results = runner.run(tasks, log)
    by_status = {status: [r for r in results if r.status == status]
                 for status in ("trained", "skipped", "busy", "queued", "failed")}
    failures = [f"{r.run_dir}: {r.error.strip()}" for r in by_status["failed"]]
    log(f"sweep finished: {len(by_status['trained'])} trained, {len(by_status['skipped'])} skipped, "
        + (f"{len(by_status['busy'])} busy elsewhere, " if by_status["busy"] else "")
        + (f"{len(by_status['queued'])} queued, " if by_status["queued"] else "")
        + f"{len(failures)} failed, {time.perf_counter() - start:.1f}s")
    report_paths = None
    if make_report and not by_status["queued"]:
        from mudpt.engine.report import report

        report_paths = report(output)
        log(f"report: {report_paths['markdown']}")
    return {"runs": [t.entry["run_dir"] for t in tasks], "trained": len(by_status["trained"]),
            "skipped": len(by_status["skipped"]), "busy": [r.run_dir for r in by_status["busy"]],
            "queued": [r.run_dir for r in by_status["queued"]], "failed": failures, "results": results,
            "report": report_paths}
