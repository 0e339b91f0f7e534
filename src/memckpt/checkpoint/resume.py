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


# trackers that never take a page the drain maps for one the program wrote,
# and need no userfaultfd of their own: armed while the drain runs
_BESIDE_DRAIN = ("mprotect", "compare")


def resume(cls: type[Checkpointer], store: StoreLike, epoch: int | None, *, lazy: bool = False,
           **kw: Any) -> Checkpointer:
    """See :meth:`Checkpointer.resume`; ``kw`` are the constructor's options.

    This is the way to continue a chain in a new process: the tracker starts
    right after the restore, so the next epoch is an increment. With an
    ``interval``, the first :meth:`~Checkpointer.maybe_checkpoint` is due one
    interval after the resume (the epoch resumed from is the last
    checkpoint); with ``"auto"``, the cost is first measured from the store's
    latest increments, if it holds any (else the first call checkpoints, to
    measure it).

    ``lazy``: the arena restored lazily (memckpt.restore(lazy=True)). A page
    the drain maps is not the program's write, so the tracker must not see
    it: mprotect and compare trackers start at once (a copy into a
    read-only page is no write; compare compares contents); the others
    (userfaultfd, soft-dirty) start once the drain is over, and this call
    waits for it."""
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
    arena = restore(st, epoch, lazy=lazy)
    try:
        if lazy and kw["tracker"] not in _BESIDE_DRAIN:
            arena.lazy.wait()  # type: ignore[attr-defined]
        ck = cls(arena, st, **kw)
    except BaseException:
        if lazy:
            arena.lazy._done.wait()  # type: ignore[attr-defined]  # it holds the pages till then
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
