"""Store: a local directory of checkpoint epochs.

API CONTRACT (the checkpointer and the CLI code against it; docs/format.md
describes the files):

    store = Store(path, create=True)       # opens (creating if asked): reads the header only;
                                           # writes nothing and takes no lock (see READERS below);
                                           # creating is race-free across processes (under the lock)
                                           # (optional: page_size=N for a new store; default: the
                                           # system's page size; an existing store keeps its own)
    store.path                             # pathlib.Path
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
    # StoreLocked (a MemckptError) "store ... is locked by pid N")
    w = store.begin(kind="full"|"incremental", parent=int|None, layout=dict,
                    page_size=int, npages=int, compress=None|"zstd"|"lz4")
        # an incremental epoch needs a committed parent with the same page_size
        # and npages; a full epoch's parent is optional and only informational
        # (lineage: the chain walk stops at a full epoch). The new manifest
        # records the parent's identity (parent_digest). MemckptError naming
        # the path if the directory at store.path is no longer the store this
        # Store opened (deleted, re-created), here and again before the commit
    w.epoch                                # the number this epoch will commit as
    w.add_pages(page_numbers: np.ndarray[uint64], data: np.ndarray[uint8, (n, page_size)])
        # may be called many times, page numbers strictly increasing across calls;
        # elides all-zero pages (in a full epoch: not recorded; in an incremental
        # one: recorded as a ZERO entry so the chain knows the page is zero now),
        # stores identical pages once (by BLAKE3 digest, within the epoch),
        # compresses if asked. Synchronous: the caller may reuse `data` on return.
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
        # is then unspecified).
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
    store.prune(keep_last=None, keep_every=None) -> list[int]  # removed epochs (ascending);
                                           # keeps the newest keep_last, every multiple of
                                           # keep_every, always the newest epoch, and every
                                           # ancestor a kept epoch needs (its chain: a full
                                           # epoch's lineage parent may go); removes newest first;
                                           # both None: removes nothing
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
"""
from __future__ import annotations

import collections
import copy
import errno
import fcntl
import json
import mmap
import os
import stat
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple

import blake3
import numpy as np

from .. import _core, _forksafe, _signals
from ..epoch import EpochInfo
from ..errors import CorruptionError, EpochNotFound, FormatError, MemckptError, StoreLocked
from . import format as fmt

# O_NONBLOCK: a FIFO (or a device) planted at a store file's name must not
# hang whoever opens it; O_NOCTTY: nor become our terminal. Every fd opened
# here is fstat-checked to be a regular file before it is read or written.
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_O_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
             | os.O_NONBLOCK | os.O_NOCTTY)
_FILE_MODE = 0o600
_DIR_MODE = 0o700
try:
    _IOV_MAX = max(16, min(int(os.sysconf("SC_IOV_MAX")), 1024))
except (ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 1024
_CHUNK_BYTES = 32 << 20       # add_pages works in chunks this big: bounded temporaries
_VERIFY_BATCH_BYTES = 16 << 20
_LOCK_WAIT_S = 5.0            # how long a write waits out a creator or a sweep (never a writer)
_MANIFEST_CACHE = 4096         # manifests a Store keeps parsed (about 26 MiB at most)
_WRITER_WAIT_S = 600.0        # how long a write waits for this Store's open epoch writer
# parsed indexes a Store keeps, in bytes: a full epoch of a 512 MiB arena has a
# 7 MiB index, so a count of entries would bound nothing
_INDEX_CACHE_BYTES = 64 << 20
# links of epochs no longer listed that a Store may keep before it forgets them
_LINK_SLACK = 1024
_SNAPSHOT_TRIES = 5            # reads a concurrent prune/compaction may spoil before a reader gives up


class _MissingFile(CorruptionError):
    """A file a committed manifest names is absent (a concurrent compact/prune, or damage)."""


# -- small I/O helpers ---------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind_of(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def _not_regular(where: str, mode: int) -> FormatError:
    return FormatError(f"{where}: is {_kind_of(mode)}, not a regular file; "
                       "store files must be regular files")


def _check_regular(fd: int, where: str) -> os.stat_result:
    """fstat(fd), refusing anything but a regular file: a FIFO, device or
    socket planted at a store file's name would hang or mislead a read."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(where, st.st_mode)
    return st


def _open_file(path: Path, flags: int, where: str, mode: int = _FILE_MODE) -> int:
    """os.open(path, flags) for a store file, checked to be a regular file.
    FileNotFoundError passes through; a symbolic link, FIFO, device, socket
    or directory at ``path`` is a FormatError naming ``where``."""
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise FormatError(f"{where}: is a symbolic link; store files must be regular files") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            # a socket, a FIFO opened for writing with no reader, a directory,
            # a device without a driver: say what it is, not the bare errno
            try:
                st = os.lstat(path)
            except OSError:
                raise exc from None
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(where, st.st_mode) from None
        raise
    try:
        _check_regular(fd, where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_durable(path: Path, data: bytes) -> None:
    """Create ``path`` (owner-only, never through a symlink) holding ``data``,
    fsynced: the step before a rename or link publishes it."""
    fd = _open_file(path, _O_CREATE, str(path))
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: Any, offset: int) -> None:
    mv = memoryview(data).cast("B")
    while mv.nbytes:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def _nbytes(b: Any) -> int:
    n = getattr(b, "nbytes", None)
    return int(n) if n is not None else len(b)


def _pwritev_all(fd: int, bufs: list[Any], offset: int) -> None:
    """Write bufs back to back from offset, IOV_MAX at a time, finishing short writes."""
    for i in range(0, len(bufs), _IOV_MAX):
        part = bufs[i:i + _IOV_MAX]
        sizes = [_nbytes(b) for b in part]
        want = sum(sizes)
        n = os.pwritev(fd, part, offset)
        if n != want:  # short write (a signal, or > 2 GiB in one call): finish piecewise
            pos = 0
            for b, sz in zip(part, sizes):
                if pos + sz > n:
                    skip = max(0, n - pos)
                    _write_all(fd, memoryview(b).cast("B")[skip:], offset + pos + skip)
                pos += sz
        offset += want


def _preadv_exact(fd: int, bufs: list[Any], offset: int, where: str) -> None:
    want = sum(_nbytes(b) for b in bufs)
    n = os.preadv(fd, bufs, offset)
    if n == want:
        return
    views = [memoryview(b).cast("B") for b in bufs]
    while True:
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            offset += views[0].nbytes
            views.pop(0)
        if not views:
            return
        if n:
            offset += n
            views[0] = views[0][n:]
        got = os.preadv(fd, views[:_IOV_MAX], offset)
        if got == 0:
            raise CorruptionError(f"{where}: file ends early (at byte {offset}); truncated?")
        n = got


def _read_small(path: Path, limit: int, where: str) -> bytes:
    fd = _open_file(path, _O_READ, where)
    try:
        return _read_fd(fd, limit, where)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int, where: str) -> bytes:
    """The whole (small) file open on fd, refusing more than limit bytes."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise FormatError(f"{where}: {size} bytes is more than a store file of this "
                          f"kind may hold ({limit})")
    parts: list[bytes] = []
    got = 0
    while True:
        b = os.pread(fd, size + 1 - got if got <= size else 4096, got)
        if not b:
            return b"".join(parts)
        parts.append(b)
        got += len(b)
        if got > limit:
            raise FormatError(f"{where}: more than a store file of this kind may hold ({limit})")


def _fmt_epochs(epochs: list[int]) -> str:
    head = ", ".join(str(e) for e in epochs[:5])
    more = f" and {len(epochs) - 5} more" if len(epochs) > 5 else ""
    return f"epoch{'s' if len(epochs) > 1 else ''} {head}{more}"


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# -- the writer lock -------------------------------------------------------------------
def _close_copies_of(path: Path) -> None:
    """In a fork child: close every fd of this process open on the file at
    ``path``. For a lock forked in the middle of its open or release, whose
    fd number the child cannot trust: it may be closed and reused already,
    and closing an unrelated fd (a Pool worker's pipe) would be worse than
    keeping the lock."""
    try:
        st = os.stat(path, follow_symlinks=False)
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        try:
            fst = os.fstat(int(name))
        except (OSError, ValueError):
            continue
        if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
            os.close(int(name))


class _Lock:
    """An exclusive flock on STORE/lock; the file holds "pid role" of its holder.

    A flock belongs to the open file description, which a child of fork()
    shares: while any child kept its copy of the fd, the lock would outlive
    the parent's release. So the child closes its copy at once
    (:meth:`_detach_in_child`), and never unlocks or truncates: that would
    be the parent's lock and the parent's pid."""

    def __init__(self, store_path: Path, role: str, *, wait: float) -> None:
        self.fd: int | None = None
        self._owner_pid = os.getpid()
        self._path = store_path / fmt.LOCK_NAME
        # True while an fd of ours may exist that self.fd does not show (here,
        # and in release): a child forked then finds its copy by identity
        self._busy = True
        _forksafe.register(self)
        try:
            # never lock (or truncate) a file through a link, nor a FIFO or device
            # planted as the lock (flock on those fails with a bare EINVAL)
            fd = _open_file(self._path,
                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
                            | os.O_NOCTTY, f"store {store_path}: {fmt.LOCK_NAME}")
        except BaseException:
            self._busy = False
            raise
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").split()
                    pid = holder[0] if holder else "?"
                    what = holder[1] if len(holder) > 1 else ""
                    # a process creating the store, or sweeping it, holds
                    # the lock for a moment: wait it out
                    if what in ("create", "sweep", "") and time.monotonic() < deadline:
                        time.sleep(0.002)
                        continue
                    who = ("this process" if pid == str(os.getpid()) else f"pid {pid}" if holder
                           else f"a process that has not written its pid into {fmt.LOCK_NAME} "
                                "(a writer starting, or another program locking the file)")
                    raise StoreLocked(f"store {store_path} is locked by {who}"
                                      f"{' (' + what + ')' if what else ''}: one writer at a time") from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
            except OSError as exc:  # a full disk: say where
                raise type(exc)(exc.errno, f"{exc.strerror} (writing the holder's pid into the "
                                f"lock of store {store_path})", str(self._path)) from None
        except BaseException:
            os.close(fd)
            self._busy = False
            raise
        self.fd = fd
        self._busy = False

    def _detach_in_child(self) -> None:
        """In a child of fork(): close the child's copy of the fd, which is
        all it holds of the parent's lock (no unlock, no truncate)."""
        fd, self.fd = self.fd, None
        if self._busy:
            _close_copies_of(self._path)
        elif fd is not None:
            os.close(fd)

    def release(self) -> None:
        if self._owner_pid != os.getpid():
            return self._detach_in_child()
        self._busy = True
        fd, self.fd = self.fd, None
        try:
            if fd is not None:
                try:
                    os.ftruncate(fd, 0)
                finally:
                    os.close(fd)  # closing the last fd of the description drops the flock
        finally:
            self._busy = False

    def __enter__(self) -> _Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _HeldLock:
    """The writer lock around a maintenance call (compact, prune), taken and
    released whole: an exception from a signal handler (Ctrl-C) that lands
    just after the lock is taken would otherwise leave its fd, and so the
    flock, held for good by this process."""

    def __init__(self, store_path: Path, role: str) -> None:
        self._args = (store_path, role)
        self._lock: _Lock | None = None

    def __enter__(self) -> _HeldLock:
        try:
            with _signals.deferred():
                self._lock = _Lock(*self._args, wait=_LOCK_WAIT_S)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with _signals.deferred():
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()


