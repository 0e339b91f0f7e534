"""add_pages and add_pages_from: an epoch's pages into its pack. Uncompressed
epochs go whole to the C epoch writer (csrc/epoch_writer.c through
memckpt._writer: zero pages elided, digests, dedup, vectored writes, with
threads, the GIL released), which keeps the index records for commit().
Compressed epochs are hashed by the core and compressed here in Python,
chunk by chunk (pipelined: one chunk hashed while the last is written): the
C core is built without zstd or lz4."""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from .. import _core
from . import format as fmt
from . import io as _io
from .external import _External
from .io import _as_pages, _pwritev_all


class _Packing(_External):
    """The second layer of EpochWriter: pages in."""

    _recs: list[np.ndarray]
    _seen: dict[bytes, Any]
    _compressor: Any
    _cflag: int
    _cw: Any = None  # memckpt._writer.PackWriter of an uncompressed epoch, else None

    # -- pages ----------------------------------------------------------------------------
    def _check_pages(self, page_numbers: Any, what: str) -> np.ndarray:
        self._check_open()
        self._settle_c()
        if self._idx_fd is not None:  # fork mode: another process writes the pages
            raise ValueError(f"epoch {self.epoch}'s files were handed to another writer "
                             f"(external_target()); {what} cannot be mixed with adopt()")
        pages = _as_pages(page_numbers)
        if len(pages) > 1 and not bool((pages[1:] > pages[:-1]).all()):
            raise ValueError("page numbers must be strictly increasing")
        if len(pages) and int(pages[0]) <= self._last_page:
            raise ValueError(f"page {int(pages[0])} does not follow the last page added "
                             f"({self._last_page}): page numbers must increase across calls")
        if len(pages) and int(pages[-1]) >= self.npages:
            raise ValueError(f"page {int(pages[-1])} is beyond the arena's {self.npages} pages")
        return pages

    def add_pages(self, page_numbers: Any, data: Any) -> None:
        pages = self._check_pages(page_numbers, "add_pages")
        n = len(pages)
        ps = self.page_size
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
        if data.dtype != np.uint8 or data.shape != (n, ps):
            raise ValueError(f"data must be uint8 of shape ({n}, {ps}), not {data.dtype} {data.shape}")
        if n == 0:
            return
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        if self._cw is not None:
            return self._add_c(data, pages, None)
        step = max(1, _io._CHUNK_BYTES // ps)
        with self._writing():
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
        self._last_page = int(pages[-1])

    def add_pages_from(self, base: Any, page_numbers: Any) -> None:
        """add_pages of the pages page_numbers straight from memory: page p's
        bytes are row p of base (uint8, (rows, page_size), C-contiguous; an
        arena's pages), with no copy of them made for an uncompressed epoch."""
        pages = self._check_pages(page_numbers, "add_pages_from")
        ps = self.page_size
        if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or base.ndim != 2 \
                or base.shape[1] != ps:
            got = f"{base.dtype} {base.shape}" if isinstance(base, np.ndarray) else type(base).__name__
            raise ValueError(f"base must be a uint8 array of shape (rows, {ps}), not {got}")
        if not base.flags.c_contiguous:
            raise ValueError("base must be C-contiguous (its rows are the pages written)")
        if len(pages) and int(pages[-1]) >= base.shape[0]:
            raise ValueError(f"page {int(pages[-1])} is beyond base's {base.shape[0]} rows")
        if len(pages) == 0:
            return
        if self._cw is not None:
            return self._add_c(base, pages, pages)
        step = max(1, _io._CHUNK_BYTES // ps)  # compressed: through add_pages, a chunk at a time
        for lo in range(0, len(pages), step):
            self.add_pages(pages[lo:lo + step], base[pages[lo:lo + step]])

    def native_writer(self) -> int:
        """The address of this epoch's C writer (csrc/epoch_writer.h, struct
        mck_ew), for a pause that writes pages in C with the GIL held, or 0
        when the epoch has none (its pages are compressed in Python). After
        such an add, call :meth:`added_natively` with its pages (and its
        error, if it failed)."""
        self._check_open()
        return int(self._cw.address()) if self._cw is not None else 0

    def added_natively(self, pages: np.ndarray, error: OSError | None = None,
                       reading: Any = None) -> None:
        """Account for pages the C writer took outside add_pages (see
        native_writer); ``pages``: those pages, in the order added. With
        ``error`` (that add's failure), abort the epoch and raise it naming
        the epoch, the store and the pack. With ``reading``: the C writer
        is still adding them, from that buffer (an add that runs beyond the
        pause: _core.pause_copy), which it keeps until done; the next add
        and commit wait for it (and raise its error), abort() stops it."""
        if error is not None:
            self.abort()
            raise self._where(error, self._pack_name)
        if reading is not None and self._cw is not None and self._cw.busy:
            self._cw.reading(reading)
            self._pending_c = pages
            return
        if len(pages):
            self._after_c_add(pages)

    _pending_c: np.ndarray | None = None

    def native_busy(self) -> bool:
        """Whether the C writer still reads an add's pages (added_natively
        with ``reading``): their buffer must not be reused yet."""
        return self._cw is not None and bool(self._cw.busy)

    def _settle_c(self) -> None:
        """Wait for the C writer's running add, if any, and account for its
        pages; its failure aborts the epoch (raised naming it)."""
        pages, self._pending_c = self._pending_c, None
        if pages is None or self._cw is None:
            return
        with self._writing():
            self._cw.wait()
        if len(pages):
            self._after_c_add(pages)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Pages going into the pack: any failure aborts the epoch (the pack
        may no longer match the records, so it cannot commit)."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise self._where(exc, self._pack_name) from None
        except BaseException:
            self.abort()
            raise

    def _add_c(self, base: np.ndarray, pages: np.ndarray, rows: np.ndarray | None) -> None:
        with self._writing():
            self._cw.add(base, pages, rows)
        self._after_c_add(pages)

    def _after_c_add(self, pages: np.ndarray) -> None:
        st = self._cw.stats()
        self._records, self._stored, self._dedup, self._zero = (
            st["records"], st["stored"], st["dedup"], st["zero"])
        self._off = st["pack_size"]
        self._last_page = int(pages[-1])

    def _add_chunk(self, p: np.ndarray, d: np.ndarray) -> tuple[list[Any], int]:
        """Hash, elide, dedup, compress and place one chunk; return its write job."""
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
        # compressed epochs only: uncompressed ones go to the C writer (_add_c)
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
        """Write one chunk's new stored bytes at their offset."""
        bufs, offset = job
        if bufs:
            _pwritev_all(self._pack_fd, bufs, offset)  # type: ignore[arg-type]
