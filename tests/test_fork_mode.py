"""Fork snapshots at the binding + store level (csrc/capture_fork.c,
memckpt.capture.forksnap, EpochWriter.external_target/adopt): a forked child writes
the epoch's pack and index from its copy-on-write image.

- the epochs read back bit for bit (Store.read_into) and pass Store.verify,
  full and incremental, with zero and duplicate pages; the child's pack and
  index are byte-identical to what add_pages writes for the same content;
- the parent (and its threads) writing while the child runs, and during the
  fork itself, never reach the epoch: it holds one instant;
- dirty tracking in the parent stays exact across the fork, per backend;
- a child that fails or is killed mid-write leaves the store at its last
  committed epoch and raises ForkChildError naming pid, epoch and signal;
- 1,000 checkpoints: no child left, fd count flat.
"""
from __future__ import annotations

import errno
import gc
import glob
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt import _core
from memckpt.errors import CorruptionError, ForkChildError
from memckpt.capture.forksnap import ForkScratch, ForkSnapshot
from memckpt.store import Store

from conftest import pages_view, touch


def children() -> set[int]:
    """Pids of this process's children (every thread's), from /proc."""
    out: set[int] = set()
    for f in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            out.update(int(p) for p in Path(f).read_text().split())
        except FileNotFoundError:  # a thread that just ended
            pass
    return out


def fd_count(tmp_path=None) -> int:
    """The process's open fds; with ``tmp_path``, less those on files in other
    tests' directories: a Store an earlier test dropped unclosed (its spare or
    prepared pack file) is closed by whichever thread frees it, maybe now."""
    if tmp_path is None:
        return len(os.listdir("/proc/self/fd"))
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd, closed since
            continue
        if "pytest-of-" in target and str(tmp_path) not in target:
            continue
        n += 1
    return n


def fill(rng: np.random.Generator, pages: np.ndarray) -> None:
    """Random pages; one in 7 zero; one in 7 a copy of one of 3 shared contents."""
    n, ps = pages.shape
    pages[:] = rng.integers(0, 256, (n, ps), dtype=np.uint8)
    pages[3::7] = 0
    shared = rng.integers(1, 256, (3, ps), dtype=np.uint8)
    for i, p in enumerate(range(5, n, 7)):
        pages[p] = shared[i % 3]


def expected_counts(content: np.ndarray, kind: str) -> dict[str, int]:
    nz = content[content.any(axis=1)]
    distinct = len({bytes(r) for r in nz})
    zero = len(content) - len(nz)
    return {"pages_stored": distinct, "pages_dedup": len(nz) - distinct, "pages_zero": zero,
            "records": len(nz) + (zero if kind == "incremental" else 0)}


@pytest.fixture
def arena():
    with memckpt.Arena(256 * 4096) as a:
        yield a


@pytest.fixture
def scratch():
    s = ForkScratch()
    yield s
    s.close()


def fork_epoch(store: Store, arena: memckpt.Arena, pages: np.ndarray, kind: str,
               parent: int | None, scratch: ForkScratch, during=None) -> memckpt.EpochInfo:
    """One epoch written by a fork child; `during()` runs right after the fork."""
    w = store.begin(kind=kind, parent=parent, layout=arena.layout(), npages=arena.npages)
    snap = ForkSnapshot(w, arena._region, arena.page_size, pages, scratch=scratch.get(len(pages)))
    if during is not None:
        during()
    res = snap.finish()
    try:
        return w.commit(pages_dirty=len(pages), pause_s=snap.fork_s, tracker="test", mode="fork",
                        extra={"fork_s": snap.fork_s, "child_s": res["child_s"],
                               "extra_bytes": res["extra_bytes"]})
    finally:
        snap.release()
        assert not snap.child.running


def add_pages_epoch(store: Store, arena_layout: dict, content: np.ndarray, pages: np.ndarray,
                    kind: str, parent: int | None) -> memckpt.EpochInfo:
    w = store.begin(kind=kind, parent=parent, layout=arena_layout, npages=content.shape[0])
    w.add_pages(pages, content[pages.astype(np.int64)])
    return w.commit(pages_dirty=len(pages), pause_s=0.0, tracker="test", mode="sync")


def read(store: Store, epoch: int, like: np.ndarray) -> np.ndarray:
    out = np.empty_like(like)
    store.read_into(epoch, out)
    return out


