"""The overhead account of a run: what checkpointing cost the program, from
the epochs' own timings (``Checkpointer.stats()``, ``memckpt show STORE
--overhead``).

Every number comes from what each epoch's manifest records: ``created`` (the
Unix time its manifest was written: durable), ``total_s`` (from the start of
the pause until durable), ``pause_s``, ``call_s`` (how long ``checkpoint()``
blocked its caller, waits included) and ``extra["wait_s"]`` (how much of that
went to waiting for the epoch before: backpressure). So for each epoch::

    pause starts   p = created - total_s
    call starts    s = p - wait_s          (the begin of the epoch is in call_s - wait_s - pause_s)
    program goes on  r = s + call_s

and between two epochs the program ran ``s[i+1] - r[i]`` (the achieved
interval). The wall time of a run is from the first call's start to the last
epoch's durability (or ``now``, for a live checkpointer). The share of it the
program was stopped by checkpointing is ``sum(call_s) / wall``; the tracker's
cost between checkpoints does not show in any epoch: it is a slowdown
(``tracking_slowdown``: the fraction a step is slower with the tracker armed)
given by the caller, else measured on the run itself when it ran untracked
rounds (:func:`memckpt.checkpoint.tracking.measure_tracking`: the run's steps'
CPU against untracked steps' at the same time, with a 90% interval), else
the one a
``Checkpointer(mode="auto", calibration=...)`` recorded in the epochs
(``extra["auto"]["tracking_slowdown"]``: the chosen pair's measured
slowdown between checkpoints, at the calibration's interval). The third
term, the persist's interference (the program's steps slower while an epoch
persists, though it is not paused), is measured on the run: from the step
records a ``maybe_checkpoint()`` loop leaves in each epoch's
``extra["steps"]`` (:func:`interference`, checkpoint/steps.py). The
tracking term applies to the steps' time without it.

Work lost: a failure at time ``t`` loses what the program did since the pause
of the newest epoch durable at ``t``. Averaged over the run (failures uniform
in time: ``M`` much longer than the interval) that is the measured mean loss;
its maximum is the worst. With an MTBF the model's expected loss at the
achieved interval is :func:`memckpt.tuning.expected_lost_work`.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from ..epoch import EpochInfo
from ..tuning import checkpoint_cost, expected_lost_work
from .steps import AFTER_KEYS, BASE_KEYS, KEYS
from .tracking import MIN_SEGMENTS, estimate as tracking_estimate

__all__ = ["Overhead", "account", "baseline", "interference", "runs", "stats_of"]

# The interference term's baseline, the steady steps, must hold at least this
# share of the CPU of the steps it is compared with: the term is a small
# difference of two large off-CPU times, and a few steady steps make it noise
# (a 0.3 s interval of 0.1 ms steps: 267 steady steps against 14,364 gave -28%).
STEADY_SHARE = 0.25

# Epochs further apart than this many times the median gap (and than a minute)
# belong to different runs of a program over the same store.
_RUN_GAP = 20.0


def _start(e: EpochInfo) -> tuple[float, float, float]:
    """(call start, pause start, program resumed) of an epoch, Unix seconds."""
    wait = float(e.extra.get("wait_s", 0.0) or 0.0)
    pause_start = e.created - e.total_s
    call_start = pause_start - wait
    call = e.call_s if e.call_s is not None else wait + e.pause_s
    return call_start, pause_start, call_start + call


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    k = (len(ys) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ys[lo] + (ys[hi] - ys[lo]) * (k - lo)


@dataclass(frozen=True)
class Overhead:
    """What checkpointing cost one run (module docstring). Times in seconds,
    fractions of :attr:`wall_s`; None where there is nothing to measure."""

    epochs: int
    first_epoch: int | None
    last_epoch: int | None
    full_epochs: int
    wall_s: float
    pause_total_s: float
    wait_total_s: float
    call_total_s: float
    pause_fraction: float
    wait_fraction: float
    call_fraction: float
    tracking_fraction: float | None
    tracking_from: str | None  # "given", "run" (untracked rounds), "calibration", or None
    tracking_slowdown: float | None           # the slowdown the term applies
    tracking_slowdown_90: list[float] | None  # its 90% interval (measured on the run)
    tracking_fraction_90: list[float] | None  # the term's, from it
    tracking_rounds: int                      # untracked rounds the run's estimate rests on
    untracked_steps: int                      # ... their steps
    untracked_s: float                        # the rounds' wall time: what measuring cost
    interference_s: float | None      # the program's steps slower while an epoch persisted
    interference_fraction: float | None
    interference_from: str | None     # its baseline: "steady" steps, or the untracked "rounds"
    flight_steps: int                 # steps seen while an epoch persisted (extra["steps"])
    after_steps: int                  # ... in the catch-up after it (as long as the flight)
    idle_steps: int                   # ... and later: the baseline
    overhead_fraction: float
    pause_p50_s: float | None
    pause_p90_s: float | None
    pause_p99_s: float | None
    pause_max_s: float | None
    call_p50_s: float | None
    call_p99_s: float | None
    bytes_on_disk: int
    write_bytes_per_s: float | None
    disk_bytes_per_wall_s: float | None
    checkpoint_cost_s: float | None
    interval_achieved_s: float | None
    interval_target_s: float | None
    interval_ratio: float | None
    lost_work_mean_s: float | None
    lost_work_worst_s: float | None
    lost_work_model_s: float | None
    mtbf_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def runs(epochs: Iterable[EpochInfo]) -> list[list[EpochInfo]]:
    """The epochs split into runs: a gap between one epoch's durability and the
    next call far longer than the run's usual gaps starts a new run."""
    es = sorted((e for e in epochs if e.created), key=lambda e: e.epoch)
    if not es:
        return []
    gaps = [_start(b)[0] - a.created for a, b in zip(es, es[1:])]
    limit = max(60.0, _RUN_GAP * statistics.median(gaps)) if gaps else math.inf
    out = [[es[0]]]
    for g, e in zip(gaps, es[1:]):
        if g > limit:
            out.append([])
        out[-1].append(e)
    return out


