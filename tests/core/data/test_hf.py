"""Hugging Face datasets as a source: save_to_disk and parquet-directory datasets built here
(no network), map-style and streaming, column detection, rank sharding, exact resume, mixtures."""
from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

datasets = pytest.importorskip("datasets")

from prx_core.data.config import SourceConfig  # noqa: E402
from prx_core.data.loader import build_loader  # noqa: E402
from prx_core.data.writers import synthetic_records, write_folder  # noqa: E402
from prx_core.errors import DataError, RecipeError  # noqa: E402

from data_helpers import by_caption, cut_and_resume, data_config, sample_ids, take  # noqa: E402

COUNT = 60


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """The same 60 captioned images as a save_to_disk dataset (Image feature, 4 Arrow shards),
    a DatasetDict on disk, a parquet-file directory in the hub layout (3 files, bytes column +
    caption + id), and a folder (the reference)."""
    root = tmp_path_factory.mktemp("hf")
    records = synthetic_records(COUNT)
    table = {
        "image": [{"bytes": r.image, "path": None} for r in records],
        "text": [r.caption for r in records],
        "width": [64] * COUNT,
    }
    dataset = datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
    dataset.save_to_disk(str(root / "saved"), num_shards=4)
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(root / "dict"))
    (root / "pq" / "data").mkdir(parents=True)
    plain = datasets.Dataset.from_dict(
        {"jpg": [r.image for r in records], "prompt": [r.caption for r in records], "uid": [r.key for r in records]}
    )
    for shard in range(3):
        plain.shard(3, shard, contiguous=True).to_parquet(str(root / "pq" / "data" / f"train-{shard:05d}-of-00003.parquet"))
    write_folder(str(root / "folder"), records)
    return root, records


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("saved", {}),
        ("saved", {"streaming": True}),
        ("dict", {"split": "validation"}),
        ("pq", {}),
        ("pq", {"streaming": True}),
    ],
)
def test_hf_yields_the_folders_samples(hf_dirs, tmp_path, path, options):
    """Every layout, map-style or streaming, decodes to exactly the pixels of the same images read
    from a folder (detected columns: Image feature / bytes "jpg"; "text" / "prompt")."""
    root, records = hf_dirs
    folder = build_loader(
        data_config(SourceConfig(kind="folder", path=str(root / "folder"), name="s"), buckets=False),
        resolution=32, batch_size=COUNT, patch=16, seed=0,
    )  # fmt: skip
    source = SourceConfig(kind="hf", path=str(root / path), name="s", cache_dir=str(tmp_path / "cache"), **options)
    loader = build_loader(data_config(source, buckets=False), resolution=32, batch_size=COUNT, patch=16, seed=0)
    (expected,) = take(folder, 1)
    (batch,) = take(loader, 1)
    want_captions, want_images = by_caption(expected)
    captions, images = by_caption(batch)
    assert captions == want_captions
    assert torch.equal(images, want_images)
    assert len(set(batch.ids)) == COUNT


def test_ids_are_rows_shards_or_the_id_column(hf_dirs, tmp_path):
    root, records = hf_dirs
    cache = str(tmp_path / "cache")
    (batch,) = take(build_loader(data_config(SourceConfig(kind="hf", path=str(root / "saved")), buckets=False),
                                  resolution=32, batch_size=8, patch=16, seed=0), 1)  # fmt: skip
    assert all(i.startswith("saved:") and i.split(":")[1].isdigit() for i in batch.ids)
    stream = SourceConfig(kind="hf", path=str(root / "saved"), streaming=True)
    (batch,) = take(build_loader(data_config(stream, buckets=False), resolution=32, batch_size=8, patch=16, seed=0), 1)
    assert all(len(i.split(":")[1].split("/")) == 2 for i in batch.ids)  # <shard>/<row>
    keyed = SourceConfig(kind="hf", path=str(root / "pq"), id_column="uid", cache_dir=cache)
    (batch,) = take(build_loader(data_config(keyed, buckets=False), resolution=32, batch_size=8, patch=16, seed=0), 1)
    assert {i.split(":")[1] for i in batch.ids} <= {r.key for r in records}


def test_ambiguous_columns_are_listed(hf_dirs, tmp_path):
    root, records = hf_dirs
    two_texts = datasets.Dataset.from_dict(
        {"img": [r.image for r in records[:4]], "alpha": ["a"] * 4, "beta": ["b"] * 4}
    )
    two_texts.save_to_disk(str(tmp_path / "two"))
    source = SourceConfig(kind="hf", path=str(tmp_path / "two"))
    with pytest.raises(DataError, match=r"captions \(its columns: img \(binary\), alpha \(string\), beta \(string\)\)"):
        build_loader(data_config(source), resolution=32, batch_size=2, patch=16, seed=0)
    source.caption_column = "beta"
    (batch,) = take(build_loader(data_config(source, buckets=False), resolution=32, batch_size=4, patch=16, seed=0), 1)
    assert batch.captions == ["b"] * 4
    source.caption_column = "gamma"
    with pytest.raises(DataError, match="no column 'gamma'.*caption_column"):
        build_loader(data_config(source), resolution=32, batch_size=2, patch=16, seed=0)


def test_unknown_split_names_the_splits(hf_dirs):
    root, _ = hf_dirs
    with pytest.raises(DataError, match=r"splits \['validation'\], not 'train'"):
        build_loader(data_config(SourceConfig(kind="hf", path=str(root / "dict"))), resolution=32, batch_size=2, patch=16, seed=0)


def test_unreachable_hub_id_is_a_data_error(tmp_path):
    source = SourceConfig(kind="hf", path="nobody-here/no-such-dataset", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="could not open it.*hub id"):
        build_loader(data_config(source), resolution=32, batch_size=2, patch=16, seed=0)


