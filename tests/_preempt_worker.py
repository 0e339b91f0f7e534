"""The process tests/test_preemption.py preempts.

``python _preempt_worker.py JSON``: a step loop over an arena whose
``counter`` array holds the last step written and whose ``field`` is what
:func:`apply_step` wrote in steps 1..counter (so any restored epoch can be
checked bit for bit by replaying that many steps), with
``memckpt.on_preemption`` installed. The JSON says: store, mode, grace,
step_wait, interval, log (a file: one line ``S k t`` as each step ``k`` ends,
at ``time.monotonic()`` ``t``; ``K t`` when this process signals itself),
native ("released" or "held": step ``native_at`` also calls a native
function that sleeps ``native_s`` seconds, ignoring EINTR, with the GIL
released or held; ``lib`` is its shared library), self_kill (a checkpoint
number: a thread of this process sends it SIGTERM while that checkpoint runs).

Prints ``READY`` once the first epoch is durable.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

import numpy as np

import memckpt

PS = memckpt.features().page_size


def touched_at(req: dict, k: int) -> int:
    """Pages step k writes: every page at the self-kill step (a longer checkpoint)."""
    return int(req.get("npages", 512)) if k == req.get("self_kill") else int(req.get("touched", 32))


def apply_step(field: np.ndarray, k: int, touched: int) -> None:
    """Step k's writes: ``touched`` pages, spread by a fixed rule, set to k."""
    n = field.shape[0]
    idx = (k * 7919 + np.arange(touched, dtype=np.int64) * 131) % n
    field[idx, :] = k


def main() -> None:
    req = json.loads(sys.argv[1])
    npages = int(req.get("npages", 512))
    arena = memckpt.Arena((npages + 1) * PS)
    counter = arena.array("counter", PS // 8, np.int64)
    field = arena.array("field", (npages, PS // 8), np.int64)
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    tracker = "uffd-sync" if req["mode"] == "background" else "auto"
    ck = memckpt.Checkpointer(arena, req["store"], mode=req["mode"], tracker=tracker,
                              interval=req.get("interval", 0.02))
    pre = memckpt.on_preemption(ck, grace=req["grace"], step_wait=req.get("step_wait"),
                                requeue=req.get("requeue", False))
    native = None
    if req.get("native"):
        cls = ctypes.PyDLL if req["native"] == "held" else ctypes.CDLL
        native = cls(req["lib"]).spin_sleep
        native.argtypes = [ctypes.c_double]
    ck.checkpoint().result()
    print("READY", flush=True)
    self_kill = req.get("self_kill")
    k = 0
    with ck:
        while True:
            k += 1
            apply_step(field, k, touched_at(req, k))
            counter[0] = k
            os.write(log, f"S {k} {time.monotonic()!r}\n".encode())
            if native is not None and k == req["native_at"]:
                native(req["native_s"])
            if self_kill is not None and k == self_kill:
                # the kernel signals this process while the main thread checkpoints
                # (a timer: a Python thread could not, as checkpoint() no longer
                # lets the GIL go in mode copy: it would signal after the call)
                delay = float(np.random.default_rng(req.get("seed", 0)).uniform(0, 0.002))
                at = time.monotonic() + delay
                os.write(log, f"K {at!r}\n".encode())
                _signal_at(at, signal.SIGTERM)
                ck.checkpoint()
                os.write(log, f"C {time.monotonic()!r}\n".encode())
                continue
            ck.maybe_checkpoint()
            if k > 1_000_000:  # pragma: no cover - the signal never came
                break
    pre.close()
    sys.exit(7)


class _SigEvent(ctypes.Structure):  # struct sigevent (Linux, 64 bytes)
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("pad", ctypes.c_int * 12)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


def _signal_at(at: float, signum: int) -> None:
    """Have the kernel send ``signum`` to this process at time.monotonic() ``at``
    (a POSIX timer on CLOCK_MONOTONIC, absolute), whatever Python is doing."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "timer_create"):  # glibc before 2.34
        libc = ctypes.CDLL("librt.so.1", use_errno=True)
    ev = _SigEvent(signo=signum, notify=0)  # SIGEV_SIGNAL
    timer = ctypes.c_void_p()
    if libc.timer_create(time.CLOCK_MONOTONIC, ctypes.byref(ev), ctypes.byref(timer)):
        raise OSError(ctypes.get_errno(), "timer_create")
    sec = int(at)
    spec = _ITimerSpec(value=_TimeSpec(sec, int((at - sec) * 1e9)))
    if libc.timer_settime(timer, 1, ctypes.byref(spec), None):  # TIMER_ABSTIME
        raise OSError(ctypes.get_errno(), "timer_settime")


if __name__ == "__main__":
    main()
