"""Coordinator: coordinated checkpoints of the ranks of an MPI job.

Each rank checkpoints its own arena into its own store with a
:class:`memckpt.Checkpointer`; the coordinator makes the ranks' epochs one
*global epoch* (docs/mpi.md):

1. :meth:`Coordinator.checkpoint` (collective): every rank takes its epoch
   (the pause) and the ranks meet, so it returns on every rank only once
   every rank's pause is over. The epochs persist in the background.
2. :meth:`GlobalPending.result` (collective; also run by the next
   ``checkpoint()``, :meth:`~Coordinator.wait` and :meth:`~Coordinator.close`):
   each rank waits until its epoch is durable, the ranks agree that all are,
   and rank 0 commits the global record naming every rank's epoch and its
   manifest digest (memckpt.mpi.records). Without the record there is no
   global epoch, whatever the ranks' stores hold.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import time
from pathlib import Path
from typing import Any

from ..arena import Arena
from ..checkpoint import Checkpointer, PendingEpoch
from ..checkpoint.schedule import Schedule
from ..errors import MemckptError
from ..store.documents import manifest_identity
from ..tuning import Recommendation
from . import agree, records
from .records import GlobalEpoch, RankEpoch
from .retention import GlobalRetention

StorePath = str | os.PathLike[str]

# the fixed rows the ranks exchange: (taken, pause_s) after the pause;
# (durable, epoch, pause_s, total_s, manifest digest) before the commit
_PAUSE_ROW = "<?d"
_EPOCH_ROW = "<?qdd32s"


def rank_store(root: StorePath, rank: int) -> Path:
    """Where rank ``rank`` keeps its store under a shared ``root``."""
    return Path(root) / f"rank-{rank:05d}"


def _store_name(root: Path, path: Path) -> str:
    """A rank's store as its record names it: relative to the root when under it
    (the root may move), else absolute."""
    path = path.absolute()
    try:
        return str(path.relative_to(root.absolute()))
    except ValueError:
        return str(path)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class GlobalPending:
    """A global epoch whose ranks have taken their epochs, not yet committed:
    what :meth:`Coordinator.checkpoint` returns. ``number``, ``label`` and
    ``pause_s`` (the slowest rank's pause) are known at once; ``epoch`` is
    this rank's :class:`memckpt.PendingEpoch`. :meth:`result` is collective."""

    def __init__(self, coord: Coordinator, number: int, epoch: PendingEpoch,
                 label: str | None, pause_s: float) -> None:
        self._coord = coord
        self.number = number
        self.epoch = epoch
        self.label = label
        self.pause_s = pause_s
        self.call_s: float | None = None  # how long checkpoint() blocked this rank
        self._record: GlobalEpoch | None = None
        self._error: MemckptError | None = None

    def done(self) -> bool:
        """True once this global epoch is committed or has failed (on this rank's view)."""
        return self._record is not None or self._error is not None

    def result(self) -> GlobalEpoch:
        """Collective: wait until every rank's epoch is durable, agree, commit
        the global record; return it on every rank. MemckptError on every rank
        (naming the ranks and why) if any rank's epoch or the record failed:
        then there is no global epoch ``number``."""
        if self._record is None and self._error is None:
            self._coord._finish(self)
        if self._error is not None:
            raise self._error
        assert self._record is not None
        return self._record

    def __repr__(self) -> str:
        state = ("committed" if self._record else "failed" if self._error else "pending")
        return f"<memckpt.mpi.GlobalPending {self.number} {state}>"


class Coordinator:
    """Coordinated checkpoints of ``arena`` (this rank's) over the ranks of
    ``comm`` (an mpi4py communicator). Global commit records go to
    ``ROOT/global/`` (written by rank 0); each rank's store is
    ``ROOT/rank-NNNNN`` unless ``store`` gives this rank its own (a node-local
    disk, say). ``interval``, ``mtbf``, ``rpo`` and ``restart`` are
    :meth:`maybe_checkpoint`'s, decided on rank 0 for all. ``keep_last=K``
    keeps the last K global epochs restorable and prunes the ranks' older
    epochs after each global commit (memckpt.mpi.retention; it is not the
    rank Checkpointer's, which would prune before the ranks agree). The
    other keyword arguments go to each rank's :class:`memckpt.Checkpointer`.

    Every method but the properties is collective: every rank calls it, in
    the same order. A collective raises on every rank or on none.
    """

    def __init__(self, comm: Any, arena: Arena, root: StorePath, *,
                 store: StorePath | None = None, interval: float | str | None = None,
                 mtbf: float | str | None = None, rpo: float | str | None = None,
                 restart: float | str = 0, keep_last: int | None = None,
                 **checkpointer_kw: Any) -> None:
        schedule_args = (interval, mtbf, rpo, restart)
        rank = comm.Get_rank()
        path = Path(store) if store is not None else rank_store(root, rank)
        ck: Checkpointer | None = None
        error = None
        try:
            Schedule(*schedule_args)  # their errors before any store is made
            GlobalRetention(keep_last)
            path.parent.mkdir(parents=True, exist_ok=True)
            ck = Checkpointer(arena, path, **checkpointer_kw)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            error = e
        self._setup(comm, ck, Path(root), path, schedule_args, keep_last, error, "start")

    def _setup(self, comm: Any, ck: Checkpointer | None, root: Path, store: Path,
               schedule_args: tuple[Any, ...], keep_last: int | None,
               error: BaseException | None, what: str) -> None:
        """Agree that every rank made its checkpointer (else close it and raise
        on every rank), then the schedule and the next global number."""
        bad = agree.failures(agree.allgather(comm, None if error is None else _error_text(error)))
        if bad:
            if ck is not None:
                ck.close()
            raise MemckptError(f"memckpt.mpi: could not {what} the coordinated checkpointer "
                               f"under {root}: {bad}") from error
        assert ck is not None
        given = agree.allgather(comm, repr((*schedule_args, keep_last)))
        if len(set(given)) > 1:
            ck.close()
            raise ValueError("memckpt.mpi: the ranks gave different interval arguments "
                             f"(interval, mtbf, rpo, restart, keep_last): {given}")
        self._comm = comm.Dup()  # our collectives never meet the program's messages
        self._rank, self._size = comm.Get_rank(), comm.Get_size()
        self._ck = ck
        self._root = root
        self._names = agree.allgather(self._comm, _store_name(root, store))
        self._schedule = Schedule(*schedule_args)
        self._retention = GlobalRetention(keep_last)
        self._pending: GlobalPending | None = None
        self._last: GlobalEpoch | None = None
        self._closed = False
        self._resumed = self._schedule.clock()
        newest = 0
        if self._rank == 0:
            records.sweep_tmp(root)
            newest = max(records.record_numbers(root), default=0)
        self._next = int(agree.from_root(self._comm, newest)) + 1

    @classmethod
    def resume(cls, comm: Any, root: StorePath, *, store: StorePath | None = None,
               global_epoch: int | None = None, interval: float | str | None = None,
               mtbf: float | str | None = None, rpo: float | str | None = None,
               restart: float | str = 0, keep_last: int | None = None,
               **checkpointer_kw: Any) -> Coordinator:
        """Collective: restart a job from the newest global epoch under ``root``
        (or ``global_epoch``) that every rank holds and verifies, older ones
        tried in turn (memckpt.mpi.restart). Each rank restores its own part
        into a new arena (:attr:`arena`) and continues its chain with
        :meth:`memckpt.Checkpointer.resume`; :attr:`last` is the global epoch
        resumed from. The job must have as many ranks as the records name.
        MemckptError on every rank if no global epoch qualifies."""
        from .restart import resume
        return resume(cls, comm, root, store=store, global_epoch=global_epoch,
                      schedule_args=(interval, mtbf, rpo, restart), keep_last=keep_last,
                      checkpointer_kw=checkpointer_kw)

    # -- properties ---------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def root(self) -> Path:
        return self._root

    @property
    def checkpointer(self) -> Checkpointer:
        """This rank's checkpointer (its store: ``checkpointer.store``)."""
        return self._ck

    @property
    def arena(self) -> Arena:
        return self._ck.arena

    @property
    def last(self) -> GlobalEpoch | None:
        """The last global epoch committed (or resumed from) by this job."""
        return self._last

    @property
    def interval(self) -> float | None:
        """Rank 0's interval (the one that decides); None on the other ranks."""
        return self._schedule.interval if self._rank == 0 else None

    @property
    def recommendation(self) -> Recommendation | None:
        return self._schedule.recommendation if self._rank == 0 else None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- checkpoint ---------------------------------------------------------------
    def maybe_checkpoint(self, label: str | None = None) -> GlobalPending | None:
        """Collective, for a loop to call every step: rank 0 decides whether a
        checkpoint is due (its clock, its interval) and every rank follows
        (one small broadcast). ValueError on every rank without an interval."""
        self._check_open()
        if not self._schedule.enabled:
            raise ValueError("maybe_checkpoint() needs an interval: make the Coordinator with "
                             "interval=SECONDS (or a duration such as '5m'), or "
                             "interval='auto' and mtbf=...; or call checkpoint() yourself")
        due = self._schedule.is_due() if self._rank == 0 else None
        if not self._comm.bcast(due, root=0):
            return None
        return self.checkpoint(label)

    def checkpoint(self, label: str | None = None) -> GlobalPending:
        """Collective: commit the global epoch before (if still pending; its
        failure is raised here and no epoch is taken, like the
        Checkpointer's), then take this rank's epoch and return once every
        rank's pause is over. The global epoch is committed by its
        :meth:`GlobalPending.result` (or the next checkpoint, wait, close)."""
        self._check_open()
        self._finish_pending()
        started = time.perf_counter()
        pending: PendingEpoch | None = None
        error: BaseException | None = None
        try:
            pending = self._ck.checkpoint(label)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            error = e
        parts = [struct.unpack(_PAUSE_ROW, r) for r in
                 agree.rows(self._comm, struct.pack(_PAUSE_ROW, error is None,
                                                    pending.pause_s if pending else 0.0))]
        number = self._next
        self._next += 1  # a failed number is never reused: its ranks' epochs may commit
        if not all(ok for ok, _ in parts):
            # a rank that took its epoch lets it commit: it belongs to no global epoch
            bad = self._why(error)
            raise MemckptError(f"memckpt.mpi: global epoch {number} was not taken: {bad}") from error
        assert pending is not None
        g = GlobalPending(self, number, pending, label, max(pause for _, pause in parts))
        self._pending = g
        self._resumed = self._schedule.clock()
        self._schedule.restart(self._resumed)
        g.call_s = time.perf_counter() - started
        return g

    def _finish_pending(self) -> None:
        g, self._pending = self._pending, None
        if g is not None and not g.done():
            g.result()

    def _finish(self, g: GlobalPending) -> None:
        """The agreement and the commit of global epoch ``g`` (collective)."""
        if self._pending is g:
            self._pending = None
        error: BaseException | None = None
        row = struct.pack(_EPOCH_ROW, False, 0, 0.0, 0.0, b"")
        try:
            info = g.epoch.result()
            digest = manifest_identity(self._ck.store.manifest(info.epoch))
            row = struct.pack(_EPOCH_ROW, True, info.epoch, info.pause_s, info.total_s,
                              bytes.fromhex(digest))
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            error = e
        # the agreement: every rank's verdict, epoch and digest, on every rank
        parts = [struct.unpack(_EPOCH_ROW, r) for r in agree.rows(self._comm, row)]
        where = f"memckpt.mpi: global epoch {g.number} under {self._root}"
        if not all(p[0] for p in parts):
            g._error = MemckptError(f"{where} is not committed (no record written): "
                                    f"{self._why(error)}")
            return
        rec = GlobalEpoch(g.number, tuple(RankEpoch(r, self._names[r], p[1], p[4].hex())
                                          for r, p in enumerate(parts)),
                          records.now(), g.label, max(p[2] for p in parts),
                          max(p[3] for p in parts))
        wrote: str | None = None
        if self._rank == 0:
            try:
                records.write_record(self._root, rec)
            except Exception as e:  # noqa: BLE001 - every rank must hear of it
                wrote = _error_text(e)
        if agree.root_says(self._comm, wrote is not None):
            wrote = agree.from_root(self._comm, wrote)
            g._error = MemckptError(f"{where}: rank 0 could not write the record: {wrote}")
            return
        g._record = self._last = rec
        self._retention.committed(self._ck.store, parts[self._rank][1])
        if self._schedule.auto:
            # the job's checkpoint cost is its slowest rank's; same numbers on every rank
            own = self._ck.store.info(parts[self._rank][1])
            self._schedule.measured(dataclasses.replace(own, total_s=rec.total_s), self._resumed)

    def _why(self, error: BaseException | None) -> str:
        """After an agreement said some rank failed: which, and why (collective)."""
        return agree.failures(agree.allgather(self._comm, None if error is None
                                              else _error_text(error)))

    def wait(self) -> GlobalEpoch | None:
        """Collective: commit the pending global epoch, if any; return the last one."""
        self._check_open()
        self._finish_pending()
        return self._last

    # -- lifetime -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the coordinator is closed")

    def close(self) -> None:
        """Collective: commit the pending global epoch, then close this rank's
        checkpointer (the arena stays open: it is the caller's). A pending
        epoch's failure is raised after everything is closed."""
        if self._closed:
            return
        try:
            self._finish_pending()
        finally:
            self._closed = True
            try:
                self._ck.close()
            finally:
                self._comm.Free()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        last = self._last.number if self._last else None
        return (f"<memckpt.mpi.Coordinator rank {self._rank}/{self._size} -> {self._root}, "
                f"last global epoch {last}>")
