"""The world's scene generator: sampling scenes, rendering them, and describing them in words.

A scene is a small RGB image (48 x 48 by default) with one to three flat objects on a
background. Every object has a shape, a colour, a size, a fill style and a position; the
background has a kind. Rendering is vectorised with numpy over a whole batch of scenes (one
pass per object slot and per shape), so thousands of images are made per second on one core.

Everything is deterministic given a ``numpy.random.Generator``: the same seed gives the same
scenes, pixels and captions.

Two families of renderings exist:

* the *pretraining* renderings (``style="plain"``): the backgrounds ``plain``, ``noisy`` and
  ``textured`` that :func:`caption_scenes` describes, the distribution the tiny CLIP learns from;
* *downstream-only* styles (``STYLES`` other than ``"plain"``) that never occur in pretraining —
  a colour cast, fog, camouflage backgrounds, clutter, sketches. They are the gap between
  pretraining and downstream data that prompt tuning is meant to close.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 48
MAX_OBJECTS = 3

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
# Reference RGB of each colour; every rendered object jitters around it (see _object_rgb).
COLOUR_RGB = np.array(
    [
        [215, 35, 35],    # red
        [240, 135, 20],   # orange
        [235, 215, 30],   # yellow
        [40, 170, 50],    # green
        [30, 200, 210],   # cyan
        [35, 75, 215],    # blue
        [135, 45, 190],   # purple
        [245, 120, 190],  # pink
    ],
    dtype=np.float32,
)
SIZES = ("small", "medium", "large")
# Radius range (pixels, at 48 px) of each size; the radius is that of the shape's gauge
# (half the side of a square, the circumradius of a hexagon, ...).
SIZE_RADIUS = ((5.0, 7.0), (8.5, 11.0), (12.5, 15.0))
FILLS = ("solid", "striped", "outline")
BACKGROUNDS = ("plain", "noisy", "textured")
# 3 x 3 grid of positions: row words x column words.
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
STYLES = ("plain", "tinted", "foggy", "camouflage", "cluttered", "sketch", "warm")
# Colour casts (multiply, then add) of the two lighting styles: "warm" is the milder one.
# "warm" (world_source's light) is 3/4 of the v3 cast (1.08, 0.95, 0.72) + (14, 6, 0): chosen so
# that the shipped model's zero-shot colour x shape accuracy on world_source sits inside issue 5's
# band (>= 40 %, < 90 %), measured before any tuning: cast x1 gave 30.7 %, x3/4 58.8 %, x1/2 79.7 %
# (docs/WORLD.md, attempt 6).
CASTS = {"tinted": ((1.15, 0.9, 0.55), (25, 10, 0)), "warm": ((1.06, 0.962, 0.79), (10.5, 4.5, 0))}


@dataclass
class Scenes:
    """A batch of sampled scenes (all arrays have ``n`` rows; object slots beyond
    ``n_objects`` are unused).

    Attributes:
        n_objects: (n,) number of objects, 1..3.
        shape, colour, size, fill: (n, 3) indices into SHAPES, COLOURS, SIZES, FILLS.
        radius, cx, cy, angle: (n, 3) geometry in pixels / radians.
        rgb: (n, 3, 3) the jittered RGB of each object.
        background: (n,) index into BACKGROUNDS.
        style: (n,) index into STYLES (0 = the pretraining renderings).
        seed: (n,) per-scene seed used for pixel-level randomness (noise, textures).
    """

    n_objects: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    fill: np.ndarray
    radius: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    rgb: np.ndarray
    background: np.ndarray
    style: np.ndarray
    seed: np.ndarray

    def __len__(self) -> int:
        return int(self.n_objects.shape[0])

    def row(self, k: int = 0) -> np.ndarray:
        """Grid row (0 top, 1 middle, 2 bottom) of object slot ``k`` of every scene."""
        return np.clip((self.cy[:, k] / (IMAGE_SIZE / 3)).astype(int), 0, 2)

    def column(self, k: int = 0) -> np.ndarray:
        """Grid column (0 left, 1 centre, 2 right) of object slot ``k`` of every scene."""
        return np.clip((self.cx[:, k] / (IMAGE_SIZE / 3)).astype(int), 0, 2)


def _choice(rng: np.random.Generator, options: int, n: int, fixed=None, probs=None) -> np.ndarray:
    """``n`` draws from ``range(options)``; ``fixed`` (int or array) overrides the draw."""
    if fixed is not None:
        return np.broadcast_to(np.asarray(fixed, dtype=np.int64), (n,)).copy()
    return rng.choice(options, size=n, p=probs).astype(np.int64)


def sample_scenes(
    rng: np.random.Generator,
    n: int,
    *,
    n_objects=None,
    shape=None,
    colour=None,
    size=None,
    fill=None,
    background=None,
    style=None,
    cell=None,
    object_probs=(0.6, 0.25, 0.15),
) -> Scenes:
    """Sample ``n`` scenes. Keyword arguments fix attributes of the *first* object (the one a
    single-label dataset is about) or of the scene; ``None`` samples them.

    Args:
        rng: the random generator (the only source of randomness).
        n: number of scenes.
        n_objects: 1..3, or None to draw with ``object_probs``.
        shape, colour, size, fill: index (or array of n indices) for object 0.
        background: index into BACKGROUNDS; style: index into STYLES.
        cell: grid cell 0..8 (row * 3 + column) of object 0.
    """
    if n < 0:
        raise ValueError(f"sample_scenes: n must be >= 0, got {n}")
    k = MAX_OBJECTS
    count = _choice(rng, 3, n, None if n_objects is None else np.asarray(n_objects) - 1,
                    probs=np.asarray(object_probs) / np.sum(object_probs)) + 1
    shapes = rng.integers(0, len(SHAPES), size=(n, k))
    colours = rng.integers(0, len(COLOURS), size=(n, k))
    sizes = rng.integers(0, len(SIZES), size=(n, k))
    fills = rng.integers(0, len(FILLS), size=(n, k))
    if shape is not None:
        shapes[:, 0] = shape
    if colour is not None:
        colours[:, 0] = colour
    # Other objects of a scene differ from object 0 in colour or shape, so that a caption
    # naming object 0 is never ambiguous about which object it means.
    for j in range(1, k):
        same = (shapes[:, j] == shapes[:, 0]) & (colours[:, j] == colours[:, 0])
        colours[same, j] = (colours[same, j] + 1 + rng.integers(0, len(COLOURS) - 1, same.sum())) % len(COLOURS)
    if size is not None:
        sizes[:, 0] = size
    if fill is not None:
        fills[:, 0] = fill
    # Multi-object scenes use smaller objects so that they fit side by side.
    multi = count > 1
    sizes[multi] = np.minimum(sizes[multi], 1 + (count[multi, None] == 2))
    if size is not None:
        sizes[:, 0] = size
    lo = np.array([r[0] for r in SIZE_RADIUS], dtype=np.float32)[sizes]
    hi = np.array([r[1] for r in SIZE_RADIUS], dtype=np.float32)[sizes]
    radius = lo + (hi - lo) * rng.random((n, k), dtype=np.float32)

    # Distinct grid cells per scene (a random permutation of the 9 cells).
    cells = np.argsort(rng.random((n, 9)), axis=1)[:, :k]
    if cell is not None:
        wanted = np.broadcast_to(np.asarray(cell), (n,))
        # Swap the wanted cell into slot 0 wherever it already sits in another slot.
        for j in range(1, k):
            clash = cells[:, j] == wanted
            cells[clash, j] = cells[clash, 0]
        cells[:, 0] = wanted
    third = IMAGE_SIZE / 3.0
    cx = (cells % 3 + 0.5) * third + rng.uniform(-3, 3, (n, k))
    cy = (cells // 3 + 0.5) * third + rng.uniform(-3, 3, (n, k))
    # Keep every object inside the frame; a large single object is pulled towards its cell.
    margin = radius + 1.0
    cx = np.clip(cx, margin, IMAGE_SIZE - margin).astype(np.float32)
    cy = np.clip(cy, margin, IMAGE_SIZE - margin).astype(np.float32)
    angle = rng.uniform(-0.25, 0.25, (n, k)).astype(np.float32)
    rgb = _object_rgb(rng, colours)
    backgrounds = _choice(rng, len(BACKGROUNDS), n, background)
    styles = _choice(rng, len(STYLES), n, 0 if style is None else style)
    seeds = rng.integers(0, 2**31 - 1, size=n)
    return Scenes(count, shapes, colours, sizes, fills, radius, cx, cy, angle, rgb,
                  backgrounds, styles, seeds)


def _object_rgb(rng: np.random.Generator, colours: np.ndarray) -> np.ndarray:
    """Jittered RGB of each object: brightness x0.85..1.1 and +-12 per channel."""
    base = COLOUR_RGB[colours]
    scale = rng.uniform(0.85, 1.1, colours.shape + (1,)).astype(np.float32)
    jitter = rng.uniform(-12, 12, colours.shape + (3,)).astype(np.float32)
    return np.clip(base * scale + jitter, 0, 255)


# ----------------------------------------------------------------------------- shapes
# Each shape is a "gauge" d(u, v) on object-local coordinates (unit = the object's radius):
# d <= 1 inside, d = 1 on the boundary, growing roughly linearly outside. Unions are min,
# intersections max. A gauge gives antialiased edges and outlines from one function.

def _polygon_gauge(u: np.ndarray, v: np.ndarray, sides: int, rotation: float) -> np.ndarray:
    """Regular polygon with circumradius 1."""
    apothem = np.cos(np.pi / sides)
    d = None
    for i in range(sides):
        theta = rotation + (i + 0.5) * 2 * np.pi / sides
        proj = (u * np.cos(theta) + v * np.sin(theta)) / apothem
        d = proj if d is None else np.maximum(d, proj)
    return d


def _star_gauge(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star: radius along a ray goes linearly from the outer to the inner radius."""
    rho = np.sqrt(u * u + v * v) + 1e-6
    phi = np.arctan2(u, -v)  # 0 points up
    sector = 2 * np.pi / 5
    t = np.abs(((phi % sector) / sector) * 2 - 1)  # 1 at a tip, 0 between tips
    inner = 0.45
    limit = inner + (1 - inner) * t ** 1.6
    return rho / limit


