"""An epoch's pages read eagerly through the C reader (memckpt._reader,
csrc/epoch_reader.c): the chain is resolved to units once, and the units are
read, decoded and checked on threads with the GIL released. Python only
orchestrates: it hands over the packs and indexes the catalog opened and
checked, calls progress between batches, reads the compressed pages this
build cannot decode with the store's own path, and words what the C found
wrong as the store's errors (naming epoch, file and page)."""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .. import _reader
from ..errors import CorruptionError, FormatError

# Units run in batches of about this many bytes: progress moves, and Ctrl-C
# is seen, between batches (the C holds no GIL and checks no signal).
_BATCH_BYTES = 256 << 20
# with a progress callback, about this many batches at least
_PROGRESS_STEPS = 32

#: False: a fresh arena is prefaulted in a pass before the read, as before
#: the fill in the run (the benchmark and the tests run both ways)
FILL_IN_RUN = True

#: True: compressed pages go through the store's Python path even when the C
#: build decodes them (the tests run both paths on one build)
DEFER_CODED = False

# fetch(position, records, rows, tick): the store's own read of stored records
Fetch = Callable[[int, np.ndarray, np.ndarray, Callable[[int], None]], None]


class EpochRead:
    """One read of ``chain`` (oldest first) into ``out``. ``names[i]``:
    (pack name, idx name) of chain[i], for the errors."""

    def __init__(self, chain: list[int], names: list[tuple[str, str]], reading: int) -> None:
        self.chain = chain
        self.names = names
        self.reading = reading

    def run(self, fds: list[int], indexes: list[np.ndarray], pack_sizes: list[int],
            out: np.ndarray, req: np.ndarray | None, *, verify: bool, out_is_zero: bool,
            threads: int | None, progress: Callable[[int, int], None] | None,
            fetch: Fetch, defer_coded: bool = False, fill_huge: bool = False) -> None:
        sources = list(zip(fds, indexes, pack_sizes))
        try:
            plan = _reader.ReadPlan(sources, out, req, verify=verify, out_is_zero=out_is_zero,
                                    defer_coded=defer_coded, fill_huge=fill_huge)
        except _reader.ReadFault as f:
            raise self._error(f) from None
        try:
            self._run(plan, indexes, out, req, threads, progress, fetch, out_is_zero)
        except BaseException:
            try:
                plan.split_huge()
            except OSError:
                pass  # the read's own failure is the one to report
            raise
        plan.split_huge()  # (nothing to do without fill_huge)

    def _run(self, plan: Any, indexes: list[np.ndarray], out: np.ndarray,
             req: np.ndarray | None, threads: int | None,
             progress: Callable[[int, int], None] | None, fetch: Fetch,
             out_is_zero: bool) -> None:
        total = out.shape[0] if req is None else len(req)
        src, rec = plan.deferred()
        done = [total - plan.pages() - len(src)]  # zero pages a fresh `out` holds already

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        if progress is not None and done[0]:
            progress(done[0], total)
        # 0: the C picks (the CPUs this process may use, fewer for a small read)
        nthreads = 0 if threads is None else int(threads)
        if threads is not None and nthreads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        # fresh memory: faulted in by blocks, not page by page, and in the run
        # (each block by the thread about to read it) where that pays
        if out_is_zero and not (FILL_IN_RUN and plan.fill_in_run()):
            plan.prefault(nthreads)
        for lo, hi in self._batches(plan, out.shape[1], progress is not None):
            try:
                plan.run(lo, hi, nthreads)
            except _reader.ReadFault as f:
                raise self._error(f) from None
            tick(plan.pages(hi) - plan.pages(lo))
        if len(src):
            # compressed pages this build does not decode in C
            for pos in np.unique(src).tolist():
                recs = indexes[pos][rec[src == pos].astype(np.int64)]
                fetch(pos, recs, recs["page"].astype(np.int64), tick)
        if progress is not None and done[0] != total:
            progress(total, total)

    @staticmethod
    def _batches(plan: Any, page_size: int, fine: bool) -> list[tuple[int, int]]:
        n = plan.units
        if not n:
            return []
        counts = plan.page_counts()
        pages = int(counts[-1])
        step = max(1, _BATCH_BYTES // page_size)
        if fine:
            step = max(1, min(step, -(-pages // _PROGRESS_STEPS)))
        if pages <= step:
            return [(0, n)]
        # unit boundaries nearest each multiple of step pages
        marks = np.searchsorted(counts, np.arange(step, pages, step), side="left")
        bounds = [0, *sorted(set(int(m) for m in marks if 0 < m < n)), n]
        return list(zip(bounds[:-1], bounds[1:]))

    def _error(self, f: Any) -> Exception:
        holder = self.chain[f.source]
        pack, idx = self.names[f.source]
        lead = f"reading epoch {self.reading}: " if holder != self.reading else ""
        at = f"epoch {holder}: page {f.page} in {pack} (offset {f.offset})"
        if f.kind == _reader.FAULT_DIGEST:
            more = f" ({f.nbad} pages bad)" if f.nbad > 1 else ""
            return CorruptionError(f"{lead}{at} does not match its BLAKE3 digest{more}")
        if f.kind == _reader.FAULT_DECODE:
            return CorruptionError(f"{lead}{at} does not decompress: {f.why}")
        if f.kind == _reader.FAULT_SHORT:
            return CorruptionError(f"{lead}epoch {holder}: {pack}: file ends early "
                                   f"(at byte {f.offset}); truncated?")
        if f.kind == _reader.FAULT_RECORD:
            return FormatError(f"{lead}epoch {holder}: {idx}: record {f.record} "
                               f"(page {f.page}) {f.why}")
        return OSError(f.err, f"{lead}epoch {holder}: reading {pack} at byte {f.offset}: "
                              f"{os.strerror(f.err)}")
