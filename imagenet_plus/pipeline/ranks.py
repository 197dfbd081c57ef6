"""Process-group set-up and file rendezvous for the stages that split shards across ranks (generate, score).

Under ``accelerate launch`` or ``torchrun`` each process owns the shards ``s`` with
``s % world_size == rank``. On GPUs accelerate's ``PartialState()`` is used as is; without GPUs it
must be ``PartialState(cpu=True)`` (a gloo group), otherwise every process believes it is rank 0 of 1.

No rank ever waits in a collective (barrier, all_gather) while another does long work: NCCL aborts a
collective after its process-group timeout (10 minutes by default), which an ImageNet-sized dataset pass
or a slow shard exceeds. Instead ranks meet through files in the run folder (:class:`FileRendezvous`):

- a rank that finished its shards writes ``rank-NNNNN.done`` and may exit;
- the rank that needs everyone's output (the main one) polls for those files;
- a rank that fails writes ``rank-NNNNN.failed`` (its one-line error) before it exits; every other rank
  polls for such files between batches and while waiting, and stops with a :class:`UserError` naming the
  failed rank, so the whole job ends within seconds instead of at the timeout.

The one collective left is the start-up broadcast of the job's token (every rank is there at once). Its
timeout, and that of any collective, is the **process-group timeout**: ``IMAGENET_PLUS_PG_TIMEOUT`` (seconds,
environment variable; default: torch's own, 10 minutes for NCCL, 30 for gloo), handed to
``torch.distributed.init_process_group(timeout=...)`` through accelerate's ``PartialState``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_plus.errors import PeerRankFailed, UserError
from imagenet_plus.io.storage import location, remove_tree
from imagenet_plus.pipeline.config import env_seconds

#: Environment variable holding the process-group timeout in seconds.
PG_TIMEOUT_ENV = "IMAGENET_PLUS_PG_TIMEOUT"
#: Seconds between two looks at the marker folder while waiting.
POLL_SECONDS = 0.5
#: Marker suffixes.
DONE_SUFFIX = ".done"
FAILED_SUFFIX = ".failed"


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
        """Wait for every rank (no-op for one process). Only for short waits: see the module docstring."""
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


def process_group_timeout() -> Any:
    """The process-group timeout from ``IMAGENET_PLUS_PG_TIMEOUT`` (a ``timedelta``), or ``None`` for torch's default.

    Raises:
        UserError: the variable is set to something other than a positive number of seconds.
    """
    from datetime import timedelta

    seconds = env_seconds(PG_TIMEOUT_ENV)
    return None if seconds is None else timedelta(seconds=seconds)


def init_dist() -> Dist:
    """Join the launcher's process group (or be a single process) and pick the device.

    The process-group timeout is :func:`process_group_timeout` when set.
    """
    import torch
    from accelerate import PartialState

    kwargs: dict[str, Any] = {}
    timeout = process_group_timeout()
    if timeout is not None:
        kwargs["timeout"] = timeout
    state = PartialState(**kwargs) if torch.cuda.is_available() else PartialState(cpu=True, **kwargs)
    return Dist(rank=state.process_index, world_size=state.num_processes, device=state.device, state=state)


def job_token(dist: Dist) -> str:
    """A token shared by every rank of this launch (made by rank 0, broadcast once at start-up)."""
    token = uuid.uuid4().hex[:12]
    if dist.world_size == 1:
        return token
    import torch.distributed as tdist

    box = [token]
    device = dist.device if getattr(dist.device, "type", str(dist.device)) == "cuda" else None
    tdist.broadcast_object_list(box, src=0, device=device)
    return str(box[0])


class FileRendezvous:
    """Ranks meet through marker files instead of collectives (no process-group timeout can fire).

    Markers live in ``folder/{token}/`` (``folder`` is e.g. ``RunPaths.markers / "score"``, ``token`` from
    :func:`job_token`, so markers of an earlier launch never count). Typical use::

        rdv = FileRendezvous.start(paths.markers / "score", dist)
        try:
            for shard in mine:
                rdv.check()            # raises when another rank failed
                ...                    # the long work
        except BaseException as exc:
            rdv.fail(exc)              # others stop within POLL_SECONDS
            raise
        rdv.done()
        if dist.is_main:
            rdv.wait_for_all()         # polls; raises UserError if a rank failed
            ...                        # the work that needs every rank's output
            rdv.close()                # removes the markers
        # other ranks simply return

    Args:
        folder: the stage's marker folder.
        token: this launch's token (the same on every rank).
        rank: this process's rank.
        world_size: number of ranks.
        poll: seconds between two looks at the folder while waiting.
    """

    def __init__(self, folder: Path, token: str, rank: int, world_size: int, poll: float = POLL_SECONDS) -> None:
        self.root = location(folder)
        self.folder = self.root / token
        self.rank = rank
        self.world_size = world_size
        self.poll = poll
        self._last_check = 0.0
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def start(cls, folder: Path, dist: Dist, poll: float = POLL_SECONDS) -> FileRendezvous:
        """Agree on a token (one short broadcast) and, on the main rank, delete markers of earlier launches."""
        token = job_token(dist)
        rdv = cls(folder, token, dist.rank, dist.world_size, poll)
        if dist.is_main:
            for old in rdv.root.iterdir() if rdv.root.is_dir() else ():
                if old.name != token:
                    remove_tree(old)
        return rdv

    def _marker(self, rank: int, suffix: str) -> Path:
        return self.folder / f"rank-{rank:05d}{suffix}"

    def done(self) -> None:
        """Mark this rank's part finished."""
        self._marker(self.rank, DONE_SUFFIX).write_text("done\n", encoding="utf-8")

    def fail(self, error: BaseException | str) -> None:
        """Mark this rank failed, with its one-line error (every other rank stops on its next check)."""
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        if isinstance(error, BaseException) and not isinstance(error, UserError):
            message = f"{type(error).__name__}: {message}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._marker(self.rank, FAILED_SUFFIX).write_text(message.splitlines()[0] + "\n", encoding="utf-8")
        except OSError:
            pass  # the original error matters more than the marker

    def failures(self) -> dict[int, str]:
        """``{rank: error}`` of the ranks (other than this one) that failed."""
        out: dict[int, str] = {}
        for path in sorted(self.folder.glob(f"rank-*{FAILED_SUFFIX}")):
            rank = int(path.name[len("rank-") : -len(FAILED_SUFFIX)])
            if rank != self.rank:
                try:
                    out[rank] = path.read_text(encoding="utf-8").strip()
                except OSError:
                    out[rank] = "(unreadable marker)"
        return out

    def check(self, every: float = 0.0) -> None:
        """Raise when another rank failed (looks at the folder at most once per ``every`` seconds).

        Raises:
            PeerRankFailed: naming the failed rank and its error.
        """
        now = time.monotonic()
        if self.world_size == 1 or now - self._last_check < every:
            return
        self._last_check = now
        failed = self.failures()
        if failed:
            rank, message = next(iter(failed.items()))
            raise PeerRankFailed(rank, message)

    def finished(self) -> list[int]:
        """The ranks that marked their part done."""
        return [r for r in range(self.world_size) if self._marker(r, DONE_SUFFIX).is_file()]

    def wait_for_all(self, timeout: float | None = None) -> None:
        """Poll until every rank marked its part done (no collective).

        Raises:
            UserError: a rank failed, or ``timeout`` seconds passed (naming the ranks still missing).
        """
        start = time.monotonic()
        while True:
            self.check()
            missing = sorted(set(range(self.world_size)) - set(self.finished()))
            if not missing:
                return
            if timeout is not None and time.monotonic() - start > timeout:
                raise UserError(f"rank(s) {', '.join(map(str, missing))} did not finish within {timeout:.0f} s "
                                f"(no marker in {self.folder})")
            time.sleep(self.poll)

    def close(self) -> None:
        """Remove this launch's markers (main rank, once everything is done), and the folders left empty."""
        remove_tree(self.folder)
        for folder in (self.root, self.root.parent):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (another stage's markers) or already gone


@contextlib.contextmanager
def rank_share(folder: Path, dist: Dist) -> Iterator[FileRendezvous]:
    """The sequence every multi-process stage follows around this rank's share of the work.

    ``with rank_share(paths.markers / STAGE, dist) as rdv:`` starts the launch's rendezvous; inside, the
    rank does its shards (calling ``rdv.check()`` between batches to stop when another rank failed). An
    exception marks this rank failed for the others and propagates; a normal exit marks it done. What comes
    after (every rank waits for all, or only the main one does and then works on the whole run) is the
    stage's: ``rdv.wait_for_all()`` then ``rdv.close()`` on the rank that outlives the others.
    """
    rdv = FileRendezvous.start(folder, dist)
    try:
        yield rdv
    except BaseException as exc:
        rdv.fail(exc)
        raise
    rdv.done()
