"""Ctrl-C and signal handlers during checkpoints (issue 10, item 2).

A Python signal handler's exception (KeyboardInterrupt, or SystemExit from a
SIGTERM handler that calls sys.exit) lands between any two bytecodes of the
main thread. These tests put one at the places that used to tear state, and
fuzz the rest: committed epochs stay whole and restore exactly, nothing
hangs, and the exception still reaches the program.

Deterministic cases inject the exception either directly (a wrapped
``os.rename`` or ``Thread.start`` that does its work, then raises) or as a
real signal (``signal.raise_signal`` from a hook called at the spot), which
is what ``memckpt._signals.deferred()`` must hold back.

Run the fuzz by hand (more trials, or against another tree):
    python tests/test_interrupts.py --trials 400 [--old-src DIR]
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memckpt
from memckpt import _signals
from memckpt.store import writer as store_writer

PS = memckpt.features().page_size
NPAGES = 64
WORKER = Path(__file__).with_name("_interrupt_worker.py")
MODES = ("copy", "sync", "fork", "background")


def _uffd_sync() -> tuple[bool, str]:
    info = next(t for t in memckpt.trackers() if t.name == "uffd-sync")
    return info.available, info.reason


def require_mode(mode: str) -> None:
    if mode == "background":
        ok, why = _uffd_sync()
        if not ok:
            pytest.skip(f"mode 'background' needs the uffd-sync tracker, unavailable here: {why}")


def make_arena() -> tuple[memckpt.Arena, np.ndarray]:
    arena = memckpt.Arena(NPAGES * PS)
    return arena, arena.array("x", (NPAGES, PS), np.uint8)


def sha(arena: memckpt.Arena) -> str:
    return hashlib.sha256(arena.buffer()).hexdigest()


def restored_sha(store: Any, epoch: int) -> str:
    a = memckpt.restore(store, epoch)
    try:
        return sha(a)
    finally:
        a.close()


def tracker_for(mode: str) -> str:
    return "uffd-sync" if mode == "background" else "auto"


# -- memckpt._signals ------------------------------------------------------------------
def test_deferred_holds_sigint_until_the_section_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with _signals.deferred():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
            assert _signals.pending() == (signal.SIGINT,)
            with _signals.deferred():  # nested: the inner end delivers nothing
                pass
            reached.append("after the inner section")
    assert reached == ["after the signal", "after the inner section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _signals.pending() == ()


def test_deferred_runs_a_user_handler_once_after_the_section():
    calls = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))
    try:
        with _signals.deferred():
            signal.raise_signal(signal.SIGUSR1)
            signal.raise_signal(signal.SIGUSR1)  # coalesced, as the kernel does
            assert calls == []
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_deferred_keeps_a_handler_installed_inside_the_section():
    def mine(s: int, f: Any) -> None:
        pass

    old = signal.getsignal(signal.SIGUSR2)
    try:
        with _signals.deferred():
            signal.signal(signal.SIGUSR2, mine)
        assert signal.getsignal(signal.SIGUSR2) is mine
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_interruptible_lets_signals_through_inside_a_section():
    seen = []
    with _signals.deferred():
        with pytest.raises(KeyboardInterrupt):
            with _signals.interruptible():
                signal.raise_signal(signal.SIGINT)
                seen.append("not reached")
        # deferred again after it
        signal.raise_signal(signal.SIGINT)
        seen.append("deferred again")
        with pytest.raises(KeyboardInterrupt):
            with _signals.interruptible():  # delivers what was recorded before it
                seen.append("not reached either")
        seen.append("still in the section")
    assert seen == ["deferred again", "still in the section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_does_nothing_off_the_main_thread():
    got = []

    def run() -> None:
        with _signals.deferred():
            got.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got == [signal.default_int_handler]


def test_a_child_forked_inside_a_section_gets_the_programs_handlers():
    """A fork from another thread while the main thread is in a section: the
    child must not keep the recorder (its Ctrl-C would be recorded for good)."""
    r = _run_child("""
