"""Transforms, ImageDataset and loaders: shapes, normalisation, RGB, corrupt files."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import mudpt.data as data
from mudpt.data.items import Datum
from fake_benchmarks import write_image


def _mean_std():
    return torch.tensor(data.CLIP_MEAN).view(3, 1, 1), torch.tensor(data.CLIP_STD).view(3, 1, 1)


def test_test_transform_resizes_shorter_side_crops_centre_and_normalises():
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    # Blue side bands: after resizing to 32x16 they span 3 pixels on each side, well outside
    # the centre crop (columns 8..23), so only red survives.
    image.paste((0, 0, 255), (0, 0, 6, 30))
    image.paste((0, 0, 255), (54, 0, 60, 30))
    out = data.build_transform(16, train=False)(image)
    assert out.shape == (3, 16, 16)
    mean, std = _mean_std()
    expected = (torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1) - mean) / std
    assert torch.allclose(out, expected.expand(3, 16, 16), atol=1e-5)


def test_test_transform_uses_backbone_size_and_stats():
    backbone = SimpleNamespace(image_size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = data.build_transform(backbone, train=False)(Image.new("RGB", (40, 40), (255, 255, 255)))
    assert out.shape == (3, 24, 24)
    assert torch.allclose(out, torch.full((3, 24, 24), 2.0), atol=1e-5)  # (1 - 0.5) / 0.25


def test_train_transform_random_crop_and_flip_shapes_and_randomness():
    image = Image.new("RGB", (64, 48))
    image.putdata([((x * 4) % 256, (y * 5) % 256, 7) for y in range(48) for x in range(64)])
    transform = data.build_transform(20, train=True)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(4)]
    assert all(o.shape == (3, 20, 20) for o in outs)
    assert not torch.allclose(outs[0], outs[1])  # random crops differ
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["Lambda", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop = transform.transforms[1]
    assert crop.scale == (0.08, 1.0) and crop.interpolation.value == "bicubic"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_images_are_converted_to_rgb(mode):
    image = Image.new(mode, (10, 10))
    assert data.build_transform(8, train=False)(image).shape == (3, 8, 8)


def test_bad_transform_arguments():
    with pytest.raises(TypeError, match="int image size or a backbone"):
        data.build_transform("224", train=False)
    with pytest.raises(ValueError, match="positive"):
        data.build_transform(0, train=True)


def _items(tmp_path, n=6):
    return [Datum(str(write_image(tmp_path / f"{i}.png", i)), i % 3, "abc"[i % 3]) for i in range(n)]


def test_image_dataset_returns_tensor_and_label(tmp_path):
    items = _items(tmp_path)
    dataset = data.ImageDataset(items, data.build_transform(8, train=False))
    image, label = dataset[4]
    assert image.shape == (3, 8, 8) and label == 1 and len(dataset) == 6


def test_corrupt_image_error_names_the_file(tmp_path):
    items = _items(tmp_path)
    (tmp_path / "2.png").write_bytes(b"\x89PNG broken")
    dataset = data.ImageDataset(items, data.build_transform(8, train=False))
    with pytest.raises(data.CorruptImageError, match=r"cannot read image .*2\.png.*full data check"):
        dataset[2]


def test_truncated_jpeg_is_detected(tmp_path):
    path = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(data.CorruptImageError, match=r"t\.jpg"):
        data.read_image(str(path))


def test_worker_errors_keep_one_paragraph_naming_the_file(tmp_path):
    """An image that fails in a DataLoader worker comes back as the same error type, with the
    original message rather than the worker's traceback."""
    from mudpt.core.errors import UserError

    items = _items(tmp_path, 4)
    (tmp_path / "3.png").write_bytes(b"garbage")
    loader = data.build_loader(items, data.build_transform(8, train=False), batch_size=2, shuffle=False,
                               num_workers=1)
    with pytest.raises(data.CorruptImageError) as info:
        list(loader)
    assert isinstance(info.value, UserError)
    assert str(info.value).startswith("cannot read image ") and "3.png" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_16_bit_greyscale_is_scaled_not_saturated(tmp_path):
    import numpy as np

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "eight.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    deep, eight = data.read_image(str(tmp_path / "deep.png")), data.read_image(str(tmp_path / "eight.png"))
    assert deep.mode == "RGB" and np.array_equal(np.asarray(deep), np.asarray(eight))
    assert np.asarray(deep).min() == 0 and np.asarray(deep).max() == 255  # not all white


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2x the limit: PIL refuses
    with pytest.raises(data.CorruptImageError, match=r"big\.png is too large to decode safely.*MAX_IMAGE_PIXELS"):
        data.read_image(str(tmp_path / "big.png"))


def test_check_images_reports_every_unreadable_file(tmp_path):
    items = _items(tmp_path, 6)
    (tmp_path / "1.png").write_bytes(b"garbage")
    path = tmp_path / "4.png"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    (tmp_path / "5.png").unlink()
    bad = data.check_images(items, num_workers=1)
    assert [p for p, _ in bad] == [str(tmp_path / n) for n in ("1.png", "4.png", "5.png")]
    assert "not found" in bad[2][1] and "cannot read image" in bad[0][1]


def test_loader_shuffle_generator_reproducible(tmp_path):
    items = _items(tmp_path)
    transform = data.build_transform(8, train=False)

    def order(seed):
        generator = torch.Generator().manual_seed(seed)
        loader = data.build_loader(items, transform, batch_size=2, shuffle=True, num_workers=0,
                                   generator=generator, drop_last=True)
        return torch.cat([labels for _, labels in loader]).tolist()

    assert order(3) == order(3)
    assert len(order(3)) == 6


def test_loader_rejects_empty_or_bad_batch():
    with pytest.raises(ValueError, match="empty list"):
        data.build_loader([], None, batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="batch_size"):
        data.build_loader([Datum("/x.jpg", 0, "a")], None, batch_size=0, shuffle=False)


def test_test_transform_equals_open_clip_preprocessing():
    import numpy as np
    from open_clip import image_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8))
    ours = data.build_transform(24, train=False)(image)
    theirs = image_transform(24, is_train=False)(image)
    assert ours.shape == theirs.shape == (3, 24, 24)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_backbone_may_declare_its_training_crop_range():
    from types import SimpleNamespace

    from mudpt.data.transforms import build_transform

    mild = SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, extra={"train_crop_scale": (0.6, 1.0)})
    crop = [t for t in build_transform(mild, train=True).transforms if type(t).__name__ == "RandomResizedCrop"][0]
    assert crop.scale == (0.6, 1.0)
    default = SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, extra={})
    crop = [t for t in build_transform(default, train=True).transforms if type(t).__name__ == "RandomResizedCrop"][0]
    assert crop.scale == (0.08, 1.0)
    whole = SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                            extra={"train_crop_scale": None, "train_hflip": False})
    names = [type(t).__name__ for t in build_transform(whole, train=True).transforms]
    assert names == [type(t).__name__ for t in build_transform(whole, train=False).transforms]
    assert "RandomResizedCrop" not in names and "RandomHorizontalFlip" not in names
    bad = SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, extra={"train_crop_scale": (0.9, 0.2)})
    with pytest.raises(ValueError, match="train_crop_scale"):
        build_transform(bad, train=True)
