"""Store: a local directory of checkpoint epochs.

The contract it keeps (what the checkpointer, restore and the CLI use) is
memckpt.store.contract; docs/format.md describes the files. Store is the
last of a line of layers, one concern each (see docs/architecture.md):

    header.py       _Header       the store header; race-free create; same-store check
    catalog.py      _Catalog      epochs, manifests, chain links, indexes (cached)
    reader.py       _Reader       read_into, changed_pages; retries beside a prune/compaction
    verify.py       _Verifier     verify
    head.py         _Heads        the writer's head: the newest epoch, the chains seen whole
    maintenance.py  _Sweeper, _Maintenance   the sweep; compact, prune
    prepared.py     _Prepared     the next epoch's writer, made ready after a commit
    local.py        Store         construction, close, begin

and EpochWriter (writer.py) is external.py's _External (files written by a
fork child), packing.py's _Packing (add_pages), commit.py's _Commit (commit,
and commit_merged for a compaction) and its own life and abort. The small
I/O helpers are in io.py, the writer lock in locking.py.
"""
from __future__ import annotations

import collections
import copy
import mmap
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _forksafe
from ..errors import FormatError
from . import format as fmt
from .catalog import _Link
from .io import _MissingFile, _index_arg, _jsonable
from .prepared import _BeginArgs, _Prepared
from .spare import Spare
from .urls import local_path
from .writer import EpochWriter

__all__ = ["EpochWriter", "Store", "_MissingFile"]


