"""The few collectives the coordinator needs, over an mpi4py communicator.

Ranks arrive at an agreement at different times (one rank's epoch takes
longer to become durable). A blocking MPI collective spins while it waits;
ranks oversubscribed on fewer cores (the usual test set-up, and a node whose
ranks outnumber its cores) would then take the core from the persist threads
they wait for. So the agreements a checkpoint makes are non-blocking
collectives of fixed-size byte rows (:func:`rows`, :func:`root_says`) polled
with short sleeps; the rare ones that carry text (an error, a restart's
records) first meet at a non-blocking barrier the same way, then exchange
pickles once everyone is there. mpi4py is never imported here: the
communicator's own methods suffice.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

_FIRST_SLEEP = 20e-6
_LONGEST_SLEEP = 2e-3


def _complete(req: Any) -> None:
    """Wait for a non-blocking request, sleeping, not spinning."""
    delay = _FIRST_SLEEP
    while not req.Test():
        time.sleep(delay)
        delay = min(delay * 2, _LONGEST_SLEEP)


def meet(comm: Any) -> None:
    """Return once every rank of ``comm`` has called it."""
    _complete(comm.Ibarrier())


def rows(comm: Any, row: bytes) -> list[bytes]:
    """Every rank's ``row`` (the same length on every rank), in rank order, on every rank."""
    mine = np.frombuffer(row, dtype=np.uint8).copy()
    out = np.empty((comm.Get_size(), mine.size), dtype=np.uint8)
    _complete(comm.Iallgather(mine, out))
    return [r.tobytes() for r in out]


def root_says(comm: Any, value: int) -> int:
    """Rank 0's ``value`` (an int64) on every rank."""
    buf = np.array([value], dtype=np.int64)
    _complete(comm.Ibcast(buf, root=0))
    return int(buf[0])


def allgather(comm: Any, value: Any) -> list[Any]:
    """Every rank's ``value`` (small, picklable), in rank order, on every rank."""
    meet(comm)
    return list(comm.allgather(value))


def from_root(comm: Any, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    meet(comm)
    return comm.bcast(value, root=0)


def failures(parts: list[str | None]) -> str:
    """The ranks whose part is an error text, as one sentence ('' if none)."""
    bad = [f"rank {r}: {p}" for r, p in enumerate(parts) if p is not None]
    return "; ".join(bad)
