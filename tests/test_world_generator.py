"""The world's generator: determinism, label correctness (colour and shape of what is drawn),
captions, and speed."""


import numpy as np
import pytest

from mudpt.world import generator as G


def _single(shape, colour, fill=0, size=2, background=0, seed=0, n=1, **kw):
    rng = np.random.default_rng(seed)
    scenes = G.sample_scenes(rng, n, n_objects=1, shape=G.SHAPES.index(shape), colour=G.COLOURS.index(colour),
                             fill=fill, size=size, background=background, cell=4, **kw)
    return G.render_scenes(scenes), scenes


def test_same_seed_same_scenes_pixels_and_captions():
    a_img, a_cap, _ = G.generate(np.random.default_rng(7), 64)
    b_img, b_cap, _ = G.generate(np.random.default_rng(7), 64)
    c_img, _, _ = G.generate(np.random.default_rng(8), 64)
    assert np.array_equal(a_img, b_img)
    assert a_cap == b_cap
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (64, 48, 48, 3) and a_img.dtype == np.uint8


def _object_mask(image, scenes):
    """Pixels that differ clearly from the (plain) background colour."""
    background = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), axis=0)
    return np.abs(image.astype(int) - background).sum(axis=-1) > 60, background


@pytest.mark.parametrize("colour", G.COLOURS)
def test_a_rendered_object_has_its_colour(colour):
    images, scenes = _single("star", colour, n=4, seed=3)
    for image in images:
        mask, _ = _object_mask(image, scenes)
        assert mask.sum() > 40
        mean = image[mask].mean(axis=0)
        # Nearest reference colour of the drawn pixels is the label's colour.
        distances = np.linalg.norm(G.COLOUR_RGB - mean, axis=1)
        assert G.COLOURS[int(distances.argmin())] == colour, (colour, mean)


def _shape_signature(mask):
    """Fill ratio of the bounding box of a binary mask."""
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return mask.sum() / box


def test_a_red_star_is_red_and_a_star_not_a_square_or_circle():
    stars, _ = _single("star", "red", n=6, seed=1)
    squares, _ = _single("square", "red", n=6, seed=1)
    circles, _ = _single("circle", "red", n=6, seed=1)
    ratio = {name: np.mean([_shape_signature(_object_mask(img, None)[0]) for img in imgs])
             for name, imgs in (("star", stars), ("square", squares), ("circle", circles))}
    # A square fills (almost) its bounding box, a disc pi/4 of it, a five-pointed star much less.
    assert ratio["square"] > 0.85
    assert 0.7 < ratio["circle"] < 0.85
    assert ratio["star"] < 0.55
    # And the star is red: red channel high, green and blue low.
    for image in stars:
        mask, _ = _object_mask(image, None)
        r, g, b = image[mask].mean(axis=0)
        assert r > 150 and g < 90 and b < 90


def test_shapes_have_distinct_masks():
    masks = []
    for shape in G.SHAPES:
        images, _ = _single(shape, "blue", n=1, seed=2)
        masks.append(_object_mask(images[0], None)[0])
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            differing = (masks[i] != masks[j]).sum()
            assert differing > 25, (G.SHAPES[i], G.SHAPES[j], differing)


def test_fill_styles_cover_decreasing_area():
    areas = []
    for fill in range(3):
        images, _ = _single("square", "green", fill=fill, n=3, seed=4)
        areas.append(np.mean([_object_mask(img, None)[0].sum() for img in images]))
    solid, striped, outline = areas
    assert solid > striped > outline > 0


def test_sizes_and_positions_are_what_the_scene_says():
    rng = np.random.default_rng(0)
    scenes = G.sample_scenes(rng, 200)
    assert np.all((scenes.n_objects >= 1) & (scenes.n_objects <= 3))
    for s, (lo, hi) in enumerate(G.SIZE_RADIUS):
        r = scenes.radius[scenes.size == s]
        assert r.min() >= lo - 1e-6 and r.max() <= hi + 1e-6
    assert np.all(scenes.cx >= scenes.radius) and np.all(scenes.cx <= 48 - scenes.radius)
    # Object 0 is never a duplicate (same colour and shape) of another object in its scene.
    for k in range(1, 3):
        used = scenes.n_objects > k
        assert not np.any((scenes.shape[used, k] == scenes.shape[used, 0]) & (scenes.colour[used, k] == scenes.colour[used, 0]))


def test_captions_name_the_objects_they_describe():
    rng = np.random.default_rng(5)
    scenes = G.sample_scenes(rng, 300, n_objects=1)
    captions = G.caption_scenes(scenes, rng)
    assert len(set(captions)) > 200  # many templates and orders
    shape_words_ok = 0
    for i, caption in enumerate(captions):
        shape = G.SHAPES[scenes.shape[i, 0]]
        if any(word in caption for word in G.SHAPE_WORDS[shape]):
            shape_words_ok += 1
        for other in G.COLOURS:
            if other != G.COLOURS[scenes.colour[i, 0]]:
                assert f" {other} " not in f" {caption} ", (caption, G.COLOURS[scenes.colour[i, 0]])
    assert shape_words_ok == len(captions)
    mentions_colour = np.mean([G.COLOURS[scenes.colour[i, 0]] in c for i, c in enumerate(captions)])
    assert 0.8 < mentions_colour < 0.97  # sometimes left out


def test_pretraining_styles_never_include_downstream_ones():
    scenes = G.sample_scenes(np.random.default_rng(0), 500)
    assert np.all(scenes.style == 0)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="n must be >= 0"):
        G.sample_scenes(np.random.default_rng(0), -1)
    with pytest.raises(ValueError, match="48 px"):
        G.render_scenes(G.sample_scenes(np.random.default_rng(0), 2), image_size=64)
