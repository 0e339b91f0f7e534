"""The process tests/test_fork_safety.py runs each fork scenario in.

A child of fork() must exit the way a program's child does: sys.exit() or a
return from main, with atexit handlers, weakref finalizers and the
interpreter's teardown running (that is where the damage was done: the
inherited tracker's close, the epoch writer's __del__). That cannot happen
inside pytest, whose own frames would go on running in the child, so every
scenario runs here, in a fresh interpreter: ``python _fork_worker.py JSON``
prints one JSON line: {"ok": bool, "why": str, ...}.

Scenarios (the "scenario" key):

- ``child``: checkpoints, forks one child between epochs and one right
  after a checkpoint() returned (its persist still in flight, held back by
  a gate); each exits normally / calls close() on the inherited
  Checkpointer / tries to checkpoint / ... or lives on through the next
  epochs and is SIGKILLed. Every epoch must restore bit for bit.
- ``pool``: a fork-started multiprocessing.Pool made while a persist holds
  the store's lock; the next checkpoints must not be refused.
- ``writer``: a bare EpochWriter inherited by a child that aborts it, lets
  it go out of scope and exits: the parent's files and lock must be intact.
- ``fuzz``: a checkpoint loop with children by os.fork (from the main
  thread and from another thread, during checkpoints and persists) and by
  fork-started Pools (maxtasksperchild=1, so the pool's own thread forks at
  random instants), exiting normally, closing the inherited Checkpointer,
  or killed.
"""
from __future__ import annotations

import atexit
import faulthandler
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

import memckpt
from memckpt.errors import ForkDetached
from memckpt.store import writer as store_writer

PAGES = 64
HANG_S = 60.0  # a child or a persist this late is hung (generous: the machine is shared)

CK: memckpt.Checkpointer | None = None  # the checkpointer children inherit (Pool tasks use it)
STORE = ""


# -- a gate that holds an epoch's commit, so that a fork lands while the persist runs --------
class Gate:
    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def arm(self) -> None:
        self.entered.clear()
        self.go.clear()
        self.armed = True

    def release(self) -> None:
        self.armed = False
        self.go.set()


GATE = Gate()
_commit = store_writer.EpochWriter.commit


def _gated_commit(self: Any, **kw: Any) -> Any:
    if GATE.armed and os.getpid() == PARENT:
        GATE.entered.set()
        GATE.go.wait(HANG_S)
    return _commit(self, **kw)


store_writer.EpochWriter.commit = _gated_commit  # type: ignore[method-assign]
PARENT = os.getpid()


def wait_child(pid: int) -> int:
    """The child's wait status; SIGKILL it and fail if it hangs."""
    deadline = time.monotonic() + HANG_S
    while True:
        r, st = os.waitpid(pid, os.WNOHANG)
        if r == pid:
            return st
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"fork child {pid} hung (still running after {HANG_S:g} s)")
        time.sleep(0.005)


def child_exit_code(st: int) -> int | str:
    if os.WIFSIGNALED(st):
        return f"signal {os.WTERMSIG(st)}"
    return os.WEXITSTATUS(st)


class Loop:
    """A checkpoint loop that remembers what every epoch must hold."""

    def __init__(self, backend: str, mode: str, seed: int) -> None:
        global CK, STORE
        self.dir = tempfile.mkdtemp(prefix="memckpt-fork-")
        STORE = self.path = os.path.join(self.dir, "store")
        self.rng = np.random.default_rng(seed)
        self.arena = memckpt.Arena(PAGES * 4096)
        self.a = self.arena.array("a", (PAGES, self.arena.page_size), np.uint8)
        CK = self.ck = memckpt.Checkpointer(self.arena, self.path, tracker=backend, mode=mode)
        self.expect: dict[int, bytes] = {}
        self.pending: list[memckpt.PendingEpoch] = []

    def write(self) -> None:
        pages = self.rng.choice(PAGES, size=int(self.rng.integers(1, 8)), replace=False)
        for p in pages:
            self.a[p, self.rng.integers(0, self.a.shape[1], size=4)] = self.rng.integers(1, 255)

    def checkpoint(self) -> memckpt.PendingEpoch:
        pe = self.ck.checkpoint()
        self.expect[pe.epoch] = self.a.tobytes()  # the writers were paused: this is the epoch
        self.pending.append(pe)
        return pe

    def finish(self) -> dict[str, Any]:
        """Every epoch durable, and restoring bit for bit what it held."""
        for pe in self.pending:
            pe.result(HANG_S)
        self.ck.close()
        bad = []
        st = memckpt.Store(self.path)
        for e, want in sorted(self.expect.items()):
            got = memckpt.restore(st, e)
            if got.arrays()["a"].tobytes() != want:
                dirty = [pe.pages_dirty for pe in self.pending if pe.epoch == e]
                bad.append({"epoch": e, "pages_dirty": dirty})
            got.close()
        return {"epochs": len(self.expect), "mismatches": bad, "ok": not bad,
                "why": f"epochs restore other content: {bad}" if bad else ""}


