"""Automatic prompt-following checker for scene images, in the spirit of GenEval: reads an image
and says which of its caption's attributes (background, colour, position, count, shape, size) it
shows. It needs no network and runs on a CPU in one to two milliseconds per 64 px image.

How an image is read (robust to the blur and noise of a small model's samples):
1. Background: every pixel goes to its nearest palette colour in CIELAB; the most common colour is
   the background, provided it covers at least ``MIN_BACKGROUND_SHARE`` of the image (uniform
   noise never does, so noise is read as "nothing").
2. Object pixels: each pixel is unmixed against the measured background colour B: for each object
   colour c, ``alpha = (p - B).(c - B) / |c - B|^2``; a pixel belongs to the colour whose segment
   B -> c passes closest to it, if ``alpha >= 0.5`` (at least half object) and that distance is
   below ``MAX_UNMIX_RESIDUAL``. Anti-aliased and blurred edges are mixtures along that segment,
   so they are read as the right colour instead of as a third palette colour.
3. The objects are the 4-connected components, of at least ``MIN_OBJECT_AREA`` of the shorter
   side squared, of the object colour with the most pixels. If there are none, every attribute
   but the background is False.
4. Each object's shape is found by analysis through synthesis: from the component's soft alpha
   (its area and centroid, which blur preserves) each of the three shapes is drawn with the
   generator's own rasteriser at the size that gives that area, and the one with the smallest
   squared error wins. This stays right for 4 px objects, where pixel-counting descriptors
   (bounding-box fill, corner occupancy) cannot tell a circle from a square.
5. colour: the dominant colour is the caption's. count: the number of objects. position: the
   mean of the fitted objects' box centres falls in the caption's cell of a 3x3 grid whose borders lie
   halfway between the generator's anchors. shape: the majority of the objects' shapes. size: the
   median fitted side is nearer (in ratio) to the caption size's extent than to the other size's,
   using the extents for the number of objects found (1-3), so that a wrong count alone does not
   also fail the size.

Chance levels (``CHANCE``): a guess of one value uniformly among the vocabulary is right with
probability 1/6 for colour, 1/4 background, 1/9 position, 1/3 count, 1/3 shape, 1/2 size; their mean,
about 0.28, is the chance of the overall score. Uniform noise scores below chance (0 on every
attribute: no background is found); a flat image scores chance on the background (when its colour
is a background colour, on evenly spread prompts) and 0 on the rest.
"""
from __future__ import annotations

import collections

import attrs
import numpy as np
from PIL import Image

from prx_core.data.scenes import (
    BACKGROUNDS,
    COLORS,
    COUNTS,
    OBJECT_EXTENT,
    PALETTE,
    POSITION_ANCHORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    draw_object,
)

ATTRIBUTES = ("background", "color", "position", "count", "shape", "size")
CHANCE: dict[str, float] = {
    "background": 1 / len(BACKGROUNDS),
    "color": 1 / len(COLORS),
    "position": 1 / len(POSITIONS),
    "count": 1 / len(COUNTS),
    "shape": 1 / len(SHAPES),
    "size": 1 / len(SIZES),
}
CHANCE["overall"] = sum(CHANCE.values()) / len(ATTRIBUTES)

MIN_BACKGROUND_SHARE = 0.4
MAX_UNMIX_RESIDUAL = 0.15  # sRGB distance in [0, 1] units (about 38 / 255)
MIN_OBJECT_AREA = 0.004  # fraction of the shorter side squared (4 px at 32 px, 16 px at 64 px)
_FIT_MARGIN = 2  # pixels around a component that its shape fit looks at
_AREA_FACTOR = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box side squared
_MAX_ANALYSIS_SIDE = 128  # larger images are box-downscaled first; the reading is scale-free

_PALETTE_NAMES = tuple(PALETTE)
_OBJECT_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float32) / 255


@attrs.frozen
class CheckResult:
    """Which attributes of the caption the image shows."""

    background: bool
    color: bool
    position: bool
    count: bool
    shape: bool
    size: bool

    @property
    def score(self) -> float:
        """Fraction of the six attributes that are right."""
        return sum(attrs.astuple(self)) / len(ATTRIBUTES)


