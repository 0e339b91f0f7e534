"""Calibration on the user's own step: :func:`calibrate` (docs/tuning.md).

What a (tracker, capture mode) pair costs depends on the workload: a dense
stencil writes every page every step (a tracker that faults on each first
write pays per page per interval; fork mode's pause grows with resident
memory), a sparse writer touches a few (a tracker that compares the whole
arena pays for pages nobody wrote). So the pairs are measured on the step
itself: a few intervals of ``interval_steps`` steps each, a checkpoint after
each, for every available pair, each beside a block of the same steps on
the untracked arena (interleaved: a noisy machine drifts).

Per pair: ``slowdown``, the CPU seconds (this process's threads and its
reaped children: mode fork's writers) of the tracked intervals, checkpoints
and persists included, against the untracked ones, minus one. CPU time,
not wall time: on a shared machine another process's load inflates wall
time by whatever it is then (the wall-clock slowdown is kept as
``wall_slowdown``, fastest interval against fastest, for information).
``step_cpu_slowdown``: the stepping thread's CPU in the steps alone (the
checkpoint calls left out), median interval against median, minus one: the
tracker's faults as the program pays them, the overhead account's tracking
term (checkpoint/stats.py). The untracked intervals run half before and half
after the tracked ones, so that a drift of the machine's speed meets both. Also
``pause_s``, ``call_s`` (what ``checkpoint()`` blocked, the wait for the epoch
before included), ``total_s`` (until durable), and ``extra_bytes`` (the rise
of the process's peak resident memory).

The cost of a pair per interval is the CPU checkpointing took per interval
(the tracker's faults, the checkpoint, its persist)::

    cost = (tracked CPU - untracked CPU) / rounds  [+ (tau / M) * expected_lost_work(tau, total_s, M)]

the last term only with an MTBF ``M`` (a failure in an interval of ``tau``
seconds loses the work since the last durable epoch: memckpt.tuning). ``tau``
is the given ``interval``, else Daly's interval for the pair's ``total_s`` at
``M``, else the calibration's own (``interval_steps`` steps). The first term
is taken as it was measured, per interval: a page written again in the same
interval faults once, so for the workloads that matter (a step re-writing its
pages) it does not grow with ``tau``; calibrate with ``interval_steps`` near
the interval you will run. :attr:`Calibration.best` is the pair with the
least ``cost / tau``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from .arena import Arena
from .kernel import trackers
from .tuning import daly_interval, expected_lost_work

__all__ = ["Calibration", "PairCost", "calibrate", "load_calibration", "pairs_available"]

MODES = ("copy", "fork", "background")
ALL_MODES = MODES + ("sync",)  # memckpt bench --workload measures the baseline too


@dataclass(frozen=True)
class PairCost:
    """One (tracker, mode) pair measured on the step (module docstring)."""

    tracker: str
    mode: str
    step_s: float            # a step on the untracked arena (the fastest interval's mean)
    slowdown: float          # CPU of the tracked intervals (checkpoints included) / untracked - 1
    wall_slowdown: float     # the fastest tracked interval's steps / the fastest untracked - 1
    pause_s: float           # medians over the checkpoints
    call_s: float
    total_s: float
    extra_bytes: int | None
    interval_s: float        # the tau the cost is for
    cost_s: float            # per interval
    cost_fraction: float     # cost_s / interval_s
    error: str | None = None  # why the pair could not be measured (then the costs are inf)
    epoch_bytes: int | None = None  # median bytes on disk of an interval's epoch
    pages_dirty: int | None = None  # median pages an interval's epoch held
    # the stepping thread's CPU in the tracked intervals' steps (checkpoint calls left
    # out) / in the untracked ones - 1: the tracker's faults (and mode fork's copy-on-
    # write) as the program's own thread pays them; None in a calibration made before
    step_cpu_slowdown: float | None = None


@dataclass(frozen=True)
class Calibration:
    """The pairs measured; :attr:`best` is the cheapest per second of work."""

    pairs: list[PairCost]
    interval_steps: int
    rounds: int
    mtbf_s: float | None
    interval_s: float | None
    why: str = field(default="")
    created: float | None = None  # Unix time of the measurement
    host: str | None = None       # the machine's name (platform.node())
    kernel: str | None = None     # its kernel release

    @property
    def best(self) -> PairCost:
        ok = [p for p in self.pairs if p.error is None]
        if not ok:
            raise RuntimeError("no (tracker, mode) pair could be measured: "
                               + "; ".join(f"{p.tracker}/{p.mode}: {p.error}" for p in self.pairs))
        return min(ok, key=lambda p: p.cost_fraction)

    def cost_of(self, tracker: str, mode: str) -> PairCost:
        return next(p for p in self.pairs if (p.tracker, p.mode) == (tracker, mode))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        b = self.best
        d["best"] = {"tracker": b.tracker, "mode": b.mode, "cost_fraction": b.cost_fraction}
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "the calibration") -> Calibration:
        """The inverse of :meth:`to_dict` (what ``memckpt calibrate --json``
        prints); ValueError naming ``source`` and the field if it is not one."""
        if not isinstance(d, dict) or not isinstance(d.get("pairs"), list) or not d["pairs"]:
            raise ValueError(f"{source} is not a calibration (the JSON `memckpt calibrate --json` "
                             f"writes): it has no list of measured pairs")
        pairs = []
        for i, p in enumerate(d["pairs"]):
            try:
                pairs.append(_pair_from(p))
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"{source}: pair {i} is damaged ({type(e).__name__}: {e})") from None
        try:
            return cls(pairs, int(d["interval_steps"]), int(d["rounds"]), _num(d.get("mtbf_s")),
                       _num(d.get("interval_s")), str(d.get("why") or ""),
                       _num(d.get("created")), _str(d.get("host")), _str(d.get("kernel")))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source} is damaged ({type(e).__name__}: {e})") from None


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{v!r} is not a number")
    return float(v)


def _str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v


def _pair_from(p: Any) -> PairCost:
    if not isinstance(p, dict):
        raise TypeError(f"{p!r} is not an object")
    for k in ("tracker", "mode"):
        if not isinstance(p.get(k), str):
            raise KeyError(k)
    inf = float("inf")
    nums = {k: (inf if p.get(k) is None else _num(p[k]))
            for k in ("step_s", "slowdown", "wall_slowdown", "pause_s", "call_s", "total_s",
                      "interval_s", "cost_s", "cost_fraction")}
    if p.get("error") is None and any(math.isnan(v) for v in nums.values()):  # type: ignore[arg-type]
        raise ValueError("a cost is NaN")
    ints = {k: (None if p.get(k) is None else int(p[k]))
            for k in ("extra_bytes", "epoch_bytes", "pages_dirty")}
    step_cpu = None if p.get("step_cpu_slowdown") is None else _num(p["step_cpu_slowdown"])
    return PairCost(p["tracker"], p["mode"], error=_str(p.get("error")),
                    step_cpu_slowdown=step_cpu, **nums, **ints)  # type: ignore[arg-type]


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """A calibration saved as JSON (``memckpt calibrate --json > FILE``, or
    ``--save FILE``); ValueError naming the file if it cannot be one."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"calibration file {name}: cannot read it ({e})") from None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ValueError(f"calibration file {name} is not valid JSON ({e}): write it with "
                         f"`memckpt calibrate MODULE:FUNCTION --save {name}`") from None
    return Calibration.from_dict(d, f"calibration file {name}")


