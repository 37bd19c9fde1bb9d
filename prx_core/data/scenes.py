"""The embedded synthetic scene generator: captioned images of coloured shapes, infinite and
deterministic by index, at any height and width.

A scene is one group of 1-3 identical objects (same colour, shape and size) placed at one of nine
positions on a flat background. The vocabulary is small and the scenes are bold on purpose: a
model of a few million parameters trained for minutes on a CPU at 32-64 px must be able to learn
to follow the captions, and ``prx_core.evaluation.checker`` must be able to read the attributes
back from an image (see that module for how, and for the chance level of each attribute).

Held-out rule (what "eval" means): the colour x shape pairs with
``(COLORS.index(color) + SHAPES.index(shape)) % 3 == 0`` never appear in training. That holds out
6 of the 18 pairs, one shape per colour and two colours per shape, so every single attribute value
is seen in training and every evaluation caption is a new combination of seen words.
"""
from __future__ import annotations

import attrs
import numpy as np

from prx_core.errors import DataError

BACKGROUNDS = ("white", "gray", "black", "navy")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
COUNTS = (1, 2, 3)
SPLITS = ("train", "eval")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 230),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "navy": (30, 40, 110),
}
"""sRGB of every colour word. Object and background colours are disjoint, so an object never
has the colour of its background."""

POSITION_ANCHORS: dict[str, tuple[float, float]] = {
    name: ((0.25, 0.5, 0.75)[i % 3], (0.25, 0.5, 0.75)[i // 3]) for i, name in enumerate(POSITIONS)
}
"""Group centre of each position as (x, y) fractions of the canvas width and height."""

OBJECT_EXTENT: dict[int, dict[str, float]] = {
    1: {"small": 0.26, "large": 0.44},
    2: {"small": 0.14, "large": 0.22},
    3: {"small": 0.13, "large": 0.21},
}
"""Bounding-box side of one object as a fraction of the canvas's shorter side, by count and size.
Objects shrink with the count so that a group of three still fits in a corner (a group spans at
most about half the shorter side); "small" and "large" are therefore relative to the count."""

_GROUP_LAYOUT: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.0, 0.0),),
    2: ((-0.5, 0.0), (0.5, 0.0)),
    3: ((-0.5, 0.5), (0.5, 0.5), (0.0, -0.5)),
}
"""Object centres relative to the group centre, in units of the pitch: one extent plus a gap of a
quarter extent but at least ``_MIN_GAP`` px, so that neighbours (even squares) stay separate
after anti-aliasing at 32 px."""
_MIN_GAP = 2.0

_POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}  # fmt: skip
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_MIN_SIDE = 16
_SIZE_JITTER = 0.06  # relative, uniform
_POSITION_JITTER = 0.02  # fraction of the canvas side, uniform, for the group centre
_OBJECT_JITTER = 0.03  # fraction of the object extent, uniform, per object


@attrs.frozen
class Scene:
    """Everything needed to render a scene and to check an image against its caption."""

    background: str = attrs.field(validator=attrs.validators.in_(BACKGROUNDS))
    color: str = attrs.field(validator=attrs.validators.in_(COLORS))
    shape: str = attrs.field(validator=attrs.validators.in_(SHAPES))
    size: str = attrs.field(validator=attrs.validators.in_(SIZES))
    position: str = attrs.field(validator=attrs.validators.in_(POSITIONS))
    count: int = attrs.field(validator=attrs.validators.in_(COUNTS))

    def caption(self) -> str:
        """Natural English, e.g. "two small red circles at the top left on a gray background"."""
        noun = self.shape if self.count == 1 else self.shape + "s"
        return (
            f"{_COUNT_WORDS[self.count]} {self.size} {self.color} {noun} "
            f"{_POSITION_PHRASES[self.position]} on a {self.background} background"
        )


def is_eval_combination(scene: Scene) -> bool:
    """True when the scene's colour x shape pair is held out of training (module docstring)."""
    return _is_held_out(scene.color, scene.shape)


def _is_held_out(color: str, shape: str) -> bool:
    return (COLORS.index(color) + SHAPES.index(shape)) % 3 == 0


