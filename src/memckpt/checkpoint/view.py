"""The read-only face of a :class:`~memckpt.Checkpointer`: its properties
(the class itself holds the epoch lifecycle)."""
from __future__ import annotations

from typing import Any

from ..arena import Arena
from ..store.contract import StoreContract
from ..tracker import DirtyTracker
from ..tuning import Recommendation
from .aftercommit import AfterCommit
from .head import Head
from .schedule import Schedule


class CheckpointerView:
    """The properties of a Checkpointer (what it was made with, where it is)."""

    _arena: Arena
    _store: StoreContract
    _tracker: DirtyTracker
    _head: Head
    _closed: bool
    _mode: str
    _schedule: Schedule
    _after: AfterCommit
    _auto: dict[str, Any] | None

    @property
    def arena(self) -> Arena:
        return self._arena

    @property
    def store(self) -> StoreContract:
        return self._store

    @property
    def tracker(self) -> DirtyTracker:
        return self._tracker

    @property
    def head(self) -> int | None:
        """The epoch the arena held at the last checkpoint or rollback (the next's parent)."""
        return self._head.epoch

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def mode(self) -> str:
        """The capture mode: "copy", "fork", "background" or "sync"."""
        return self._mode

    @property
    def interval(self) -> float | None:
        """Seconds from a checkpoint's end to the next :meth:`maybe_checkpoint` takes, or None."""
        return self._schedule.interval

    @property
    def recommendation(self) -> Recommendation | None:
        """With "auto", the :class:`~memckpt.tuning.Recommendation` behind :attr:`interval`."""
        return self._schedule.recommendation

    @property
    def checkpoint_cost(self) -> float | None:
        """What "auto" tunes for: the median ``total_s`` of the last few increments."""
        return self._schedule.cost

    @property
    def replicator(self) -> Any:
        """``replicate_to``'s Replicator (``records``: each epoch's ``remote_lag_s``), or None."""
        return self._after.replicator

    @property
    def auto(self) -> dict[str, Any] | None:
        """With ``mode="auto"`` or a ``calibration``: the pair chosen and why (each
        epoch's ``extra["auto"]``: checkpoint/auto.py), else None."""
        return None if self._auto is None else dict(self._auto)