def _heart_gauge(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Heart: two circles (the lobes) on top of a square turned 45 degrees (the point)."""
    lobe_r = 0.5
    left = np.sqrt((u + 0.42) ** 2 + (v + 0.3) ** 2) / lobe_r
    right = np.sqrt((u - 0.42) ** 2 + (v + 0.3) ** 2) / lobe_r
    # Diamond whose top corners touch the lobes' centres and whose bottom point is at v=0.95.
    point = (np.abs(u) + np.abs(v - 0.05)) / 0.9
    point = np.maximum(point, (-0.3 - v) / 0.3 + 1)  # cut off above the lobes' centres
    return np.minimum(np.minimum(left, right), point)


def shape_gauge(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Gauge of shape index ``shape`` at local coordinates (u right, v down)."""
    name = SHAPES[shape]
    if name == "circle":
        return np.sqrt(u * u + v * v)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) / 0.8
    if name == "triangle":
        return _polygon_gauge(u, v - 0.12, 3, np.pi / 2)
    if name == "star":
        return _star_gauge(u, v)
    if name == "cross":
        # Union of two bars; each bar's gauge grows at unit rate across its width too, so
        # outlines keep the same thickness on every edge.
        w = 0.33
        return np.minimum(np.maximum(np.abs(u), np.abs(v) + 1 - w), np.maximum(np.abs(u) + 1 - w, np.abs(v)))
    if name == "heart":
        return _heart_gauge(u, v)
    if name == "diamond":
        return np.abs(u) / 0.8 + np.abs(v)
    if name == "hexagon":
        return _polygon_gauge(u, v, 6, 0.0)
    raise ValueError(f"unknown shape index {shape}; expected 0..{len(SHAPES) - 1}")