# -- what a child does -------------------------------------------------------------------
def forget_parent_pools() -> None:
    """What multiprocessing does in its own children (Process._bootstrap):
    the parent's Pools are not this child's. Without it, the exit of a plain
    os.fork() child runs the Pools' finalizers, which SIGTERM the parent's
    pool workers (multiprocessing's pitfall, not memckpt's)."""
    import multiprocessing.process
    import multiprocessing.util
    multiprocessing.util._finalizer_registry.clear()
    multiprocessing.process._children = set()


def child_main(how: str) -> None:
    """Runs in the child, which then leaves by sys.exit (finalizers run)."""
    assert CK is not None
    forget_parent_pools()
    fin = weakref.finalize(CK, lambda: None)  # noqa: F841 - a finalizer to run at exit
    atexit.register(lambda: None)
    if how == "close":
        CK.close()
    elif how == "with":
        with CK:
            pass
    elif how == "checkpoint":
        try:
            CK.checkpoint()
        except ForkDetached as e:
            if e.owner != PARENT or f"process {PARENT}" not in str(e):
                sys.exit(3)
        else:
            sys.exit(2)
        try:
            CK.tracker.collect()
        except ForkDetached:
            pass
        else:
            sys.exit(4)
        CK.close()
    elif how == "read":
        st = memckpt.Store(STORE)
        e = st.latest()
        if e is not None:
            memckpt.restore(st, e).close()
    elif how == "kill":
        time.sleep(HANG_S)
    elif how == "own":
        # the child's own copy of the arena, checkpointed into a store of its own
        assert CK is not None
        arena = CK.arena
        CK.close()
        with memckpt.Checkpointer(arena, STORE + "-child", tracker=CK.tracker.backend) as ck:
            arena.arrays()["a"][0, 0] ^= 1
            ck.checkpoint().result()
            ck.checkpoint().result()
    sys.exit(0)