import os, signal, threading
from memckpt import _signals
out = []
def fork():
    pid = os.fork()
    if pid == 0:
        ok = signal.getsignal(signal.SIGINT) is signal.default_int_handler and not _signals._depth
        os._exit(0 if ok else 1)
    out.append(os.waitpid(pid, 0)[1])
with _signals.deferred():
    t = threading.Thread(target=fork)
    t.start()
    t.join()
print("child status", out[0])
""")
    assert r.returncode == 0, r.stderr
    assert "child status 0" in r.stdout, r.stdout


# -- regression: the commit point ------------------------------------------------------
def _rename_then(exc: type[BaseException], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the store's os.rename rename, then raise exc (once)."""
    real = os.rename
    done: list[str] = []

    def rename(src: Any, dst: Any) -> None:
        real(src, dst)
        if not done and str(dst).endswith(".json"):
            done.append(str(dst))
            raise exc()

    monkeypatch.setattr(store_writer.os, "rename", rename)
    return done


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_an_exception_right_after_the_rename_keeps_the_epoch(tmp_path, monkeypatch, exc):
    """Used to: abort() ran and deleted the pack and index of the epoch the
    rename had just committed (verify: "the file is missing")."""
    st = memckpt.Store(tmp_path / "s", create=True)
    arena, x = make_arena()
    with arena:
        x[3] = 7
        x[40] = 9
        w = st.begin("full", layout=arena.layout(), npages=NPAGES)
        w.add_pages(np.arange(NPAGES, dtype=np.uint64), x)
        done = _rename_then(exc, monkeypatch)
        with pytest.raises(exc):
            w.commit(pages_dirty=NPAGES, pause_s=0.0)
        assert done, "the commit never renamed"
        monkeypatch.undo()
        expect = sha(arena)
    st2 = memckpt.Store(tmp_path / "s")  # a fresh open sweeps: nothing of epoch 1 may go
    assert st2.epoch_numbers() == [1]
    st2.verify()
    assert restored_sha(st2, 1) == expect
    # the writer let go of the lock: the next epoch begins at once
    st2.begin("incremental", parent=1, layout=st2.layout(1), npages=NPAGES).abort()


def test_an_exception_right_after_compactions_rename_keeps_the_merged_epoch(tmp_path, monkeypatch):
    """Used to: the merged epoch's new files were deleted by abort() while its
    manifest named them, and the next open swept the old generation."""
    path = tmp_path / "s"
    arena, x = make_arena()
    with arena:
        with memckpt.Checkpointer(arena, path, mode="sync") as ck:
            for i in range(4):
                x[i * 5:i * 5 + 3] = i + 1
                ck.checkpoint()
        expect = sha(arena)
    st = memckpt.Store(path)
    assert st.chain(4) == [1, 2, 3, 4]
    done = _rename_then(KeyboardInterrupt, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        st.compact(1, 4)
    assert done
    monkeypatch.undo()
    st2 = memckpt.Store(path)
    st2.verify()
    assert 4 in st2.epoch_numbers()
    assert st2.manifest(4).get("compacted"), "the merged epoch is the committed one"
    assert restored_sha(st2, 4) == expect
    st2.compact(1, 4)  # finishes retiring the run, as after a crash past the commit point
    assert st2.epoch_numbers() == [4]
    assert restored_sha(st2, 4) == expect


# -- regression: the hand-off to the persist thread --------------------------------------
def _run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter; a hang fails the test instead of the suite."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child hung (killed after {timeout} s); its output: {e.stdout!r} {e.stderr!r}")


_PRELUDE = """
import hashlib, signal, sys, tempfile, threading
import numpy as np
import memckpt
ps = memckpt.features().page_size
arena = memckpt.Arena(64 * ps)
x = arena.array("x", (64, ps), np.uint8)
path = tempfile.mkdtemp() + "/s"
def sha(a):
    return hashlib.sha256(a.buffer()).hexdigest()
def restored(st, e):
    a = memckpt.restore(st, e)
    try:
        return sha(a)
    finally:
        a.close()
"""


