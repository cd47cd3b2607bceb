"""Image transforms: one definition shared by training and evaluation.

Test: resize the shorter side to the input size (bicubic), centre crop, tensor, normalise
(the CLIP / open_clip test transform), or as the backbone's own preprocessing config says
(``resize_mode`` ``"squash"``: both sides to the size, SigLIP's and PE-Core's; ``"longest"``:
the longer side, padded; ``interpolation`` ``"bilinear"``).  Train: random resized crop (scale
0.08-1, the backbone's interpolation),
horizontal flip, tensor, normalise (the CoOp family's ``random_resized_crop, random_flip,
normalize`` recipe), or for a method that asks for it (``augment="randaugment"``, CoPrompt's
``randaugment, normalize``) Dassl's resize to the input size and RandAugment (2 operations at
magnitude 10, torchvision's).  ``views`` > 1 draws that many augmented views of each image,
stacked (views, 3, S, S); a backbone may refuse RandAugment (the world's, whose labels are colours,
sizes and positions).  Images are converted to RGB first.
"""

from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

from mudpt.data.loader import to_rgb

#: CLIP's (OpenAI) normalisation statistics, used when only a size is given.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Scale range of the training random resized crop (Dassl's default RRCROP_SCALE).
TRAIN_CROP_SCALE = (0.08, 1.0)


def _extra(clip_or_image_size) -> dict:
    return getattr(clip_or_image_size, "extra", None) or {}


