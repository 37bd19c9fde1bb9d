"""Aspect-ratio buckets and fitting an image into its bucket."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from prx_core.data.buckets import PRX_TABLES, aspect_buckets, buckets_for, nearest_bucket, square_bucket
from prx_core.data.config import DataConfig
from prx_core.data.decode import decode_to_bucket
from prx_core.data.writers import encode_image
from prx_core.errors import RecipeError


@pytest.mark.parametrize(("sizes", "resolution", "count"),
                         [("prx", 512, 13), ("prx", 1024, 27), ("nearest_area", 512, 13), ("nearest_area", 1024, 27)])
def test_bucket_counts(sizes, resolution, count):
    buckets = aspect_buckets(resolution, 32, sizes)
    assert len(buckets) == count
    assert (resolution, resolution) in buckets


def test_prx_buckets_are_prx_s_lists_and_none_has_more_tokens_than_the_square():
    for resolution, fewest in ((512, 240), (1024, 984)):
        buckets = set(aspect_buckets(resolution, 32, "prx"))
        table = {(w, h) for h, w in PRX_TABLES[resolution]}
        assert buckets == table | {(h, w) for w, h in table}  # the table closed under transposition
        assert {w * h // 32**2 for w, h in buckets} <= set(range(fewest, (resolution // 32) ** 2 + 1))
    assert len(PRX_TABLES[512]) == 13 and len(PRX_TABLES[1024]) == 24
    assert aspect_buckets(512, 32, "prx")[0] == (352, 704) and aspect_buckets(512, 32, "prx")[-1] == (704, 352)
    assert aspect_buckets(1024, 32, "prx")[0] == (704, 1440)


@pytest.mark.parametrize("resolution", [256, 768, 2048])
def test_the_prx_rule_elsewhere_keeps_every_bucket_within_the_square_s_tokens(resolution):
    patch = 32
    buckets = set(aspect_buckets(resolution, patch, "prx"))
    area = (resolution // patch) ** 2
    for w, h in buckets:
        assert w * h / patch**2 <= area and 0.5 <= w / h <= 2.0 and (h, w) in buckets
    for w in range(1, 4 * resolution // patch):  # each width's tallest height within the square's tokens
        h = area // w
        if 0.5 <= w / h <= 2.0:
            assert (w * patch, h * patch) in buckets


def test_the_prx_rule_gives_prx_s_512_list_exactly():
    # 256 px at patch 16 has the 512 px grid (16 tokens a side) and no table: the rule alone
    assert {(2 * w, 2 * h) for w, h in aspect_buckets(256, 16, "prx")} == {(w, h) for h, w in PRX_TABLES[512]}


@pytest.mark.parametrize("resolution", [256, 512, 1024, 2048])
def test_nearest_area_buckets_follow_their_rule(resolution):
    patch = 32
    buckets = aspect_buckets(resolution, patch, "nearest_area")
    area = (resolution // patch) ** 2
    assert len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert w % patch == 0 and h % patch == 0
        assert 0.5 <= w / h <= 2.0
        assert (h, w) in buckets  # closed under transpose
        # Each side is the nearest patch multiple to keeping the area, so tokens stay close to n².
        assert abs(w * h / patch**2 - area) <= max(w, h) / patch / 2 + 1e-9
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios)


def test_nearest_area_buckets_match_explicit_enumeration_at_512():
    expected = {(12, 21), (12, 22), (13, 19), (13, 20), (14, 18), (15, 17), (16, 16)}
    expected |= {(h, w) for w, h in expected}
    assert set(aspect_buckets(512, 32, "nearest_area")) == {(32 * w, 32 * h) for w, h in expected}


def test_the_data_table_chooses_the_list():
    assert buckets_for(DataConfig(), 512, 32) == aspect_buckets(512, 32, "prx")
    assert buckets_for(DataConfig(bucket_sizes="nearest_area"), 1024, 32) == aspect_buckets(1024, 32, "nearest_area")
    assert buckets_for(DataConfig(buckets=False), 512, 32) == ((512, 512),)


def test_resolution_must_be_a_patch_multiple():
    with pytest.raises(RecipeError, match="multiple of the model's patch size 32"):
        aspect_buckets(500, 32)
    assert square_bucket(512, 32) == ((512, 512),)


def test_nearest_bucket_by_log_ratio():
    buckets = aspect_buckets(512, 32)
    assert buckets[nearest_bucket(buckets, 1000, 1000)] == (512, 512)
    assert buckets[nearest_bucket(buckets, 4000, 1000)] == max(buckets, key=lambda b: b[0] / b[1])
    assert buckets[nearest_bucket(buckets, 1000, 4000)] == min(buckets, key=lambda b: b[0] / b[1])
    w, h = buckets[nearest_bucket(buckets, 1600, 900)]
    best = min(abs(math.log(bw / bh) - math.log(16 / 9)) for bw, bh in buckets)
    assert abs(math.log(w / h) - math.log(16 / 9)) == best


def test_fit_resizes_and_centre_crops_into_the_bucket():
    # A 200x100 image with a red left quarter, a blue right quarter: a square crop keeps neither.
    pixels = np.full((100, 200, 3), 128, dtype=np.uint8)
    pixels[:, :50] = (255, 0, 0)
    pixels[:, 150:] = (0, 0, 255)
    bucket, out = decode_to_bucket(encode_image(pixels, "PNG"), ((64, 64),), None)
    assert bucket == 0 and out.shape == (3, 64, 64) and out.dtype == np.uint8
    deviation = np.abs(out.astype(int) - 128)
    assert deviation[:, :, 2:-2].max() <= 2  # the filter's support reaches just past the crop box
    assert deviation.max() <= 8


def test_large_jpeg_is_decoded_reduced(monkeypatch):
    requested = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        requested.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode_image(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8), "JPEG")
    _, out = decode_to_bucket(data, aspect_buckets(256, 32), None)
    assert out.shape == (3, 256, 256)
    assert requested == [((256, 256), (256, 256))]  # decoded at 1/4 scale, never at 1024 px


def test_exif_rotation_is_applied_before_bucketing():
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)  # stored wide ...
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # ... shown rotated by 90 degrees: tall
    data = encode_image(image, "JPEG", exif=exif.tobytes())
    buckets = ((128, 64), (64, 128))
    bucket, out = decode_to_bucket(data, buckets, None)
    assert buckets[bucket] == (64, 128) and out.shape == (3, 128, 64)


@pytest.mark.parametrize(("size", "bucket"), [((1024, 768), (576, 448)), ((700, 1100), (384, 640)), ((90, 60), (112, 80))])
def test_crop_resize_is_pils_bicubic_of_the_whole_pixel_crop(size, bucket):
    """The torch resize against PIL's bicubic ``resize(box=...)`` (the previous path) of the
    centre crop rounded to whole pixels, on a noisy image, downscaling and upscaling: the same
    filter (mean difference under 0.1 of 255), in the bucket's shape."""
    from PIL import Image

    from prx_core.data.decode import _crop_size, crop_resize

    rng = np.random.default_rng(0)
    width, height = size
    ramp = np.add.outer(np.linspace(0, 200, height), np.linspace(0, 50, width))[..., None]
    pixels = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    out = crop_resize(image, *bucket)
    assert out.shape == (3, bucket[1], bucket[0]) and out.dtype == np.uint8 and out.flags.c_contiguous
    crop_w, crop_h = (round(v) for v in _crop_size(width, height, bucket[0] / bucket[1]))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    reference = np.asarray(image.resize(bucket, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h)))
    difference = np.abs(out.transpose(1, 2, 0).astype(float) - reference)
    assert difference.mean() < 0.1 and difference.max() <= 8
