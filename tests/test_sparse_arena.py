"""Full epochs of a mostly empty arena (issue 10, item 13).

A full epoch used to read every page of the arena: copy and sync staged an
arena's worth of pages, background write-protected and copied all of them
(each never-touched one filled with a real page by uffd-sync's handler, and
staged), fork's child hashed them all. Now a full epoch takes only the pages
that may hold data (Region.populated); the others read as zero, which a full
epoch does not record. What must hold:

- the first full epoch of a mostly untouched arena leaves the process's and
  the arena's resident memory, at its peak and after, far below the arena's
  size (memory, not time: the machine is noisy);
- the stored epoch is byte for byte the one every page would have made;
- the trackers stay exact: a page the full epoch skipped is still tracked,
  so the next increment holds exactly the pages written since.
"""
import errno

import numpy as np
import pytest

import memckpt
import memckpt.capture.base as ckmod
from memckpt import _core
from memckpt.capture import MODES

from conftest import require_backend

PS = memckpt.features().page_size
PAGE_IS_PRESENT, PAGE_IS_PFNZERO = 1 << 3, 1 << 5


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (clear_refs 5): False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _arena_resident(arena: memckpt.Arena) -> int:
    """Bytes of the arena backed by real pages (the shared zero page aside)."""
    present = _core.pagemap_scan_count(arena.address, arena.nbytes, PAGE_IS_PRESENT)
    zero = _core.pagemap_scan_count(arena.address, arena.nbytes, PAGE_IS_PRESENT | PAGE_IS_PFNZERO)
    return (present - zero) * PS


def _tracker_for(mode: str) -> str:
    if mode == "background":
        require_backend("uffd-sync")
        return "uffd-sync"
    return "auto"


def _pages(arena: memckpt.Arena) -> np.ndarray:
    return np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, PS)


