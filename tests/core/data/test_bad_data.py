"""Bad data: every kind of unusable or unusual image, counted per reason, and the stop rule."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.decode import BadSample, decode_to_bucket
from prx_core.data.loader import build_loader
from prx_core.data.writers import Record, encode_image, synthetic_records, write_folder
from prx_core.errors import DataError

SQUARE = ((32, 32),)


def _fit(data: bytes, buckets=SQUARE, min_side=None) -> np.ndarray:
    return decode_to_bucket(data, buckets, min_side)[1]


def _reason(data: bytes, buckets=SQUARE, min_side=None) -> str:
    with pytest.raises(BadSample) as info:
        decode_to_bucket(data, buckets, min_side)
    return info.value.reason


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (PIL cannot write one): IHDR bit depth 16, colour type 2."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_greyscale_and_bilevel_become_rgb():
    out = _fit(encode_image(Image.new("L", (40, 40), 100), "PNG"))
    assert out.shape == (3, 32, 32) and (out == 100).all()
    out = _fit(encode_image(Image.new("1", (40, 40), 1), "PNG"))
    assert (out == 255).all()


def test_cmyk_jpeg_becomes_rgb():
    out = _fit(encode_image(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95))
    red, green, blue = (out[c].mean() for c in range(3))
    assert red > 200 and green < 50 and blue < 50


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 20, 40))  # left half opaque black, right half transparent
    out = _fit(encode_image(image, "PNG"))
    assert (out[:, :, :14] == 0).all() and (out[:, :, 18:] == 255).all()
    half = _fit(encode_image(Image.new("LA", (40, 40), (0, 128)), "PNG"))
    assert np.abs(half.astype(int) - 127).max() <= 1


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 40, 20))
    data = encode_image(image, "PNG", transparency=0)
    out = _fit(data)
    assert (out[:, :14] == 255).all()  # top: transparent -> white
    assert (out[0, 18:] == 255).all() and (out[1:, 18:] == 0).all()  # bottom: red


def test_sixteen_bit_images_are_scaled_to_eight():
    grey = Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16))  # 128 * 257
    assert grey.mode.startswith("I;16")
    assert (_fit(encode_image(grey, "PNG")) == 128).all()
    rgb = np.zeros((40, 40, 3), dtype=np.uint16)
    rgb[..., 0] = 65535
    rgb[..., 2] = 257 * 64
    out = _fit(_png_rgb16(rgb))
    assert (out[0] == 255).all() and (out[1] == 0).all() and (out[2] == 64).all()


def test_float_images_are_refused():
    data = encode_image(Image.fromarray(np.zeros((40, 40), dtype=np.float32)), "TIFF")
    assert _reason(data) == "unsupported_mode"


def test_empty_unreadable_and_truncated():
    assert _reason(b"") == "empty"
    assert _reason(b"not an image at all" * 10) == "unreadable"
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpeg, png = encode_image(pixels, "JPEG"), encode_image(pixels, "PNG")
    assert _reason(jpeg[: len(jpeg) // 2]) == "truncated"
    assert _reason(png[: len(png) // 2]) == "truncated"


def test_small_images_upscale_or_skip():
    def image(side):
        return encode_image(np.full((side, side, 3), 90, dtype=np.uint8), "PNG")

    buckets = ((64, 64),)
    assert _fit(image(32), buckets).shape == (3, 64, 64)  # exactly half the bucket side: upscaled
    assert _reason(image(31), buckets) == "too_small"
    assert _fit(image(20), buckets, min_side=0).shape == (3, 64, 64)  # min_side = 0: always upscale
    assert _reason(image(40), buckets, min_side=48) == "too_small"
    assert (_fit(image(48), buckets, min_side=48) == 90).all()


def _folder_with_bad_files(root) -> tuple[list[str], dict[str, int]]:
    good = synthetic_records(40)
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpeg = encode_image(pixels, "JPEG")
    bad = [
        Record("bad-empty", b"", "an empty file"),
        Record("bad-garbage", b"\x00garbage" * 50, "not an image"),
        Record("bad-truncated", jpeg[: len(jpeg) // 2], "half a jpeg"),
        Record("bad-nocaption", jpeg, None),
        Record("bad-tiny", encode_image(pixels[:8, :8], "PNG"), "too small", image_suffix=".png"),
        Record("bad-float", encode_image(Image.fromarray(pixels[..., 0].astype(np.float32)), "TIFF"), "float"),
    ]
    converted = [
        Record("ok-cmyk", encode_image(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"), "a cmyk jpeg"),
        Record("ok-grey", encode_image(Image.new("L", (64, 64), 7), "PNG"), "a grey png", image_suffix=".png"),
        Record("ok-alpha", encode_image(Image.new("RGBA", (64, 64), (9, 9, 9, 0)), "PNG"), "alpha", image_suffix=".png"),
        Record("ok-16bit", _png_rgb16(np.full((64, 64, 3), 1000, np.uint16)), "deep", image_suffix=".png"),
    ]
    write_folder(str(root), good + bad + converted)
    (root / "bad-json.json").write_text("{not json")
    (root / "bad-json.jpg").write_bytes(jpeg)
    expected = {"empty": 1, "unreadable": 1, "truncated": 1, "no_caption": 1, "too_small": 1,
                "unsupported_mode": 1, "bad_caption": 1}  # fmt: skip
    return [r.key for r in good + converted], expected


def test_reader_names_each_reason(tmp_path):
    _, expected = _folder_with_bad_files(tmp_path)
    data = DataConfig(resolution=32, sources=[SourceConfig(kind="folder", path=str(tmp_path), name="f")], buckets=False)
    loader = build_loader(data, resolution=32, batch_size=1, patch=16, seed=0)
    source = loader.sources[0]
    from prx_core.data.reader import Rejected, SampleReader

    reader = SampleReader(loader.sources, loader.buckets, None, 0)
    found = {}
    for index in range(len(source)):
        item = reader((0, index))
        if isinstance(item, Rejected):
            found[item.key] = item.reason
    assert found == {
        "bad-empty": "empty", "bad-garbage": "unreadable", "bad-truncated": "truncated",
        "bad-nocaption": "no_caption", "bad-tiny": "too_small", "bad-float": "unsupported_mode",
        "bad-json": "bad_caption",
    }  # fmt: skip
    assert sum(expected.values()) == len(found)


def test_loader_skips_and_counts_bad_samples_in_workers(tmp_path):
    good, expected = _folder_with_bad_files(tmp_path)
    source = SourceConfig(kind="folder", path=str(tmp_path), name="f")
    data = DataConfig(resolution=32, sources=[source], buckets=False, workers=2)
    loader = build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(2 * len(good) // 4)]  # two epochs of usable samples
    pending = loader.state_dict()["batcher"]["pending"]
    loader.close()
    ids = [i for b in batches for i in b.ids]
    assert sorted(ids[: len(good)]) == sorted(f"f:{k}" for k in good)
    stats = loader.stats()
    for reason, count in expected.items():
        assert count <= stats[f"bad/{reason}"] <= 2 * count
    assert stats["bad"] == sum(v for k, v in stats.items() if k.startswith("bad/"))
    assert stats["seen"] == stats["bad"] + len(ids) + len(pending)


def test_too_much_bad_data_stops_with_source_and_ids(tmp_path):
    records = synthetic_records(10) + [Record(f"bad-{i:02d}", b"", "empty") for i in range(5)]
    write_folder(str(tmp_path), records)
    source = SourceConfig(kind="folder", path=str(tmp_path), name="broken")
    data = DataConfig(resolution=32, sources=[source], buckets=False, max_bad_share=0.1, bad_window=20)
    loader = build_loader(data, resolution=32, batch_size=2, patch=16, seed=0)
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert "source 'broken'" in message and str(tmp_path) in message
    assert "broken:bad-0" in message and "empty" in message and "max_bad_share = 0.1" in message
    assert loader.stats()["bad/empty"] == 3  # stopped at the first sample over the limit: 3 > 0.1 * 20


def test_rare_bad_samples_never_stop_the_run(tmp_path):
    records = synthetic_records(30) + [Record("bad-00", b"", "empty")]
    write_folder(str(tmp_path), records)
    data = DataConfig(
        resolution=32, sources=[SourceConfig(kind="folder", path=str(tmp_path))], buckets=False, bad_window=10
    )
    it = iter(build_loader(data, resolution=32, batch_size=5, patch=16, seed=0))
    assert len([next(it) for _ in range(30)]) == 30  # five epochs, one bad sample in each


def test_pil_reads_what_we_wrote():
    """Guard for the helper above: PIL reads the hand-written 16-bit PNG as 8-bit RGB."""
    image = Image.open(io.BytesIO(_png_rgb16(np.full((4, 4, 3), 65535, np.uint16))))
    assert image.size == (4, 4) and image.mode in ("RGB", "I;16")


def test_a_parquet_row_with_empty_image_bytes_is_empty_not_missing(tmp_path):
    """Hugging Face datasets write images as {bytes, path} structs whose path only names the file the
    image came from: empty bytes are an empty image, not a file to look for."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prx_core.data.sources import image_value

    good = encode_image(np.full((40, 40, 3), 90, dtype=np.uint8), "PNG")
    images = [{"bytes": good, "path": "a.png"}, {"bytes": b"", "path": "b.png"}, {"bytes": None, "path": ""}]
    table = pa.table({"image": images, "caption": ["good", "empty bytes", "nothing at all"]})
    pq.write_table(table, tmp_path / "rows.parquet")
    assert image_value({"bytes": b"", "path": "b.png"}, str(tmp_path)) == b""
    source = SourceConfig(kind="parquet", path=str(tmp_path), image_column="image", caption_column="caption")
    loader = build_loader(DataConfig(resolution=32, sources=[source], buckets=False, max_bad_share=0.9),
                          resolution=32, batch_size=2, patch=16, seed=0)
    batch = next(iter(loader))
    stats = loader.stats()
    loader.close()
    assert batch.captions == ["good", "good"]
    assert stats["bad/empty"] >= 2 and "bad/missing" not in stats
