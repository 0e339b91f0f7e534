"""Route numpy's allocations into an arena: :func:`allocating`.

Inside ``with memckpt.allocating(arena):`` every numpy array of at least
``threshold`` bytes that the current thread creates, whatever library creates
it, gets its memory from ``arena`` (numpy's data-memory handler, NEP 49,
memckpt._alloc), so that a package which allocates its own state is
checkpointed without patches. The arena hands out whole pages
(:class:`Blocks`: first fit over a free list, page-aligned blocks); each live
block is an array of the arena's layout, named ``numpy@OFFSET`` (uint8, its
requested size) until :meth:`memckpt.Arena.name_array` names and types it,
so checkpoints and restores carry it like any array.
"""
from __future__ import annotations

import bisect
import sys
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _alloc
from .errors import ArenaFull

if TYPE_CHECKING:
    from .arena import Arena

__all__ = ["allocating", "Blocks", "blocks_of"]

_ON_FULL = ("error", "fallback")


class Blocks:
    """The allocator over an arena's free pages that numpy's handler calls
    (with the GIL held). ``live`` maps a block's offset to its page-rounded
    size; ``holes`` are freed blocks, sorted by offset and coalesced; fresh
    blocks come from the arena's first free page (zero-filled already)."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.live: dict[int, tuple[int, str]] = {}  # offset -> (rounded size, layout name)
        self.holes: list[tuple[int, int]] = []       # (offset, size)
        self.full: str | None = None                 # the last exhaustion, for allocating()
        self.errors: list[BaseException] = []        # bugs met inside the handler

    def alloc(self, size: int) -> tuple[int, bool] | None:
        """(address, fresh) of a block of ``size`` bytes, (0, False) if the
        arena has no room (the reason kept in :attr:`full`), or None for an
        allocation of memckpt's own (a checkpoint's page lists and staging,
        a store's buffers, taken inside the block): those get ordinary memory."""
        from .arena import _layout_entry
        if _from_memckpt(sys._getframe(1)):
            return None
        a = self.arena
        ps = a.page_size
        need = max(-(-size // ps) * ps, ps)
        with a._lock:
            if a.closed:
                self.full = f"the arena is closed: no room for a {size}-byte numpy array"
                return 0, False
            fresh = True
            for i, (off, hsize) in enumerate(self.holes):
                if hsize >= need:
                    fresh = False
                    if hsize == need:
                        del self.holes[i]
                    else:
                        self.holes[i] = (off + need, hsize - need)
                    break
            else:
                if need > a.nbytes - a._next:
                    self.full = (f"a {size}-byte numpy array does not fit in the arena "
                                 f"({a.nbytes - a._next} of {a.nbytes} bytes left at its end, "
                                 f"{sum(h for _, h in self.holes)} in {len(self.holes)} freed blocks)")
                    return 0, False
                off = a._next
                a._next += need
            name = f"numpy@{off}"
            entry = _layout_entry(name, np.dtype(np.uint8), (size,), off, size)
            keys = [e["offset"] for e in a._layout]
            a._layout.insert(bisect.bisect(keys, off), entry)
            self.live[off] = (need, name)
        return a.address + off, fresh

    def size_of(self, addr: int) -> int:
        off = addr - self.arena.address
        for e in self.arena._layout:
            if e["offset"] == off and off in self.live:
                return int(e["nbytes"])
        return 0

    def free(self, addr: int) -> None:
        a = self.arena
        off = addr - a.address
        with a._lock:
            need, name = self.live.pop(off)
            a._layout[:] = [e for e in a._layout if e["offset"] != off or e["name"] != name]
            i = bisect.bisect(self.holes, (off, need))
            self.holes.insert(i, (off, need))
            # coalesce with the hole after, then the one before
            if i + 1 < len(self.holes) and off + need == self.holes[i + 1][0]:
                self.holes[i] = (off, need + self.holes.pop(i + 1)[1])
            if i > 0 and self.holes[i - 1][0] + self.holes[i - 1][1] == off:
                prev = self.holes.pop(i - 1)
                self.holes[i - 1] = (prev[0], prev[1] + self.holes[i - 1][1])

    def failed(self, size: int, exc: BaseException) -> None:
        self.errors.append(exc)
        self.full = f"the arena's allocator failed for a {size}-byte array: {exc!r}"

    def name(self, arr: np.ndarray, name: str) -> None:
        """Give the block holding ``arr`` the name, dtype and shape of
        ``arr`` in the arena's layout: ``arr`` starts at the block's first
        byte and is C-contiguous, or is a view of such an array (a field's
        interior inside its ghost cells, say), which is then the one named."""
        from .arena import _layout_entry
        a = self.arena
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"name_array needs a numpy array, not {type(arr).__name__}")
        while (arr.ctypes.data - a.address not in self.live or not arr.flags.c_contiguous) \
                and isinstance(arr.base, np.ndarray):
            arr = arr.base
        off = arr.ctypes.data - a.address
        if not arr.flags.c_contiguous:
            off = -1
        with a._lock:
            if off not in self.live:
                raise ValueError("the array does not start a block of this arena "
                                 "(made inside memckpt.allocating(arena) and still alive)")
            if any(e["name"] == name for e in a._layout) or name in a._arrays:
                raise ValueError(f"the arena already has an array named {name!r}")
            need, old = self.live[off]
            if arr.nbytes > need:
                raise ValueError(f"the array ({arr.nbytes} bytes) overruns its block ({need})")
            for i, e in enumerate(a._layout):
                if e["name"] == old:
                    a._layout[i] = _layout_entry(name, arr.dtype, arr.shape, off, arr.nbytes)
            self.live[off] = (need, name)


_lock = threading.Lock()


def _from_memckpt(frame: Any) -> bool:
    """True if the Python code allocating is memckpt's own (any memckpt module
    among the innermost frames): a checkpoint taken inside ``allocating()``
    must not put its scratch into the arena it snapshots."""
    for _ in range(64):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith("memckpt."):
            return True
        frame = frame.f_back
    return False


def blocks_of(arena: Arena) -> Blocks:
    """The arena's :class:`Blocks` (one per arena, made on first use)."""
    with _lock:
        if getattr(arena, "_blocks", None) is None:
            arena._blocks = Blocks(arena)
        return arena._blocks


class allocating:
    """``with allocating(arena, threshold=65536, on_full="error"):`` numpy
    arrays of at least ``threshold`` bytes created in the block, by any
    library, on this thread (context), live in ``arena``. ``on_full``: a full
    arena raises :class:`memckpt.ArenaFull` (numpy's ``MemoryError`` inside
    the block, turned into ArenaFull when it leaves it), or with
    ``"fallback"`` the array gets ordinary memory (not checkpointed). Arrays
    made inside may outlive the block: each is freed into the arena when
    numpy frees it. Other threads, and code after the block, are unaffected.
    See ``docs/embedding.md``."""

    def __init__(self, arena: Arena, *, threshold: int = 1 << 16, on_full: str = "error") -> None:
        from .arena import Arena
        if not isinstance(arena, Arena):
            raise TypeError(f"arena must be a memckpt.Arena, not {type(arena).__name__}")
        if arena.adopted:
            raise ValueError("an adopted buffer (memckpt.track) has no room for new arrays")
        if arena.closed:
            raise ValueError("the arena is closed")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or threshold < 0:
            raise ValueError(f"threshold must be a non-negative int of bytes, not {threshold!r}")
        if on_full not in _ON_FULL:
            raise ValueError(f"on_full must be one of {_ON_FULL}, not {on_full!r}")
        self.arena = arena
        self.threshold = int(threshold)
        self.on_full = on_full
        self._blocks = blocks_of(arena)
        self._capsule = _alloc.handler(self._blocks, max(self.threshold, 1), on_full == "fallback",
                                       arena.address, arena.address + arena.nbytes,
                                       f"memckpt arena {arena.address:#x}")
        self._old: list[Any] = []

    def __enter__(self) -> Arena:
        self._blocks.full = None
        self._old.append(_alloc.set_handler(self._capsule))
        return self.arena

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        _alloc.set_handler(self._old.pop())
        if (et is not None and issubclass(et, MemoryError) and not isinstance(ev, ArenaFull)
                and self._blocks.full is not None):
            msg, self._blocks.full = self._blocks.full, None
            raise ArenaFull(f"memckpt.allocating: {msg}; make the arena larger, or pass "
                            "on_full='fallback' to give such arrays ordinary memory") from ev
