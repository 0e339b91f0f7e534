"""Background (copy-before-write) capture at the binding level: a
DirtyTracker("uffd-sync") and its bg_begin / bg_wait, while Python and native
(cffi) threads keep writing known patterns into the arena during the copy.

The instant is checked without stopping the writers: every write is numbered
and logged, so the arena at any cut of the writers' logs can be rebuilt. The
staged pages must equal the arena rebuilt at one cut, bit for bit (the cut of
each Python writer is the newest of its numbers that staging holds); every
write before the cut must lie in the collected pages; every write after it
must be in the next collect.
"""
import errno
import gc
import itertools
import threading
import time

import numpy as np
import pytest

import memckpt
from memckpt import _core
from memckpt.tracker import DirtyTracker

def _uffd_sync_reason():
    ok, why = _core.bg_supported(_core.backend_lookup("uffd-sync"))
    return None if ok else why


pytestmark = pytest.mark.skipif(_uffd_sync_reason() is not None,
                                reason=f"uffd-sync unavailable here: {_uffd_sync_reason()}")

NPAGES = 8192        # 32 MiB: a copy of a few ms, long enough for writers to meet it
NATIVE = (6144, 512)  # pages [6144, 6656): the native writer's, word 0 of each
NPY = 3               # Python writers: writer w writes word w+1 of pages below 6144


@pytest.fixture
def arena():
    a = memckpt.Arena(NPAGES * 4096)
    yield a
    gc.collect()  # pytest.raises keeps a cycle through the test's frame and its views
    a.close()


