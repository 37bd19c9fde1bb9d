"""Aspect-ratio buckets: image sizes of about constant token count, one per batch.

The rule (which gives the PRX counts, 13 buckets at 512 px and 27 at 1024 px for patch 32):
with ``n = resolution / patch`` tokens per side of the square, enumerate every width of ``w``
patches, give it the height of ``h = round(n² / w)`` patches (the height closest to keeping the
area), keep the pairs whose ratio ``w / h`` lies in [0.5, 2], and add each pair's transpose (the
rounding is not symmetric, so enumerating widths alone misses a few tall shapes: 11 instead of 13
at 512 px). ``tests/test_data_buckets.py`` checks the counts.
"""
from __future__ import annotations

import math

from prx_core.errors import RecipeError

MIN_RATIO, MAX_RATIO = 0.5, 2.0


def aspect_buckets(resolution: int, patch: int) -> tuple[tuple[int, int], ...]:
    """Bucket sizes as (width, height) in pixels, sorted by aspect ratio (tall to wide)."""
    side = _tokens_per_side(resolution, patch)
    area = side * side
    pairs = set()
    for w in range(1, 4 * side + 1):
        h = max(1, math.floor(area / w + 0.5))
        if MIN_RATIO <= w / h <= MAX_RATIO:
            pairs.add((w, h))
            pairs.add((h, w))
    return tuple((w * patch, h * patch) for w, h in sorted(pairs, key=lambda p: (p[0] / p[1], p[0])))


def square_bucket(resolution: int, patch: int) -> tuple[tuple[int, int], ...]:
    """The single bucket used when buckets are off: a ``resolution`` square."""
    _tokens_per_side(resolution, patch)
    return ((resolution, resolution),)


def nearest_bucket(buckets: tuple[tuple[int, int], ...], width: int, height: int) -> int:
    """Index of the bucket whose aspect ratio is closest to ``width / height`` (in log ratio, so
    that 2:1 and 1:2 are equally far from square); ties go to the first, the taller bucket."""
    target = math.log(width / height)
    distances = [abs(math.log(w / h) - target) for w, h in buckets]
    return distances.index(min(distances))


def _tokens_per_side(resolution: int, patch: int) -> int:
    if patch <= 0 or resolution <= 0 or resolution % patch:
        raise RecipeError(
            f"[data] resolution = {resolution} is not a positive multiple of the model's patch size "
            f"{patch}: set [data] resolution (or the phase's resolution in [multires]) to a multiple of {patch}."
        )
    return resolution // patch
