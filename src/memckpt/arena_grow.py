"""Growing arenas: sizing an arena for a list of arrays, and resizing one of
its arrays in place (the last one) or by moving it (any other)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ArenaFull

if TYPE_CHECKING:
    from .arena import Arena

# Trackers that keep a page's record outside its page-table entry, or read
# content: for them a write of zeros followed by MADV_DONTNEED still shows in
# the next collect. uffd-async and soft-dirty keep it in the entry, which the
# discard drops (track_uffd.c, track_softdirty.c): the zeros stay resident.
_DISCARD_KEEPS_RECORD = ("compare", "mprotect", "uffd-sync")

FULL_HINT = ("; reserve more: an arena is reserved address space (MAP_NORESERVE), "
             "its untouched pages cost no memory, and Arena.size_for() sizes one for a list of arrays")


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def normalise(name: str, shape: Any, dtype: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, bytes) of an array as ``Arena.array`` makes it: a
    sub-array dtype's shape goes to the end of the array's, as numpy does."""
    dt = np.dtype(dtype)
    shp0 = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if dt.subdtype is not None:
        dt, sub = dt.subdtype
        shp0 = (*shp0, *sub)
    if dt.hasobject:
        raise TypeError(f"array {name!r}: dtype {dt} holds Python objects, which cannot live in an arena")
    if not all(isinstance(s, (int, np.integer)) and s >= 0 for s in shp0):
        raise ValueError(f"array {name!r}: shape {shape!r} must be non-negative ints")
    shp = tuple(int(s) for s in shp0)
    return dt, shp, math.prod(shp) * dt.itemsize


def size_for(specs: Any, page_size: int) -> int:
    """Bytes an arena needs for ``specs``, (shape, dtype) pairs or a dict of
    name -> (shape, dtype), laid out one after the other as ``array()`` does:
    each array from a page boundary, zero-sized ones taking no room."""
    items = specs.items() if isinstance(specs, dict) else enumerate(specs)
    total = 0
    for key, spec in items:
        try:
            shape, dtype = spec
        except (TypeError, ValueError):
            raise TypeError(f"array {key!r}: expected (shape, dtype), got {spec!r}") from None
        total += _round_up(normalise(str(key), shape, dtype)[2], page_size)
    return total


def release(arena: Arena, start: int, stop: int) -> None:
    """Zero the arena's bytes [start, stop), which no array holds any more,
    and give their whole pages back to the system when that is safe: with no
    tracker open, or one that still reports the pages after the discard. With
    a tracker open the zeros are written first, so the next epoch records
    them and no later epoch restores the old bytes there."""
    if stop <= start:
        return
    ps = arena.page_size
    lo, hi = _round_up(start, ps), stop // ps * ps  # the whole pages inside
    buf = np.frombuffer(arena._region, dtype=np.uint8, count=stop - start, offset=start)
    tracker = arena.tracker
    if tracker is not None or hi <= lo:
        buf[...] = 0
    else:
        buf[:lo - start] = 0
        buf[hi - start:] = 0
    if hi > lo and (tracker is None or tracker.backend in _DISCARD_KEEPS_RECORD):
        arena._region.discard(lo, hi - lo)


def resize(arena: Arena, name: str, shape: Any) -> np.ndarray:
    """``Arena.resize``: see there. Called with the arena's lock held."""
    from .arena import _layout_entry
    ps = arena.page_size
    if arena._region.adopted:
        raise ValueError(f"array {name!r}: the array of an adopted buffer (memckpt.track) cannot be resized")
    if name not in arena._arrays:
        made = [e["name"] for e in arena._layout]
        raise KeyError(f"the arena has no array named {name!r} made by Arena.array() "
                       f"(its layout lists {made})")
    i = next(k for k, e in enumerate(arena._layout) if e["name"] == name)
    e = arena._layout[i]
    old = arena._arrays[name]
    dt = old.dtype
    _, shp, size = normalise(name, shape, dt)
    off, old_size = int(e["offset"]), int(e["nbytes"])
    if off % ps:
        raise ValueError(f"array {name!r} starts inside a page (offset {off}): it cannot be resized")
    old_end = _round_up(off + old_size, ps)
    last = i == len(arena._layout) - 1 and old_end == arena._next
    start = off if last else arena._next
    if _round_up(start + size, ps) > arena.nbytes:
        where = "in place" if last else f"moved to offset {start}"
        raise ArenaFull(f"array {name!r} resized to {shp} needs {size} bytes {where} but the arena "
                        f"has {arena.nbytes - start} of {arena.nbytes} left there" + FULL_HINT)
    if last:
        if size < old_size:
            release(arena, off + size, off + old_size)
        # bytes past the old end are zero: never handed out, or released
        arena._next = _round_up(off + size, ps) if size else off
        new = arena._view(dt, shp, off if size else 0, math.prod(shp))
        arena._layout[i] = _layout_entry(name, dt, shp, off, size)
        arena._arrays[name] = new
        return new
    new = arena._view(dt, shp, start if size else 0, math.prod(shp))
    keep = min(size, old_size)
    if keep:
        new.reshape(-1).view(np.uint8)[:keep] = old.reshape(-1).view(np.uint8)[:keep]
    release(arena, off, off + old_size)
    arena._next = _round_up(start + size, ps) if size else start
    del arena._layout[i]
    arena._layout.append(_layout_entry(name, dt, shp, start, size))
    del arena._arrays[name]
    arena._arrays[name] = new
    return new


# What a reserved, unused byte costs (bench/probe_arena_reserve.py, 8 GiB
# reserved, 16 MiB used, against an arena of 16 MiB): compare reads every
# page on open and on each collect (2.0 s a collect against 0.001 s);
# uffd-async write-protects the unused pages too (page tables: 2 MiB per GiB,
# and 0.6 ms per GiB a collect); uffd-sync and mprotect do not grow.
_WARN_UNUSED = {"compare": 256 << 20, "uffd-async": 16 << 30}


def warn_reservation(arena: Arena, backend: str) -> None:
    """Warn when ``backend`` would pay much for the arena's reserved, unused space."""
    import warnings
    limit = _WARN_UNUSED.get(backend)
    unused = arena.nbytes - arena.used_bytes
    if limit is None or arena.adopted or unused < limit or arena.used_bytes * 4 > arena.nbytes:
        return
    if backend == "compare":
        cost = f"reads all {arena.nbytes} bytes of the arena on every collect"
    else:
        cost = (f"write-protects all {arena.nbytes} bytes of the arena: about "
                f"{arena.nbytes >> 29} MiB of page tables, and a scan of them on every collect")
    warnings.warn(f"memckpt: the {backend} tracker {cost}, though its arrays use "
                  f"{arena.used_bytes}: size the arena to what it holds (Arena.size_for) or "
                  "use the uffd-sync or mprotect tracker", ResourceWarning, stacklevel=3)
