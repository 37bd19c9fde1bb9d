"""``prx data convert``: chains of conversions read back with each format's own reader (pyarrow,
tarfile, the MDS reader plus the index bytes) and through the loader, skipped samples by reason."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch

from prx_core.data import mds_format
from prx_core.data.config import SourceConfig
from prx_core.data.convert import parse_size
from prx_core.data.mds import MDSSource
from prx_core.data.writers import Record, synthetic_records, write_folder
from prx_core.errors import DataError

from data_helpers import one_batch, run_data_command

GOOD = 30


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """30 good samples (JPEG and PNG), one empty image file, one image without a caption."""
    root = tmp_path_factory.mktemp("src")
    records = synthetic_records(GOOD) + [Record("broken", b"", "an empty file"),
                                         Record("mute", synthetic_records(1)[0].image, None)]  # fmt: skip
    write_folder(str(root / "folder"), records)
    return root / "folder", records[:GOOD]


def test_folder_to_parquet_to_wds_to_mds_keeps_every_image_and_caption(folder, tmp_path, capsys):
    source, records = folder
    assert run_data_command(["data", "convert", str(source), "--to", "parquet", str(tmp_path / "pq")]) == 0
    text = capsys.readouterr().out
    assert f"wrote {GOOD} samples into 1 files" in text and "skipped 2" in text
    assert "skipped 1 empty (e.g. broken: zero bytes)" in text and "skipped 1 no_caption (e.g. mute:" in text
    assert f"-> parquet: {GOOD + 2} of {GOOD + 2} samples" in text  # plain progress lines (not a terminal)

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq" / "part-00000.parquet")
    assert table.column_names == ["image", "caption", "key"]
    by_key = {r.key: r for r in records}
    for image, caption, key in zip(*(table.column(c).to_pylist() for c in ("image", "caption", "key"))):
        assert image == by_key[key].image and caption == by_key[key].caption  # byte for byte

    assert run_data_command(["data", "convert", str(tmp_path / "pq"), "--to", "wds", str(tmp_path / "wds")]) == 0
    with tarfile.open(tmp_path / "wds" / "shard-00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    stems = {name.rsplit(".", 1)[0] for name in members}
    assert len(stems) == GOOD and all(stem.startswith("part-00000/") for stem in stems)
    images = sorted(v for k, v in members.items() if not k.endswith(".txt"))
    assert images == sorted(r.image for r in records)
    assert sorted(v.decode() for k, v in members.items() if k.endswith(".txt")) == sorted(r.caption for r in records)

    assert run_data_command(["data", "convert", str(tmp_path / "wds"), "--to", "mds", str(tmp_path / "mds"),
                "--compression", "gz", "--shard-size", "8kB"]) == 0  # fmt: skip
    index = json.loads((tmp_path / "mds" / "index.json").read_text())
    assert len(index["shards"]) > 1 and sum(s["samples"] for s in index["shards"]) == GOOD
    for shard in index["shards"]:
        assert shard["column_names"] == ["caption", "image", "key"]
        assert shard["column_encodings"] == ["str", "bytes", "str"] and shard["compression"] == "gz"
        stored = (tmp_path / "mds" / shard["zip_data"]["basename"]).read_bytes()
        raw = mds_format.decompress("gz", stored)
        assert len(stored) == shard["zip_data"]["bytes"] and len(raw) == shard["raw_data"]["bytes"]
        assert int.from_bytes(raw[:4], "little") == shard["samples"]
    mds = MDSSource(SourceConfig(kind="mds", path=str(tmp_path / "mds"), cache_dir=str(tmp_path / "cache")))
    read_back = [mds.read(i) for i in range(len(mds))]
    assert sorted(s.image for s in read_back) == sorted(r.image for r in records)
    assert sorted(s.caption for s in read_back) == sorted(r.caption for r in records)

    want_captions, want_images = one_batch(SourceConfig(kind="folder", path=str(source), name="s"), GOOD)
    for kind, path, options in (("parquet", tmp_path / "pq", {}), ("webdataset", tmp_path / "wds", {}),
                                ("mds", tmp_path / "mds", {"cache_dir": str(tmp_path / "cache2")})):  # fmt: skip
        captions, images = one_batch(SourceConfig(kind=kind, path=str(path), name="s", **options), GOOD)
        assert captions == want_captions and torch.equal(images, want_images)


def test_hf_sources_convert_and_read_back(folder, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    _, records = folder
    rows = {"image": [{"bytes": r.image, "path": None} for r in records], "text": [r.caption for r in records]}
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "hf"), num_shards=2)
    assert run_data_command(["data", "convert", str(tmp_path / "hf"), "--to", "mds", str(tmp_path / "mds"),
                "--image-encoding", "png"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    jpegs = sum(r.image_suffix == ".jpg" for r in records)
    assert f"wrote {GOOD} samples" in text and f"re-encoded {jpegs}" in text  # the JPEGs, losslessly to PNG
    assert run_data_command(["data", "convert", str(tmp_path / "hf"), "--kind", "hf", "--streaming", "--to", "wds",
                str(tmp_path / "wds"), "--limit", "12"]) == 0  # fmt: skip
    assert "wrote 12 samples" in capsys.readouterr().out
    assert run_data_command(["data", "convert", str(tmp_path / "mds"), "--to", "parquet", str(tmp_path / "pq")]) == 0
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(tmp_path / "pq")
    pixels = {c: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b, c in
              zip(table.column("image").to_pylist(), table.column("caption").to_pylist())}  # fmt: skip
    for r in records:  # PNG re-encoding was lossless: the same pixels
        assert np.array_equal(pixels[r.caption], np.asarray(Image.open(io.BytesIO(r.image)).convert("RGB")))
    assert all(Image.open(io.BytesIO(b)).format == "PNG" for b in table.column("image").to_pylist())


def test_refusals(folder, tmp_path):
    source, _ = folder
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="is not empty"):
        run_data_command(["data", "convert", str(source), "--to", "wds", str(tmp_path / "full")])
    with pytest.raises(DataError, match="generated on the fly"):
        run_data_command(["data", "convert", "scenes", "--to", "wds", str(tmp_path / "out")])
    with pytest.raises(DataError, match="Cannot read size"):
        run_data_command(["data", "convert", str(source), "--to", "wds", str(tmp_path / "out"), "--shard-size", "lots"])
    assert parse_size("64MB") == 64 << 20 and parse_size("1GiB") == 1 << 30 and parse_size("500") == 500
    assert not os.path.exists(tmp_path / "out")