# ----------------------------------------------------------------------------- rendering

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="xy")  # (x, y) each (H, W)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """(n, size, size) smooth noise in [0, 1] by bilinear upsampling of a coarse grid."""
    coarse = rng.random((n, cells + 1, cells + 1), dtype=np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.floor(pos).astype(int).clip(0, cells - 1)
    f = pos - i0
    rows = coarse[:, i0] * (1 - f)[None, :, None] + coarse[:, i0 + 1] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


def _backgrounds(scenes: Scenes, rng: np.random.Generator, size: int) -> np.ndarray:
    """(n, H, W, 3) float backgrounds: low-saturation so that they never look like an object
    colour (camouflage, a downstream-only style, breaks exactly that)."""
    n = len(scenes)
    x, y = _grid(size)
    grey = rng.uniform(20, 235, (n, 1, 1, 1)).astype(np.float32)
    tint = rng.uniform(-12, 12, (n, 1, 1, 3)).astype(np.float32)
    image = np.broadcast_to(grey + tint, (n, size, size, 3)).copy()
    kind = scenes.background
    noisy = kind == 1
    if noisy.any():
        sigma = rng.uniform(12, 30, (int(noisy.sum()), 1, 1, 1)).astype(np.float32)
        image[noisy] += sigma * rng.standard_normal((int(noisy.sum()), size, size, 3), dtype=np.float32)
    textured = np.flatnonzero(kind == 2)
    if textured.size:
        m = textured.size
        pattern_kind = rng.integers(0, 3, m)
        period = rng.uniform(4, 9, (m, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, (m, 1, 1)).astype(np.float32)
        theta = rng.uniform(0, np.pi, (m, 1, 1)).astype(np.float32)
        along = x[None] * np.cos(theta) + y[None] * np.sin(theta)
        stripes = np.sin(along * 2 * np.pi / period + phase)
        checker = np.sin(x[None] * 2 * np.pi / period + phase) * np.sin(y[None] * 2 * np.pi / period)
        blotches = _smooth_noise(rng, m, size, 4) * 2 - 1
        pattern = np.where((pattern_kind == 0)[:, None, None], stripes,
                           np.where((pattern_kind == 1)[:, None, None], np.sign(checker), blotches))
        contrast = rng.uniform(18, 40, (m, 1, 1)).astype(np.float32)
        image[textured] += (contrast * pattern)[..., None]
    return image


def _object_alpha(scenes: Scenes, k: int, size: int, x: np.ndarray, y: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """(n, H, W) coverage in [0, 1] of object slot ``k`` (zero where a scene has fewer objects)."""
    n = len(scenes)
    alpha = np.zeros((n, size, size), dtype=np.float32)
    active = scenes.n_objects > k
    sketch = scenes.style == STYLES.index("sketch")
    for s in range(len(SHAPES)):
        idx = np.flatnonzero(active & (scenes.shape[:, k] == s))
        if idx.size == 0:
            continue
        r = scenes.radius[idx, k][:, None, None]
        a = scenes.angle[idx, k][:, None, None]
        dx = (x[None] - scenes.cx[idx, k][:, None, None]) / r
        dy = (y[None] - scenes.cy[idx, k][:, None, None]) / r
        u = dx * np.cos(a) + dy * np.sin(a)
        v = -dx * np.sin(a) + dy * np.cos(a)
        d = shape_gauge(s, u, v)
        # Antialiased edge: about one pixel wide whatever the radius.
        solid = np.clip((1 - d) * r + 0.5, 0, 1)
        fill = scenes.fill[idx, k]
        thickness = np.where(sketch[idx], 1.0, 2.2)[:, None, None]
        inner = np.clip((1 - d) * r - thickness + 0.5, 0, 1)
        outline = solid - inner
        period = 4.0
        stripe_phase = (u * np.cos(0.7) + v * np.sin(0.7)) * r * 2 * np.pi / period
        stripes = (np.sin(stripe_phase) > 0).astype(np.float32)
        striped = np.maximum(outline, solid * stripes)
        cover = np.where((fill == 0)[:, None, None], solid,
                         np.where((fill == 1)[:, None, None], striped, outline))
        cover = np.where(sketch[idx][:, None, None], outline, cover)
        alpha[idx] = cover
    return alpha


def render_scenes(scenes: Scenes, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Render scenes to a (n, H, W, 3) uint8 array. Deterministic given the scenes (pixel noise
    comes from each scene's own ``seed``)."""
    n = len(scenes)
    if image_size != IMAGE_SIZE:
        raise ValueError(f"render_scenes: only {IMAGE_SIZE} px scenes are supported, got {image_size}")
    if n == 0:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    # One generator for the batch's pixel noise, derived from the scenes' own seeds.
    rng = np.random.default_rng(np.asarray(scenes.seed, dtype=np.uint64))
    x, y = _grid(image_size)
    image = _backgrounds(scenes, rng, image_size)
    style = scenes.style
    camo = style == STYLES.index("camouflage")
    if camo.any():
        m = int(camo.sum())
        blobs = np.stack([_smooth_noise(rng, m, image_size, 5) for _ in range(3)], axis=-1)
        image[camo] = 40 + 190 * blobs
    sketch = style == STYLES.index("sketch")
    if sketch.any():
        paper = rng.uniform(225, 250, (int(sketch.sum()), 1, 1, 1)).astype(np.float32)
        grain = 6 * rng.standard_normal((int(sketch.sum()), image_size, image_size, 1), dtype=np.float32)
        image[sketch] = paper + grain
    clutter = np.flatnonzero(style == STYLES.index("cluttered"))
    if clutter.size:
        image[clutter] = _draw_clutter(image[clutter], rng, x, y)
    # Draw objects back to front: slot 0 (the labelled object) last, on top.
    for k in reversed(range(MAX_OBJECTS)):
        alpha = _object_alpha(scenes, k, image_size, x, y, rng)[..., None]
        colour = scenes.rgb[:, k][:, None, None, :]
        image = image * (1 - alpha) + colour * alpha
    for cast_style, (scale, offset) in CASTS.items():
        # Warm colour casts, like photos under tungsten light ("tinted" strong, "warm" milder).
        lit = style == STYLES.index(cast_style)
        if lit.any():
            image[lit] = image[lit] * np.array(scale, dtype=np.float32) + np.array(offset, dtype=np.float32)
    foggy = style == STYLES.index("foggy")
    if foggy.any():
        m = int(foggy.sum())
        density = rng.uniform(0.45, 0.6, (m, 1, 1, 1)).astype(np.float32)
        image[foggy] = image[foggy] * (1 - density) + 200 * density
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _draw_clutter(image: np.ndarray, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Scatter 6-10 tiny greyish line fragments and dots over the background (distractors)."""
    m = image.shape[0]
    for _ in range(8):
        present = rng.random(m) < 0.85
        cx = rng.uniform(0, IMAGE_SIZE, (m, 1, 1))
        cy = rng.uniform(0, IMAGE_SIZE, (m, 1, 1))
        r = rng.uniform(1.5, 3.5, (m, 1, 1))
        shade = rng.uniform(30, 220, (m, 1, 1, 1)).astype(np.float32)
        tint = rng.uniform(-40, 40, (m, 1, 1, 3)).astype(np.float32)
        d = np.sqrt((x[None] - cx) ** 2 + (y[None] - cy) ** 2) / r
        alpha = (np.clip((1 - d) * r + 0.5, 0, 1) * present[:, None, None])[..., None].astype(np.float32)
        image = image * (1 - alpha) + (shade + tint) * alpha
    return image


# ----------------------------------------------------------------------------- captions

# Words per attribute value. The first word is the common one; others are rarer synonyms.
SHAPE_WORDS = {
    "circle": ("circle", "circle", "disc", "round shape"),
    "square": ("square", "square", "box"),
    "triangle": ("triangle",),
    "star": ("star", "star", "five pointed star"),
    "cross": ("cross", "cross", "plus sign"),
    "heart": ("heart",),
    "diamond": ("diamond", "diamond", "rhombus"),
    "hexagon": ("hexagon",),
}
COUNT_WORDS = ("one", "two", "three")
FILL_WORDS = {
    "solid": ("solid", "filled", "solid"),
    "striped": ("striped",),
    "outline": ("outlined", "hollow", "outline of a"),
}
BACKGROUND_WORDS = {
    "plain": ("plain", "flat", "plain"),
    "noisy": ("noisy", "grainy"),
    "textured": ("textured", "patterned"),
}
POSITION_PHRASES = {
    # (row, column) -> phrases; the centre cell is simply "in the middle".
    (0, 0): ("in the top left", "at the top left"),
    (0, 1): ("at the top", "in the top middle"),
    (0, 2): ("in the top right", "at the top right"),
    (1, 0): ("on the left", "at the left"),
    (1, 1): ("in the middle", "in the centre"),
    (1, 2): ("on the right", "at the right"),
    (2, 0): ("in the bottom left", "at the bottom left"),
    (2, 1): ("at the bottom", "in the bottom middle"),
    (2, 2): ("in the bottom right", "at the bottom right"),
}

# "a photo of ..." is rare in the world's captions (they describe drawings), unlike on the web:
# the usual zero-shot template "a photo of a {}." is therefore slightly off-distribution here,
# one of the wording gaps prompt tuning can close.
PHOTO_TEMPLATE_PROB = 0.03
# Probability that a caption mentions each attribute of an object.
MENTION_PROB = {"colour": 0.9, "shape": 0.97, "size": 0.35, "fill": 0.35, "position": 0.2,
                "background": 0.25, "count": 0.5}


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def describe_object(scenes: Scenes, i: int, k: int, rng: np.random.Generator,
                    force_colour: bool = False) -> str:
    """Noun phrase (without article) for object ``k`` of scene ``i``, attributes sometimes left
    out and in varied order."""
    shape = SHAPES[scenes.shape[i, k]]
    noun = _pick(rng, SHAPE_WORDS[shape])
    colour = COLOURS[scenes.colour[i, k]]
    adjectives = []
    if rng.random() < MENTION_PROB["size"]:
        adjectives.append(SIZES[scenes.size[i, k]] if rng.random() < 0.8 else
                          ("tiny", "mid-sized", "big")[scenes.size[i, k]])
    mention_colour = force_colour or rng.random() < MENTION_PROB["colour"]
    fill = FILLS[scenes.fill[i, k]]
    mention_fill = rng.random() < MENTION_PROB["fill"]
    fill_word = _pick(rng, FILL_WORDS[fill]) if mention_fill else ""
    if mention_fill and fill_word != "outline of a":
        adjectives.append(fill_word)
    if mention_colour:
        if rng.random() < 0.85:
            adjectives.append(colour)
            phrase = " ".join(adjectives + [noun])
        else:
            phrase = " ".join(adjectives + [noun]) + " in " + colour
    else:
        phrase = " ".join(adjectives + [noun])
    if fill_word == "outline of a":
        phrase = "outline of " + _article(phrase)
    return phrase


def caption_scenes(scenes: Scenes, rng: np.random.Generator) -> list[str]:
    """One caption per scene, from many templates with attributes in varied order and wording,
    some left out. The first object is always described; others usually are too."""
    captions = []
    for i in range(len(scenes)):
        count = int(scenes.n_objects[i])
        order = list(range(count))
        if count > 1 and rng.random() < 0.5:
            rng.shuffle(order)
        phrases = []
        for k in order:
            phrase = _article(describe_object(scenes, i, k, rng, force_colour=count > 1 and rng.random() < 0.5))
            if rng.random() < MENTION_PROB["position"]:
                phrase += " " + _pick(rng, POSITION_PHRASES[(int(scenes.row(k)[i]), int(scenes.column(k)[i]))])
            phrases.append(phrase)
        if count == 1:
            body = phrases[0]
        elif count == 2:
            body = _pick(rng, (f"{phrases[0]} and {phrases[1]}", f"{phrases[0]} next to {phrases[1]}",
                               f"{phrases[0]} with {phrases[1]}"))
        else:
            body = f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
        background = BACKGROUNDS[scenes.background[i]]
        bg = ""
        if rng.random() < MENTION_PROB["background"]:
            bg = _pick(rng, (" on a {} background", " against a {} background", " over a {} backdrop")).format(
                _pick(rng, BACKGROUND_WORDS[background]))
        template = int(rng.integers(6))
        if rng.random() < PHOTO_TEMPLATE_PROB:
            text = "a photo of " + body + bg
        elif count > 1 and rng.random() < MENTION_PROB["count"]:
            lead = _pick(rng, (f"{COUNT_WORDS[count - 1]} shapes: ", f"{COUNT_WORDS[count - 1]} objects, ",
                               f"a picture of {COUNT_WORDS[count - 1]} shapes: "))
            text = lead + body + bg
        elif template == 0:
            text = body + bg
        elif template == 1:
            text = "there is " + body + bg
        elif template == 2:
            text = "a drawing of " + body + bg
        elif template == 3:
            text = "an image showing " + body + bg
        elif template == 4:
            text = (bg.strip() + ", " + body) if bg else "just " + body
        else:
            text = body + bg + " in the picture"
        captions.append(text.strip() + ".")
    return captions


def generate(rng: np.random.Generator, n: int, **constraints) -> tuple[np.ndarray, list[str], Scenes]:
    """Sample, render and caption ``n`` pretraining scenes: (images uint8 NHWC, captions, scenes)."""
    scenes = sample_scenes(rng, n, **constraints)
    return render_scenes(scenes), caption_scenes(scenes, rng), scenes
