"""The training loader on small generated data: sources, mixture, sharding, exact resume."""
from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch

from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.loader import build_loader
from prx_core.data.order import epoch_order
from prx_core.data.writers import synthetic_records, write_folder, write_parquet, write_webdataset
from prx_core.errors import DataError, RecipeError

from data_helpers import cut_and_resume, data_config, sample_ids, take

COUNT = 120


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The same 120 captioned images (64-128 px JPEG/PNG, five aspect ratios) as a folder, as
    Parquet (3 files, row groups of 16, raw bytes; and a struct-image copy) and as 3 tars."""
    root = tmp_path_factory.mktemp("data")
    records = synthetic_records(COUNT)
    write_folder(str(root / "folder"), records)
    write_parquet(str(root / "parquet"), records, shards=3, row_group_size=16)
    write_parquet(str(root / "hf"), records, shards=1, row_group_size=32, struct_images=True)
    write_webdataset(str(root / "tars"), records, shards=3)
    write_folder(str(root / "small"), synthetic_records(40, prefix="small"))
    return root


def test_every_kind_yields_the_same_samples(data_dir):
    seen = {}
    for kind, path in [
        ("folder", data_dir / "folder"),
        ("parquet", data_dir / "parquet"),
        ("parquet", data_dir / "hf"),
        ("webdataset", f"{data_dir}/tars/shard-{{00000..00002}}.tar"),
    ]:
        data = data_config(SourceConfig(kind=kind, path=str(path), name="s"), buckets=False)
        loader = build_loader(data, resolution=32, batch_size=COUNT, patch=16, seed=0)
        (batch,) = take(loader, 1)
        assert batch.images.shape == (COUNT, 3, 32, 32) and batch.images.dtype == torch.float32
        assert -1.0 <= batch.images.min() and batch.images.max() <= 1.0
        order = np.argsort(batch.captions, kind="stable")
        seen[f"{kind}:{path}"] = ([batch.captions[i] for i in order], batch.images[order])
    (captions, images), *others = seen.values()
    assert len(set(captions)) > 50
    for other_captions, other_images in others:
        assert other_captions == captions
        assert torch.equal(other_images, images)


def test_ids_name_source_and_sample(data_dir):
    data = data_config(SourceConfig(kind="parquet", path=str(data_dir / "parquet")), buckets=False)
    (batch,) = take(build_loader(data, resolution=32, batch_size=4, patch=16, seed=0), 1)
    assert all(i.startswith("parquet:part-0000") and "/" in i for i in batch.ids)
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder"), name="mine"), buckets=False)
    (batch,) = take(build_loader(data, resolution=32, batch_size=4, patch=16, seed=0), 1)
    assert all(i.startswith("mine:img-") for i in batch.ids)


def test_every_batch_holds_one_bucket(data_dir):
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder")))
    loader = build_loader(data, resolution=64, batch_size=5, patch=16, seed=0)
    shapes = {tuple(b.images.shape) for b in take(loader, 20)}
    assert len(shapes) >= 3  # five aspect ratios in the data land in several buckets
    assert all(s[0] == 5 and s[2] % 16 == 0 and s[3] % 16 == 0 for s in shapes)
    assert {(s[3], s[2]) for s in shapes} <= set(loader.buckets)


def test_scenes_render_at_the_bucket_size():
    data = DataConfig(resolution=64)
    loader = build_loader(data, resolution=64, batch_size=8, patch=4, seed=0)
    batches = take(loader, 6)
    assert all(b.ids[0].startswith("scenes:") for b in batches)
    assert len({tuple(b.images.shape) for b in batches}) > 1
    square = build_loader(DataConfig(resolution=64, buckets=False), resolution=64, batch_size=8, patch=4, seed=0)
    (batch,) = take(square, 1)
    assert batch.images.shape == (8, 3, 64, 64)
    assert batch.ids == [f"scenes:{i}" for i in range(8)]


def test_mixture_follows_weights(data_dir):
    folder = SourceConfig(kind="folder", path=str(data_dir / "folder"))
    small = SourceConfig(kind="folder", path=str(data_dir / "small"))
    natural = build_loader(data_config(folder, small, buckets=False), resolution=32, batch_size=10, patch=16, seed=0)
    take(natural, 40)
    stats = natural.stats()
    assert stats["seen"] == 400
    assert stats["seen/folder"] / 400 == pytest.approx(COUNT / (COUNT + 40), abs=0.07)
    folder.weight, small.weight = 1.0, 3.0
    weighted = build_loader(data_config(folder, small, buckets=False), resolution=32, batch_size=10, patch=16, seed=0)
    take(weighted, 40)
    assert weighted.stats()["seen/small"] / 400 == pytest.approx(0.75, abs=0.07)


def test_mixture_with_scenes_needs_weights(data_dir):
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder")), SourceConfig(kind="scenes"))
    with pytest.raises(RecipeError, match="give every source a weight"):
        build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)


@pytest.mark.parametrize(("kind", "path", "workers"), [("folder", "folder", 2), ("parquet", "parquet", 2), ("webdataset", "tars", 0)])
def test_ranks_partition_an_epoch(data_dir, kind, path, workers):
    """2 ranks x ``workers`` workers: one epoch visits every sample exactly once. (Parquet is
    split by row group, 16 + 16 + 8 rows per file, so the ranks' epochs differ in length.)"""
    data = data_config(SourceConfig(kind=kind, path=str(data_dir / path), name="s"), buckets=False, workers=workers)
    seen = []
    for rank in range(2):
        loader = build_loader(data, resolution=32, batch_size=1, patch=16, seed=3, rank=rank, world_size=2)
        sizes = loader.sources[0].blocks
        n = len(epoch_order(COUNT, sizes, name="s", seed=3, epoch=0, rank=rank, world_size=2, window=4))
        seen.extend(sample_ids(take(loader, n)))
        loader.close()
    assert len(seen) == COUNT and len(set(seen)) == COUNT


def test_epochs_roll_over_reshuffled(data_dir):
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder")), buckets=False)
    ids = sample_ids(take(build_loader(data, resolution=32, batch_size=40, patch=16, seed=0), 6))
    first, second = ids[:COUNT], ids[COUNT:]
    assert sorted(first) == sorted(second) and len(set(first)) == COUNT
    assert first != second


def test_seed_changes_the_order_and_repeats_it(data_dir):
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder")), buckets=False)
    a = sample_ids(take(build_loader(data, resolution=32, batch_size=10, patch=16, seed=0), 2))
    b = sample_ids(take(build_loader(data, resolution=32, batch_size=10, patch=16, seed=0), 2))
    c = sample_ids(take(build_loader(data, resolution=32, batch_size=10, patch=16, seed=1), 2))
    assert a == b and a != c


@pytest.mark.parametrize(("workers_before", "workers_after"), [(0, 0), (2, 0), (0, 2)])
def test_exact_resume_mid_epoch(data_dir, tmp_path, workers_before, workers_after):
    """A run resumed from a state saved mid-epoch (samples waiting in bucket buffers, across an
    epoch boundary, with a mixture) sees exactly what the uninterrupted run saw."""
    sources = [
        SourceConfig(kind="parquet", path=str(data_dir / "parquet"), weight=2.0),
        SourceConfig(kind="webdataset", path=str(data_dir / "tars"), weight=1.0),
    ]

    def make(workers):
        data = data_config(*sources, workers=workers)
        return build_loader(data, resolution=64, batch_size=6, patch=16, seed=5, rank=1, world_size=2)

    reference = take(make(workers_before), 30)
    def samples_wait_in_buffers(state):
        assert state["batcher"]["pending"]  # the cut leaves samples waiting in buffers

    seen, resumed = cut_and_resume(make, workers_before, workers_after, 12, 18, tmp_path, samples_wait_in_buffers)
    assert sample_ids(seen) == sample_ids(reference)
    for a, b in zip(seen, reference):
        assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert resumed.stats()["seen"] > COUNT // 2  # the run crossed into this rank's next epochs


def test_state_carries_over_a_resolution_change(data_dir):
    """The phase boundary: a state from a 32 px loader continues the stream in a 64 px one."""
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder")))
    low = build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)
    early = sample_ids(take(low, 5))
    state = low.state_dict()
    high = build_loader(data, resolution=64, batch_size=8, patch=16, seed=0)
    high.load_state_dict(state)
    later = take(high, 4)
    assert all(b.images.shape[0] == 8 for b in later)
    ids = early + sample_ids(later)
    assert len(ids) == len(set(ids))  # nothing seen twice within the epoch
    assert high.stats()["batches"] == 9


