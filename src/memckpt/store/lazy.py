"""What a lazy restore needs from a local store: the chain's packs (open)
and indexes, for the C server (memckpt._lazy), and the first-touch record
kept beside an epoch (``e<epoch>.touch``, docs/format.md).

The record is a hint, never part of an epoch: it is outside the manifest's
digest, written whole under a temporary name and renamed (by a reader,
without the writer's lock: two restores racing leave one of their records),
and anything wrong with it (absent, short, damaged, for another manifest of
the same epoch number after a compaction) reads as no record at all."""
from __future__ import annotations

import mmap
import os
import struct
from typing import Any

import blake3
import numpy as np

from ..errors import CorruptionError
from . import format as fmt
from .binary import IDX_HEADER_SIZE, RECORD_DTYPE, RECORD_SIZE, parse_index_header

TOUCH_MAGIC = b"MCKTOUCH"
TOUCH_VERSION = 1
# magic, version, reserved, npages, count, BLAKE3 of the epoch's manifest file
_HEAD = struct.Struct("<8sIIQQ32s")
#: a record never holds more than this many pages (8 MiB of page numbers)
TOUCH_MAX = 1 << 20


class LazySources:
    """The chain of ``epoch`` opened for a lazy read: ``sources`` for
    memckpt._lazy.LazyServer, ``indexes`` (one (bytes, BLAKE3) a source, for
    the server to check whole in the background; None: checked here),
    ``names`` (pack, idx) and ``chain`` for its errors. ``close()`` closes
    the packs and lets go of the index mappings.

    What is checked before the restore returns: the manifests and the chain's
    ties, each index's size and header against its manifest, each pack's
    header. An index's digest and records are checked by the server's own
    thread while it serves faults already (docs/restore.md): each of its
    records is followed only after C checks it stays inside the arena and the
    pack, and each page against its record's digest."""

    def __init__(self, store: Any, epoch: int) -> None:
        for attr in ("chain", "_doc", "_open_data", "_open_pack"):
            if not hasattr(store, attr):
                raise TypeError(f"a lazy restore reads the packs of a local store; "
                                f"{type(store).__name__} is not one (use lazy=False)")
        self.chain = store.chain(epoch)
        docs = [store._doc(e) for e in self.chain]
        self.npages = int(docs[-1]["npages"])
        self.names = [(d["files"]["pack"]["name"], d["files"]["idx"]["name"]) for d in docs]
        self.fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        self.sources: list[tuple[int, np.ndarray, int]] = []
        self.indexes: list[tuple[Any, bytes]] | None = []
        try:
            for e, d in zip(self.chain, docs):
                recs, ix = self._index(store, e, d)
                self.fds.append(store._open_pack(e, d))
                self.sources.append((self.fds[-1], recs, int(d["files"]["pack"]["size"])))
                self.indexes.append(ix)
        except BaseException:
            self.close()
            raise

    def _index(self, store: Any, epoch: int, doc: dict[str, Any]) -> tuple[np.ndarray, Any]:
        """The records of the epoch's index, mapped (header checked), and what
        the server checks of it in the background."""
        f = doc["files"]["idx"]
        where = f"epoch {epoch}: {f['name']}"
        fd = store._open_data(epoch, doc, "idx")  # (its size is the manifest's)
        try:
            head = os.pread(fd, IDX_HEADER_SIZE, 0)
            hsize, rsize, count = parse_index_header(
                head, f["size"], epoch=epoch, page_size=store.page_size,
                npages=doc["npages"], where=where)
            if count != doc["counts"]["records"]:
                raise CorruptionError(f"{where}: holds {count} records, the manifest counts "
                                      f"{doc['counts']['records']}")
            if rsize != RECORD_SIZE or hsize % 8:
                # a newer minor's longer records: parsed (copied) and checked here
                return store._index(epoch, doc=doc), (None, bytes(32))
            mm = mmap.mmap(fd, f["size"], prot=mmap.PROT_READ) if f["size"] else None
        finally:
            os.close(fd)
        if mm is None:
            return np.empty(0, RECORD_DTYPE), (None, bytes.fromhex(f["blake3"]))
        self._maps.append(mm)
        data = np.frombuffer(mm, dtype=np.uint8)
        recs = data[hsize:].view(RECORD_DTYPE)
        return recs, (data, bytes.fromhex(f["blake3"]))

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def release(self) -> None:
        """Let go of the index mappings (once the server is closed)."""
        self.sources, self.indexes = [], None
        maps, self._maps = self._maps, []
        for mm in maps:
            try:
                mm.close()
            except BufferError:
                pass  # an array still points into it: it goes with the array


def touch_name(epoch: int) -> str:
    return fmt.manifest_name(epoch)[: -len(".json")] + ".touch"


def _manifest_digest(path: Any, epoch: int) -> bytes | None:
    try:
        with open(os.path.join(path, fmt.manifest_name(epoch)), "rb") as f:
            return blake3.blake3(f.read()).digest()
    except OSError:
        return None


def read_touch(path: Any, epoch: int, npages: int) -> np.ndarray | None:
    """The recorded first-touch order of ``epoch`` (uint64 pages), or None."""
    try:
        fd = os.open(os.path.join(path, touch_name(epoch)),
                     os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        limit = _HEAD.size + 8 * TOUCH_MAX + 32
        if not (_HEAD.size + 32 <= st.st_size <= limit):
            return None
        data = os.pread(fd, st.st_size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    body, digest = data[:-32], data[-32:]
    if blake3.blake3(body).digest() != digest:
        return None
    magic, version, _, n, count, man = _HEAD.unpack_from(body)
    if (magic != TOUCH_MAGIC or version != TOUCH_VERSION or n != npages
            or len(body) != _HEAD.size + 8 * count or man != _manifest_digest(path, epoch)):
        return None
    pages = np.frombuffer(body, dtype="<u8", offset=_HEAD.size).astype(np.uint64)
    return pages if (pages < npages).all() else None


def write_touch(path: Any, epoch: int, npages: int, pages: np.ndarray) -> bool:
    """Record ``pages`` (first-touch order) for ``epoch``; False if it cannot
    be written (a read-only store, a full disk): a record is only a hint."""
    man = _manifest_digest(path, epoch)
    if man is None:
        return False
    pages = np.asarray(pages, dtype="<u8")[:TOUCH_MAX]
    body = _HEAD.pack(TOUCH_MAGIC, TOUCH_VERSION, 0, npages, len(pages), man) + pages.tobytes()
    name = os.path.join(path, touch_name(epoch))
    tmp = os.path.join(path, f".{touch_name(epoch)}.{os.getpid()}{fmt.TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            view = memoryview(body + blake3.blake3(body).digest())
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True
