"""EpochWriter: one epoch being written, from Store.begin() to commit() or
abort(); its layers are external.py (files written by a fork child),
packing.py (add_pages) and commit.py. Here: its life (the lock it holds, a
fork child's detachment) and abort(), which drops whole what did not commit."""
from __future__ import annotations

import json
import os
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _forksafe, _signals, _writer
from ..errors import MemckptError
from . import format as fmt
from .commit import _Commit
from .io import _O_CREATE, _O_READ, _fsync_dir, _open_file, _read_fd, _unlink, _write_all
from .locking import _Lock

if TYPE_CHECKING:
    from .local import Store


class EpochWriter(_Commit):
    """Writes one epoch: see Store.begin in memckpt.store.contract. Not thread-safe;
    one writer per store.

    ``parent_digest``: the parent's manifest identity (format.manifest_identity),
    recorded in the manifest; begin() and compact() know it. ``pack_fd``: an
    unnamed file to write the pack into (the Store's spare, store/spare.py),
    named at commit; None: the pack is created by name. ``prepared``: made
    ahead by Store.prepare_next (store/prepared.py), without the lock and
    with a ``pack_fd``: it names nothing and waits for begin() to adopt it
    (_adopt); the lock is taken at its first name in the store (_take_lock)."""

    def __init__(self, store: Store, lock: _Lock | None, *, epoch: int, gen: int, kind: str,
                 parent: int | None, layout: dict[str, Any], npages: int,
                 compress: str | None, parent_digest: str | None = None,
                 threads: int | None = None, pack_fd: int | None = None,
                 prepared: bool = False) -> None:
        self._store = store
        self._parent_digest = parent_digest
        self._lock = lock
        # prepared, not yet adopted by a begin(): in no list of open writers
        self._prepared = prepared
        # no lock yet, and so no name in the store yet (prepared.py)
        self._lock_due = prepared
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
        self._cflag = {None: 0, "zstd": fmt.FLAG_ZSTD, "lz4": fmt.FLAG_LZ4}[compress]
        in_c = not self._cflag or bool(_writer.codecs() & self._cflag)
        if compress == "zstd" and not in_c:
            self._compressor = fmt.codec("zstd").ZstdCompressor(
                level=fmt.ZSTD_LEVEL, write_content_size=True, write_checksum=False,
                write_dict_id=False).compress
        elif compress == "lz4" and not in_c:
            lz4b = fmt.codec("lz4")
            self._compressor = lambda b: lz4b.compress(b, store_size=False)
        self._pack_fd: int | None = pack_fd
        self._pack_unnamed = pack_fd is not None
        if prepared and pack_fd is None:
            raise ValueError("a prepared writer needs an unnamed pack file")
        if self._pack_fd is None:
            self._pack_fd = _open_file(store.path / self._pack_name, _O_CREATE,
                                       f"epoch {epoch}: {self._pack_name}")
        if not prepared:
            self._register()
        _forksafe.register(self)
        try:
            hdr = fmt.pack_header(epoch, self.page_size)
            _write_all(self._pack_fd, hdr, 0)
        except BaseException:
            self.abort()
            raise
        self._off = len(hdr)
        self._cw = None
        # the C writer takes every epoch whose codec this build has (all, with
        # libzstd and liblz4 found at build time); else pages are compressed
        # in Python (store/packing.py)
        if in_c:
            try:
                self._cw = _writer.PackWriter(self._pack_fd, self.page_size, npages,
                                              kind == "incremental", hdr,
                                              threads=0 if threads is None else threads,
                                              flags=_writer.NO_PACK_DIGEST,
                                              compress=self._cflag, level=fmt.ZSTD_LEVEL)
            except BaseException:
                self.abort()
                raise
        self.threads = (self._cw.stats()["threads"] if self._cw is not None
                        else 1)
        self._durable_at = 0.0
        self._files: dict[str, Any] = {}

    def _register(self) -> None:
        with self._store._writers_cv:  # from here on, abort() (or commit) takes it out again
            self._store._open_writers.add(self)

    def _adopt(self) -> None:
        """A prepared writer becomes the calling thread's, as if begun now."""
        self._prepared = False
        self._owner = threading.get_ident()
        self._t0 = time.perf_counter()
        self._register()

    def _take_lock(self) -> None:
        """Before this epoch's first name in the store: the writer lock, if
        it was begun without (prepared; see Store._lock_late)."""
        if self._lock_due:
            self._lock = self._store._lock_late(self)
            self._lock_due = False

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
        self._drop_cw()
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

    def held_here(self) -> bool:
        """Whether the calling thread began this writer and will finish it
        itself (not handed_off): a wait for the writer there would never end."""
        return self._owner == threading.get_ident() and not self.handed_off

    @property
    def pack_name(self) -> str:
        """The name of the pack file this writer writes (its generation's)."""
        return self._pack_name

    def _check_open(self) -> None:
        if self._owner_pid != os.getpid():
            raise _forksafe.refusal(f"the writer of epoch {self.epoch} of {self._store.path}",
                                    self._owner_pid, "write or commit")
        if self._closed:
            raise ValueError(f"the writer of epoch {self.epoch} is already "
                             f"{'committed' if self._committed else 'aborted'}")

    def _drop_cw(self) -> None:
        cw, self._cw = getattr(self, "_cw", None), None  # 56 bytes a record, and more
        if cw is not None:
            cw.close()

    def _close(self) -> None:
        self._closed = True
        ifd, self._idx_fd = self._idx_fd, None  # fork mode's index fd
        if ifd is not None:
            os.close(ifd)
        self._seen = {}   # ~150 bytes a page: let it go with the epoch, not with the object
        self._recs = []
        self._drop_cw()
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
                if self._cw is not None:  # its threads write to the pack: stop them before the close
                    self._cw.cancel()
                fd, self._pack_fd = self._pack_fd, None
                if fd is not None:
                    os.close(fd)
                store = self._store
                if self._lock_due:
                    pass  # never locked: nothing of it has a name (the pack is unnamed)
                elif not self._committed and self._manifest_names_mine():
                    self._committed = True
                    try:
                        _fsync_dir(store.path)  # the rename's durability, as commit does
                    except OSError:
                        pass  # committed either way; the error that brought us here matters
                    with store._cache_lock:
                        store._manifests.pop(self.epoch, None)
                    store._head = None  # committed, but the head never saw it: look again
                if not self._committed and not self._lock_due:
                    for n in (self._pack_name, self._idx_name, self._tmp_name):
                        _unlink(store.path / n)
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
