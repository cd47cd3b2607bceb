"""The names the package's layers share, as ``Literal`` types: configs check values against
them, the command line offers them as choices (``typing.get_args``), so each list is written
once."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["EXPORT_FORMATS", "ExportFormat", "OPTIMIZERS", "PRECISIONS", "PROTOCOLS", "Optimizer", "Precision", "Protocol", "SCHEDULE_UNITS",
           "SUBSAMPLES", "ScheduleUnit", "Subsample", "ALL_IMAGES", "harmonic_mean", "shots_label"]

#: The published evaluation protocols: few-shot, base-to-new, cross-dataset, domain generalisation.
Protocol = Literal["fewshot", "base2new", "xd", "dg"]
#: Class subsets of a dataset (base-to-new: the first / second half of the sorted labels).
Subsample = Literal["all", "base", "new"]
#: Precision of the forward pass (autocast dtype; fp32 = no autocast).
Precision = Literal["fp32", "bf16", "fp16"]
#: Dassl's optimisers: SGD (momentum), Adam (L2 weight decay in the gradient), and AdamW.
Optimizer = Literal["sgd", "adam", "adamw"]
#: How often the cosine learning-rate schedule steps.
ScheduleUnit = Literal["epoch", "step"]
#: What a tuned model is exported as (docs/DEPLOY.md): an ONNX graph, a torch.export program, the
#: class-embedding head for frozen open_clip, a merged open_clip state dict.
ExportFormat = Literal["onnx", "torch", "head", "open_clip"]

PROTOCOLS: tuple[str, ...] = get_args(Protocol)
SUBSAMPLES: tuple[str, ...] = get_args(Subsample)
PRECISIONS: tuple[str, ...] = get_args(Precision)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULE_UNITS: tuple[str, ...] = get_args(ScheduleUnit)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)


def harmonic_mean(base: float, new: float) -> float:
    """Base-to-new's summary: HM = 2 b n / (b + n) (0 when both are 0)."""
    return 2.0 * base * new / (base + new) if (base + new) > 0 else 0.0


#: A report's shot count for a method trained on every training image (``--shots 0``), kept apart
#: from zero-shot CLIP's 0 (no training image at all); sorts after every shot count.
ALL_IMAGES = 1 << 30


def shots_label(shots: int, learns: bool = True) -> str:
    """What a shot count means in a title or a column: ``"16-shot"``; ``shots=0`` of a method that
    learns from data is every training image (``"all-image"``), of one that does not ``"0-shot"``."""
    if shots == ALL_IMAGES or (shots == 0 and learns):
        return "all-image"
    return f"{shots}-shot"
