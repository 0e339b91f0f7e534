"""Reading epochs: read_into hands the chain's packs and indexes to the C
reader (eager.py), which resolves which epoch holds each page, reads the
pages from the packs straight into the caller's array and checks every
page's BLAKE3 digest; retry with fresh manifests when a prune or compaction
in another process retired what a read used. _fetch, the Python read of
stored records, serves verify, compaction and compressed pages the C build
cannot decode."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from .. import _core
from ..errors import CorruptionError, EpochNotFound, FormatError, MemckptError
from . import eager as _eager
from . import format as fmt
from . import io as _io
from .catalog import _Catalog
from .eager import EpochRead
from .io import _IOV_MAX, _as_pages, _fmt_epochs, _preadv_exact

_SNAPSHOT_TRIES = 5            # reads a concurrent prune/compaction may spoil before a reader gives up


def _check_digests(holder: int, pack_name: str, recs: np.ndarray, out: np.ndarray,
                   rows: np.ndarray, reading: int | None) -> None:
    """CorruptionError naming the first page of out[rows] whose digest is not
    its record's: every page hashed in one call into the core (GIL released)."""
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


class _Reader(_Catalog):
    """The third layer of Store: read_into and changed_pages."""

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
               tick: Callable[[int], None] | None = None, *, verify: bool = True) -> None:
        """Fill out[rows] from stored records (none ZERO) of epoch `holder`; check
        digests unless not `verify`. (Verify and compaction read through here;
        read_into through the C reader, and here only for compressed pages the
        C build cannot decode.)"""
        if not len(recs):
            return
        order = np.argsort(recs["offset"], kind="stable")
        recs, rows = recs[order], rows[order]
        where = f"epoch {holder}: {pack_name}"
        comp = (recs["flags"] & (fmt.FLAG_ZSTD | fmt.FLAG_LZ4)) != 0
        if comp.any():
            crecs, crows = recs[comp], rows[comp]
            self._fetch_compressed(fd, crecs, out, crows, where, holder)
            if verify:
                _check_digests(holder, pack_name, crecs, out, crows, reading)
            if tick is not None:
                tick(len(crecs))
            recs, rows = recs[~comp], rows[~comp]
        n = len(recs)
        if not n:
            return
        step = max(1, _io._CHUNK_BYTES // self.page_size)
        if n <= step:
            self._fetch_raw(fd, recs, out, rows, where)
            if verify:
                _check_digests(holder, pack_name, recs, out, rows, reading)
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
                if verify:
                    _check_digests(holder, pack_name, recs[lo:hi], out, rows[lo:hi], reading)
                if tick is not None:
                    tick(hi - lo)

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
            while j < n and off[j] == end and end - off[i] < _io._CHUNK_BYTES:
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
                  out_is_zero: bool = False, verify: bool = True,
                  threads: int | None = None, fill_huge: bool = False) -> None:
        """See memckpt.store.contract; progress(done, total) is called as pages are filled.

        ``out_is_zero=True`` promises that ``out`` reads as zeros already (a
        fresh arena): pages the epoch holds as zero are then left untouched,
        so restoring a sparse arena does not make all of it resident. Page data
        is read from the pack files straight into ``out`` by the C reader
        (csrc/epoch_reader.c) on ``threads`` threads (default: the CPUs this
        process may use), each page checked against its BLAKE3 digest unless
        ``verify=False`` (for stores checked already with ``memckpt verify``:
        a damaged page is then not detected).

        ``fill_huge=True`` (with out_is_zero) says more: ``out`` is the whole
        of a fresh memckpt arena tracked at 4 KiB that no one uses yet. The
        2 MiB blocks the read fills wholly are then faulted in as 2 MiB
        pages before the read (where the kernel has them at hand), and split
        back into 4 KiB page-table entries after it (csrc/read_fill.c)."""
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
                self._read_into(epoch, out, req, progress, out_is_zero, used, verify, threads,
                                fill_huge)
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
    def _read_into(self, epoch: int, out: np.ndarray, req: np.ndarray | None,
                   progress: Callable[[int, int], None] | None, out_is_zero: bool,
                   used: dict[int, Any], verify: bool, threads: int | None,
                   fill_huge: bool = False) -> None:
        chain = self.chain(epoch)
        used.update((e, self._manifest_key(e)) for e in chain)
        docs = [self._doc(e) for e in chain]
        npages = docs[-1]["npages"]
        if out.shape != (npages, self.page_size):
            raise ValueError(f"out has shape {out.shape}, epoch {epoch} needs ({npages}, {self.page_size})")
        if req is not None and len(req) and int(req[-1]) >= npages:
            raise ValueError(f"page {int(req[-1])} is beyond epoch {epoch}'s {npages} pages")
        indexes = [self._index(e, doc=d) for e, d in zip(chain, docs)]
        files = [d["files"] for d in docs]
        names = [(f["pack"]["name"], f["idx"]["name"]) for f in files]
        fds: list[int] = []
        try:
            for e, d in zip(chain, docs):
                fds.append(self._open_pack(e, d))

            def fetch(pos: int, recs: np.ndarray, rows: np.ndarray,
                      tick: Callable[[int], None]) -> None:
                self._fetch(chain[pos], fds[pos], names[pos][0], recs, out, rows, epoch, tick,
                            verify=verify)

            EpochRead(chain, names, epoch).run(
                fds, indexes, [f["pack"]["size"] for f in files], out, req, verify=verify,
                out_is_zero=out_is_zero, threads=threads, progress=progress, fetch=fetch,
                defer_coded=_eager.DEFER_CODED, fill_huge=fill_huge)
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