def fork_child(how: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            child_main(how)
        except SystemExit:
            raise
        except BaseException:
            traceback.print_exc()
            sys.exit(1)
    return pid


def pool_task(how: str) -> str:
    """In a Pool worker: what a child of fork() may and may not do."""
    try:
        if how == "close":
            assert CK is not None
            CK.close()
        elif how == "checkpoint":
            assert CK is not None
            try:
                CK.checkpoint()
            except ForkDetached:
                return "refused"
            return "checkpointed!"
        elif how == "read":
            st = memckpt.Store(STORE)
            e = st.latest()
            if e is not None:
                memckpt.restore(st, e).close()
        return "ok"
    except BaseException as e:
        return f"{type(e).__name__}: {e}"


# -- scenarios --------------------------------------------------------------------------
def scenario_child(req: dict[str, Any]) -> dict[str, Any]:
    """Two children doing the same: one forked between epochs (nothing in
    flight: at its exit the interpreter frees the inherited Checkpointer and
    tracker), one while an epoch persists (held by the gate: the child
    inherits the lock, the writer, the persist's state). A child to be
    killed lives on through the parent's next epochs."""
    loop = Loop(req["backend"], req["mode"], req.get("seed", 1))
    how = req["how"]
    for _ in range(2):
        loop.write()
        loop.checkpoint().result(HANG_S)
    pids = [fork_child(how)]
    codes = []
    if how != "kill":
        codes.append(child_exit_code(wait_child(pids.pop())))
    loop.write()
    gated = loop.ck.mode != "sync"
    if gated:
        GATE.arm()
    pe = loop.checkpoint()
    if gated:
        GATE.entered.wait(HANG_S)  # the persist holds the lock and the epoch's files now
    pids.append(fork_child(how))
    loop.write()  # the parent goes on writing while its epoch persists
    if how != "kill":  # the child is gone before the parent's persist ends
        codes.append(child_exit_code(wait_child(pids.pop())))
    GATE.release()
    pe.result(HANG_S)
    for _ in range(3):
        loop.write()
        loop.checkpoint().result(HANG_S)
    for pid in pids:  # the ones to kill, alive through the epochs above
        os.kill(pid, signal.SIGKILL)
        codes.append(child_exit_code(wait_child(pid)))
    out = loop.finish()
    want = f"signal {signal.SIGKILL}" if how == "kill" else 0
    if any(c != want for c in codes):
        out.update(ok=False, why=f"the children ended with {codes}, not {want}; {out['why']}")
    out["children"] = codes
    return out


def scenario_pool(req: dict[str, Any]) -> dict[str, Any]:
    loop = Loop(req["backend"], req["mode"], 2)
    loop.write()
    loop.checkpoint().result(HANG_S)
    loop.write()
    GATE.arm()
    pe = loop.checkpoint()
    GATE.entered.wait(HANG_S)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:  # its workers are forked while the persist holds the lock
        GATE.release()
        pe.result(HANG_S)
        errors = []
        for _ in range(3):
            loop.write()
            try:
                loop.checkpoint().result(HANG_S)
            except memckpt.StoreLocked as e:
                errors.append(str(e))
        res = pool.map(pool_task, ["read", "checkpoint", "close", "read"])
    out = loop.finish()
    if errors:
        out.update(ok=False, why=f"checkpoints refused while the Pool lived: {errors}")
    elif res != ["ok", "refused", "ok", "ok"]:
        out.update(ok=False, why=f"pool tasks answered {res}")
    return out


def scenario_writer(req: dict[str, Any]) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="memckpt-fork-")
    st = memckpt.Store(os.path.join(d, "s"), create=True)
    ps = st.page_size
    data = np.arange(4 * ps, dtype=np.uint64).astype(np.uint8).reshape(4, ps)
    data[:, 0] = 1
    w = st.begin(kind="full", npages=4)
    w.add_pages(np.arange(4, dtype=np.uint64), data)
    files = sorted(os.listdir(st.path))
    lock_before = (st.path / "lock").read_bytes()
    pid = os.fork()
    if pid == 0:
        how = req["how"]
        if how == "abort":
            w.abort()
        elif how == "commit":
            try:
                w.commit(pages_dirty=4, pause_s=0.0)
            except ForkDetached:
                pass
            else:
                sys.exit(2)
        elif how == "with":
            with w:
                pass
        sys.exit(0)  # otherwise: __del__ at the child's teardown
    code = child_exit_code(wait_child(pid))
    now = sorted(os.listdir(st.path))
    lock_after = (st.path / "lock").read_bytes()
    info = w.commit(pages_dirty=4, pause_s=0.0)
    out = np.zeros((4, ps), np.uint8)
    memckpt.Store(st.path).read_into(info.epoch, out)
    # the lock is free once the parent committed, even though the child held a copy
    again = st.begin(kind="full", npages=4)
    again.abort()
    why = []
    if code != 0:
        why.append(f"the child exited with {code}")
    if now != files:
        why.append(f"the child changed the store's files: {files} -> {now}")
    if lock_after != lock_before:
        why.append(f"the child rewrote the lock file: {lock_before!r} -> {lock_after!r}")
    if not np.array_equal(out, data):
        why.append("the epoch does not restore what was written")
    return {"ok": not why, "why": "; ".join(why)}


