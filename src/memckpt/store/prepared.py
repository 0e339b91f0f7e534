"""The next epoch's writer, made ready off its caller's path.

A Checkpointer's ``checkpoint()`` begins an epoch before its pause, in the
program's time: numbering the epoch, checking its parent, taking the writer
lock, opening its pack and starting the C writer. Measured cold (the program
ran between checkpoints and its caches hold other things), that was 0.25 ms
warm to over 0.5 ms cold of a 4-page checkpoint whose pause is 0.03 ms
(``bench/probe_call.py``). So after each commit, on the persist thread, the
Store prepares the next writer: ``prepare_next(kind, parent)`` does all of
``begin()``'s work for an epoch with the layout, page count, compression and
threads of the last ``begin()``, except taking the lock, and the next
``begin()`` with the same arguments adopts it.

No lock is held between epochs (another process's prune or compact of the
store goes on as before), so the prepared writer names nothing: its pack is
the Store's spare, an unnamed file (store/spare.py). The lock is taken when
the epoch first needs a name in the store: its index file (commit, or the
files handed to a fork child), on the persist thread. Then the writer checks
that nothing it assumed changed since it was prepared: if the lock file holds
the line this Store left at its last write (store/head.py), no other writer
held the lock since and the head is as prepared; if not, the directory is
listed again, and the epoch goes on only if its number is still the next one
and its parent is still the same manifest. Otherwise the epoch fails with
StoreLocked, naming what changed, and nothing of it is left in the store (a
Checkpointer's next epoch takes its pages). This Store's own writes in the
meantime (a prune, a compaction, a begin() with other arguments) take the
lock, which makes the prepared writer stale: the next ``begin()`` drops it
and begins as before.
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ..errors import MemckptError, StoreLocked
from . import format as fmt
from . import locking
from .head import _Head
from .maintenance import _Maintenance
from .writer import EpochWriter

if TYPE_CHECKING:
    from .local import Store


class _BeginArgs(NamedTuple):
    """begin()'s arguments, checked (layout: the checked layout object,
    which begin() caches and returns again for an equal layout)."""

    kind: str
    parent: int | None
    layout: dict[str, Any]
    npages: int
    compress: str | None
    threads: int | None


class _Ready(NamedTuple):
    args: _BeginArgs
    gen: int        # the Store's lock count when prepared (see _Heads._took_lock)
    head: _Head     # the head it numbered from
    writer: EpochWriter


class _Prepared(_Maintenance):
    """The eighth layer of Store: the prepared writer (module docstring)."""

    _spare: Any
    _last_begin: _BeginArgs | None
    _ready: _Ready | None
    _ready_lock: threading.Lock

    def _init_prepared(self) -> None:
        """Called by Store.__init__, and in a fork child (the parent's
        prepared writer detached itself: its fds are the parent's)."""
        self._ready_lock = threading.Lock()
        self._ready = None
        self._last_begin = None

    def prepare_next(self, kind: str, parent: int | None) -> bool:
        """Prepare the writer of the next ``begin(kind, parent, ...)`` with
        the other arguments of the last ``begin()`` (module docstring).
        Best effort, for a thread other than the one that calls begin():
        returns whether a writer is ready; any error just means it is not."""
        last = self._last_begin
        head, gen = self._head, self._lock_gen
        if last is None or head is None or self._spare.disabled:
            return False
        args = last._replace(kind=kind, parent=parent)
        ready = self._ready
        if ready is not None and ready.args == args and ready.gen == gen:
            return True
        try:
            w = self._prepared_writer(args, head)
        except (MemckptError, OSError, ValueError):
            w = None
        if w is None:
            self.drop_prepared()
            return False
        self._swap_ready(_Ready(args, gen, head, w))
        return True

    def _prepared_writer(self, args: _BeginArgs, head: _Head) -> EpochWriter | None:
        epoch = head.top + 1
        if os.path.lexists(self.path / fmt.manifest_name(epoch)):
            return None  # a writer that took no lock numbered it: begin() will look
        parent_digest = None
        if args.parent is not None:
            if args.kind == "incremental" and not head.whole(args.parent):
                return None  # begin() checks the chain, under the lock
            plink = self._link(args.parent)
            if args.kind == "incremental" and plink.npages != args.npages:
                return None
            parent_digest = plink.identity
        fd = self._spare.take()
        if fd is None:
            self._spare.make(self.path)
            fd = self._spare.take()
            if fd is None:
                return None
        return EpochWriter(cast("Store", self), None, epoch=epoch, gen=0, kind=args.kind,
                           parent=args.parent, layout=args.layout, npages=args.npages,
                           compress=args.compress, parent_digest=parent_digest,
                           threads=args.threads, pack_fd=fd, prepared=True)

    def _swap_ready(self, ready: _Ready | None) -> None:
        with self._ready_lock:
            old, self._ready = self._ready, ready
        if old is not None and (ready is None or old.writer is not ready.writer):
            old.writer.abort()  # unnamed and unlocked: closes its files, removes nothing

    def drop_prepared(self) -> None:
        """Let the prepared writer go (its spare pack file is closed)."""
        self._swap_ready(None)

    def _adopt_prepared(self, args: _BeginArgs) -> EpochWriter | None:
        """The prepared writer for begin(``args``), adopted by the calling
        thread, or None (begin() then begins as before). Takes no lock."""
        self._last_begin = args
        with self._ready_lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return None
        if (ready.args == args and ready.gen == self._lock_gen and ready.head is self._head
                and ready.head.top + 1 == ready.writer.epoch):
            ready.writer._adopt()
            return ready.writer
        ready.writer.abort()
        return None

    def _lock_late(self, w: EpochWriter) -> locking._Lock:
        """The writer lock for ``w``, an adopted prepared writer, at its first
        name in the store: held only if the epoch can still be written as
        prepared (its number the next, its parent the same), else StoreLocked
        (or what the same-store check raises)."""
        self._check_same_store()  # before the lock file is made in a stranger's directory
        # on the persist thread: another process's prune or compaction is waited out
        lock = self._writer_lock("write", any_holder=True)
        try:
            self._sweep_if_due()
            head = self._head_now()
            why = None
            if head.top + 1 != w.epoch:
                why = f"it holds epoch {head.top} now"
            elif w.parent is not None:
                try:
                    if w.kind == "incremental" and not head.whole(w.parent):
                        self.chain(w.parent)
                        head.add(w.parent)
                    if self._link(w.parent).identity != w._parent_digest:
                        why = f"epoch {w.parent}, the parent, is not the manifest it was"
                except MemckptError as exc:
                    why = f"epoch {w.parent}, the parent, is gone or damaged ({exc})"
            if why is not None:
                raise StoreLocked(f"store {self.path}: another writer changed the store while "
                                  f"epoch {w.epoch} was being written ({why}); epoch {w.epoch} "
                                  f"is not committed")
            self._unsettled = (w.epoch, w.pack_name)
            return lock
        except BaseException:
            lock.release()
            raise
