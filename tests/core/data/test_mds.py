"""MDS (MosaicML streaming) shards: the format against hand-built bytes, the writer byte by byte,
compression, remote shards through a local cache, and the loader's guarantees."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from prx_core.data.config import SourceConfig
from prx_core.data.decode import BadSample
from prx_core.data.loader import build_loader
from prx_core.data.mds_format import MDSWriter
from prx_core.data.writers import synthetic_records, write_folder
from prx_core.errors import DataError

from data_helpers import by_caption, data_config, sample_ids, take

COUNT = 48


@pytest.fixture(scope="module")
def records():
    return synthetic_records(COUNT)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, records):
    return write_folder(str(tmp_path_factory.mktemp("folder")), records)


def write_mds(directory, records, **options):
    writer = MDSWriter(str(directory), {"image": "jpeg", "caption": "str", "key": "str"}, **options)
    for r in records:
        writer.write({"image": r.image, "caption": r.caption, "key": r.key})
    writer.finish()
    return str(directory)


def _all(path_or_source, n=COUNT, **options):
    source = path_or_source if isinstance(path_or_source, SourceConfig) else SourceConfig(kind="mds", path=path_or_source)
    source.name = "s"
    loader = build_loader(data_config(source, buckets=False, **options), resolution=32, batch_size=n, patch=16, seed=0)
    (batch,) = take(loader, 1)
    return batch


def _folder_batch(folder):
    return _all(SourceConfig(kind="folder", path=folder))


def hand_built_shard(samples: list[dict]) -> tuple[bytes, dict]:
    """A shard written from the format's description, not from prx's writer: columns sorted by
    name (caption json, id int (fixed 8 bytes), image jpeg, latent "bf16" (an encoding prx does not
    know)), uint32 count, offsets, config JSON, then per sample the variable sizes and the data."""
    names = ["caption", "id", "image", "latent"]
    encodings = ["json", "int", "jpeg", "bf16"]
    sizes = [None, 8, None, None]
    config = {"version": 2, "format": "mds", "compression": None, "hashes": [], "size_limit": None,
              "column_names": names, "column_encodings": encodings, "column_sizes": sizes}  # fmt: skip
    config_data = json.dumps(config, sort_keys=True).encode()
    encoded = []
    for s in samples:
        caption = json.dumps({"caption": s["caption"], "other": 1}).encode()
        latent = b"\x01\x02" * 7
        head = struct.pack("<3I", len(caption), len(s["image"]), len(latent))
        encoded.append(head + caption + struct.pack("<q", s["id"]) + s["image"] + latent)
    start = 4 + 4 * (len(samples) + 1) + len(config_data)
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]) + start
    data = struct.pack("<I", len(samples)) + struct.pack(f"<{len(offsets)}I", *offsets) + config_data + b"".join(encoded)
    entry = {**config, "samples": len(samples), "zip_data": None,
             "raw_data": {"basename": "shard.00000.mds", "bytes": len(data), "hashes": {}}}  # fmt: skip
    return data, entry


def test_reads_a_hand_built_shard(tmp_path, records):
    data, entry = hand_built_shard([{"caption": r.caption, "id": 1000 + i, "image": r.image} for i, r in enumerate(records[:6])])
    (tmp_path / "shard.00000.mds").write_bytes(data)
    (tmp_path / "index.json").write_text(json.dumps({"version": 2, "shards": [entry]}))
    source = SourceConfig(kind="mds", path=str(tmp_path), id_column="id")
    batch = _all(source, n=6)
    assert sorted(batch.captions) == sorted(r.caption for r in records[:6])  # json dict -> caption_key
    assert sorted(batch.ids) == [f"s:{1000 + i}" for i in range(6)]


def test_writer_bytes_follow_the_format(tmp_path, records):
    """index.json and the shard, byte by byte, recomputed here from the format's description."""
    rows = records[:3]
    writer = MDSWriter(str(tmp_path), {"image": "jpeg", "caption": "str", "n": "int"}, hashes=["md5", "sha1"], size_limit=None)
    for i, r in enumerate(rows):
        writer.write({"image": r.image, "caption": r.caption, "n": i})
    writer.finish()
    index = json.loads((tmp_path / "index.json").read_text())
    assert list(index) == ["shards", "version"] and index["version"] == 2
    [entry] = index["shards"]
    raw = (tmp_path / "shard.00000.mds").read_bytes()
    config = {"column_encodings": ["str", "jpeg", "int"], "column_names": ["caption", "image", "n"],
              "column_sizes": [None, None, 8], "compression": None, "format": "mds", "hashes": ["md5", "sha1"],
              "size_limit": None, "version": 2}  # fmt: skip
    assert entry == {**config, "samples": 3, "zip_data": None, "raw_data": {
        "basename": "shard.00000.mds", "bytes": len(raw),
        "hashes": {"md5": hashlib.md5(raw).hexdigest(), "sha1": hashlib.sha1(raw).hexdigest()}}}  # fmt: skip
    config_data = json.dumps(config, sort_keys=True).encode()
    count, *offsets = struct.unpack_from("<5I", raw)  # count, then count + 1 offsets
    assert count == 3
    assert raw[20 : 20 + len(config_data)] == config_data and offsets[0] == 20 + len(config_data)
    for i, r in enumerate(rows):
        sample = raw[offsets[i] : offsets[i + 1]]
        caption_size, image_size = struct.unpack_from("<2I", sample)
        assert sample[8 : 8 + caption_size] == r.caption.encode()
        assert sample[8 + caption_size : 8 + caption_size + image_size] == r.image
        assert struct.unpack_from("<q", sample, 8 + caption_size + image_size) == (i,)
    assert offsets[-1] == len(raw)


