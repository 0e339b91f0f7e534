"""Lazy restore (memckpt.restore(lazy=True), csrc/lazy_restore.c): every
epoch of randomized chains served on first touch by several threads while
the drain runs equals the eager restore bit for bit (compressed, zero pages,
dedup, never-written pages); pages the program drops are not refilled; a
damaged page and a dead handler end in a clear failure, never a hang or
silent zeros; fork waits for the drain; the first-touch record; resume."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt import CorruptionError, _core
from memckpt.kernel import features
from memckpt.lazy import restore_lazy
from memckpt.restore import arena_from_layout
from memckpt.store import Store
from memckpt.store.lazy import read_touch, touch_name, write_touch

from _lazy_util import PS, commit, random_chain

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not features().uffd,
                                reason=f"userfaultfd MISSING unavailable: {features().uffd_reason}")


def _pages(arena: memckpt.Arena) -> np.ndarray:
    return np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, PS)


def _held(st: Store, epoch: int, **kw) -> tuple[memckpt.Arena, object]:
    """A lazy restore whose drain waits for release(): every touch is a fault."""
    arena = arena_from_layout(st.layout(epoch))
    kw.setdefault("prefetch", None)
    h = restore_lazy(arena, st, epoch, verify=True, threads=kw.pop("threads", 1),
                     t0=time.perf_counter(), hold=True, **kw)
    arena.lazy = h
    return arena, h


def _touch_threads(arena: memckpt.Arena, want: np.ndarray, seed: int, nthreads: int = 4,
                   per_thread: int = 300, after=None) -> list[str]:
    """Threads hashing random runs of pages (the GIL released: they fault at
    once); each hash checked against the expected page's."""
    pages = _pages(arena)
    errors: list[str] = []

    def run(k: int) -> None:
        rng = np.random.default_rng(seed * 100 + k)
        for i in range(per_thread // 4):
            if i == 10 and k == 0 and after is not None:
                after()  # the drain begins under the touches
            p = int(rng.integers(0, len(want)))
            q = min(len(want), p + int(rng.integers(1, 5)))
            got = _core.hash_pages(pages[p:q])
            if not np.array_equal(got, _core.hash_pages(want[p:q])):
                errors.append(f"pages {p}..{q}")

    ts = [threading.Thread(target=run, args=(k,)) for k in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


@pytest.mark.parametrize("compress", [None, "zstd", "lz4"])
def test_every_epoch_equals_eager(tmp_path, compress):
    st, expected = random_chain(tmp_path / "s", seed=7, compress=compress, npages=1500)
    faults = 0
    for e, want in expected.items():
        eager = memckpt.restore(st, e)
        held = e % 2 == 0
        if held:  # every touch a fault, then the drain runs under the touches' tail
            arena, h = _held(st, e)
        else:
            arena = memckpt.restore(st, e, lazy=True, threads=1)
            h = arena.lazy
        errors = _touch_threads(arena, want, seed=e,
                                after=h._test_server().release if held else None)
        stats = h.wait(60)
        assert not errors, f"epoch {e}: wrong content at {errors[:5]}"
        assert np.array_equal(_pages(arena), want), f"epoch {e} differs from its model"
        assert np.array_equal(_pages(arena), _pages(eager)), f"epoch {e}: lazy != eager"
        assert stats.drain_s is not None and stats.bad_pages == 0
        if held:
            assert stats.faults > 0, "held drain: the touches must have faulted"
        faults += stats.faults
    assert faults > 0


def test_dropped_pages_read_zero_and_are_not_refilled(tmp_path):
    st, expected = random_chain(tmp_path / "s", seed=3, compress=None, npages=600, nepochs=1)
    want = expected[1]
    arena, h = _held(st, 1)
    pages = _pages(arena)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert int(pages[10:20].sum()) == int(want[10:20].sum())  # served
    # dropped: 10..19 (served) and 100..199 (not yet): both read zero after
    for lo, hi in ((10, 20), (100, 200)):
        assert libc.madvise(arena.address + lo * PS, (hi - lo) * PS, 4) == 0  # MADV_DONTNEED
    h._test_server().release()
    stats = h.wait(30)
    assert stats.removed_pages == 100
    exp = want.copy()
    exp[10:20] = 0
    exp[100:200] = 0
    assert np.array_equal(pages, exp)


def _damage(st: Store, epoch: int) -> int:
    """Flip a byte of a stored raw page of epoch; its page number."""
    recs = st._index(epoch)
    raw = recs[(recs["flags"] == 0)]
    r = raw[len(raw) // 2]
    pack = st.path / st._doc(epoch)["files"]["pack"]["name"]
    with open(pack, "r+b") as f:
        f.seek(int(r["offset"]) + 100)
        b = f.read(1)
        f.seek(int(r["offset"]) + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    return int(r["page"])


def _child(*args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(HERE), PYTHONFAULTHANDLER="")
    return subprocess.run([sys.executable, str(HERE / "_lazy_worker.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_damaged_page_touched_is_sigbus_not_wrong_bytes(tmp_path):
    st, _ = random_chain(tmp_path / "s", seed=5, compress=None, npages=300, nepochs=1)
    page = _damage(st, 1)
    r = _child(st.path, 1, "touch", page)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)
    assert "touching" in r.stdout and r.stdout.count("\n") == 1  # no value printed
    assert f"page {page} of the arena is damaged" in r.stderr


def test_damaged_page_untouched_is_corruption_error_at_wait(tmp_path):
    st, _ = random_chain(tmp_path / "s", seed=5, compress="zstd", npages=300, nepochs=1)
    recs = st._index(1)
    assert (recs["flags"] != 0).any()
    page = _damage(st, 1) if (recs["flags"] == 0).any() else None
    r = _child(st.path, 1, "wait")
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "CorruptionError" in r.stdout and "BLAKE3" in r.stdout
    assert f"page {page}" in r.stdout


@pytest.mark.parametrize("how,words", [("kill", "was killed"),
                                       ("closefd", "closed under it")])
def test_dead_handler_aborts_with_the_reason(tmp_path, how, words):
    st, _ = random_chain(tmp_path / "s", seed=2, compress=None, npages=300, nepochs=1)
    r = _child(st.path, 1, how, 150)
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stdout, r.stderr)
    assert words in r.stderr and "aborting" in r.stderr


def test_fork_waits_for_the_drain(tmp_path):
    st, expected = random_chain(tmp_path / "s", seed=4, compress="lz4", npages=800, nepochs=2)
    arena, h = _held(st, 2)  # nothing drained: fork must drain it first
    want = expected[2]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every page there, none zero by mistake
        try:
            ok = np.array_equal(_pages(arena), want)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1", "the fork child saw an arena not fully restored"
    assert h.wait(30).drain_s is not None
    assert np.array_equal(_pages(arena), want)


def test_first_touch_is_recorded_and_drives_the_next_drain(tmp_path):
    st, expected = random_chain(tmp_path / "s", seed=9, compress=None, npages=900, nepochs=1)
    arena, h = _held(st, 1)
    order = np.random.default_rng(1).permutation(900)[:40]
    pages = _pages(arena)
    for p in order.tolist():
        pages[p].sum()
    h._test_server().release()
    stats = h.wait(30)
    assert stats.faults == 40 and stats.record_written
    assert np.array_equal(read_touch(st.path, 1, 900), order)
    # the next restore drains those first; a touch of them then adds nothing new
    a2 = memckpt.restore(st, 1, lazy=True, prefetch="recorded")
    assert a2.lazy.prefetch == "recorded (40 pages)"
    s2 = a2.lazy.wait(30)
    assert np.array_equal(_pages(a2), expected[1])
    assert s2.faults == 0 and s2.record_written is None
    # the record is outside the epoch: verify passes, the writer's sweep keeps it
    st.verify(1)
    w = Store(st.path)
    w.sweep()
    assert (st.path / touch_name(1)).exists()


def test_a_bad_record_is_no_record(tmp_path):
    st, _ = random_chain(tmp_path / "s", seed=9, compress=None, npages=64, nepochs=1)
    assert write_touch(st.path, 1, 64, np.array([3, 1, 2], np.uint64))
    assert list(read_touch(st.path, 1, 64)) == [3, 1, 2]
    assert read_touch(st.path, 1, 65) is None  # another arena size
    p = st.path / touch_name(1)
    data = bytearray(p.read_bytes())
    data[70] ^= 1
    p.write_bytes(bytes(data))
    assert read_touch(st.path, 1, 64) is None
    a = memckpt.restore(st, 1, lazy=True, prefetch="recorded")
    assert a.lazy.prefetch.startswith("none (no record")
    a.lazy.wait(30)


def test_old_store_restores_lazily():
    src = HERE / "data" / "store-1.1"
    st = Store(src)
    for e in [i.epoch for i in st.epochs()]:
        eager = memckpt.restore(st, e)
        a = memckpt.restore(st, e, lazy=True, prefetch="sequential")
        a.lazy.wait(30)
        assert np.array_equal(_pages(a), _pages(eager))


@pytest.mark.parametrize("tracker", ["mprotect", "auto"])
def test_resume_lazy_reports_only_the_programs_writes(tmp_path, tracker):
    # 64 MiB: an mprotect tracker is armed and written under while the drain runs
    st, expected = random_chain(tmp_path / "s", seed=11, compress=None, npages=16384, nepochs=2)
    ck = memckpt.Checkpointer.resume(st, 2, lazy=True, tracker=tracker)
    try:
        # a uffd tracker cannot share the arena with the lazy server's userfaultfd
        assert ck.arena.lazy.done == (tracker != "mprotect")
        state = ck.arena.arrays()["state"]
        written = [5, 7000, 16000]
        for p in written:
            state[p, :8] = 42
        info = ck.checkpoint()
        ck.arena.lazy.wait(30)
    finally:
        ck.close()
    recs = st._index(info.epoch)
    assert sorted(recs["page"].tolist()) == written
    want = expected[2].copy()
    want[written, :8] = 42
    assert np.array_equal(_pages(memckpt.restore(st, info.epoch)), want)


def test_cli_restore_lazy_reports_its_figures(tmp_path, capsys):
    import json

    from memckpt.cli.app import main
    st, expected = random_chain(tmp_path / "s", seed=13, compress="zstd", npages=500, nepochs=2)
    out = tmp_path / "lazy.npz"
    assert main(["restore", str(st.path), "--lazy", "--prefetch", "none", "--out", str(out),
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    lazy = rep["lazy"]
    assert lazy["prefetch"] == "none" and lazy["drain_seconds"] > 0
    assert lazy["time_to_first_access_ms"] > 0 and lazy["faults"] >= 0
    assert np.array_equal(np.load(out)["state"], expected[2])
    assert main(["restore", str(st.path), "--lazy", "--out", str(out)]) == 0
    assert "lazy: first access after" in capsys.readouterr().out


# -- served before the indexes are checked (restore returns before reading them) -------

def _damage_index(st: Store, epoch: int, record: int) -> str:
    """Flip a byte of a record's digest in epoch's index (its header intact); its name."""
    name = st._doc(epoch)["files"]["idx"]["name"]
    p = st.path / name
    data = bytearray(p.read_bytes())
    data[48 + record * 56 + 40] ^= 0xFF
    p.write_bytes(bytes(data))
    return name


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_faults_served_before_the_index_check_equal_eager(tmp_path, compress):
    st, expected = random_chain(tmp_path / "s", seed=21, compress=compress, npages=1200)
    e = max(expected)
    assert len(st.chain(e)) >= 3  # a fault looks its page up in each source, newest first
    want = expected[e]
    arena, h = _held(st, e)  # held: the index check and the plan wait for release()
    srv = h._test_server()
    errors = _touch_threads(arena, want, seed=3, per_thread=400)
    assert not srv.planned and srv.stats()["drained"] == 0
    assert srv.stats()["served"] > 0
    # the check, the plan and the drain then run under the touches
    errors += _touch_threads(arena, want, seed=4, after=srv.release)
    stats = h.wait(60)
    assert not errors, f"wrong content at {errors[:5]}"
    assert stats.bad_pages == 0 and stats.drain_s is not None
    assert np.array_equal(_pages(arena), want)
    assert np.array_equal(_pages(arena), _pages(memckpt.restore(st, e)))


def test_damaged_index_found_after_return_is_corruption_error(tmp_path):
    st, _ = random_chain(tmp_path / "s", seed=5, compress=None, npages=300, nepochs=1)
    name = _damage_index(st, 1, len(st._index(1)) - 1)
    a = memckpt.restore(Store(st.path), 1, lazy=True)  # returns: only the header was read
    with pytest.raises(CorruptionError, match=f"{name}: BLAKE3 digest mismatch.*poisoned"):
        a.lazy.wait(30)  # not a hang
    with pytest.raises(CorruptionError, match="do not trust this arena"):
        a.lazy.check()
    a.close()


def test_damaged_index_poisons_what_was_not_served(tmp_path):
    st, expected = random_chain(tmp_path / "s", seed=5, compress=None, npages=300, nepochs=1)
    name = _damage_index(st, 1, len(st._index(1)) - 1)
    r = _child(st.path, 1, "badindex", 200)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    want0 = int(expected[1][0].astype(np.int64).sum())
    assert lines[0] == f"served {want0}"  # checked against its record's digest: right bytes
    assert "CorruptionError" in lines[1] and f"{name}: BLAKE3 digest mismatch" in lines[1]
    assert lines[2:] == [f"served again {want0}", "touching"]  # and no value for page 200
    assert "every page not served yet is poisoned" in r.stderr


def test_prune_and_compact_remove_a_retired_epochs_touch_record(tmp_path):
    st, _ = random_chain(tmp_path / "s", seed=9, compress=None, npages=64, nepochs=6)
    for e in range(1, 7):
        assert write_touch(st.path, e, 64, np.array([1, 2], np.uint64))
    w = Store(st.path)
    w.compact(2, 3)  # 2 retired into 3
    assert not (st.path / touch_name(2)).exists()
    assert (st.path / touch_name(3)).exists() and (st.path / touch_name(1)).exists()
    w.prune(keep_last=1, rebase=True)
    left = sorted(p.name for p in st.path.glob("*.touch"))
    assert left == [touch_name(e) for e in w.epoch_numbers()]


def test_a_reader_faster_than_the_drain_is_served_in_batches(tmp_path):
    """With a recorded order, a sequential reader faults once a growing run,
    not once every 16 pages: by lookup before the plan (held here), then in
    batches at the front of the drain order; bit for bit either way."""
    npages = 6000
    st = Store(tmp_path / "s", create=True, page_size=PS)
    want = np.random.default_rng(17).integers(0, 256, (npages, PS), dtype=np.uint8)
    want[[1500, 4000]] = 0  # (a zero page in each region: a run ends there)
    commit(st, want, None, kind="full", parent=None, compress=None)
    regions = [np.arange(1000, 3000), np.arange(3500, 5400)]
    assert write_touch(st.path, 1, npages, np.concatenate(regions).astype(np.uint64))
    arena, h = _held(st, 1, prefetch="recorded")
    pages = _pages(arena)
    assert _core.hash_pages(pages[1000:3000]).tobytes() == \
        _core.hash_pages(want[1000:3000]).tobytes()  # one pass, before any plan
    held = h._test_server().stats()
    assert held["drained"] == 0 and held["faults"] <= 2000 // 64, held  # runs grew
    h._test_server().release()  # then batches at the front, racing the drain
    assert np.array_equal(pages[3500:5400], want[3500:5400])
    h.wait(60)
    assert np.array_equal(pages, want)
