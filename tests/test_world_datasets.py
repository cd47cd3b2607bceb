"""The world's datasets: benchmark layout on disk, determinism, base/new compositions, the data
layer reading them, atomic on-demand generation."""

import json

import numpy as np
import pytest
from PIL import Image

from mudpt.world import datasets as D
from mudpt.world import generator as G


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    D.generate_all(root, seed=0, scale="small",
                   names=["world_source", "world_source_plain", "world_source_foggy", "world_count"], progress=False)
    return root


def test_layout_is_the_benchmarks(small_root):
    folder = small_root / "world_source"
    split = json.loads((folder / "split_zhou_WorldSource.json").read_text())
    assert set(split) == {"train", "val", "test"}
    counts = D.split_counts("small", 64)
    assert len(split["train"]) == 64 * counts["train"]
    assert len(split["test"]) == 64 * counts["test"]
    relpath, label, classname = split["train"][0]
    assert isinstance(relpath, str) and isinstance(label, int) and isinstance(classname, str)
    image = Image.open(folder / "images" / relpath)
    assert image.size == (48, 48) and image.mode == "RGB"
    assert (folder / "classnames.txt").read_text().splitlines() == list(D.WORLD_DATASETS["world_source"].classnames)
    assert json.loads((small_root / D.ROOT_MARKER).read_text())["scale"] == "small"
    # Every file the split names exists; nothing else is left behind (no temp folders).
    for rows in split.values():
        for relpath, _, _ in rows:
            assert (folder / "images" / relpath).is_file()
    assert not [p for p in small_root.iterdir() if p.name.startswith(".")]


def test_shifted_renderings_are_test_only(small_root):
    split = json.loads((small_root / "world_source_foggy" / "split_zhou_WorldSourceFoggy.json").read_text())
    assert split["train"] == [] and split["val"] == [] and len(split["test"]) > 0


@pytest.mark.parametrize("name", ["world_source_plain", "world_source"])
def test_labels_match_the_pixels(small_root, name):
    """A 'red star' image is red: its object pixels are nearest to red (under world_source's
    warm light, nearest to red under that light)."""
    _, _, test, classnames = D.read_world_dataset(name, small_root / name)
    references = G.COLOUR_RGB
    if name == "world_source":
        scale, offset = G.CASTS[D.SOURCE_STYLE]
        references = G.COLOUR_RGB * np.array(scale) + np.array(offset)
    checked = 0
    for item in test[::7]:
        colour_name = item.classname.split()[0]
        image = np.asarray(Image.open(item.path)).astype(np.float32)
        # A 3x3 mean filter damps the per-pixel noise of "noisy" backgrounds; then each pixel
        # votes for the reference colour it is close to (greyish backgrounds vote for none) and
        # the label's colour must win.
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
        image = sum(padded[dy:dy + 48, dx:dx + 48] for dy in range(3) for dx in range(3)) / 9
        pixels = image.reshape(-1, 3)
        distances = np.linalg.norm(pixels[:, None, :] - references[None], axis=2)
        close = distances.min(axis=1) < 55
        if close.sum() < 8:  # a thin outline on a busy background: too few pixels to judge
            continue
        votes = np.bincount(distances[close].argmin(axis=1), minlength=len(G.COLOURS))
        assert G.COLOURS[int(votes.argmax())] == colour_name, (item.path, votes)
        checked += 1
    assert checked > (30 if len(test) > 300 else 15)


def test_generation_is_deterministic(tmp_path):
    a = D.render_class(D.WORLD_DATASETS["world_source"], 5, "test", 4, seed=0)
    b = D.render_class(D.WORLD_DATASETS["world_source"], 5, "test", 4, seed=0)
    c = D.render_class(D.WORLD_DATASETS["world_source"], 5, "test", 4, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_base_and_new_split_compositions_not_words():
    pairs = D.source_compositions()
    base, new = pairs[:32], pairs[32:]
    assert len(set(pairs)) == 64 and not set(base) & set(new)
    for index in range(8):  # every colour and every shape occurs in both halves
        assert {c for c, _ in base} == set(range(8)) and {s for _, s in new} == set(range(8))
        assert sum(c == index for c, _ in base) == 4 and sum(s == index for _, s in new) == 4


def test_data_layer_reads_world_datasets(small_root):
    import mudpt.data

    assert "world_source" in mudpt.data.available_datasets()
    ds = mudpt.data.load_dataset("world_source", root=small_root, shots=4, seed=1, subsample="base")
    assert ds.num_classes == 32 and len(ds.train) == 32 * 4
    assert ds.classnames == [f"{G.COLOURS[c]} {G.SHAPES[s]}" for c, s in D.source_compositions()[:32]]
    new = mudpt.data.load_dataset("world_source", root=small_root, subsample="new")
    assert not set(ds.classnames) & set(new.classnames)
    count = mudpt.data.load_dataset("world_count", root=small_root)
    assert count.classnames == ["one shape", "two shapes", "three shapes"]


def test_on_demand_generation_into_the_cache(tmp_path, monkeypatch):
    import mudpt.data

    monkeypatch.setenv("MUDPT_CACHE", str(tmp_path))
    # The registered default root follows $MUDPT_CACHE at load time; a root marker pins the scale.
    root = D.world_root(0, "default")
    root.mkdir(parents=True)
    (root / D.ROOT_MARKER).write_text(json.dumps({"world_version": D.WORLD_VERSION, "seed": 0, "scale": "small"}))
    ds = mudpt.data.load_dataset("world_fill")
    assert ds.dataset_dir is None or str(tmp_path) in str(ds.dataset_dir)
    assert (root / "world_fill" / "world.json").is_file()
    assert len(ds.test) == 3 * D.split_counts("small", 3)["test"]


def test_refuses_to_mix_worlds_in_one_root(small_root):
    with pytest.raises(ValueError, match="refusing to add"):
        D.write_dataset("world_fill", small_root, seed=3, scale="small")


def test_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown world dataset 'world_nope'"):
        D.write_dataset("world_nope", tmp_path)
    with pytest.raises(ValueError, match="unknown world scale"):
        D.world_root(0, "huge")


def test_an_unwritable_world_root_is_a_clear_error(tmp_path, capsys):
    from mudpt.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    assert main(["data", "check", "world_source", "--root", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the folder to generate the world's dataset 'world_source' in" in err
    assert "Traceback" not in err and blocker.read_text() == "mine"