class Store(_Prepared):
    """A directory of immutable checkpoint epochs; see memckpt.store.contract."""

    def __init__(self, path: str | os.PathLike[str], create: bool = False, *,
                 page_size: int | None = None) -> None:
        # a URL is never a directory named after it (s3:// is memckpt.open_store's)
        self.path = Path(local_path(path))
        self._cache_lock = threading.Lock()
        _forksafe.register(self)  # see _detach_in_child
        # The epoch writers this Store has open: its own writes (begin,
        # compact, prune) wait for them rather than collide with them on the
        # lock file, so that a Checkpointer's persist thread and the program's
        # prune() of the same Store take turns.
        self._writers_cv = threading.Condition()
        # weak: a writer dropped without commit or abort is collected, and its
        # __del__ aborts it (which takes it out of here)
        self._open_writers: weakref.WeakSet[EpochWriter] = weakref.WeakSet()
        # validated manifests by epoch, least recently used first; bounded, so
        # that a process checkpointing for days without pruning does not keep
        # every manifest it ever read (about 6.5 KiB each)
        self._manifests: collections.OrderedDict[int, tuple[tuple[int, int, int], dict[str, Any]]] = \
            collections.OrderedDict()
        self._indexes: collections.OrderedDict[tuple[Any, ...], np.ndarray] = collections.OrderedDict()
        self._index_bytes = 0
        # chain links by epoch: never evicted with the manifests (see _Link)
        self._links: dict[int, _Link] = {}
        self._spare = Spare()  # the next epoch's pack file, made after each commit
        self._init_prepared()  # the next epoch's writer, made after each commit (prepare_next)
        if page_size is not None and not fmt.valid_page_size(page_size):
            raise ValueError(f"page_size {page_size!r} must be a power of two in "
                             f"{fmt.MIN_PAGE_SIZE}..{fmt.MAX_PAGE_SIZE}")
        # Only the writer sweeps, under its lock: at the first write of this
        # Store object (begin, compact, prune, sweep), and at the next write
        # after one of its own epochs did not commit (_sweep_if_due). Opening
        # reads the header and nothing else, so readers write nothing.
        self._swept = False
        self._unsettled: tuple[int, str] | None = None  # (epoch, pack name) being written
        # the writer's head (store/head.py): kept by this Store's writes, as
        # long as the lock file holds the line this Store's last lock left
        self._head = None
        self._left = None
        if create:
            self._create(page_size if page_size is not None else mmap.PAGESIZE)
        self.page_size: int = self._read_header()
        if page_size is not None and page_size != self.page_size:
            raise ValueError(f"store {self.path} has page size {self.page_size}, not {page_size}")

    def _detach_in_child(self) -> None:
        """In a child of fork() the Store is the child's to read: renew the
        locks a thread of the parent (a persist, a reader) may have held at
        the fork. Its open writers are the parent's and detach themselves."""
        self._cache_lock = threading.Lock()
        self._writers_cv = threading.Condition()
        self._init_prepared()
        # the child's writes are another writer's: what the parent commits
        # next is not in this copy of the head
        self._head = self._left = None

    def __repr__(self) -> str:
        return f"<memckpt.Store {str(self.path)!r}>"

    def close(self) -> None:
        """Drop cached manifests and indexes, and close the spare pack file
        (store/spare.py: the only file a Store holds open between calls; a
        writer holds its own files and the lock); the Store stays usable."""
        self.drop_prepared()
        self._spare.close()
        self._drop_caches()
        with self._cache_lock:
            self._links.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
    # -- writing ------------------------------------------------------------------------
    def begin(self, kind: str, parent: int | None = None, layout: dict[str, Any] | None = None,
              page_size: int | None = None, npages: int | None = None,
              compress: str | None = None, threads: int | None = None) -> EpochWriter:
        if kind not in ("full", "incremental"):
            raise ValueError(f"kind must be 'full' or 'incremental', not {kind!r}")
        if page_size is None:
            page_size = self.page_size
        if page_size != self.page_size:
            raise ValueError(f"page_size {page_size} differs from the store's {self.page_size}")
        npages = _index_arg(npages, "npages")
        parent = None if parent is None else _index_arg(parent, "parent")
        if not 0 <= npages <= fmt.MAX_NPAGES:  # type: ignore[operator]
            raise ValueError(f"npages must be in 0..{fmt.MAX_NPAGES}, not {npages!r}")
        if compress is not None:
            if compress not in fmt.COMPRESSORS:
                raise ValueError(f"compress must be None, 'zstd' or 'lz4', not {compress!r}")
            fmt.codec(compress)  # a clear error naming the pip extra, before any file exists
        layout = self._checked_layout({} if layout is None else layout, npages, page_size)
        if kind == "incremental" and parent is None:
            raise ValueError("an incremental epoch needs a parent")
        if threads is not None and (_index_arg(threads, "threads") < 1):
            raise ValueError(f"threads must be None (the CPUs available) or >= 1, not {threads!r}")
        args = _BeginArgs(kind, parent, layout, int(npages), compress,  # type: ignore[arg-type]
                          None if threads is None else int(threads))
        self._wait_for_writers("begin an epoch")
        w = self._adopt_prepared(args)  # made after the last commit: no lock yet (prepared.py)
        if w is not None:
            return w
        self._check_same_store()  # before the lock file is made in a stranger's directory
        lock = self._writer_lock("write")
        try:
            self._sweep_if_due()
            # no listing, no chain walk: the head this Store keeps (store/head.py)
            head = self._head_now()
            epoch = head.top + 1
            parent_digest = None
            if parent is not None:
                if kind == "incremental" and not head.whole(parent):
                    self.chain(parent)  # whole, and tied together: what the new epoch builds on
                    head.add(parent)
                plink = self._link(parent)  # one lstat: still there, still the same file
                if kind == "incremental" and plink.npages != npages:
                    raise ValueError(f"an incremental epoch of {npages} pages cannot follow "
                                     f"epoch {parent} of {plink.npages} pages")
                parent_digest = plink.identity
            w = EpochWriter(self, lock, epoch=epoch, gen=0, kind=kind, parent=parent,
                            layout=layout, npages=int(npages), compress=compress,  # type: ignore[arg-type]
                            parent_digest=parent_digest, threads=threads,
                            pack_fd=self._spare.take())
            self._unsettled = (epoch, w.pack_name)
            return w
        except BaseException:
            lock.release()
            raise

    # the layout begin() checked last, as given and as checked: a checkpointer
    # begins every epoch with the same one, and checking it again costs more
    # than the rest of begin()'s checks together
    _layout_seen: tuple[Any, Any, int, int] | None = None

    def _checked_layout(self, given: Any, npages: int, page_size: int) -> dict[str, Any]:
        seen = self._layout_seen
        if seen is not None and seen[2:] == (npages, page_size) and type(given) is dict \
                and given == seen[0]:
            return seen[1]  # type: ignore[no-any-return]
        layout = _jsonable(given, "layout")
        if not isinstance(layout, dict):
            raise TypeError(f"layout must be a dict, not {type(layout).__name__}")
        try:
            fmt.check_layout(layout, npages=npages, page_size=page_size, where="layout")
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        self._layout_seen = (copy.deepcopy(given), layout, npages, page_size)
        return layout


if TYPE_CHECKING:
    from .contract import EpochWriterContract, StoreContract

    def _conforms(store: Store, writer: EpochWriter) -> tuple[StoreContract, EpochWriterContract]:
        """Never called: mypy (tests/test_stubs.py) checks here that Store and
        EpochWriter keep the contract."""
        return store, writer
