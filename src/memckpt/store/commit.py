"""Committing an epoch: pack and index made durable, the manifest written,
fsynced and renamed into place (the commit point) in a signal-deferred
section, the directory fsynced. Also the merged epoch of a compaction."""
from __future__ import annotations

import copy
import os
import time
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np

from .. import _signals
from ..epoch import EpochInfo
from . import format as fmt
from .catalog import _info_from
from .io import _O_CREATE, _fsync_dir, _index_arg, _jsonable, _open_file, _write_all, _write_durable
from .packing import _Packing
from .spare import name_file


class _Commit(_Packing):
    """The third layer of EpochWriter: commit."""

    _t0: float
    parent: int | None
    layout: dict[str, Any]
    _tmp_name: str
    _pack_unnamed: bool

    if TYPE_CHECKING:  # EpochWriter's own
        def _close(self) -> None: ...
        def _take_lock(self) -> None: ...

    # -- commit ---------------------------------------------------------------------------
    def _name_pack(self) -> None:
        """A pack begun in the Store's spare gets its name now: after it is
        durable, before the manifest names it (store/spare.py)."""
        if self._pack_unnamed and self._pack_fd is not None:
            name_file(self._pack_fd, self._store.path / self._pack_name)
            self._pack_unnamed = False

    def _finish_files(self) -> None:
        """Make pack and index durable (the epoch is still uncommitted)."""
        self._take_lock()  # the index is the epoch's first name in the store
        if self._idx_fd is not None:  # fork mode: see external_target()
            if self._adopted is None:
                raise ValueError(f"epoch {self.epoch}'s files were handed out but never adopted")
            return self._finish_adopted()
        if self._cw is not None:
            self._settle_c()  # an add still running (store/packing.py)
            return self._finish_c()
        assert self._pack_fd is not None
        os.fdatasync(self._pack_fd)
        self._name_pack()
        fd, self._pack_fd = self._pack_fd, None
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
            "pack": {"name": self._pack_name, "size": self._off},
        }

    def _finish_c(self) -> None:
        """_finish_files for the C writer: it writes the index, then syncs it and the pack."""
        ifd = _open_file(self._store.path / self._idx_name, _O_CREATE,
                         f"epoch {self.epoch}: {self._idx_name}")
        try:
            size, digest = self._cw.finish(ifd, fmt.idx_header(self.epoch, self.page_size, 0))
        finally:
            os.close(ifd)
        self._name_pack()
        fd, self._pack_fd = self._pack_fd, None
        if fd is not None:
            os.close(fd)
        self._durable_at = time.perf_counter()
        self._files = {
            "idx": {"name": self._idx_name, "size": size, "blake3": digest.hex()},
            "pack": {"name": self._pack_name, "size": self._off},
        }

    def _manifest_doc(self, *, pages_dirty: int, pause_s: float | None, label: str | None,
                      tracker: str | None, mode: str | None, extra: dict[str, Any] | None,
                      started: float | None, call_s: float | None = None,
                      call_started: float | None = None) -> dict[str, Any]:
        # the last moment before the commit's rename that can still refuse
        self._store._check_same_store()
        t0 = self._t0 if started is None else started
        total_s = max(0.0, self._durable_at - t0)
        if call_s is None and call_started is not None:
            call_s = max(0.0, self._durable_at - call_started)  # the caller waits until durable
        timings: dict[str, float] = {"pause_s": total_s if pause_s is None else pause_s,
                                     "total_s": total_s}
        if call_s is not None:
            timings["call_s"] = call_s
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
            "timings": timings,
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
            # validated as a reader would validate it, and kept: the Store
            # caches it as read from the file (its next reads need no read)
            checked = fmt.check_manifest(copy.deepcopy(doc), epoch=self.epoch,
                                         page_size=self.page_size,
                                         where=f"epoch {self.epoch}: new manifest")
            st = _write_durable(tmp, fmt.dump_document(doc))
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
                store._spare.make(store.path)  # the next epoch's pack, off its caller's path
            finally:
                try:
                    # before the lock goes: the head is this Store's while it holds it
                    store._committed(checked, (st.st_ino, st.st_size, st.st_mtime_ns))
                    if store._unsettled == (self.epoch, self._pack_name):
                        store._unsettled = None  # settled: the next write need not look
                finally:
                    self._close()
        return _info_from(doc)

    def commit(self, *, pages_dirty: int, pause_s: float | None, label: str | None = None,
               tracker: str | None = None, mode: str | None = None,
               extra: dict[str, Any] | None = None, started: float | None = None,
               call_s: float | None = None, call_started: float | None = None) -> EpochInfo:
        """Make the epoch durable and commit it. ``pause_s``: how long the
        program was stopped (None: until durable, as in a caller that waits
        for the write); ``started``: a time.perf_counter() reading at the
        start of the pause (total_s runs from it; default: begin());
        ``call_s``: how long checkpoint() blocked its caller, or, with
        ``call_started`` (a perf_counter() reading when that call began),
        until durable."""
        self._check_open()
        pages_dirty = _index_arg(pages_dirty, "pages_dirty")
        if pages_dirty < 0:
            raise ValueError(f"pages_dirty must not be negative ({pages_dirty})")
        for name, t in (("pause_s", pause_s), ("call_s", call_s)):
            if t is not None and not (float(t) >= 0 and float(t) != float("inf")):
                raise ValueError(f"{name} must be a finite non-negative number, not {t!r}")
        pause_s = None if pause_s is None else float(pause_s)
        call_s = None if call_s is None else float(call_s)
        for name, v in (("label", label), ("tracker", tracker), ("mode", mode)):
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str or None, not {type(v).__name__}")
        extra = _jsonable({} if extra is None else extra, "extra")
        if not isinstance(extra, dict):
            raise TypeError("extra must be a dict")
        try:
            self._finish_files()
            doc = self._manifest_doc(pages_dirty=pages_dirty, pause_s=pause_s, label=label,
                                     tracker=tracker, mode=mode, extra=extra, started=started,
                                     call_s=call_s, call_started=call_started)
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
                                     started=None, call_s=like["timings"].get("call_s"))
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
