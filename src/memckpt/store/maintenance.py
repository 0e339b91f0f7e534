"""The writer's maintenance of a store, under the writer lock: compaction
(through the public EpochWriter interface), prune, and the sweep of what no
committed manifest references."""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np

from .. import _signals
from ..epoch import EpochInfo
from ..errors import CorruptionError, EpochNotFound, FormatError, MemckptError, StoreLocked
from . import format as fmt
from . import io as _io
from .head import _Head, _Heads
from .io import _fsync_dir, _unlink
from .lazy import touch_name
from .writer import EpochWriter

if TYPE_CHECKING:
    from .local import Store

_WRITER_WAIT_S = 600.0        # how long a write waits for this Store's open epoch writer


class _Sweeper(_Heads):
    """The sixth layer of Store: the writers it has open, and the sweep."""

    _writers_cv: threading.Condition
    _open_writers: weakref.WeakSet[EpochWriter]
    _swept: bool
    _unsettled: tuple[int, str] | None  # (epoch, pack name) being written

    def _wait_for_writers(self, what: str) -> None:
        """Wait (up to _WRITER_WAIT_S) until no epoch writer of this Store is
        open. A writer the calling thread began and still holds cannot end
        while it waits: that is refused at once."""
        deadline = time.monotonic() + _WRITER_WAIT_S
        with self._writers_cv:
            while self._open_writers:
                mine = [w for w in self._open_writers if w.held_here()]
                if mine:
                    raise StoreLocked(f"store {self.path}: cannot {what} while this thread holds "
                                      f"the open writer of epoch {mine[0].epoch}: commit or abort "
                                      f"it first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLocked(f"store {self.path}: cannot {what}: the epoch writer of "
                                      f"epoch {next(iter(self._open_writers)).epoch} has been open "
                                      f"for over {_WRITER_WAIT_S:g} s")
                self._writers_cv.wait(left)

    def sweep(self) -> list[str]:
        """Remove uncommitted garbage now (a writer's operation: takes the
        writer lock, StoreLocked if another writer holds it); returns the
        names removed. Writes do this themselves when it is due."""
        self._wait_for_writers("sweep")
        self._check_same_store()
        # role "sweep": a writer arriving meanwhile waits the moment out
        with self._writer_lock("sweep"):
            removed = self._sweep()
            self._swept, self._unsettled = True, None
            return removed

    def _sweep_if_due(self) -> None:
        """Sweep (caller holds the writer lock) at this Store's first write,
        and after an epoch it wrote did not commit and left files behind (an
        abort that was itself cut short: a signal, a dying disk). Checking
        costs a cached manifest lookup and a few lstat calls."""
        due = not self._swept
        if not due and self._unsettled is not None:
            epoch, pack = self._unsettled
            try:
                due = self._doc(epoch)["files"]["pack"]["name"] != pack
            except (MemckptError, OSError):
                due = True
            if due:  # not committed (or not as written): did its abort leave anything?
                p = fmt.parse_data_name(pack)
                names = [pack, fmt.manifest_name(epoch) + fmt.TMP_SUFFIX]
                if p is not None:
                    names.append(fmt.data_name(p[0], p[1], "idx"))
                due = any(os.path.lexists(self.path / n) for n in names)
        if due:
            self._sweep()
            self._swept = True
        self._unsettled = None

    def _sweep(self) -> list[str]:
        """Remove what no committed manifest references (caller holds the lock):
        *.tmp, and data files of no manifest. The files of an epoch whose
        manifest cannot be read are kept, for verify() to report.

        Reads only the manifests of epochs with data files of more than one
        generation (a compaction cut short, before or after its commit): an
        epoch with a manifest and one generation of files keeps them (its
        manifest names them, or it is damaged and verify() says so), so the
        first write of a Store costs a listing, not a read of every manifest."""
        names = os.listdir(self.path)
        committed = {e for e in map(fmt.parse_manifest_name, names) if e is not None}
        self._head = _Head(max(committed, default=0))  # listed anyway: the writer's head
        gens: dict[int, set[int]] = {}
        for n in names:
            p = fmt.parse_data_name(n)
            if p is not None and p[0] in committed:
                gens.setdefault(p[0], set()).add(p[1])
        referenced: set[str] = set()
        protected: set[int] = set()
        for e, gs in gens.items():
            if len(gs) == 1:
                protected.add(e)
                continue
            try:
                d = self._doc(e)
            except (MemckptError, OSError):
                protected.add(e)
                continue
            referenced.add(d["files"]["idx"]["name"])
            referenced.add(d["files"]["pack"]["name"])
        removed = []
        for n in names:
            if not n.endswith(fmt.TMP_SUFFIX):
                p = fmt.parse_data_name(n)
                if p is None or n in referenced or p[0] in protected:
                    continue
            try:
                if _unlink(self.path / n):
                    removed.append(n)
            except IsADirectoryError:  # not ours to remove: a directory with a store-like name
                continue
        if removed:
            _fsync_dir(self.path)
        return removed