def test_shards_split_at_the_size_limit(tmp_path, records):
    write_mds(tmp_path, records, size_limit=20_000)
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["shards"]) > 2 and sum(s["samples"] for s in index["shards"]) == COUNT
    assert all(s["raw_data"]["bytes"] <= 20_000 for s in index["shards"])
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".mds")) == [
        f"shard.{i:05d}.mds" for i in range(len(index["shards"]))
    ]


@pytest.mark.parametrize("compression", [None, "zstd", "zstd:7", "gz", "bz2", "br", "snappy"])
def test_every_compression_decodes_to_the_folders_pixels(tmp_path, records, folder, compression):
    if compression and compression.startswith(("zstd", "br", "snappy")):
        pytest.importorskip({"zstd": "zstandard", "br": "brotli", "snappy": "cramjam"}[compression.split(":")[0]])
    write_mds(tmp_path / "mds", records, compression=compression, hashes=["sha1", "xxh3_64"], size_limit=30_000)
    source = SourceConfig(kind="mds", path=str(tmp_path / "mds"), cache_dir=str(tmp_path / "cache"))
    captions, images = by_caption(_all(source))
    want_captions, want_images = by_caption(_folder_batch(folder))
    assert captions == want_captions and torch.equal(images, want_images)
    if compression:
        stored = [f for f in os.listdir(tmp_path / "mds") if f.endswith(".mds." + compression.split(":")[0])]
        assert sorted(os.listdir(tmp_path / "cache")) == sorted(f.rsplit(".", 1)[0] for f in stored)


def test_remote_shards_go_through_the_cache(tmp_path, records, folder):
    pytest.importorskip("fsspec")
    write_mds(tmp_path / "mds", records, compression="gz", hashes=["sha1"], size_limit=30_000)
    url = "file://" + str(tmp_path / "mds")
    with pytest.raises(DataError, match="is remote: set cache_dir"):
        _all(SourceConfig(kind="mds", path=url))
    batch = _all(SourceConfig(kind="mds", path=url, cache_dir=str(tmp_path / "cache")))
    assert by_caption(batch)[0] == by_caption(_folder_batch(folder))[0]
    assert len(os.listdir(tmp_path / "cache")) == len(json.loads((tmp_path / "mds" / "index.json").read_text())["shards"])