@attrs.frozen
class _Object:
    center: tuple[float, float]  # (x, y) of the fitted bounding box's centre, pixels (as the generator places)
    extent: float  # side of the fitted shape's bounding box, pixels
    shape: str  # the best-fitting shape


def check_image(image: np.ndarray, scene: Scene) -> CheckResult:
    """Score one (height, width, 3) uint8 image against the scene its caption describes."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"check_image expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    rgb = _downscaled(image).astype(np.float32) / 255
    height, width = rgb.shape[:2]
    nearest = _nearest_palette(rgb)
    counts = np.bincount(nearest.ravel(), minlength=len(_PALETTE_NAMES))
    background = int(counts.argmax())
    if counts[background] < MIN_BACKGROUND_SHARE * nearest.size:
        return CheckResult(False, False, False, False, False, False)
    background_ok = _PALETTE_NAMES[background] == scene.background
    background_rgb = np.median(rgb[nearest == background], axis=0)
    alpha, residual = _unmix(rgb, background_rgb, exclude=_PALETTE_NAMES[background])
    color, objects = _find_objects(alpha, residual, min_area=MIN_OBJECT_AREA * min(height, width) ** 2)
    if not objects:
        return CheckResult(background_ok, False, False, False, False, False)
    center_x = np.mean([o.center[0] for o in objects]) / width
    center_y = np.mean([o.center[1] for o in objects]) / height
    shape = collections.Counter(o.shape for o in objects).most_common(1)[0][0]
    return CheckResult(
        background=background_ok,
        color=color == scene.color,
        position=_position(center_x, center_y) == scene.position,
        count=len(objects) == scene.count,
        shape=shape == scene.shape,
        size=_size(objects, min(height, width)) == scene.size,
    )


def prompt_following_score(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, float]:
    """Mean of each attribute's check over the images, and "overall", the mean of all six."""
    if len(images) != len(scenes) or not images:
        raise ValueError(f"need as many scenes as images (at least one), got {len(images)} and {len(scenes)}")
    results = np.array([attrs.astuple(check_image(i, s)) for i, s in zip(images, scenes)], dtype=np.float64)
    scores = {"overall": float(results.mean())}
    scores.update({name: float(v) for name, v in zip(ATTRIBUTES, results.mean(axis=0))})
    return scores


def _downscaled(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    factor = max(height, width) / _MAX_ANALYSIS_SIDE
    if factor <= 1:
        return image
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX))


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65)."""
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array(
        [[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]], dtype=np.float32
    )
    xyz /= np.array([0.9505, 1.0, 1.089], dtype=np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_PALETTE_LAB = _lab(np.array([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float32) / 255)


def _nearest_palette(rgb: np.ndarray) -> np.ndarray:
    """Index into the palette of each pixel's nearest colour in CIELAB."""
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2, and |x|^2 does not change which p is nearest.
    distance = (_PALETTE_LAB**2).sum(axis=1) - 2 * _lab(rgb) @ _PALETTE_LAB.T
    return distance.argmin(axis=-1)