class _Maintenance(_Sweeper):
    """The seventh layer of Store: compact and prune."""

    # -- compaction and retention ---------------------------------------------------------
    def compact(self, first: int, last: int, *,
                progress: Callable[[int, int], None] | None = None) -> EpochInfo:
        """See memckpt.store.contract; progress(done, total) counts pages merged."""
        self._wait_for_writers("compact")
        held, leave = self._held_lock("compact")
        with held:
            self._took_lock(held.found, leave)
            self._sweep_if_due()
            full_chain = self.chain(last)
            if first not in full_chain:
                done = (self._doc(last).get("compacted") or {}).get("from", [])
                if first in done:  # an earlier compact() that was interrupted: finish it
                    return self._finish_compaction(done[done.index(first):])
                raise MemckptError(f"cannot compact {first}..{last}: epoch {first} is not in "
                                   f"epoch {last}'s chain {full_chain}")
            run = full_chain[full_chain.index(first):]
            if len(run) == 1:
                return self.info(last)
            inner = set(run[:-1])
            for e in self.epoch_numbers():
                if e in run:
                    continue
                d = self._doc(e)
                if d.get("parent") in inner:
                    # a full epoch's parent is lineage only, but is not left dangling either
                    raise MemckptError(
                        f"cannot compact {first}..{last}: epoch {e} ({d['kind']}) has epoch "
                        f"{d['parent']} as its parent, which the compaction would retire (a branch "
                        f"would break); compact {first}..{d['parent']} instead, or prune epoch {e} first")
            t0 = time.perf_counter()
            dfirst, dlast = self._doc(first), self._doc(last)
            old_files = [dlast["files"]["idx"]["name"], dlast["files"]["pack"]["name"]]
            w = EpochWriter(cast("Store", self), None, epoch=last, gen=fmt.manifest_generation(dlast) + 1,
                            kind=dfirst["kind"], parent=dfirst.get("parent"),
                            layout=dlast["layout"], npages=dlast["npages"],
                            compress=dlast.get("compress"),
                            parent_digest=self._compacted_parent_digest(dfirst))
            self._unsettled = (last, w.pack_name)
            try:
                self._copy_run(run, w, progress)
            except BaseException:
                w.abort()
                raise
            info = w.commit_merged(like=dlast, merged_from=run, started=t0)
            with _signals.deferred():
                # the writer's finalizers (its __del__, its WeakSet's callback)
                # run Python code, where CPython drops a signal handler's
                # exception: here it waits for the end of the section instead
                del w
            # the merged epoch is durable: only now retire the run, newest first
            self._retire(run[:-1], old_files)
            return info

    def _compacted_parent_digest(self, dfirst: dict[str, Any]) -> str | None:
        """The parent_digest of an epoch merged from a run starting at dfirst:
        first's parent as it is now (chain(last) checked the tie), or, for a
        full first whose lineage parent is gone, what first recorded."""
        parent = dfirst.get("parent")
        if parent is None:
            return None
        try:
            return self._link(parent).identity
        except EpochNotFound:
            return dfirst.get("parent_digest")

    def _finish_compaction(self, run: list[int]) -> EpochInfo:
        """Retire what is left of a run merged into run[-1] by a compaction
        that was interrupted after its commit point (caller holds the lock)."""
        existing = set(self.epoch_numbers())
        leftover = [e for e in run[:-1] if e in existing]
        for e in sorted(existing - set(leftover)):
            d = self._doc(e)
            if d.get("parent") in leftover:
                raise MemckptError(
                    f"cannot finish compacting {run[0]}..{run[-1]}: epoch {e} has epoch "
                    f"{d['parent']} as its parent, which it would retire (a branch would break)")
        if leftover:
            self._retire(leftover, [])
        return self.info(run[-1])

    def _copy_run(self, run: list[int], w: EpochWriter,
                  progress: Callable[[int, int], None] | None = None) -> None:
        docs = [self._doc(e) for e in run]
        indexes = [self._index(e) for e in run]
        npages = docs[-1]["npages"]
        # resolve only the pages the run's indexes hold: a dense resolve would
        # size three arrays by the manifest's npages (up to 2**48), which a
        # hostile or damaged manifest controls; the indexes' size is checked
        held = np.unique(np.concatenate([r["page"] for r in indexes]))
        if not held.size:
            return
        _, owner, ridx = self._resolve(indexes, npages, held)
        batch = max(1, _io._CHUNK_BYTES // self.page_size)
        scratch = np.empty((min(batch, len(held)), self.page_size), dtype=np.uint8)
        fds: list[int] = []
        try:
            for e, d in zip(run, docs):
                fds.append(self._open_pack(e, d))
            for lo in range(0, len(held), batch):
                sel = held[lo:lo + batch]
                buf = scratch[:len(sel)]
                rows_all = np.arange(len(sel), dtype=np.int64)
                own, ri = owner[lo:lo + batch], ridx[lo:lo + batch]
                for pos in np.unique(own).tolist():
                    s = own == pos
                    recs, rows = indexes[pos][ri[s]], rows_all[s]
                    z = (recs["flags"] & fmt.FLAG_ZERO) != 0
                    if z.any():
                        buf[rows[z]] = 0
                    self._fetch(run[pos], fds[pos], docs[pos]["files"]["pack"]["name"],
                                recs[~z], buf, rows[~z], None)
                w.add_pages(sel.astype(np.uint64), buf)
                if progress is not None:
                    progress(lo + len(sel), len(held))
        finally:
            for fd in fds:
                os.close(fd)

    def _retire(self, epochs: list[int], extra_files: list[str]) -> None:
        """Remove epochs newest first: each manifest's removal is durable before
        the next, so an epoch still committed never lacks an ancestor. Their data
        files go afterwards (a crash in between leaves garbage, swept on open)."""
        # Interruptible between any two steps (Ctrl-C in a long prune): each
        # step leaves committed epochs whole, at worst data files of removed
        # manifests (swept by the next writer) and cached entries of removed
        # epochs (keyed by inode, so never served for another file).
        files = list(extra_files)
        orphans = []
        for e in sorted(epochs, reverse=True):
            try:
                d = self._doc(e)
                files += [d["files"]["idx"]["name"], d["files"]["pack"]["name"]]
            except (CorruptionError, FormatError):
                orphans.append(e)
            self._forget(e)  # first: a head that still names a retired epoch would build on it
            _unlink(self.path / fmt.manifest_name(e))
            _fsync_dir(self.path)
            files.append(touch_name(e))  # its first-touch record (store/lazy.py), if any
        for n in os.listdir(self.path):
            p = fmt.parse_data_name(n)
            if p is not None and p[0] in orphans:
                files.append(n)
        for n in files:
            _unlink(self.path / n)
        _fsync_dir(self.path)
        self._drop_caches()

    def prune(self, keep_last: int | None = None, keep_every: int | None = None, *,
              rebase: bool = False) -> list[int]:
        for name, v in (("keep_last", keep_last), ("keep_every", keep_every)):
            if v is not None and (not fmt._is_int(v) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, not {v!r}")
        if rebase and (keep_last is None or keep_every is not None):
            raise ValueError("rebase=True applies to keep_last alone (a rebase would retire "
                             "the epochs keep_every keeps)")
        if keep_last is None and keep_every is None:
            return []
        rebased = self._rebase(keep_last) if rebase and keep_last is not None else []
        self._wait_for_writers("prune")
        held, leave = self._held_lock("prune")
        with held:
            self._took_lock(held.found, leave)
            self._sweep_if_due()
            nums = self.epoch_numbers()
            if not nums:
                return []
            keep = {nums[-1]}
            if keep_last is not None:
                keep.update(nums[-keep_last:])
            if keep_every is not None:
                keep.update(e for e in nums if e % keep_every == 0)
            need: set[int] = set()
            for e in keep:
                need.update(self.chain(e))
            remove = [e for e in nums if e not in need]
            if remove:
                self._retire(remove, [])
            return sorted(rebased + remove)

    def _rebase(self, keep_last: int) -> list[int]:
        """Make the oldest of the last ``keep_last`` epochs restorable alone:
        compact its chain into it (a full epoch of the same number, written
        and committed as compaction does, crash-safe), so that the epochs
        before it are needed by none of the kept ones. The epochs retired."""
        nums = self.epoch_numbers()
        if len(nums) <= keep_last:
            return []
        oldest = nums[-keep_last]
        chain = self.chain(oldest)
        if len(chain) == 1:
            return []
        try:
            self.compact(chain[0], oldest)
        except MemckptError:
            # a branch hangs off the run (a rollback's history): the chain
            # stays whole, and prune keeps what the kept epochs need
            return []
        return [e for e in chain[:-1] if e not in set(self.epoch_numbers())]
