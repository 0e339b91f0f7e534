"""Retention applied after each commit: ``Checkpointer(keep_last=N)``."""
from __future__ import annotations

import warnings

from ..store.contract import StoreContract


class Retention:
    """Keep the last ``keep_last`` epochs restorable and no others, after
    every commit (on the persist thread, before the next checkpoint may
    begin: the backpressure bounds the disk). A single chain (a program that
    writes every page every step) is rebased at the boundary first: the
    oldest kept epoch becomes a full epoch (``Store.prune(rebase=True)``:
    a compaction, crash-safe), so the store holds about keep_last + 1 full
    copies of the arena at most. A failure leaves more epochs than asked,
    never fewer: it warns, and the committed epoch stands."""

    def __init__(self, store: StoreContract, keep_last: int | None) -> None:
        self._store = store
        self.keep_last = keep_last
        self.removed = 0  # epochs retired so far

    def after_commit(self) -> None:
        if self.keep_last is None:
            return
        try:
            self.removed += len(self._store.prune(keep_last=self.keep_last, rebase=True))
        except Exception as e:  # noqa: BLE001 - the epoch is committed; retention waits
            warnings.warn(f"memckpt: keep_last={self.keep_last}: pruning {self._store.path} "
                          f"failed ({e!r}); the store keeps more epochs until the next commit",
                          RuntimeWarning)
