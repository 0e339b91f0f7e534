"""``memckpt _demo-worker`` (not listed): one of the demo's processes, and
the orchestrator's handle on it.

A worker is ``first`` (lays the arena out, checkpoints every ``every`` steps,
and is killed by the orchestrator), ``resume`` (:meth:`Checkpointer.resume`
from the store's latest committed epoch, then on to the end) or
``reference`` (the same simulation from the start, with no checkpoints).
Workers talk to the orchestrator in lines ``@memckpt {json}`` on stdout;
anything else a worker prints goes to the orchestrator's stderr. Both ends
of that protocol are here: :func:`run` and :func:`emit` in the worker,
:class:`Worker` in the orchestrator.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .base import CliError, Command
from .demo_sim import (S_EVERY, S_ITERS, S_N, S_STEP, S_STEPS, S_WINDOW, advance, attach, digest,
                       grid_size, setup)

TAG = "@memckpt "


def arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("--role", choices=["first", "resume", "reference"], required=True)
    w.add_argument("--store", required=True)
    w.add_argument("--size-mib", type=float, required=True)
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--every", type=int, required=True)
    w.add_argument("--iters", type=int, required=True)
    w.add_argument("--tracker", default="auto")
    w.add_argument("--compress", default=None)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(TAG + json.dumps(dict(fields, ev=event)) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """``python -m memckpt _demo-worker``: one of the demo's processes."""
    from ..arena import Arena
    from ..checkpoint import Checkpointer
    from ..kernel import features

    t_start = time.perf_counter()
    ck = None
    if args.role == "resume":
        t0 = time.perf_counter()
        ck = Checkpointer.resume(args.store, tracker=args.tracker, compress=args.compress)
        arena = ck.arena
        arrays = attach(arena)
        restore_s = time.perf_counter() - t0
        from_epoch = ck.head
    else:
        n = grid_size(args.size_mib)
        # the plate, the material and the state, each from a page boundary
        arena = Arena(12 * n * n + 3 * features().page_size)
        arrays = setup(arena, n, args.steps, args.every, args.iters)
        restore_s, from_epoch = None, None
        if args.role == "first":
            ck = Checkpointer(arena, args.store, tracker=args.tracker, compress=args.compress)
    state = arrays["state"]
    steps, every = int(state[S_STEPS]), int(state[S_EVERY])
    emit("start", pid=os.getpid(), role=args.role, step=int(state[S_STEP]), steps=steps,
         n=int(state[S_N]), window=2 * int(state[S_WINDOW]), iters=int(state[S_ITERS]),
         arena_bytes=arena.nbytes, npages=arena.npages,
         tracker=ck.tracker.backend if ck else None,
         tracker_reason=ck.tracker.reason if ck else None,
         from_epoch=from_epoch, restore_s=restore_s)

    def checkpoint(step: int) -> None:
        assert ck is not None
        emit("checkpointing", step=step)
        info = ck.checkpoint(f"step {step}" + (" (end)" if step == steps else "")).result()
        emit("epoch", step=step, epoch=info.epoch, kind=info.kind, pages_dirty=info.pages_dirty,
             pause_s=info.pause_s, call_s=info.call_s, total_s=info.total_s,
             bytes=info.bytes_on_disk)

    if args.role == "first":
        checkpoint(0)
    sim_s = 0.0
    step = int(state[S_STEP])
    while step < steps:
        t0 = time.perf_counter()
        step = advance(arrays)
        sim_s += time.perf_counter() - t0
        emit("step", step=step)
        if ck is not None and (step % every == 0 or step == steps):
            checkpoint(step)
    if ck is not None:
        ck.close()
    emit("done", step=step, digest=digest(arrays), sim_s=sim_s,
         seconds=time.perf_counter() - t_start)
    del arrays, state
    try:
        arena.close()
    except BufferError:
        pass
    return 0


class Worker:
    """A running ``_demo-worker`` and the events it has sent."""

    def __init__(self, role: str, args: argparse.Namespace, store: Path) -> None:
        cmd = [sys.executable, "-m", "memckpt", "_demo-worker", "--role", role,
               "--store", str(store), "--size-mib", str(args.size_mib), "--steps", str(args.steps),
               "--every", str(args.every), "--iters", str(args.iters), "--tracker", args.tracker]
        if args.compress:
            cmd += ["--compress", args.compress]
        env = dict(os.environ)
        # one thread: deterministic arithmetic, and the machine's other core stays
        # free for the store's writes
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        self.role = role
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True,
                                     bufsize=1, env=env)
        self.start: dict[str, Any] = {}
        self.epochs: list[dict[str, Any]] = []
        self.done: dict[str, Any] = {}
        self.step = 0
        self.killed_at: int | None = None
        self.inflight: int | None = None  # the step of a checkpoint begun and not yet committed
        self.t0 = time.monotonic()
        self.seconds = 0.0

    def events(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith(TAG):
                sys.stderr.write(line)
                continue
            ev = json.loads(line[len(TAG):])
            kind = ev["ev"]
            if kind == "start":
                self.start = ev
                self.step = ev["step"]
            elif kind == "step":
                self.step = ev["step"]
            elif kind == "checkpointing":
                self.inflight = ev["step"]
            elif kind == "epoch":
                self.epochs.append(ev)
                self.inflight = None
            elif kind == "done":
                self.done = ev
            yield ev

    def kill(self) -> None:
        self.killed_at = self.step
        self.proc.send_signal(signal.SIGKILL)

    def finish(self) -> int:
        if self.proc.stdout is not None:
            for _ in self.events():
                pass  # drain
        rc = self.proc.wait()
        self.seconds = time.monotonic() - self.t0
        return rc

    def failed(self, rc: int) -> CliError:
        return CliError(f"the {self.role} worker (pid {self.proc.pid}) failed with exit status {rc}"
                        + (f" at step {self.step}" if self.start else "")
                        + "; its error is above")


COMMAND = Command("_demo-worker", arguments, run)  # no help: not listed
