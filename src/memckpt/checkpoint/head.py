"""The head: the epoch the arena held at its last checkpoint or rollback,
and what that says about the next epoch's kind and parent."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import EpochNotFound, MemckptError
from ..store.contract import EpochWriterContract, StoreContract

if TYPE_CHECKING:
    from ..arena import Arena


class Head:
    """``epoch``: the epoch the arena held at the tracker's last collect, or
    None when unknown (then the next epoch must be full and a rollback
    writes every page). ``chain_len``: epochs in its chain, for ``full_every``."""

    def __init__(self, store: StoreContract, full_every: int | None, *,
                 compress: str | None = None, threads: int | None = None) -> None:
        self._store = store
        self._full_every = full_every
        self._compress = compress  # what each epoch is begun with
        self._threads = threads
        self.epoch: int | None = None
        self.chain_len = 0

    def next_kind(self, known: bool = False) -> tuple[str, int | None]:
        """The next epoch's kind and parent. A full epoch's parent is only its
        lineage (the chain walk stops at it): the epoch the arena held before.
        ``known``: take the head epoch as still in the store (begin() checks)."""
        parent = self.epoch
        if parent is not None and not known and not self._has(parent):
            parent = None  # retired by compaction or pruned: its content is gone
        if parent is None or (self._full_every is not None and self.chain_len >= self._full_every):
            return "full", parent
        return "incremental", parent

    def begin(self, arena: Arena) -> tuple[EpochWriterContract, str, int | None]:
        """Begin the next epoch of ``arena``: its writer, kind and parent.
        The store's begin() checks that the parent is still there (one
        lstat); one that was retired (by a compaction or a prune) makes it
        a full epoch with no parent, as next_kind() would have."""
        kind, parent = self.next_kind(known=True)
        try:
            w = self._begin(arena, kind, parent)
        except EpochNotFound:
            if parent is None or self._has(parent):
                raise
            kind, parent = "full", None
            w = self._begin(arena, kind, parent)
        return w, kind, parent

    def _begin(self, arena: Arena, kind: str, parent: int | None) -> EpochWriterContract:
        return self._store.begin(kind=kind, parent=parent, layout=arena.layout(),
                                 page_size=arena.page_size, npages=arena.npages,
                                 compress=self._compress, threads=self._threads)

    def prepare(self) -> None:
        """After a commit, on the persist thread: have the store make the next
        epoch's writer ready (store/prepared.py), so that the next begin()
        takes it instead of doing that work in checkpoint(). Stores without
        prepare_next (an object store) begin as before."""
        prepare = getattr(self._store, "prepare_next", None)
        if prepare is not None:
            kind, parent = self.next_kind(known=True)
            prepare(kind, parent)

    def close(self) -> None:
        """Let a prepared writer go (the Checkpointer closes, after the last
        epoch and its prepare are done; the store may be the caller's)."""
        drop = getattr(self._store, "drop_prepared", None)
        if drop is not None:
            drop()

    def _has(self, epoch: int) -> bool:
        try:
            self._store.info(epoch)
        except (MemckptError, KeyError, FileNotFoundError):
            return False
        return True

    def committed(self, epoch: int, kind: str) -> None:
        self.epoch = epoch
        self.chain_len = 1 if kind == "full" else self.chain_len + 1

    def moved_to(self, epoch: int) -> None:
        """The arena holds ``epoch`` now (a resume or a rollback)."""
        self.epoch = epoch
        self.chain_len = len(self._store.chain(epoch))

    def lost(self) -> None:
        """The arena matches no epoch (a write-back cut short)."""
        self.epoch = None