def files_of(store: Store, epoch: int) -> dict[str, bytes]:
    doc = store.manifest(epoch)
    return {k: (store.path / v["name"]).read_bytes() for k, v in doc["files"].items()}


def test_full_and_incremental_epochs_match_add_pages_bit_for_bit(tmp_path, arena, scratch):
    rng = np.random.default_rng(1)
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    fill(rng, pv)
    fs = Store(tmp_path / "fork", create=True)
    ref = Store(tmp_path / "ref", create=True)
    allp = np.arange(arena.npages, dtype=np.uint64)
    want = {}
    parent = None
    for step in range(4):
        kind = "full" if step == 0 else "incremental"
        pages = allp if kind == "full" else np.sort(rng.choice(arena.npages, 60, replace=False)).astype(np.uint64)
        if step:  # rewrite the chosen pages: new content, zero pages, duplicates
            sel = pages.astype(np.int64)
            pv[sel] = rng.integers(0, 256, (len(sel), arena.page_size), dtype=np.uint8)
            pv[sel[::5]] = 0
            pv[sel[1::6]] = pv[sel[2]]
        snapshot = pv.copy()
        info = fork_epoch(fs, arena, pages, kind, parent, scratch,
                          during=lambda: pv.fill(0xAB))  # the parent rewrites every page
        pv[:] = snapshot  # the program's state as it was at the fork, for the next step
        rinfo = add_pages_epoch(ref, arena.layout(), snapshot, pages, kind, parent)
        assert info.epoch == rinfo.epoch and info.kind == kind
        want[info.epoch] = snapshot
        doc = fs.manifest(info.epoch)
        assert {k: doc["counts"][k] for k in expected_counts(snapshot[pages.astype(np.int64)], kind)} == \
            expected_counts(snapshot[pages.astype(np.int64)], kind)
        assert doc["counts"] == ref.manifest(info.epoch)["counts"]
        assert doc["files"] == ref.manifest(info.epoch)["files"]
        assert files_of(fs, info.epoch) == files_of(ref, info.epoch)  # byte-identical files
        assert doc["mode"] == "fork" and set(doc["extra"]) == {"fork_s", "child_s", "extra_bytes"}
        assert info.bytes_on_disk == rinfo.bytes_on_disk
        parent = info.epoch
    fresh = Store(tmp_path / "fork")
    for e, content in want.items():
        assert np.array_equal(read(fresh, e, pv), content), f"epoch {e}"
    fresh.verify()


def test_a_large_epoch_hashed_by_two_processes_is_the_same_epoch(tmp_path, scratch):
    """Past 128 MiB of nonzero pages (FORK_SPLIT_BYTES in capture_fork.c) the
    child forks a helper that hashes the second half of the pages while it
    hashes the first: the files are still byte for byte add_pages's, of the
    instant of the fork while the parent rewrites every page."""
    npages = (160 << 20) // 4096
    with memckpt.Arena(npages * 4096) as big:
        pv = pages_view(big, big.array("a", big.nbytes, np.uint8))
        fill(np.random.default_rng(7), pv)
        assert np.count_nonzero(pv.any(axis=1)) * 4096 > 128 << 20
        snapshot = pv.copy()
        fs = Store(tmp_path / "fork", create=True)
        ref = Store(tmp_path / "ref", create=True)
        allp = np.arange(npages, dtype=np.uint64)
        info = fork_epoch(fs, big, allp, "full", None, scratch, during=lambda: pv.fill(0xCD))
        add_pages_epoch(ref, big.layout(), snapshot, allp, "full", None)
        assert files_of(fs, info.epoch) == files_of(ref, info.epoch)
        assert np.array_equal(read(Store(tmp_path / "fork"), info.epoch, pv), snapshot)


