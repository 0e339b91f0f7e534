"""The few collectives the coordinator needs, over an mpi4py communicator.

Ranks arrive at an agreement at different times (one rank's epoch takes
longer to become durable). A blocking MPI collective spins while it waits;
ranks oversubscribed on fewer cores (the usual test set-up, and a node whose
ranks outnumber its cores) would then take the core from the persist threads
they wait for. So each agreement first meets at a non-blocking barrier polled
with short sleeps, and only then exchanges its few bytes, when everyone is
there. mpi4py is never imported here: the communicator's own methods suffice.
"""
from __future__ import annotations

import time
from typing import Any

_FIRST_SLEEP = 20e-6
_LONGEST_SLEEP = 2e-3


def meet(comm: Any) -> None:
    """Return once every rank of ``comm`` has called it, sleeping, not spinning."""
    req = comm.Ibarrier()
    delay = _FIRST_SLEEP
    while not req.Test():
        time.sleep(delay)
        delay = min(delay * 2, _LONGEST_SLEEP)


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
