"""This process's (rank, world size): from torch.distributed when a process group is up, else (0, 1)."""
from __future__ import annotations

import torch

from gepalib import dist


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the active process group; ``(0, 1)`` in a single process."""
    if dist.active():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


__all__ = ["rank_world"]
