"""``memckpt demo``: checkpoint a simulation, kill it, resume it, prove nothing was lost.

The simulation is 2-D heat diffusion on a float64 grid over a layered
material (a float32 conductivity map, written once): a torch moves over the
plate on a bouncing path, and each step runs a few explicit five-point
stencil iterations in a window around the torch; the rest of the plate is
left as it is. So each step writes a window's worth of pages, and an
incremental epoch holds the window's sweep since the last one, while a full
copy of the arena would hold the whole plate and the material.

The orchestrator (:func:`run`) runs three worker processes of
``python -m memckpt _demo-worker`` (:func:`worker`):

1. ``first``: lays the arena out, checkpoints every ``every`` steps (epoch 0
   is full, then incrementals), and is killed with SIGKILL at a random step;
2. ``resume``: :meth:`Checkpointer.resume` restores the store's latest
   committed epoch in a fresh process and continues that chain to the end;
3. ``reference``: the same simulation from the start, with no checkpoints.

Then the store's last epoch is restored once more (:func:`memckpt.restore`),
and the three results are compared by SHA-256 of every array's bytes.

Every step is a deterministic function of the step number and the state in
the arena (integer torch path, fixed-order numpy arithmetic, no threads, no
random numbers), which is what makes bit-identity a real check. The step
counter lives in the arena too, so the resumed worker learns from the
restored state, not from the orchestrator, where to continue.

Workers talk to the orchestrator in lines ``@memckpt {json}`` on stdout;
anything else a worker prints goes to the orchestrator's stderr.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .cli import CliError, Progress, fmt_bytes, fmt_epochs, table

TAG = "@memckpt "
DEFAULT_STORE = "memckpt-demo"
AMBIENT = 15.0       # initial temperature of the plate
TORCH = 4.0          # heat the torch adds to its 8x8 cells per iteration
RATE = 0.24          # explicit scheme: RATE * max(conductivity) <= 1/4 keeps it stable
COOLING = 1e-3       # Newtonian loss towards AMBIENT
MAGIC = 0x6D656D636B7074  # "memckpt": marks the state array as the demo's
# state[] slots
S_MAGIC, S_STEP, S_N, S_STEPS, S_EVERY, S_WINDOW, S_ITERS = range(7)


# -- the simulation ---------------------------------------------------------------------
def grid_size(size_mib: float) -> int:
    """n such that an n x n float64 plate plus its float32 material fill size_mib."""
    return max(32, int((size_mib * 2**20 / 12) ** 0.5))


def window_half(n: int) -> int:
    return max(6, n // 10)


def bounce(x: int, lo: int, hi: int) -> int:
    """x folded into [lo, hi] like a ball between two walls (integers only)."""
    span = hi - lo
    if span <= 0:
        return lo
    x %= 2 * span
    return lo + (x if x <= span else 2 * span - x)


def torch_at(step: int, n: int, half: int) -> tuple[int, int]:
    """The torch's cell at a step: a bouncing path with incommensurate speeds,
    about half a window per checkpoint interval of the default run."""
    v = max(1, n // 500)
    return (bounce(n // 3 + 3 * v * step, half + 1, n - half - 2),
            bounce(n // 5 + 2 * v * step, half + 1, n - half - 2))


def setup(arena: Any, n: int, steps: int, every: int, iters: int) -> dict[str, np.ndarray]:
    """Lay out and initialise the demo's arrays in ``arena``."""
    temp = arena.array("temperature", (n, n), np.float64)
    kappa = arena.array("conductivity", (n, n), np.float32)
    state = arena.array("state", 8, np.int64)
    # the plate starts near AMBIENT, with smooth variations: every cell differs
    # from its neighbours, so the stencil changes every value it touches
    ri = np.sin(np.arange(n) * (7.0 / n) * np.pi)
    cj = np.cos(np.arange(n) * (5.0 / n) * np.pi)
    for r0 in range(0, n, 256):
        r1 = min(n, r0 + 256)
        np.multiply.outer(ri[r0:r1], cj, out=temp[r0:r1])
        temp[r0:r1] *= 3.0
        temp[r0:r1] += AMBIENT
    # a layered material: three conductivities in slanted bands, with
    # low-conductivity inclusions on a lattice; computed a block of rows at a time
    j = np.arange(n, dtype=np.int64)
    band, cell = max(1, n // 24), max(1, n // 40)
    for r0 in range(0, n, 256):
        i = np.arange(r0, min(n, r0 + 256), dtype=np.int64)[:, None]
        layer = ((i + j // 3) // band) % 3
        blobs = ((i // cell) * 7 + (j // cell) * 13) % 11 == 0
        kappa[r0:r0 + i.shape[0]] = np.where(blobs, np.float32(0.15),
                                             np.float32(0.45) + np.float32(0.25) * layer)
    state[:] = 0
    state[S_MAGIC], state[S_N], state[S_STEPS] = MAGIC, n, steps
    state[S_EVERY], state[S_WINDOW], state[S_ITERS] = every, window_half(n), iters
    return {"temperature": temp, "conductivity": kappa, "state": state}


def attach(arena: Any) -> dict[str, np.ndarray]:
    """The demo's arrays of a restored arena, checked to be the demo's."""
    arrays = arena.arrays()
    state = arrays.get("state")
    if state is None or "temperature" not in arrays or int(state[S_MAGIC]) != MAGIC:
        raise CliError("the store's latest epoch is not a memckpt demo's state")
    return arrays


_scratch: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}


def advance(arrays: dict[str, np.ndarray]) -> int:
    """One step: ``iters`` stencil iterations in the window around the torch.

    The window (plus a one-cell halo) is copied out, iterated in scratch
    memory and written back once: the arena sees one write per window cell
    per step, wherever in the step the iterations are. The scratch buffers
    are kept between steps (fresh ones would cost page faults every step)."""
    temp, kappa, state = arrays["temperature"], arrays["conductivity"], arrays["state"]
    step = int(state[S_STEP])
    n, half, iters = int(state[S_N]), int(state[S_WINDOW]), int(state[S_ITERS])
    cy, cx = torch_at(step, n, half)
    y0, y1, x0, x1 = cy - half, cy + half, cx - half, cx + half
    key = (n, half)
    if key not in _scratch:
        _scratch[key] = (np.empty((2 * half + 2, 2 * half + 2)), np.empty((2 * half, 2 * half)),
                         np.empty((2 * half, 2 * half)), np.empty((2 * half, 2 * half)))
    work, k, lap, tmp = _scratch[key]
    work[...] = temp[y0 - 1:y1 + 1, x0 - 1:x1 + 1]
    np.multiply(kappa[y0:y1, x0:x1], RATE, out=k)
    inner = work[1:-1, 1:-1]
    t = half - 4
    for _ in range(iters):
        np.add(work[:-2, 1:-1], work[2:, 1:-1], out=lap)
        lap += work[1:-1, :-2]
        lap += work[1:-1, 2:]
        np.multiply(inner, 4.0, out=tmp)
        lap -= tmp
        lap *= k
        np.subtract(inner, AMBIENT, out=tmp)
        tmp *= COOLING
        lap -= tmp
        inner += lap
        inner[t:t + 8, t:t + 8] += TORCH
    temp[y0:y1, x0:x1] = inner
    state[S_STEP] = step + 1
    return step + 1


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data.cast("B"))
    return h.hexdigest()


# -- the worker process -------------------------------------------------------------------
def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(TAG + json.dumps(dict(fields, ev=event)) + "\n")
    sys.stdout.flush()


def worker(args: argparse.Namespace) -> int:
    """``python -m memckpt _demo-worker``: one of the demo's processes."""
    from .arena import Arena
    from .checkpointer import Checkpointer
    from .kernel import features

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
             pause_s=info.pause_s, total_s=info.total_s, bytes=info.bytes_on_disk)

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


# -- the orchestrator ------------------------------------------------------------------------
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


def prepare_store(args: argparse.Namespace, say: Any) -> tuple[Path, bool]:
    """The store directory, emptied; and whether it is a temporary one."""
    if args.tmp:
        return Path(tempfile.mkdtemp(prefix="memckpt-demo-")), True
    path = Path(args.store or DEFAULT_STORE)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise CliError(f"{path} exists and is not a directory; pick another --store, or --tmp")
        if any(path.iterdir()):
            if not is_store(path):
                raise CliError(f"{path} exists and is not a memckpt store; the demo only deletes "
                               f"its own stores (pick another --store, or --tmp)")
            shutil.rmtree(path)
            say(f"removed the previous demo store at {path}/ (the demo starts from nothing)")
    path.mkdir(parents=True, exist_ok=True)
    return path, False


def is_store(path: Path) -> bool:
    """Whether ``path`` holds a memckpt store (it opens, and its manifests parse)."""
    from .store import Store
    try:
        st = Store(path, create=False)
    except Exception:
        return False
    try:
        st.epochs()
        return True
    except Exception:
        return False
    finally:
        close = getattr(st, "close", None)
        if close is not None:
            close()


def check_tracker(name: str) -> None:
    """Refuse an unknown or unavailable tracker here, before any worker starts."""
    from .kernel import trackers
    known = {t.name: t for t in trackers()}
    if name == "auto":
        if not any(t.available for t in known.values()):
            raise CliError("no dirty-tracking backend works here; see `memckpt doctor`")
        return
    if name not in known:
        raise CliError(f"unknown backend {name!r}; choose 'auto' or one of {', '.join(known)}")
    if not known[name].available:
        raise CliError(f"backend {name!r} is unavailable here: {known[name].reason}")


def pick_kill_step(args: argparse.Namespace) -> int:
    if args.kill_at is not None:
        return args.kill_at
    # after a few checkpoints, before the last one
    lo = min(args.steps - 1, 3 * args.every + 1)
    hi = max(lo, args.steps - args.every - 1)
    return random.randint(lo, hi)


def run_worker(w: Worker, label: str, total: int, *, progress: bool,
               kill_at: int | None = None) -> int:
    try:
        _follow(w, label, total, progress=progress, kill_at=kill_at)
    except BaseException:
        # interrupted (Ctrl-C) or broken: no worker outlives the demo
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        raise
    return w.finish()


def _follow(w: Worker, label: str, total: int, *, progress: bool, kill_at: int | None) -> None:
    with Progress(label, total, unit="steps", enabled=progress,
                  fmt=lambda v: f"{v:.0f}") as bar:
        for ev in w.events():
            if ev["ev"] == "start":
                bar.update(ev["step"])
            elif ev["ev"] == "step":
                bar.update(ev["step"])
                if kill_at is not None and ev["step"] >= kill_at and w.killed_at is None:
                    w.kill()
            elif ev["ev"] == "epoch":
                bar.update(ev["step"], note=f"epoch {ev['epoch']} ({ev['kind']}), "
                                            f"pause {ev['pause_s'] * 1e3:.1f} ms")


def run(args: argparse.Namespace) -> int:
    """``memckpt demo``."""
    if args.size_mib <= 0 or args.steps <= 1 or args.every <= 0 or args.iters <= 0:
        raise CliError("--size-mib, --every and --iters must be positive, and --steps at least 2")
    if args.every >= args.steps:
        raise CliError(f"--every {args.every} must be less than --steps {args.steps}, "
                       f"or there is no checkpoint to resume from but the first")
    if args.kill_at is not None and not 0 < args.kill_at < args.steps:
        raise CliError(f"--kill-at must be a step between 1 and {args.steps - 1}")
    check_tracker(args.tracker)

    progress = args.progress or sys.stderr.isatty()
    out = sys.stdout

    def say(msg: str = "") -> None:
        out.write(msg + "\n")
        out.flush()

    t_all = time.monotonic()
    store, temporary = prepare_store(args, say)
    try:
        return _run(args, store, say, progress, t_all)
    finally:
        if temporary:
            shutil.rmtree(store, ignore_errors=True)


def _run(args: argparse.Namespace, store: Path, say: Any, progress: bool, t_all: float) -> int:
    from .restore import restore
    from .store import Store

    kill_at = pick_kill_step(args)
    n = grid_size(args.size_mib)
    say(f"memckpt demo: 2-D heat diffusion, {n}x{n} float64 plate + float32 material, "
        f"{args.steps} steps, a checkpoint every {args.every}; store {store}/")

    # 1. the run that gets killed
    w1 = Worker("first", args, store)
    rc = run_worker(w1, "worker 1 (checkpointing)", args.steps, progress=progress, kill_at=kill_at)
    s = w1.start
    if not s:
        raise w1.failed(rc)
    say(f"worker 1 (pid {s['pid']}): arena {fmt_bytes(s['arena_bytes'])} = {s['npages']:,} pages; "
        f"torch window {s['window']}x{s['window']} cells, {s['iters']} stencil iterations a step; "
        f"tracker {s['tracker']}")
    if w1.killed_at is None:
        if rc != 0:
            raise w1.failed(rc)
        raise CliError(f"worker 1 finished before step {kill_at}, so it was never killed")
    if rc != -signal.SIGKILL:
        raise w1.failed(rc)
    committed = [int(e.epoch) for e in _epochs(Store, store)]
    last = w1.epochs[-1] if w1.epochs else None
    say(f"  SIGKILL after it reported step {w1.killed_at} ("
        + ("a random step after the third checkpoint" if args.kill_at is None else "--kill-at")
        + f"), {w1.seconds:.1f} s in; it had committed epochs {fmt_epochs(committed)}"
        + (f", the last at step {last['step']}" if last else "")
        + (f"; it died inside the checkpoint of step {w1.inflight}, which was never committed "
           f"(the next open of the store swept its files)" if w1.inflight is not None else ""))
    if not committed:
        raise CliError("worker 1 was killed before its first epoch was committed; "
                       "try a later --kill-at")

    # 2. the run that resumes from the store
    w2 = Worker("resume", args, store)
    rc = run_worker(w2, "worker 2 (resumed)", args.steps, progress=progress)
    if rc != 0 or not w2.done:
        raise w2.failed(rc)
    s2 = w2.start
    say(f"worker 2 (pid {s2['pid']}): resumed from epoch {s2['from_epoch']} (step {s2['step']}), "
        f"restored in {s2['restore_s']:.2f} s; redid steps {s2['step'] + 1}-{w1.killed_at} and ran "
        f"on to step {w2.done['step']} in {w2.seconds:.1f} s")

    # 3. the run that is never interrupted
    w3 = Worker("reference", args, store)
    rc = run_worker(w3, "reference (no checkpoints)", args.steps, progress=progress)
    if rc != 0 or not w3.done:
        raise w3.failed(rc)
    say(f"reference (pid {w3.start['pid']}): the same {args.steps} steps from the start, "
        f"uninterrupted, no checkpoints, in {w3.seconds:.1f} s")

    # 4. the store's last epoch, restored here
    st = Store(store, create=False)
    infos = st.epochs()
    t0 = time.perf_counter()
    with Progress("restore", enabled=progress) as bar:
        bar.tick()
        arena = restore(st, infos[-1].epoch)
        arrays = arena.arrays()
        restored = digest(arrays)
    restore_s = time.perf_counter() - t0
    del arrays
    try:
        arena.close()
    except BufferError:
        pass

    # the table
    rows = []
    for e in infos:
        who = "1" if e.epoch in committed else "2"
        rows.append([e.epoch, e.kind, "-" if e.parent is None else e.parent,
                     (e.label or "").replace("step ", ""), who, f"{e.pages_dirty:,}",
                     f"{100 * e.pages_dirty / s['npages']:.1f}%", f"{e.pages_stored:,}",
                     fmt_bytes(e.bytes_on_disk), f"{e.pause_s * 1e3:.1f}", f"{e.total_s * 1e3:.0f}"])
    say(f"the store's last epoch restored here in {restore_s:.2f} s (memckpt.restore)")
    say()
    say(table(["epoch", "kind", "parent", "step", "worker", "dirty pages", "of arena",
               "stored pages", "bytes", "pause ms", "total ms"], rows))
    incr = [e for e in infos if e.kind == "incremental"]
    if incr:
        pauses = sorted(e.pause_s for e in incr)
        on_disk = sum(e.bytes_on_disk for e in infos)
        say(f"{len(incr)} incremental epochs: pause median {pauses[len(pauses) // 2] * 1e3:.1f} ms "
            f"(max {pauses[-1] * 1e3:.1f} ms), {fmt_bytes(sum(e.bytes_on_disk for e in incr) / len(incr))}"
            f" each on average; the store holds {fmt_bytes(on_disk)} for {len(infos)} epochs, "
            f"where {len(infos)} full copies of the arena would be "
            f"{fmt_bytes(len(infos) * s['arena_bytes'])}")

    # the verdict
    ref, res = w3.done["digest"], w2.done["digest"]
    say()
    names = ["uninterrupted run", "killed + resumed run", f"last epoch ({infos[-1].epoch}) restored"]
    width = max(map(len, names)) + 1
    for what, value in zip(names, (ref, res, restored)):
        say(f"sha256 of the arrays, {(what + ':').ljust(width)} {value}")
    ok = ref == res == restored
    took = time.monotonic() - t_all
    if ok:
        say(f"bit-identical: yes. The run killed at step {w1.killed_at} and resumed from epoch "
            f"{s2['from_epoch']} ended with exactly the bytes of the uninterrupted run, and so "
            f"does the store's last epoch. ({took:.0f} s in all"
            + (")" if args.tmp else f"; `memckpt ls {store}` lists the epochs again)"))
        return 0
    say("bit-identical: NO. The resumed run differs from the uninterrupted one: this is a bug")
    return 1


def _epochs(store_cls: Any, path: Path) -> list[Any]:
    st = store_cls(path, create=False)
    try:
        return list(st.epochs())
    finally:
        close = getattr(st, "close", None)
        if close is not None:
            close()