def _unmix(rgb: np.ndarray, background_rgb: np.ndarray, exclude: str) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and object colour: the object fraction ``alpha`` and the distance to the segment
    background -> colour (module docstring, step 2); an excluded colour is infinitely far."""
    direction = _OBJECT_RGB - background_rgb  # (colors, 3)
    offset = rgb - background_rgb  # (h, w, 3)
    length2 = np.maximum((direction**2).sum(axis=1), 1e-12)  # zero for the excluded colour
    projection = offset @ direction.T  # (h, w, colors)
    alpha = np.clip(projection / length2, 0.0, 1.0)
    # |offset - alpha d|^2 expanded, so that no (h, w, colors, 3) array is needed.
    residual2 = (offset**2).sum(axis=-1, keepdims=True) - 2 * alpha * projection + alpha**2 * length2
    residual = np.sqrt(np.maximum(residual2, 0.0))
    if exclude in COLORS:
        residual[..., COLORS.index(exclude)] = np.inf
    return alpha, residual


def _find_objects(alpha: np.ndarray, residual: np.ndarray, min_area: float) -> tuple[str, list[_Object]]:
    """The object colour with the most pixels and its components of at least ``min_area`` pixels."""
    candidate = np.where(alpha >= 0.5, residual, np.inf)
    best = candidate.argmin(axis=-1)
    found = np.take_along_axis(candidate, best[..., None], axis=-1)[..., 0] <= MAX_UNMIX_RESIDUAL
    labels = np.where(found, best, -1)
    color = int(np.bincount(labels[labels >= 0], minlength=len(COLORS)).argmax())
    components = _components(labels == color)
    soft = np.where(residual[..., color] <= MAX_UNMIX_RESIDUAL, alpha[..., color], 0.0)
    objects = []
    for component in np.unique(components[components >= 0]):
        ys, xs = np.nonzero(components == component)
        if len(ys) >= min_area:
            objects.append(_fit(soft, components, component, ys, xs))
    return COLORS[color], objects


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of ``mask`` (-1 outside it), by min-label propagation with
    pointer jumping: each pixel starts with its own flat index, repeatedly takes the smallest label
    among itself and its neighbours, then the label its label points to (a component's pixels all
    hold labels of pixels in the same component, so the jump is safe and halves the rounds)."""
    height, width = mask.shape
    outside = height * width
    labels = np.where(mask, np.arange(outside).reshape(height, width), outside)
    while True:
        smallest = labels.copy()
        np.minimum(smallest[1:], labels[:-1], out=smallest[1:])
        np.minimum(smallest[:-1], labels[1:], out=smallest[:-1])
        np.minimum(smallest[:, 1:], labels[:, :-1], out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], labels[:, 1:], out=smallest[:, :-1])
        smallest = np.where(mask, smallest, outside)
        flat = np.append(smallest.ravel(), outside)
        smallest = flat[smallest]
        if np.array_equal(smallest, labels):
            return np.where(mask, labels, -1)
        labels = smallest


def _fit(soft: np.ndarray, components: np.ndarray, component: int, ys: np.ndarray, xs: np.ndarray) -> _Object:
    """Fit each shape to one component by analysis through synthesis (module docstring, step 4)."""
    height, width = soft.shape
    top, left = max(0, ys.min() - _FIT_MARGIN), max(0, xs.min() - _FIT_MARGIN)
    bottom, right = min(height, ys.max() + _FIT_MARGIN + 1), min(width, xs.max() + _FIT_MARGIN + 1)
    window = components[top:bottom, left:right]
    observed = np.where((window == component) | (window < 0), soft[top:bottom, left:right], 0.0)
    area = observed.sum()
    grid_y, grid_x = np.mgrid[top:bottom, left:right] + 0.5
    center_x, center_y = (observed * grid_x).sum() / area, (observed * grid_y).sum() / area
    fits = []
    for shape in SHAPES:
        half = np.sqrt(area / _AREA_FACTOR[shape]) / 2
        box_center_y = center_y - (half / 3 if shape == "triangle" else 0.0)  # a triangle's centroid is low
        template = np.zeros_like(observed, dtype=np.float32)
        draw_object(template, shape, center_x - left, box_center_y - top, half)
        error = float(((template - observed) ** 2).sum())
        fits.append((error, _Object(center=(center_x, box_center_y), extent=2 * half, shape=shape)))
    return min(fits, key=lambda fit: fit[0])[1]


_ANCHORS = np.unique([a for anchor in POSITION_ANCHORS.values() for a in anchor])
_CELL_BORDERS = (_ANCHORS[1:] + _ANCHORS[:-1]) / 2  # halfway between the generator's anchors


def _position(x: float, y: float) -> str:
    """The 3x3 cell of a centre given as fractions of width and height."""
    column, row = np.searchsorted(_CELL_BORDERS, x), np.searchsorted(_CELL_BORDERS, y)
    return POSITIONS[3 * int(row) + int(column)]


def _size(objects: list[_Object], side: int) -> str:
    """The size word whose extent, for the number of objects found (clamped to 1-3), is nearer in ratio."""
    extents = OBJECT_EXTENT[min(max(len(objects), 1), max(COUNTS))]
    measured = np.median([o.extent for o in objects]) / side
    threshold = np.sqrt(extents["small"] * extents["large"])
    return "large" if measured > threshold else "small"
