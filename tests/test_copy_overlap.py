"""Mode copy's staged epochs written while the pause copies (issue 12): the C
epoch writer's add that runs beyond its call (mck_ew_add_async through
memckpt._writer and _core.pause_copy), what it writes (the same bytes as a
plain add, every epoch restored bit for bit), its failures (the epoch
aborted whole, the next one fine), and what it must never do: run past a
close or an abort, act in a fork child, or have its staging reused while it
reads it. Nothing here is timed (bench/bench_write.py measures)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import memckpt
from memckpt import _writer
from memckpt.capture import copy as copy_capture
from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, random_pages

NPAGES = 6000  # 23 MiB: three of the writer's 8 MiB windows, the last one short


def _content(seed: int = 5) -> np.ndarray:
    """Random pages with zero pages and pages repeated (dedup) among them."""
    rng = np.random.default_rng(seed)
    a = random_pages(rng, NPAGES)
    a[::9] = 0
    a[4::13] = a[1]
    a[2500:2700] = 0
    return a


def _pack_writer(path: Path, threads: int) -> tuple[_writer.PackWriter, int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    hdr = fmt.pack_header(1, PS)
    os.pwrite(fd, hdr, 0)
    return _writer.PackWriter(fd, PS, NPAGES, False, hdr, threads=threads,
                              flags=_writer.NO_PACK_DIGEST), fd


def _written(path: Path, how: str, threads: int) -> tuple[bytes, bytes]:
    """The pack and records of a full epoch of _content(), added by `how`."""
    data = _content()
    pages = np.arange(NPAGES, dtype=np.uint64)
    pw, fd = _pack_writer(path, threads)
    try:
        if how == "add":
            pw.add(data, pages)
        elif how == "async, all in":
            pw.add_async(data, pages, ready=NPAGES, threads=threads)
            pw.wait()
        else:  # the rows come in pieces, as a pause's copy fills staging
            staging = np.zeros_like(data)
            pw.add_async(staging, pages, ready=0, threads=1)
            assert pw.busy
            for lo in range(0, NPAGES, 700):
                hi = min(lo + 700, NPAGES)
                staging[lo:hi] = data[lo:hi]
                pw.ready(hi, 1 if hi < NPAGES else 1 << 30)
            pw.wait()
        assert not pw.busy
        recs = pw.records()
        assert pw.stats()["records"] == len(recs) // _writer.RECORD_SIZE
        return Path(path).read_bytes(), recs
    finally:
        pw.close()
        os.close(fd)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_an_add_beyond_its_call_writes_what_a_plain_add_writes(tmp_path, threads):
    want = _written(tmp_path / "plain", "add", threads)
    assert _written(tmp_path / "async", "async, all in", threads) == want
    assert _written(tmp_path / "pieces", "async, in pieces", threads) == want


def test_waiting_for_rows_never_said_to_be_in_fails_and_reads_none_of_them(tmp_path):
    pw, fd = _pack_writer(tmp_path / "p", 2)
    try:
        staging = np.zeros((NPAGES, PS), np.uint8)
        pw.add_async(staging, np.arange(NPAGES, dtype=np.uint64), ready=3000, threads=2)
        with pytest.raises(OSError) as e:
            pw.wait()
        assert e.value.errno == errno.ECANCELED
        # the writer failed: nothing more goes into this pack
        with pytest.raises(OSError):
            pw.add(staging[:1], np.array([NPAGES - 1], np.uint64))
    finally:
        pw.close()
        os.close(fd)


def test_a_running_add_blocks_the_writer_and_close_stops_it(tmp_path):
    pw, fd = _pack_writer(tmp_path / "p", 2)
    staging = np.zeros((NPAGES, PS), np.uint8)
    pw.add_async(staging, np.arange(NPAGES, dtype=np.uint64), ready=0, threads=2)
    for call in (lambda: pw.add(staging, np.arange(1, dtype=np.uint64)), pw.stats, pw.records,
                 lambda: pw.finish(fd, bytes(fmt.IDX_HEADER_SIZE))):
        with pytest.raises(ValueError, match="still adding"):
            call()
    pw.close()  # cancels and joins: its threads wait for rows that never come
    assert not pw.busy
    os.close(fd)


def test_the_writer_keeps_the_staging_it_reads_alive(tmp_path):
    pw, fd = _pack_writer(tmp_path / "p", 2)
    data = _content()
    staging = data.copy()
    pw.add_async(staging, np.arange(NPAGES, dtype=np.uint64), ready=0, threads=1)
    del staging  # the writer's reference is the last: freed memory would be read below
    pw.ready(NPAGES)
    pw.wait()
    recs = np.frombuffer(pw.records(), dtype=fmt.RECORD_DTYPE)
    pw.close()
    os.close(fd)
    got = np.frombuffer((tmp_path / "p").read_bytes(), np.uint8)
    for r in recs[::97]:
        assert np.array_equal(got[r["offset"]:r["offset"] + PS], data[r["page"]])


def test_idle_cpus_are_counted_from_the_runnable_tasks():
    # read (not -1), and this thread is runnable as it asks: never every CPU idle
    assert 0 <= _writer.cpus_idle() < _writer.cpus_available()


# -- through a Checkpointer -------------------------------------------------------------
def _arena(seed: int = 11) -> tuple[memckpt.Arena, np.ndarray]:
    arena = memckpt.Arena(NPAGES * PS)
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(NPAGES, PS)
    pages[:] = _content(seed)
    return arena, pages


def _restores(path: Path, epoch: int, want: np.ndarray) -> None:
    with memckpt.restore(path, epoch=epoch) as got:
        assert np.array_equal(np.frombuffer(got.buffer(), np.uint8).reshape(NPAGES, PS), want)


@pytest.fixture
def overlap(monkeypatch):
    """Every staged epoch of 1 MiB or more is written from the pause on."""
    monkeypatch.setattr(copy_capture, "ASYNC_MIN_BYTES", 1 << 20)


@pytest.mark.parametrize("pause_threads", [0, 1, 2])
@pytest.mark.parametrize("staged", ["all", "part"])
def test_full_epochs_written_from_the_pause_restore_exactly(overlap, monkeypatch, tmp_path,
                                                           staged, pause_threads):
    """A first and a later full epoch, staging holding the whole arena or
    half of it (the other half written in the pause from the arena, then
    the staged half from the pause on), and a dense increment."""
    monkeypatch.setattr(copy_capture, "PAUSE_THREADS", pause_threads)
    arena, pages = _arena()
    staging = None if staged == "all" else NPAGES // 2 * PS
    rng = np.random.default_rng(3)
    states = []
    with memckpt.Checkpointer(arena, tmp_path / "s", staging=staging, full_every=2) as ck:
        for step in range(4):  # full, incremental (dense), full, incremental (a few pages)
            if step == 1:
                pages[::2] = random_pages(rng, len(pages[::2]))
            elif step:
                pages[rng.choice(NPAGES, 50, replace=False)] = random_pages(rng, 50)
            info = ck.checkpoint().result()
            states.append(pages.copy())
            assert info.kind == ("full" if step % 2 == 0 else "incremental")
            big = info.kind == "full" or step == 1
            assert info.extra.get("written_from_pause", False) == big, (step, info.extra)
            if big:  # no more than asked, and only CPUs idle at the pause
                assert 0 <= info.extra["writer_threads_in_pause"] <= pause_threads
            # the dense increment's 3,000 pages fit in half the arena's staging
            assert info.extra["pages_in_pause"] == (NPAGES - NPAGES // 2
                                                    if staging and info.kind == "full" else 0)
    for epoch, want in enumerate(states, 1):
        _restores(tmp_path / "s", epoch, want)
    del pages
    arena.close()


def test_a_writer_error_while_written_from_the_pause_fails_the_epoch_cleanly(overlap, monkeypatch,
                                                                            tmp_path):
    """The pack fd made read-only before the pause: the writer's threads fail
    after the pause returned. The epoch's result raises naming it, nothing of
    it is left in the store, its pages go to the next epoch, which restores."""
    arena, pages = _arena()
    ro = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    orig = copy_capture.CopyMode.capture
    broken = []

    def capture(self, req):
        if not broken:
            broken.append(req.writer.epoch)
            os.dup2(ro, req.writer._pack_fd)  # every write into the pack fails (EBADF)
        return orig(self, req)

    monkeypatch.setattr(copy_capture.CopyMode, "capture", capture)
    with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        p = ck.checkpoint()
        with pytest.raises(OSError, match=f"epoch {broken[0]}") as e:
            p.result()
        assert e.value.errno == errno.EBADF
        assert not [n for n in os.listdir(tmp_path / "s")
                    if n.startswith(f"e{broken[0]:08d}")], os.listdir(tmp_path / "s")
        pages[:10] = 7
        info = ck.checkpoint().result()
        assert info.kind == "full" and info.extra["written_from_pause"]
    os.close(ro)
    _restores(tmp_path / "s", info.epoch, pages.copy())
    del pages
    arena.close()


def test_staging_still_read_is_never_recycled(tmp_path):
    """A capture released while its writer still reads the staging (the
    checkpointer releases after persist; this checks the guard that holds if
    it ever did not): the buffer is let go, not kept for the next epoch; once
    the writer is done it is kept."""
    s = Store(tmp_path / "s", create=True, page_size=PS)
    data = _content()
    mode = copy_capture.CopyMode(SimpleNamespace(page_size=PS,
                                                 arena=SimpleNamespace(nbytes=NPAGES * PS)))
    pages = np.arange(NPAGES, dtype=np.uint64)
    w = s.begin("full", npages=NPAGES)
    staging = data.copy()
    w._cw.add_async(staging, pages, ready=0, threads=1)
    w.added_natively(pages, None, reading=staging)
    assert w.native_busy()
    mode._recycle(staging, "incremental", NPAGES, w)
    assert mode._spare is None  # would be reused by the next pause while still being read
    w._cw.ready(NPAGES)
    w.commit(pages_dirty=NPAGES, pause_s=0.0)
    assert not w.native_busy()
    mode._recycle(staging, "incremental", NPAGES, w)
    assert mode._spare is staging
    out = np.zeros_like(data)
    s.read_into(1, out)
    assert np.array_equal(out, data)
    s.close()


def test_abort_stops_the_running_add_before_the_pack_is_closed(tmp_path):
    s = Store(tmp_path / "s", create=True, page_size=PS)
    w = s.begin("full", npages=NPAGES)
    staging = _content()
    w._cw.add_async(staging, np.arange(NPAGES, dtype=np.uint64), ready=0, threads=2)
    w.added_natively(np.arange(NPAGES, dtype=np.uint64), None, reading=staging)
    w.abort()  # its threads wait for rows that never come: cancelled, joined
    assert not w.native_busy()
    assert not [n for n in os.listdir(s.path) if n.startswith("e00000001")]
    with s.begin("full", npages=NPAGES) as w2:
        w2.add_pages(np.arange(NPAGES, dtype=np.uint64), staging)
        w2.commit(pages_dirty=NPAGES, pause_s=0.0)
    out = np.zeros_like(staging)
    s.read_into(1, out)
    assert np.array_equal(out, staging)
    s.close()


_FORK_CHILD = textwrap.dedent("""
    import os, sys, json
    import numpy as np
    sys.path.insert(0, {tests!r})
    from memckpt.store import Store
    from test_copy_overlap import _content, NPAGES, PS
    s = Store({path!r}, create=True, page_size=PS)
    w = s.begin("full", npages=NPAGES)
    data = _content()
    staging = np.zeros_like(data)
    pages = np.arange(NPAGES, dtype=np.uint64)
    # running, its threads waiting for rows (and, with rows half in, working)
    w._cw.add_async(staging, pages, ready=0, threads=2)
    w.added_natively(pages, None, reading=staging)
    staging[:NPAGES // 2] = data[:NPAGES // 2]
    w._cw.ready(NPAGES // 2, 2)
    pid = os.fork()
    if pid == 0:  # the child: its copy of the writer is detached; exit runs its finalizers
        {child}
    staging[NPAGES // 2:] = data[NPAGES // 2:]
    w._cw.ready(NPAGES)
    _, status = os.waitpid(pid, 0)
    w.commit(pages_dirty=NPAGES, pause_s=0.0)
    out = np.zeros_like(data)
    s.read_into(1, out)
    print(json.dumps({{"child": os.waitstatus_to_exitcode(status),
                      "exact": bool(np.array_equal(out, data))}}))
""")


@pytest.mark.parametrize("child", ["sys.exit(0)", "w.abort(); sys.exit(0)", "os._exit(0)"])
def test_a_fork_child_never_acts_on_the_parents_running_add(tmp_path, child):
    """A fork while the writer's threads run: the child (which has none of
    them) exits, aborts its copy of the writer, or just dies; it never joins,
    cancels or writes, and the parent's epoch commits and restores exactly."""
    code = _FORK_CHILD.format(tests=str(Path(__file__).parent), path=str(tmp_path / "s"),
                              child=child)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.strip().splitlines()[-1]
    assert out == '{"child": 0, "exact": true}', (out, p.stderr[-3000:])
