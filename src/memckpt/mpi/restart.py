"""Coordinator.resume: a job restarts from the newest global epoch that every
rank holds and verifies, falling back to older ones.

Rank 0 reads the global records (newest first; a damaged record commits
nothing and is skipped) and hands them to every rank. For each, every rank
checks its own part (its store holds the epoch, with the manifest digest the
record names, on an intact chain) and restores it (every page's digest
checked), and the ranks agree: all succeeded, or all let go of what they
restored and try the next older global epoch. So every rank resumes from the
same global epoch, or none does.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import Checkpointer
from ..checkpoint.schedule import Schedule
from ..errors import CorruptionError, MemckptError
from ..store import Store
from ..store.documents import manifest_identity
from . import agree, records
from .records import GlobalEpoch, RankEpoch
from .retention import GlobalRetention

if TYPE_CHECKING:
    from .coordinator import Coordinator, StorePath


def _store_of(root: Path, part: RankEpoch, store: StorePath | None) -> Path:
    if store is not None:
        return Path(store)
    p = Path(part.store)
    return p if p.is_absolute() else root / p


def check_part(path: Path, part: RankEpoch, number: int) -> None:
    """This rank's store holds the epoch global epoch ``number`` committed:
    the same manifest identity, on a chain whose ties hold."""
    with Store(path) as st:
        doc = st.manifest(part.epoch)  # EpochNotFound if it is gone
        if manifest_identity(doc) != part.digest:
            raise CorruptionError(
                f"{path}: epoch {part.epoch} has manifest digest {manifest_identity(doc)[:16]}..., "
                f"but global epoch {number} committed {part.digest[:16]}... (another epoch of "
                "that number: a different history)")
        st.chain(part.epoch)


def candidates(comm: Any, root: Path, number: int | None) -> list[GlobalEpoch]:
    """The global epochs to try, newest first, as rank 0 reads them (every rank)."""
    cands: list[GlobalEpoch] = []
    error = None
    if comm.Get_rank() == 0:
        try:
            cands = records.readable_records(root, comm.Get_size())
            if number is not None:
                cands = [c for c in cands if c.number == number]
                if not cands:
                    raise MemckptError(f"{records.global_dir(root)}: no valid record of "
                                       f"global epoch {number}")
            elif not cands:
                raise MemckptError(f"{records.global_dir(root)}: holds no committed global epoch "
                                   "to resume from")
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            error = e
    cands, text = agree.from_root(comm, (cands, None if error is None else str(error)))
    if text is not None:
        raise MemckptError(text) from error
    return list(cands)


def resume(cls: type[Coordinator], comm: Any, root: StorePath, *, store: StorePath | None,
           global_epoch: int | None, schedule_args: tuple[Any, ...], keep_last: int | None,
           checkpointer_kw: dict[str, Any]) -> Coordinator:
    """See :meth:`Coordinator.resume`."""
    root = Path(root)
    Schedule(*schedule_args)  # their errors before any restore (same arguments on every rank)
    GlobalRetention(keep_last)
    rank = comm.Get_rank()
    tried = []
    for rec in candidates(comm, root, global_epoch):
        part = rec.ranks[rank]
        path = _store_of(root, part, store)
        ck: Checkpointer | None = None
        why = None
        try:
            check_part(path, part, rec.number)
            ck = Checkpointer.resume(path, part.epoch, **checkpointer_kw)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            why = f"{type(e).__name__}: {e}"
        bad = agree.failures(agree.allgather(comm, why))
        if not bad:
            assert ck is not None
            coord = cls.__new__(cls)
            coord._setup(comm, ck, root, path, schedule_args, keep_last, None, "resume")
            coord._last = rec
            coord._retention.committed(ck.store, part.epoch)
            coord._schedule.restart(coord._schedule.clock())  # the first is one interval away
            return coord
        if ck is not None:
            arena = ck.arena
            ck.close()
            arena.close()
        tried.append(f"global epoch {rec.number} ({bad})")
        if rank == 0:
            warnings.warn(f"memckpt.mpi: not resuming from global epoch {rec.number}: {bad}; "
                          "trying the one before", RuntimeWarning, stacklevel=3)
    raise MemckptError(f"memckpt.mpi: {root}: no global epoch that every rank holds and "
                       f"verifies: {'; '.join(tried)}")