@pytest.mark.parametrize("mode", ["copy", "fork", "background"])
def test_keyboardinterrupt_from_thread_start_persists_once_and_never_hangs(mode):
    """Used to: the BaseException handler around Thread.start() persisted the
    epoch a second time in the caller while the started thread persisted it,
    leaving the in-flight count at -1: the next checkpoint() waited forever.
    (The persist thread waits for the next epoch a while before it ends:
    with no wait, each epoch starts one, as each did then.)"""
    require_mode(mode)
    r = _run_child(_PRELUDE + f"""
from memckpt.checkpoint import worker
worker.IDLE_S = 0
ck = memckpt.Checkpointer(arena, path, mode={mode!r}, tracker={tracker_for(mode)!r})
x[1] = 1
ck.checkpoint().result()
import time
# the persist thread ends (IDLE_S = 0) once it has let the epoch go: wait for
# that, so that the next checkpoint starts a thread (a fixed sleep did not
# wait long enough on a loaded machine, and then no start raised)
deadline = time.monotonic() + 60
while any(t.name == "memckpt-persist" for t in threading.enumerate()):
    assert time.monotonic() < deadline, "the persist thread did not end in 60 s"
    time.sleep(0.001)
real = threading.Thread.start
def start(self):
    real(self)
    raise KeyboardInterrupt
threading.Thread.start = start
x[2] = 2
want2 = sha(arena)
try:
    ck.checkpoint()
except KeyboardInterrupt:
    print("interrupt reached the caller")
threading.Thread.start = real
assert ck._inflight.count in (0, 1), ck._inflight.count
x[3] = 3
info = ck.checkpoint().result()  # hung here
want3 = sha(arena)
ck.close()
st = memckpt.Store(path)
st.verify()
print("epochs", st.epoch_numbers())
assert restored(st, 2) == want2 and restored(st, info.epoch) == want3
print("ok")
""")
    assert r.returncode == 0, r.stderr
    assert "interrupt reached the caller" in r.stdout
    assert "epochs [1, 2, 3]" in r.stdout, r.stdout
    assert "ok" in r.stdout


@pytest.mark.parametrize("mode", MODES)
def test_a_signal_between_capture_and_handoff_lands_after_it(mode):
    """A real SIGINT right after the capture (from the checkpointer's clock,
    read between the capture and the in-flight count). Used to: the epoch's
    writer stayed open holding the store's lock, uncounted, so the next
    checkpoint waited for it (10 minutes, then StoreLocked)."""
    require_mode(mode)
    r = _run_child(_PRELUDE + f"""
import time
from memckpt.store import maintenance as store_maintenance
ck = memckpt.Checkpointer(arena, path, mode={mode!r}, tracker={tracker_for(mode)!r})
x[1] = 1
ck.checkpoint().result()
armed = [True]
def clock():
    if armed[0]:
        armed[0] = False
        signal.raise_signal(signal.SIGINT)
    return time.monotonic()
ck._schedule.clock = clock
x[2] = 2
want2 = sha(arena)
try:
    ck.checkpoint()
except KeyboardInterrupt:
    print("interrupt reached the caller")
ck._schedule.clock = time.monotonic
store_maintenance._WRITER_WAIT_S = 20.0  # the old code's wait, shortened
x[3] = 3
info = ck.checkpoint().result()
want3 = sha(arena)
ck.close()
st = memckpt.Store(path)
st.verify()
print("epochs", st.epoch_numbers())
assert restored(st, info.epoch) == want3
if 2 in st.epoch_numbers() and info.epoch == 3:
    assert restored(st, 2) == want2
print("ok")
""")
    assert r.returncode == 0, r.stderr
    assert "interrupt reached the caller" in r.stdout
    assert "ok" in r.stdout