def test_corrupt_shard_costs_its_samples_with_the_reason(tmp_path, records):
    write_mds(tmp_path / "mds", records, compression="gz", hashes=["sha1"], size_limit=30_000)
    shard = tmp_path / "mds" / "shard.00000.mds.gz"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    in_first = json.loads((tmp_path / "mds" / "index.json").read_text())["shards"][0]["samples"]
    source = SourceConfig(kind="mds", path=str(tmp_path / "mds"), cache_dir=str(tmp_path / "cache"), name="s")
    loader = build_loader(data_config(source, buckets=False, max_bad_share=0.9), resolution=32, batch_size=4, patch=16, seed=0)
    good = COUNT - in_first
    take(loader, good // 4)
    stats = loader.stats()
    assert stats["bad/unreadable"] == stats["seen"] - 4 * (good // 4) > 0
    with pytest.raises(BadSample, match="sha1 is .* the index says .*corrupt"):
        loader.sources[0].read(0)
    assert not os.path.exists(tmp_path / "cache" / "shard.00000.mds")


def test_sub_directories_form_one_source(tmp_path, records):
    write_mds(tmp_path / "root" / "part-a", records[:20])
    write_mds(tmp_path / "root" / "part-b", records[20:])
    batch = _all(SourceConfig(kind="mds", path=str(tmp_path / "root")))
    assert sorted(batch.captions) == sorted(r.caption for r in records)
    assert {i.split("/")[0] for i in batch.ids} == {"s:part-a", "s:part-b"}


def test_pil_and_ndarray_image_columns(tmp_path, records):
    """Images stored decoded: the "pil" encoding (width, height, mode, raw) written by hand, and
    "ndarray:uint8" with its dtype/shape header."""
    pixels = [np.asarray(Image.open(io.BytesIO(r.image)).convert("RGB")) for r in records[:4]]
    writer = MDSWriter(str(tmp_path / "nd"), {"pixels": "bytes", "caption": "str"})
    for p, r in zip(pixels, records):
        shape = np.asarray(p.shape, np.uint8 if max(p.shape) < 256 else np.uint16)
        header = bytes([8, (3 << 2) | (0 if shape.dtype == np.uint8 else 1)]) + shape.tobytes()
        writer.write({"pixels": header + p.tobytes(), "caption": r.caption})
    writer.finish()
    index = json.loads((tmp_path / "nd" / "index.json").read_text())
    for entry in index["shards"]:
        entry["column_encodings"] = ["str", "ndarray"]  # the library's name for what was written
    (tmp_path / "nd" / "index.json").write_text(json.dumps(index))
    source = SourceConfig(kind="mds", path=str(tmp_path / "nd"), image_column="pixels")
    nd = _all(source, n=4)
    writer = MDSWriter(str(tmp_path / "pil"), {"image": "bytes", "caption": "str"})
    for p, r in zip(pixels, records):
        writer.write({"image": struct.pack("<3I", p.shape[1], p.shape[0], 3) + b"RGB" + p.tobytes(), "caption": r.caption})
    writer.finish()
    index = json.loads((tmp_path / "pil" / "index.json").read_text())
    for entry in index["shards"]:
        entry["column_encodings"] = ["str", "pil"]
    (tmp_path / "pil" / "index.json").write_text(json.dumps(index))
    pil = _all(str(tmp_path / "pil"), n=4)
    assert torch.equal(by_caption(nd)[1], by_caption(pil)[1])
    assert sorted(nd.captions) == sorted(r.caption for r in records[:4])


def test_missing_columns_and_indexes_are_data_errors(tmp_path, records):
    with pytest.raises(DataError, match="No MDS dataset"):
        _all(str(tmp_path))
    writer = MDSWriter(str(tmp_path / "a"), {"data": "bytes", "blob": "bytes", "caption": "str"})
    writer.write({"data": records[0].image, "blob": b"x", "caption": "c"})
    writer.finish()
    with pytest.raises(DataError, match=r"images \(its columns: blob \(bytes\), caption \(str\), data \(bytes\)\)"):
        _all(str(tmp_path / "a"))


@pytest.mark.parametrize("compressed", [False, True])
def test_ranks_partition_an_epoch(tmp_path, records, compressed):
    """Uncompressed: samples are dealt to ranks one by one; compressed: whole shards."""
    write_mds(tmp_path / "mds", records, compression="gz" if compressed else None, size_limit=20_000)
    seen = []
    for rank in range(2):
        source = SourceConfig(kind="mds", path=str(tmp_path / "mds"), name="s", cache_dir=str(tmp_path / "c"))
        loader = build_loader(data_config(source, buckets=False, workers=1), resolution=32, batch_size=1, patch=16, seed=1,
                              rank=rank, world_size=2)  # fmt: skip
        blocks = loader.sources[0].blocks
        assert (blocks is not None) == compressed
        from prx_core.data.order import epoch_order

        n = len(epoch_order(COUNT, blocks, name="s", seed=1, epoch=0, rank=rank, world_size=2, window=4))
        seen.extend(sample_ids(take(loader, n)))
        loader.close()
    assert len(seen) == COUNT and len(set(seen)) == COUNT


def test_exact_resume_with_mds(tmp_path, records, folder):
    write_mds(tmp_path / "mds", records, compression="gz", size_limit=15_000)
    sources = [
        SourceConfig(kind="mds", path=str(tmp_path / "mds"), weight=2.0, cache_dir=str(tmp_path / "cache")),
        SourceConfig(kind="folder", path=folder, name="f", weight=1.0),
    ]

    def make(workers):
        return build_loader(data_config(*sources, workers=workers), resolution=64, batch_size=4, patch=16, seed=2)

    expected = take(make(0), 20)
    first = make(2)
    it = iter(first)
    before = [next(it) for _ in range(8)]
    state = first.state_dict()
    first.close()
    resumed = make(0)
    resumed.load_state_dict(state)
    after = take(resumed, 12)
    assert sample_ids(before + after) == sample_ids(expected)
    assert all(torch.equal(a.images, b.images) for a, b in zip(before + after, expected))
