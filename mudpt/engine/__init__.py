"""The engine: configs and presets, the training loop, evaluation, sweeps, reports, DDP.

Public API::

    from mudpt.engine import TrainConfig, load_config, train, evaluate, sweep, report
    cfg = load_config("mudpt/vit_b16_ep10", overrides={"shots": 16})
    result = train(cfg)                 # RunResult(run_dir, method, metrics)
    metrics = evaluate(result.run_dir, subsample="new")
    export_run(result.run_dir, "model.onnx")                # a standalone classifier
    load_classifier("model.onnx").predict(["cat.jpg"])   # or a run folder
"""

from mudpt.engine.config import (ConfigError, TrainConfig, available_presets, load_config,  # noqa: F401
                                 parse_set_items)
from mudpt.engine.classifier import Classifier, Predictions, load_classifier  # noqa: F401
from mudpt.engine.evaluation import compute_metrics, evaluate  # noqa: F401
from mudpt.engine.export import export_method, export_run  # noqa: F401
from mudpt.engine.predict import predict  # noqa: F401
from mudpt.engine.report import report  # noqa: F401
from mudpt.engine.runs import RunFolderError, load_run_method  # noqa: F401
from mudpt.engine.sweep import sweep  # noqa: F401
from mudpt.engine.trainer import RunResult, TrainingDivergedError, train  # noqa: F401

__all__ = [
    "Classifier",
    "ConfigError",
    "Predictions",
    "RunFolderError",
    "RunResult",
    "TrainConfig",
    "TrainingDivergedError",
    "available_presets",
    "compute_metrics",
    "evaluate",
    "export_method",
    "export_run",
    "load_classifier",
    "load_config",
    "load_run_method",
    "parse_set_items",
    "predict",
    "report",
    "sweep",
    "train",
]
