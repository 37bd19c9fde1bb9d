"""The collectives that let each matrix be orthogonalised on exactly one rank.

Sharded parameters (FSDP2, ``Shard(0)``): :func:`gather_to_owners` sends every rank's row-shard
of each matrix to the matrix's owner in one ``all_to_all_single``; the owner orthogonalises the
full matrices; :func:`scatter_from_owners` sends each rank its rows of each result, again in one
``all_to_all_single``. Replicated parameters (DDP): every rank has the full matrices, so the
owner only has to hand its results to the others (:func:`broadcast_from_owners`).

Shards follow ``torch.chunk`` along dim 0, as DTensor's ``Shard(0)`` and FSDP2 do: rank r holds
rows ``[r·⌈m/N⌉, (r+1)·⌈m/N⌉)`` clipped to ``m``, so trailing ranks may hold fewer or none.
Payloads keep the dtype they are given (bf16 in Muon, the dtype Newton–Schulz runs in).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist


def shard_range(rows: int, ranks: int, rank: int) -> tuple[int, int]:
    """(start, stop) of the dim-0 rows that ``rank`` of ``ranks`` holds of a ``rows``-row matrix."""
    size = -(-rows // ranks)
    start = min(rank * size, rows)
    return start, min(start + size, rows)


def _shard_numel(shape: Sequence[int], ranks: int, rank: int) -> int:
    start, stop = shard_range(shape[0], ranks, rank)
    return (stop - start) * shape[1]


def _flat_cat(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in parts]) if parts else like.new_empty(0)


def gather_to_owners(
    shards: Sequence[torch.Tensor],
    shapes: Sequence[tuple[int, int]],
    owners: Sequence[int],
    group: dist.ProcessGroup,
) -> dict[int, torch.Tensor]:
    """Assemble, on each owner, the full matrices it owns from every rank's row-shard.

    ``shards[i]`` is this rank's shard of matrix ``i`` (global shape ``shapes[i]``), ``owners[i]``
    the rank (within ``group``) that owns it; all ranks pass the same ``shapes`` and ``owners``.
    Returns ``{i: full matrix}`` for the matrices this rank owns.
    """
    ranks, me = dist.get_world_size(group), dist.get_rank(group)
    mine = [i for i, owner in enumerate(owners) if owner == me]
    send_parts: list[list[torch.Tensor]] = [[] for _ in range(ranks)]
    for i, shard in enumerate(shards):
        send_parts[owners[i]].append(shard)
    send = _flat_cat([t for parts in send_parts for t in parts], shards[0])
    send_splits = [sum(t.numel() for t in parts) for parts in send_parts]
    recv_splits = [sum(_shard_numel(shapes[i], ranks, src) for i in mine) for src in range(ranks)]
    recv = send.new_empty(sum(recv_splits))
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)

    pieces: dict[int, list[torch.Tensor]] = {i: [] for i in mine}
    offset = 0
    for src in range(ranks):  # the buffer holds, per source rank, its shards of my matrices in order
        for i in mine:
            numel = _shard_numel(shapes[i], ranks, src)
            pieces[i].append(recv[offset : offset + numel].view(-1, shapes[i][1]))
            offset += numel
    return {i: torch.cat(parts) for i, parts in pieces.items()}


def scatter_from_owners(
    results: Mapping[int, torch.Tensor],
    shapes: Sequence[tuple[int, int]],
    owners: Sequence[int],
    group: dist.ProcessGroup,
    like: torch.Tensor,
) -> list[torch.Tensor]:
    """Send each rank its rows of every owned result; return this rank's shard of each matrix.

    ``results`` holds the full results of the matrices this rank owns; ``like`` gives the dtype
    and device of the payload. The inverse of :func:`gather_to_owners`.
    """
    ranks, me = dist.get_world_size(group), dist.get_rank(group)
    mine = [i for i, owner in enumerate(owners) if owner == me]
    send_parts = []
    for dest in range(ranks):
        for i in mine:
            start, stop = shard_range(shapes[i][0], ranks, dest)
            send_parts.append(results[i][start:stop])
    send = _flat_cat(send_parts, like)
    send_splits = [sum(_shard_numel(shapes[i], ranks, dest) for i in mine) for dest in range(ranks)]
    recv_splits = [
        sum(_shard_numel(shapes[i], ranks, me) for i, owner in enumerate(owners) if owner == src)
        for src in range(ranks)
    ]
    recv = like.new_empty(sum(recv_splits))
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)

    local: list[torch.Tensor | None] = [None] * len(shapes)
    offset = 0
    for src in range(ranks):  # per owner rank, my rows of its matrices in order
        for i, owner in enumerate(owners):
            if owner == src:
                numel = _shard_numel(shapes[i], ranks, me)
                local[i] = recv[offset : offset + numel].view(-1, shapes[i][1])
                offset += numel
    return local  # type: ignore[return-value]


def broadcast_from_owners(
    results: Mapping[int, torch.Tensor],
    shapes: Sequence[tuple[int, int]],
    owners: Sequence[int],
    group: dist.ProcessGroup,
    like: torch.Tensor,
) -> list[torch.Tensor]:
    """Give every rank every result: each owner broadcasts its results, packed in one buffer."""
    ranks, me = dist.get_world_size(group), dist.get_rank(group)
    full: list[torch.Tensor | None] = [None] * len(shapes)
    for src in range(ranks):
        owned = [i for i, owner in enumerate(owners) if owner == src]
        if not owned:
            continue
        sizes = [shapes[i][0] * shapes[i][1] for i in owned]
        if src == me:
            buffer = _flat_cat([results[i] for i in owned], like)
        else:
            buffer = like.new_empty(sum(sizes))
        dist.broadcast(buffer, group=group, group_src=src)
        for i, part in zip(owned, buffer.split(sizes)):
            full[i] = part.view(shapes[i])
    return full  # type: ignore[return-value]
