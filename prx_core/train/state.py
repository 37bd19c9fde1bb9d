"""Writing and reading a run's state in a checkpoint: one process, DDP, and FSDP2.

One process and DDP (every rank holds all the weights): rank 0 writes everything into
``state.pt``. FSDP2 (each rank holds a shard of every parameter): ``torch.distributed.checkpoint``
(DCP) writes each rank's shards of the model, EMA and optimizer tensors into ``dcp/``, and rank 0
writes the rest into ``state.pt``: step, counters, loader positions, technique states, the
optimizers' hyper-parameters, and a marker ``{"__tensor__": KEY}`` where each DCP tensor belongs.
Either way the files go into the checkpoint's temporary folder, which rank 0 seals (manifest of
sizes and SHA-256) and renames into place after every rank has written, then moves ``latest``
(prx_core.checkpoint). All ranks must see the same file system (a shared one across nodes).

Resharding: states are keyed by parameter name, and DCP stores each tensor with its global
shape and the offsets of its pieces, so a checkpoint written by N FSDP2 processes loads into M
FSDP2 processes, into DDP or into one process (full tensors); a one-process or DDP checkpoint
loads into FSDP2 (each rank keeps its shard). The data loader's position is per rank and
restarts under a different process count (prx_core.train.phase_data.PhaseData). To have targets
of the right layout to load into, a fresh optimizer's state is created the way torch's
``get_optimizer_state_dict`` does it (one step with zero gradients and a zero learning rate) and
then overwritten; saving an optimizer that never stepped (every step so far non-finite) creates
its state the same way.

Loading without executing code: ``state.pt`` is read with ``torch.load(weights_only=True)``,
and DCP reads tensor data with ``weights_only=True`` too. But torch 2.14's DCP reads its
``.metadata`` file with plain ``pickle.load`` (which can run any code a crafted file asks for)
and reads non-tensor entries with ``torch.load(weights_only=False)``. So here DCP holds tensors
only, and :class:`SafeReader` reads ``.metadata`` with an unpickler that admits only the classes
a tensors-only DCP metadata file of torch 2.14 is made of (DCP's metadata dataclasses,
``torch.Size``, dtypes, layouts, paths) and refuses everything else, byte entries included.
Limitation: the allow-list follows torch 2.14's format; a later torch that pickles another class
into ``.metadata`` is refused with a message (never run), and the list must then be extended.
The manifest's hashes are checked before any of this is read.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from prx_core import distributed as D
from prx_core.checkpoint import STATE_FILE, CheckpointManager, Selection, read_state, select_checkpoint, verify
from prx_core.errors import CheckpointError

if TYPE_CHECKING:
    from prx_core.train.trainer import Trainer

DCP_DIR = "dcp"
SHARDED = ("model", "ema", "optimizers")  # the parts of Trainer.state_dict() that go through DCP
TENSOR = "__tensor__"

_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_METADATA, "Metadata"), (_METADATA, "TensorStorageMetadata"), (_METADATA, "TensorProperties"),
    (_METADATA, "ChunkStorageMetadata"), (_METADATA, "MetadataIndex"), (_METADATA, "StorageMeta"),
    (_METADATA, "_MEM_FORMAT_ENCODING"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a tensors-only DCP metadata file")


class SafeReader(FileSystemReader):
    """DCP's file reader, except that ``.metadata`` goes through an allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
            raise CheckpointError(
                f"{path} is not a tensors-only torch.distributed.checkpoint metadata file prx can read without "
                f"running code ({err}). If it was written by another torch version, convert the checkpoint with "
                f"that version; otherwise resume from an earlier checkpoint."
            ) from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} does not hold torch.distributed.checkpoint metadata.")
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def split_tensors(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """The tensors of a nested dict/list ``tree`` keyed by their path (``a/b/0``), and the tree with
    each tensor replaced by the marker ``{"__tensor__": path}``."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}, {TENSOR: prefix}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else None
    if items is None:
        return {}, tree
    tensors: dict[str, torch.Tensor] = {}
    rest = {}
    for key, value in items:
        found, rest[key] = split_tensors(value, f"{prefix}/{key}" if prefix else str(key))
        tensors.update(found)
    if isinstance(tree, dict):
        return tensors, rest
    return tensors, type(tree)(rest[i] for i in range(len(tree)))


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tensors`: markers replaced by ``tensors[path]``."""
    if isinstance(tree, dict):
        if set(tree) == {TENSOR}:
            return tensors[tree[TENSOR]]
        return {key: join_tensors(value, tensors) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(join_tensors(value, tensors) for value in tree)
    return tree


def is_sharded(folder: Path) -> bool:
    return (Path(folder) / DCP_DIR).is_dir()


def save_checkpoint(trainer: Trainer, manager: CheckpointManager, info: D.DistInfo, extra: dict[str, Any]) -> Path:
    """Write checkpoint ``trainer.step`` with ``extra`` (plain data, e.g. loader positions) and
    return its folder. Every rank calls it; it returns once the checkpoint is committed."""
    step = trainer.step
    if info.strategy != "fsdp":
        if info.is_main:
            manager.save(step, {**trainer.state_dict(), **extra})
        D.barrier(info)
        return manager.folder(step)
    if info.is_main:
        manager.begin(step)
    D.barrier(info)
    tmp = manager.staging(step)
    state = {**trainer.state_dict(), **extra}
    tensors, skeleton = split_tensors({part: state.pop(part) for part in SHARDED})
    dcp.save(tensors, storage_writer=FileSystemWriter(tmp / DCP_DIR))  # collective; returns when all ranks wrote
    if info.is_main:
        torch.save({**state, **skeleton}, tmp / STATE_FILE)
        manager.commit(tmp, step)
    D.barrier(info)
    return manager.folder(step)


def resume_checkpoint(trainer: Trainer, manager: CheckpointManager, info: D.DistInfo
                      ) -> tuple[dict[str, Any] | None, Selection]:
    """Restore ``trainer`` from the newest usable checkpoint under ``manager.root`` (every rank
    calls it): rank 0 verifies the candidates newest first (prx_core.checkpoint.select_checkpoint)
    and every rank loads the one it chose; a checkpoint that verifies but cannot be loaded is
    passed over too. Returns the saved state (None when there is no checkpoint at all) and the
    selection, whose ``describe()`` says what was skipped and why. Raises CheckpointError, the
    same on every rank, when there are checkpoints but none is usable; nothing is deleted."""
    failed: dict[Path, str] = {}
    while True:
        selection = select_checkpoint(manager.root, failed=failed) if info.is_main else None
        selection = D.gather_objects(selection, info)[0]
        if selection.folder is None:
            if selection.skipped:
                raise CheckpointError(selection.unusable_message(manager.root))
            return None, selection
        problem = None
        try:
            state = _load(trainer, selection.folder, info)
        except CheckpointError as err:
            problem = str(err)
        problems = [p for p in D.gather_objects(problem, info) if p]
        if not problems:
            return state, selection
        failed[selection.folder] = f"it could not be loaded: {problems[0].rstrip('.')}"


def load_checkpoint(trainer: Trainer, folder: Path, info: D.DistInfo) -> dict[str, Any]:
    """Restore ``trainer`` from ``folder`` (either layout, any process count); returns the saved
    state (its ``loader`` entry and the other plain data). Every rank calls it."""
    _verify_once(folder, info)
    return _load(trainer, folder, info)


def _load(trainer: Trainer, folder: Path, info: D.DistInfo) -> dict[str, Any]:
    """:func:`load_checkpoint` of a folder verified already."""
    try:
        return _load_state(trainer, folder, info)
    except KeyError as err:  # a state.pt that verifies but was not written by this trainer
        raise CheckpointError(f"{folder / STATE_FILE} lacks the entry {err} a prx checkpoint holds.") from None


def _load_state(trainer: Trainer, folder: Path, info: D.DistInfo) -> dict[str, Any]:
    state = read_state(folder, map_location=info.device)
    if is_sharded(folder):
        trainer.check_optimizer_labels(state["optimizers"])
        current = trainer.state_dict()  # this run's layout; fresh optimizers get their (zero) state here
        targets, _ = split_tensors({part: current[part] for part in SHARDED})
        saved_keys = _marker_keys({part: state[part] for part in SHARDED})
        if saved_keys != set(targets):
            missing, extra = sorted(set(targets) - saved_keys), sorted(saved_keys - set(targets))
            raise CheckpointError(
                f"checkpoint {folder} does not match this run's model and optimizers: it lacks {missing[:3]} and "
                f"has {extra[:3]} in addition. Resume with the recipe the run was started with."
            )
        _dcp_load(targets, folder / DCP_DIR)
        state.update(join_tensors({part: state[part] for part in SHARDED}, targets))
    trainer.load_state_dict(state)
    return state


def _dcp_load(targets: dict[str, torch.Tensor], path: Path, no_dist: bool = False) -> None:
    """Fill ``targets`` in place (each in its own layout) from the DCP folder ``path``."""
    with warnings.catch_warnings():  # DCP warns whenever it loads without a process group, as intended here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(targets, storage_reader=SafeReader(path), no_dist=no_dist)
        except CheckpointException as err:  # every rank raises it: DCP gathers the failures
            raise CheckpointError(f"{path} could not be read by torch.distributed.checkpoint "
                                  f"({' '.join(str(err).split())[:500]}).") from None


def _marker_keys(tree: Any) -> set[str]:
    if isinstance(tree, dict):
        if set(tree) == {TENSOR}:
            return {tree[TENSOR]}
        return set().union(*(_marker_keys(v) for v in tree.values()))
    if isinstance(tree, (list, tuple)):
        return set().union(*(_marker_keys(v) for v in tree))
    return set()


def _verify_once(folder: Path, info: D.DistInfo) -> None:
    """Rank 0 checks the manifest (hashing every file once, not once per rank); all ranks raise
    the same error, so none of them waits in a collective for a rank that stopped."""
    problem = None
    if info.is_main:
        try:
            verify(folder)
        except CheckpointError as err:
            problem = str(err)
    problems = [p for p in D.gather_objects(problem, info) if p]
    if problems:
        raise CheckpointError(problems[0])


def read_full_state(folder: Path, parts: tuple[str, ...] = SHARDED) -> dict[str, Any]:
    """A checkpoint's state with full tensors on the CPU of one process, from either layout
    (no process group needed); of the tensor groups only ``parts`` are read."""
    verify(folder)
    state = read_state(folder)
    for part in set(SHARDED) - set(parts):
        state.pop(part)
    if not is_sharded(folder):
        return state
    reader = SafeReader(folder / DCP_DIR)
    found = reader.read_metadata().state_dict_metadata
    keys = sorted(_marker_keys({part: state[part] for part in parts}))
    targets = {key: torch.empty(found[key].size, dtype=found[key].properties.dtype) for key in keys}
    _dcp_load(targets, folder / DCP_DIR, no_dist=True)
    return join_tensors(state, targets)


def read_ema(folder: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The full EMA weights of a checkpoint (either layout) on the CPU, and its step."""
    state = read_full_state(folder, ("ema",))
    return state["ema"], int(state["step"])
