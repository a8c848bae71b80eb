"""Co-located shard nodes share the machine's cores: each micro-batch runs with the threads its neighbours leave it.

Each node holds one slot of a small board in shared memory (``/dev/shm/shardline-cores-<uid>``): -1 while it is
idle, the monotonic time its micro-batch started while it is busy (0: the slot is free). The coordinator tells
every stage how many micro-batches of its model are in flight:
- one (a lone stream): only one stage of the pipeline works at a time, so the stage takes ``cores // busy`` threads,
  busy counting the nodes of the machine in a micro-batch right now (itself included): every core when the others
  wait;
- more: the stages work at the same time, and a neighbour idle at this instant will be busy in a moment, so the
  cores are split among every node present: ``cores // max(busy, nodes)``, as a static split would.
A slot is held with an open-file lock, which the kernel drops when the process dies; a node that starts clears
the slots nobody holds, and a busy mark older than ``STALE_S`` (a node killed mid-batch) is not counted. Nodes
that cannot see one board (separate machines or containers) each count only themselves, which is right for them.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SLOTS = 64
SLOT_BYTES = 8  # one float64: the monotonic time the slot's node became busy, IDLE while idle, 0.0 when free
IDLE = -1.0
STALE_S = 30.0  # a mark older than this is a node that died mid-batch


def _try_lock(fd: int, slot: int) -> bool:
    """Write-locks byte ``slot`` of the board without waiting. An open-file-description lock (Linux) belongs to
    this open file, not to the process, so two shares in one process hold different slots; it goes when the
    file is closed or the process dies. Elsewhere a POSIX lock, owned by the process."""
    try:
        if hasattr(fcntl, "F_OFD_SETLK"):  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
        else:  # pragma: no cover - not Linux
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
    except OSError:
        return False
    return True


def _held_elsewhere(fd: int, slot: int) -> bool:
    """Whether another open file holds byte ``slot``'s lock (a live node); False where that cannot be asked."""
    if not hasattr(fcntl, "F_OFD_GETLK"):  # pragma: no cover - not Linux
        return True
    probe = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
    return struct.unpack("hhqqi4x", probe)[0] != fcntl.F_UNLCK


def board_path() -> Path:
    return Path("/dev/shm") / f"shardline-cores-{os.getuid()}"


class CoreShare:
    """One node's slot on the board and the thread count its micro-batches run with."""

    def __init__(self, cores: int, path: Path | None = None, fixed_threads: int = 0) -> None:
        self.cores = max(1, cores)
        self.fixed_threads = fixed_threads  # > 0: the operator chose a count; use it always
        self.slot = -1
        self.path = path or board_path()
        self.threads = 0  # what the compute thread was last set to
        self._board: mmap.mmap | None = None
        self._fd = -1
        if fixed_threads <= 0:
            self._claim(self.path)

    def _claim(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size < SLOTS * SLOT_BYTES:
                os.ftruncate(fd, SLOTS * SLOT_BYTES)
            for slot in range(SLOTS):
                if not _try_lock(fd, slot):
                    continue
                self._fd, self.slot = fd, slot
                self._board = mmap.mmap(fd, SLOTS * SLOT_BYTES)
                for other in range(SLOTS):  # slots of nodes that died are free again
                    if other != slot and not _held_elsewhere(fd, other):
                        self._write(other, 0.0)
                self._mark(IDLE)
                return
            os.close(fd)
            logger.warning("%s: every one of %d slots is held; this node counts only itself", path, SLOTS)
        except OSError as e:  # no /dev/shm (not Linux) or not writable: count only this node
            logger.info("no core board at %s (%s); this node counts only itself", path, e)

    def _write(self, slot: int, value: float) -> None:
        assert self._board is not None
        self._board[slot * SLOT_BYTES:(slot + 1) * SLOT_BYTES] = struct.pack("d", value)

    def _mark(self, value: float) -> None:
        self._write(self.slot, value)

    def counts(self, now: float) -> tuple[int, int]:
        """(nodes busy within STALE_S, nodes present) on the board, this one included; (1, 1) without a board."""
        if self._board is None:
            return 1, 1
        marks = struct.unpack(f"{SLOTS}d", self._board[:SLOTS * SLOT_BYTES])
        busy = sum(1 for m in marks if m > 0.0 and now - m < STALE_S)
        present = sum(1 for m in marks if m == IDLE or (m > 0.0 and now - m < STALE_S))
        return max(1, busy), max(1, present)

    def threads_for(self, busy: int, present: int, in_flight: int) -> int:
        if self.fixed_threads > 0:
            return self.fixed_threads
        return max(1, self.cores // (busy if in_flight == 1 else max(busy, present)))

    @contextmanager
    def running(self, in_flight: int = 1) -> Iterator[int]:
        """Around one micro-batch, on the compute thread: marks this node busy and sets the threads it gets.
        in_flight: micro-batches of its model in flight (the coordinator says; 0 when it did not)."""
        now = time.monotonic()
        if self._board is not None:
            self._mark(now)
        threads = self.threads_for(*self.counts(now), in_flight)
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        try:
            yield threads
        finally:
            if self._board is not None:
                self._mark(IDLE)

    def describe(self) -> str:
        if self.fixed_threads > 0:
            return f"{self.fixed_threads} torch thread(s) per micro-batch (--threads)"
        if self._board is None:
            return f"{self.cores} torch thread(s) per micro-batch (no core board)"
        return f"{self.cores} core(s) shared with the busy co-located nodes (slot {self.slot} of {self.path})"

    def close(self) -> None:
        if self._board is not None:
            self._mark(0.0)
            self._board.close()
            self._board = None
        if self._fd >= 0:
            os.close(self._fd)  # drops the slot's lock
            self._fd = -1