def _as_pages(page_numbers: Any, what: str = "page_numbers") -> np.ndarray:
    p = np.asarray(page_numbers)
    if p.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, not of shape {p.shape}")
    if p.size == 0:
        return np.empty(0, np.uint64)
    if p.dtype.kind == "i":
        if (p < 0).any():
            raise ValueError(f"{what} must not be negative")
    elif p.dtype.kind != "u":
        raise TypeError(f"{what} must be integers, not {p.dtype}")
    return p.astype(np.uint64, copy=False)


class _Link(NamedTuple):
    """What a chain walk needs of one epoch's manifest (under 0.5 KiB):
    kept for every epoch a Store has seen, apart from the bounded manifest
    cache, so that walking a chain of thousands of epochs reads no file.
    ``key`` is the manifest file's (inode, size, mtime): a compaction or a
    prune in another process changes it."""
    key: tuple[int, int, int]
    parent: int | None
    kind: str
    npages: int
    identity: str
    parent_digest: str | None


def _link_of(doc: dict[str, Any], key: tuple[int, int, int]) -> _Link:
    return _Link(key, doc.get("parent"), doc["kind"], doc["npages"], fmt.manifest_identity(doc),
                 doc.get("parent_digest"))


def _check_link(epoch: int, child: int, link: _Link, parent_link: _Link) -> None:
    """The tie between `child` (of link) and its parent, on the way to `epoch`."""
    parent = link.parent
    if parent_link.npages != link.npages:
        raise CorruptionError(f"epoch {epoch}: epoch {child} has {link.npages} pages "
                              f"but its parent {parent} has {parent_link.npages}")
    if link.parent_digest is not None and link.parent_digest != parent_link.identity:
        raise CorruptionError(
            f"epoch {epoch}: the chain is spliced: epoch {child} was written on an epoch {parent} "
            f"whose manifest digest is {link.parent_digest[:16]}..., but this store's epoch "
            f"{parent} is {parent_link.identity[:16]}... (an epoch {parent} from another store or "
            f"another history: epoch {child} would restore a mix of the two)")


def _info_from(doc: dict[str, Any]) -> EpochInfo:
    counts, timings = doc["counts"], doc["timings"]
    return EpochInfo(
        epoch=doc["epoch"], parent=doc.get("parent"), kind=doc["kind"],
        pages_dirty=counts["pages_dirty"], pages_stored=counts["pages_stored"],
        bytes_on_disk=doc["bytes_on_disk"], pause_s=float(timings["pause_s"]),
        total_s=float(timings["total_s"]), created=float(doc["created"]),
        label=doc.get("label"), tracker=doc.get("tracker"), mode=doc.get("mode"),
        extra=copy.deepcopy(doc.get("extra", {})),
    )