def _words(arena):
    return np.frombuffer(arena.buffer(), dtype=np.uint64).reshape(arena.npages, arena.page_size // 8)


class PyWriter(threading.Thread):
    """Writes its running count k into word id+1 of random pages below
    NATIVE[0]; log[k-1] is the page of write k."""

    def __init__(self, words, wid, stop):
        super().__init__(daemon=True)
        self.words, self.wid, self.stop = words, wid, stop
        self.log = []
        self.rng = np.random.default_rng(1000 + wid)

    def run(self):
        words, col, log = self.words, self.wid + 1, self.log
        pages = self.rng.integers(0, NATIVE[0] // 2, size=1 << 20)  # half of it: D pages recur
        k = 0
        while not self.stop.is_set() and k < pages.size:
            p = int(pages[k])
            log.append(p)
            k += 1
            words[p, col] = k


class NativeWriter(threading.Thread):
    """Rounds of memckpt.workloads.random_pages over a fixed page set, GIL
    released: each round adds 1 to word 0 of every page, in order."""

    def __init__(self, arena, stop):
        super().__init__(daemon=True)
        from memckpt import workloads
        self.wl = workloads
        self.buf = np.frombuffer(arena.buffer(), dtype=np.uint8)
        self.idx = np.arange(NATIVE[0], NATIVE[0] + NATIVE[1], dtype=np.uint64)
        self.stop = stop
        self.rounds = 0

    def run(self):
        while not self.stop.is_set():
            self.wl.random_pages(self.buf, self.idx)
            self.rounds += 1


def _native_writer(arena, stop):
    try:
        return NativeWriter(arena, stop)
    except ImportError as exc:  # no cffi or no compiler: Python writers only
        pytest.skip(f"native writers unavailable: {exc}")


def test_snapshot_under_writers(arena):
    words = _words(arena)
    wpp = arena.page_size // 8
    stop = threading.Event()
    native = _native_writer(arena, stop)
    tr = DirtyTracker(arena, "uffd-sync")
    writers = [PyWriter(words, w, stop) for w in range(NPY)]
    staging = np.empty((NPAGES, wpp), dtype=np.uint64)
    model = np.zeros((NPAGES, wpp), dtype=np.uint64)  # the arena at the last cut
    cut_prev = [0] * NPY
    native_prev = 0  # the native writer's rounds at the last cut (word 0 of its pages)
    waited = 0
    try:
        for w in writers:
            w.start()
        native.start()
        # 8 cycles, and more (up to 24) until a write met a page awaiting its
        # copy: on a loaded machine the writers may be off the CPU for most
        # copies (134, 30, 7 waits in 8 cycles in three runs beside two CPU hogs)
        for cycle in itertools.count():
            if cycle >= 8 and (waited or cycle >= 24):
                break
            time.sleep(0.03 if cycle % 2 else 0.005)
            if cycle % 3 == 2:  # a pre-arm while the writers run, then more writes
                tr.bg_prearm()
                time.sleep(0.003)
            pages, st = tr.bg_begin(staging, _core.BG_GAP_SPAN if cycle == 5 else _core.BG_GAP_AUTO)
            done = tr.bg_wait()
            waited += done["faults_waited"]
            assert st["pages"] == pages.size and st["protect_calls"] >= (1 if pages.size else 0)
            staged = staging[:pages.size]
            in_d = np.zeros(NPAGES, dtype=bool)
            in_d[pages.astype(np.int64)] = True
            # Python writers: the cut is the newest write staging holds (or the
            # last cut, if the writer wrote nothing since: D holds none of its pages)
            for w in writers:
                col = w.wid + 1
                cut = max(cut_prev[w.wid], int(staged[:, col].max()) if pages.size else 0)
                log = np.asarray(w.log[cut_prev[w.wid]:cut], dtype=np.int64)
                assert in_d[log].all(), (f"cycle {cycle}: writer {w.wid}: {int((~in_d[log]).sum())} "
                                         "writes before the instant are not in the collected pages")
                # the last write to each page before the cut is what it holds
                if log.size:
                    k = np.arange(cut_prev[w.wid] + 1, cut + 1, dtype=np.uint64)
                    np.maximum.at(model[:, col], log, k)
                cut_prev[w.wid] = cut
            # the native writer: in page order, a consistent cut is a prefix
            # one round ahead of the rest (or all equal)
            nat = staged[np.isin(pages, np.arange(NATIVE[0], NATIVE[0] + NATIVE[1]))][:, 0]
            mine = np.arange(NATIVE[0], NATIVE[0] + NATIVE[1])
            cur = model[mine, 0].copy()
            cur_sel = in_d[mine]
            cur[cur_sel] = nat
            assert (np.diff(cur.astype(np.int64)) <= 0).all() and int(cur[0]) - int(cur[-1]) <= 1, (
                f"cycle {cycle}: the native writer's pages are not one cut of its rounds: "
                f"{np.unique(cur)}")
            assert int(cur.min()) >= native_prev
            if int(cur.max()) > int(model[mine, 0].max()):
                # pages it wrote since the last cut were all collected
                assert cur_sel[cur != model[mine, 0]].all()
            model[mine, 0] = cur
            native_prev = int(cur.min())
            # bit for bit: every staged page is the rebuilt arena
            bad = np.flatnonzero((staged != model[pages.astype(np.int64)]).any(axis=1))
            assert bad.size == 0, (f"cycle {cycle}: {bad.size} of {pages.size} staged pages differ "
                                   f"from the arena at the instant (first: page {int(pages[bad[0]])})")
    finally:
        stop.set()
        for w in writers:
            w.join()
        native.join()
    # writers stopped: the next collect holds every write after the last cut
    after = tr.collect()
    in_next = np.zeros(NPAGES, dtype=bool)
    in_next[after.astype(np.int64)] = True
    for w in writers:
        log = np.asarray(w.log[cut_prev[w.wid]:], dtype=np.int64)
        assert in_next[log].all(), f"writer {w.wid}: writes after the last instant not collected"
        if log.size:
            k = np.arange(cut_prev[w.wid] + 1, cut_prev[w.wid] + log.size + 1, dtype=np.uint64)
            np.maximum.at(model[:, w.wid + 1], log, k)
    mine = np.arange(NATIVE[0], NATIVE[0] + NATIVE[1])
    assert (words[mine, 0] == native.rounds).all()
    moved = words[mine, 0] != model[mine, 0]
    assert in_next[mine[moved]].all(), "native writes after the last instant not collected"
    model[mine, 0] = words[mine, 0]
    assert np.array_equal(words, model), "the arena differs from the writers' logs"
    assert waited > 0, f"no write met a page awaiting its copy in {cycle} cycles: the test did not race"
    tr.close()


def test_close_mid_copy_finishes_the_copy(arena):
    words = _words(arena)
    words[:, 0] = np.arange(NPAGES, dtype=np.uint64) * 7 + 1
    expect = words.copy()
    tr = DirtyTracker(arena, "uffd-sync")
    tr.collect()
    words[:, 1] = 5  # every page dirty
    expect[:, 1] = 5
    staging = np.empty_like(words)
    stop = threading.Event()

    def writer():
        rng = np.random.default_rng(7)
        while not stop.is_set():
            words[int(rng.integers(NPAGES)), 2] += 1

    t = threading.Thread(target=writer, daemon=True)
    pages, _ = tr.bg_begin(staging)
    t.start()
    tr.close()  # finishes the copy, then unregisters: the writer must not hang
    stats = tr._t.bg_wait()
    stop.set()
    t.join(10)
    assert not t.is_alive()
    assert pages.size == NPAGES and stats["pages"] == NPAGES
    assert np.array_equal(staging, expect)


def test_errors(arena):
    staging = np.empty((4, arena.page_size), dtype=np.uint8)
    with DirtyTracker(arena, "mprotect") as tr:
        with pytest.raises(OSError) as ei:
            tr.bg_begin(staging)
        assert ei.value.errno == errno.EOPNOTSUPP and '"copy"' in str(ei.value)
    tr = DirtyTracker(arena, "uffd-sync")
    words = _words(arena)
    with pytest.raises(ValueError, match="no background copy"):
        tr.bg_wait()
    words[:6, 0] = 1
    with pytest.raises(OSError, match="nothing was lost") as ei:
        tr.bg_begin(staging)
    assert ei.value.errno == errno.ENOBUFS
    with pytest.raises(ValueError, match="whole number"):
        tr.bg_begin(np.empty(100, dtype=np.uint8))
    big = np.empty((8, arena.page_size), dtype=np.uint8)
    pages, _ = tr.bg_begin(big)
    assert pages.tolist() == list(range(6)) and not pages.flags.writeable
    with pytest.raises(OSError, match="already pending"):
        tr.bg_begin(big)
    tr.bg_wait()
    assert (big[:6].view(np.uint64)[:, 0] == 1).all()
    tr.close()


# ---- Checkpointer(mode="background") ------------------------------------------

def test_checkpointer_background_needs_uffd_sync(arena, tmp_path):
    with pytest.raises(ValueError, match="tracker='uffd-sync'") as ei:
        memckpt.Checkpointer(arena, tmp_path / "s", mode="background", tracker="mprotect")
    assert '"copy"' in str(ei.value) and '"fork"' in str(ei.value)
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="background") as ck:
        assert ck.tracker.backend == "uffd-sync" and ck.mode == "background"


def test_checkpointer_background_epochs_while_native_writers_go_on(arena, tmp_path):
    """The writers never stop, not even for the pause: each epoch must still
    be one cut of the native writer's rounds, and the last epoch, taken with
    the writers stopped, equals the arena."""
    stop = threading.Event()
    native = _native_writer(arena, stop)
    words = _words(arena)
    mine = np.arange(NATIVE[0], NATIVE[0] + NATIVE[1])
    infos = []
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="background") as ck:
        native.start()
        try:
            for _ in range(6):
                time.sleep(0.01)
                infos.append(ck.checkpoint().result())
        finally:
            stop.set()
            native.join()
        last = ck.checkpoint().result()
        expect = words.copy()
    for info in infos + [last]:
        for key in ("protect_s", "copy_s", "faults_waited", "collect_s"):
            assert key in info.extra, info.extra
        assert info.pause_s >= info.extra["protect_s"]
    assert infos[0].kind == "full" and infos[0].pages_dirty == NPAGES
    with memckpt.Store(tmp_path / "s") as st:
        st.verify()
        for info in infos:
            with memckpt.restore(st, info.epoch) as got:
                w0 = _words(got)[mine, 0].astype(np.int64)
                assert (np.diff(w0) <= 0).all() and w0[0] - w0[-1] <= 1, (
                    f"epoch {info.epoch} is not one cut of the writer's rounds: {np.unique(w0)}")
                del w0
        with memckpt.restore(st, last.epoch) as got:
            assert np.array_equal(_words(got), expect)


