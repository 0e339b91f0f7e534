"""Track memory the program already has: :func:`track` (``Arena.adopt``).

An adopted buffer becomes an :class:`memckpt.Arena` whose mapping is the
pages the buffer covers, holding one array at the buffer's offset in its
first page. Its tracker is a range tracker (csrc/tracker_range.c): the pages
wholly inside go to the backend, the partial pages at the ends, shared with
the neighbours, are compared; a rollback writes only the buffer's own bytes
(:func:`write_own`). What cannot be tracked is refused up front, naming why
(:func:`check_mappings`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .errors import FormatError, TrackerUnavailable

if TYPE_CHECKING:
    from .arena import Arena

__all__ = ["track", "adopt", "adopted_entry", "adopted_view", "check_mappings", "check_map_count", "write_own"]


def track(buffer: Any, name: str = "array") -> Arena:
    """Make ``buffer`` (a C-contiguous numpy array, or any writable
    contiguous buffer: a bytearray, a writable memoryview, an ``mmap`` of
    anonymous memory) checkpointable in place: an :class:`memckpt.Arena`
    holding it as the array ``name``, for :class:`memckpt.Checkpointer` or
    :class:`memckpt.DirtyTracker`. The arena holds the buffer (not a copy)
    until closed; ``arena.arrays()[name]`` is ``buffer`` itself if it is an
    ndarray (else a uint8 view of it). See ``docs/embedding.md``."""
    from .arena import Arena
    return adopt(Arena, buffer, name)


def adopt(cls: type[Arena], buffer: Any, name: str) -> Arena:
    if not isinstance(name, str) or not name:
        raise ValueError("array name must be a non-empty string")
    if isinstance(buffer, np.ndarray):
        if buffer.dtype.hasobject:
            raise TypeError(f"cannot track {name!r}: dtype {buffer.dtype} holds Python objects")
        if not buffer.flags.c_contiguous:
            raise ValueError(f"cannot track {name!r}: the array is not C-contiguous "
                             "(np.ascontiguousarray makes a copy that is)")
        if not buffer.flags.writeable:
            raise ValueError(f"cannot track {name!r}: the array is read-only")
        arr, dt, shape = buffer, buffer.dtype, buffer.shape
    else:
        try:
            mv = memoryview(buffer)
        except TypeError:
            raise TypeError(f"cannot track {name!r}: a {type(buffer).__name__} is not a buffer") from None
        if mv.readonly:
            raise ValueError(f"cannot track {name!r}: the {type(buffer).__name__} is read-only")
        if not mv.contiguous:
            raise ValueError(f"cannot track {name!r}: the buffer is not contiguous")
        arr = np.frombuffer(mv.cast("B"), dtype=np.uint8)
        dt, shape = arr.dtype, arr.shape
    if arr.nbytes == 0:
        raise ValueError(f"cannot track {name!r}: it is empty")
    region = _core.Region(0, False, arr)
    check_mappings(int(region.address), int(region.address) + int(region.nbytes), name)
    arena = cls.__new__(cls)
    arena._setup(region, False)
    arena._next = int(region.nbytes)  # no room: the pages are the buffer's
    arena._arrays[name] = arr
    arena._layout.append(adopted_entry(name, dt, tuple(shape), int(region.own_offset),
                                       int(region.nbytes)))
    return arena


def adopted_entry(name: str, dt: np.dtype, shape: tuple[int, ...], offset: int,
                  span: int) -> dict[str, Any]:
    """The layout entry of an adopted buffer: to the store (and to a reader
    older than adoption) it is a uint8 array of the pages it covers, at offset
    0, so that every reader restores those pages bit for bit; ``adopted``, an
    optional field older readers ignore, says where the buffer's own bytes are
    in them and what they hold (the dtype, shape and offset of its array)."""
    from .arena import _layout_entry
    e = _layout_entry(name, np.dtype(np.uint8), (span,), 0, span)
    e["adopted"] = _layout_entry(name, dt, shape, offset, math.prod(shape) * dt.itemsize)
    del e["adopted"]["name"]
    return e


def adopted_view(arena: Arena, entry: dict[str, Any]) -> None:
    """In an arena restored from an epoch of an adopted buffer, replace the
    array of its pages by the buffer's own array, typed as adopted."""
    from .arena import layout_dtype
    a = entry["adopted"]
    dt = layout_dtype(a)
    count = math.prod(a["shape"])
    if a["offset"] + count * dt.itemsize > entry["nbytes"]:
        raise FormatError(f"array {entry['name']!r}: its adopted bytes (offset {a['offset']}, "
                          f"{count * dt.itemsize} bytes) overrun its {entry['nbytes']} bytes")
    arena._arrays[entry["name"]] = arena._view(dt, tuple(a["shape"]), a["offset"], count)
    for e in arena._layout:  # its epochs (Checkpointer.resume) stay typed
        if e["name"] == entry["name"]:
            e["adopted"] = dict(a)