class Store:
    """A directory of immutable checkpoint epochs; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], create: bool = False, *,
                 page_size: int | None = None) -> None:
        self.path = Path(path)
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
        if page_size is not None and not fmt.valid_page_size(page_size):
            raise ValueError(f"page_size {page_size!r} must be a power of two in "
                             f"{fmt.MIN_PAGE_SIZE}..{fmt.MAX_PAGE_SIZE}")
        # Only the writer sweeps, under its lock: at the first write of this
        # Store object (begin, compact, prune, sweep), and at the next write
        # after one of its own epochs did not commit (_sweep_if_due). Opening
        # reads the header and nothing else, so readers write nothing.
        self._swept = False
        self._unsettled: tuple[int, str] | None = None  # (epoch, pack name) being written
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

    def __repr__(self) -> str:
        return f"<memckpt.Store {str(self.path)!r}>"

    def close(self) -> None:
        """Drop cached manifests and indexes. A Store holds no file open
        between calls (a writer holds its own files and the lock), so this is
        all there is to close; the Store stays usable."""
        self._drop_caches()
        with self._cache_lock:
            self._links.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the store header ----------------------------------------------------------
    def _create(self, page_size: int) -> None:
        """Make the directory a store unless it is one. Race-free across
        processes: the header is made under the writer lock (no other
        creator, and no writer's sweep, can remove its temporary or see a
        half-made store), and it is published by link(), which never replaces
        a header another creator published first."""
        header = self.path / fmt.STORE_HEADER
        if os.path.lexists(header):  # a store already (or something _read_header will name)
            return
        try:
            os.mkdir(self.path, _DIR_MODE)
            os.chmod(self.path, _DIR_MODE)  # whatever the umask
        except FileExistsError:
            pass
        except FileNotFoundError:  # its parents too
            self.path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.path, _DIR_MODE)
        if not self.path.is_dir():
            raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(self.path))
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                lock = _Lock(self.path, "create", wait=0.0)
                break
            except StoreLocked:
                # another creator, or a writer of the store another creator
                # has just made (then there is nothing left to do)
                if os.path.lexists(header):
                    return
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)
        with lock:
            if os.path.lexists(header):  # another creator made it while we waited
                return
            others = [n for n in os.listdir(self.path)
                      if n != fmt.LOCK_NAME and not n.endswith(fmt.TMP_SUFFIX)]
            if others:
                raise FormatError(f"{self.path} is not empty and is not a memckpt store "
                                  f"(no {fmt.STORE_HEADER}); refusing to make a store of it")
            doc = fmt.sign({"format": fmt.STORE_FORMAT, "version": fmt.VERSION,
                            "page_size": page_size, "created": time.time()})
            tmp = self.path / f"{fmt.STORE_HEADER}.{os.getpid()}{fmt.TMP_SUFFIX}"
            try:
                _write_durable(tmp, fmt.dump_document(doc))
                os.link(tmp, header)  # exclusive: never replaces a header
            except FileExistsError:  # a creator that took no lock (an older memckpt) won
                pass
            finally:
                _unlink(tmp)
            _fsync_dir(self.path)

    def _read_header(self) -> int:
        where = f"store {self.path}: {fmt.STORE_HEADER}"
        if not self.path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such store directory", str(self.path))
        try:
            raw = _read_small(self.path / fmt.STORE_HEADER, fmt.MAX_HEADER_BYTES, where)
        except FileNotFoundError:
            raise FormatError(f"{self.path} is not a memckpt store (it has no {fmt.STORE_HEADER}); "
                              f"Store(path, create=True) makes one") from None
        doc = fmt.load_document(raw, where=where, fmt=fmt.STORE_FORMAT)
        ps = fmt.check_store_header(doc, where)
        if self._identity is None:
            d = os.stat(self.path)
            self._identity = (d.st_dev, d.st_ino, bytes(raw))
        return ps

    # the directory (device, inode) and the header's bytes this Store opened:
    # a writer refuses to write into anything else at self.path. The bytes,
    # not the header's inode: a file system may give a directory and header
    # made again at once the inodes just freed (tmpfs does)
    _identity: tuple[int, int, bytes] | None = None

    def _check_same_store(self) -> None:
        """Refuse to write unless the directory at self.path is still the store
        this Store opened, with its header: deleted (and perhaps re-created)
        under a live writer, it would take epochs that nothing can restore."""
        want = self._identity
        if want is None:
            return
        try:
            d = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            d = None
        raw = None
        if d is not None:
            try:
                raw = _read_small(self.path / fmt.STORE_HEADER, fmt.MAX_HEADER_BYTES,
                                  f"store {self.path}: {fmt.STORE_HEADER}")
            except (FileNotFoundError, NotADirectoryError):
                pass
            if (d.st_dev, d.st_ino, raw) == want:
                return
        if d is None:
            why = "the store directory was deleted"
        elif (d.st_dev, d.st_ino) != want[:2]:
            why = "the directory at this path is not the one it opened (deleted and re-created?)"
        elif raw is None:
            why = f"the store's {fmt.STORE_HEADER} is gone (it, or the directory, was deleted)"
        else:
            why = (f"the store's {fmt.STORE_HEADER} is not the one it opened (another store "
                   f"made at this path?)")
        raise MemckptError(f"store {self.path}: {why} since this process opened it; no epoch "
                           f"can be committed there (the epochs it held are not there any more): "
                           f"open the store again to start a new one")

    # -- manifests -------------------------------------------------------------------
    def epoch_numbers(self) -> list[int]:
        """The committed epochs' numbers, from the manifests' names alone (no
        manifest is read, so one damaged manifest does not hide the others)."""
        out = []
        for name in os.listdir(self.path):
            if name.endswith(".json"):  # skips two thirds of the regex matches
                e = fmt.parse_manifest_name(name)
                if e is not None:
                    out.append(e)
        out.sort()
        if len(self._links) > len(out) + _LINK_SLACK:  # retired (by any process) since cached
            listed = set(out)
            with self._cache_lock:
                for gone in [e for e in self._links if e not in listed]:
                    del self._links[gone]
        return out

    def _doc(self, epoch: int, *, fresh: bool = False) -> dict[str, Any]:
        """The validated manifest of a committed epoch (cached; do not mutate)."""
        if not fmt._is_int(epoch):
            try:  # numpy integers too
                epoch = _index_arg(epoch, "epoch")
            except TypeError:
                raise EpochNotFound(f"store {self.path} has no epoch {epoch!r}") from None
        if not 0 <= epoch <= fmt.MAX_EPOCH:
            raise EpochNotFound(f"store {self.path} has no epoch {epoch!r}")
        name = fmt.manifest_name(epoch)
        where = f"epoch {epoch}: {name}"
        fd = self._open_regular(name, where, EpochNotFound(f"store {self.path} has no epoch {epoch}"))
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if not fresh:
                with self._cache_lock:
                    hit = self._manifests.get(epoch)
                    if hit is not None:
                        self._manifests.move_to_end(epoch)
                if hit is not None and hit[0] == key:
                    link = self._links.get(epoch)
                    if link is None or link.key != key:
                        with self._cache_lock:
                            self._links[epoch] = _link_of(hit[1], key)
                    return hit[1]
            raw = _read_fd(fd, fmt.MAX_MANIFEST_BYTES, where)
        finally:
            os.close(fd)
        doc = fmt.load_document(raw, where=where, fmt=fmt.EPOCH_FORMAT)
        fmt.check_manifest(doc, epoch=epoch, page_size=self.page_size, where=where)
        with self._cache_lock:
            self._links[epoch] = _link_of(doc, key)
            self._manifests[epoch] = (key, doc)
            self._manifests.move_to_end(epoch)
            while len(self._manifests) > _MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return doc

    def epochs(self) -> list[EpochInfo]:
        out = []
        for e in self.epoch_numbers():
            try:
                out.append(_info_from(self._doc(e)))
            except EpochNotFound:  # retired by a compact/prune since the listing
                continue
        return out

    def latest(self) -> int | None:
        nums = self.epoch_numbers()
        return nums[-1] if nums else None

    def info(self, epoch: int) -> EpochInfo:
        return _info_from(self._doc(epoch))

    def manifest(self, epoch: int) -> dict[str, Any]:
        return copy.deepcopy(self._doc(epoch))

    def layout(self, epoch: int) -> dict[str, Any]:
        return copy.deepcopy(self._doc(epoch)["layout"])

    def _link(self, epoch: int, dir_fd: int | None = None) -> _Link:
        """The chain link of a committed epoch: from the links kept while its
        manifest file is the same (one lstat), else from its manifest."""
        hit = self._links.get(epoch) if fmt._is_int(epoch) else None
        if hit is not None:
            try:
                st = os.stat(fmt.manifest_name(epoch), dir_fd=dir_fd, follow_symlinks=False) \
                    if dir_fd is not None else os.lstat(self.path / fmt.manifest_name(epoch))
            except FileNotFoundError:
                with self._cache_lock:
                    self._links.pop(epoch, None)
                raise EpochNotFound(f"store {self.path} has no epoch {epoch}") from None
            if (st.st_ino, st.st_size, st.st_mtime_ns) == hit.key:
                return hit
        doc = self._doc(epoch)
        # as _doc left it; a key that never matches if another thread dropped it since
        return self._links.get(epoch) or _link_of(doc, (-1, -1, -1))

    def chain(self, epoch: int) -> list[int]:
        """[full, ..., epoch] by the parent pointers; every step checks that
        the parent is there, has as many pages, and is the epoch the child was
        written on (its parent_digest). O(depth) lstat calls once the links
        are known, whatever the manifest cache holds."""
        try:
            dfd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            dfd = None  # _doc says what is wrong (no such epoch, ...)
        links = self._links
        try:
            link = self._link(epoch, dfd)
            epoch = link_epoch = int(epoch)
            out = [epoch]
            while link.kind != "full":
                parent = link.parent
                assert parent is not None  # check_manifest: an incremental epoch has one
                # _link's hit path, inline: this loop runs thousands of times a walk
                plink = links.get(parent)
                if plink is not None and dfd is not None:
                    try:
                        st = os.stat(f"e{parent:08d}.json", dir_fd=dfd, follow_symlinks=False)
                        if (st.st_ino, st.st_size, st.st_mtime_ns) != plink.key:
                            plink = None
                    except OSError:
                        plink = None
                if plink is None:
                    try:
                        plink = self._link(parent, dfd)
                    except EpochNotFound:
                        raise CorruptionError(f"epoch {epoch}: the chain is broken: epoch "
                                              f"{link_epoch}'s parent {parent} is missing") from None
                if plink.npages != link.npages or (link.parent_digest is not None
                                                   and link.parent_digest != plink.identity):
                    _check_link(epoch, link_epoch, link, plink)
                out.append(parent)
                link, link_epoch = plink, parent
        finally:
            if dfd is not None:
                os.close(dfd)
        out.reverse()
        return out

    # -- data files -------------------------------------------------------------------
    def _open_regular(self, name: str, where: str, missing: Exception) -> int:
        """Open a store file for reading, never through a symbolic link nor
        anything but a regular file (see _open_file); raise ``missing`` if
        it is not there."""
        try:
            return _open_file(self.path / name, _O_READ, where)
        except FileNotFoundError:
            raise missing from None

    def _open_data(self, epoch: int, doc: dict[str, Any], ext: str) -> int:
        name = doc["files"][ext]["name"]
        where = f"epoch {epoch}: {name}"
        fd = self._open_regular(name, where, _MissingFile(f"{where}: the file is missing"))
        try:
            size = os.fstat(fd).st_size
            want = doc["files"][ext]["size"]
            if size != want:
                raise CorruptionError(f"{where}: is {size} bytes but the manifest says {want} "
                                      f"({'truncated' if size < want else 'extended'})")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _index(self, epoch: int, *, fresh: bool = False) -> np.ndarray:
        doc = self._doc(epoch, fresh=fresh)
        f = doc["files"]["idx"]
        fd = self._open_data(epoch, doc, "idx")
        try:
            st = os.fstat(fd)
            key = (f["name"], f["blake3"], st.st_ino, st.st_size, st.st_mtime_ns)
            if not fresh:
                with self._cache_lock:
                    hit = self._indexes.get(key)
                    if hit is not None:
                        self._indexes.move_to_end(key)
                if hit is not None:
                    return hit
            buf = bytearray(f["size"])
            if buf:
                _preadv_exact(fd, [buf], 0, f"epoch {epoch}: {f['name']}")
        finally:
            os.close(fd)
        where = f"epoch {epoch}: {f['name']}"
        if blake3.blake3(buf).hexdigest() != f["blake3"]:
            raise CorruptionError(f"{where}: BLAKE3 digest mismatch (the file is damaged)")
        recs = fmt.parse_index(bytes(buf), epoch=epoch, page_size=self.page_size,
                               npages=doc["npages"], pack_size=doc["files"]["pack"]["size"],
                               where=where)
        if len(recs) != doc["counts"]["records"]:
            raise CorruptionError(f"{where}: holds {len(recs)} records, the manifest counts "
                                  f"{doc['counts']['records']}")
        self._cache_index(key, recs)
        return recs

    def _cache_index(self, key: tuple[Any, ...], recs: np.ndarray) -> None:
        """Keep recs, least recently used out first, within _INDEX_CACHE_BYTES
        (an index larger than that is not kept at all)."""
        if recs.nbytes > _INDEX_CACHE_BYTES:
            return
        with self._cache_lock:
            old = self._indexes.pop(key, None)
            if old is not None:
                self._index_bytes -= old.nbytes
            self._indexes[key] = recs
            self._index_bytes += recs.nbytes
            while self._index_bytes > _INDEX_CACHE_BYTES:
                _, gone = self._indexes.popitem(last=False)
                self._index_bytes -= gone.nbytes

    def _open_pack(self, epoch: int, doc: dict[str, Any]) -> int:
        fd = self._open_data(epoch, doc, "pack")
        try:
            where = f"epoch {epoch}: {doc['files']['pack']['name']}"
            hdr = os.pread(fd, fmt.PACK_HEADER_SIZE, 0)
            fmt.parse_pack_header(hdr, epoch=epoch, page_size=self.page_size,
                                  minor=doc["version"][1], where=where)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _drop_caches(self) -> None:
        with self._cache_lock:
            self._manifests.clear()
            self._indexes.clear()
            self._index_bytes = 0

    # -- reading ------------------------------------------------------------------------
    def _resolve(self, indexes: list[np.ndarray], npages: int,
                 req: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each wanted page: which epoch of the chain (position, -1: none)
        holds it newest, and at which record. Dense over the arena if req is None."""
        if req is None:
            dest = np.arange(npages, dtype=np.int64)
            owner = np.full(npages, -1, dtype=np.int32)
            ridx = np.zeros(npages, dtype=np.int64)
            for pos, recs in enumerate(indexes):  # oldest first: newer ones overwrite
                p = recs["page"]
                owner[p] = pos
                ridx[p] = np.arange(len(p), dtype=np.int64)
            return dest, owner, ridx
        dest = req.astype(np.int64)
        owner = np.full(len(req), -1, dtype=np.int32)
        ridx = np.zeros(len(req), dtype=np.int64)
        for pos, recs in enumerate(indexes):
            p = recs["page"]
            if not len(p):
                continue
            i = np.searchsorted(p, req)
            hit = i < len(p)
            hit[hit] = p[i[hit]] == req[hit]
            owner[hit] = pos
            ridx[hit] = i[hit]
        return dest, owner, ridx

    def _fetch(self, holder: int, fd: int, pack_name: str, recs: np.ndarray, out: np.ndarray,
               rows: np.ndarray, reading: int | None,
               tick: Callable[[int], None] | None = None) -> None:
        """Fill out[rows] from stored records (none ZERO) of epoch `holder`; check digests."""
        if not len(recs):
            return
        order = np.argsort(recs["offset"], kind="stable")
        recs, rows = recs[order], rows[order]
        where = f"epoch {holder}: {pack_name}"
        comp = (recs["flags"] & (fmt.FLAG_ZSTD | fmt.FLAG_LZ4)) != 0
        if comp.any():
            crecs, crows = recs[comp], rows[comp]
            self._fetch_compressed(fd, crecs, out, crows, where, holder)
            self._check_digests(holder, pack_name, crecs, out, crows, reading)
            if tick is not None:
                tick(len(crecs))
            recs, rows = recs[~comp], rows[~comp]
        n = len(recs)
        if not n:
            return
        step = max(1, _CHUNK_BYTES // self.page_size)
        if n <= step:
            self._fetch_raw(fd, recs, out, rows, where)
            self._check_digests(holder, pack_name, recs, out, rows, reading)
            if tick is not None:
                tick(n)
            return
        # read batch i+1 in a worker (preadv releases the GIL) while batch i is hashed here
        bounds = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
        with ThreadPoolExecutor(1, thread_name_prefix="memckpt-read") as ex:
            def read(b: tuple[int, int]) -> None:
                self._fetch_raw(fd, recs[b[0]:b[1]], out, rows[b[0]:b[1]], where)
            fut = ex.submit(read, bounds[0])
            for i, (lo, hi) in enumerate(bounds):
                fut.result()
                if i + 1 < len(bounds):
                    fut = ex.submit(read, bounds[i + 1])
                self._check_digests(holder, pack_name, recs[lo:hi], out, rows[lo:hi], reading)
                if tick is not None:
                    tick(hi - lo)

    def _check_digests(self, holder: int, pack_name: str, recs: np.ndarray, out: np.ndarray,
                       rows: np.ndarray, reading: int | None) -> None:
        # every page's digest in one call into the core (GIL released)
        n = len(rows)
        if not n:
            return
        r0 = int(rows[0])
        if int(rows[-1]) - r0 == n - 1 and (n < 2 or bool((np.diff(rows) == 1).all())):
            got = _core.hash_pages(out[r0:r0 + n])
        else:
            got = _core.hash_pages_at(out, rows)
        bad = (got != recs["digest"]).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            lead = f"reading epoch {reading}: " if reading is not None and reading != holder else ""
            raise CorruptionError(
                f"{lead}epoch {holder}: page {int(recs['page'][i])} in {pack_name} (offset "
                f"{int(recs['offset'][i])}) does not match its BLAKE3 digest"
                + (f" ({int(bad.sum())} pages bad)" if bad.sum() > 1 else ""))

    def _fetch_raw(self, fd: int, recs: np.ndarray, out: np.ndarray, rows: np.ndarray,
                   where: str) -> None:
        n = len(recs)
        if not n:
            return
        ps = self.page_size
        off = recs["offset"].astype(np.int64)
        fbreak = np.ones(n, dtype=bool)
        fbreak[1:] = off[1:] != off[:-1] + ps
        seg = fbreak.copy()
        seg[1:] |= rows[1:] != rows[:-1] + 1
        starts = np.flatnonzero(seg)
        ends = np.append(starts[1:], n)
        new_run = fbreak[starts]
        iov: list[Any] = []
        run_off = 0
        rows_l = rows.tolist()
        for s, e, nr in zip(starts.tolist(), ends.tolist(), new_run.tolist()):
            if (nr or len(iov) >= _IOV_MAX) and iov:
                _preadv_exact(fd, iov, run_off, where)
                iov = []
            if not iov:
                run_off = int(off[s])
            r = rows_l[s]
            iov.append(out[r:r + (e - s)])
        if iov:
            _preadv_exact(fd, iov, run_off, where)

    def _fetch_compressed(self, fd: int, recs: np.ndarray, out: np.ndarray, rows: np.ndarray,
                          where: str, holder: int) -> None:
        ps = self.page_size
        flags = recs["flags"]
        zd = fmt.codec("zstd").ZstdDecompressor() if (flags & fmt.FLAG_ZSTD).any() else None
        lz = fmt.codec("lz4") if (flags & fmt.FLAG_LZ4).any() else None
        off = recs["offset"].tolist()
        ln = recs["length"].tolist()
        fl = flags.tolist()
        rows_l = rows.tolist()
        n = len(off)
        i = 0
        while i < n:
            j = i + 1
            end = off[i] + ln[i]
            while j < n and off[j] == end and end - off[i] < _CHUNK_BYTES:
                end += ln[j]
                j += 1
            buf = os.pread(fd, end - off[i], off[i])
            if len(buf) != end - off[i]:
                raise CorruptionError(f"{where}: file ends early (at byte {off[i] + len(buf)}); truncated?")
            mv = memoryview(buf)
            base = off[i]
            for k in range(i, j):
                piece = mv[off[k] - base:off[k] - base + ln[k]]
                try:
                    if fl[k] & fmt.FLAG_ZSTD:
                        zs = fmt.codec("zstd")
                        if zs.frame_content_size(piece) != ps:
                            raise ValueError("frame does not hold one page")
                        page = zd.decompress(piece, max_output_size=ps)  # type: ignore[union-attr]
                    else:
                        page = lz.decompress(piece, uncompressed_size=ps)  # type: ignore[union-attr]
                except Exception as exc:  # the codecs' own error types
                    if isinstance(exc, MemckptError):
                        raise
                    raise CorruptionError(f"epoch {holder}: page {int(recs['page'][k])} in {where.split(': ', 1)[-1]} "
                                          f"(offset {off[k]}) does not decompress: {exc}") from None
                if len(page) != ps:
                    raise CorruptionError(f"epoch {holder}: page {int(recs['page'][k])} decompresses "
                                          f"to {len(page)} bytes, not {ps}")
                out[rows_l[k]] = np.frombuffer(page, dtype=np.uint8)
            i = j

    def read_into(self, epoch: int, out: np.ndarray, pages: Any = None, *,
                  progress: Callable[[int, int], None] | None = None,
                  out_is_zero: bool = False) -> None:
        """See the module docstring; progress(done, total) is called as pages are filled.

        ``out_is_zero=True`` promises that ``out`` reads as zeros already (a
        fresh arena): pages the epoch holds as zero are then left untouched,
        so restoring a sparse arena does not make all of it resident. Page data
        is read from the pack files straight into ``out`` (``preadv``)."""
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 2:
            raise TypeError("out must be a 2-D uint8 numpy array of (npages, page_size)")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be C-contiguous and writeable")
        req = None
        if pages is not None:
            req = np.unique(_as_pages(pages, "pages"))
        for attempt in range(_SNAPSHOT_TRIES):
            before = set(self.epoch_numbers())
            used: dict[int, Any] = {}
            try:
                self._read_into(epoch, out, req, progress, out_is_zero, used)
                return
            except (CorruptionError, FormatError, EpochNotFound) as exc:
                # a prune or compaction in another process may have retired
                # files or manifests between our reading the manifests and the files
                self._raced(epoch, before, used, exc, "read", attempt)
                self._drop_caches()

    # -- snapshot reads beside a writer ---------------------------------------------------
    # Readers take no lock, so a prune or compaction in another process may
    # retire what a read is reading. Retirement removes an epoch's manifest (or
    # renames a merged one over it) before any file the old manifest names, and
    # never reuses a name. So a read that tripped over a retirement finds, once
    # it has failed, that a manifest it used names other files now or is gone,
    # or (if it failed walking the chain, before it had the manifests) that an
    # epoch up to the one it read, present when it began, is gone. Then it is
    # retried with fresh manifests (or, if the epoch itself is gone, reported
    # as retired); a failure with all of it still in place is the store's own.
    def _raced(self, target: int, before: set[int], used: dict[int, Any], exc: BaseException,
               what: str, attempt: int) -> set[int]:
        """After a read of ``target``'s chain failed with ``exc``: re-raise it if
        no prune or compaction moved anything under the read (the damage is
        real); EpochNotFound if ``target`` itself was retired; else the fresh
        listing to retry from (or give up, naming the race, after the last try).
        ``used``: epoch -> _manifest_key() of the manifests the read used, taken
        before it read them."""
        if target not in before and target not in used:
            raise exc  # there was no such epoch to begin with
        after = set(self.epoch_numbers())
        moved = sorted(e for e in before - after if e <= target)
        for e, key in used.items():
            if e not in moved and self._manifest_key(e) != key:
                moved.append(e)  # retired, or replaced by a compaction's merged epoch
        moved.sort()
        if not moved:
            raise exc
        if target not in after:  # (a compaction's merged epoch keeps its number: not retired)
            raise EpochNotFound(f"store {self.path}: epoch {target} was retired during {what} by a "
                                f"prune or compaction (in another process)") from exc
        if attempt + 1 >= _SNAPSHOT_TRIES:
            raise MemckptError(f"store {self.path}: gave up trying to {what} epoch {target} after "
                               f"{_SNAPSHOT_TRIES} tries: a prune or compaction (in another process) "
                               f"kept retiring epochs of its chain (the last one moved "
                               f"{_fmt_epochs(moved)}; the read failed with: {exc})") from exc
        return after

    def _manifest_key(self, epoch: int) -> tuple[int, int, int] | None:
        """(inode, size, mtime) of the epoch's manifest file; None if there is
        none. A prune changes it to None, a compaction's rename to another."""
        try:
            st = os.lstat(self.path / fmt.manifest_name(epoch))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_into(self, epoch: int, out: np.ndarray, req: np.ndarray | None,
                   progress: Callable[[int, int], None] | None, out_is_zero: bool,
                   used: dict[int, Any]) -> None:
        chain = self.chain(epoch)
        used.update((e, self._manifest_key(e)) for e in chain)
        docs = [self._doc(e) for e in chain]
        npages = docs[-1]["npages"]
        if out.shape != (npages, self.page_size):
            raise ValueError(f"out has shape {out.shape}, epoch {epoch} needs ({npages}, {self.page_size})")
        if req is not None and len(req) and int(req[-1]) >= npages:
            raise ValueError(f"page {int(req[-1])} is beyond epoch {epoch}'s {npages} pages")
        indexes = [self._index(e) for e in chain]
        fds: list[int] = []
        try:
            for e, d in zip(chain, docs):
                fds.append(self._open_pack(e, d))
            dest, owner, ridx = self._resolve(indexes, npages, req)
            total = len(dest)
            done = [0]

            def tick(n: int) -> None:
                done[0] += n
                if progress is not None:
                    progress(done[0], total)

            none = owner < 0
            if none.any():
                if not out_is_zero:
                    out[dest[none]] = 0
                tick(int(none.sum()))
            for pos, e in enumerate(chain):
                sel = np.flatnonzero(owner == pos)
                if not sel.size:
                    continue
                recs = indexes[pos][ridx[sel]]
                rows = dest[sel]
                zero = (recs["flags"] & fmt.FLAG_ZERO) != 0
                if zero.any():
                    if not out_is_zero:
                        out[rows[zero]] = 0
                    tick(int(zero.sum()))
                    recs, rows = recs[~zero], rows[~zero]
                self._fetch(e, fds[pos], docs[pos]["files"]["pack"]["name"], recs, out, rows, epoch,
                            tick)
            if progress is not None and done[0] != total:
                progress(total, total)
        finally:
            for fd in fds:
                os.close(fd)

    def _effective_digests(self, chain: list[int], req: np.ndarray) -> np.ndarray:
        indexes = [self._index(e) for e in chain]
        npages = self._doc(chain[-1])["npages"]
        _, owner, ridx = self._resolve(indexes, npages, req)
        out = np.empty((len(req), 32), dtype=np.uint8)
        out[:] = np.frombuffer(fmt.zero_digest(self.page_size), dtype=np.uint8)
        for pos in range(len(chain)):
            sel = owner == pos
            if sel.any():
                out[sel] = indexes[pos]["digest"][ridx[sel]]
        return out

    def changed_pages(self, a: int, b: int) -> np.ndarray | None:
        ca, cb = self.chain(a), self.chain(b)
        k = 0
        while k < min(len(ca), len(cb)) and ca[k] == cb[k]:
            k += 1
        if k == 0:
            return None
        parts = [self._index(e)["page"] for e in ca[k:] + cb[k:]]
        if not parts:
            return np.empty(0, dtype=np.uint64)
        cand = np.unique(np.concatenate(parts)).astype(np.uint64)
        if not cand.size:
            return cand
        da = self._effective_digests(ca, cand)
        db = self._effective_digests(cb, cand)
        return cand[(da != db).any(axis=1)]

    # -- verification -------------------------------------------------------------------
    def verify(self, epoch: int | None = None, *,
               progress: Callable[[int, int], None] | None = None) -> None:
        """See the module docstring; progress(done, total) counts bytes of
        index and pack files checked."""
        self._read_header()
        if epoch is None:
            return self._verify_all(progress)
        # the chain of one epoch: a compaction in another process may merge
        # part of it while we check it; then check the merged chain, skipping
        # what was checked already (its files are immutable)
        checked: set[tuple[int, Any]] = set()
        total = [0]
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(min(done[0], total[0]), total[0])

        for attempt in range(_SNAPSHOT_TRIES):
            before = set(self.epoch_numbers())
            used: dict[int, Any] = {}
            try:
                targets = self.chain(epoch)
                used.update((e, self._manifest_key(e)) for e in targets)
                todo = {e for e in targets if (e, used[e]) not in checked}
                if progress is not None:
                    total[0] = done[0] + sum(f["idx"]["size"] + f["pack"]["size"]
                                             for f in (self._doc(e)["files"] for e in todo))
                # each tie checked against the parent's manifest as verified just
                # before it (ascending: parents come first)
                verified: dict[int, _Link] = {}
                for e in targets:
                    if e in todo:
                        verified[e] = self._verify_epoch(e, tick, verified)
                        checked.add((e, used[e]))
                break
            except (CorruptionError, FormatError, EpochNotFound) as exc:
                self._raced(epoch, before, used, exc, "verify", attempt)
                self._drop_caches()
        if progress is not None:
            progress(total[0], total[0])

    def _verify_all(self, progress: Callable[[int, int], None] | None) -> None:
        """verify() of every epoch. An epoch a prune or compaction in another
        process retires during the run is skipped (it was retired, not damaged);
        one whose chain moved under its check is checked again."""
        targets = self.epoch_numbers()
        total = 0
        if progress is not None:
            for e in list(targets):
                try:
                    f = self._doc(e)["files"]
                except EpochNotFound:  # retired since the listing
                    targets.remove(e)
                    continue
                except (CorruptionError, FormatError):
                    continue  # _verify_epoch reports it
                total += f["idx"]["size"] + f["pack"]["size"]
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(min(done[0], total), total)

        # each epoch's tie to its parent, checked once against the parent's
        # manifest as verified just before it (ascending: parents come first):
        # every chain checked, in one pass over the epochs. (A link stays
        # good across a compaction in another process: its identity is carried
        # over, and a parent is retired only after its children.)
        verified: dict[int, _Link] = {}
        before = set(targets)
        for e in targets:
            for attempt in range(_SNAPSHOT_TRIES):
                used = {e: self._manifest_key(e)}
                try:
                    verified[e] = self._verify_epoch(e, tick, verified)
                    break
                except (CorruptionError, FormatError, EpochNotFound) as exc:
                    if not os.path.lexists(self.path / fmt.manifest_name(e)):
                        break  # epoch e was retired during verify: that is not damage
                    before = self._raced(e, before, used, exc, "verify", attempt)
                    self._drop_caches()
        if progress is not None:
            progress(total, total)

    def _verify_epoch(self, epoch: int, tick: Callable[[int], None],
                      verified: dict[int, _Link] | None = None) -> _Link:
        """Check one epoch's manifest, its tie to its parent (the parent's
        link from `verified` if there, else from the store), index and pack;
        return its link."""
        doc = self._doc(epoch, fresh=True)
        link = _link_of(doc, (0, 0, 0))  # the key is for the cache, not needed here
        if link.kind != "full":
            parent = link.parent
            assert parent is not None  # check_manifest: an incremental epoch has one
            plink = None if verified is None else verified.get(parent)
            if plink is None:
                try:
                    plink = self._link(parent)
                except EpochNotFound:
                    raise CorruptionError(f"epoch {epoch}: the chain is broken: epoch {epoch}'s "
                                          f"parent {parent} is missing") from None
            _check_link(epoch, epoch, link, plink)
        recs = self._index(epoch, fresh=True)
        c = doc["counts"]
        zero = (recs["flags"] & fmt.FLAG_ZERO) != 0
        stored = recs[~zero]
        nstored = len(np.unique(stored["offset"])) if len(stored) else 0
        nzero = int(zero.sum())
        if (nstored != c["pages_stored"] or len(stored) - nstored != c["pages_dedup"]
                or (doc["kind"] == "incremental" and nzero != c["pages_zero"])):
            raise CorruptionError(
                f"epoch {epoch}: the manifest's counts (stored {c['pages_stored']}, dedup "
                f"{c['pages_dedup']}, zero {c['pages_zero']}) disagree with its index (stored "
                f"{nstored}, dedup {len(stored) - nstored}, zero records {nzero})")
        where = f"epoch {epoch}: {doc['files']['pack']['name']}"
        fd = self._open_pack(epoch, doc)
        try:
            # the whole file, against the manifest's digest
            h = blake3.blake3()
            buf = bytearray(min(_VERIFY_BATCH_BYTES, max(doc["files"]["pack"]["size"], 1)))
            pos, size = 0, doc["files"]["pack"]["size"]
            while pos < size:
                n = os.preadv(fd, [buf], pos)
                if n == 0:
                    raise CorruptionError(f"{where}: file ends early (at byte {pos}); truncated?")
                h.update(memoryview(buf)[:n])
                pos += n
            if h.hexdigest() != doc["files"]["pack"]["blake3"]:
                raise CorruptionError(f"{where}: BLAKE3 digest mismatch (the file is damaged)")
            tick(doc["files"]["idx"]["size"] + fmt.PACK_HEADER_SIZE)
            # and every page, against its own digest
            batch = max(1, _VERIFY_BATCH_BYTES // self.page_size)
            scratch = np.empty((min(batch, max(len(stored), 1)), self.page_size), dtype=np.uint8)
            for lo in range(0, len(stored), batch):
                part = stored[lo:lo + batch]
                self._fetch(epoch, fd, doc["files"]["pack"]["name"], part, scratch,
                            np.arange(len(part), dtype=np.int64), None)
                tick(int(part["length"].sum(dtype=np.uint64)))
        finally:
            os.close(fd)
        return link

    # -- writing ------------------------------------------------------------------------
    def begin(self, kind: str, parent: int | None = None, layout: dict[str, Any] | None = None,
              page_size: int | None = None, npages: int | None = None,
              compress: str | None = None) -> EpochWriter:
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
        layout = _jsonable({} if layout is None else layout, "layout")
        if not isinstance(layout, dict):
            raise TypeError(f"layout must be a dict, not {type(layout).__name__}")
        try:
            fmt.check_layout(layout, npages=npages, page_size=page_size, where="layout")  # type: ignore[arg-type]
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        if kind == "incremental" and parent is None:
            raise ValueError("an incremental epoch needs a parent")
        self._wait_for_writers("begin an epoch")
        self._check_same_store()  # before the lock file is made in a stranger's directory
        lock = _Lock(self.path, "write", wait=_LOCK_WAIT_S)
        try:
            self._sweep_if_due()
            nums = self.epoch_numbers()
            epoch = nums[-1] + 1 if nums else 1
            parent_digest = None
            if parent is not None:
                if kind == "incremental":
                    self.chain(parent)  # whole, and tied together: what the new epoch builds on
                plink = self._link(parent)
                if kind == "incremental" and plink.npages != npages:
                    raise ValueError(f"an incremental epoch of {npages} pages cannot follow "
                                     f"epoch {parent} of {plink.npages} pages")
                parent_digest = plink.identity
            w = EpochWriter(self, lock, epoch=epoch, gen=0, kind=kind, parent=parent,
                            layout=layout, npages=int(npages), compress=compress)  # type: ignore[arg-type]
            w._parent_digest = parent_digest
            self._unsettled = (epoch, w._pack_name)
            return w
        except BaseException:
            lock.release()
            raise

    def _wait_for_writers(self, what: str) -> None:
        """Wait (up to _WRITER_WAIT_S) until no epoch writer of this Store is
        open. A writer the calling thread began and still holds cannot end
        while it waits: that is refused at once."""
        me = threading.get_ident()
        deadline = time.monotonic() + _WRITER_WAIT_S
        with self._writers_cv:
            while self._open_writers:
                mine = [w for w in self._open_writers if w._owner == me and not w.handed_off]
                if mine:
                    raise StoreLocked(f"store {self.path}: cannot {what} while this thread holds "
                                      f"the open writer of epoch {mine[0].epoch}: commit or abort "
                                      f"it first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLocked(f"store {self.path}: cannot {what}: the epoch writer of "
                                      f"epoch {next(iter(self._open_writers)).epoch} has been open "
                                      f"for over {_WRITER_WAIT_S:g} s")
                self._writers_cv.wait(left)

    # -- compaction and retention ---------------------------------------------------------
    def compact(self, first: int, last: int, *,
                progress: Callable[[int, int], None] | None = None) -> EpochInfo:
        """See the module docstring; progress(done, total) counts pages merged."""
        self._wait_for_writers("compact")
        with _HeldLock(self.path, "compact"):
            self._sweep_if_due()
            full_chain = self.chain(last)
            if first not in full_chain:
                done = (self._doc(last).get("compacted") or {}).get("from", [])
                if first in done:  # an earlier compact() that was interrupted: finish it
                    return self._finish_compaction(done[done.index(first):])
                raise MemckptError(f"cannot compact {first}..{last}: epoch {first} is not in "
                                   f"epoch {last}'s chain {full_chain}")
            run = full_chain[full_chain.index(first):]
            if len(run) == 1:
                return self.info(last)
            inner = set(run[:-1])
            for e in self.epoch_numbers():
                if e in run:
                    continue
                d = self._doc(e)
                if d.get("parent") in inner:
                    # a full epoch's parent is lineage only, but is not left dangling either
                    raise MemckptError(
                        f"cannot compact {first}..{last}: epoch {e} ({d['kind']}) has epoch "
                        f"{d['parent']} as its parent, which the compaction would retire (a branch "
                        f"would break); compact {first}..{d['parent']} instead, or prune epoch {e} first")
            t0 = time.perf_counter()
            dfirst, dlast = self._doc(first), self._doc(last)
            old_files = [dlast["files"]["idx"]["name"], dlast["files"]["pack"]["name"]]
            w = EpochWriter(self, None, epoch=last, gen=fmt.manifest_generation(dlast) + 1,
                            kind=dfirst["kind"], parent=dfirst.get("parent"),
                            layout=dlast["layout"], npages=dlast["npages"],
                            compress=dlast.get("compress"))
            self._unsettled = (last, w._pack_name)
            try:
                w._parent_digest = self._compacted_parent_digest(dfirst)
                self._copy_run(run, w, progress)
                w._finish_files()
                doc = w._manifest_doc(pages_dirty=w._records, pause_s=dlast["timings"]["pause_s"],
                                      label=dlast.get("label"), tracker=dlast.get("tracker"),
                                      mode=dlast.get("mode"), extra=dlast.get("extra", {}),
                                      started=None)
                doc["created"] = dlast["created"]
                doc["timings"]["total_s"] = dlast["timings"]["total_s"]
                # epoch `last` keeps its identity: its children's parent_digest
                # names the manifest it was first committed with, and the
                # merged epoch holds the same content
                doc["compacted"] = {"from": run, "at": time.time(),
                                    "seconds": time.perf_counter() - t0,
                                    "identity": fmt.manifest_identity(dlast)}
            except BaseException:
                w.abort()
                raise
            info = w._commit_doc(doc)
            with _signals.deferred():
                # the writer's finalizers (its __del__, its WeakSet's callback)
                # run Python code, where CPython drops a signal handler's
                # exception: here it waits for the end of the section instead
                del w
            # the merged epoch is durable: only now retire the run, newest first
            self._retire(run[:-1], old_files)
            return info

    def _compacted_parent_digest(self, dfirst: dict[str, Any]) -> str | None:
        """The parent_digest of an epoch merged from a run starting at dfirst:
        first's parent as it is now (chain(last) checked the tie), or, for a
        full first whose lineage parent is gone, what first recorded."""
        parent = dfirst.get("parent")
        if parent is None:
            return None
        try:
            return self._link(parent).identity
        except EpochNotFound:
            return dfirst.get("parent_digest")

    def _finish_compaction(self, run: list[int]) -> EpochInfo:
        """Retire what is left of a run merged into run[-1] by a compaction
        that was interrupted after its commit point (caller holds the lock)."""
        existing = set(self.epoch_numbers())
        leftover = [e for e in run[:-1] if e in existing]
        for e in sorted(existing - set(leftover)):
            d = self._doc(e)
            if d.get("parent") in leftover:
                raise MemckptError(
                    f"cannot finish compacting {run[0]}..{run[-1]}: epoch {e} has epoch "
                    f"{d['parent']} as its parent, which it would retire (a branch would break)")
        if leftover:
            self._retire(leftover, [])
        return self.info(run[-1])

    def _copy_run(self, run: list[int], w: EpochWriter,
                  progress: Callable[[int, int], None] | None = None) -> None:
        docs = [self._doc(e) for e in run]
        indexes = [self._index(e) for e in run]
        npages = docs[-1]["npages"]
        # resolve only the pages the run's indexes hold: a dense resolve would
        # size three arrays by the manifest's npages (up to 2**48), which a
        # hostile or damaged manifest controls; the indexes' size is checked
        held = np.unique(np.concatenate([r["page"] for r in indexes]))
        if not held.size:
            return
        _, owner, ridx = self._resolve(indexes, npages, held)
        batch = max(1, _CHUNK_BYTES // self.page_size)
        scratch = np.empty((min(batch, len(held)), self.page_size), dtype=np.uint8)
        fds: list[int] = []
        try:
            for e, d in zip(run, docs):
                fds.append(self._open_pack(e, d))
            for lo in range(0, len(held), batch):
                sel = held[lo:lo + batch]
                buf = scratch[:len(sel)]
                rows_all = np.arange(len(sel), dtype=np.int64)
                own, ri = owner[lo:lo + batch], ridx[lo:lo + batch]
                for pos in np.unique(own).tolist():
                    s = own == pos
                    recs, rows = indexes[pos][ri[s]], rows_all[s]
                    z = (recs["flags"] & fmt.FLAG_ZERO) != 0
                    if z.any():
                        buf[rows[z]] = 0
                    self._fetch(run[pos], fds[pos], docs[pos]["files"]["pack"]["name"],
                                recs[~z], buf, rows[~z], None)
                w.add_pages(sel.astype(np.uint64), buf)
                if progress is not None:
                    progress(lo + len(sel), len(held))
        finally:
            for fd in fds:
                os.close(fd)

    def _retire(self, epochs: list[int], extra_files: list[str]) -> None:
        """Remove epochs newest first: each manifest's removal is durable before
        the next, so an epoch still committed never lacks an ancestor. Their data
        files go afterwards (a crash in between leaves garbage, swept on open)."""
        # Interruptible between any two steps (Ctrl-C in a long prune): each
        # step leaves committed epochs whole, at worst data files of removed
        # manifests (swept by the next writer) and cached entries of removed
        # epochs (keyed by inode, so never served for another file).
        files = list(extra_files)
        orphans = []
        for e in sorted(epochs, reverse=True):
            try:
                d = self._doc(e)
                files += [d["files"]["idx"]["name"], d["files"]["pack"]["name"]]
            except (CorruptionError, FormatError):
                orphans.append(e)
            _unlink(self.path / fmt.manifest_name(e))
            _fsync_dir(self.path)
        for n in os.listdir(self.path):
            p = fmt.parse_data_name(n)
            if p is not None and p[0] in orphans:
                files.append(n)
        for n in files:
            _unlink(self.path / n)
        _fsync_dir(self.path)
        self._drop_caches()

    def prune(self, keep_last: int | None = None, keep_every: int | None = None) -> list[int]:
        for name, v in (("keep_last", keep_last), ("keep_every", keep_every)):
            if v is not None and (not fmt._is_int(v) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, not {v!r}")
        if keep_last is None and keep_every is None:
            return []
        self._wait_for_writers("prune")
        with _HeldLock(self.path, "prune"):
            self._sweep_if_due()
            nums = self.epoch_numbers()
            if not nums:
                return []
            keep = {nums[-1]}
            if keep_last is not None:
                keep.update(nums[-keep_last:])
            if keep_every is not None:
                keep.update(e for e in nums if e % keep_every == 0)
            need: set[int] = set()
            for e in keep:
                need.update(self.chain(e))
            remove = [e for e in nums if e not in need]
            if remove:
                self._retire(remove, [])
            return remove

    def sweep(self) -> list[str]:
        """Remove uncommitted garbage now (a writer's operation: takes the
        writer lock, StoreLocked if another writer holds it); returns the
        names removed. Writes do this themselves when it is due."""
        self._wait_for_writers("sweep")
        self._check_same_store()
        # role "sweep": a writer arriving meanwhile waits the moment out
        with _Lock(self.path, "sweep", wait=_LOCK_WAIT_S):
            removed = self._sweep()
            self._swept, self._unsettled = True, None
            return removed

    def _sweep_if_due(self) -> None:
        """Sweep (caller holds the writer lock) at this Store's first write,
        and after an epoch it wrote did not commit and left files behind (an
        abort that was itself cut short: a signal, a dying disk). Checking
        costs a cached manifest lookup and a few lstat calls."""
        due = not self._swept
        if not due and self._unsettled is not None:
            epoch, pack = self._unsettled
            try:
                due = self._doc(epoch)["files"]["pack"]["name"] != pack
            except (MemckptError, OSError):
                due = True
            if due:  # not committed (or not as written): did its abort leave anything?
                p = fmt.parse_data_name(pack)
                names = [pack, fmt.manifest_name(epoch) + fmt.TMP_SUFFIX]
                if p is not None:
                    names.append(fmt.data_name(p[0], p[1], "idx"))
                due = any(os.path.lexists(self.path / n) for n in names)
        if due:
            self._sweep()
            self._swept = True
        self._unsettled = None

    def _sweep(self) -> list[str]:
        """Remove what no committed manifest references (caller holds the lock):
        *.tmp, and data files of no manifest. The files of an epoch whose
        manifest cannot be read are kept, for verify() to report.

        Reads only the manifests of epochs with data files of more than one
        generation (a compaction cut short, before or after its commit): an
        epoch with a manifest and one generation of files keeps them (its
        manifest names them, or it is damaged and verify() says so), so the
        first write of a Store costs a listing, not a read of every manifest."""
        names = os.listdir(self.path)
        committed = {e for e in map(fmt.parse_manifest_name, names) if e is not None}
        gens: dict[int, set[int]] = {}
        for n in names:
            p = fmt.parse_data_name(n)
            if p is not None and p[0] in committed:
                gens.setdefault(p[0], set()).add(p[1])
        referenced: set[str] = set()
        protected: set[int] = set()
        for e, gs in gens.items():
            if len(gs) == 1:
                protected.add(e)
                continue
            try:
                d = self._doc(e)
            except (MemckptError, OSError):
                protected.add(e)
                continue
            referenced.add(d["files"]["idx"]["name"])
            referenced.add(d["files"]["pack"]["name"])
        removed = []
        for n in names:
            if not n.endswith(fmt.TMP_SUFFIX):
                p = fmt.parse_data_name(n)
                if p is None or n in referenced or p[0] in protected:
                    continue
            try:
                if _unlink(self.path / n):
                    removed.append(n)
            except IsADirectoryError:  # not ours to remove: a directory with a store-like name
                continue
        if removed:
            _fsync_dir(self.path)
        return removed


def _index_arg(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return int(v.__index__())
    except (AttributeError, TypeError):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}") from None


def _jsonable(obj: Any, what: str) -> Any:
    """A JSON round-trip copy (tuples become lists), or ValueError naming `what`."""
    try:
        out = json.loads(fmt.canonical_json(obj))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (plain str/int/float/bool/None, "
                         f"lists and dicts with str keys): {exc}") from None
    # readers refuse deeper documents (format.MAX_JSON_DEPTH): refuse to write one
    if fmt.json_depth(out) > fmt.MAX_JSON_DEPTH - 2:
        raise ValueError(f"{what} nests deeper than {fmt.MAX_JSON_DEPTH - 2} levels")
    return out


class EpochWriter:
    """Writes one epoch: see Store.begin. Not thread-safe; one writer per store."""

    def __init__(self, store: Store, lock: _Lock | None, *, epoch: int, gen: int, kind: str,
                 parent: int | None, layout: dict[str, Any], npages: int,
                 compress: str | None) -> None:
        self._store = store
        self._lock = lock
        self._closed = False
        self._committed = False
        self._owner_pid = os.getpid()  # see _detach_in_child
        # begun by this thread; handed_off: another thread will finish it
        # (a Checkpointer's persist thread), so this one may wait for it
        self._owner = threading.get_ident()
        self.handed_off = False
        self.epoch = epoch
        self.kind = kind
        self.parent = parent
        self.layout = layout
        self.page_size = store.page_size
        self.npages = npages
        self.compress = compress
        self._t0 = time.perf_counter()
        self._pack_name = fmt.data_name(epoch, gen, "pack")
        self._idx_name = fmt.data_name(epoch, gen, "idx")
        self._tmp_name = fmt.manifest_name(epoch) + fmt.TMP_SUFFIX
        self._recs: list[np.ndarray] = []
        self._seen: dict[bytes, Any] = {}
        self._last_page = -1
        self._records = self._stored = self._dedup = self._zero = 0
        self._compressor: Any = None
        self._cflag = 0
        if compress == "zstd":
            self._compressor = fmt.codec("zstd").ZstdCompressor(
                level=fmt.ZSTD_LEVEL, write_content_size=True, write_checksum=False,
                write_dict_id=False).compress
            self._cflag = fmt.FLAG_ZSTD
        elif compress == "lz4":
            lz4b = fmt.codec("lz4")
            self._compressor = lambda b: lz4b.compress(b, store_size=False)
            self._cflag = fmt.FLAG_LZ4
        self._pack_fd: int | None = None
        self._pack_fd = _open_file(store.path / self._pack_name, _O_CREATE,
                                   f"epoch {epoch}: {self._pack_name}")
        with store._writers_cv:  # from here on, abort() (or commit) takes it out again
            store._open_writers.add(self)
        _forksafe.register(self)
        try:
            hdr = fmt.pack_header(epoch, self.page_size)
            _write_all(self._pack_fd, hdr, 0)
        except BaseException:
            self.abort()
            raise
        self._pack_hash = blake3.blake3(hdr)
        self._off = len(hdr)
        self._durable_at = 0.0
        self._files: dict[str, Any] = {}

    def _detach_in_child(self) -> None:
        """In a child of fork() (memckpt._forksafe): the epoch's files and
        the lock are the parent's, being written by the parent. Close the
        child's copies of the fds, and never write, unlink or unlock: from
        here on the writer is closed, so abort() (__del__, a with block's
        exit, a finalizer at the child's exit) does nothing, and the rest
        refuse (_check_open)."""
        if self._closed:
            return
        self._closed = True
        for attr in ("_pack_fd", "_idx_fd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                os.close(fd)
        lock, self._lock = self._lock, None
        if lock is not None:
            lock._detach_in_child()
        self._seen = {}
        self._recs = []
        # the child's copy of the Store must not wait for a writer that is
        # the parent's (no _writers_cv: a parent's thread may have held it)
        self._store._open_writers.discard(self)

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self.abort()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.abort()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "committed" if self._committed else "aborted" if self._closed else "open"
        return f"<memckpt.store.EpochWriter epoch {self.epoch} {self.kind}, {state}>"

    def _check_open(self) -> None:
        if self._owner_pid != os.getpid():
            raise _forksafe.refusal(f"the writer of epoch {self.epoch} of {self._store.path}",
                                    self._owner_pid, "write or commit")
        if self._closed:
            raise ValueError(f"the writer of epoch {self.epoch} is already "
                             f"{'committed' if self._committed else 'aborted'}")

    # -- pages ----------------------------------------------------------------------------
    def add_pages(self, page_numbers: Any, data: Any) -> None:
        self._check_open()
        if self._idx_fd is not None:  # fork mode: another process writes the pages
            raise ValueError(f"epoch {self.epoch}'s files were handed to another writer "
                             "(external_target()); add_pages cannot be mixed with adopt()")
        pages = _as_pages(page_numbers)
        n = len(pages)
        ps = self.page_size
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
        if data.dtype != np.uint8 or data.shape != (n, ps):
            raise ValueError(f"data must be uint8 of shape ({n}, {ps}), not {data.dtype} {data.shape}")
        if n == 0:
            return
        if n > 1 and not bool((pages[1:] > pages[:-1]).all()):
            raise ValueError("page numbers must be strictly increasing")
        if int(pages[0]) <= self._last_page:
            raise ValueError(f"page {int(pages[0])} does not follow the last page added "
                             f"({self._last_page}): page numbers must increase across calls")
        if int(pages[-1]) >= self.npages:
            raise ValueError(f"page {int(pages[-1])} is beyond the arena's {self.npages} pages")
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        step = max(1, _CHUNK_BYTES // ps)
        try:
            if n <= step:
                self._write_job(self._add_chunk(pages, data))
            else:
                # hash chunk i+1 here while a worker writes chunk i (pwritev and
                # BLAKE3 of a whole chunk both release the GIL); the worker is
                # joined before return, so no thread outlives the call
                with ThreadPoolExecutor(1, thread_name_prefix="memckpt-write") as ex:
                    fut = None
                    for lo in range(0, n, step):
                        job = self._add_chunk(pages[lo:lo + step], data[lo:lo + step])
                        if fut is not None:
                            fut.result()
                        fut = ex.submit(self._write_job, job)
                    assert fut is not None
                    fut.result()
        except OSError as exc:
            self.abort()  # the pack no longer matches the records: this epoch cannot commit
            raise self._where(exc, self._pack_name) from None
        except BaseException:
            self.abort()
            raise
        self._last_page = int(pages[-1])

    def _add_chunk(self, p: np.ndarray, d: np.ndarray) -> tuple[list[Any], int]:
        """Hash, elide, dedup and place one chunk; return its write job."""
        ps = self.page_size
        m = len(p)
        nz = d.view(np.uint64).any(axis=1)
        nzi = np.flatnonzero(nz)
        k = len(nzi)
        # the chunk's digests in one call into the core (GIL released); bytes
        # of each for the dedup table
        dg_arr = _core.hash_pages(d) if k == m else _core.hash_pages_at(d, nzi)
        raw = dg_arr.tobytes()
        digests = [raw[i:i + 32] for i in range(0, 32 * k, 32)]
        seen = self._seen
        start = self._off
        bufs: list[Any] = []
        if self._compressor is None:
            olds = list(map(seen.get, digests))
            fast = olds.count(None) == k
            if fast:  # no page seen before: offsets are consecutive, unless the chunk repeats a page
                offs = start + ps * np.arange(k, dtype=np.uint64)
                before = len(seen)
                seen.update(zip(digests, offs.tolist()))
                if len(seen) - before != k:
                    for dg in digests:
                        seen.pop(dg, None)
                    fast = False
            if fast:
                wrows = nzi
            else:
                cur = start
                offs_l = []
                new_pos = []
                for j, dg in enumerate(digests):
                    o = seen.get(dg)
                    if o is None:
                        o = seen[dg] = cur
                        cur += ps
                        new_pos.append(j)
                    offs_l.append(o)
                offs = np.array(offs_l, dtype=np.uint64)
                wrows = nzi[np.array(new_pos, dtype=np.int64)]
            lens: Any = ps
            flags: Any = 0
            nnew = len(wrows)
            # contiguous runs of rows to write go out as one iovec each
            if nnew:
                brk = np.flatnonzero(np.diff(wrows) != 1) + 1
                s_l = np.concatenate(([0], brk)).tolist()
                e_l = np.concatenate((brk, [nnew])).tolist()
                w_l = wrows.tolist()
                bufs.extend(d[w_l[s]:w_l[s] + (e - s)] for s, e in zip(s_l, e_l))
            self._off = start + nnew * ps
        else:
            comp, cflag = self._compressor, self._cflag
            offs_l, lens_l, flags_l = [], [], []
            cur = start
            nnew = 0
            nzl = nzi.tolist()
            for j, dg in enumerate(digests):
                hit = seen.get(dg)
                if hit is None:
                    row = d[nzl[j]]
                    c = comp(row)
                    if len(c) < ps:
                        hit = (cur, len(c), cflag)
                        bufs.append(c)
                    else:
                        hit = (cur, ps, 0)
                        bufs.append(row)
                    seen[dg] = hit
                    cur += hit[1]
                    nnew += 1
                offs_l.append(hit[0])
                lens_l.append(hit[1])
                flags_l.append(hit[2])
            offs = np.array(offs_l, dtype=np.uint64)
            lens = np.array(lens_l, dtype=np.uint32)
            flags = np.array(flags_l, dtype=np.uint32)
            if bufs:
                bufs = [b"".join(bufs)]
            self._off = cur
        if self.kind == "incremental":
            rec = np.zeros(m, dtype=fmt.RECORD_DTYPE)
            rec["page"] = p
            if k < m:
                zmask = ~nz
                rec["flags"][zmask] = fmt.FLAG_ZERO
                rec["digest"][zmask] = np.frombuffer(fmt.zero_digest(ps), dtype=np.uint8)
            sub = rec[nzi] if k < m else rec
            sub["offset"] = offs
            sub["length"] = lens
            sub["flags"] = flags
            sub["digest"] = dg_arr
            if k < m:
                rec[nzi] = sub
        else:
            rec = np.zeros(k, dtype=fmt.RECORD_DTYPE)
            rec["page"] = p[nzi]
            rec["offset"] = offs
            rec["length"] = lens
            rec["flags"] = flags
            rec["digest"] = dg_arr
        if len(rec):
            self._recs.append(rec)
        self._records += len(rec)
        self._stored += nnew
        self._dedup += k - nnew
        self._zero += m - k
        return bufs, start

    def _write_job(self, job: tuple[list[Any], int]) -> None:
        """Write one chunk's new stored bytes at their offset, and hash them
        into the pack's file digest (jobs run in pack order)."""
        bufs, offset = job
        if bufs:
            _pwritev_all(self._pack_fd, bufs, offset)  # type: ignore[arg-type]
            for b in bufs:
                self._pack_hash.update(b)

    # -- files written by another process (fork mode) ------------------------------------
    # external_target() hands out the epoch's two files; another process (the
    # fork child of csrc/capture_fork.c) writes them by the rules of add_pages;
    # adopt() takes its counts, sizes and digests; commit() then writes the
    # manifest exactly as after add_pages. abort() removes both files as ever.
    _idx_fd: int | None = None
    _adopted: dict[str, Any] | None = None
    # the parent's manifest identity (format.manifest_identity), set by
    # begin()/compact() for the manifest's parent_digest
    _parent_digest: str | None = None

    def external_target(self) -> tuple[int, int, bytes, int, bytes]:
        """(pack_fd, pack_offset, pack_header, idx_fd, idx_header) for another
        writer: the pack holds its header and nothing else; the index file is
        created empty here; idx_header has a record count of 0 for the writer
        to fill in. From here on add_pages() is refused."""
        self._check_open()
        if self._idx_fd is not None:
            raise ValueError(f"epoch {self.epoch}'s files were already handed out")
        if self._records or self._zero or self._last_page >= 0:
            raise ValueError(f"epoch {self.epoch} already holds pages from add_pages(); "
                             "another writer can only start from an empty epoch")
        if self.compress is not None:
            raise ValueError(f"epoch {self.epoch} asks for {self.compress} compression, which "
                             "another process writing the files (a fork child) cannot do")
        assert self._pack_fd is not None
        try:
            self._idx_fd = _open_file(self._store.path / self._idx_name, _O_CREATE,
                                      f"epoch {self.epoch}: {self._idx_name}")
        except BaseException:
            self.abort()
            raise
        hdr = fmt.pack_header(self.epoch, self.page_size)
        return (self._pack_fd, self._off, hdr, self._idx_fd,
                fmt.idx_header(self.epoch, self.page_size, 0))

    def adopt(self, *, records: int, stored: int, dedup: int, zero: int, pack_size: int,
              idx_size: int, pack_digest: bytes, idx_digest: bytes) -> None:
        """Take the files another writer made of this epoch, after it made them
        durable. Checks what can be checked without reading the pages: the
        sizes on disk and that the counts agree with them; the whole index
        (its digest, and every record as a reader would check it). The pack's
        digest is the writer's (Store.verify rechecks it). A mismatch aborts
        the epoch and raises CorruptionError."""
        self._check_open()
        if self._idx_fd is None:
            raise ValueError(f"epoch {self.epoch}: adopt() needs external_target() first")
        if self._adopted is not None:
            raise ValueError(f"epoch {self.epoch}'s files were already adopted")
        ps, where = self.page_size, f"epoch {self.epoch} (written by another process)"
        try:
            vals = {k: _index_arg(v, k) for k, v in (("records", records), ("stored", stored),
                                                      ("dedup", dedup), ("zero", zero),
                                                      ("pack_size", pack_size), ("idx_size", idx_size))}
            for k, v in (("pack_digest", pack_digest), ("idx_digest", idx_digest)):
                if not isinstance(v, (bytes, bytearray)) or len(v) != 32:
                    raise ValueError(f"{k} must be 32 bytes")
            assert self._pack_fd is not None
            on_disk = (os.fstat(self._pack_fd).st_size, os.fstat(self._idx_fd).st_size)
            if on_disk != (vals["pack_size"], vals["idx_size"]):
                raise CorruptionError(f"{where}: pack and index hold {on_disk[0]} and {on_disk[1]} "
                                      f"bytes, the writer reported {vals['pack_size']} and "
                                      f"{vals['idx_size']}")
            want_records = vals["stored"] + vals["dedup"] + (vals["zero"] if self.kind == "incremental" else 0)
            if (vals["pack_size"] != self._off + vals["stored"] * ps or vals["records"] != want_records
                    or vals["idx_size"] != fmt.IDX_HEADER_SIZE + vals["records"] * fmt.RECORD_SIZE):
                raise CorruptionError(f"{where}: counts {vals} do not add up to the files' sizes")
            # the writer's fd is write-only: read the index through a new one
            rfd = self._store._open_regular(self._idx_name, where,
                                            CorruptionError(f"{where}: the index file vanished"))
            try:
                raw = _read_fd(rfd, fmt.IDX_HEADER_SIZE + self.npages * fmt.RECORD_SIZE, where)
            finally:
                os.close(rfd)
            if blake3.blake3(raw).digest() != bytes(idx_digest):
                raise CorruptionError(f"{where}: the index's digest is not the one its writer reported")
            recs = fmt.parse_index(raw, epoch=self.epoch, page_size=ps, npages=self.npages,
                                   pack_size=vals["pack_size"], where=where)
            if len(recs) != vals["records"]:
                raise CorruptionError(f"{where}: {len(recs)} index records, the writer reported "
                                      f"{vals['records']}")
        except BaseException:
            self.abort()
            raise
        self._records, self._stored = vals["records"], vals["stored"]
        self._dedup, self._zero = vals["dedup"], vals["zero"]
        self._off = vals["pack_size"]
        self._durable_at = time.perf_counter()
        self._adopted = {"pack_digest": bytes(pack_digest).hex(), "idx_digest": bytes(idx_digest).hex(),
                         "idx_size": vals["idx_size"]}

    def _finish_adopted(self) -> None:
        """_finish_files for adopted files: they are durable already (the
        writer fdatasynced both before it reported)."""
        assert self._adopted is not None
        for attr in ("_pack_fd", "_idx_fd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                os.close(fd)
        self._files = {
            "idx": {"name": self._idx_name, "size": self._adopted["idx_size"],
                    "blake3": self._adopted["idx_digest"]},
            "pack": {"name": self._pack_name, "size": self._off, "blake3": self._adopted["pack_digest"]},
        }

    # -- commit ---------------------------------------------------------------------------
    def _finish_files(self) -> None:
        """Make pack and index durable (the epoch is still uncommitted)."""
        if self._idx_fd is not None:  # fork mode: see external_target()
            if self._adopted is None:
                raise ValueError(f"epoch {self.epoch}'s files were handed out but never adopted")
            return self._finish_adopted()
        fd, self._pack_fd = self._pack_fd, None
        assert fd is not None
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        recs = np.concatenate(self._recs) if self._recs else np.zeros(0, dtype=fmt.RECORD_DTYPE)
        idx = fmt.idx_header(self.epoch, self.page_size, len(recs)) + recs.tobytes()
        ifd = _open_file(self._store.path / self._idx_name, _O_CREATE,
                         f"epoch {self.epoch}: {self._idx_name}")
        try:
            _write_all(ifd, idx, 0)
            os.fdatasync(ifd)
        finally:
            os.close(ifd)
        self._durable_at = time.perf_counter()
        self._files = {
            "idx": {"name": self._idx_name, "size": len(idx), "blake3": blake3.blake3(idx).hexdigest()},
            "pack": {"name": self._pack_name, "size": self._off, "blake3": self._pack_hash.hexdigest()},
        }

    def _manifest_doc(self, *, pages_dirty: int, pause_s: float, label: str | None,
                      tracker: str | None, mode: str | None, extra: dict[str, Any] | None,
                      started: float | None) -> dict[str, Any]:
        # the last moment before the commit's rename that can still refuse
        self._store._check_same_store()
        t0 = self._t0 if started is None else started
        doc = {
            "format": fmt.EPOCH_FORMAT, "version": fmt.VERSION,
            "epoch": self.epoch, "parent": self.parent, "kind": self.kind,
            "created": time.time(), "label": label, "layout": self.layout,
            "page_size": self.page_size, "npages": self.npages,
            "tracker": tracker, "mode": mode, "compress": self.compress,
            "counts": {"pages_dirty": pages_dirty, "pages_stored": self._stored,
                       "pages_zero": self._zero, "pages_dedup": self._dedup,
                       "records": self._records},
            "bytes_on_disk": self._files["idx"]["size"] + self._files["pack"]["size"],
            "timings": {"pause_s": pause_s, "total_s": max(0.0, self._durable_at - t0)},
            "files": self._files,
            "extra": {} if extra is None else extra,
        }
        if self._parent_digest is not None:
            doc["parent_digest"] = self._parent_digest
        return doc

    def _commit_doc(self, doc: dict[str, Any]) -> EpochInfo:
        store = self._store
        doc = fmt.sign(doc)
        tmp = store.path / self._tmp_name
        try:
            fmt.check_manifest(copy.deepcopy(doc), epoch=self.epoch, page_size=self.page_size,
                               where=f"epoch {self.epoch}: new manifest")
            _write_durable(tmp, fmt.dump_document(doc))
        except BaseException:
            self.abort()
            raise
        # The commit point and what must follow it in one piece: a signal
        # handler's exception (Ctrl-C, sys.exit) lands after the section, once
        # the epoch is marked committed and the lock released. An exception
        # from the rename itself still reaches abort(), which finds the
        # manifest in place if the rename happened.
        with _signals.deferred():
            try:
                os.rename(tmp, store.path / fmt.manifest_name(self.epoch))
            except BaseException:
                self.abort()
                raise
            self._committed = True  # from here on the epoch exists, whatever fails next
            try:
                _fsync_dir(store.path)
            finally:
                self._close()
                with store._cache_lock:
                    store._manifests.pop(self.epoch, None)
        return _info_from(doc)

    def commit(self, *, pages_dirty: int, pause_s: float, label: str | None = None,
               tracker: str | None = None, mode: str | None = None,
               extra: dict[str, Any] | None = None, started: float | None = None) -> EpochInfo:
        self._check_open()
        pages_dirty = _index_arg(pages_dirty, "pages_dirty")
        if pages_dirty < 0:
            raise ValueError(f"pages_dirty must not be negative ({pages_dirty})")
        pause_s = float(pause_s)
        if not (pause_s >= 0 and pause_s != float("inf")):
            raise ValueError(f"pause_s must be a finite non-negative number, not {pause_s!r}")
        for name, v in (("label", label), ("tracker", tracker), ("mode", mode)):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str or None, not {type(v).__name__}")
        extra = _jsonable({} if extra is None else extra, "extra")
        if not isinstance(extra, dict):
            raise TypeError("extra must be a dict")
        try:
            self._finish_files()
            doc = self._manifest_doc(pages_dirty=pages_dirty, pause_s=pause_s, label=label,
                                     tracker=tracker, mode=mode, extra=extra, started=started)
        except OSError as exc:
            self.abort()
            raise self._where(exc, f"{self._pack_name} or {self._idx_name}") from None
        except BaseException:
            self.abort()
            raise
        try:
            return self._commit_doc(doc)
        except OSError as exc:
            raise self._where(exc, fmt.manifest_name(self.epoch)) from None

    def _where(self, exc: OSError, name: str) -> OSError:
        """``exc`` saying which epoch, store and file it hit (a full disk said
        only "No space left on device"), as the same OSError subclass; an
        error that names its file already is left as it is."""
        if exc.filename is not None:
            return exc
        what = "committed, but syncing the store directory failed" if self._committed else \
            "not committed"
        return type(exc)(exc.errno, f"{exc.strerror or exc} (writing epoch {self.epoch} "
                                    f"to store {self._store.path}: {what})",
                         str(self._store.path / name))

    def _close(self) -> None:
        self._closed = True
        ifd, self._idx_fd = self._idx_fd, None  # fork mode's index fd
        if ifd is not None:
            os.close(ifd)
        self._seen = {}   # ~150 bytes a page: let it go with the epoch, not with the object
        self._recs = []
        fd, self._pack_fd = self._pack_fd, None
        if fd is not None:
            os.close(fd)
        lock, self._lock = self._lock, None
        try:
            if lock is not None:
                lock.release()
        finally:
            # after the lock file is free: a write waiting for this writer goes on
            with self._store._writers_cv:
                self._store._open_writers.discard(self)
                self._store._writers_cv.notify_all()

    def abort(self) -> None:
        """Drop everything written for this epoch and release the lock (idempotent).

        An epoch whose manifest is in place and names this writer's files is
        committed, whatever cut the commit short (an exception right after the
        rename): abort() then keeps its files and only closes the writer."""
        if self._closed or self._owner_pid != os.getpid():  # a fork child: the parent's files
            return
        with _signals.deferred():  # half an abort would leave files or the lock behind
            try:
                fd, self._pack_fd = self._pack_fd, None
                if fd is not None:
                    os.close(fd)
                if not self._committed and self._manifest_names_mine():
                    self._committed = True
                    try:
                        _fsync_dir(self._store.path)  # the rename's durability, as commit does
                    except OSError:
                        pass  # committed either way; the error that brought us here matters
                    with self._store._cache_lock:
                        self._store._manifests.pop(self.epoch, None)
                if not self._committed:
                    for n in (self._pack_name, self._idx_name, self._tmp_name):
                        _unlink(self._store.path / n)
            finally:
                self._close()

    def _manifest_names_mine(self) -> bool:
        """Whether the epoch's manifest is in place and names this writer's pack
        and index: then the manifest is this writer's commit (it holds the
        lock, and the names carry the epoch and its generation). A manifest
        that is there but cannot be read counts as this writer's too: keeping
        files that may be committed is the safe mistake (sweep and verify
        judge them later), deleting them is not."""
        try:
            fd = os.open(self._store.path / fmt.manifest_name(self.epoch),
                         _O_READ | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return True
            raw = _read_fd(fd, fmt.MAX_MANIFEST_BYTES, f"epoch {self.epoch}")
            files = json.loads(raw)["files"]
            return bool(files["pack"]["name"] == self._pack_name
                        and files["idx"]["name"] == self._idx_name)
        except (OSError, ValueError, KeyError, TypeError, MemckptError):
            return True
        finally:
            os.close(fd)
