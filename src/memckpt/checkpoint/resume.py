"""Checkpointer.resume: restore an epoch into a new arena and continue its
chain incrementally."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..capture import tracker_for
from ..errors import MemckptError
from ..restore import StoreLike, open_store, restore
from .options import check_args
from .schedule import interval_args

if TYPE_CHECKING:
    from .checkpointer import Checkpointer


def resume(cls: type[Checkpointer], store: StoreLike, epoch: int | None, **kw: Any) -> Checkpointer:
    """See :meth:`Checkpointer.resume`; ``kw`` are the constructor's options."""
    # before the restore, which may be long
    interval_args(kw["interval"], kw["mtbf"], kw["rpo"], kw["restart"])
    check_args(kw["mode"], kw["compress"], kw["full_every"], kw["staging"], kw["keep_last"],
               kw["threads"])
    kw["tracker"] = tracker_for(kw["mode"], kw["tracker"])
    st, owns = open_store(store, create=False)
    if epoch is None:
        epoch = st.latest()
        if epoch is None:
            raise MemckptError(f"store {st.path} holds no committed epoch to resume from")
    arena = restore(st, epoch)
    try:
        ck = cls(arena, st, **kw)
    except BaseException:
        arena.close()
        raise
    ck._owns_store = owns
    try:
        ck._tracker.collect()  # nothing should be there: the tracker began after the restore
        ck._head.moved_to(epoch)
        ck._schedule.seed(st.epochs() if ck._schedule.auto else [])
    except BaseException:
        ck.close()
        raise
    return ck
