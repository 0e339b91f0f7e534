"""The writer's head: what a Store knows of its store between its own writes,
so that begin() numbers the next epoch and ties it to its parent without
listing the directory or walking the chain (a checkpoint's cost must not grow
with the store's history).

It holds the newest epoch's number and the epochs whose chain it has seen
whole (every parent there, as many pages, every tie holding), and is kept up
to date by this Store's own commits and retirements. Anything that changes a
store's epochs takes the writer lock, so the head is good for as long as no
other writer has held the lock since this Store let go of it: each write
takes the lock through _writer_lock, which leaves a fresh random line in the
lock file when it lets go and drops the head unless the next take finds that
line still there (locking.py). Another process's writer (of any version: an
older one truncates the file), a writer killed while holding the lock, a
second Store object in this process, a child of fork(): each leaves another
line, and the next write of this Store lists the directory again. Readers
take no lock and keep no head: they list (epoch_numbers, latest) or look one
epoch up (info, chain), as they always did."""
from __future__ import annotations

import collections
import os
from typing import Any

from . import format as fmt
from . import locking
from .catalog import _link_of
from .verify import _Verifier

_TIPS = 64  # epochs whose whole chain a head remembers (a checkpointer continues from the newest)


def _token() -> bytes:
    """A line to leave in the lock file: no other holder writes the same."""
    return locking._line(f"- {locking._FREE} {os.urandom(16).hex()}")


class _Head:
    """The newest epoch's number (0: none yet) and the tips: epochs whose
    chain was whole when this Store last looked, or that it committed onto
    such a chain."""

    __slots__ = ("top", "tips")

    def __init__(self, top: int) -> None:
        self.top = top
        self.tips: collections.OrderedDict[int, None] = collections.OrderedDict()

    def whole(self, epoch: int) -> bool:
        return epoch in self.tips

    def add(self, epoch: int) -> None:
        self.tips[epoch] = None
        self.tips.move_to_end(epoch)
        while len(self.tips) > _TIPS:
            self.tips.popitem(last=False)


class _Heads(_Verifier):
    """The fifth layer of Store: the writer's head (see the module docstring)."""

    _head: _Head | None
    _left: bytes | None   # the line this Store's last lock leaves (or left) in the lock file
    _lock_gen = 0         # locks this Store took (store/prepared.py: a writer prepared before one is stale)

    def _writer_lock(self, role: str, any_holder: bool = False) -> locking._Lock:
        """The writer lock, taken for a write of this Store (StoreLocked if
        another writer holds it; with ``any_holder``, once it held it for
        _LOCK_WAIT_S); the head is dropped unless the lock file holds the
        line this Store left."""
        leave = _token()
        lock = locking._Lock(self.path, role, wait=locking._LOCK_WAIT_S, leave=leave,
                             any_holder=any_holder)
        self._took_lock(lock.found, leave)
        return lock

    def _held_lock(self, role: str) -> tuple[locking._HeldLock, bytes]:
        """A _HeldLock for compact/prune and the line it leaves: call
        _took_lock(held.found, leave) first thing inside its block."""
        leave = _token()
        return locking._HeldLock(self.path, role, leave), leave

    def _took_lock(self, found: bytes, leave: bytes) -> None:
        self._lock_gen += 1
        if self._left is None or found != self._left:
            self._head = None  # another writer held the lock since: what it did is unknown
        self._left = leave

    def _head_now(self) -> _Head:
        """The head (caller holds the lock): as kept, or found again by a
        listing when unknown or when an epoch numbered after its newest is
        there (a writer that took no lock: never number over it)."""
        head = self._head
        if head is not None and not os.path.lexists(self.path / fmt.manifest_name(head.top + 1)):
            return head
        nums = self.epoch_numbers()
        head = self._head = _Head(nums[-1] if nums else 0)
        return head

    def _committed(self, doc: dict[str, Any], key: tuple[int, int, int]) -> None:
        """A commit of this Store renamed the manifest ``doc`` (validated)
        into place, from a file of (inode, size, mtime) ``key``: cache it and
        its link as a read would, and move the head on."""
        epoch = doc["epoch"]
        self._cache_doc(epoch, key, doc, _link_of(doc, key))
        head = self._head
        if head is not None:
            head.top = max(head.top, epoch)
            if doc["kind"] == "full" or head.whole(doc["parent"]):
                head.add(epoch)

    def _forget(self, epoch: int) -> None:
        """Before the epoch's manifest is removed (retirement, caller holds
        the lock): out of the caches and the head."""
        with self._cache_lock:
            self._links.pop(epoch, None)
            self._manifests.pop(epoch, None)
        head = self._head
        if head is not None:
            if epoch >= head.top:  # never retired (prune keeps the newest): be safe anyway
                self._head = None
            else:
                head.tips.pop(epoch, None)