def account(epochs: Iterable[EpochInfo], *, now: float | None = None,
            interval: float | None = None, mtbf: float | None = None,
            tracking_slowdown: float | None = None,
            steps_since: dict[str, Any] | None = None) -> Overhead:
    """The overhead account of ``epochs`` (one run: see :func:`runs`). ``now``
    (Unix time) ends the wall time instead of the last epoch's durability;
    ``interval`` is the target interval (the recommended or configured one);
    ``mtbf`` gives the model's expected loss; ``tracking_slowdown`` the
    tracker's cost between checkpoints (a fraction of a step); ``steps_since``
    the step record (checkpoint/steps.py) of a live checkpointer since its
    last epoch, which no manifest holds yet."""
    es = sorted(epochs, key=lambda e: e.epoch)
    if not es:
        raise ValueError("no epochs to account for")
    times = [_start(e) for e in es]
    begin = times[0][0]
    end = max(e.created for e in es) if now is None else max(now, begin)
    wall = max(end - begin, 1e-12)
    pauses = [e.pause_s for e in es]
    calls = [e.call_s if e.call_s is not None else t[2] - t[0] for e, t in zip(es, times)]
    waits = [float(e.extra.get("wait_s", 0.0) or 0.0) for e in es]
    call_total = sum(calls)
    # the first epoch's steps came before the wall time
    recs = records(es[1:], steps_since)
    interf, nflight, nafter, nidle, interf_from = _interference(recs)
    est = tracking_estimate(recs)
    rounds_s = sum(r["base_wall_s"] for r in recs)
    trk = _tracking(es, tracking_slowdown, est, wall - call_total - (interf or 0.0) - rounds_s)
    tracking = None if trk[0] is None else trk[0] / wall
    achieved = [b[0] - a[2] for a, b in zip(times, times[1:])]
    ach = statistics.median(achieved) if achieved else None
    cost = checkpoint_cost(es, full_if_none=True)
    nbytes = sum(e.bytes_on_disk for e in es)
    busy = sum(e.total_s for e in es)
    mean_loss, worst_loss = _lost_work(es, times, end)
    model = None
    if mtbf is not None and ach is not None and cost is not None:
        model = expected_lost_work(max(ach, 1e-9), cost, mtbf)
    return Overhead(
        epochs=len(es), first_epoch=es[0].epoch, last_epoch=es[-1].epoch,
        full_epochs=sum(e.kind == "full" for e in es), wall_s=wall,
        pause_total_s=sum(pauses), wait_total_s=sum(waits), call_total_s=call_total,
        pause_fraction=sum(pauses) / wall, wait_fraction=sum(waits) / wall,
        call_fraction=call_total / wall, tracking_fraction=tracking, tracking_from=trk[1],
        tracking_slowdown=trk[2], tracking_slowdown_90=trk[3],
        tracking_fraction_90=None if trk[4] is None else [x / wall for x in trk[4]],
        tracking_rounds=0 if est is None else est.segments,
        untracked_steps=int(sum(r["base_steps"] for r in recs)), untracked_s=rounds_s,
        interference_s=interf, interference_fraction=None if interf is None else interf / wall,
        interference_from=interf_from,
        flight_steps=nflight, after_steps=nafter, idle_steps=nidle,
        overhead_fraction=(call_total + (interf or 0.0) + rounds_s) / wall + (tracking or 0.0),
        pause_p50_s=_pct(pauses, 0.5), pause_p90_s=_pct(pauses, 0.9),
        pause_p99_s=_pct(pauses, 0.99), pause_max_s=max(pauses),
        call_p50_s=_pct(calls, 0.5), call_p99_s=_pct(calls, 0.99),
        bytes_on_disk=nbytes, write_bytes_per_s=nbytes / busy if busy > 0 else None,
        disk_bytes_per_wall_s=nbytes / wall,
        checkpoint_cost_s=cost, interval_achieved_s=ach, interval_target_s=interval,
        interval_ratio=ach / interval if ach is not None and interval else None,
        lost_work_mean_s=mean_loss, lost_work_worst_s=worst_loss, lost_work_model_s=model,
        mtbf_s=mtbf)


