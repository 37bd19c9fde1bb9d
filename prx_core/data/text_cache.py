"""Precomputed text-encoder outputs, stored next to the data so training never runs the encoder.

Layout of one source's cache (``<data>/.prx-text-cache/<source name>/`` unless ``[data]
text_cache_dir`` says otherwise)::

    manifest.json          encoder fingerprint, token length, shard list, caption count
    shard-00000.safetensors
        keys     (N,)   int64   first 8 bytes of blake2b(caption): the lookup key
        offsets  (N+1,) int64   row i's tokens are tokens[offsets[i]:offsets[i+1]]
        tokens   (T, dim)       the encoder's output at unmasked positions, in its dtype

Keys are caption hashes, not sample ids, so identical captions are stored once and a cache
survives re-sharding the images. Masks are stored as lengths: the cache requires the encoder's
mask to be a prefix (right padding), which it checks while building. Looked-up tokens are zero at
masked positions (the denoiser never reads them).

A cache records the fingerprint of the encoder that built it; opening it with another encoder
or another max length is refused, with the command that rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prx_core.data import files
from prx_core.errors import DataError
from prx_core.types import Conditioning

CACHE_DIRNAME = ".prx-text-cache"
MANIFEST = "manifest.json"
FORMAT = 1


def caption_key(caption: str) -> int:
    """The cache key of a caption: a signed 64-bit integer from its blake2b hash."""
    digest = hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def cache_location(root: str, source_name: str, cache_dir: str = "") -> str:
    """Directory of a source's cache: ``<cache_dir>/<name>`` or ``<root>/.prx-text-cache/<name>``."""
    return files.join(cache_dir, source_name) if cache_dir else files.join(files.join(root, CACHE_DIRNAME), source_name)


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def build_text_cache(
    captions: Iterable[str | None],
    directory: str,
    encoder: Any,
    *,
    batch_size: int = 64,
    shard_size: int = 65536,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Encode every distinct non-empty caption and write the cache to ``directory`` (local).

    ``encoder`` has ``encode(list[str]) -> Conditioning`` and a ``fingerprint`` dict (the core's
    ``TextEncoder``). An existing cache is kept when its fingerprint matches and it already holds
    every caption (returns its manifest); otherwise ``force`` must be set to replace it.
    """
    keys: dict[int, str] = {}
    for caption in captions:
        if caption:
            keys.setdefault(caption_key(caption), caption)
    manifest_path = os.path.join(directory, MANIFEST)
    if os.path.exists(manifest_path):
        existing = _read_manifest(directory)
        if _same(existing["fingerprint"], encoder.fingerprint) and not force:
            held = _all_keys(directory, existing)
            if set(keys) <= set(held.tolist()):
                log(f"text cache {directory} is up to date ({existing['captions']} captions)")
                return existing
        if not force:
            raise DataError(
                f"A text cache already exists at {directory} for another encoder or other captions. "
                "Rebuild it with `prx data cache --recipe RECIPE --force` (this deletes the old cache)."
            )
        shutil.rmtree(directory)
    os.makedirs(directory, exist_ok=True)
    ordered = sorted(keys)
    shards, length = [], 0
    for first in range(0, len(ordered), shard_size):
        chunk = ordered[first : first + shard_size]
        pieces, lengths = [], []
        for start in range(0, len(chunk), batch_size):
            batch = [keys[k] for k in chunk[start : start + batch_size]]
            with torch.no_grad():
                out = encoder.encode(batch)
            mask = out.mask.bool().cpu()
            length = mask.shape[1]
            counts = mask.sum(dim=1)
            if not torch.equal(mask, torch.arange(length)[None, :] < counts[:, None]):
                raise DataError(
                    "The text encoder's attention mask is not a prefix (it pads on the left), which the "
                    "text cache cannot store: set the tokenizer's padding_side = 'right' or turn [data] text_cache off."
                )
            tokens = out.tokens.detach().cpu()
            pieces.extend(tokens[i, : int(counts[i])] for i in range(len(batch)))
            lengths.extend(int(c) for c in counts)
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {
            "keys": torch.tensor(chunk, dtype=torch.int64),
            "offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
            "tokens": torch.cat(pieces).contiguous(),
        }
        save_file(tensors, os.path.join(directory, name + ".tmp"))
        os.replace(os.path.join(directory, name + ".tmp"), os.path.join(directory, name))
        shards.append(name)
        log(f"text cache {directory}: {first + len(chunk)} / {len(ordered)} captions")
    manifest = {
        "format": FORMAT,
        "fingerprint": encoder.fingerprint,
        "length": length,
        "captions": len(ordered),
        "shards": shards,
    }
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, default=str)
    os.replace(manifest_path + ".tmp", manifest_path)
    return manifest


def _read_manifest(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, MANIFEST)) as f:
        return json.load(f)


def _all_keys(directory: str, manifest: dict[str, Any]) -> np.ndarray:
    parts = []
    for name in manifest["shards"]:
        with safe_open(os.path.join(directory, name), framework="pt") as f:
            parts.append(f.get_tensor("keys").numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class TextCache:
    """Lookup of cached encoder outputs across one or more sources' caches (main process only)."""

    def __init__(self, directories: list[str], fingerprint: dict):
        manifests = []
        for directory in directories:
            if not os.path.exists(os.path.join(directory, MANIFEST)):
                raise DataError(
                    f"[data] text_cache = true, but there is no text cache at {directory}. Build it with "
                    "`prx data cache --recipe RECIPE` (runs the recipe's text encoder over every caption), "
                    "or set text_cache = false."
                )
            manifest = _read_manifest(directory)
            if not _same(manifest["fingerprint"], fingerprint):
                raise DataError(
                    f"The text cache at {directory} is stale: it was built by {manifest['fingerprint']}, but the "
                    f"recipe's text encoder is {fingerprint}. Rebuild it with `prx data cache --recipe RECIPE "
                    "--force`, or set [data] text_cache = false."
                )
            manifests.append((directory, manifest))
        self.length = manifests[0][1]["length"] if manifests else 0
        self._handles, keys, where = [], [], []
        for directory, manifest in manifests:
            for name in manifest["shards"]:
                handle = safe_open(os.path.join(directory, name), framework="pt")
                shard_keys = handle.get_tensor("keys").numpy()
                offsets = handle.get_tensor("offsets").numpy()
                keys.append(shard_keys)
                where.append(np.stack([np.full(len(shard_keys), len(self._handles)), np.arange(len(shard_keys))], 1))
                self._handles.append((handle, offsets, handle.get_slice("tokens")))
        all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        order = np.argsort(all_keys, kind="stable")
        self._keys = all_keys[order]
        self._where = (np.concatenate(where) if where else np.zeros((0, 2), dtype=np.int64))[order]

    def missing(self, captions: list[str]) -> list[str]:
        """The captions this cache does not hold."""
        return [c for c, pos in zip(captions, self._find(captions)) if pos < 0]

    def _find(self, captions: list[str]) -> np.ndarray:
        wanted = np.asarray([caption_key(c) for c in captions], dtype=np.int64)
        pos = np.searchsorted(self._keys, wanted)
        pos = np.minimum(pos, max(len(self._keys) - 1, 0))
        hit = (self._keys[pos] == wanted) if len(self._keys) else np.zeros(len(captions), dtype=bool)
        return np.where(hit, pos, -1)

    def lookup(self, captions: list[str]) -> Conditioning:
        """``Conditioning(tokens (B, L, dim), mask (B, L))`` for ``captions``; raises DataError
        for a caption the cache does not hold."""
        positions = self._find(captions)
        rows = []
        for caption, pos in zip(captions, positions):
            if pos < 0:
                raise DataError(
                    f"The caption {caption[:80]!r} is not in the text cache (the data changed after the cache "
                    "was built). Rebuild it with `prx data cache --recipe RECIPE --force`."
                )
            shard, row = self._where[pos]
            _, offsets, tokens = self._handles[shard]
            rows.append(tokens[int(offsets[row]) : int(offsets[row + 1])])
        dim = rows[0].shape[1]
        out = torch.zeros(len(rows), self.length, dim, dtype=rows[0].dtype)
        mask = torch.zeros(len(rows), self.length, dtype=torch.bool)
        for i, row in enumerate(rows):
            out[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = True
        return Conditioning(tokens=out, mask=mask)
