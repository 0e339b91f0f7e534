"""Every available backend checked against the pages actually written."""
import os
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memckpt
from conftest import BACKENDS, pages_view, require_backend, touch

NPAGES = 2048  # 8 MiB of 4 KiB pages


def check(info: memckpt.TrackerInfo, got: np.ndarray, written) -> None:
    written = np.unique(np.asarray(list(written), dtype=np.uint64))
    assert got.dtype == np.uint64 and got.ndim == 1
    assert (np.diff(got.astype(np.int64)) > 0).all(), "not sorted and duplicate-free"
    missing = np.setdiff1d(written, got)
    assert missing.size == 0, f"{info.name} missed {missing.size} written pages, e.g. {missing[:8]}"
    if info.exact:
        extra = np.setdiff1d(got, written)
        assert extra.size == 0, f"{info.name} reported {extra.size} pages never written, e.g. {extra[:8]}"


@pytest.fixture
def setup(backend):
    info = require_backend(backend)
    with memckpt.Arena(NPAGES * 4096) as arena:
        data = arena.array("data", NPAGES * 4096, np.uint8)
        with memckpt.DirtyTracker(arena, backend) as tracker:
            yield info, arena, pages_view(arena, data), tracker


def test_never_touched_pages_then_rounds(setup):
    info, arena, pages, tracker = setup
    assert tracker.backend == info.name
    rng = np.random.default_rng(1)
    # round 0 writes pages no one touched before the tracker started
    for rnd in range(30):
        written = rng.choice(NPAGES, size=rng.integers(0, 300), replace=True)
        touch(pages, written)
        check(info, tracker.collect(), written)
    check(info, tracker.collect(), [])  # nothing since the last collect
    touch(pages, np.arange(NPAGES))
    check(info, tracker.collect(), range(NPAGES))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.lists(st.integers(0, NPAGES - 1), max_size=200), min_size=1, max_size=6))
def test_random_write_patterns(setup, rounds):
    info, arena, pages, tracker = setup
    tracker.collect()  # start each example from a clean epoch
    for written in rounds:
        touch(pages, written)
        check(info, tracker.collect(), written)


