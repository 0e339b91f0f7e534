"""``memckpt demo``: checkpoint a simulation, kill it, resume it, prove nothing was lost.

The orchestrator runs three worker processes of ``python -m memckpt
_demo-worker`` (:mod:`.demo_worker`; the simulation is :mod:`.demo_sim`):

1. ``first``: lays the arena out, checkpoints every ``every`` steps (epoch 0
   is full, then incrementals), and is killed with SIGKILL at a random step;
2. ``resume``: :meth:`Checkpointer.resume` restores the store's latest
   committed epoch in a fresh process and continues that chain to the end;
3. ``reference``: the same simulation from the start, with no checkpoints.

Then the store's last epoch is restored once more (:func:`memckpt.restore`),
and the three results are compared by SHA-256 of every array's bytes. The
demo writes as it goes, so its run returns an exit status, not a report.
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .base import COMPRESSORS, CliError, Command, positive, progress_arg
from .demo_sim import digest, grid_size
from .demo_worker import Worker
from .output import Progress, fmt_bytes, fmt_epochs, table

DEFAULT_STORE = "memckpt-demo"


def arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--store", metavar="PATH",
                   help=f"the store directory (default: ./{DEFAULT_STORE}); deleted first if it "
                        "is a memckpt store, refused if it is anything else")
    m.add_argument("--tmp", action="store_true",
                   help="use a temporary store, removed at the end")
    m.add_argument("--size-mib", type=positive, default=384, metavar="MIB",
                   help="arena size in MiB (default: 384)")
    m.add_argument("--steps", type=positive, default=400, help="simulation steps (default: 400)")
    m.add_argument("--every", type=positive, default=25, metavar="K",
                   help="checkpoint every K steps (default: 25)")
    m.add_argument("--iters", type=positive, default=4, metavar="N",
                   help="stencil iterations per step: compute between checkpoints (default: 4)")
    m.add_argument("--tracker", default="auto",
                   help="dirty-tracking backend (default: auto; see `memckpt doctor`)")
    m.add_argument("--compress", choices=COMPRESSORS, default=None,
                   help="compress pages in the store (default: none)")
    m.add_argument("--kill-at", type=positive, default=None, metavar="STEP",
                   help="the step at which worker 1 is killed (default: a random step after the "
                        "third checkpoint)")
    progress_arg(m)


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
    from ..store import Store
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
    from ..kernel import trackers
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
    from ..restore import restore
    from ..store import Store

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
                     fmt_bytes(e.bytes_on_disk), f"{e.pause_s * 1e3:.1f}",
                     "-" if e.call_s is None else f"{e.call_s * 1e3:.1f}", f"{e.total_s * 1e3:.0f}"])
    say(f"the store's last epoch restored here in {restore_s:.2f} s (memckpt.restore)")
    say()
    say(table(["epoch", "kind", "parent", "step", "worker", "dirty pages", "of arena",
               "stored pages", "bytes", "pause ms", "call ms", "total ms"], rows))
    incr = [e for e in infos if e.kind == "incremental"]
    if incr:
        pauses = sorted(e.pause_s for e in incr)
        calls = sorted(e.call_s for e in incr if e.call_s is not None)
        call = f", checkpoint() call median {calls[len(calls) // 2] * 1e3:.1f} ms" if calls else ""
        on_disk = sum(e.bytes_on_disk for e in infos)
        say(f"{len(incr)} incremental epochs: pause median {pauses[len(pauses) // 2] * 1e3:.1f} ms "
            f"(max {pauses[-1] * 1e3:.1f} ms){call}, {fmt_bytes(sum(e.bytes_on_disk for e in incr) / len(incr))}"
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


COMMAND = Command(
    "demo", arguments, run,
    help="checkpoint a simulation, SIGKILL it, resume it, check bit-identity",
    description="Run a 2-D heat-diffusion simulation (a torch moving over a plate; a few hundred MiB "
                "of numpy arrays in an arena) in a worker process that checkpoints every --every "
                "steps; kill it with SIGKILL at a random step; resume from the store's latest epoch "
                "in a new process and run to the end; run the same simulation uninterrupted; and "
                "show that both end bit-identical, with the table of epochs (dirty pages, bytes, "
                "pause). The store is emptied first.",
    examples="  memckpt demo                         the default run (about a minute)\n"
             "  memckpt demo --tmp --size-mib 64     small, in a temporary store\n"
             "  memckpt demo --tracker mprotect --compress zstd --kill-at 150\n"
             "  memckpt ls memckpt-demo              the store it leaves behind")
