"""Process-group set-up shared by the stages that split shards across ranks (generate, score).

Under ``accelerate launch`` or ``torchrun`` each process owns the shards ``s`` with
``s % world_size == rank``. On GPUs accelerate's ``PartialState()`` is used as is; without GPUs it
must be ``PartialState(cpu=True)``, otherwise every process believes it is rank 0 of 1 (see
design.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int
    world_size: int
    device: Any  # torch.device
    state: Any  # accelerate.PartialState

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.world_size > 1:
            self.state.wait_for_everyone()

    def owns(self, shard_index: int) -> bool:
        """Whether this rank owns shard ``shard_index``."""
        return owner_of(shard_index, self.world_size) == self.rank


def owner_of(shard_index: int, world_size: int) -> int:
    """The rank that owns a shard: ``shard_index % world_size``."""
    return shard_index % world_size


def shards_of_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shard indices a rank owns, in order."""
    return [s for s in range(num_shards) if owner_of(s, world_size) == rank]


def init_dist() -> Dist:
    """Join the launcher's process group (or be a single process) and pick the device."""
    import torch
    from accelerate import PartialState

    state = PartialState() if torch.cuda.is_available() else PartialState(cpu=True)
    return Dist(rank=state.process_index, world_size=state.num_processes, device=state.device, state=state)