def test_a_signal_in_sync_modes_bookkeeping_never_hangs_the_next_checkpoint():
    """Mode "sync" persists in the caller. A SIGINT inside the bookkeeping after
    the persist (releasing the staging buffer) used to skip the in-flight
    count's decrement: the next checkpoint() waited forever for itself."""
    r = _run_child(_PRELUDE + """
ck = memckpt.Checkpointer(arena, path, mode="sync")
x[1] = 1
ck.checkpoint()
real = ck._capturer._recycle
armed = [True]
def recycle(*args):
    if armed[0]:
        armed[0] = False
        signal.raise_signal(signal.SIGINT)
    real(*args)
ck._capturer._recycle = recycle
x[2] = 2
try:
    ck.checkpoint()
except KeyboardInterrupt:
    print("interrupt reached the caller")
x[3] = 3
info = ck.checkpoint().result()  # hung here
want = sha(arena)
ck.close()
st = memckpt.Store(path)
st.verify()
assert restored(st, info.epoch) == want
print("ok", st.epoch_numbers())
""")
    assert r.returncode == 0, r.stderr
    assert "interrupt reached the caller" in r.stdout
    assert "ok" in r.stdout


_TRAP = """
import time
class Trapped(threading.Condition):
    # takes its lock, then a real SIGINT arrives (once, in the main thread):
    # where CPython's own Condition.__enter__ can be interrupted
    armed = False
    def __enter__(self):
        r = super().__enter__()
        if Trapped.armed and threading.current_thread() is threading.main_thread():
            Trapped.armed = False
            signal.raise_signal(signal.SIGINT)
        return r
ck = memckpt.Checkpointer(arena, path, mode="copy")
x[1] = 1
ck.checkpoint().result()
real = ck._capturer.persist
def slow(cap):
    time.sleep(0.3)  # result() and checkpoint() must wait for it
    return real(cap)
ck._capturer.persist = slow
"""


def test_a_signal_inside_result_waits_never_blocks_the_persist_thread():
    """Used to: a SIGINT right after PendingEpoch.result()'s Event.wait took the
    event's lock left it held: the persist thread's set() blocked for good,
    and close() waited forever (found by the fuzz, fork mode)."""
    r = _run_child(_PRELUDE + _TRAP + """
x[2] = 2
p = ck.checkpoint()
p._done._cond = Trapped(threading.Lock())
Trapped.armed = True
try:
    p.result()
except KeyboardInterrupt:
    print("interrupt reached the caller")
ck.close()  # hung here
print("ok", memckpt.Store(path).epoch_numbers())
""")
    assert r.returncode == 0, r.stderr
    assert "interrupt reached the caller" in r.stdout
    assert "ok [1, 2]" in r.stdout, r.stdout


def test_a_signal_inside_the_wait_for_the_previous_epoch_never_blocks_it():
    """The same in checkpoint()'s wait for the epoch in flight (a Condition
    over an RLock): the lock stayed held by the main thread and the persist
    thread's bookkeeping blocked for good."""
    r = _run_child(_PRELUDE + _TRAP + """
ck._inflight.idle = Trapped(threading.RLock())
x[2] = 2
ck.checkpoint()
Trapped.armed = True
x[3] = 3
try:
    ck.checkpoint()
except KeyboardInterrupt:
    print("interrupt reached the caller")
ck._capturer.persist = real
want = sha(arena)
info = ck.checkpoint().result()  # hung here
ck.close()
st = memckpt.Store(path)
st.verify()
assert restored(st, info.epoch) == want
print("ok", st.epoch_numbers())
""")
    assert r.returncode == 0, r.stderr
    assert "interrupt reached the caller" in r.stdout
    assert "ok [1, 2, 3]" in r.stdout, r.stdout


def test_sync_persist_interrupted_carries_its_pages_to_the_next_epoch(tmp_path, monkeypatch):
    """Mode "sync": Ctrl-C during the persist aborts the epoch (the store stays
    at its last commit), reaches the caller, and the next epoch holds the
    interrupted one's pages."""
    arena, x = make_arena()
    with arena:
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="sync") as ck:
            x[1] = 1
            ck.checkpoint()
            real = store_writer.EpochWriter.add_pages

            def add_pages(self: Any, pages: Any, data: Any) -> None:
                signal.raise_signal(signal.SIGINT)
                real(self, pages, data)

            monkeypatch.setattr(store_writer.EpochWriter, "add_pages", add_pages)
            x[2] = 2
            with pytest.raises(KeyboardInterrupt):
                ck.checkpoint()
            monkeypatch.undo()
            assert ck.store.epoch_numbers() == [1]
            x[5] = 5
            info = ck.checkpoint().result()
            want = sha(arena)
        st = memckpt.Store(tmp_path / "s")
        st.verify()
        assert info.kind == "incremental" and restored_sha(st, info.epoch) == want


