"""What a store holds, by epoch: the manifests (validated, cached by the
file's inode, size and mtime), the chain links that tie each epoch to its
parent, and the parsed indexes. Readers and writers both look epochs up here."""
from __future__ import annotations

import collections
import copy
import os
import threading
from typing import Any, NamedTuple

import blake3
import numpy as np

from ..epoch import EpochInfo
from ..errors import CorruptionError, EpochNotFound
from . import format as fmt
from .header import _Header
from .io import _O_READ, _MissingFile, _index_arg, _open_file, _preadv_exact, _read_fd

_MANIFEST_CACHE = 4096         # manifests a Store keeps parsed (about 26 MiB at most)
# parsed indexes a Store keeps, in bytes: a full epoch of a 512 MiB arena has a
# 7 MiB index, so a count of entries would bound nothing
_INDEX_CACHE_BYTES = 64 << 20
# links of epochs no longer listed that a Store may keep before it forgets them
_LINK_SLACK = 1024


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
        call_s=None if timings.get("call_s") is None else float(timings["call_s"]),
        extra=copy.deepcopy(doc.get("extra", {})),
    )


class _Catalog(_Header):
    """The second layer of Store: epochs, manifests, chains and indexes."""

    _cache_lock: threading.Lock
    # validated manifests by epoch, least recently used first; bounded, so
    # that a process checkpointing for days without pruning does not keep
    # every manifest it ever read (about 6.5 KiB each)
    _manifests: collections.OrderedDict[int, tuple[tuple[int, int, int], dict[str, Any]]]
    _indexes: collections.OrderedDict[tuple[Any, ...], np.ndarray]
    _index_bytes: int
    _links: dict[int, _Link]  # chain links by epoch: never evicted with the manifests

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
        self._cache_doc(epoch, key, doc, _link_of(doc, key))
        return doc

    def _cache_doc(self, epoch: int, key: tuple[int, int, int], doc: dict[str, Any],
                   link: _Link) -> None:
        with self._cache_lock:
            self._links[epoch] = link
            self._manifests[epoch] = (key, doc)
            self._manifests.move_to_end(epoch)
            while len(self._manifests) > _MANIFEST_CACHE:
                self._manifests.popitem(last=False)

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

    def _index(self, epoch: int, *, fresh: bool = False,
               doc: dict[str, Any] | None = None) -> np.ndarray:
        """The epoch's parsed, checked index (cached); ``doc``: its manifest,
        if the caller has just had it from _doc."""
        if doc is None or fresh:
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
        # parsed in place: a copy of a large index costs more in fresh
        # pages than the parse itself
        recs = fmt.parse_index(buf, epoch=epoch, page_size=self.page_size,
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

    def _manifest_key(self, epoch: int) -> tuple[int, int, int] | None:
        """(inode, size, mtime) of the epoch's manifest file; None if there is
        none. A prune changes it to None, a compaction's rename to another."""
        try:
            st = os.lstat(self.path / fmt.manifest_name(epoch))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)