def _train_crop_scale(clip_or_image_size) -> tuple[float, float] | None:
    """The backbone's own crop range when it declares one (``extra["train_crop_scale"]``; None:
    no random crop).

    The built-in world's 48 px scenes lose whole objects to an 8% crop, and a zoom changes an
    object's apparent size and position, which are labels there; such backbones may ask for a
    milder range or none. Everything else keeps the reference recipe.
    """
    scale = _extra(clip_or_image_size).get("train_crop_scale", TRAIN_CROP_SCALE)
    if scale is None:
        return None
    low, high = (float(v) for v in scale)
    if not 0 < low <= high <= 1:
        raise ValueError(f"train_crop_scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    return low, high


def _size_and_stats(clip_or_image_size) -> tuple[int, Sequence[float], Sequence[float]]:
    if isinstance(clip_or_image_size, bool):
        raise TypeError("build_transform needs an image size or a backbone, got a bool")
    if isinstance(clip_or_image_size, int):
        size, mean, std = clip_or_image_size, CLIP_MEAN, CLIP_STD
    elif isinstance(clip_or_image_size, (tuple, list)) and len(clip_or_image_size) == 2 \
            and clip_or_image_size[0] == clip_or_image_size[1]:
        size, mean, std = int(clip_or_image_size[0]), CLIP_MEAN, CLIP_STD
    elif hasattr(clip_or_image_size, "image_size"):
        backbone = clip_or_image_size
        size = backbone.image_size
        if isinstance(size, (tuple, list)):
            size = size[0]
        mean = tuple(getattr(backbone, "mean", None) or CLIP_MEAN)
        std = tuple(getattr(backbone, "std", None) or CLIP_STD)
    else:
        raise TypeError("build_transform expects an int image size or a backbone with "
                        f".image_size/.mean/.std, got {type(clip_or_image_size).__name__}")
    size = int(size)
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values, got {mean} and {std}")
    return size, mean, std


#: Training augmentations a method may ask for instead of the crop-and-flip recipe.
AUGMENTATIONS = ("randaugment",)
#: RandAugment's settings in Dassl's defaults (INPUT.RANDAUGMENT_N, INPUT.RANDAUGMENT_M).
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 10


class MultiView:
    """``views`` independent draws of a random transform, stacked (views, 3, S, S)."""

    def __init__(self, transform, views: int):
        self.transform, self.views = transform, views

    def __call__(self, image):
        import torch

        return torch.stack([self.transform(image) for _ in range(self.views)])

    def __repr__(self) -> str:
        return f"MultiView({self.views} x {self.transform!r})"


def _randaugment(size: int, interpolation) -> list:
    """Dassl's ``randaugment`` train steps: resize to (S, S), then RandAugment."""
    return [T.Lambda(to_rgb), T.Resize((size, size), interpolation=interpolation),
            T.RandAugment(num_ops=RANDAUGMENT_OPS, magnitude=RANDAUGMENT_MAGNITUDE, interpolation=interpolation)]


RESIZE_MODES = ("shortest", "squash", "longest")


def _interpolation(clip_or_image_size):
    name = getattr(clip_or_image_size, "interpolation", None) or "bicubic"
    try:
        return T.InterpolationMode(name)
    except ValueError:
        raise ValueError(f"interpolation must be one of {[m.value for m in T.InterpolationMode]}, got {name!r}") \
            from None


def _test_resize(clip_or_image_size, size: int, interpolation) -> list:
    """The backbone's test-time resize (open_clip's ``resize_mode``)."""
    mode = getattr(clip_or_image_size, "resize_mode", None) or "shortest"
    if mode == "shortest":
        return [T.Resize(size, interpolation=interpolation), T.CenterCrop(size)]
    if mode == "squash":
        return [T.Resize((size, size), interpolation=interpolation)]
    if mode == "longest":  # open_clip's own steps: longer side to the size, then pad to a square
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

        return [ResizeKeepRatio(size, longest=1, interpolation=interpolation), CenterCropOrPad(size, fill=0)]
    raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")


def build_transform(clip_or_image_size, train: bool, crop_scale: tuple | None = None,
                    augment: str | None = None, views: int = 1):
    """Build the train or test transform (PIL image -> normalised float tensor (3, S, S)).

    Args:
        clip_or_image_size: an int input size (CLIP mean/std are used) or a backbone-like
            object with ``.image_size``, ``.mean`` and ``.std`` (e.g. ``mudpt.ClipBackbone``);
            a backbone may set ``extra["train_crop_scale"]`` to change the crop range (None: no
            random crop) and ``extra["train_hflip"] = False`` to turn off the flip.
        train: random resized crop + flip when True; resize + centre crop when False.
        crop_scale: the random crop's range instead of the reference recipe's (0.08, 1) (a
            method's own augmentation, e.g. Tip-Adapter's (0.5, 1)); a backbone that declares
            no random crop keeps none.
        augment: ``"randaugment"``: Dassl's resize + RandAugment instead of crop and flip
            (training only). A backbone whose labels RandAugment would change declares
            ``extra["train_randaugment"] = False`` and keeps its own training transform.
        views: augmented views per image (training only), stacked.
    """
    if augment is not None and augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS} or None, got {augment!r}")
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    size, mean, std = _size_and_stats(clip_or_image_size)
    normalize = T.Normalize(mean=mean, std=std)
    interpolation = _interpolation(clip_or_image_size)
    fixed = [T.Lambda(to_rgb)] + _test_resize(clip_or_image_size, size, interpolation)
    if train and augment == "randaugment" and _extra(clip_or_image_size).get("train_randaugment", True):
        steps = _randaugment(size, interpolation)
    elif train:
        scale = _train_crop_scale(clip_or_image_size)
        if scale is not None and crop_scale is not None and "train_crop_scale" not in _extra(clip_or_image_size):
            scale = tuple(float(v) for v in crop_scale)
        steps = fixed if scale is None else [
            T.Lambda(to_rgb), T.RandomResizedCrop(size, scale=scale, interpolation=interpolation)]
        # A flip swaps left and right, which some label spaces name (the world's positions).
        if _extra(clip_or_image_size).get("train_hflip", True):
            steps = steps + [T.RandomHorizontalFlip()]
    else:
        steps = fixed
    transform = T.Compose(steps + [T.ToTensor(), normalize])
    return MultiView(transform, views) if train and views > 1 else transform
