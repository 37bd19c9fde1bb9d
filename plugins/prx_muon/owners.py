"""Which rank orthogonalises which matrix: a deterministic, FLOP-balanced assignment."""
from __future__ import annotations

import heapq
from collections.abc import Sequence


def assign_owners(costs: Sequence[float], ranks: int) -> list[int]:
    """Return the owner rank of each item, balancing the summed cost per rank.

    Longest-processing-time-first: items in decreasing cost (ties by index) each go to the rank
    with the least cost so far (ties by rank), which is within 4/3 of the best balance. Every
    rank computes the same answer from the same costs, so no communication is needed to agree.
    """
    if ranks < 1:
        raise ValueError(f"need at least one rank, got {ranks}")
    owners = [0] * len(costs)
    load = [(0.0, rank) for rank in range(ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        total, rank = heapq.heappop(load)
        owners[index] = rank
        heapq.heappush(load, (total + costs[index], rank))
    return owners