def scene_for_index(index: int, split: str = "train", seed: int = 0) -> Scene:
    """The scene number ``index`` of a split; the same (index, split, seed) always gives the same scene.

    Each attribute runs through its values in blocks: indices ``k*n .. k*n + n - 1`` (n values)
    hold every value once, in an order drawn from (seed, split, attribute, k). So any run of
    consecutive indices covers every value of every attribute evenly (within one for most, within
    three for colour and shape), which makes even small evaluation sets balanced. Colour and shape
    are drawn as one pair among the split's pairs (12 in "train", the 6 held-out ones in "eval").
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    split_id = SPLITS.index(split)
    color, shape = _balanced(_PAIRS[split], index, seed, split_id, 1)
    return Scene(
        background=_balanced(BACKGROUNDS, index, seed, split_id, 0),
        color=color,
        shape=shape,
        size=_balanced(SIZES, index, seed, split_id, 3),
        position=_balanced(POSITIONS, index, seed, split_id, 4),
        count=_balanced(COUNTS, index, seed, split_id, 5),
    )


_PAIRS = {
    split: tuple((c, s) for c in COLORS for s in SHAPES if _is_held_out(c, s) == (split == "eval")) for split in SPLITS
}


def _balanced(values: tuple, index: int, seed: int, split_id: int, attribute: int):
    """Value of one attribute at ``index``: position ``index % n`` of a per-block permutation."""
    n = len(values)
    block, offset = divmod(index, n)
    order = sorted(range(n), key=lambda j: _hash(seed, split_id, attribute, block, j))
    return values[order[offset]]


def _hash(*values: int) -> int:
    """splitmix64 folded over the values: a cheap, well-mixed, platform-independent integer hash."""
    mask = (1 << 64) - 1
    state = 0x243F6A8885A308D3
    for value in values:
        state = (state ^ (value & mask)) + 0x9E3779B97F4A7C15 & mask
        state = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & mask
        state ^= state >> 31
    return state


def render_scene(scene: Scene, height: int, width: int, index: int = 0, seed: int = 0) -> np.ndarray:
    """The scene as an (height, width, 3) uint8 sRGB image, anti-aliased.

    Positions are fractions of the canvas (so they follow its aspect ratio); object sizes are
    fractions of its shorter side. ``index`` and ``seed`` draw a small jitter of the group's place,
    of each object's place and of the size, so images of one caption differ.
    """
    if min(height, width) < _MIN_SIDE:
        raise DataError(
            f"The scene generator cannot draw a {height}x{width} image: both sides must be at least "
            f"{_MIN_SIDE} px for its shapes to stay recognisable. Raise [data] resolution (or the "
            "smallest aspect-ratio bucket) in the recipe."
        )
    rng = np.random.default_rng((seed, index, 0x5CE7E))
    side = min(height, width)
    extent = OBJECT_EXTENT[scene.count][scene.size] * side * (1 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER))
    layout = np.array(_GROUP_LAYOUT[scene.count]) * (extent + max(0.25 * extent, _MIN_GAP))
    if scene.count > 1 and rng.random() < 0.5:
        layout = layout[:, ::-1].copy()  # transpose the group: a pair side by side or stacked, 2-beside-1
    layout += rng.uniform(-_OBJECT_JITTER, _OBJECT_JITTER, size=layout.shape) * extent
    anchor_x, anchor_y = POSITION_ANCHORS[scene.position]
    jitter_x, jitter_y = rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, size=2) * side
    centers = layout + [anchor_x * width + jitter_x, anchor_y * height + jitter_y]
    half = extent / 2
    # Keep the whole group on the canvas.
    low, high = centers.min(axis=0) - half, centers.max(axis=0) + half
    centers += np.maximum(0, -low) - np.maximum(0, high - [width, height])

    coverage = np.zeros((height, width), dtype=np.float32)
    for cx, cy in centers:
        draw_object(coverage, scene.shape, cx, cy, half)
    background = np.array(PALETTE[scene.background], dtype=np.float32)
    color = np.array(PALETTE[scene.color], dtype=np.float32)
    image = background + coverage[..., None] * (color - background)
    return np.rint(image).astype(np.uint8)


def draw_object(coverage: np.ndarray, shape: str, cx: float, cy: float, half: float) -> None:
    """Max-composite one object's anti-aliased coverage into ``coverage`` (in place).

    ``(cx, cy)`` is the centre of the object's bounding box in pixels (the top-left pixel spans
    0..1) and ``half`` half its side; an upright triangle has its apex at ``cy - half``. Coverage
    is ``clip(0.5 - signed_distance, 0, 1)`` with the distance in pixels, evaluated only in the
    object's bounding box (plus one pixel), which keeps large canvases cheap. The checker draws its
    shape templates with this same function.
    """
    height, width = coverage.shape
    y0, y1 = max(0, int(cy - half) - 1), min(height, int(np.ceil(cy + half)) + 1)
    x0, x1 = max(0, int(cx - half) - 1), min(width, int(np.ceil(cx + half)) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    if shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - half
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - half
    else:  # triangle pointing up, filling the lower half of its bounding box more than the upper
        slant = (2 * np.abs(dx) - (dy + half)) / np.sqrt(5.0)
        distance = np.maximum(slant, dy - half)
    window = coverage[y0:y1, x0:x1]
    np.maximum(window, np.clip(0.5 - distance, 0.0, 1.0), out=window)
