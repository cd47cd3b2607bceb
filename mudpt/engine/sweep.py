"""Sweeps: every (dataset, method, shots, seed) of a protocol, in a fixed folder layout.

Layout: ``<output>/<protocol>/<dataset>/<method>/shots_<K>/seed_<S>/`` (a run folder). A run
whose ``results.json`` exists, and an evaluation whose file exists, is skipped, so a sweep can
be stopped at any moment and restarted with the same command. The protocols
(docs/ENGINE.md, ../shared/spec/PROTOCOLS.md):

- ``fewshot``: train on all classes with K shots; test on the dataset's test split.
- ``base2new``: train on the base classes; test on base and on new classes.
- ``xd`` (cross-dataset): train on the source dataset (all classes); evaluate on each target
  dataset with its own class names.
- ``dg`` (domain generalisation): train on the source; evaluate on its shifted renderings.

``zsclip`` has nothing to train: one run per dataset (``shots_0/seed_<first seed>``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from mudpt.engine.config import ConfigError, load_config
from mudpt.engine.runs import is_finished

PROTOCOLS = ("fewshot", "base2new", "xd", "dg")
WORLD_BACKBONES = ("world-tiny",)

# Published presets for ViT-B/16 per protocol (few-shot / base-to-new / cross-dataset+dg).
PUBLISHED_PRESETS = {
    "fewshot": {
        "zsclip": "zsclip/vit_b16", "coop": "coop/vit_b16_ep50", "cocoop": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
        "vpt": "vpt/vit_b16_c2_ep5_batch4_4", "ivlp": "ivlp/vit_b16_c2_ep5_batch4_2+2ctx",
        "maple": "maple/vit_b16_c2_ep5_batch4_2ctx", "mudpt": "mudpt/vit_b16_ep10",
    },
    "base2new": {
        "zsclip": "zsclip/vit_b16", "coop": "coop/vit_b16_ep50_ctxv1", "cocoop": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
        "vpt": "vpt/vit_b16_c2_ep5_batch4_4", "ivlp": "ivlp/vit_b16_c2_ep5_batch4_2+2ctx",
        "maple": "maple/vit_b16_c2_ep5_batch4_2ctx", "mudpt": "mudpt/vit_b16_ep5",
    },
    "xd": {
        "zsclip": "zsclip/vit_b16", "coop": "coop/vit_b16_ep50", "cocoop": "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
        "vpt": "vpt/vit_b16_c2_ep5_batch4_4", "ivlp": "ivlp/vit_b16_c2_ep5_batch4_2+2ctx",
        "maple": "maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets", "mudpt": "mudpt/vit_b16_ep5",
    },
}
PUBLISHED_PRESETS["dg"] = PUBLISHED_PRESETS["xd"]

REAL_XD_TARGETS = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                   "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
REAL_DG_TARGETS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


def default_preset(method: str, protocol: str, backbone: str | None, shots: int | None = None) -> str:
    """The preset a sweep uses for a method: the small world preset on the built-in backbone,
    otherwise the method's published ViT-B/16 preset for the protocol (CoOp's few-shot scripts
    use 50 epochs for 1-2 shots, 100 for 4-8 and 200 for 16)."""
    if backbone is None or backbone in WORLD_BACKBONES or str(backbone).startswith("test-"):
        return f"{method}/world"
    if method == "coop" and protocol == "fewshot" and shots:
        return "coop/vit_b16_ep50" if shots <= 2 else ("coop/vit_b16_ep100" if shots <= 8 else "coop/vit_b16")
    try:
        return PUBLISHED_PRESETS[protocol][method]
    except KeyError:
        raise ConfigError(f"No shipped preset for method {method!r} under protocol {protocol!r}; pass one with --config {method}=<preset>.") from None


def pretrained_for_backbone(preset: str | None, overrides: dict) -> dict:
    """A preset's ``pretrained`` belongs to its backbone: when the backbone is overridden and the
    weights are not, use the new backbone's random init (``None``) rather than the preset's tag."""
    from mudpt.engine.config import read_preset

    if preset is None or "backbone" not in overrides or "pretrained" in overrides:
        return overrides
    raw = read_preset(preset)
    if raw.get("backbone") not in (None, overrides["backbone"]):
        overrides = {**overrides, "pretrained": None}
    return overrides


def default_source_and_targets(protocol: str, datasets: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(training datasets, evaluation targets) of a protocol when the user names none."""
    if protocol in ("fewshot", "base2new"):
        return list(datasets or [_world_source()]), []
    sources = list(datasets or [_world_source()])
    if protocol == "xd":
        return sources, (REAL_XD_TARGETS if sources == ["imagenet"] else _world_attr("CROSS_DATASET_TARGETS"))
    return sources, (REAL_DG_TARGETS if sources == ["imagenet"] else _world_attr("DOMAIN_SHIFTS"))


