"""The text-embedding cache: build, batches carry it, stale or missing caches are refused."""
from __future__ import annotations

import hashlib
import threading

import attrs
import pytest
import torch

from prx_core.data.config import DataConfig, SourceConfig
from prx_core.data.loader import build_loader, open_sources, text_cache_dirs
from prx_core.data.text_cache import TextCache, build_text_cache
from prx_core.data.writers import synthetic_records, write_parquet
from prx_core.errors import DataError, RecipeError
from prx_core.types import Conditioning


class FakeEncoder:
    """Deterministic stand-in for the core's TextEncoder: one token per word (up to max_length),
    each a vector drawn from the word's hash, right-padded."""

    def __init__(self, max_length: int = 12, dim: int = 6, name: str = "fake"):
        self.max_length, self.dim = max_length, dim
        self.fingerprint = {"encoder": name, "max_length": max_length, "dim": dim, "dtype": "torch.float32"}
        self.calls = 0

    def encode(self, captions: list[str]) -> Conditioning:
        self.calls += 1
        tokens = torch.full((len(captions), self.max_length, self.dim), 7.0)  # padding positions hold junk
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        for i, caption in enumerate(captions):
            for j, word in enumerate(caption.split()[: self.max_length]):
                seed = int.from_bytes(hashlib.sha1(f"{j}:{word}".encode()).digest()[:4], "little")
                tokens[i, j] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
                mask[i, j] = True
        return Conditioning(tokens, mask)


@pytest.fixture()
def parquet_data(tmp_path):
    write_parquet(str(tmp_path / "pq"), synthetic_records(48), shards=2, row_group_size=8)
    source = SourceConfig(kind="parquet", path=str(tmp_path / "pq"), name="pq")
    return DataConfig(resolution=32, sources=[source], buckets=False, text_cache=True)


def _build(data: DataConfig, encoder: FakeEncoder, **options) -> str:
    (source,) = open_sources(data)
    (directory,) = text_cache_dirs(data, [source])
    build_text_cache(source.iter_captions(), directory, encoder, batch_size=5, **options)
    return directory


def test_batches_carry_the_cached_encoding(parquet_data):
    encoder = FakeEncoder()
    directory = _build(parquet_data, encoder)
    assert directory.endswith(".prx-text-cache/pq")
    loader = build_loader(parquet_data, resolution=32, batch_size=6, patch=16, seed=0, text_fingerprint=encoder.fingerprint)
    it = iter(loader)
    for _ in range(3):
        batch = next(it)
        direct = encoder.encode(batch.captions)
        assert batch.text.tokens.shape == (6, 12, 6) and torch.equal(batch.text.mask, direct.mask)
        assert torch.equal(batch.text.tokens[batch.text.mask], direct.tokens[direct.mask])
        assert (batch.text.tokens[~batch.text.mask] == 0).all()


def test_pinned_batches_are_assembled_on_the_prefetch_thread(parquet_data, monkeypatch):
    """With pin_for (CUDA training) the batcher makes the training device current on its thread,
    writes the images straight into page-locked memory and pins the cached text, on the
    loader's prefetch thread, not the training thread. (This machine has no CUDA driver: the
    device switch and the allocations are recorded instead.)"""
    encoder = FakeEncoder()
    _build(parquet_data, encoder)
    data = attrs.evolve(parquet_data, workers=1)
    options = dict(resolution=32, batch_size=6, patch=16, seed=0, text_fingerprint=encoder.fingerprint)
    expected = next(iter(build_loader(data, **options)))
    calls: list[tuple[str, str]] = []
    empty = torch.empty

    def record(what: str) -> None:
        calls.append((what, threading.current_thread().name))

    def empty_recording(*args, pin_memory=False, **kwargs):
        if pin_memory:
            record("images")
        return empty(*args, **kwargs)

    def pin_recording(tensor):
        record("text")
        return tensor.clone()

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: record(f"device {device}"))
    monkeypatch.setattr(torch, "empty", empty_recording)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_recording)
    loader = build_loader(data, **options, pin_for=torch.device("cuda", 1))
    batch = next(iter(loader))
    loader.close()
    monkeypatch.undo()
    assert [what for what, _ in calls][:4] == ["device cuda:1", "images", "text", "text"]
    assert threading.main_thread().name not in {thread for _, thread in calls}
    assert torch.equal(batch.images, expected.images) and batch.ids == expected.ids
    assert torch.equal(batch.text.tokens, expected.text.tokens) and torch.equal(batch.text.mask, expected.text.mask)


def test_identical_captions_are_stored_once(parquet_data):
    encoder = FakeEncoder()
    (source,) = open_sources(parquet_data)
    captions = list(source.iter_captions())
    manifest = build_text_cache(captions + captions, _build(parquet_data, encoder, force=True), encoder, force=True)
    assert manifest["captions"] == len(set(captions))


def test_up_to_date_cache_is_not_rebuilt(parquet_data):
    encoder = FakeEncoder()
    _build(parquet_data, encoder)
    calls = encoder.calls
    _build(parquet_data, encoder)
    assert encoder.calls == calls


def test_stale_cache_is_refused_with_the_rebuild_command(parquet_data):
    _build(parquet_data, FakeEncoder(max_length=12))
    other = FakeEncoder(max_length=16)
    with pytest.raises(DataError, match=r"stale.*prx data cache --recipe RECIPE --force"):
        build_loader(parquet_data, resolution=32, batch_size=4, patch=16, seed=0, text_fingerprint=other.fingerprint)
    with pytest.raises(DataError, match="--force"):
        _build(parquet_data, other)
    _build(parquet_data, other, force=True)
    build_loader(parquet_data, resolution=32, batch_size=4, patch=16, seed=0, text_fingerprint=other.fingerprint)


def test_missing_cache_says_how_to_build_it(parquet_data):
    with pytest.raises(DataError, match="no text cache at .*prx data cache --recipe"):
        build_loader(parquet_data, resolution=32, batch_size=4, patch=16, seed=0, text_fingerprint={"encoder": "x"})


def test_caption_missing_from_the_cache_stops_the_run(parquet_data):
    encoder = FakeEncoder()
    (source,) = open_sources(parquet_data)
    (directory,) = text_cache_dirs(parquet_data, [source])
    build_text_cache(list(source.iter_captions())[:3], directory, encoder)  # built before data was added
    assert TextCache([directory], encoder.fingerprint).missing(["a caption nobody wrote"]) == ["a caption nobody wrote"]
    loader = build_loader(parquet_data, resolution=32, batch_size=8, patch=16, seed=0, text_fingerprint=encoder.fingerprint)
    with pytest.raises(DataError, match="not in the text cache.*--force"):
        next(iter(loader))


def test_left_padding_encoders_are_refused(tmp_path):
    class LeftPadded(FakeEncoder):
        def encode(self, captions):
            out = super().encode(captions)
            return Conditioning(out.tokens, out.mask.flip(1))

    with pytest.raises(DataError, match="not a prefix"):
        build_text_cache(["two words"], str(tmp_path / "c"), LeftPadded())


def test_scenes_cannot_use_a_text_cache():
    with pytest.raises(RecipeError, match="text_cache = true: cannot serve a scenes source"):
        build_loader(DataConfig(resolution=32, text_cache=True), resolution=32, batch_size=4, patch=16, seed=0)