def scenario_fuzz(req: dict[str, Any]) -> dict[str, Any]:
    rnd = random.Random(req["seed"])
    loop = Loop(req["backend"], req["mode"], req["seed"])
    ctx = multiprocessing.get_context("fork")
    children: list[tuple[int, str]] = []
    pools: list[tuple[Any, list[Any]]] = []
    thread_children: list[int] = []
    kinds = ["exit", "close", "with", "checkpoint", "read", "kill"]
    events: list[str] = []

    def thread_fork(delay: float) -> None:
        time.sleep(delay)
        pid = os.fork()
        if pid == 0:
            # a child forked off another thread, maybe while the main one
            # holds the checkpointer's lock in checkpoint(): its close must
            # neither wait nor touch the parent's objects. (The forking thread
            # is all the child has: it ends with os._exit after close.)
            try:
                assert CK is not None
                CK.close()
                try:
                    CK.checkpoint()
                except ForkDetached:
                    os._exit(0)
                os._exit(2)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        thread_children.append(pid)

    def reap(final: bool) -> None:
        for pid, how in list(children):
            if how == "kill" and (final or rnd.random() < 0.5):
                os.kill(pid, signal.SIGKILL)
            r, st = (pid, wait_child(pid)) if final else os.waitpid(pid, os.WNOHANG)
            if r == pid:
                children.remove((pid, how))
                want = f"signal {signal.SIGKILL}" if how == "kill" else 0
                if child_exit_code(st) != want:
                    raise AssertionError(f"fork child ({how}) ended with {child_exit_code(st)}")

    for step in range(req["rounds"]):
        loop.write()
        t = None
        if rnd.random() < 0.3:
            t = threading.Thread(target=thread_fork, args=(rnd.random() * 0.004,))
            t.start()
        if rnd.random() < 0.2:
            how = rnd.choice(kinds)
            children.append((fork_child(how), how))
            events.append(f"{step}: fork {how} between epochs")
        pe = loop.checkpoint()  # no gate: whatever the persist is doing
        r = rnd.random()
        if r < 0.35:
            how = rnd.choice(kinds)
            children.append((fork_child(how), how))
            events.append(f"{step}: fork {how} during persist")
        elif r < 0.5:
            pool = ctx.Pool(2, maxtasksperchild=1)
            tasks = [pool.apply_async(pool_task, (rnd.choice(["read", "close", "checkpoint"]),))
                     for _ in range(3)]
            pools.append((pool, tasks))
            events.append(f"{step}: pool during persist")
        loop.write()  # the program goes on while the epoch persists
        if rnd.random() < 0.5:
            pe.result(HANG_S)
        if t is not None:
            t.join(HANG_S)
        if pools and rnd.random() < 0.3:
            pool, tasks = pools.pop(0)
            for task in tasks:
                got = task.get(HANG_S)
                if got not in ("ok", "refused"):
                    raise AssertionError(f"a pool task answered {got!r}")
            if rnd.random() < 0.5:
                pool.close()  # the workers exit as multiprocessing's do
                pool.join()
            else:
                # killed (SIGTERM). Not SIGKILL: a worker killed while it
                # holds the task queue's lock hangs terminate() itself
                pool.terminate()
        reap(False)
    for pool, tasks in pools:
        for task in tasks:
            got = task.get(HANG_S)
            if got not in ("ok", "refused"):
                raise AssertionError(f"a pool task answered {got!r}")
        pool.terminate()
    reap(True)
    for pid in thread_children:
        code = child_exit_code(wait_child(pid))
        if code != 0:
            raise AssertionError(f"a child forked off a thread ended with {code}")
    out = loop.finish()
    out["events"] = len(events)
    return out


SCENARIOS = {"child": scenario_child, "pool": scenario_pool, "writer": scenario_writer,
             "fuzz": scenario_fuzz}


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where a hung run is stuck
    # Python >= 3.12 warns on fork() with threads alive: forking so is the point here
    warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                            category=DeprecationWarning)
    req = json.loads(sys.argv[1])
    try:
        out = SCENARIOS[req["scenario"]](req)
    except BaseException as e:
        out = {"ok": False, "why": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    if os.getpid() == PARENT:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