def _world_source() -> str:
    return _world_attr("SOURCE")


def _world_attr(name: str):
    """``mudpt.world.datasets.<name>`` (SOURCE, CROSS_DATASET_TARGETS, DOMAIN_SHIFTS), read lazily.

    Falls back to the registered ``world_*`` names when the world module does not define it:
    ``world_source`` as the source, its ``world_source_<style>`` renderings as domain shifts and
    the other ``world_*`` datasets as cross-dataset targets.
    """
    try:
        from mudpt.world import datasets as world_datasets  # lazily: the world registers on import

        value = getattr(world_datasets, name)
        return list(value) if isinstance(value, (list, tuple)) else value
    except (ImportError, AttributeError):
        pass
    if name == "SOURCE":
        return "world_source"
    import mudpt.data

    world = [d for d in mudpt.data.available_datasets() if d.startswith("world_") and d != "world_source"]
    shifts = [d for d in world if d.startswith("world_source_")]
    chosen = shifts if name == "DOMAIN_SHIFTS" else [d for d in world if d not in shifts]
    if not chosen:
        raise ConfigError(f"No built-in world datasets are registered for {name}; name the evaluation "
                          f"datasets with --targets.")
    return chosen


def run_dir_for(output: str | Path, protocol: str, dataset: str, method: str, shots: int, seed: int) -> Path:
    safe_dataset = Path(str(dataset)).name if Path(str(dataset)).exists() else str(dataset)
    return Path(output) / protocol / safe_dataset / method / f"shots_{shots}" / f"seed_{seed}"


