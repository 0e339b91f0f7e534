"""The tracker's cost between checkpoints, measured on the run itself.

The tracker's first-write faults (and mode fork's copy-on-write faults, and
the caches a pause's copy leaves cold) are CPU the program's own thread
spends in its steps: no epoch's timings show them. A calibration measures
them on the step beforehand, at another time and load; on a dense stencil
that writes every page a step the cost is a fraction of a percent, and a
calibration's few intervals, minutes apart from the run, missed it by a
factor of three (docs/benchmarks.md, issue 16).

Here the run measures it: :func:`measure_tracking` hands the Checkpointer
the program's step on a second, untracked copy of its state (the same work
as a step of the run, on an arena no tracker watches). At a step boundary
with no epoch in flight (and the persist thread done with the work after a
commit: a round that met it on the other CPU came out slower than untracked
steps elsewhere), at most once between two checkpoints and while the
rounds' CPU stays under ``share`` of the run's steps' (the cost bound), the
step clock (checkpoint/steps.py) runs ``warmup`` of those untracked steps
untimed (the second state is cold in the caches after the run's steps),
then ``steps`` more, and times their CPU as it times the run's steps; the
round's wall time, warm-up included, is what measuring cost. Each epoch's
``extra["steps"]`` then holds ``base_steps``, ``base_wall_s``, ``base_cpu_s``
beside the run's steps.

:func:`estimate` pairs them in time: the records from one round to the next
make a segment; in each, the run's steps (in flight, catching up and steady
alike: the faults of a dense writer come all in the first step after a
checkpoint) against the untracked steps' CPU per step at the time. The
slowdown is the run's steps' CPU over what the same number of untracked
steps took, less one (a ratio of sums: the account needs the total); its
90% interval is a bootstrap over segments. CPU, not wall time: the waits
for a CPU are the interference term's (stats.py).

What it assumes: the untracked step is the same work as the run's steps
(the steps of a run alike in size, or the untracked step a mix like them).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["Estimate", "UntrackedRounds", "estimate", "measure_tracking"]

# the fewest segments (rounds) an estimate rests on: fewer say nothing about its spread
MIN_SEGMENTS = 3
# resamples of the bootstrap interval (a fixed seed: the same records give the same interval)
_BOOT = 1000


class UntrackedRounds:
    """The untracked steps a :class:`~memckpt.checkpoint.steps.StepClock` runs
    between checkpoints (module docstring): ``step`` called ``steps`` times a
    round, while the rounds' CPU is under ``share`` of the run's steps'."""

    def __init__(self, step: Callable[[], Any], *, steps: int = 2, share: float = 0.05,
                 warmup: int = 1) -> None:
        if not callable(step):
            raise TypeError(f"step must be callable, not {type(step).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number of untracked steps a round, 1 or "
                             f"more, not {steps!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0 < share < 1:
            raise ValueError(f"share must be the rounds' largest share of the run's step CPU, "
                             f"above 0 and below 1 (e.g. 0.05), not {share!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a whole number of untimed steps, 0 or more, "
                             f"not {warmup!r}")
        self.step, self.steps, self.share, self.warmup = step, steps, float(share), warmup
        self.run_cpu = 0.0   # the run's counted steps' CPU, for the budget
        self.base_cpu = 0.0  # the rounds' CPU so far
        self.rounds = 0
        self.done_this_interval = False  # StepClock.launched() clears it

    def due(self) -> bool:
        """Whether a round fits now: none yet since the last checkpoint, and
        the rounds' CPU, with one more round at the mean so far, within share."""
        if self.done_this_interval or self.run_cpu <= 0:
            return False
        per_round = self.base_cpu / self.rounds if self.rounds else 0.0
        return self.base_cpu + per_round <= self.share * self.run_cpu

    def run(self) -> tuple[int, float, float, float]:
        """One round: (timed steps, wall seconds of the whole round, this thread's
        CPU seconds in the timed steps, and in the whole round). The first
        ``warmup`` steps are not timed: the untracked state is cold in the
        caches after the run's steps
        (a one-step round of the PDE was 4% slower than the run's steps: the
        estimate came out negative)."""
        w0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(self.warmup):
            self.step()
        c1 = time.thread_time()
        for _ in range(self.steps):
            self.step()
        c2 = time.thread_time()
        wall, cpu = time.perf_counter() - w0, c2 - c1
        self.base_cpu += c2 - c0
        self.rounds += 1
        self.done_this_interval = True
        return self.steps, wall, cpu, c2 - c0


def measure_tracking(checkpointer: Any, step: Callable[[], Any] | None, *, steps: int = 2,
                     share: float = 0.05, warmup: int = 1) -> None:
    """Measure the tracker's cost on this run (module docstring): between two
    checkpoints, at a :meth:`~memckpt.Checkpointer.maybe_checkpoint` with no
    epoch in flight, call ``step`` (the program's step on an untracked copy
    of its state) ``warmup`` times untimed, then ``steps`` times timed, at
    most once an interval and while those calls' CPU is under ``share`` of
    the run's steps'. ``step=None`` stops.
    The account (``stats()``, ``memckpt show --overhead``) then takes the
    tracking term from these rounds (``tracking_from == "run"``)."""
    clock = getattr(getattr(checkpointer, "_schedule", None), "steps", None)
    if clock is None:
        raise TypeError(f"measure_tracking needs a memckpt.Checkpointer, not "
                        f"{type(checkpointer).__name__}")
    clock.rounds = None if step is None else UntrackedRounds(step, steps=steps, share=share,
                                                             warmup=warmup)


@dataclass(frozen=True)
class Estimate:
    """The tracking slowdown measured on a run: the run's steps' CPU against
    untracked steps' at the same time, less one, with its 90% interval."""

    slowdown: float
    low: float
    high: float
    segments: int       # rounds the estimate rests on
    run_steps: int      # the run's steps compared (those in segments)
    base_steps: int     # untracked steps
    base_wall_s: float  # what the rounds cost the program (all of them)


def _segments(records: Sequence[dict[str, float]]) -> tuple[list[tuple[float, float, float,
                                                                        float]], float, int]:
    """(run steps, their CPU, untracked steps, their CPU) per segment: the
    records up to and with one that holds a round; the rounds' wall and steps."""
    out, n, cpu, wall, nb = [], 0.0, 0.0, 0.0, 0
    for r in records:
        n += r["flight_steps"] + r["after_steps"] + r["idle_steps"]
        cpu += r["flight_cpu_s"] + r["after_cpu_s"] + r["idle_cpu_s"]
        wall += r["base_wall_s"]
        nb += int(r["base_steps"])
        if r["base_steps"] > 0 and r["base_cpu_s"] > 0:
            if n > 0:
                out.append((n, cpu, r["base_steps"], r["base_cpu_s"]))
            n, cpu = 0.0, 0.0
    return out, wall, nb


def _ratio(segs: Sequence[tuple[float, float, float, float]]) -> float:
    want = sum(n * bc / bn for n, _, bn, bc in segs)  # what untracked steps would have taken
    return sum(c for _, c, _, _ in segs) / want - 1 if want > 0 else math.nan


def estimate(records: Sequence[dict[str, float]]) -> Estimate | None:
    """The tracking slowdown from step records in epoch order (each with the
    keys of steps.KEYS, AFTER_KEYS and BASE_KEYS), or None with fewer than
    MIN_SEGMENTS rounds."""
    segs, wall, nb = _segments(records)
    if len(segs) < MIN_SEGMENTS:
        return None
    s = _ratio(segs)
    rnd = random.Random(16)
    boot = sorted(x for x in (_ratio([rnd.choice(segs) for _ in segs]) for _ in range(_BOOT))
                  if not math.isnan(x))
    lo, hi = (boot[int(0.05 * (len(boot) - 1))], boot[int(math.ceil(0.95 * (len(boot) - 1)))]) \
        if boot else (math.nan, math.nan)
    return Estimate(slowdown=s, low=lo, high=hi, segments=len(segs),
                    run_steps=int(sum(x[0] for x in segs)), base_steps=nb, base_wall_s=wall)
