"""An epoch's files written by another process (the fork child of
csrc/capture_fork.c): external_target() hands them out, adopt() takes them
back after checking them."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import blake3

from ..errors import CorruptionError
from . import format as fmt
from .io import _O_CREATE, _index_arg, _open_file, _read_fd
from .spare import name_file, reopen, unnamed_file

if TYPE_CHECKING:
    from .local import Store


class _External:
    """The first layer of EpochWriter: files handed to another writer."""

    # the writer's state, set by EpochWriter.__init__ (declared here for the type checker)
    _store: Store
    _closed: bool
    _committed: bool
    epoch: int
    kind: str
    page_size: int
    npages: int
    compress: str | None
    _pack_name: str
    _idx_name: str
    _pack_fd: int | None
    _off: int
    _last_page: int
    _records: int
    _stored: int
    _dedup: int
    _zero: int
    _durable_at: float
    _files: dict[str, Any]

    if TYPE_CHECKING:  # EpochWriter's own
        def _name_pack(self) -> None: ...
        def _take_lock(self) -> None: ...
        def _check_open(self) -> None: ...
        def abort(self) -> None: ...
        def _where(self, exc: OSError, name: str) -> OSError: ...

    # -- files written by another process (fork mode) ------------------------------------
    # external_target() hands out the epoch's two files; another process (the
    # fork child of csrc/capture_fork.c) writes them by the rules of add_pages;
    # adopt() takes its counts, sizes and digests; commit() then writes the
    # manifest exactly as after add_pages. abort() removes both files as ever.
    _idx_fd: int | None = None
    _idx_unnamed = False  # an O_TMPFILE, named at commit (a prepared writer's: store/prepared.py)
    _lock_due: bool
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
            if self._lock_due:
                # a prepared writer, in the pause of a checkpoint: no lock, no
                # name; the index is unnamed until commit, as the pack is
                self._idx_fd = unnamed_file(self._store.path)
                self._idx_unnamed = True
            else:
                self._idx_fd = _open_file(self._store.path / self._idx_name, _O_CREATE,
                                          f"epoch {self.epoch}: {self._idx_name}")
        except BaseException:
            self.abort()
            raise
        hdr = fmt.pack_header(self.epoch, self.page_size)
        return (self._pack_fd, self._off, hdr, self._idx_fd,
                fmt.idx_header(self.epoch, self.page_size, 0))

    def take_back(self) -> None:
        """The other writer never ran (the fork failed): the epoch is this
        process's again, as begin() left it, and add_pages() works. The
        empty index file stays until commit() writes it."""
        self._check_open()
        if self._idx_fd is None or self._adopted is not None:
            raise ValueError(f"epoch {self.epoch}: take_back() is for files handed out "
                             "(external_target()) and not adopted")
        fd, self._idx_fd = self._idx_fd, None
        os.close(fd)

    def adopt(self, *, records: int, stored: int, dedup: int, zero: int, pack_size: int,
              idx_size: int, idx_digest: bytes) -> None:
        """Take the files another writer made of this epoch, after it made them
        durable. Checks what can be checked without reading the pages: the
        sizes on disk and that the counts agree with them; the whole index
        (its digest, and every record as a reader would check it). The pack's
        images are checked against their records' digests by every read (and
        Store.verify). A mismatch aborts the epoch and raises CorruptionError."""
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
            if not isinstance(idx_digest, (bytes, bytearray)) or len(idx_digest) != 32:
                raise ValueError("idx_digest must be 32 bytes")
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
            rfd = (reopen(self._idx_fd) if self._idx_unnamed else
                   self._store._open_regular(self._idx_name, where,
                                             CorruptionError(f"{where}: the index file vanished")))
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
        self._adopted = {"idx_digest": bytes(idx_digest).hex(), "idx_size": vals["idx_size"]}

    def _finish_adopted(self) -> None:
        """_finish_files for adopted files: they are durable already (the
        writer fdatasynced both before it reported)."""
        assert self._adopted is not None
        if self._idx_unnamed and self._idx_fd is not None:
            name_file(self._idx_fd, self._store.path / self._idx_name)
            self._idx_unnamed = False
        self._name_pack()
        for attr in ("_pack_fd", "_idx_fd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                os.close(fd)
        self._files = {
            "idx": {"name": self._idx_name, "size": self._adopted["idx_size"],
                    "blake3": self._adopted["idx_digest"]},
            "pack": {"name": self._pack_name, "size": self._off},
        }
