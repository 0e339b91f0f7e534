"""When the next checkpoint is due: a fixed interval, or ``"auto"`` (the
interval :func:`memckpt.tuning.recommend` gives for the measured checkpoint
cost), for :meth:`Checkpointer.maybe_checkpoint`."""
from __future__ import annotations

import collections
import math
import time
import warnings
from typing import Callable

from ..epoch import EpochInfo
from ..tuning import Recommendation, checkpoint_cost, parse_duration, recommend
from .steps import StepClock

# Epochs whose total_s make the measured checkpoint cost of interval="auto":
# the median of the last few increments (or of the last full epochs while
# there are no increments yet).
_COST_EPOCHS = 5


class Schedule:
    """The interval policy. ``clock`` (time.monotonic; tests replace it) says
    when; a checkpoint is due once ``clock() >= due`` (-inf: at the next call)."""

    def __init__(self, interval: float | str | None, mtbf: float | str | None,
                 rpo: float | str | None, restart: float | str) -> None:
        fixed, auto, mtbf_s, rpo_s, restart_s = interval_args(interval, mtbf, rpo, restart)
        self.clock: Callable[[], float] = time.monotonic
        self.auto = auto
        self.interval: float | None = fixed
        self._mtbf, self._rpo, self._restart = mtbf_s, rpo_s, restart_s
        self.recommendation: Recommendation | None = None
        self._full: collections.deque[EpochInfo] = collections.deque(maxlen=_COST_EPOCHS)
        self._incr: collections.deque[EpochInfo] = collections.deque(maxlen=_COST_EPOCHS)
        self.due = -math.inf
        self.steps = StepClock()  # the program's steps, for the overhead account (steps.py)

    @property
    def enabled(self) -> bool:
        return self.interval is not None or self.auto

    @property
    def cost(self) -> float | None:
        """:func:`memckpt.tuning.checkpoint_cost` of the last few epochs: the
        increments', or the full epochs' while there are no increments; None
        before any."""
        return checkpoint_cost([*self._incr, *self._full], full_if_none=True)

    def is_due(self) -> bool:
        """At a step boundary (maybe_checkpoint): whether a checkpoint is due."""
        self.steps.boundary()
        return self.clock() >= self.due

    def restart(self, resumed: float) -> None:
        """A checkpoint returns: the interval runs from ``resumed``, the end of
        a pause, and its epoch persists while the next steps run."""
        self.steps.launched()
        self._set_due(resumed)

    def _set_due(self, resumed: float) -> None:
        if self.interval is not None:
            self.due = resumed + self.interval

    def measured(self, info: EpochInfo, resumed: float) -> None:
        """After a committed epoch: measure it, re-tune, and restart the
        interval from ``resumed``, the clock when its checkpoint() returned."""
        self.steps.durable()
        if self.auto:
            (self._full if info.kind == "full" else self._incr).append(info)
            self._retune()
        self._set_due(resumed)

    def seed(self, epochs: list[EpochInfo]) -> None:
        """After a resume: the cost from the store's latest increments (a full
        epoch's cost alone does not say what the next ones cost), and the
        first checkpoint one interval from now."""
        if self.auto:
            for e in epochs:
                (self._incr if e.kind == "incremental" else self._full).append(e)
            if self._incr:
                self._retune()
            else:
                self._full.clear()
        self._set_due(self.clock())

    def _retune(self) -> None:
        cost = self.cost
        assert cost is not None and self._mtbf is not None
        cost = max(cost, 1e-6)  # recommend() needs a cost above zero; a coarse clock can give 0
        try:
            rec = recommend(cost, self._mtbf, self._rpo, self._restart)
        except ValueError as e:
            # The RPO is not longer than a checkpoint: back to back is the closest to it.
            # Raising here would lose the epoch just committed; the loop goes on.
            warnings.warn(f"interval='auto' checkpoints at every call: {e}", RuntimeWarning,
                          stacklevel=5)
            self.recommendation = None
            self.interval = 0.0
            return
        self.recommendation = rec
        self.interval = rec.interval_s


def seconds(name: str, value: float | str, *, zero_ok: bool = False) -> float:
    """Seconds from a number or a duration such as ``"6h"``, checked."""
    if isinstance(value, str):
        try:
            v = parse_duration(value)
        except ValueError as e:
            also = " (or 'auto')" if name == "interval" else ""
            raise ValueError(f"{name}{also}: {e}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds (a number) or a duration such as '5m', "
                        f"not {type(value).__name__}")
    else:
        v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not zero_ok):
        need = "zero or more" if zero_ok else "more than zero"
        raise ValueError(f"{name} must be a finite number of seconds, {need}, not {value!r}")
    return v


def interval_args(interval: float | str | None, mtbf: float | str | None,
                  rpo: float | str | None, restart: float | str,
                  ) -> tuple[float | None, bool, float | None, float | None, float]:
    """Check the interval arguments: (fixed interval, auto, mtbf, rpo, restart) in seconds."""
    auto = isinstance(interval, str) and interval.strip().lower() == "auto"
    if not auto:
        given = [n for n, v in (("mtbf", mtbf is not None), ("rpo", rpo is not None),
                                ("restart", not (isinstance(restart, (int, float)) and restart == 0)))
                 if v]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with interval='auto' "
                             f"(interval is {interval!r})")
        fixed = None if interval is None else seconds("interval", interval)
        return fixed, False, None, None, 0.0
    if mtbf is None:
        raise ValueError("interval='auto' needs mtbf= (the job's mean time between failures, "
                         "in seconds or a duration such as '6h') to choose the interval from")
    mtbf_s = seconds("mtbf", mtbf)
    rpo_s = None if rpo is None else seconds("rpo", rpo)
    restart_s = seconds("restart", restart, zero_ok=True)
    return None, True, mtbf_s, rpo_s, restart_s
