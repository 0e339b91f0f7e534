"""How often to checkpoint: the Young and Daly intervals, an RPO cap, and the
expected cost of an interval.

The model (docs/tuning.md says more). Failures arrive as a Poisson process:
the times between them are independent and exponential with mean ``M`` (the
MTBF), and a failure can strike at any moment: during work, during a
checkpoint, or during a restart. The program checkpoints after every ``tau``
seconds of work; a checkpoint costs ``C`` seconds of wall time and protects
nothing until it has finished. After a failure the program spends ``R``
seconds restarting (reading the latest checkpoint back) and redoes the work
done since that checkpoint.

Under this model the expected wall time to get one segment of ``tau``
seconds of work safely checkpointed is, exactly (Daly 2006)::

    E[T] = M * exp(R/M) * (exp((tau + C)/M) - 1)

and every expected value below comes from it, so they agree with each other
(and with a simulation: tests/test_tuning.py). It reduces to the familiar
first-order waste ``C/tau + (tau/2 + R)/M`` when ``tau + C`` and ``R`` are
small against ``M``.

The intervals: Young's first-order optimum ``sqrt(2 C M)`` (Young 1974) and
Daly's higher-order estimate (Daly 2006), which is closer to the
exact optimum of ``E[T]/tau`` when ``C`` is not small against ``M``.
Neither depends on ``R``: under the exponential model, ``exp(R/M)`` scales
``E[T]`` and leaves its optimum where it is.

References:
    J. W. Young, "A first order approximation to the optimum checkpoint
    interval", Communications of the ACM 17(9), 1974.
    J. T. Daly, "A higher order estimate of the optimum checkpoint interval
    for restart dumps", Future Generation Computer Systems 22(3), 2006.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = [
    "Recommendation", "cost_from_store", "daly_interval", "expected_lost_work",
    "expected_overhead", "expected_segment_time", "expected_waste", "fmt_duration",
    "parse_duration", "recommend", "rpo_cap", "young_interval",
]


def _check(name: str, value: float, *, zero_ok: bool = False) -> float:
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not zero_ok):
        need = "zero or more" if zero_ok else "more than zero"
        raise ValueError(f"{name} must be a finite number of seconds, {need}, not {value!r}")
    return v


# -- the intervals ----------------------------------------------------------------
def young_interval(cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum: ``sqrt(2 C M)`` seconds of work between checkpoints."""
    c, m = _check("the checkpoint cost", cost_s), _check("the MTBF", mtbf_s)
    return math.sqrt(2 * c * m)