def test_load_state_from_other_sources_is_refused(data_dir):
    a = build_loader(data_config(SourceConfig(kind="folder", path=str(data_dir / "folder"))), resolution=32, batch_size=4, patch=16, seed=0)
    b = build_loader(data_config(SourceConfig(kind="folder", path=str(data_dir / "small"))), resolution=32, batch_size=4, patch=16, seed=0)
    with pytest.raises(DataError, match="resume with the sources the run started with"):
        b.load_state_dict(a.state_dict())


def test_close_stops_the_workers(data_dir):
    data = data_config(SourceConfig(kind="folder", path=str(data_dir / "folder")), workers=2)
    loader = build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)
    take(loader, 2)
    assert len(multiprocessing.active_children()) >= 2
    loader.close()
    assert multiprocessing.active_children() == []
    with pytest.raises(RuntimeError, match="closed"):
        take(loader, 1)


def test_missing_path_is_a_data_error(tmp_path):
    data = data_config(SourceConfig(kind="parquet", path=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="No Parquet files"):
        build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)
    data = data_config(SourceConfig(kind="parquet", path=str(tmp_path)), SourceConfig(kind="folder", path=""))
    with pytest.raises(RecipeError, match=r"sources\[1\]\.path = \"\": kind = 'folder' needs a path"):
        build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)


