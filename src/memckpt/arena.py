"""Arena: one page-aligned mapping that hands out named numpy arrays."""
from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import numpy as np

from . import _core, _forksafe
from .errors import ArenaFull
from .kernel import features
from .arena_grow import FULL_HINT, normalise, resize, size_for


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _dtype_json(dt: np.dtype) -> Any:
    """A dtype as JSON-native data: its ``str``, or for a structured dtype
    every field's name, dtype, offset and title (any field order, nesting,
    sub-arrays)."""
    if dt.fields is not None:
        names = list(dt.names or ())
        fields: list[tuple[Any, ...]] = [tuple(dt.fields[n]) for n in names]  # (dtype, offset[, title])
        return {"names": names,
                "formats": [_dtype_json(f[0]) for f in fields],
                "offsets": [f[1] for f in fields],
                "titles": [f[2] if len(f) > 2 else None for f in fields],
                "itemsize": dt.itemsize}
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return {"base": _dtype_json(base), "shape": list(shape)}
    return dt.str


def _dtype_from_json(d: Any) -> np.dtype:
    if isinstance(d, str):
        return np.dtype(d)
    if "base" in d:
        return np.dtype((_dtype_from_json(d["base"]), tuple(d["shape"])))
    spec: Any = {"names": d["names"], "formats": [_dtype_from_json(f) for f in d["formats"]],
             "offsets": d["offsets"], "itemsize": d["itemsize"]}
    if any(t is not None for t in d["titles"]):
        spec["titles"] = d["titles"]
    return np.dtype(spec)


def _layout_entry(name: str, dt: np.dtype, shape: tuple[int, ...], offset: int, size: int) -> dict[str, Any]:
    e: dict[str, Any] = {"name": name, "dtype": dt.str, "shape": list(shape),
                         "offset": offset, "nbytes": size}
    if dt.fields is not None:
        # a structured dtype's str is just '|V<n>': record its fields too
        e["fields"] = _dtype_json(dt)
    return e


def layout_dtype(entry: dict[str, Any]) -> np.dtype:
    """The dtype of one array of ``Arena.layout()``, fields included."""
    return _dtype_from_json(entry["fields"]) if "fields" in entry else np.dtype(entry["dtype"])


