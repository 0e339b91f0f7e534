"""Rollback: make an arena's content exactly an epoch's, writing back only
the pages that may differ from it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _signals
from ..capture import Context
from ..capture.base import NO_PAGES
from ..errors import MemckptError
from ..store.contract import StoreContract
from ..track import write_own
from .head import Head


@dataclass(frozen=True)
class RollbackInfo:
    """What :meth:`Checkpointer.rollback` did: the epoch the arena now holds,
    how many pages it wrote back (out of ``npages``), and how long it took."""

    epoch: int
    pages_written: int
    npages: int
    seconds: float


def rollback(store: StoreContract, ctx: Context, head: Head, epoch: int | None) -> RollbackInfo:
    """See :meth:`Checkpointer.rollback` (the epoch in flight waited for)."""
    t0 = time.perf_counter()
    target = epoch if epoch is not None else head.epoch
    if target is None:
        target = store.latest()
        if target is None:
            raise MemckptError(f"store {store.path} holds no epoch to roll back to")
    check_layout(store, ctx, target)
    # Signals deferred from the collect on: pages collected and then
    # dropped by an interrupt would be missing from the next epoch.
    # The write-back itself may be interrupted (it ends with no head).
    with _signals.deferred():
        pages = _roll_back(store, ctx, head, target)
    n = ctx.npages if pages is None else int(pages.size)
    return RollbackInfo(epoch=target, pages_written=n, npages=ctx.npages,
                        seconds=time.perf_counter() - t0)


def _roll_back(store: StoreContract, ctx: Context, head: Head, target: int) -> np.ndarray | None:
    """The collect, the write-back and the bookkeeping of a rollback to
    ``target`` (signals deferred by the caller); the pages written (None: all)."""
    collector = ctx.collector
    written = ctx.tracker.collect()
    if collector.carry.size:
        written = np.union1d(written, collector.carry)
    collector.carry = written  # collected, not yet written back: kept if what follows fails
    pages: np.ndarray | None = None
    if head.epoch is not None:
        try:
            changed = store.changed_pages(target, head.epoch)
        except MemckptError:
            changed = None  # the head is gone (compacted away, pruned)
        if changed is not None:
            pages = np.union1d(written, np.asarray(changed, dtype=np.uint64))
    try:
        with _signals.interruptible():
            _write_back(store, ctx, target, pages)
    except BaseException:
        # Partly written back: the arena matches no epoch now.
        head.lost()
        collector.carry = NO_PAGES
        ctx.tracker.collect()
        raise
    ctx.tracker.collect()  # the write-backs were tracked writes; the arena is `target` now
    collector.carry = NO_PAGES
    head.moved_to(target)
    return pages


def check_layout(store: StoreContract, ctx: Context, epoch: int) -> None:
    want = store.layout(epoch)
    have = ctx.arena.layout()
    if want["page_size"] != have["page_size"] or want["nbytes"] != have["nbytes"]:
        raise MemckptError(
            f"epoch {epoch} is of an arena of {want['nbytes']} bytes in pages of "
            f"{want['page_size']}, not this one ({have['nbytes']} in {have['page_size']})")
    n = len(want["arrays"])
    if have["arrays"][:n] != want["arrays"]:
        raise MemckptError(f"epoch {epoch} holds other arrays than this arena: "
                           f"{_names(want)} against {_names(have)} (or other shapes or offsets, "
                           "as after Arena.resize): rollback keeps the arena's layout; "
                           f"memckpt.restore(store, {epoch}) gives a new arena with that epoch's")


def _write_back(store: StoreContract, ctx: Context, epoch: int, pages: np.ndarray | None) -> None:
    dst = ctx.pages
    assert dst is not None
    adopted = ctx.arena.own_bytes() is not None  # its edge pages are shared: scratch, then own bytes
    if ctx.tracker.info.kernel_writes and not adopted:
        store.read_into(epoch, dst, pages=pages)
        return
    # The store may read(2) straight into `dst`, which fails with EFAULT on
    # pages this tracker protects: read into scratch memory, then copy.
    # The scratch is virtual until written: only the pages read take memory.
    scratch = np.empty_like(dst)
    store.read_into(epoch, scratch, pages=pages)
    if adopted:
        write_own(ctx.arena, dst, scratch, pages)
    elif pages is None:
        dst[...] = scratch
    else:
        idx = pages.view(np.int64)
        dst[idx] = scratch[idx]


def _names(layout: dict[str, Any]) -> list[str]:
    return [a["name"] for a in layout["arrays"]]
