"""EpochWriter: one epoch being written, from Store.begin() to commit() or
abort(). The commit is the manifest's rename, in a signal-deferred section;
everything before it can be dropped whole."""
from __future__ import annotations

import copy
import json
import os
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np

from .. import _forksafe, _signals
from ..epoch import EpochInfo
from ..errors import MemckptError
from . import format as fmt
from .catalog import _info_from
from .io import (_O_CREATE, _O_READ, _fsync_dir, _index_arg, _jsonable, _open_file, _read_fd,
                 _unlink, _write_all, _write_durable)
from .locking import _Lock
from .packing import _Packing

if TYPE_CHECKING:
    from .local import Store


class EpochWriter(_Packing):
    """Writes one epoch: see Store.begin. Not thread-safe; one writer per store.

    ``parent_digest``: the parent's manifest identity (format.manifest_identity),
    recorded in the manifest; begin() and compact() know it."""

    def __init__(self, store: Store, lock: _Lock | None, *, epoch: int, gen: int, kind: str,
                 parent: int | None, layout: dict[str, Any], npages: int,
                 compress: str | None, parent_digest: str | None = None) -> None:
        self._store = store
        self._parent_digest = parent_digest
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

    def commit_merged(self, *, like: dict[str, Any], merged_from: list[int],
                      started: float) -> EpochInfo:
        """Commit a compaction's merged epoch: a manifest as ``like`` (the
        manifest of the run's last epoch, whose number this writer has) says
        for everything but the content (label, tracker, mode, extra, pause,
        creation time and total time), plus a "compacted" record of
        ``merged_from`` and of ``like``'s identity: its children's
        parent_digest names it, and the merged epoch holds the same content.
        ``started``: a time.perf_counter() reading when the compaction began."""
        try:
            self._finish_files()
            doc = self._manifest_doc(pages_dirty=self._records, pause_s=like["timings"]["pause_s"],
                                     label=like.get("label"), tracker=like.get("tracker"),
                                     mode=like.get("mode"), extra=like.get("extra", {}),
                                     started=None)
            doc["created"] = like["created"]
            doc["timings"]["total_s"] = like["timings"]["total_s"]
            doc["compacted"] = {"from": merged_from, "at": time.time(),
                                "seconds": time.perf_counter() - started,
                                "identity": fmt.manifest_identity(like)}
        except BaseException:
            self.abort()
            raise
        return self._commit_doc(doc)

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
