"""Aspect-ratio buckets: image sizes of about constant token count, one per batch.

``[data] bucket_sizes`` picks the list:

- ``"prx"``: PRX's own lists where it publishes one, at 512 and 1024 px (Photoroom's PRX pipeline
  in diffusers, ``pipelines/prx/pipeline_prx.py``: ``ASPECT_RATIO_512_BIN``, 13 buckets from
  352x704 to 704x352 with 240-256 tokens, and ``ASPECT_RATIO_1024_BIN``, 704x1440 to 1440x704 with
  984-1024 tokens; no bucket has more tokens than the square). The 1024 px list names 24 shapes,
  three of them without their transpose (1088x960 but not 960x1088, ...); the transposes are
  added, 27 buckets. At other resolutions, the rule that gives the 512 px list exactly: with
  ``n = resolution / patch`` tokens per side, every width of ``w`` patches gets the tallest height
  ``h = floor(n² / w)`` that does not exceed the square's ``n²`` tokens, the pairs with ratio
  ``w / h`` in [0.5, 2] are kept, and each pair's transpose is added.
- ``"nearest_area"``: ``h = round(n² / w)``, the height closest to keeping the area (up to a few
  tokens more than the square: 264 at 512 px, 1040 at 1024 px), same ratios and transposes; 13
  buckets at 512 px and 27 at 1024 px for patch 32.
"""
from __future__ import annotations

import math

from prx_core.errors import RecipeError

MIN_RATIO, MAX_RATIO = 0.5, 2.0
BUCKET_SIZES = ("prx", "nearest_area")

# PRX's published lists as (height, width) in pixels, as Photoroom's pipeline gives them.
PRX_TABLES: dict[int, tuple[tuple[int, int], ...]] = {
    512: ((352, 704), (384, 672), (384, 640), (416, 608), (448, 576), (480, 544), (512, 512), (544, 480),
          (576, 448), (608, 416), (640, 384), (672, 384), (704, 352)),
    1024: ((704, 1440), (736, 1408), (736, 1376), (768, 1344), (768, 1312), (800, 1280), (832, 1248), (832, 1216),
           (896, 1152), (928, 1120), (992, 1056), (1024, 1024), (1056, 992), (1088, 960), (1120, 928), (1152, 896),
           (1184, 864), (1216, 832), (1248, 832), (1312, 768), (1344, 768), (1376, 736), (1408, 736), (1440, 704)),
}


def aspect_buckets(resolution: int, patch: int, sizes: str = "prx") -> tuple[tuple[int, int], ...]:
    """Bucket sizes as (width, height) in pixels, sorted by aspect ratio (tall to wide)."""
    side = _tokens_per_side(resolution, patch)
    table = PRX_TABLES.get(resolution) if sizes == "prx" else None
    if table is not None and all(h % patch == 0 and w % patch == 0 for h, w in table):
        pairs = {(w // patch, h // patch) for h, w in table} | {(h // patch, w // patch) for h, w in table}
    elif sizes in BUCKET_SIZES:
        area = side * side
        height = (lambda w: area // w) if sizes == "prx" else (lambda w: math.floor(area / w + 0.5))
        pairs = set()
        for w in range(1, 4 * side + 1):
            h = max(1, height(w))
            if MIN_RATIO <= w / h <= MAX_RATIO:
                pairs.add((w, h))
                pairs.add((h, w))
    else:
        raise ValueError(f"bucket_sizes = {sizes!r}: one of {BUCKET_SIZES}")
    return tuple((w * patch, h * patch) for w, h in sorted(pairs, key=lambda p: (p[0] / p[1], p[0])))


def buckets_for(data, resolution: int, patch: int) -> tuple[tuple[int, int], ...]:
    """The buckets ``[data]`` asks for at ``resolution``: aspect buckets or the one square."""
    return aspect_buckets(resolution, patch, data.bucket_sizes) if data.buckets else square_bucket(resolution, patch)


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