def test_threads_writing_while_collecting(setup):
    info, arena, pages, tracker = setup
    stop = threading.Event()
    logs = [set() for _ in range(4)]

    words = pages.view(np.uint64)  # (NPAGES, page_size // 8)

    def writer(i):
        rng = np.random.default_rng(100 + i)
        seq = 0
        while not stop.is_set():
            idx = rng.integers(0, NPAGES, size=16)
            logs[i].update(idx.tolist())  # logged before the write
            # a value this word never held: a page's content never returns to
            # an earlier state (which compare would rightly not report)
            seq += 1
            words[idx, i] = seq

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    seen = []
    try:
        for _ in range(50):
            if info.concurrent:  # soft-dirty needs writers stopped to collect
                seen.append(tracker.collect())
            stop.wait(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join()
    seen.append(tracker.collect())
    check(info, np.unique(np.concatenate(seen)), set().union(*logs))


def test_kernel_writes_into_the_arena(setup):
    """read(2) on the program's behalf: file.readinto and os.readv."""
    info, arena, pages, tracker = setup
    payload = np.random.default_rng(5).integers(0, 256, size=3 * 4096, dtype=np.uint8).tobytes()
    with tempfile.TemporaryFile() as f:
        f.write(payload)
        f.seek(0)
        target = pages[100:103].reshape(-1)
        if not info.kernel_writes:
            with pytest.raises(OSError) as ei:
                f.readinto(memoryview(target))
            assert ei.value.errno == 14  # EFAULT: documented for this backend
            check(info, tracker.collect(), [])
            return
        assert f.readinto(memoryview(target)) == len(payload)
        assert target.tobytes() == payload
        check(info, tracker.collect(), [100, 101, 102])
        f.seek(0)
        n = os.readv(f.fileno(), [memoryview(pages[7]), memoryview(pages[1500])])
        assert n == 2 * 4096
        assert pages[1500].tobytes() == payload[4096:8192]
        check(info, tracker.collect(), [7, 1500])


def test_arrays_map_to_their_pages(setup):
    info, arena, pages, tracker = setup
    pages[NPAGES - 1, 0] = 9
    pages[0, 4095] = 9
    check(info, tracker.collect(), [0, NPAGES - 1])


def test_auto_picks_uffd_async_where_the_kernel_has_it():
    f = memckpt.features()
    if not (f.uffd_wp_async and f.uffd_wp_unpopulated and f.pagemap_scan):
        pytest.skip(f"kernel {f.kernel_release} lacks WP_ASYNC or PAGEMAP_SCAN")
    with memckpt.Arena(1 << 16) as arena, memckpt.DirtyTracker(arena) as t:
        assert t.backend == "uffd-async"
        assert "uffd-async" in t.reason


def test_auto_explains_what_it_skipped():
    avail = [t for t in memckpt.trackers() if t.available]
    with memckpt.Arena(1 << 16) as arena, memckpt.DirtyTracker(arena, "auto") as t:
        assert t.backend == avail[0].name
        for skipped in memckpt.trackers()[:BACKENDS.index(t.backend)]:
            assert skipped.name in t.reason and skipped.reason in t.reason


def test_soft_dirty_reported_unavailable_with_reason_on_this_kernel():
    f = memckpt.features()
    info = next(t for t in memckpt.trackers() if t.name == "soft-dirty")
    assert info.available == f.soft_dirty
    if f.soft_dirty:
        pytest.skip("this kernel has soft-dirty (the qemu matrix tests the other case)")
    assert "CONFIG_MEM_SOFT_DIRTY" in info.reason
    with memckpt.Arena(1 << 16) as arena:
        with pytest.raises(memckpt.TrackerUnavailable, match="soft-dirty.*CONFIG_MEM_SOFT_DIRTY"):
            memckpt.DirtyTracker(arena, "soft-dirty")


def test_trackers_lists_the_five_backends():
    infos = memckpt.trackers()
    assert [t.name for t in infos] == ["uffd-async", "uffd-sync", "soft-dirty", "mprotect", "compare"]
    for t in infos:
        assert isinstance(t.available, bool) and isinstance(t.exact, bool)
        assert t.available or t.reason, f"{t.name} unavailable without a reason"
    assert {t.name for t in infos if t.exact} >= {"uffd-async", "uffd-sync", "mprotect", "compare"}
    assert not next(t for t in infos if t.name == "soft-dirty").exact


def test_features_is_frozen_and_cached():
    f = memckpt.features()
    assert f is memckpt.features()
    assert f.page_size == os.sysconf("SC_PAGE_SIZE")
    assert f.thp_mode in {"never", "madvise", "always", "unknown"}
    with pytest.raises(AttributeError):
        f.page_size = 1  # type: ignore[misc]


def test_bad_backend_names_and_busy_arena():
    with memckpt.Arena(1 << 16) as arena:
        with pytest.raises(ValueError, match="unknown backend 'nope'.*uffd-async"):
            memckpt.DirtyTracker(arena, "nope")
        with pytest.raises(TypeError):
            memckpt.DirtyTracker(object(), "auto")  # type: ignore[arg-type]
        with memckpt.DirtyTracker(arena) as t:
            with pytest.raises(memckpt.TrackerBusy, match="already has an open"):
                memckpt.DirtyTracker(arena)
            with pytest.raises(BufferError, match="tracker"):
                arena.close()
            assert t.collect().size == 0
        with memckpt.DirtyTracker(arena):  # free again once closed
            pass


def test_closed_tracker_refuses_collect(backend):
    with memckpt.Arena(1 << 16) as arena:
        t = memckpt.DirtyTracker(arena, backend)
        t.close()
        t.close()
        with pytest.raises(ValueError, match="closed"):
            t.collect()


def test_several_arenas_tracked_at_once(backend):
    info = require_backend(backend)
    if info.name == "soft-dirty":
        pytest.skip("soft-dirty allows one tracker per process (clear_refs is process-wide)")
    arenas = [memckpt.Arena(64 * 4096) for _ in range(3)]
    views = [pages_view(a, a.array("d", 64 * 4096, np.uint8)) for a in arenas]
    trackers = [memckpt.DirtyTracker(a, backend) for a in arenas]
    try:
        for i in range(len(views)):
            touch(views[i], [i, 10 + i])
        for i, t in enumerate(trackers):
            check(info, t.collect(), [i, 10 + i])
    finally:
        for t in trackers:
            t.close()
        del views
        for a in arenas:
            a.close()