def _steps(rec: Any) -> dict[str, float] | None:
    """A step record (an epoch's ``extra["steps"]``, checkpoint/steps.py), or
    None if absent or damaged."""
    if not isinstance(rec, dict):
        return None
    out = {}
    for k in KEYS + AFTER_KEYS + BASE_KEYS:
        v = rec.get(k, None if k in KEYS else 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            return None
        out[k] = float(v)
    return out


def interference(epochs: Sequence[EpochInfo], since: dict[str, Any] | None = None,
                 ) -> tuple[float | None, int, int, int]:
    """(seconds, in-flight steps, catch-up steps, steady steps): how much longer
    the program's steps took because an epoch persisted meanwhile, from the
    step records the epochs carry (checkpoint/steps.py).

    While an epoch persists, the program's thread waits longer for a CPU (or
    the GIL); once it is durable, a scheduler that shares the CPUs fairly
    lets the thread catch up for about as long (its steps then wait less
    than usual). So the term is the off-CPU time (wall - the stepping
    thread's CPU) of the in-flight and the catch-up steps together, less
    what the steady steps (the later ones) spent off-CPU per second of their
    CPU times those steps' CPU: the machine's own load meets the program's
    work in proportion to it, checkpointing or not. Per CPU second, not per
    step, so that steps of different sizes, and the tracker's faults in the
    in-flight steps' CPU, do not count as interference. None when there is
    nothing to compare (no maybe_checkpoint() loop, no step while an epoch
    persisted, or too little long enough after one: the steady steps' CPU
    under STEADY_SHARE of the others', in intervals shorter than about twice
    the persist plus SETTLE_S, and fewer than MIN_SEGMENTS untracked rounds,
    whose off-CPU rate stands in then: :func:`baseline`)."""
    return _interference(records(epochs, since))[:4]


def records(epochs: Sequence[EpochInfo], since: dict[str, Any] | None = None,
            ) -> list[dict[str, float]]:
    """The sound step records of ``epochs`` (and ``since``, a live clock's), in order."""
    return [r for r in map(_steps, [e.extra.get("steps") for e in epochs] + [since])
            if r is not None]


def _interference(recs: list[dict[str, float]],
                  ) -> tuple[float | None, int, int, int, str | None]:
    nf = int(sum(r["flight_steps"] for r in recs))
    na = int(sum(r["after_steps"] for r in recs))
    ni = int(sum(r["idle_steps"] for r in recs))
    cpu = sum(r["flight_cpu_s"] + r["after_cpu_s"] for r in recs)
    rate, where = baseline(recs, cpu)
    if not nf or rate is None:
        return None, nf, na, ni, None
    off = sum(r["flight_wall_s"] - r["flight_cpu_s"] + r["after_wall_s"] - r["after_cpu_s"]
              for r in recs)
    return off - rate * cpu, nf, na, ni, where


def baseline(recs: Sequence[dict[str, float]], cpu: float) -> tuple[float | None, str | None]:
    """(off-CPU seconds per CPU second, where from) that the program's steps
    meet with nothing in flight: the steady steps' (``"steady"``) when their
    CPU is at least STEADY_SHARE of ``cpu`` (the in-flight and catch-up
    steps'), else, in intervals too short for a steady step, the untracked
    rounds' (``"rounds"``: checkpoint/tracking.py; wall time against the
    rounds' whole CPU, at least MIN_SEGMENTS rounds), else (None, None)."""
    idle_cpu = sum(r["idle_cpu_s"] for r in recs)
    if idle_cpu > 0 and idle_cpu >= STEADY_SHARE * cpu:
        return sum(r["idle_wall_s"] - r["idle_cpu_s"] for r in recs) / idle_cpu, "steady"
    round_cpu = sum(r["base_round_cpu_s"] for r in recs)
    if round_cpu > 0 and sum(r["base_round_cpu_s"] > 0 for r in recs) >= MIN_SEGMENTS:
        return max(0.0, sum(r["base_wall_s"] for r in recs) - round_cpu) / round_cpu, "rounds"
    return None, None


def _tracking(es: Sequence[EpochInfo], given: float | None, est: Any, steps_s: float,
              ) -> tuple[float | None, str | None, float | None, list[float] | None,
                         list[float] | None]:
    """(seconds, from, slowdown, its 90% interval, the seconds' interval) of the
    tracking term: the slowdown given, else the run's own (untracked rounds:
    checkpoint/tracking.py), else a calibration's recorded in the epochs;
    applied to ``steps_s``, the steps' time at the tracked speed."""
    band = None
    slow: float | None
    where: str | None
    if given is not None:
        slow, where = given, "given"
    elif est is not None and not math.isnan(est.slowdown):
        slow, where, band = est.slowdown, "run", [est.low, est.high]
    else:
        slow = recorded_tracking_slowdown(es)
        where = None if slow is None else "calibration"
    if slow is None:
        return None, None, None, None, None

    def term(x: float) -> float:
        return max(0.0, steps_s * x / (1 + x)) if x > -1 else 0.0
    return term(slow), where, slow, band, None if band is None else [term(x) for x in band]


def recorded_tracking_slowdown(epochs: Sequence[EpochInfo]) -> float | None:
    """The tracking slowdown the latest epoch's ``extra["auto"]`` recorded from a
    calibration (checkpoint/auto.py), or None (no calibration: nothing measured)."""
    rec = epochs[-1].extra.get("auto") if epochs else None
    v = rec.get("tracking_slowdown") if isinstance(rec, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
        return None
    return float(v)


def _lost_work(es: list[EpochInfo], times: list[tuple[float, float, float]],
               end: float) -> tuple[float | None, float | None]:
    """Mean and worst loss of a failure at a uniform instant after the first epoch
    is durable: the time since the pause of the newest epoch durable then."""
    # (durable at, captured at), in order of durability; a later capture supersedes
    events = sorted((e.created, t[1]) for e, t in zip(es, times))
    t0 = events[0][0]
    if end <= t0:
        return None, None
    area, worst, captured, at = 0.0, 0.0, events[0][1], t0
    for durable, cap in events[1:] + [(end, None)]:
        durable = min(durable, end)
        if durable > at:
            a0, a1 = at - captured, durable - captured  # the age grows linearly between
            area += (a0 + a1) / 2 * (durable - at)
            worst = max(worst, a1)
            at = durable
        if cap is not None and cap > captured:
            captured = cap
    span = at - t0
    return (area / span if span > 0 else None), worst


def stats_of(checkpointer: Any, *, first_epoch: int | None = None, now: float | None = None,
             mtbf: float | None = None, tracking_slowdown: float | None = None) -> Overhead:
    """:class:`Overhead` of a live :class:`~memckpt.Checkpointer`: its store's
    epochs from ``first_epoch`` (the first this checkpointer wrote; default:
    the latest run, :func:`runs`) to its head, until ``now`` (default: the
    clock now). The target interval is the recommendation's (``interval="auto"``)
    or the configured one."""
    import time
    store = checkpointer.store
    es = [e for e in store.epochs() if checkpointer.head is None or e.epoch <= checkpointer.head]
    if first_epoch is not None:
        es = [e for e in es if e.epoch >= first_epoch]
    else:
        rs = runs(es)
        es = rs[-1] if rs else []
    rec = checkpointer.recommendation
    target = rec.interval_s if rec is not None else checkpointer.interval
    clock = getattr(getattr(checkpointer, "_schedule", None), "steps", None)
    return account(es, now=time.time() if now is None else now, interval=target, mtbf=mtbf,
                   tracking_slowdown=tracking_slowdown,
                   steps_since=None if clock is None else clock.peek())