def test_checkpointer_background_failed_persist_loses_nothing(arena, tmp_path):
    st = memckpt.Store(tmp_path / "s", create=True)
    words = _words(arena)
    fail = {"on": False}
    real_begin = st.begin

    def begin(**kw):
        w = real_begin(**kw)
        if fail["on"]:
            fail["on"] = False

            def broken(*a, **k):
                raise OSError(28, "No space left on device (injected)")
            w.add_pages = broken
        return w

    st.begin = begin
    with memckpt.Checkpointer(arena, st, mode="background") as ck:
        e1 = ck.checkpoint().result()
        words[10, 0] = 10
        fail["on"] = True
        with pytest.raises(OSError, match="injected"):
            ck.checkpoint().result()
        words[11, 0] = 11
        e2 = ck.checkpoint().result()  # carries the failed epoch's pages
        assert e2.parent == e1.epoch
        expect = words.copy()
    st.verify()
    with memckpt.restore(st, e2.epoch) as got:
        assert np.array_equal(_words(got), expect)
    st.close()


def test_checkpointer_prepare_shortens_what_the_pause_protects(arena, tmp_path):
    words = _words(arena)
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="background") as ck:
        ck.checkpoint().result()
        words[100:200, 0] = 1
        assert ck.prepare() == 100
        words[150:160, 1] = 2  # written again after the pre-arm
        info = ck.checkpoint().result()
        assert info.pages_dirty == 100 and info.extra["prearmed"] == 90
        expect = words.copy()
    with memckpt.Checkpointer(arena, tmp_path / "c", mode="copy") as ck:
        assert ck.prepare() == 0
    with memckpt.restore(tmp_path / "s", info.epoch) as got:
        assert np.array_equal(_words(got), expect)