def daly_interval(cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order estimate of the optimum (Daly 2006).

    ``sqrt(2 C M) * (1 + sqrt(C/2M)/3 + (C/2M)/9) - C`` when ``C < 2M``, else
    ``M``. For ``C << M`` it tends to Young's ``sqrt(2 C M)``.
    """
    c, m = _check("the checkpoint cost", cost_s), _check("the MTBF", mtbf_s)
    if c >= 2 * m:
        return m
    x = c / (2 * m)
    return math.sqrt(2 * c * m) * (1 + math.sqrt(x) / 3 + x / 9) - c


def rpo_cap(rpo_s: float, cost_s: float) -> float:
    """The longest interval that keeps the work a failure can lose within the RPO.

    A failure just before a checkpoint becomes durable loses the interval's
    work plus the checkpoint's own time, so ``interval + C <= RPO``: the cap
    is ``RPO - C``. Raises ValueError when the RPO is not longer than ``C``
    (no interval can meet it).
    """
    rpo, c = _check("the RPO", rpo_s), _check("the checkpoint cost", cost_s)
    if rpo <= c:
        raise ValueError(f"the RPO ({fmt_duration(rpo)}) must be longer than the checkpoint cost "
                         f"({fmt_duration(c)}): a checkpoint is not durable until it has finished, "
                         f"so even checkpointing back to back can lose {fmt_duration(c)} of work")
    return rpo - c


# -- expected costs of an interval (exact exponential model) ---------------------
def expected_segment_time(interval_s: float, cost_s: float, mtbf_s: float,
                          restart_s: float = 0.0) -> float:
    """Expected wall time to complete and checkpoint one interval of work:
    ``M * exp(R/M) * (exp((tau + C)/M) - 1)`` (Daly 2006)."""
    t = _check("the interval", interval_s)
    c = _check("the checkpoint cost", cost_s, zero_ok=True)
    m = _check("the MTBF", mtbf_s)
    r = _check("the restart time", restart_s, zero_ok=True)
    return m * math.exp(r / m) * math.expm1((t + c) / m)


def expected_waste(interval_s: float, cost_s: float, mtbf_s: float,
                   restart_s: float = 0.0) -> float:
    """Expected wasted wall time per second of useful work: ``E[T]/tau - 1``.

    The waste is checkpointing, work lost to failures and redone, and
    restarts. First order: ``C/tau + (tau/2 + R)/M``. Can exceed 1 (the run
    then takes more than twice its failure-free time).
    """
    return expected_segment_time(interval_s, cost_s, mtbf_s, restart_s) / float(interval_s) - 1


def expected_overhead(interval_s: float, cost_s: float, mtbf_s: float,
                      restart_s: float = 0.0) -> float:
    """The expected share of wall time that is not useful work: ``1 - tau/E[T]``,
    in [0, 1). Same model as :func:`expected_waste` (``w``): ``w / (1 + w)``."""
    return 1 - float(interval_s) / expected_segment_time(interval_s, cost_s, mtbf_s, restart_s)


def expected_lost_work(interval_s: float, cost_s: float, mtbf_s: float) -> float:
    """Expected seconds of work a failure destroys (to be redone after the restart).

    A failure strikes a segment of ``L = tau + C`` seconds (the interval's
    work and the checkpoint that would have made it durable) at a time ``X``
    exponential with mean ``M`` conditioned on ``X < L``:
    ``E[X | X < L] = M - L / (exp(L/M) - 1)``, a little under ``L/2``. The
    worst case is ``L`` itself (what the RPO cap bounds).
    """
    t = _check("the interval", interval_s)
    c = _check("the checkpoint cost", cost_s, zero_ok=True)
    m = _check("the MTBF", mtbf_s)
    seg = t + c
    x = seg / m
    if x < 1e-6:  # the closed form cancels badly; its series: L/2 - L^2/(12 M)
        return seg / 2 - seg * x / 12
    return m - seg / math.expm1(x)


# -- the recommendation ----------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    """How often to checkpoint, and what it is expected to cost.

    ``interval_s`` is seconds of work between checkpoints (a whole number of
    steps when ``step_s`` was given, then also ``interval_steps``);
    ``method`` is ``"daly"``, ``"young"`` or ``"rpo-cap"`` (the formula's
    interval was longer than the RPO allows). ``expected_overhead`` is the
    share of wall time not spent on useful work, ``expected_lost_work`` the
    seconds of work a failure is expected to destroy (:func:`expected_lost_work`),
    ``worst_lost_work_s`` the most it can (``interval + C``).
    """

    interval_s: float
    interval_steps: int | None
    method: str
    expected_overhead: float
    expected_lost_work: float
    worst_lost_work_s: float
    why: str


def recommend(cost_s: float, mtbf_s: float, rpo_s: float | None = None,
              restart_s: float = 0.0, step_s: float | None = None, *,
              formula: str = "daly") -> Recommendation:
    """The checkpoint interval for cost ``C``, MTBF ``M``, an optional RPO,
    restart time ``R`` and step length: Daly's (or, with ``formula="young"``,
    Young's) interval, capped so that ``interval + C <= RPO``, rounded to whole
    steps (down when that keeps it within the RPO). Raises ValueError for
    values out of range, an RPO no interval can meet, or a step longer than
    the RPO allows."""
    c, m = _check("the checkpoint cost", cost_s), _check("the MTBF", mtbf_s)
    r = _check("the restart time", restart_s, zero_ok=True)
    if formula not in ("daly", "young"):
        raise ValueError(f"formula must be 'daly' or 'young', not {formula!r}")
    best = daly_interval(c, m) if formula == "daly" else young_interval(c, m)
    name = "Daly's" if formula == "daly" else "Young's"
    method, interval = formula, best
    why = (f"{name} interval for a {fmt_duration(c)} checkpoint and a {fmt_duration(m)} MTBF"
           + (f" fits the {fmt_duration(rpo_s)} RPO" if rpo_s is not None else ""))
    cap = None
    if rpo_s is not None:
        cap = rpo_cap(rpo_s, c)
        if best > cap:
            method, interval = "rpo-cap", cap
            why = (f"{name} interval ({fmt_duration(best)}) could lose up to "
                   f"{fmt_duration(best + c)} of work, more than the {fmt_duration(rpo_s)} RPO, "
                   f"so it is capped at RPO - checkpoint cost = {fmt_duration(cap)}")
    steps = None
    if step_s is not None:
        st = _check("the step time", step_s)
        if cap is not None and st > cap:
            raise ValueError(f"one step ({fmt_duration(st)}) plus the checkpoint "
                             f"({fmt_duration(c)}) is longer than the {fmt_duration(rpo_s)} RPO: "
                             f"no whole number of steps meets it")
        steps = max(1, round(interval / st))
        if cap is not None and steps * st > cap * (1 + 1e-12):
            steps = max(1, math.floor(interval / st * (1 + 1e-12)))
        interval = steps * st
        why += f"; {steps} steps of {fmt_duration(st)}"
    return Recommendation(
        interval_s=interval, interval_steps=steps, method=method,
        expected_overhead=expected_overhead(interval, c, m, r),
        expected_lost_work=expected_lost_work(interval, c, m),
        worst_lost_work_s=interval + c, why=why + ".")


# -- inputs ----------------------------------------------------------------------
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``"6h"``, ``"5m"``, ``"2s"``, ``"150ms"``, ``"1.5h"``, ``"3d"``
    or a bare number of seconds (``"90"``). Units: ms, s, m (or min), h, d.
    Raises ValueError saying what was wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be text such as '5m', not {text!r}")
    mt = _DURATION.match(text.lower())
    if not mt:
        if text.strip().startswith("-"):
            raise ValueError(f"{text!r} is not a duration: it must not be negative")
        raise ValueError(f"{text!r} is not a duration: give a number and a unit, "
                         f"such as 90s, 5m, 1.5h, 150ms or 2d")
    num, unit = mt.groups()
    if unit not in ("",) + tuple(_UNITS):
        raise ValueError(f"{text!r} is not a duration: unknown unit {unit!r} "
                         f"(use ms, s, m, h or d)")
    v = float(num) * _UNITS.get(unit, 1.0)
    if math.isinf(v):
        raise ValueError(f"{text!r} is not a duration: too large")
    return v


def fmt_duration(s: float | None) -> str:
    """A duration for people: 150 ms, 2 s, 4.9 min, 6 h, 2.5 d."""
    if s is None:
        return "-"
    s = float(s)

    def num(v: float) -> str:
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if s == 0:
        return "0 s"
    if s < 1:
        return f"{num(s * 1e3)} ms"
    if s < 120:
        return f"{num(s)} s"
    if s < 3600:
        return f"{num(s / 60)} min"
    if s < 2 * 86400:
        return f"{num(s / 3600)} h"
    return f"{num(s / 86400)} d"


def checkpoint_cost(epochs: Iterable[Any], *, full_if_none: bool = False) -> float | None:
    """The checkpoint cost ``C``: the median ``total_s`` of the incremental
    epochs among ``epochs`` (:class:`memckpt.EpochInfo`); with none, of the
    full ones if ``full_if_none``; None when there is nothing to measure.

    ``total_s`` rather than ``pause_s``: the program is stopped only for the
    pause, but a checkpoint protects nothing until it is durable, and in the
    model a failure during the write loses the work it was writing; so ``C`` is
    the time from the start of the capture to durability. (For blocking capture
    modes the two are nearly equal; for a background write ``total_s`` makes
    ``C`` conservative: a longer interval.) Full epochs are left out: they are
    the rare, larger cost of starting a chain, not the steady-state one.
    This is the one definition: ``memckpt tune --store`` and a Checkpointer's
    ``interval="auto"`` (over its last few epochs) both use it.
    """
    epochs = list(epochs)
    chosen = [e for e in epochs if e.kind == "incremental"]
    if not chosen and full_if_none:
        chosen = [e for e in epochs if e.kind == "full"]
    return float(statistics.median(e.total_s for e in chosen)) if chosen else None


def cost_from_store(store: Any) -> float:
    """:func:`checkpoint_cost` of a store's epochs (a Store or a path).
    Raises ValueError when there are no incremental epochs."""
    if not hasattr(store, "epochs"):
        from .store import Store
        store = Store(store)
    cost = checkpoint_cost(store.epochs())
    if cost is None:
        raise ValueError(f"the store {store.path} has no incremental epochs to measure the "
                         f"checkpoint cost from; checkpoint at least twice, or give the cost")
    return cost