def test_wrong_parquet_column_names_the_key(data_dir):
    data = data_config(SourceConfig(kind="parquet", path=str(data_dir / "parquet"), caption_column="text"))
    with pytest.raises(DataError, match="no column 'text'.*caption_column"):
        build_loader(data, resolution=32, batch_size=4, patch=16, seed=0)


def test_too_few_row_groups_for_the_ranks(data_dir):
    data = data_config(SourceConfig(kind="parquet", path=str(data_dir / "hf")))  # 4 row groups
    with pytest.raises(DataError, match="fewer than the 8 ranks"):
        build_loader(data, resolution=32, batch_size=4, patch=16, seed=0, rank=5, world_size=8)


def test_fsspec_urls_read_like_paths(data_dir):
    pytest.importorskip("fsspec")
    url = "file://" + os.path.join(str(data_dir), "tars", "shard-*.tar")
    data = data_config(SourceConfig(kind="webdataset", path=url, name="s"), buckets=False)
    local = data_config(SourceConfig(kind="webdataset", path=str(data_dir / "tars"), name="s"), buckets=False)
    a = take(build_loader(data, resolution=32, batch_size=8, patch=16, seed=0), 2)
    b = take(build_loader(local, resolution=32, batch_size=8, patch=16, seed=0), 2)
    assert sample_ids(a) == sample_ids(b) and all(torch.equal(x.images, y.images) for x, y in zip(a, b))


def test_json_captions_and_struct_images_by_path(tmp_path):
    """JSON sidecars (folder and tar) and Parquet {bytes: null, path} image structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prx_core.data.writers import Record

    records = [
        Record(r.key, r.image, r.caption, image_suffix=r.image_suffix, caption_suffix=".json")
        for r in synthetic_records(6)
    ]
    write_folder(str(tmp_path / "folder"), records)
    write_webdataset(str(tmp_path / "tars"), records)
    images = pa.array(
        [{"bytes": None, "path": f"../folder/{r.key}{r.image_suffix}"} for r in records],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    (tmp_path / "pq").mkdir()
    table = pa.table({"img": images, "text": [[r.caption, "a second caption"] for r in records]})
    pq.write_table(table, tmp_path / "pq" / "data.parquet")
    expected = sorted(r.caption for r in records)
    for source in (
        SourceConfig(kind="folder", path=str(tmp_path / "folder")),
        SourceConfig(kind="webdataset", path=str(tmp_path / "tars")),
        SourceConfig(kind="parquet", path=str(tmp_path / "pq"), image_column="img", caption_column="text"),
    ):
        (batch,) = take(build_loader(data_config(source, buckets=False), resolution=32, batch_size=6, patch=16, seed=0), 1)
        assert sorted(batch.captions) == expected
