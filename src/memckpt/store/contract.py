"""The store contract: what the checkpointer, restore and the CLI code against.

Store (store/local.py) and EpochWriter (store/writer.py) implement it;
docs/format.md describes the files. As prose, then as Protocols (which mypy
holds Store and EpochWriter to: see the end of local.py):

    store = Store(path, create=True)       # opens (creating if asked): reads the header only;
                                           # writes nothing and takes no lock (see READERS below);
                                           # creating is race-free across processes (under the lock)
                                           # (optional: page_size=N for a new store; default: the
                                           # system's page size; an existing store keeps its own)
    store.path                             # pathlib.Path (an S3Store's: its s3:// URL, a str)
    store.page_size                        # int, from the store header
    store.epochs() -> list[EpochInfo]      # committed epochs, ascending by number
    store.epoch_numbers() -> list[int]     # their numbers, from file names alone (reads no manifest)
    store.latest() -> int | None           # the newest committed epoch number (epochs start at 1)
    store.info(epoch) -> EpochInfo         # EpochNotFound (a MemckptError and a KeyError) if absent
    store.manifest(epoch) -> dict          # the validated manifest (layout, counts, files, ...); a copy
    store.chain(epoch) -> list[int]        # [full, ..., epoch] following parent pointers;
                                           # CorruptionError if a parent is missing, has other
                                           # npages, or is not the epoch its child was written
                                           # on (the child's parent_digest, format 1.1)
    store.layout(epoch) -> dict            # the arena layout recorded (Arena.layout() form)

    # writing (one writer per store: an exclusive flock on STORE/lock, held by
    # the writer from begin() until commit()/abort(); a second writer gets
    # StoreLocked (a MemckptError) "store ... is locked by pid N"). A local
    # Store may also offer prepare_next(kind, parent) -> bool and
    # drop_prepared(): the next begin() with those arguments (the rest as the
    # last begin()'s) takes a writer made ready beforehand, which takes the
    # lock at the epoch's first name instead (docs/format.md; store/prepared.py)
    w = store.begin(kind="full"|"incremental", parent=int|None, layout=dict,
                    page_size=int, npages=int, compress=None|"zstd"|"lz4",
                    threads=None|int)  # threads writing the pages: None = the CPUs available
        # an incremental epoch needs a committed parent with the same page_size
        # and npages; a full epoch's parent is optional and only informational
        # (lineage: the chain walk stops at a full epoch). The new manifest
        # records the parent's identity (parent_digest). MemckptError naming
        # the path if the directory at store.path is no longer the store this
        # Store opened (deleted, re-created), here and again before the commit.
        # Its cost does not grow with the store's history: the Store that
        # writes keeps its head (newest epoch, chains seen whole; store/head.py)
        # while no other writer takes the lock, and lists and walks once when one did
    w.epoch                                # the number this epoch will commit as
    w.threads                              # the threads writing its pages
    w.add_pages(page_numbers: np.ndarray[uint64], data: np.ndarray[uint8, (n, page_size)])
        # may be called many times, page numbers strictly increasing across calls;
        # elides all-zero pages (in a full epoch: not recorded; in an incremental
        # one: recorded as a ZERO entry so the chain knows the page is zero now),
        # stores identical pages once (by BLAKE3 digest, within the epoch),
        # compresses if asked. Synchronous: the caller may reuse `data` on return.
        # The stored files are the same, byte for byte, for any number of threads.
    w.add_pages_from(base: np.ndarray[uint8, (rows, page_size)], page_numbers)
        # add_pages of the pages page_numbers whose bytes are the rows of base with
        # those numbers (base: an arena's pages, C-contiguous): no copy of the pages
        # is made (a compressed epoch copies a bounded chunk at a time). Mixes with
        # add_pages under the same rule of increasing page numbers.
    w.native_writer() -> int               # the address of the epoch's C writer (struct mck_ew),
                                           # or 0 (compressed in Python): a pause adds pages to it
                                           # in C with the GIL held (_core.pause_copy), then calls
    w.added_natively(pages, error=None)    # with those pages; error: that add's OSError (aborts
                                           # the epoch, raises it naming epoch, store and file)
        # reading=buf: the C writer is still adding them from buf (an add the pause
        # started, running beyond it); the next add and commit wait for it and raise
        # its error, abort() stops it first; buf is kept alive until then
    w.native_busy() -> bool                # whether such an add still reads its buffer
    w.commit(*, pages_dirty, pause_s, label=None, tracker=None, mode=None, extra=None,
             started=None) -> EpochInfo
        # fsync pack + index, write manifest tmp, fsync, rename, fsync dir.
        # total_s runs from `started` (a time.perf_counter() reading, e.g. when the
        # pause began) or else from begin(), until pack and index are durable.
    w.abort()                              # also: `with store.begin(...) as w:` aborts
                                           # unless committed inside the block

    # reading
    store.read_into(epoch, out: np.ndarray[uint8, (npages, page_size)], pages=None)
        # fills out (all pages, or only `pages`) with the epoch's content; pages no
        # epoch of the chain holds are zero. Checks every page's digest:
        # CorruptionError naming epoch, page and file on mismatch (out's content
        # is then unspecified). verify=False skips the digests (for a store
        # checked already with verify()); threads=N reads on N threads
        # (default: the CPUs the process may use); out_is_zero=True: out reads
        # as zero already (a fresh mapping), zero pages are left untouched;
        # fill_huge=True (with out_is_zero): out is a fresh memckpt arena, which
        # the read may back with 2 MiB pages meanwhile (split to 4 KiB after).
    store.changed_pages(a, b) -> np.ndarray[uint64] | None
        # pages whose content differs between epochs a and b, from the indexes
        # alone (no data read; pages both chains rewrote to the same content, by
        # digest, are left out); None when they share no chain (then: all pages)

    store.verify(epoch=None) -> None       # all epochs, or the chain of one; raises
                                           # CorruptionError / FormatError naming epoch and file/page
    store.compact(first, last) -> EpochInfo  # merge the chain run first..last into one epoch
                                           # numbered `last` (kind and parent of `first`);
                                           # crash-safe; retires first..last-1; refuses (clear
                                           # MemckptError) if an epoch outside the run (full or
                                           # incremental) has its parent inside first..last-1 (a
                                           # branch would break). Run again after a crash past its
                                           # commit point, it finishes retiring the old epochs.
    store.prune(keep_last=None, keep_every=None, *, rebase=False) -> list[int]  # removed (ascending);
                                           # keeps the newest keep_last, every multiple of
                                           # keep_every, always the newest epoch, and every
                                           # ancestor a kept epoch needs (its chain: a full
                                           # epoch's lineage parent may go); removes newest first;
                                           # both None: removes nothing. rebase=True (keep_last
                                           # alone): first compacts the oldest kept epoch's chain
                                           # into it (a full epoch), so that a single chain keeps
                                           # only the last keep_last; the retired are returned too
    store.close()                          # drops caches (a Store holds no fd between calls)
    store.sweep() -> list[str]             # a writer's operation (takes the lock): removes what no
                                           # committed manifest references (*.tmp, data files);
                                           # returns the names removed

    # read_into, verify and compact also take progress=callable(done, total): pages
    # filled, bytes checked, pages merged.

READERS never write and never take the writer's lock: opening a Store reads
the header alone (no lock file is created, nothing is swept, no manifest is
read), so readers work on a full or read-only file system and never make a
writer wait. Only the writer sweeps uncommitted garbage, under its lock: at
the first begin()/compact()/prune() of each Store object, at its next write
after an epoch it wrote failed to commit and left files, and on sweep().

A reader racing a compact() or prune() in another process may find a
manifest or file it was reading retired. read_into and verify then retry with
fresh manifests; a retired epoch is EpochNotFound "... was retired during
read/verify ..." (verify() of the whole store skips it: retired is not
damaged); after several spoiled tries they give up with a MemckptError naming
the concurrent prune or compaction. Damage (a bad digest, a missing or short
file) is reported as CorruptionError only when every manifest the read used
is still in place, i.e. never for a healthy store.

Every store file (and the lock) is opened O_NOFOLLOW | O_NONBLOCK and
fstat-checked to be a regular file before any read or write: a symbolic
link, FIFO, device, socket or directory in its place is a FormatError naming
the file ("... is a FIFO, not a regular file"), never a hang.

    open_store(store, create=...) -> (store, opened_here)  # below: a path, a URL or a Store
        # (a URL: file:///dir, or s3://bucket/prefix: store/s3.py's S3Store keeps this
        # contract over an object store; any other scheme is an UnsupportedURL error)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union, runtime_checkable

if TYPE_CHECKING:  # numpy and the store's dependencies load with the Store, not here
    import numpy as np

    from ..epoch import EpochInfo

__all__ = ["EpochWriterContract", "StoreContract", "StoreLike", "open_store", "open_url"]

StoreLike = Union["os.PathLike[str]", str, Any]  # a path, or a memckpt.Store


@runtime_checkable
class EpochWriterContract(Protocol):
    """One epoch being written (Store.begin): see the module docstring."""

    epoch: int
    threads: int  # the threads writing its pages (begin(threads=))
    compress: str | None  # begin(compress=)
    # set by a writer's maker when another thread will finish it (the
    # checkpointer's persist thread): a prune or compaction on the maker's
    # thread then waits for the epoch instead of refusing
    handed_off: bool

    def add_pages(self, page_numbers: Any, data: Any) -> None: ...

    def add_pages_from(self, base: Any, page_numbers: Any) -> None: ...

    def commit(self, *, pages_dirty: int, pause_s: float | None, label: str | None = None,
               tracker: str | None = None, mode: str | None = None,
               extra: dict[str, Any] | None = None, started: float | None = None,
               call_s: float | None = None, call_started: float | None = None) -> EpochInfo: ...

    def abort(self) -> None: ...

    # a pause's pages written in C with the GIL held (modes copy and sync)
    def native_writer(self) -> int: ...

    def added_natively(self, pages: Any, error: OSError | None = None,
                       reading: Any = None) -> None: ...

    def native_busy(self) -> bool: ...

    # fork mode: another process writes the epoch's files (see writer.py / external.py)
    def external_target(self) -> tuple[int, int, bytes, int, bytes]: ...

    def adopt(self, *, records: int, stored: int, dedup: int, zero: int, pack_size: int,
              idx_size: int, idx_digest: bytes) -> None: ...

    def take_back(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class StoreContract(Protocol):
    """A store of checkpoint epochs: see the module docstring. memckpt.Store
    (store/local.py) is the one implementation."""

    path: Path
    page_size: int

    def epochs(self) -> list[EpochInfo]: ...
    def epoch_numbers(self) -> list[int]: ...
    def latest(self) -> int | None: ...
    def info(self, epoch: int) -> EpochInfo: ...
    def manifest(self, epoch: int) -> dict[str, Any]: ...
    def layout(self, epoch: int) -> dict[str, Any]: ...
    def chain(self, epoch: int) -> list[int]: ...

    def begin(self, kind: str, parent: int | None = None, layout: dict[str, Any] | None = None,
              page_size: int | None = None, npages: int | None = None,
              compress: str | None = None, threads: int | None = None) -> EpochWriterContract: ...

    def read_into(self, epoch: int, out: np.ndarray, pages: Any = None, *,
                  progress: Callable[[int, int], None] | None = None,
                  out_is_zero: bool = False, verify: bool = True,
                  threads: int | None = None, fill_huge: bool = False) -> None: ...
    def changed_pages(self, a: int, b: int) -> np.ndarray | None: ...

    def verify(self, epoch: int | None = None, *,
               progress: Callable[[int, int], None] | None = None) -> None: ...
    def compact(self, first: int, last: int, *,
                progress: Callable[[int, int], None] | None = None) -> EpochInfo: ...
    def prune(self, keep_last: int | None = None, keep_every: int | None = None, *,
              rebase: bool = False) -> list[int]: ...
    def sweep(self) -> list[str]: ...
    def close(self) -> None: ...


# what open_store() asks of a store object it is handed: tests wrap a Store to inject faults
_DUCK = ("begin", "read_into", "layout", "latest")


def open_store(store: StoreLike, *, create: bool,
               missing: type[Exception] | None = None) -> tuple[Any, bool]:
    """A Store for ``store`` (a path or a Store), and whether the caller opened it.

    ``missing``: for a path with no store directory (nothing there, or a
    file), raise this instead of what Store() raises, saying what is at the
    path (the CLI passes its CliError). The Store is imported here, not at
    the top: the CLI's `doctor` must work without the store's dependencies."""
    if isinstance(store, (str, os.PathLike)):
        from .urls import UnsupportedURL, split_url
        url = split_url(store)
        if url is not None and url[0] != "file":  # s3://, or a scheme memckpt refuses
            try:
                return open_url(store, create=create), True
            except (UnsupportedURL, FileNotFoundError) as exc:
                if missing is None:
                    raise
                raise missing(str(exc)) from None
        if url is not None:
            from .urls import local_path
            store = local_path(store)
        if missing is not None and not create:
            p = Path(store)
            if not p.exists():
                raise missing(f"no store at {store}: no such file or directory")
            if not p.is_dir():
                raise missing(f"{store} is not a store: a store is a directory, and this is a file")
        from .local import Store
        return Store(store, create=create), True
    # anything with the Store's methods will do
    for attr in _DUCK:
        if not hasattr(store, attr):
            raise TypeError(f"store must be a path or a memckpt.Store, not {type(store).__name__}")
    return store, False


def open_url(url: Any, *, create: bool = False, page_size: int | None = None,
             storage_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """memckpt.open_store: the store that ``url`` names, opened (or
    created): a local path or file:// URL (memckpt.Store), or
    s3://bucket/prefix (memckpt.store.s3.S3Store, with ``storage_options``:
    the S3 client's endpoint, region and credentials, and ``spool_dir``,
    ``keep_local``; docs/object-store.md). Any other scheme is an
    UnsupportedURL error naming it."""
    from .urls import local_path, split_url
    parts = split_url(url)
    if parts is not None and parts[0] == "s3":
        from .s3 import S3Store
        return S3Store(os.fspath(url), create=create, page_size=page_size,
                       storage_options=storage_options, **kwargs)
    if storage_options:
        raise ValueError(f"storage_options are for object stores; {url!r} is a local store")
    if kwargs:
        raise TypeError(f"unexpected arguments for a local store: {', '.join(sorted(kwargs))}")
    from .local import Store
    return Store(local_path(url), create=create, page_size=page_size)