class Arena:
    """A context manager over one anonymous mapping of ``nbytes`` (rounded up to
    whole pages) that holds named, page-aligned, zero-filled numpy arrays.

    ``close()`` refuses, with ``BufferError``, while arrays or trackers still
    reference the mapping: memory is never unmapped under a live array. Leaving
    a ``with`` block closes the arena if nothing references it any more, and
    otherwise lets go of it, so that the mapping goes when its last array does.

    ``hugepages=True`` asks for transparent huge pages: fewer TLB misses, but
    dirty tracking then sees 2 MiB at a time.
    """

    def __init__(self, nbytes: int, *, hugepages: bool = False) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes <= 0:
            raise ValueError(f"nbytes must be positive, got {nbytes}")
        self._setup(_core.Region(int(nbytes), bool(hugepages)), bool(hugepages))

    def _setup(self, region: Any, hugepages: bool) -> None:
        self._region = region
        self._hugepages = hugepages
        self._page_size = features().page_size
        self._arrays: dict[str, np.ndarray] = {}
        self._layout: list[dict[str, Any]] = []
        self._next = 0
        self._lock = threading.Lock()
        self.tracker: Any = None  # the open DirtyTracker, if any
        self._blocks: Any = None  # numpy's arrays in the arena (memckpt.alloc), once used
        _forksafe.register(self)

    def _detach_in_child(self) -> None:
        """In a child of fork() the arena is the child's own copy (its
        tracker detaches itself): only the lock, which a thread of the
        parent may have held at the fork, is renewed."""
        self._lock = threading.Lock()

    # -- properties ---------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Size of the mapping in bytes (whole pages)."""
        return int(self._region.nbytes)

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def npages(self) -> int:
        return self.nbytes // self._page_size

    @property
    def address(self) -> int:
        """The mapping's first byte, for native code that writes into the arena."""
        return int(self._region.address)

    @property
    def hugepages(self) -> bool:
        return self._hugepages

    @property
    def closed(self) -> bool:
        return bool(self._region.closed)

    @property
    def used_bytes(self) -> int:
        """Bytes up to the end of the last array (whole pages): the rest of
        the mapping is reserved address space, untouched."""
        return self._next

    @property
    def free_bytes(self) -> int:
        return self.nbytes - self._next

    @property
    def adopted(self) -> bool:
        """True for an arena over a buffer the program already has (:meth:`adopt`)."""
        return bool(self._region.adopted)

    @classmethod
    def adopt(cls, buffer: Any, name: str = "array") -> Arena:
        """An arena over ``buffer``, memory the program already has (a
        C-contiguous numpy array, or any writable contiguous buffer), so that
        a :class:`DirtyTracker` or :class:`Checkpointer` tracks it in place:
        the same as :func:`memckpt.track` (``docs/embedding.md``)."""
        from .track import adopt
        return adopt(cls, buffer, name)

    # -- arrays -------------------------------------------------------------
    def array(self, name: str, shape: int | tuple[int, ...], dtype: Any = np.float64,
              *, offset: int | None = None) -> np.ndarray:
        """A zero-filled array that starts on a page boundary of the arena
        (or at byte ``offset``, past every array: how a restore lays out an
        adopted buffer's epoch, whose array starts inside its first page)."""
        if not isinstance(name, str) or not name:
            raise ValueError("array name must be a non-empty string")
        dt, shp, size = normalise(name, shape, dtype)
        count = math.prod(shp)
        with self._lock:
            self._check_open()
            if self._region.adopted:
                raise ValueError(f"array {name!r}: the arena of an adopted buffer (memckpt.track) "
                                 "holds that buffer only")
            if name in self._arrays or any(e["name"] == name for e in self._layout):
                raise ValueError(f"the arena already has an array named {name!r}")
            if offset is None:
                offset = self._next
            elif not isinstance(offset, (int, np.integer)) or offset < self._next:
                raise ValueError(f"array {name!r}: offset {offset!r} is not past the arena's "
                                 f"last array (the first free byte is {self._next})")
            offset = int(offset)
            if size > self.nbytes - offset:
                raise ArenaFull(f"array {name!r} needs {size} bytes but the arena has "
                                f"{self.nbytes - offset} of {self.nbytes} left" + FULL_HINT)
            arr = self._view(dt, shp, offset if count else 0, count)
            self._next = _round_up(offset + size, self._page_size)
            self._arrays[name] = arr
            self._layout.append(_layout_entry(name, dt, shp, offset, size))
        return arr

    def resize(self, name: str, shape: int | tuple[int, ...]) -> np.ndarray:
        """Give array ``name`` (made by :meth:`array`) the new ``shape``, same
        dtype, and return it. Its content is kept as ``ndarray.resize`` keeps
        it: the first bytes in C order, new bytes zero. The last array grows
        or shrinks in place (same address); any other moves to the end (a
        copy), and its old pages are zeroed and given back to the system.

        Arrays returned before for ``name`` are stale afterwards (a numpy view
        cannot be retargeted): use the one returned, or ``arrays()[name]``.
        The layout records the new shape and offset, so the next checkpoint
        and ``restore()`` have them; ``Checkpointer.rollback`` to an epoch of
        the old layout is refused (restore that epoch into a new arena).
        :class:`ArenaFull` if the arena has no room left for it."""
        if not isinstance(name, str):
            raise TypeError(f"array name must be a string, not {type(name).__name__}")
        with self._lock:
            self._check_open()
            return resize(self, name, shape)

    @staticmethod
    def size_for(arrays: Any) -> int:
        """The bytes an arena needs for ``arrays``, a list of (shape, dtype)
        or a dict of name -> (shape, dtype), each laid out from a page
        boundary as :meth:`array` lays them out (at least one page)."""
        ps = features().page_size
        return max(size_for(arrays, ps), ps)

    @classmethod
    def for_arrays(cls, arrays: dict[str, Any], *, reserve: int = 0, hugepages: bool = False) -> Arena:
        """An arena holding ``arrays`` (name -> (shape, dtype)), zero-filled,
        of ``max(size_for(arrays), reserve)`` bytes: ``reserve`` leaves room to
        add or grow arrays later (untouched pages cost no memory)."""
        if not isinstance(arrays, dict):
            raise TypeError(f"arrays must be a dict of name -> (shape, dtype), not {type(arrays).__name__}")
        arena = cls(max(cls.size_for(arrays), int(reserve)), hugepages=hugepages)
        for name, (shape, dtype) in arrays.items():
            arena.array(name, shape, dtype)
        return arena

    def _view(self, dt: np.dtype, shape: tuple[int, ...], offset: int, count: int) -> np.ndarray:
        return np.frombuffer(self._region, dtype=dt, count=count,  # type: ignore[call-overload]
                             offset=offset).reshape(shape)  # (Region: see buffer())

    def name_array(self, arr: np.ndarray, name: str) -> None:
        """Record ``arr``, an array numpy made in this arena inside
        :func:`memckpt.allocating`, under ``name`` with its dtype and shape
        (until then the layout lists it as ``numpy@OFFSET``, uint8): a
        restore then gives it back by that name, typed."""
        if not isinstance(name, str) or not name:
            raise ValueError("array name must be a non-empty string")
        if self._blocks is None:
            raise ValueError("no array was made in this arena by memckpt.allocating")
        self._blocks.name(arr, name)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name, in the order they were made."""
        self._check_open()
        return dict(self._arrays)

    def layout(self) -> dict[str, Any]:
        """A JSON-serialisable description: page size, size, and each array's
        name, dtype (numpy ``str`` form), shape, offset and size in bytes; a
        structured dtype also has its ``fields`` (``layout_dtype()``
        turns an entry back into its dtype)."""
        return {
            "nbytes": self.nbytes,
            "page_size": self._page_size,
            "hugepages": self._hugepages,
            "arrays": [dict(e, shape=list(e["shape"])) for e in self._layout],
        }

    def page_range(self, name: str) -> tuple[int, int]:
        """The first page and the page count of a named array."""
        for e in self._layout:
            if e["name"] == name:
                first = e["offset"] // self._page_size
                end = _round_up(e["offset"] + e["nbytes"], self._page_size) // self._page_size
                return first, max(end - first, 0 if e["nbytes"] == 0 else 1)
        raise KeyError(name)

    def own_bytes(self) -> tuple[int, int] | None:
        """For an adopted arena, the buffer's bytes as (start, stop) offsets
        in the mapping: the rest of its first and last page is its
        neighbours', which a restore or rollback never writes. None otherwise."""
        if not self._region.adopted:
            return None
        return int(self._region.own_offset), int(self._region.own_offset + self._region.own_len)

    def buffer(self) -> memoryview:
        """The whole mapping as a writable memoryview (it holds the mapping open)."""
        self._check_open()
        # Region exports the buffer protocol from Cython; typing only learns of
        # it through __buffer__, which exists from Python 3.12 on
        return memoryview(self._region)  # type: ignore[arg-type]

    # -- lifetime -----------------------------------------------------------
    def _check_open(self) -> None:
        if self._region.closed:
            raise ValueError("the arena is closed")

    def close(self) -> None:
        """Unmap the arena. Raises ``BufferError`` if any array, memoryview or
        tracker still references it; the arena then stays open and usable."""
        with self._lock:
            if self._region.closed:
                return
            if self._blocks is not None and self._blocks.live:
                raise BufferError(f"cannot close the arena: {len(self._blocks.live)} numpy "
                                  "array(s) made in it by memckpt.allocating are still alive")
            held = {name: weakref.ref(a) for name, a in self._arrays.items()}
            self._arrays = {}
            try:
                self._region.close()
            except BufferError as exc:
                alive = []
                for e in self._layout:
                    a = held[e["name"]]()
                    if a is not None:
                        alive.append(e["name"])
                    else:
                        a = self._view(layout_dtype(e), tuple(e["shape"]),
                                       e["offset"], math.prod(e["shape"]))
                    self._arrays[e["name"]] = a
                hint = f" (arrays still referenced: {', '.join(alive)})" if alive else ""
                if self.tracker is not None:
                    hint += (f" (a {self.tracker.backend} tracker is open on it: close it, or the "
                             "Checkpointer that made it, e.g. with `with Checkpointer(...) as ck:`; "
                             "a Checkpointer dropped without close() keeps its tracker open)")
                raise BufferError(f"cannot close the arena: {exc}{hint}") from None

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except BufferError:
            # Arrays outlive the block: drop our hold and let the mapping go
            # with its last reference (the region is freed by refcount).
            if self.tracker is not None:
                raise
            self._arrays = {}

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._arrays)} arrays, {self.free_bytes} bytes free"
        return f"<memckpt.Arena {self.nbytes} bytes, {state}>"