def test_a_signal_inside_rollback_lands_after_its_bookkeeping(tmp_path, monkeypatch):
    """Used to: a SIGINT after rollback() collected the tracker's pages lost
    them: the next epoch, an increment, missed pages the program had written."""
    arena, x = make_arena()
    with arena:
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="copy") as ck:
            x[1] = 1
            ck.checkpoint().result()
            x[2] = 2
            ck.checkpoint().result()
            x[9] = 9  # written since the head: rollback must write it back

            real = ck.store.changed_pages

            def changed_pages(a: int, b: int) -> Any:
                signal.raise_signal(signal.SIGINT)
                return real(a, b)

            monkeypatch.setattr(ck.store, "changed_pages", changed_pages)
            with pytest.raises(KeyboardInterrupt):
                ck.rollback(1)
            monkeypatch.undo()
            x[20] = 20
            info = ck.checkpoint().result()
            want = sha(arena)
        st = memckpt.Store(tmp_path / "s")
        assert restored_sha(st, info.epoch) == want


def test_a_signal_inside_close_closes_whole(tmp_path, monkeypatch):
    """Used to: a SIGINT in close() left the checkpointer marked closed with its
    tracker still open."""
    arena, x = make_arena()
    with arena:
        ck = memckpt.Checkpointer(arena, tmp_path / "s")
        x[1] = 1
        ck.checkpoint().result()
        tracker = ck.tracker
        real = tracker.close

        def close() -> None:
            signal.raise_signal(signal.SIGINT)
            real()

        monkeypatch.setattr(tracker, "close", close)
        with pytest.raises(KeyboardInterrupt):
            ck.close()
        assert ck.closed and tracker.closed


# -- the interrupt fuzz -----------------------------------------------------------------
class _Worker:
    """One tests/_interrupt_worker.py process and a thread reading its lines."""

    def __init__(self, errlog: Path, old_src: str | None) -> None:
        if old_src is None:
            argv = [sys.executable, "-u", str(WORKER)]
        else:  # run the worker on another source tree (the code before a fix)
            boot = ("import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path "
                    "if 'editable' not in type(f).__module__]; "
                    f"sys.path.insert(0, {old_src!r}); sys.argv = [{str(WORKER)!r}]; "
                    f"runpy.run_path({str(WORKER)!r}, run_name='__main__')")
            argv = [sys.executable, "-u", "-c", boot]
        self.err = open(errlog, "a")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, cwd=str(WORKER.parent))
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, req: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # the worker's faulthandler: its stacks
            time.sleep(0.5)
        self.proc.kill()
        self.proc.wait()
        self.err.close()