def test_missing_datasets_library_fails_validation_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(RecipeError, match=r"prx\[hf\]"):
        build_loader(data_config(SourceConfig(kind="hf", path="x")), resolution=32, batch_size=2, patch=16, seed=0)


@pytest.mark.parametrize("streaming", [False, True])
def test_ranks_partition_an_epoch(hf_dirs, streaming):
    """2 ranks: one epoch (60 samples) is read exactly once; for the stream, 4 shards split 2/2
    across ranks, and with 3 ranks (fewer shards per rank is fine) too."""
    root, _ = hf_dirs
    for world in (2, 3):
        seen = []
        for rank in range(world):
            source = SourceConfig(kind="hf", path=str(root / "saved"), name="s", streaming=streaming)
            loader = build_loader(data_config(source, buckets=False, shuffle_window=8), resolution=32, batch_size=1,
                                  patch=16, seed=3, rank=rank, world_size=world)  # fmt: skip
            mine = 30 if world == 2 else 20  # 4 shards of 15 over 3 ranks: 2, 1, 1 shards -> 30, 15, 15
            if streaming and world == 3:
                mine = (30, 15, 15)[rank]
            seen.extend(sample_ids(take(loader, mine)))
        assert len(seen) == COUNT and len(set(seen)) == COUNT


def test_stream_with_fewer_shards_than_ranks_interleaves_rows(hf_dirs, tmp_path):
    root, _ = hf_dirs
    seen = []
    for rank in range(4):  # the parquet directory has 3 files
        source = SourceConfig(kind="hf", path=str(root / "pq"), streaming=True, name="s", cache_dir=str(tmp_path))
        loader = build_loader(data_config(source, buckets=False), resolution=32, batch_size=1, patch=16, seed=0,
                              rank=rank, world_size=4)  # fmt: skip
        seen.extend(sample_ids(take(loader, 15)))
    assert len(set(seen)) == COUNT


def test_stream_epochs_reshuffle_and_repeat(hf_dirs):
    root, _ = hf_dirs
    source = SourceConfig(kind="hf", path=str(root / "saved"), streaming=True)
    ids = sample_ids(take(build_loader(data_config(source, buckets=False, shuffle_window=16), resolution=32, batch_size=20,
                                  patch=16, seed=0), 6))  # fmt: skip
    first, second = ids[:COUNT], ids[COUNT:]
    assert sorted(first) == sorted(second) and len(set(first)) == COUNT and first != second


@pytest.mark.parametrize(("workers_before", "workers_after"), [(0, 0), (2, 0), (0, 2)])
def test_exact_resume_of_a_mixture_with_a_stream(hf_dirs, tmp_path, workers_before, workers_after):
    """A map-style hf source, a streaming one and a folder, mixed by weight: a state saved
    mid-window (samples of the stream waiting in bucket buffers) resumes exactly."""
    root, _ = hf_dirs
    sources = [
        SourceConfig(kind="hf", path=str(root / "saved"), name="map", weight=1.0),
        SourceConfig(kind="hf", path=str(root / "pq"), name="stream", streaming=True, weight=2.0,
                     cache_dir=str(tmp_path / "cache")),
        SourceConfig(kind="folder", path=str(root / "folder"), name="folder", weight=1.0),
    ]  # fmt: skip

    def make(workers):
        data = data_config(*sources, workers=workers, shuffle_window=7)
        return build_loader(data, resolution=64, batch_size=5, patch=16, seed=5, rank=1, world_size=2)

    reference = make(workers_before)
    expected = take(reference, 24)
    reference.close()

    def stream_samples_stored_whole(state):
        assert any(len(entry) == 5 for entry in state["batcher"]["pending"])

    seen, resumed = cut_and_resume(make, workers_before, workers_after, 9, 15, tmp_path, stream_samples_stored_whole)
    assert sample_ids(seen) == sample_ids(expected)
    for a, b in zip(seen, expected):
        assert torch.equal(a.images, b.images) and a.captions == b.captions
    stats = resumed.stats()
    assert stats["seen/stream"] > stats["seen/map"]
    assert multiprocessing.active_children() == []


def test_stream_needs_weights_in_a_mixture(hf_dirs):
    root, _ = hf_dirs
    data = data_config(
        SourceConfig(kind="hf", path=str(root / "saved"), streaming=True),
        SourceConfig(kind="folder", path=str(root / "folder")),
    )
    with pytest.raises(RecipeError, match="no known size.*give every source a weight"):
        build_loader(data, resolution=32, batch_size=2, patch=16, seed=0)


def test_image_paths_relative_to_the_dataset(tmp_path):
    """A string column of image paths (relative to the dataset directory) is read as images."""
    records = synthetic_records(4)
    write_folder(str(tmp_path / "data" / "images"), records)
    rows = {"image_path": [f"images/{r.key}{r.image_suffix}" for r in records], "caption": [r.caption for r in records]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "data" / "train.parquet"))
    source = SourceConfig(kind="hf", path=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    (batch,) = take(build_loader(data_config(source, buckets=False), resolution=32, batch_size=4, patch=16, seed=0), 1)
    assert sorted(batch.captions) == sorted(r.caption for r in records)
    assert os.path.isdir(tmp_path / "cache")  # datasets' Arrow copy went where the recipe said


def test_recipe_with_hf_but_no_datasets_fails_at_validation(tmp_path, monkeypatch):
    import importlib.util

    from prx_core.recipe.loader import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nsources = [{ kind = "hf", path = "user/name" }]\n')
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(RecipeError, match=r"r\.toml: \[data\] sources\[0\]\.kind = \"hf\": needs the Hugging Face datasets library: pip install 'prx\[hf\]'"):
        load_recipe(str(recipe), [])
