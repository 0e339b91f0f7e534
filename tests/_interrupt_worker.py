"""The process tests/test_interrupts.py's interrupt fuzz sends signals into.

Runs trials one after another, each a ``with Checkpointer(...)`` loop over a
small arena of its own store that writes random pages, checkpoints, now and
then rolls back, prunes or compacts, until a signal's exception ends it:
KeyboardInterrupt (SIGINT, Python's default handler) or SystemExit (SIGTERM,
through a handler this worker installs that calls ``sys.exit(3)``).

Trials come from stdin, one JSON line each: {"trial": n, "store": PATH,
"mode": M, "seed": S, "sigterm": bool, "last": bool}. Lines on stdout, each
flushed:

- ``READY n``: the trial's loop runs; the parent may signal now;
- ``C n EPOCH SHA256``: epoch EPOCH is durable (its ``result()`` returned)
  and the arena held content whose SHA-256 is SHA256 when it was taken;
- ``M n EPOCH ...``: epochs the prune or compaction about to run may remove;
- ``TOP n EXC``: the exception that ended the trial reached the top of it
  (``none``: the loop ran out of time without one: the signal was lost).

With ``last``, the trial's exception is not caught: it ends the process
(exit status -SIGINT or 3), as in a program, after the interpreter has
waited for every non-daemon thread.
"""
from __future__ import annotations

import faulthandler
import gc
import hashlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

import memckpt
from memckpt.errors import MemckptError

PS = memckpt.features().page_size
TRIAL_LIMIT_S = float(os.environ.get("MEMCKPT_TRIAL_LIMIT_S", "20"))  # no signal by then: the parent's signal was lost


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _exit3(signum: int, frame: Any) -> None:
    sys.exit(3)


def run_trial(req: dict[str, Any]) -> None:
    n, mode = req["trial"], req["mode"]
    rng = np.random.default_rng(req["seed"])
    npages = int(req.get("npages", 64))
    tracker = "uffd-sync" if mode == "background" else req.get("tracker", "auto")
    full_every = [None, 2, 4][int(rng.integers(0, 3))]
    arena = memckpt.Arena(npages * PS)
    try:
        x = arena.array("x", (npages, PS), np.uint8)
        signal.signal(signal.SIGTERM, _exit3 if req["sigterm"] else signal.SIG_DFL)
        with memckpt.Checkpointer(arena, req["store"], mode=mode, tracker=tracker,
                                  full_every=full_every) as ck:
            committed: list[int] = []
            out(f"READY {n}")
            deadline = time.monotonic() + TRIAL_LIMIT_S
            while time.monotonic() < deadline:
                k = int(rng.integers(1, 9))
                idx = rng.choice(npages, size=k, replace=False)
                x[idx, rng.integers(0, PS, size=k)] = rng.integers(1, 256, size=k, dtype=np.uint8)
                if rng.random() < 0.1:
                    x[int(rng.integers(0, npages))] = 0  # a page back to zero
                r = rng.random()
                if r < 0.05 and committed:
                    ck.rollback(committed[-1])
                    continue
                if r < 0.08 and len(committed) > 3:
                    out(f"M {n} " + " ".join(map(str, committed[:-3])))
                    ck.store.prune(keep_last=3)
                    continue
                if r < 0.10 and committed:
                    ck.wait()
                    last = committed[-1]
                    chain = ck.store.chain(last)
                    if len(chain) > 1:
                        out(f"M {n} " + " ".join(map(str, chain[:-1])))
                        try:
                            ck.store.compact(chain[0], last)
                        except MemckptError:
                            pass  # a branch from a rollback: compaction refuses, rightly
                    continue
                p = ck.checkpoint()
                digest = hashlib.sha256(arena.buffer()).hexdigest()  # nothing wrote since the pause
                info = p.result()
                committed.append(info.epoch)
                out(f"C {n} {info.epoch} {digest}")
            from memckpt import _signals  # what held the signal back, for the report
            out(f"TOP {n} none: depth {_signals._depth}, pending {_signals._pending}, "
                f"saved {sorted(_signals._saved)}, SIGTERM handler {signal.getsignal(signal.SIGTERM)}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            arena.close()
        except BufferError:
            pass  # a view still held by the unwinding frame: the process ends soon


def _unraisable(u: Any) -> None:
    # an exception raised where Python cannot propagate it (a __del__, a
    # weakref callback): a signal handler's exception there is lost
    where = getattr(u.object, "__module__", None) or type(u.object).__module__
    out(f"UNRAISABLE {u.exc_type.__name__} in {where}: {u.object!r}")


def main() -> None:
    sys.unraisablehook = _unraisable
    # the parent sends SIGUSR1 to a worker that hangs: every thread's stack to stderr
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.enable()  # and on a crash
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("last"):
            run_trial(req)  # the exception ends the process, like a program's
            continue
        try:
            run_trial(req)
        except (KeyboardInterrupt, SystemExit) as e:
            # the persist threads end with their epoch; one left means a hang
            for t in threading.enumerate():
                if t is not threading.main_thread() and t.name.startswith("memckpt-persist"):
                    t.join(30)
                    if t.is_alive():
                        out(f"STUCK {req['trial']} {t.name}")
            code = f" {e.code}" if isinstance(e, SystemExit) else ""
            out(f"TOP {req['trial']} {type(e).__name__}{code}")
        # this trial's garbage (an interrupt's traceback cycles) is collected
        # now, not during the next trial, where a finalizer of the harness's
        # own (an interrupted import's module lock) would swallow its signal
        del req
        gc.collect()


if __name__ == "__main__":
    main()
