"""Writing to an S3 store: the commit protocol without rename or flock.

An epoch is written by the local writer into the S3Store's mirror (the
spool: the C writer, unchanged), then published:

1. its pack and index are uploaded under names of a fresh random
   generation (``e00000007-<gen>.pack``), each with a PUT that refuses to
   overwrite (If-None-Match: "*"): data objects are immutable, and never
   shared by two writers;
2. its manifest, renamed to those objects (and signed again), is PUT last,
   also refusing to overwrite: that PUT is the commit point. Of two writers
   racing for one epoch number exactly one manifest PUT succeeds; the other
   gets StoreLocked, removes its data objects, and nothing of it is visible.

A writer killed anywhere before its manifest PUT leaves data objects that no
manifest names: readers never look at them (they list manifests), and
sweep() removes them once they are older than a grace period."""
from __future__ import annotations

import dataclasses
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from ..epoch import EpochInfo
from ..errors import MemckptError, StoreLocked
from . import format as fmt
from .catalog import _info_from
from .local import Store
from .s3client import ObjectExists

if TYPE_CHECKING:
    from .s3 import S3Store

_GEN_TRIES = 4
SWEEP_GRACE_S = 3600.0  # an unreferenced data object younger than this may be a live writer's


class S3EpochWriter:
    """One epoch being written to an S3 store (S3Store.begin): the local
    writer of the mirror, published to S3 at commit."""

    def __init__(self, store: S3Store, inner: Any) -> None:
        self._s3 = store
        self._w = inner
        self._committed = False

    epoch = property(lambda self: self._w.epoch)
    pack_name = property(lambda self: self._w.pack_name)

    @property
    def handed_off(self) -> bool:
        return bool(self._w.handed_off)

    @handed_off.setter
    def handed_off(self, v: bool) -> None:
        self._w.handed_off = v

    def held_here(self) -> bool:
        return bool(self._w.held_here())

    def add_pages(self, page_numbers: Any, data: Any) -> None:
        self._w.add_pages(page_numbers, data)

    def add_pages_from(self, base: Any, page_numbers: Any) -> None:
        self._w.add_pages_from(base, page_numbers)

    threads = property(lambda self: self._w.threads)
    compress = property(lambda self: self._w.compress)

    # a pause's pages written in C into the spool (the local writer's own)
    def native_writer(self) -> int:
        return int(self._w.native_writer())

    def added_natively(self, pages: Any, error: OSError | None = None,
                       reading: Any = None) -> None:
        self._w.added_natively(pages, error, reading)

    def native_busy(self) -> bool:
        return self._w.native_busy()

    def take_back(self) -> None:
        self._w.take_back()

    def external_target(self) -> tuple[int, int, bytes, int, bytes]:
        return self._w.external_target()  # type: ignore[no-any-return]

    def adopt(self, **kw: Any) -> None:
        self._w.adopt(**kw)

    def abort(self) -> None:
        self._w.abort()

    def __enter__(self) -> S3EpochWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self.abort()

    def __repr__(self) -> str:
        return f"<memckpt S3 epoch writer {self.epoch} of {self._s3.url}>"

    def commit(self, **kw: Any) -> EpochInfo:
        """Spool the epoch (the local writer's commit into the mirror), then
        publish it: data objects, then the manifest with a conditional PUT.
        The returned EpochInfo's total_s runs until the manifest PUT returned."""
        s3 = self._s3
        with s3._lock:  # a refresh meanwhile must not drop the spooled manifest
            s3._spooling.add(self.epoch)
        try:
            info = self._w.commit(**kw)
            out = s3._publish(info)
        finally:
            with s3._lock:
                s3._spooling.discard(self.epoch)
        self._committed = True
        return out


