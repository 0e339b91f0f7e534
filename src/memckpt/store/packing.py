"""add_pages: hash, elide zero pages, dedup by digest, compress, and write
an epoch's pages to its pack (pipelined: one chunk hashed while the last is
written), keeping the index records for commit()."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
    _pack_hash: Any

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
        step = max(1, _io._CHUNK_BYTES // ps)
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
