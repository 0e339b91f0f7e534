"""``Coordinator(keep_last=K)``: keep the last K global epochs restorable.

Each rank's own retention (``Checkpointer(keep_last=)``) would be wrong here:
it prunes right after the rank's commit, before the ranks agree, so the
epoch the newest global record names could go while the next global epoch is
not yet committed (a crash then leaves no global epoch to restart from); and
it counts the epochs of failed global epochs, which no record names. So the
coordinator prunes, on each rank, only after a global commit, and keeps
every epoch from the one the K-th newest global epoch names on (with the
chains they need; ``rebase`` turns the oldest kept into a full epoch, a
compaction that keeps its identity, so the records still match).
"""
from __future__ import annotations

import collections
import warnings

from ..store.contract import StoreContract


class GlobalRetention:
    """This rank's epochs of the last ``keep_last`` global epochs it saw
    committed (or resumed from); prunes below the oldest once it knows K."""

    def __init__(self, keep_last: int | None) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                      or keep_last < 1):
            raise ValueError(f"keep_last must be a positive int or None, not {keep_last!r}")
        self.keep_last = keep_last
        self._mine: collections.deque[int] = collections.deque(maxlen=keep_last or 1)
        self.removed = 0

    def committed(self, store: StoreContract, epoch: int) -> None:
        """After global epoch whose part on this rank is ``epoch`` is committed."""
        if self.keep_last is None:
            return
        self._mine.append(epoch)
        if len(self._mine) < self.keep_last:
            return  # the older global epochs' epochs are unknown here: keep them all
        oldest = self._mine[0]
        try:
            n = sum(1 for e in store.epoch_numbers() if e >= oldest)
            self.removed += len(store.prune(keep_last=n, rebase=True))
        except Exception as e:  # noqa: BLE001 - the global epoch is committed; retention waits
            warnings.warn(f"memckpt.mpi: keep_last={self.keep_last}: pruning {store.path} "
                          f"failed ({e!r}); it keeps more epochs until the next global commit",
                          RuntimeWarning)