def explain(p: PairCost) -> str:
    """One sentence: what the pair costs the work."""
    return (f"{p.tracker}/{p.mode}: checkpointing costs {100 * p.cost_fraction:.3g}% of the "
            f"work ({p.cost_s * 1e3:.3g} ms of CPU per {p.interval_s:.3g} s interval; pause "
            f"{p.pause_s * 1e3:.3g} ms, durable after {p.total_s * 1e3:.3g} ms)")


def pairs_available(modes: Sequence[str] = MODES) -> list[tuple[str, str]]:
    """Every (tracker, mode) pair this kernel can run (background needs uffd-sync)."""
    names = [t.name for t in trackers() if t.available]
    out = [(t, m) for t in names for m in modes if m != "background"]
    if "uffd-sync" in names and "background" in modes:
        out.append(("uffd-sync", "background"))
    return out


def _rss() -> tuple[int, int] | None:
    """(resident, peak resident) bytes of this process, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            vals = {k: int(v.split()[0]) * 1024 for k, v in
                    (ln.split(":", 1) for ln in f if ln.startswith(("VmRSS", "VmHWM")))}
        return vals["VmRSS"], vals["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak() -> bool:
    try:  # Linux >= 4.0: "5" resets the peak resident size to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (mode fork's writers)."""
    t = os.times()  # children: clock ticks (10 ms), only reaped ones
    return time.process_time() + t.children_user + t.children_system


