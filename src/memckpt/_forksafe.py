"""Fork safety: in a child of ``fork()``, the parent's objects are detached.

A child made by ``os.fork()`` or multiprocessing's fork start method
inherits copies of every Checkpointer, DirtyTracker, epoch writer and store
lock of the parent, and with them the parent's kernel objects: the
userfaultfd (whose ioctls act on the parent's memory, whoever issues them),
the flock on STORE/lock (held as long as any process keeps the open file),
the epoch's half-written files. The parent's threads (persist, copier,
handler) are not in the child, and a lock one of them held at the fork stays
held there for good.

So every such object registers here when made, and one
``os.register_at_fork(after_in_child=...)`` hook detaches them all in the
child, before any code of the child runs: each closes the child's copies of
its fds, drops locks it may have inherited held, and from then on refuses
to act (:class:`~memckpt.errors.ForkDetached`) or, on close, lets go of the
child's copy only. The C core refuses on its own too (a pid check, see
csrc/include/memckpt.h), so a tracker is safe even where this hook does not
run (a child made by ``_Fork`` or a raw ``clone``).

The registry takes no lock: a lock held by another thread at the fork would
leave the hook deadlocked in the child.
"""
from __future__ import annotations

import itertools
import os
import sys
import weakref
from typing import Protocol

from .errors import ForkDetached

__all__ = ["register", "detached", "refusal", "CHILD_MAY"]

# What docs/fork.md says, in one sentence for the errors.
CHILD_MAY = ("a child of fork() may read the store (memckpt.Store(path), memckpt.restore()) "
             "and checkpoint arenas of its own into stores of its own; see docs/fork.md")


class Detachable(Protocol):
    def _detach_in_child(self) -> None:
        """Called once in a child of fork(): let go of what the parent owns."""


_ids = itertools.count()
_live: weakref.WeakValueDictionary[int, Detachable] = weakref.WeakValueDictionary()


def register(obj: Detachable) -> None:
    """Detach ``obj`` in every child of fork() made while it lives."""
    _live[next(_ids)] = obj


def detached(owner: int) -> bool:
    """True if the calling process is not ``owner`` (the pid that made the object)."""
    return os.getpid() != owner


def refusal(what: str, owner: int, action: str) -> ForkDetached:
    """The error for ``action`` asked of ``what`` in a child of its owner."""
    return ForkDetached(f"cannot {action}: {what} belongs to process {owner}, and this is a "
                        f"child of its fork() (pid {os.getpid()}), where it is detached and "
                        f"never acts on the parent's memory tracking, lock or files; "
                        f"{CHILD_MAY}", owner=owner)


def _after_fork_in_child() -> None:
    # oldest first: a Checkpointer before the tracker and writer it holds
    for key in sorted(_live.keys()):
        obj = _live.get(key)
        if obj is None:
            continue
        try:
            obj._detach_in_child()
        except Exception as exc:  # one object's failure must not leave the others attached
            print(f"memckpt: detaching {obj!r} in fork child {os.getpid()} failed: {exc!r}",
                  file=sys.stderr)


os.register_at_fork(after_in_child=_after_fork_in_child)