def _until(w: _Worker, pred: Any, timeout: float, got: list[str]) -> str | None:
    """Collect lines until one satisfies pred (returned), EOF or the timeout (None)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            line = w.lines.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            return None
        got.append(line)
        if pred(line):
            return line


def check_trial(path: Path, lines: list[str], n: int) -> list[str]:
    """What is wrong with the store a trial left: verify, and every epoch the
    worker saw committed present (unless a prune or compaction it ran may
    have removed it) and restoring the content it recorded, bit for bit."""
    committed: dict[int, str] = {}
    may_go: set[int] = set()
    for line in lines:
        f = line.split()
        if len(f) >= 4 and f[0] == "C" and f[1] == str(n) and len(f[3]) == 64:
            committed[int(f[2])] = f[3]
        elif len(f) >= 2 and f[0] == "M" and f[1] == str(n):
            may_go.update(int(e) for e in f[2:])
    if not path.exists():
        return [] if not committed else [f"the store {path} is gone"]
    bad = []
    try:
        st = memckpt.Store(path)
        st.verify()
    except Exception as exc:  # noqa: BLE001 - the damage is the finding
        return [f"verify: {type(exc).__name__}: {exc}"]
    have = set(st.epoch_numbers())
    for e, digest in sorted(committed.items()):
        if e not in have:
            if e not in may_go:
                bad.append(f"epoch {e}, reported committed, is missing")
            continue
        try:
            got = restored_sha(st, e)
        except Exception as ex:  # noqa: BLE001
            bad.append(f"epoch {e}: restore failed: {type(ex).__name__}: {ex}")
            continue
        if got != digest:
            bad.append(f"epoch {e} restores other content than was checkpointed")
    return bad


def run_fuzz(trials: list[dict[str, Any]], root: Path, *, workers: int = 2,
             old_src: str | None = None, hang_s: float = 60.0,
             max_delay: float = 0.12, seed: int = 0) -> dict[str, Any]:
    """Run the trials over `workers` worker processes; returns the counts and
    the findings (hangs, damage, interrupts that did not reach the top)."""
    rng = random.Random(seed)
    for t in trials:
        t["delay"] = rng.uniform(0.0, max_delay)
    todo: queue.Queue[dict[str, Any]] = queue.Queue()
    for t in trials:
        todo.put(t)
    res: dict[str, Any] = {"trials": 0, "hangs": [], "damaged": [], "lost": [], "epochs": 0,
                           "by_mode": {}, "elsewhere": []}
    lock = threading.Lock()

    def drive(k: int) -> None:
        w: _Worker | None = None
        while True:
            try:
                t = todo.get_nowait()
            except queue.Empty:
                break
            if w is None:
                w = _Worker(root / f"worker{k}.err", old_src)
            n = t["trial"]
            lines: list[str] = []
            w.send({key: t[key] for key in ("trial", "store", "mode", "seed", "sigterm", "last")})
            tag = f"trial {n} ({t['mode']}, {'SIGTERM' if t['sigterm'] else 'SIGINT'}, seed {t['seed']})"
            if _until(w, lambda s: s == f"READY {n}", hang_s, lines) is None:
                with lock:
                    res["hangs"].append(f"{tag}: never started; {lines[-3:]}")
                w.kill()
                w = None
                continue
            time.sleep(t["delay"])
            w.proc.send_signal(signal.SIGTERM if t["sigterm"] else signal.SIGINT)
            want = "SystemExit 3" if t["sigterm"] else "KeyboardInterrupt"
            if t["last"]:
                _until(w, lambda s: False, hang_s, lines)  # to EOF
                try:
                    code = w.proc.wait(timeout=hang_s)
                except subprocess.TimeoutExpired:
                    code = None
                top = None if code is None else (
                    "KeyboardInterrupt" if code == -signal.SIGINT else f"SystemExit {code}")
                w.kill()
                w = None
            else:
                got = _until(w, lambda s: s.startswith(f"TOP {n} "), hang_s, lines)
                top = None if got is None else got.split(None, 2)[2]
                if got is None:
                    lines.append(f"worker exit status {w.proc.poll()}")
                    w.kill()
                    w = None
            with lock:
                res["trials"] += 1
                res["by_mode"][t["mode"]] = res["by_mode"].get(t["mode"], 0) + 1
            stuck = [s for s in lines if s.startswith("STUCK")]
            if top is None or stuck:
                with lock:
                    res["hangs"].append(f"{tag}: {stuck or 'no exit'}; last lines {lines[-3:]}")
            elif top != want:
                where = [s for s in lines if s.startswith("UNRAISABLE")]
                ours = [s for s in where if " in memckpt" in s]
                with lock:
                    if where and not ours:
                        # CPython drops an exception raised in a finalizer: one of
                        # the program's own, not memckpt's (reported, not failed)
                        res["elsewhere"].append(f"{tag}: {where}")
                    else:
                        res["lost"].append(f"{tag}: the top saw {top!r}, not {want} {where}")
            bad = check_trial(Path(t["store"]), lines, n)
            with lock:
                res["epochs"] += len([s for s in lines if s.startswith("C ")])
                if bad:
                    res["damaged"].append(f"{tag}: {bad[:3]}")
        if w is not None:
            w.proc.stdin.close()  # type: ignore[union-attr]
            try:
                if w.proc.wait(timeout=hang_s) != 0:
                    with lock:
                        res["hangs"].append(f"worker {k} exited with {w.proc.returncode}")
            except subprocess.TimeoutExpired:
                with lock:
                    res["hangs"].append(f"worker {k} did not exit after its last trial")
            w.kill()

    ts = [threading.Thread(target=drive, args=(k,)) for k in range(workers)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return res


def make_trials(root: Path, per_mode: int, modes: list[str], seed: int) -> list[dict[str, Any]]:
    """per_mode trials of each mode, a third of them SIGTERM into a handler
    that calls sys.exit(3); in each mode a few end the worker process itself."""
    rng = random.Random(seed)
    trials = []
    n = 0
    for mode in modes:
        for i in range(per_mode):
            n += 1
            trials.append({"trial": n, "store": str(root / f"t{n}"), "mode": mode,
                           "seed": rng.randrange(1 << 30), "sigterm": i % 3 == 2,
                           "last": i % 25 == 24})
    rng.shuffle(trials)
    return trials


def fuzz_modes() -> tuple[list[str], list[str]]:
    ok, why = _uffd_sync()
    skipped = [] if ok else [f"background: the uffd-sync tracker is unavailable ({why})"]
    return [m for m in MODES if ok or m != "background"], skipped


def _report(res: dict[str, Any]) -> str:
    return (f"{res['trials']} trials {res['by_mode']}, {res['epochs']} epochs checked: "
            f"{len(res['hangs'])} hangs, {len(res['damaged'])} damaged, "
            f"{len(res['lost'])} interrupts lost; {len(res['elsewhere'])} dropped by CPython in "
            f"a finalizer outside memckpt\n" +
            "\n".join(res["hangs"][:5] + res["damaged"][:5] + res["lost"][:5] + res["elsewhere"][:5]))


def _fuzz(tmp_path: Path, per_mode: int, seed: int) -> None:
    modes, skipped = fuzz_modes()
    for why in skipped:
        print(f"interrupt fuzz skips mode {why}")
    trials = make_trials(tmp_path, per_mode, modes, seed)
    res = run_fuzz(trials, tmp_path, seed=seed)
    print(_report(res))
    assert res["trials"] == len(trials)
    assert not res["hangs"] and not res["damaged"] and not res["lost"], _report(res)


def test_interrupt_fuzz(tmp_path):
    """SIGINT (and SIGTERM into a handler calling sys.exit) at random instants
    into checkpoint loops in every mode: 0 hangs, 0 damaged or missing
    committed epochs, every committed epoch restores exactly, and the
    exception reaches the top every time. 200+ trials."""
    modes, _ = fuzz_modes()
    _fuzz(tmp_path, per_mode=-(-204 // len(modes)), seed=10)


@pytest.mark.slow
def test_interrupt_fuzz_long(tmp_path):
    _fuzz(tmp_path, per_mode=500, seed=11)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="run the interrupt fuzz by hand")
    ap.add_argument("--trials", type=int, default=200, help="in total, over the modes")
    ap.add_argument("--old-src", help="a src/ directory to run the worker on (e.g. the code before a fix)")
    ap.add_argument("--hang-s", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--keep", help="put the stores and the workers' stderr here, and keep them")
    a = ap.parse_args()
    ms = [m for m in a.modes.split(",") if m in fuzz_modes()[0]]
    with tempfile.TemporaryDirectory(dir=a.keep) as d:
        if a.keep:
            d = a.keep
        t0 = time.monotonic()
        r = run_fuzz(make_trials(Path(d), -(-a.trials // len(ms)), ms, a.seed), Path(d),
                     old_src=a.old_src, hang_s=a.hang_s, seed=a.seed)
        print(_report(r))
        print(f"{time.monotonic() - t0:.1f} s")