@dataclass
class _Run:
    bare_wall: list[float] = field(default_factory=list)
    work_wall: list[float] = field(default_factory=list)
    bare_cpu: float = 0.0
    tracked_cpu: float = 0.0
    # the stepping thread's CPU in each interval's steps alone (checkpoints left out)
    bare_step_cpu: list[float] = field(default_factory=list)
    work_step_cpu: list[float] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    dirty: list[int] = field(default_factory=list)
    extra: int | None = None
    rounds: int = 0

    def merge(self, o: _Run) -> None:
        self.bare_wall += o.bare_wall
        self.work_wall += o.work_wall
        self.bare_cpu += o.bare_cpu
        self.tracked_cpu += o.tracked_cpu
        self.bare_step_cpu += o.bare_step_cpu
        self.work_step_cpu += o.work_step_cpu
        self.pauses += o.pauses
        self.calls += o.calls
        self.totals += o.totals
        self.bytes += o.bytes
        self.dirty += o.dirty
        self.extra = max(filter(None, (self.extra, o.extra)), default=None)
        self.rounds += o.rounds


def _measure(step: Callable[[], Any], arena: Arena, tracker: str, mode: str, *, n: int,
             rounds: int, root: str) -> _Run:
    """One pair: ``rounds`` untracked intervals of ``n`` steps (half before, half
    after) around ``rounds`` tracked ones each ending in a checkpoint (its
    persist overlapping the next)."""
    from .checkpoint import Checkpointer
    d = tempfile.mkdtemp(prefix=f"{tracker}-{mode}-", dir=root)
    r = _Run(rounds=rounds)
    try:
        # one step first: a fork pair before this one left the pages copy-on-write
        # (the first write to each faults once), which the untracked intervals must not pay
        step()
        # the untracked rounds on both sides of the tracked ones (half before, half
        # after): a machine whose speed drifts during the pair slows both alike
        _bare(step, r, n, (rounds + 1) // 2)
        with Checkpointer(arena, d, tracker=tracker, mode=mode) as ck:
            ck.checkpoint().result()  # the full epoch: not the steady state
            ck.wait()
            before = _rss()
            peak_ok = _reset_peak()
            pendings = []
            c0 = _cpu()
            for _ in range(rounds):
                t, tc = time.perf_counter(), time.thread_time()
                for _ in range(n):
                    step()
                r.work_wall.append(time.perf_counter() - t)
                r.work_step_cpu.append(time.thread_time() - tc)
                p = ck.checkpoint()
                r.pauses.append(p.pause_s)
                r.calls.append(p.call_s or 0.0)
                pendings.append(p)
            infos = [p.result() for p in pendings]
            r.totals = [i.total_s for i in infos]
            r.bytes = [i.bytes_on_disk for i in infos]
            r.dirty = [i.pages_dirty for i in infos]
            r.tracked_cpu = _cpu() - c0
            after = _rss()
            if peak_ok and before is not None and after is not None:
                r.extra = max(0, after[1] - before[0])
        step()  # uncounted: after a fork, the first write to each page faults once
        _bare(step, r, n, rounds // 2)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return r


def _bare(step: Callable[[], Any], r: _Run, n: int, rounds: int) -> None:
    """``rounds`` untracked intervals of ``n`` steps, added to ``r``."""
    c0 = _cpu()
    for _ in range(rounds):
        t, tc = time.perf_counter(), time.thread_time()
        for _ in range(n):
            step()
        r.bare_wall.append(time.perf_counter() - t)
        r.bare_step_cpu.append(time.thread_time() - tc)
    r.bare_cpu += _cpu() - c0


def calibrate(step: Callable[[], Any], arena: Arena, *, interval_steps: int = 5,
              rounds: int = 4, pairs: Sequence[tuple[str, str]] | None = None,
              mtbf: float | None = None, interval: float | None = None,
              refine: float = 0.3,
              workdir: str | os.PathLike[str] | None = None) -> Calibration:
    """Measure each (tracker, mode) pair (default: :func:`pairs_available`) on
    ``step`` (called with no arguments; it writes ``arena``) over ``rounds``
    intervals of ``interval_steps`` steps, and cost it per interval (module
    docstring). The stores are temporary directories under ``workdir``
    (default: the system's temporary directory; put it on the disk the real
    store will be on). The arena must have no checkpointer or tracker open.

    ``refine``: the pairs whose cost is within this share of the cheapest
    (near ties, which a noisy machine may order either way) are measured
    again for twice the rounds, added to their first measurement, before the
    pick."""
    if interval_steps < 1 or rounds < 1:
        raise ValueError(f"interval_steps and rounds must be at least 1, not "
                         f"{interval_steps} and {rounds}")
    todo = list(pairs) if pairs is not None else pairs_available()
    root = tempfile.mkdtemp(prefix="memckpt-calibrate-", dir=workdir)
    runs: list[tuple[str, str, _Run | str]] = []
    try:
        for tracker, mode in todo:
            try:
                runs.append((tracker, mode, _measure(step, arena, tracker, mode,
                                                     n=interval_steps, rounds=rounds, root=root)))
            except Exception as e:  # a pair this arena or kernel cannot run: say why
                runs.append((tracker, mode, f"{type(e).__name__}: {e}"))
        ok = [r for _, _, r in runs if isinstance(r, _Run)]
        # one interval for every pair: the untracked intervals' CPU, over all pairs
        own = statistics.median(r.bare_cpu / r.rounds for r in ok) if ok else 1.0
        out = [_cost(t, m, r, interval_steps, own, interval, mtbf) for t, m, r in runs]
        good = [c.cost_s for c in out if c.error is None]
        near = [i for i, c in enumerate(out)
                if good and c.error is None and c.cost_s <= (1 + refine) * min(good)]
        if refine > 0 and len(near) > 1:
            for i in near:
                t, m, r = runs[i]
                assert isinstance(r, _Run)
                r.merge(_measure(step, arena, t, m, n=interval_steps, rounds=2 * rounds,
                                 root=root))
            out = [_cost(t, m, r, interval_steps, own, interval, mtbf) for t, m, r in runs]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cal = Calibration(out, interval_steps, rounds, mtbf, interval)
    try:
        why = explain(cal.best)
    except RuntimeError as e:
        why = str(e)
    return Calibration(out, interval_steps, rounds, mtbf, interval, why, time.time(),
                       platform.node(), platform.release())


def _cost(tracker: str, mode: str, r: _Run | str, n: int, own: float,
          interval: float | None, mtbf: float | None) -> PairCost:
    if isinstance(r, str):
        inf = float("inf")
        return PairCost(tracker, mode, inf, inf, inf, inf, inf, inf, None, inf, inf, inf, error=r)
    bare = min(r.bare_wall)
    slow = r.tracked_cpu / r.bare_cpu - 1 if r.bare_cpu > 0 else float("inf")
    call, total = statistics.median(r.calls), statistics.median(r.totals)
    if interval is not None:
        tau = float(interval)
    elif mtbf is not None:
        tau = daly_interval(max(total, 1e-6), mtbf)
    else:
        tau = own
    # CPU the checkpointing took per interval (tracking, the checkpoint, its persist)
    cost = max((r.tracked_cpu - r.bare_cpu) / r.rounds, 0.0)
    if mtbf is not None:
        cost += tau / mtbf * expected_lost_work(tau, total, mtbf)
    return PairCost(tracker, mode, bare / n, slow, min(r.work_wall) / bare - 1,
                    statistics.median(r.pauses), call, total, r.extra, tau, cost, cost / tau,
                    epoch_bytes=int(statistics.median(r.bytes)),
                    pages_dirty=int(statistics.median(r.dirty)),
                    step_cpu_slowdown=_step_cpu_slowdown(r))


def _step_cpu_slowdown(r: _Run) -> float | None:
    """Medians of the intervals' step CPU, tracked against untracked, minus one:
    medians, because an interval now and then takes several times its CPU (the
    kernel's own work charged to the thread: reclaim, compaction), which a sum
    would hand to whichever side it fell in."""
    if not r.bare_step_cpu or not r.work_step_cpu:
        return None
    bare = statistics.median(r.bare_step_cpu)
    return statistics.median(r.work_step_cpu) / bare - 1 if bare > 0 else None