def _maps() -> list[tuple[int, int, str, str]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return out


def check_mappings(lo: int, hi: int, name: str = "array") -> None:
    """Refuse, naming the reason, a page range [lo, hi) that a tracker cannot
    follow: part of a file-backed mapping (its pages are the file's page
    cache, written back behind the program's back, and uffd write-protect
    needs anonymous memory), hugetlb pages (the trackers work in base pages),
    a shared mapping (another process's writes are not this one's), or a
    read-only one. Without /proc (a sandbox) nothing is checked."""
    try:
        maps = _maps()
    except OSError:
        return
    where = f"cannot track {name!r} ({hi - lo} bytes at {lo:#x})"
    covered = lo
    for mlo, mhi, perms, path in maps:
        if mhi <= lo or mlo >= hi:
            continue
        if mlo > covered:
            break  # a hole: reported below
        covered = max(covered, mhi)
        what = f"the mapping {mlo:#x}-{mhi:#x} ({perms}{' ' + path if path else ''})"
        if "anon_hugepage" in path or "hugetlb" in path:
            raise TrackerUnavailable(f"{where}: it lies in hugetlb pages, {what}, which the "
                                     "trackers cannot see page by page")
        if path and not path.startswith(("[", "/dev/zero", "/SYSV", "/memfd:")):
            raise TrackerUnavailable(f"{where}: {what} is file-backed; copy the data into an "
                                     "array (or a memckpt.Arena) to checkpoint it")
        if perms[1] != "w" or perms[0] != "r":
            raise TrackerUnavailable(f"{where}: {what} is not readable and writable")
        if perms[3] == "s":
            raise TrackerUnavailable(f"{where}: {what} is shared; a tracker sees only this "
                                     "process's writes (and uffd needs private anonymous memory)")
    if covered < hi:
        raise TrackerUnavailable(f"{where}: the range is not all mapped")


def check_map_count(arena: Arena, backend: str) -> None:
    """Refuse a tracker over an adopted buffer that could run the process out
    of memory mappings (vm.max_map_count): uffd and mprotect split the
    buffer's mapping at the tracked pages, and mprotect again at every run
    of written pages (up to one mapping per two pages)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            have = sum(1 for _ in f)
    except (OSError, ValueError):
        return
    inner = max(arena.npages - 2, 0)
    need = {"mprotect": 4 + inner // 2, "compare": 0, "soft-dirty": 0}.get(backend, 4)
    if have + need > limit:
        raise TrackerUnavailable(
            f"tracking this {arena.nbytes}-byte buffer with {backend} may split its mapping "
            f"into {need} more, and the process has {have} of vm.max_map_count={limit}: "
            "raise the limit (sysctl vm.max_map_count), use another backend, or put the "
            "data in a memckpt.Arena (one mapping, however it is written)")


def write_own(arena: Arena, dst: np.ndarray, src: np.ndarray, pages: np.ndarray | None) -> None:
    """Copy pages ``pages`` (None: all) of ``src`` into ``dst`` (both
    (npages, page_size) uint8 over an adopted arena's mapping layout),
    writing only the buffer's own bytes: never the neighbours' part of its
    first and last page."""
    own = arena.own_bytes()
    assert own is not None
    start, stop = own
    ps = arena.page_size
    n = dst.shape[0]
    idx = np.arange(n, dtype=np.int64) if pages is None else pages.view(np.int64)
    edges = {0: (start, min(stop, ps)), n - 1: (max(start, (n - 1) * ps), stop)}
    edges = {p: r for p, r in edges.items() if r[1] - r[0] < ps}
    inner = idx[~np.isin(idx, list(edges))] if edges else idx
    dst[inner] = src[inner]
    flat_d, flat_s = dst.reshape(-1), src.reshape(-1)
    for p, (a, b) in edges.items():
        if not np.any(idx == p):
            continue
        flat_d[a:b] = flat_s[a:b]
