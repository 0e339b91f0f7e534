"""``Checkpointer(mode="auto", tracker="auto", calibration=...)``: which
(tracker, capture mode) pair a checkpointer runs, and the record of why,
which goes into every epoch's manifest as ``extra["auto"]`` (``memckpt show``
prints it).

``calibration`` is a :class:`memckpt.calibrate.Calibration`, the path of one
saved as JSON (``memckpt calibrate MODULE:FUNCTION --save FILE``, or its
``--json`` output), or the step itself (a callable with no arguments that
writes the arena): a short calibration is then run on the arena first (the
arena's bytes are put back afterwards; state the step keeps outside the arena
advances). The pick is the calibration's cheapest pair per second of work
among those the other arguments allow: the tracker or mode given explicitly,
no fork with ``compress`` (a fork child cannot compress). A pair this kernel
cannot run is an error, not a silent substitute: the calibration was made
elsewhere, so its costs say nothing of this machine.

``mode="auto"`` without a calibration takes the default: mode ``"copy"`` (the
Checkpointer's default: staged, persisted on a thread) with the tracker the
kernel's features pick, and records ``"no calibration: default"`` as the
reason. ``tracker="auto"`` alone (the constructor's default) without a
calibration is the kernel's pick as before and records nothing.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

from ..arena import Arena
from ..calibrate import (ALL_MODES, Calibration, PairCost, calibrate, explain,
                         load_calibration, pairs_available)

DEFAULT_MODE = "copy"
# the short calibration a step given as calibration= gets (memckpt.calibrate's arguments)
SHORT = {"interval_steps": 3, "rounds": 2, "refine": 0.0}


def choose(arena: Arena, tracker: str, mode: str, calibration: Any,
           compress: str | None) -> tuple[str, str, dict[str, Any] | None]:
    """(tracker, mode, the record for extra["auto"] or None): see the module docstring."""
    if calibration is None:
        if mode != "auto":
            return tracker, mode, None
        return tracker, DEFAULT_MODE, {
            "tracker": tracker, "mode": DEFAULT_MODE, "source": "default",
            "asked": {"tracker": tracker, "mode": mode},
            "why": f"no calibration: default: mode {DEFAULT_MODE!r} (the Checkpointer's "
                   f"default) and " + ("the tracker the kernel's features pick" if tracker == "auto"
                                       else f"tracker {tracker!r} as given")
                   + "; calibrate on the step to choose by cost (docs/tuning.md)"}
    if tracker != "auto" and mode != "auto":
        raise ValueError(f"calibration= chooses the tracker or the mode, but both were given "
                         f"(tracker={tracker!r}, mode={mode!r}): pass tracker='auto' or "
                         f"mode='auto' with it, or leave calibration out")

    def allowed(t: str, m: str) -> bool:
        return ((tracker == "auto" or t == tracker) and (mode == "auto" or m == mode)
                and not (m == "fork" and compress is not None))

    cal, kind, source, file = _calibration(calibration, arena, allowed)
    ok = [p for p in cal.pairs if p.error is None and allowed(p.tracker, p.mode)]
    if not ok:
        raise ValueError(f"{source} measured no pair that tracker={tracker!r}, mode={mode!r}"
                         f"{', compress=' + repr(compress) if compress else ''} allows "
                         f"(it measured: {_names(cal.pairs)})")
    best = min(ok, key=lambda p: p.cost_fraction)
    here = pairs_available(ALL_MODES)
    if (best.tracker, best.mode) not in here:
        raise ValueError(f"{source} picks {best.tracker}/{best.mode}, which this kernel cannot "
                         f"run (it offers {', '.join(f'{t}/{m}' for t, m in here)}): calibrate "
                         f"on this machine, or give tracker= and mode= yourself")
    return best.tracker, best.mode, {
        "tracker": best.tracker, "mode": best.mode, "source": kind,
        "asked": {"tracker": tracker, "mode": mode}, "why": explain(best),
        # the overhead account's tracking term: how much more CPU the stepping thread
        # took between checkpoints with the pair (its faults), as measured at the
        # calibration's interval; a calibration from before that was kept gives the
        # fastest interval's wall-clock slowdown (the persist's interference in it)
        "tracking_slowdown": max(0.0, best.wall_slowdown if best.step_cpu_slowdown is None
                                 else best.step_cpu_slowdown),
        "tracking_measure": "wall" if best.step_cpu_slowdown is None else "step_cpu",
        "calibration": {"file": file, "created": cal.created, "host": cal.host,
                        "kernel": cal.kernel, "interval_steps": cal.interval_steps,
                        "rounds": cal.rounds, "mtbf_s": cal.mtbf_s, "interval_s": cal.interval_s},
        "pairs": [_pair_record(p) for p in sorted(cal.pairs, key=lambda p: p.cost_fraction)],
    }


def _calibration(c: Any, arena: Arena, allowed: Callable[[str, str], bool]
                 ) -> tuple[Calibration, str, str, str | None]:
    """(the calibration, its kind, how to name it in a message, its file or None)."""
    if isinstance(c, Calibration):
        return c, "calibration", "the calibration", None
    if isinstance(c, (str, os.PathLike)):
        name = os.fspath(c)
        return (load_calibration(name), "calibration file", f"calibration file {name}",
                os.path.abspath(name))
    if callable(c):
        run = "calibration run at start"
        return _short(c, arena, allowed), run, f"the {run}", None
    raise TypeError(f"calibration must be a memckpt.Calibration, the path of one saved as "
                    f"JSON, or the step (a callable), not {type(c).__name__}")


def _short(step: Callable[[], Any], arena: Arena, allowed: Callable[[str, str], bool]) -> Calibration:
    """A short calibration of ``step`` over the pairs allowed; the arena's bytes
    come back as they were (a copy of the arena is held meanwhile)."""
    view = np.frombuffer(arena.buffer(), np.uint8)
    saved = view.copy()
    try:
        pairs = [p for p in pairs_available() if allowed(*p)]
        return calibrate(step, arena, pairs=pairs, **SHORT)  # type: ignore[arg-type]
    finally:
        _put_back(view, saved, arena.page_size)
        del view, saved


def _put_back(view: np.ndarray, saved: np.ndarray, page_size: int) -> None:
    """Write back the pages that differ from ``saved``, and only those: a page
    the program never touched stays unpopulated (no memory, no read in a full
    epoch). Compared a chunk at a time (the comparison's own memory stays small)."""
    step = max(1, (64 << 20) // page_size) * page_size
    for off in range(0, view.size, step):
        cur, old = view[off:off + step], saved[off:off + step]
        if np.array_equal(cur, old):
            continue
        c, o = cur.reshape(-1, page_size), old.reshape(-1, page_size)
        changed = (c != o).any(axis=1)
        c[changed] = o[changed]


def _names(pairs: list[PairCost]) -> str:
    return ", ".join(f"{p.tracker}/{p.mode}" + (" (failed)" if p.error else "")
                     for p in pairs) or "nothing"


def _pair_record(p: PairCost) -> dict[str, Any]:
    """What a manifest keeps of one measured pair: finite numbers only (JSON)."""
    if p.error is not None:
        return {"tracker": p.tracker, "mode": p.mode, "error": p.error}
    return {"tracker": p.tracker, "mode": p.mode, "cost_s": p.cost_s,
            "cost_fraction": p.cost_fraction, "interval_s": p.interval_s,
            "pause_s": p.pause_s, "total_s": p.total_s, "wall_slowdown": p.wall_slowdown}


def summary(rec: Any) -> list[tuple[str, str]]:
    """``memckpt show``'s lines for an epoch's ``extra["auto"]``: (field, value)."""
    try:
        return _summary(rec)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return [("auto choice", repr(rec))]  # not what a Checkpointer writes: as it is


def _summary(rec: Any) -> list[tuple[str, str]]:
    out = [("auto choice", f"{rec.get('tracker')}/{rec.get('mode')} ({rec.get('source')}): "
                           f"{rec.get('why')}")]
    cal = rec.get("calibration") or {}
    if cal:
        when = cal.get("created")
        stamp = (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
                 if isinstance(when, (int, float)) else "unknown date")
        where = cal.get("host") or "unknown host"
        kernel = f", kernel {cal['kernel']}" if cal.get("kernel") else ""
        file = f" from {cal['file']}" if cal.get("file") else ""
        costs = ", ".join(
            f"{p['tracker']}/{p['mode']} " + (f"{1e3 * p['cost_s']:.3g} ms "
                                              f"({100 * p['cost_fraction']:.3g}%)"
                                              if "cost_s" in p else "failed")
            for p in rec.get("pairs") or [])
        out.append(("auto costs", f"per interval, measured {stamp} on {where}{kernel}{file}: "
                                  f"{costs}"))
    return out