@pytest.mark.parametrize("mode", MODES)
def test_first_full_epoch_of_a_mostly_empty_arena_stays_small(mode, tmp_path):
    """256 MiB, 1% of the pages written: before the fix copy and sync peaked
    at +256 MiB of staging, background ended at +512 MiB for good (the arena
    filled page by page, and its staging)."""
    if not memckpt.features().pagemap_scan:
        pytest.skip("measuring the arena's resident pages needs PAGEMAP_SCAN (Linux >= 6.7)")
    tracker = _tracker_for(mode)
    nbytes = 256 << 20
    limit = nbytes // 4
    with memckpt.Arena(nbytes) as arena:
        pages = _pages(arena)
        rng = np.random.default_rng(5)
        written = np.sort(rng.choice(arena.npages, arena.npages // 100, replace=False))
        pages[written] = rng.integers(1, 256, (written.size, PS), dtype=np.uint8)
        expect = pages.copy()
        ck = memckpt.Checkpointer(arena, tmp_path / "s", mode=mode, tracker=tracker)
        try:
            peak_known = _reset_peak()
            rss0, arena0 = _status_kib("VmRSS") << 10, _arena_resident(arena)
            info = ck.checkpoint().result()
            peak = (_status_kib("VmHWM") << 10) - rss0
            after = (_status_kib("VmRSS") << 10) - rss0
            grown = _arena_resident(arena) - arena0
            assert info.kind == "full" and info.pages_dirty == arena.npages
            assert info.pages_stored == written.size
            assert grown < limit, f"the arena grew by {grown >> 20} MiB of real pages"
            assert after < limit, f"the process kept {after >> 20} MiB after the epoch"
            if peak_known:
                assert peak < limit, f"the process peaked at +{peak >> 20} MiB"
        finally:
            ck.close()
        del pages
        with memckpt.restore(tmp_path / "s", info.epoch) as got:
            assert np.array_equal(_pages(got), expect)
            del got


def _fill(arena: memckpt.Arena, seed: int) -> dict[str, np.ndarray]:
    """Every kind of page a full epoch meets: written, written with zeros,
    only read (the shared zero page), written then discarded, never touched."""
    pages = _pages(arena)
    n = arena.npages
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    kinds = {"written": np.sort(order[:60]), "zeros": np.sort(order[60:70]),
             "read": np.sort(order[70:90]), "discarded": np.sort(order[90:100]),
             "untouched": np.sort(order[100:])}
    pages[kinds["written"]] = rng.integers(1, 256, (60, PS), dtype=np.uint8)
    pages[kinds["written"][:5]] = pages[kinds["written"][5]]  # dedup too
    pages[kinds["zeros"]] = 0
    assert int(pages[kinds["read"]].sum()) == 0
    pages[kinds["discarded"], 3] = 9
    for p in kinds["discarded"].tolist():
        arena._region.discard(p * PS, PS)
    return kinds


def _files(st: memckpt.Store, epoch: int) -> dict[str, bytes]:
    doc = st.manifest(epoch)
    return {k: (st.path / doc["files"][k]["name"]).read_bytes() for k in ("pack", "idx")}


@pytest.mark.parametrize("mode", MODES)
def test_full_epoch_same_bytes_and_next_increment_exact(mode, backend, tmp_path, monkeypatch):
    """The full epoch over the populated pages against the one over every
    page (two arenas of the same content): the same pack and index, byte for
    byte. Then the pages the full epoch skipped are written: the next
    increment holds exactly the pages written, and every epoch restores."""
    if mode == "background" and backend != "uffd-sync":
        pytest.skip("mode background runs on the uffd-sync tracker only")
    npages = 1024
    with memckpt.Arena(npages * PS) as old_arena, memckpt.Arena(npages * PS) as arena:
        _fill(old_arena, 7)
        kinds = _fill(arena, 7)
        monkeypatch.setattr(ckmod, "SKIP_UNPOPULATED", False)
        with memckpt.Checkpointer(old_arena, tmp_path / "old", mode=mode, tracker=backend) as ck:
            old = ck.checkpoint().result()
        monkeypatch.setattr(ckmod, "SKIP_UNPOPULATED", True)
        pages = _pages(arena)
        with memckpt.Checkpointer(arena, tmp_path / "new", mode=mode, tracker=backend) as ck:
            full = ck.checkpoint().result()
            at_full = pages.copy()
            # the pages not read are the never-touched, only-read and discarded ones
            assert full.extra["pages_unpopulated"] >= kinds["untouched"].size
            assert full.pages_dirty == old.pages_dirty == npages
            assert full.pages_stored == old.pages_stored
            # then write into every kind of page, the skipped ones above all
            rng = np.random.default_rng(8)
            hit = np.sort(np.concatenate([k[rng.choice(k.size, 3, replace=False)]
                                          for k in kinds.values()]))
            pages[hit, 11] += 1
            inc = ck.checkpoint().result()
            assert inc.kind == "incremental"
            if ck.tracker.exact:
                assert inc.pages_dirty == hit.size, (inc.pages_dirty, hit.size)
            at_inc = pages.copy()
            # and one more with nothing written: nothing is left over
            quiet = ck.checkpoint().result()
            if ck.tracker.exact:
                assert quiet.pages_dirty == 0
        with memckpt.Store(tmp_path / "old") as st_old, memckpt.Store(tmp_path / "new") as st:
            assert _files(st, full.epoch) == _files(st_old, old.epoch)
            st.verify()
        for epoch, expect in ((full.epoch, at_full), (inc.epoch, at_inc), (quiet.epoch, at_inc)):
            with memckpt.restore(tmp_path / "new", epoch) as got:
                assert np.array_equal(_pages(got), expect), f"epoch {epoch}"
        del pages


def test_region_populated_lists_the_pages_that_may_hold_data():
    with memckpt.Arena(256 * PS) as arena:
        kinds = _fill(arena, 3)
        for read in (False, True):
            got = arena._region.populated(read)
            assert got.dtype == np.uint64
            # zeros-written pages are real pages; only-read ones the zero page
            assert set(got.tolist()) >= set(kinds["written"].tolist()) | set(kinds["zeros"].tolist())
            assert not set(got.tolist()) & set(kinds["untouched"].tolist())
            assert not set(got.tolist()) & set(kinds["discarded"].tolist())


def test_bg_begin_takes_populated_and_extra_pages_and_stays_exact():
    require_backend("uffd-sync")
    with memckpt.Arena(512 * PS) as arena:
        pages = _pages(arena)
        pages[[3, 4, 100], 0] = 1       # before the tracker: populated, not dirty
        tr = memckpt.DirtyTracker(arena, "uffd-sync")
        try:
            pages[[7, 200], 1] = 2      # dirty
            staging = np.empty((arena.npages, PS), np.uint8)
            got, _ = tr.bg_begin(staging, populated=True,
                                 extra=np.array([50, 300], dtype=np.uint64))
            assert got.tolist() == [3, 4, 7, 50, 100, 200, 300]
            tr.bg_wait()
            assert np.array_equal(staging[:got.size], pages[got.astype(np.int64)])
            assert tr.collect().size == 0          # nothing written since the instant
            pages[[50, 400], 2] = 3                 # an extra page, a never-touched one
            assert tr.collect().tolist() == [50, 400]
            with pytest.raises(OSError) as exc:
                tr.bg_begin(staging, extra=np.array([9, 8], dtype=np.uint64))
            assert exc.value.errno == errno.EINVAL
            assert tr.collect().size == 0
        finally:
            tr.close()
        del pages