def test_parent_threads_writing_during_fork_see_one_instant(tmp_path, arena, scratch):
    """A thread sweeps the pages in order writing its sweep number into every
    word, through the fork and the child's whole run: an instant's snapshot
    has one cut (words before it at sweep s, after it at s-1), never two."""
    words = arena.array("w", arena.nbytes // 8, np.uint64).reshape(arena.npages, -1)
    store = Store(tmp_path / "st", create=True)
    stop = threading.Event()
    started = threading.Event()

    def sweep():
        s = 0
        while not stop.is_set():
            s += 1
            for p in range(arena.npages):
                words[p, :] = s  # the whole page, so the digest changes too
            started.set()

    t = threading.Thread(target=sweep)
    t.start()
    try:
        started.wait(10)
        parent = None
        for i in range(5):
            info = fork_epoch(store, arena, np.arange(arena.npages, dtype=np.uint64),
                              "full" if i == 0 else "incremental", parent, scratch)
            snap = read(store, info.epoch, pages_view(arena, words)).view(np.uint64)
            # the words in arena order: sweep s up to the word being written at
            # the fork (which may be inside a page), s-1 after it; one cut only
            flat = snap.ravel().astype(np.int64)
            steps = np.flatnonzero(np.diff(flat) != 0)
            assert len(steps) <= 1 and flat[0] - flat[-1] in (0, 1), \
                f"epoch {info.epoch} is not one instant: sweeps {np.unique(flat)} change at words {steps[:10]}"
            parent = info.epoch
    finally:
        stop.set()
        t.join()
    store.verify()


def test_tracking_stays_exact_across_the_fork(tmp_path, arena, scratch, backend):
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    store = Store(tmp_path / "st", create=True)
    with memckpt.DirtyTracker(arena, backend) as tr:
        pv[:] = 1
        tr.collect()
        rng = np.random.default_rng(3)
        written = np.sort(rng.choice(arena.npages, 40, replace=False))

        def write():
            pv[written, 11] += 1

        fork_epoch(store, arena, np.arange(arena.npages, dtype=np.uint64), "full", None, scratch,
                   during=write)
        got = tr.collect()
        assert np.array_equal(got, written.astype(np.uint64)), f"{backend}: {got} vs {written}"
        # and the next epoch, an increment of exactly those pages, reads back
        info = fork_epoch(store, arena, got, "incremental", 1, scratch)
        assert np.array_equal(read(store, info.epoch, pv), pv)


def test_child_killed_mid_write_keeps_the_last_epoch(tmp_path, scratch):
    with memckpt.Arena(8192 * 4096) as arena:  # 32 MiB: long enough to catch the child writing
        pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
        pv[:] = np.arange(arena.npages, dtype=np.uint64)[:, None].view(np.uint8)[:, :1] + 1
        pv[:, 8:16] = np.arange(arena.npages, dtype=np.uint64)[:, None].view(np.uint8)
        store = Store(tmp_path / "st", create=True)
        allp = np.arange(arena.npages, dtype=np.uint64)
        first = fork_epoch(store, arena, allp, "full", None, scratch)
        before = read(store, first.epoch, pv)
        kids = children()

        pv[:, 20] += 1
        w = store.begin(kind="incremental", parent=first.epoch, layout=arena.layout(), npages=arena.npages)
        pack_fd = w._pack_fd  # begun in the Store's spare: no name until commit
        snap = ForkSnapshot(w, arena._region, arena.page_size, allp, scratch=scratch.get(len(allp)))
        deadline = time.monotonic() + 10
        while os.fstat(pack_fd).st_size <= 32 and time.monotonic() < deadline:
            pass
        caught = os.fstat(pack_fd).st_size > 32
        os.kill(snap.pid, signal.SIGKILL)
        try:
            snap.finish()
            finished = True
        except ForkChildError as exc:
            finished = False
            assert exc.signal == signal.SIGKILL and exc.stage == "died" and exc.epoch == w.epoch
            assert exc.pid == snap.pid
            msg = str(exc)
            assert f"fork child {snap.pid} was killed by signal 9 (SIGKILL) while writing epoch {w.epoch}" in msg
        if finished or not caught:
            pytest.skip("the child finished before it could be killed mid-write")
        assert store.latest() == first.epoch
        assert not list(store.path.glob(f"e{w.epoch:08d}*")), "the dead child's files were left"
        store.verify()
        assert np.array_equal(read(Store(tmp_path / "st"), first.epoch, pv), before)
        assert children() == kids
        # the store takes the next epoch as if nothing happened
        again = fork_epoch(store, arena, allp, "incremental", first.epoch, scratch)
        assert again.epoch == w.epoch and np.array_equal(read(store, again.epoch, pv), pv)


def test_the_childs_helper_killed_fails_the_epoch_cleanly(tmp_path, scratch):
    """The helper process a large epoch's child forks (capture_fork.c,
    start_work) killed while windows are left: the child reports ECHILD at
    stage "pack", the epoch is dropped with its files, the last epoch stays."""
    npages = (192 << 20) // 4096
    with memckpt.Arena(npages * 4096) as big:
        pv = pages_view(big, big.array("a", big.nbytes, np.uint8))
        fill(np.random.default_rng(3), pv)
        store = Store(tmp_path / "st", create=True)
        allp = np.arange(npages, dtype=np.uint64)
        first = fork_epoch(store, big, allp[:16], "full", None, scratch)
        for trial in range(5):
            w = store.begin(kind="full", parent=first.epoch, layout=big.layout(), npages=npages)
            snap = ForkSnapshot(w, big._region, big.page_size, allp, scratch=scratch.get(npages))
            helper, deadline = None, time.monotonic() + 5
            while helper is None and time.monotonic() < deadline:
                try:
                    kids = Path(f"/proc/{snap.pid}/task/{snap.pid}/children").read_text().split()
                except FileNotFoundError:
                    break  # the child is done already
                helper = int(kids[0]) if kids else None
            if helper is not None:
                os.kill(helper, signal.SIGKILL)
            try:
                snap.finish()
                killed = False
            except ForkChildError as exc:
                killed = True
                assert exc.stage == "pack" and exc.errno == errno.ECHILD, exc
                assert f"epoch {w.epoch}" in str(exc)
            finally:
                snap.release()
            if killed:
                break
            w.abort()  # the child finished first: try again
        else:
            pytest.skip("the child finished before its helper could be killed, 5 times")
        assert store.latest() == first.epoch
        assert not list(store.path.glob(f"e{w.epoch:08d}*")), "the failed epoch's files were left"
        store.verify()


def test_child_failure_is_reported_with_stage_and_errno(tmp_path, arena, scratch):
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    pv[:] = 5
    store = Store(tmp_path / "st", create=True)
    w = store.begin(kind="full", layout=arena.layout(), npages=arena.npages)
    real = w.external_target

    def readonly_pack():
        pack_fd, off, phdr, idx_fd, ihdr = real()
        ro = os.open(store.path / w._pack_name, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(ro)
        return ro, off, phdr, idx_fd, ihdr

    opened: list[int] = []
    w.external_target = readonly_pack
    snap = ForkSnapshot(w, arena._region, arena.page_size, np.arange(arena.npages, dtype=np.uint64),
                        scratch=scratch.get(arena.npages))
    with pytest.raises(ForkChildError, match=rf"fork child {snap.pid} failed writing the pack of "
                                             r"epoch 1: \[Errno 9\] Bad file descriptor") as ei:
        snap.finish()
    os.close(opened[0])
    assert ei.value.stage == "pack" and ei.value.errno == 9 and ei.value.signal == 0
    assert store.latest() is None and not list(store.path.glob("e0*"))


def test_binding_child_lifecycle(tmp_path, arena, scratch):
    """read() then wait(); kill() and wait() are idempotent; a dropped ForkChild is
    reaped; bad jobs fork nothing."""
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    pv[:] = 9
    store = Store(tmp_path / "st", create=True)
    kids, fds = children(), fd_count(tmp_path)
    pages = np.arange(arena.npages, dtype=np.uint64)
    for how in ("wait", "read", "kill", "drop"):
        w = store.begin(kind="full", layout=arena.layout(), npages=arena.npages)
        pack_fd, off, phdr, idx_fd, ihdr = w.external_target()
        ch = _core.fork_snapshot(arena._region, arena.page_size, pages, False, pack_fd, off, phdr,
                                 idx_fd, ihdr, scratch.get(len(pages)))
        assert ch.running and ch.pid > 0
        if how == "wait":
            r = ch.wait()
            assert r["ok"] and r["stage"] == "ok" and r["stored"] == 1 and r["dedup"] == arena.npages - 1
            assert r["exit_code"] == 0 and r["reported"]
            assert ch.wait() == r and ch.read() == r and not ch.running
            ch.kill()  # after the reap: nothing to do
        elif how == "read":
            r = ch.read()  # the report; the child exits on its own, reaped by wait()
            assert r["ok"] and r["exit_code"] == -1 and ch.running and ch.read() == r
            r2 = ch.wait()
            assert not ch.running and r2["exit_code"] == 0 and r2["records"] == r["records"]
        elif how == "kill":
            ch.kill()
            ch.kill()
            r = ch.wait()
            assert not r["ok"] and r["stage"] == "died" and r["signal"] == signal.SIGKILL
        else:
            del ch
        w.abort()
    assert children() == kids and fd_count(tmp_path) == fds
    with pytest.raises(ValueError, match="strictly increasing"):
        _core.fork_snapshot(arena._region, arena.page_size, pages[::-1].copy(), False, 1, 32,
                            bytes(32), 1, bytes(48))
    with pytest.raises(ValueError, match="strictly increasing"):
        _core.fork_snapshot(arena._region, arena.page_size, np.array([arena.npages], np.uint64),
                            False, 1, 32, bytes(32), 1, bytes(48))
    with pytest.raises(ValueError, match="smaller than"):
        _core.fork_snapshot(arena._region, arena.page_size, pages, False, 1, 32, bytes(32), 1,
                            bytes(48), bytearray(10))
    assert children() == kids and fd_count(tmp_path) == fds


def test_store_adopt_checks(tmp_path, arena, scratch):
    store = Store(tmp_path / "st", create=True)
    with pytest.raises(ValueError, match="zstd compression, which another process"):
        store.begin(kind="full", layout=arena.layout(), npages=arena.npages,
                    compress="zstd").external_target()
    w = store.begin(kind="full", layout=arena.layout(), npages=arena.npages)
    w.add_pages(np.array([0], np.uint64), np.ones((1, arena.page_size), np.uint8))
    with pytest.raises(ValueError, match="already holds pages"):
        w.external_target()
    w.abort()
    # a writer that reports sizes the files do not have: CorruptionError, epoch dropped
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    pv[:] = 3
    w = store.begin(kind="full", layout=arena.layout(), npages=arena.npages)
    snap = ForkSnapshot(w, arena._region, arena.page_size, np.arange(arena.npages, dtype=np.uint64),
                        scratch=scratch.get(arena.npages))
    res = snap.child.wait()
    with pytest.raises(ValueError, match="handed to another writer"):
        w.add_pages(np.array([0], np.uint64), np.ones((1, arena.page_size), np.uint8))
    with pytest.raises(CorruptionError, match="writer reported"):
        w.adopt(**{**{k: res[k] for k in ("records", "stored", "dedup", "zero", "pack_size",
                                          "idx_digest")}, "idx_size": res["idx_size"] + 56})
    assert store.latest() is None and not list(store.path.glob("e0*"))
    w = store.begin(kind="full", layout=arena.layout(), npages=arena.npages)
    w.external_target()
    with pytest.raises(ValueError, match="never adopted"):
        w.commit(pages_dirty=1, pause_s=0.0)
    assert store.latest() is None and not list(store.path.glob("e0*"))


@pytest.fixture
def fast_dir(tmp_path):
    """A directory on tmpfs when there is one: 4,000 fsyncs on a shared disk
    take a minute, and this test is about children and fds, not the disk."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="memckpt-fork-", dir="/dev/shm")
        yield Path(d)
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def test_a_thousand_checkpoints_leave_no_child_and_no_fd(fast_dir):
    """Through the Checkpointer (persist thread, ForkSnapshot, adopt, commit)."""
    with memckpt.Arena(8 * 4096) as arena:
        pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
        kids = children()
        rng = np.random.default_rng(4)
        with memckpt.Checkpointer(arena, fast_dir / "st", mode="fork", full_every=50) as ck:
            pv[:] = 1
            ck.checkpoint().result()
            ck.wait()  # and the next epoch's writer prepared (store/prepared.py)
            gc.collect()  # earlier tests' objects holding fds go now, not mid-count
            fds = fd_count()
            for i in range(999):
                p = rng.choice(8, 3, replace=False)
                pv[p, 0] = (i % 250) + 2
                info = ck.checkpoint().result()
                assert info.mode == "fork" and info.pages_dirty == (8 if info.kind == "full" else 3)
                if i % 50 == 49:
                    ck.store.prune(keep_last=1)  # short chains, few files: begin() walks the chain
            ck.wait()
            assert fd_count() == fds, f"{fds} fds before, {fd_count()} after 1,000 checkpoints"
            assert children() == kids, f"children left: {children() - kids}"
            assert info.epoch == 1000
            with memckpt.restore(ck.store, info.epoch) as got:
                assert np.array_equal(pages_view(got, got.arrays()["a"]), pv)
            ck.store.verify(info.epoch)


# -- the Checkpointer in mode "fork" --------------------------------------------------------
def test_checkpointer_fork_mode_refuses_compression(arena, tmp_path):
    for c in ("zstd", "lz4"):
        with pytest.raises(ValueError, match=rf"mode='fork' cannot compress \(compress='{c}'\).*"
                                             r"mode='copy'"):
            memckpt.Checkpointer(arena, tmp_path / "s", mode="fork", compress=c)
    assert not (tmp_path / "s").exists()


def test_checkpointer_fork_mode_epochs_and_extra(arena, tmp_path):
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    fill(np.random.default_rng(6), pv)
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="fork") as ck:
        p = ck.checkpoint("first")
        expect = pv.copy()
        pv[:] = 0x5C  # the program rewrites every page while the child writes
        full = p.result()
        inc1 = ck.checkpoint().result()  # every page, as rewritten
        pv[:] = expect
        pv[[2, 9, 30], 1] += 1
        pv[40] = 0
        inc = ck.checkpoint().result()
    assert (full.kind, full.mode, inc1.pages_dirty) == ("full", "fork", arena.npages)
    assert (inc.kind, inc.parent, inc.pages_dirty) == ("incremental", inc1.epoch, arena.npages)
    for e in (full, inc):
        x = e.extra
        assert {"fork_s", "child_s", "extra_bytes", "collect_s", "child_pid", "wait_s"} <= set(x)
        assert 0 < x["fork_s"] <= e.pause_s and x["child_s"] > 0 and x["extra_bytes"] >= 0
    # the parent rewrote every page of the arena while the first child ran
    # (unless the child was already done): its copy-on-write copies are extra memory
    with memckpt.Store(tmp_path / "s") as st:
        st.verify()
        for e, want in ((full, expect), (inc1, np.full_like(pv, 0x5C)), (inc, pv)):
            with memckpt.restore(st, e.epoch) as got:
                assert np.array_equal(pages_view(got, got.arrays()["a"]), want)


def test_checkpointer_child_killed_keeps_last_epoch_and_carries_pages(tmp_path):
    with memckpt.Arena(8192 * 4096) as arena:  # 32 MiB, so the kill lands while the child writes
        pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
        pv[:] = 1
        pv[:, 8:16] = np.arange(arena.npages, dtype="<u8")[:, None].view(np.uint8)
        kids = children()
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="fork", full_every=2) as ck:
            first = ck.checkpoint().result()
            pv[::2, 0] = 2  # half the pages: the next epoch, whose child dies
            p = ck.checkpoint()
            pid = p._cap.data.pid if p._cap is not None else None
            if pid is None:
                pytest.skip("the child finished before it could be killed")
            os.kill(pid, signal.SIGSTOP)  # a stopped child cannot finish before the kill
            os.kill(pid, signal.SIGKILL)
            try:
                p.result()
                pytest.skip("the child finished before it could be killed")
            except ForkChildError as exc:
                assert exc.pid == pid and exc.signal == signal.SIGKILL and exc.epoch == p.epoch
                assert f"while writing epoch {p.epoch}" in str(exc)
            assert ck.store.latest() == first.epoch and ck.head == first.epoch
            assert not list(ck.store.path.glob(f"e{p.epoch:08d}*"))
            pv[1, 0] = 3
            again = ck.checkpoint().result()  # the dead epoch's pages, and page 1
            assert again.kind == "incremental" and again.parent == first.epoch
            assert again.pages_dirty == arena.npages // 2 + 1
        assert children() == kids
        with memckpt.restore(tmp_path / "s", again.epoch) as got:
            assert np.array_equal(pages_view(got, got.arrays()["a"]), pv)


def test_checkpointer_close_reaps_a_running_child(tmp_path):
    with memckpt.Arena(4096 * 4096) as arena:
        pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
        pv[:] = 7
        pv[:, :8] = np.arange(arena.npages, dtype="<u8")[:, None].view(np.uint8)
        kids = children()
        ck = memckpt.Checkpointer(arena, tmp_path / "s", mode="fork")
        p = ck.checkpoint()
        ck.close()  # waits for the child: the epoch is durable, the child reaped
        assert p.done() and p.result().epoch == 1 and children() == kids


def test_full_epoch_with_fewer_pages_than_an_earlier_one(tmp_path, backend):
    """Regression (issue 10, item 1): the child's scratch is reused, and a full
    epoch records no zero page, so it can hold fewer records than an earlier
    epoch did. The pack writer walked the scratch past this epoch's records and
    appended an earlier epoch's pages, and every later checkpoint failed."""
    with memckpt.Arena(128 * 4096) as arena:
        a = arena.array("a", (128 * 4096,), np.uint8)
        pv = pages_view(arena, a)
        rng = np.random.default_rng(1)
        with memckpt.Checkpointer(arena, tmp_path / "s", tracker=backend, mode="fork",
                                  full_every=2) as ck:
            pv[:64] = rng.integers(1, 256, (64, arena.page_size), dtype=np.uint8)
            ck.checkpoint().result()          # 1: full, 64 stored pages
            touch(pv, range(0, 64, 4))
            ck.checkpoint().result()          # 2: incremental
            pv[:32] = 0                      # half the written pages back to zero
            infos = [ck.checkpoint().result() for _ in range(3)]  # 3: full, with 32 pages
            want = pv.copy()
            touch(pv, [40])
            last = ck.checkpoint().result()
        assert infos[0].kind == "full" and infos[0].pages_stored == 32
        store = memckpt.Store(tmp_path / "s")
        store.verify()
        for info, content in ((infos[-1], want), (last, pv)):
            got = np.empty_like(pv)
            store.read_into(info.epoch, got)
            assert np.array_equal(got, content)



# -- mode copy takes its full epochs by fork (capture/copy.py: CopyMode._by_fork) ----------

def test_copy_mode_takes_full_epochs_by_fork(arena, tmp_path, monkeypatch):
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    fill(np.random.default_rng(16), pv)
    # the fixture's arena is far smaller than this process: by default a
    # staging copy is cheaper than the fork, and mode copy stages
    with memckpt.Checkpointer(arena, tmp_path / "small") as ck:
        e = ck.checkpoint().result()
        assert e.kind == "full" and "full_by" not in e.extra and e.extra["staging_bytes"] > 0
    monkeypatch.setattr(memckpt.capture.copy, "FORK_RSS_RATIO", 10**9)  # as for a big arena
    # staging: the arena, and a writer on more threads than the child hashes on: staged
    with memckpt.Checkpointer(arena, tmp_path / "staged", full_every=1,
                              threads=memckpt.capture.copy.FORK_PROCESSES + 1) as ck:
        assert "full_by" not in ck.checkpoint().result().extra
    small = 16 * arena.page_size  # a full epoch does not fit: by fork
    with memckpt.Checkpointer(arena, tmp_path / "s", full_every=2, staging=small) as ck:
        p = ck.checkpoint()
        want = [pv.copy()]
        pv[:] = 0x3A  # the program rewrites every page while the child writes
        epochs = [p.result()]
        pv[[3, 7], 5] += 1
        want.append(pv.copy())
        epochs.append(ck.checkpoint().result())  # an increment: staged
        pv[11] = 0
        want.append(pv.copy())
        epochs.append(ck.checkpoint().result())  # full_every=2: full, by fork again
    assert [(e.kind, e.mode, e.extra.get("full_by")) for e in epochs] == [
        ("full", "copy", "fork"), ("incremental", "copy", None), ("full", "copy", "fork")]
    for e in (epochs[0], epochs[2]):
        assert "staging_bytes" not in e.extra and e.extra["child_s"] > 0
    # the increment: every page, as the program rewrote them all since the fork
    assert epochs[1].pages_dirty == arena.npages and epochs[1].extra["staging_bytes"] > 0
    with memckpt.Store(tmp_path / "s") as st:
        st.verify()
        for e, w in zip(epochs, want):
            with memckpt.restore(st, e.epoch) as got:
                assert np.array_equal(pages_view(got, got.arrays()["a"]), w)
    # compressed: the child cannot compress, so the full epoch is staged
    with memckpt.Checkpointer(arena, tmp_path / "z", compress="zstd", staging=small) as ck:
        assert "full_by" not in ck.checkpoint().result().extra


def test_copy_mode_default_staging_takes_full_epochs_by_fork(arena, tmp_path, monkeypatch):
    """With the default staging (the arena's size) and FORK_PROCESSES set, a
    full epoch is taken by fork while the writer runs on no more threads than
    that: no staging copy of the arena in the pause. Each epoch
    restores bit for bit, though the program rewrites every page while the
    child writes."""
    monkeypatch.setattr(memckpt.capture.copy, "FORK_RSS_RATIO", 10**9)  # as for a big arena
    monkeypatch.setattr(memckpt.capture.copy, "FORK_PROCESSES", 2)  # off by default: turned on
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    fill(np.random.default_rng(18), pv)
    want, epochs = [], []
    with memckpt.Checkpointer(arena, tmp_path / "s", full_every=2,
                              threads=memckpt.capture.copy.FORK_PROCESSES) as ck:
        for step in range(4):  # full (fork), incremental (staged), full (fork), incremental
            p = ck.checkpoint()
            want.append(pv.copy())
            pv[step::3] ^= 0x5C  # while the child (if any) writes
            epochs.append(p.result())
    assert [(e.kind, e.mode, e.extra.get("full_by")) for e in epochs] == [
        ("full", "copy", "fork"), ("incremental", "copy", None)] * 2
    for e in epochs[::2]:
        assert "staging_bytes" not in e.extra and e.extra["child_s"] > 0
    with memckpt.Store(tmp_path / "s") as st:
        st.verify()
        for e, w in zip(epochs, want):
            with memckpt.restore(st, e.epoch) as got:
                assert np.array_equal(pages_view(got, got.arrays()["a"]), w)
    # called from another thread (which may end before the child is done): staged
    with memckpt.Checkpointer(arena, tmp_path / "t", threads=memckpt.capture.copy.FORK_PROCESSES) as ck:
        out = []
        th = threading.Thread(target=lambda: out.append(ck.checkpoint()))
        th.start()
        th.join()
        e = out[0].result()
        assert e.kind == "full" and "full_by" not in e.extra and e.extra["staging_bytes"] > 0
        with memckpt.restore(tmp_path / "t", e.epoch) as got:
            assert np.array_equal(pages_view(got, got.arrays()["a"]), pv)


def test_copy_mode_stages_full_epochs_once_fork_is_refused(arena, tmp_path, monkeypatch):
    """A fork() refused (EAGAIN, or ENOMEM under strict overcommit) costs no
    epoch: that epoch is staged in the same checkpoint(), and so is every
    later full epoch; the manifest says why."""
    monkeypatch.setattr(memckpt.capture.copy, "FORK_RSS_RATIO", 10**9)
    pv = pages_view(arena, arena.array("a", arena.nbytes, np.uint8))
    fill(np.random.default_rng(17), pv)
    calls = []

    def refused(self, carry, full, bufs, incremental, target, scratch):
        # collect as the real call does (the pages are then the epoch's), then fail the fork
        calls.append(full)
        pages, dirty, reported, *_ = self.pause_copy(carry, full, bufs, np.empty((0, PS), np.uint8), 0)
        return pages, dirty, reported, None, 0.0, 0.0, OSError(
            errno.EAGAIN, "forking the snapshot child: Resource temporarily unavailable")

    PS = arena.page_size
    with memckpt.Checkpointer(arena, tmp_path / "s", full_every=1,
                              staging=16 * arena.page_size) as ck:
        monkeypatch.setattr(type(ck.tracker), "pause_fork", refused)
        before = children()
        e1 = ck.checkpoint().result()
        pv[4, 0] ^= 0xFF
        e2 = ck.checkpoint().result()  # full again (full_every=1): staged, no fork tried
        assert children() == before
    assert len(calls) == 1
    for e in (e1, e2):
        assert e.kind == "full" and "full_by" not in e.extra
        assert "Resource temporarily unavailable" in e.extra["fork_refused"]
    with memckpt.restore(tmp_path / "s", e2.epoch) as got:
        assert np.array_equal(pages_view(got, got.arrays()["a"]), pv)
