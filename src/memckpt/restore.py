"""Restore an epoch into a new arena, in this process or any other."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .arena import Arena, layout_dtype
from .errors import FormatError, MemckptError
from .kernel import features
from .track import adopted_view
# one open_store for the checkpointer, restore and the CLI (re-exported here for them)
from .store.contract import StoreLike, open_store

__all__ = ["StoreLike", "arena_from_layout", "open_store", "restore"]


@contextmanager
def _closed_on_error(arena: Arena) -> Iterator[None]:
    """Unmap a half-built arena if building it fails (it is the caller's otherwise)."""
    try:
        yield
    except BaseException:
        try:
            arena.close()
        except BufferError:
            pass  # something still holds an array: the mapping goes with it
        raise


# what Arena.layout() records and an arena cannot be rebuilt without
_LAYOUT_KEYS = ("page_size", "nbytes", "arrays")


def arena_from_layout(layout: dict[str, Any], where: str = "the layout") -> Arena:
    """An empty arena with ``layout``'s arrays (from ``Arena.layout()``), each
    at the offset recorded; FormatError if this machine cannot lay it out so,
    or if ``layout`` is no arena's (``where`` names it in the error)."""
    missing = [k for k in _LAYOUT_KEYS if not isinstance(layout, dict) or k not in layout]
    if missing:
        raise FormatError(
            f"{where} holds no arena's layout (it has no {', '.join(repr(k) for k in missing)}): "
            "it was written with Store.begin(layout=...) rather than by a Checkpointer, so "
            "memckpt.restore cannot rebuild its arena; read its pages with Store.read_into")
    page_size = features().page_size
    if layout["page_size"] != page_size:
        raise FormatError(f"the epoch was taken with pages of {layout['page_size']} bytes; "
                          f"this machine's are {page_size}")
    arena = Arena(int(layout["nbytes"]), hugepages=bool(layout.get("hugepages", False)))
    with _closed_on_error(arena):
        if arena.nbytes != layout["nbytes"]:
            raise FormatError(f"the layout's size {layout['nbytes']} is not whole pages")
        for e in layout["arrays"]:
            arena.array(e["name"], tuple(e["shape"]), layout_dtype(e), offset=e["offset"])
            if "adopted" in e:  # a buffer memckpt.track() adopted: its own array (track.py)
                adopted_view(arena, e)
        got = arena.layout()["arrays"]
        for want, have in zip(layout["arrays"], got):
            if (have["offset"], have["nbytes"]) != (want["offset"], want["nbytes"]):
                raise FormatError(
                    f"array {want['name']!r} recorded at offset {want['offset']} "
                    f"({want['nbytes']} bytes) lands at {have['offset']} ({have['nbytes']} bytes)")
    return arena


def restore(store: StoreLike, epoch: int | None = None, *, verify: bool = True,
            threads: int | None = None, lazy: bool = False,
            prefetch: str | None = "recorded") -> Arena:
    """A new arena holding ``epoch`` (default: the latest) of ``store`` (a
    path or a :class:`memckpt.Store`): the same arrays (names, dtypes,
    shapes, offsets) and, bit for bit, the same content. Its arrays are
    ``arena.arrays()``.

    Every page read is checked against its BLAKE3 digest, and a damaged page
    is a :class:`memckpt.CorruptionError` naming the epoch, the pack file and
    the page. ``verify=False`` skips that check: only for a store verified
    already (``memckpt verify`` or :meth:`memckpt.Store.verify`) and not
    written to since, since a damaged page is then restored silently. The
    pages are read and checked on ``threads`` threads (default: the CPUs this
    process may use).

    ``lazy=True`` returns the arena before its pages are read: each page is
    read, checked and mapped when the program first touches it (a
    userfaultfd handler in C), while ``threads`` drain threads fill the
    rest, first in the order given by ``prefetch``: ``"recorded"`` (the
    first-touch order of the last lazy restore of this epoch, recorded
    beside it; plain order when there is none), ``"sequential"`` (page
    order), or None (the packs' order, the fastest to read). ``arena.lazy``
    is then a :class:`memckpt.lazy.LazyRestore`: ``arena.lazy.wait()``
    waits for the drain and returns its figures, and raises
    ``CorruptionError`` if a page was damaged (such a page is never mapped
    with wrong bytes: touching it raises SIGBUS). See docs/restore.md.

    To keep checkpointing what was restored, use
    :meth:`memckpt.Checkpointer.resume` instead: it continues the chain
    incrementally, where a checkpointer handed this arena starts with a full
    epoch.
    """
    t0 = time.perf_counter()
    st, _ = open_store(store, create=False)
    if epoch is None:
        epoch = st.latest()
        if epoch is None:
            raise MemckptError(f"store {st.path} holds no committed epoch")
    arena = arena_from_layout(st.layout(epoch), f"epoch {epoch} of store {st.path}")
    if lazy:
        from .lazy import restore_lazy
        with _closed_on_error(arena):
            arena.lazy = restore_lazy(arena, st, epoch, verify=verify,  # type: ignore[attr-defined]
                                      threads=threads, prefetch=prefetch, t0=t0)
        return arena
    with _closed_on_error(arena):
        pages = np.frombuffer(arena.buffer(), dtype=np.uint8).reshape(arena.npages, arena.page_size)
        # a fresh arena: sparse stays sparse; the blocks the epoch fills wholly
        # come as 2 MiB pages, split back to 4 KiB for tracking (csrc/read_fill.c)
        st.read_into(epoch, pages, out_is_zero=True, verify=verify, threads=threads,
                     fill_huge=not arena.hugepages)
        del pages
    return arena