class _S3Writing:
    """S3Store's writing half: begin, publish, prune, sweep."""

    url: str
    _local: Store

    if TYPE_CHECKING:
        from .s3 import S3Store as _Self  # noqa: F401

    def begin(self, kind: str, parent: int | None = None, layout: dict[str, Any] | None = None,
              page_size: int | None = None, npages: int | None = None,
              compress: str | None = None, threads: int | None = None) -> S3EpochWriter:
        s3: S3Store = self  # type: ignore[assignment]
        with s3._lock:
            s3._refresh(s3._listing(), fetch_all=True)  # numbered after every committed epoch
            if parent is not None and kind == "incremental":
                s3._ensure_chain(parent)
            w = s3._named(s3._local.begin, kind, parent=parent, layout=layout,
                          page_size=page_size, npages=npages, compress=compress, threads=threads)
        return S3EpochWriter(s3, w)

    def _publish(self, info: EpochInfo) -> EpochInfo:
        s3: S3Store = self  # type: ignore[assignment]
        b = s3._bucket
        epoch = info.epoch
        t0 = time.perf_counter()
        with s3._lock:
            doc = s3._local.manifest(epoch)
            local = {ext: doc["files"][ext]["name"] for ext in ("pack", "idx")}
            sent0 = b.sent
            names: dict[str, str] = {}
            for attempt in range(_GEN_TRIES):
                gen = 1 + secrets.randbelow(fmt.MAX_GEN)
                names = {ext: fmt.data_name(epoch, gen, ext) for ext in local}
                done: list[str] = []
                try:
                    for ext in ("pack", "idx"):
                        with open(s3._mpath(local[ext]), "rb") as fh:
                            b.put(names[ext], fh, doc["files"][ext]["size"], exclusive=True)
                        done.append(names[ext])
                    break
                except ObjectExists:  # another writer's generation: ours is spent, try another
                    b.delete(done)
                    if attempt + 1 == _GEN_TRIES:
                        self._unspool(epoch, doc, [])
                        raise StoreLocked(f"store {s3.url}: epoch {epoch}: every generation "
                                          f"tried was taken by another writer") from None
                except BaseException:
                    self._unspool(epoch, doc, [*done, *names.values()])
                    raise
            upload_s = time.perf_counter() - t0
            body = {k: v for k, v in doc.items() if k != "digest"}
            body["files"] = {ext: dict(doc["files"][ext], name=names[ext]) for ext in local}
            body["timings"] = dict(doc["timings"], total_s=doc["timings"]["total_s"] + upload_s)
            body["extra"] = dict(doc.get("extra", {}), object_store={
                "spool_s": doc["timings"]["total_s"], "upload_s": upload_s,
                "bytes_uploaded": b.sent - sent0})
            raw = fmt.dump_document(fmt.sign(body))
            name = fmt.manifest_name(epoch)
            try:
                b.put(name, raw, len(raw), exclusive=True)  # the commit point
            except ObjectExists:
                self._unspool(epoch, doc, list(names.values()))
                raise StoreLocked(f"store {s3.url}: epoch {epoch} was committed by another writer "
                                  f"while this one uploaded it; this epoch was not committed "
                                  f"(one writer at a time)") from None
            except BaseException:
                if not self._landed(name, raw):  # a lost answer may hide a commit
                    self._unspool(epoch, doc, list(names.values()))
                    raise
            durable_s = time.perf_counter() - t0
            # committed: from here on nothing may raise (the epoch exists in S3)
            try:
                self._mirror_committed(epoch, doc, local, names, raw)
            except OSError:  # the mirror is a cache: forget the epoch there, fetch it later
                self._unspool(epoch, doc, [])
        out = _info_from(fmt.load_document(raw, where=name, fmt=fmt.EPOCH_FORMAT))
        return dataclasses.replace(out, total_s=info.total_s + durable_s)

    def _mirror_committed(self, epoch: int, doc: dict[str, Any], local: dict[str, str],
                          names: dict[str, str], raw: bytes) -> None:
        """The mirror after a commit: the spool's files under their S3 names,
        the S3 manifest in place of the spool's."""
        s3: S3Store = self  # type: ignore[assignment]
        for ext in local:
            os.rename(s3._mpath(local[ext]), s3._mpath(names[ext]))
        pack = names["pack"]
        size = doc["files"]["pack"]["size"]
        if not s3.keep_local:
            os.truncate(s3._mpath(pack), 0)  # sparse again: fetched on demand
            os.truncate(s3._mpath(pack), size)
        with s3._ranges_lock:
            s3._fetched[pack] = [(0, size)] if s3.keep_local else []
        s3._put_local(fmt.manifest_name(epoch), raw)

    def _landed(self, name: str, raw: bytes) -> bool:
        s3: S3Store = self  # type: ignore[assignment]
        try:
            return s3._bucket.get(name, fmt.MAX_MANIFEST_BYTES) == raw
        except (OSError, MemckptError):
            return False

    def _unspool(self, epoch: int, doc: dict[str, Any], uploaded: list[str]) -> None:
        """Undo an epoch that did not commit in S3: its data objects, and its
        spooled files and manifest in the mirror (a cache, not the store)."""
        s3: S3Store = self  # type: ignore[assignment]
        try:
            s3._bucket.delete(uploaded)
        except (OSError, MemckptError):
            pass  # sweep() removes them later
        for n in (fmt.manifest_name(epoch), doc["files"]["pack"]["name"], doc["files"]["idx"]["name"]):
            try:
                os.unlink(s3._mpath(n))
            except FileNotFoundError:
                pass
        s3._local = Store(s3._local.path)  # its head saw an epoch that is not there

    # -- maintenance ------------------------------------------------------------------------
    def prune(self, keep_last: int | None = None, keep_every: int | None = None, *,
              rebase: bool = False) -> list[int]:
        """As a local store's prune (rebase=True is not supported: it compacts).
        Each removed epoch's manifest is deleted first (it is then no longer
        committed), newest first, then its data objects."""
        s3: S3Store = self  # type: ignore[assignment]
        if rebase:
            raise MemckptError(f"store {s3.url}: prune(rebase=True) compacts, and compaction is "
                               f"not supported on an object store (docs/object-store.md)")
        for name, v in (("keep_last", keep_last), ("keep_every", keep_every)):
            if v is not None and (isinstance(v, bool) or int(v) < 1):
                raise ValueError(f"{name} must be None or >= 1, not {v!r}")
        if keep_last is None and keep_every is None:
            return []
        with s3._lock:
            nums = s3._refresh(s3._listing(), fetch_all=True)
            if not nums:
                return []
            keep = {nums[-1], *nums[-keep_last:]} if keep_last else {nums[-1]}
            if keep_every is not None:
                keep.update(e for e in nums if e % keep_every == 0)
            need: set[int] = set()
            for e in keep:
                need.update(s3._ensure_chain(e))
            remove = [e for e in nums if e not in need]
            for e in reversed(remove):
                files = s3._local.manifest(e)["files"]
                s3._bucket.delete([fmt.manifest_name(e)])
                s3._bucket.delete([files["pack"]["name"], files["idx"]["name"]])
            s3._refresh(s3._listing(), fetch_all=False)
        return remove

    def compact(self, first: int, last: int, **kw: Any) -> EpochInfo:
        raise MemckptError(f"store {self.url}: compaction rewrites a committed manifest, which an "
                           f"object store without rename cannot do safely: compact a local store "
                           f"and replicate it (docs/object-store.md)")

    def sweep(self, grace_s: float = SWEEP_GRACE_S) -> list[str]:
        """Remove data objects no committed manifest names, once older than
        ``grace_s`` (a younger one may be a live writer's upload)."""
        s3: S3Store = self  # type: ignore[assignment]
        with s3._lock:
            listing = s3._listing()
            nums = s3._refresh(listing, fetch_all=True)
            named: set[str] = set()
            for e in nums:
                f = s3._local.manifest(e)["files"]
                named.update((f["pack"]["name"], f["idx"]["name"]))
            now = time.time()
            gone = [n for n, (_, mtime) in listing.items()
                    if fmt.parse_data_name(n) is not None and n not in named and now - mtime >= grace_s]
            s3._bucket.delete(gone)
        return sorted(gone)