def plan_sweep(protocol: str, methods: Sequence[str], datasets: Sequence[str] | None, shots: Sequence[int] | None,
               seeds: Sequence[int], output: str | Path, targets: Sequence[str] | None = None) -> list[dict]:
    """The list of runs a sweep consists of (no side effects)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown protocol {protocol!r}. Valid protocols: {', '.join(PROTOCOLS)}.")
    if not methods:
        raise ConfigError("A sweep needs at least one method (--methods coop,mudpt).")
    if not seeds:
        raise ConfigError("A sweep needs at least one seed (--seeds 1,2,3).")
    if targets and protocol in ("xd", "dg"):
        sources, targets = list(datasets or [_world_source()]), list(targets)
    else:
        sources, targets = default_source_and_targets(protocol, datasets)
    shots = list(shots or ([1, 2, 4, 8, 16] if protocol == "fewshot" else [16]))
    plan = []
    for dataset in sources:
        for method in methods:
            method_shots = [0] if method == "zsclip" else shots
            method_seeds = [seeds[0]] if method == "zsclip" else seeds
            for k in method_shots:
                for seed in method_seeds:
                    plan.append({
                        "protocol": protocol, "dataset": dataset, "method": method, "shots": k, "seed": seed,
                        "subsample": "base" if protocol == "base2new" else "all",
                        "targets": (["new"] if protocol == "base2new" else list(targets)),
                        "run_dir": run_dir_for(output, protocol, dataset, method, k, seed),
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
            takers = [m for m in methods if option in get_method_class(m).OPTIONS]
            if not takers:
                raise ConfigError(f"--set {key}: none of the sweep's methods ({', '.join(methods)}) has an option {option!r}.")
            if method not in takers:
                continue
        kept[key] = value
    return kept


def sweep(protocol: str, methods: Sequence[str], datasets: Sequence[str] | None = None,
          shots: Sequence[int] | None = None, seeds: Sequence[int] = (1, 2, 3), output: str | Path = "runs",
          backbone: str | None = None, pretrained: str | None = None, root: str | None = None,
          configs: dict | None = None, overrides: dict | None = None, targets: Sequence[str] | None = None,
          progress: bool = True, make_report: bool = True, keep_going: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Run every combination of a protocol (skipping finished ones), then write the report.

    ``targets`` replaces the default evaluation datasets of ``xd``/``dg`` (the world's, or the
    published ones when the source is ``imagenet``). ``configs`` maps a method to a preset
    (default: :func:`default_preset`); ``overrides`` are applied to every run's config (e.g.
    ``{"epochs": 2, "precision": "bf16"}``). With ``keep_going`` a failing run is logged and
    the sweep goes on. Returns ``{"runs": [...], "trained": n, "skipped": n, "failed": [...],
    "report": paths or None}``.
    """
    from mudpt.engine.config import check_method_name

    for method in methods:
        check_method_name(method)
    plan = plan_sweep(protocol, methods, datasets, shots, seeds, output, targets=targets)
    # Validate every config before the first (long) run starts.
    configs = dict(configs or {})
    built = []
    for entry in plan:
        preset = configs.get(entry["method"]) or default_preset(entry["method"], protocol, backbone, entry["shots"])
        run_overrides = {"method": entry["method"], "dataset": entry["dataset"], "shots": entry["shots"],
                         "seed": entry["seed"], "subsample": entry["subsample"], "output_dir": str(entry["run_dir"])}
        if backbone is not None:
            run_overrides["backbone"] = backbone
        if pretrained is not None:
            run_overrides["pretrained"] = pretrained
        run_overrides = pretrained_for_backbone(preset, run_overrides)
        if root is not None:
            run_overrides["root"] = root
        run_overrides.update(_overrides_for_method(entry["method"], overrides or {}, methods))
        cfg = load_config(preset, overrides=run_overrides)
        cfg.validate(check_registries=True)
        built.append((entry, cfg))

    Path(output).mkdir(parents=True, exist_ok=True)
    trained = skipped = 0
    failures: list[str] = []
    start = time.perf_counter()
    for number, (entry, cfg) in enumerate(built, 1):
        label = f"[{number}/{len(built)}] {protocol} {entry['dataset']} {entry['method']} shots={entry['shots']} seed={entry['seed']}"
        try:
            trained_now = _run_entry(entry, cfg, label, progress, log)
        except (ValueError, FloatingPointError, RuntimeError, OSError) as err:
            if not keep_going:
                raise
            failures.append(f"{entry['run_dir']}: {type(err).__name__}: {err}")
            log(f"{label}: FAILED ({err}); continuing (--keep-going)")
            continue
        trained += int(trained_now)
        skipped += int(not trained_now)
    log(f"sweep finished: {trained} trained, {skipped} skipped, {len(failures)} failed, "
        f"{time.perf_counter() - start:.1f}s")
    report_paths = None
    if make_report:
        from mudpt.engine.report import report

        report_paths = report(output)
        log(f"report: {report_paths['markdown']}")
    return {"runs": [str(e["run_dir"]) for e, _ in built], "trained": trained, "skipped": skipped,
            "failed": failures, "report": report_paths}


def _run_entry(entry: dict, cfg, label: str, progress: bool, log) -> bool:
    """Train one run of a sweep (unless finished) and its evaluations; True when it trained."""
    from mudpt.engine.evaluation import evaluate, evaluation_key
    from mudpt.engine.trainer import train

    trained = False
    if is_finished(entry["run_dir"]):
        log(f"{label}: done, skipped")
    else:
        verb = "zero-shot evaluation" if entry["method"] == "zsclip" else "training"
        log(f"{label}: {verb} -> {entry['run_dir']}")
        train(cfg, progress=progress)
        trained = True
    for target in entry["targets"]:
        if target == "new":
            dataset_name, subsample = entry["dataset"], "new"
        else:
            dataset_name, subsample = target, "all"
        key = evaluation_key(dataset_name, subsample, "test")
        if (Path(entry["run_dir"]) / "evaluations" / f"{key}.json").is_file():
            continue
        log(f"{label}: evaluating on {dataset_name} ({subsample})")
        evaluate(entry["run_dir"], dataset=dataset_name, root=cfg.root, subsample=subsample,
                 batch_size=cfg.eval_batch_size, precision=cfg.precision, progress=progress,
                 device=cfg.device, num_workers=cfg.num_workers)
    return trained
