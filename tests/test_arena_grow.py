"""Arenas that grow (issue 14): an arena is reserved address space, arrays
are added until it is used, an array can be resized (the last one in place,
any other by moving it), and Arena.size_for sizes an arena for its arrays."""
import warnings

import numpy as np
import pytest

import memckpt
from memckpt import _core
from memckpt.errors import ArenaFull, MemckptError

from conftest import require_backend

PS = memckpt.features().page_size
PAGE_IS_PRESENT, PAGE_IS_PFNZERO = 1 << 3, 1 << 5


def _resident_pages(arena, offset, nbytes):
    """Pages of [offset, offset + nbytes) backed by real memory."""
    a = arena.address + offset
    return (_core.pagemap_scan_count(a, nbytes, PAGE_IS_PRESENT)
            - _core.pagemap_scan_count(a, nbytes, PAGE_IS_PRESENT | PAGE_IS_PFNZERO))


def _need_scan():
    if not memckpt.features().pagemap_scan:
        pytest.skip("counting resident pages needs PAGEMAP_SCAN (Linux >= 6.7)")


def test_arrays_until_the_reservation_is_used_then_a_clear_error():
    with memckpt.Arena(10 * PS) as arena:
        made = [arena.array(f"a{i}", PS // 8 * 3, np.float64) for i in range(3)]  # 3 pages each
        assert arena.used_bytes == 9 * PS and arena.free_bytes == PS
        with pytest.raises(ArenaFull) as ei:
            arena.array("big", PS + 1, np.uint8)
        msg = str(ei.value)
        assert "'big'" in msg and f"{PS + 1} bytes" in msg and f"{PS} of {10 * PS}" in msg
        assert "size_for" in msg
        arena.array("last", PS, np.uint8)  # what is left still fits
        assert arena.free_bytes == 0
        del made


def test_size_for_matches_what_array_lays_out():
    specs = {"u": ((33, 17), np.float64), "empty": (0, np.int32), "v": (5, ("f4", (3,))),
             "w": (PS, np.uint8), "rec": (7, np.dtype([("a", "i2"), ("b", "f8")]))}
    need = memckpt.Arena.size_for(specs)
    assert need == memckpt.Arena.size_for(list(specs.values()))
    with memckpt.Arena(need) as arena:
        for name, (shape, dt) in specs.items():
            arena.array(name, shape, dt)
        assert arena.used_bytes == need == arena.nbytes
        with pytest.raises(ArenaFull):
            arena.array("one more", 1, np.uint8)
    arena = memckpt.Arena.for_arrays(specs, reserve=64 * PS)
    with arena:
        assert arena.nbytes == 64 * PS and arena.used_bytes == need
        assert arena.arrays()["v"].shape == (5, 3)
    assert memckpt.Arena.size_for([]) == PS
    with pytest.raises(TypeError, match="expected \\(shape, dtype\\)"):
        memckpt.Arena.size_for([(3,)])


def test_resize_last_in_place_keeps_content_and_address():
    with memckpt.Arena(64 * PS) as arena:
        a = arena.array("a", 100, np.int64)
        b = arena.array("b", (10, 10), np.float64)
        a[:] = 7
        b[...] = np.arange(100).reshape(10, 10)
        addr = b.ctypes.data
        b2 = arena.resize("b", (30, 10))
        assert b2.ctypes.data == addr and b2.shape == (30, 10)
        assert np.array_equal(b2[:10], np.arange(100).reshape(10, 10)) and not b2[10:].any()
        assert arena.arrays()["b"] is b2 and np.all(a == 7)
        b3 = arena.resize("b", (3, 10))  # shrink: the bytes let go are zero when it grows again
        assert b3.ctypes.data == addr and np.array_equal(b3, np.arange(30).reshape(3, 10))
        assert arena.used_bytes == 2 * PS
        b4 = arena.resize("b", (20, 10))
        assert np.array_equal(b4[:3], np.arange(30).reshape(3, 10)) and not b4[3:].any()
        e = arena.layout()["arrays"][1]
        assert (e["name"], e["shape"], e["offset"], e["nbytes"]) == ("b", [20, 10], PS, 1600)
        with pytest.raises(ArenaFull, match="'b' resized to \\(100000,\\) needs 800000 bytes in place"):
            arena.resize("b", 100000)
        assert arena.arrays()["b"] is b4  # a refused resize changes nothing


def test_resize_middle_moves_it_and_gives_its_pages_back():
    _need_scan()
    with memckpt.Arena(256 * PS) as arena:
        a = arena.array("a", 8 * PS, np.uint8)
        mid = arena.array("mid", 16 * PS // 8, np.float64)
        c = arena.array("c", PS, np.uint8)
        a[:] = 1
        mid[:] = np.arange(mid.size)
        c[:] = 3
        old_off = arena.layout()["arrays"][1]["offset"]
        assert _resident_pages(arena, old_off, 16 * PS) == 16
        new = arena.resize("mid", 40 * PS // 8)
        assert new.ctypes.data == arena.address + 25 * PS  # after c: moved
        assert np.array_equal(new[:mid.size], np.arange(mid.size)) and not new[mid.size:].any()
        assert _resident_pages(arena, old_off, 16 * PS) == 0  # given back
        assert np.all(a == 1) and np.all(c == 3)
        assert [e["name"] for e in arena.layout()["arrays"]] == ["a", "c", "mid"]
        assert list(arena.arrays()) == ["a", "c", "mid"]
        del mid  # the old view: stale, reads the zeros the old block now holds
        assert arena.used_bytes == 65 * PS


def test_resize_refuses_what_it_cannot():
    with memckpt.Arena(8 * PS) as arena:
        arena.array("x", 10)
        with pytest.raises(KeyError, match="no array named 'y'"):
            arena.resize("y", 3)
        with pytest.raises(ValueError, match="non-negative"):
            arena.resize("x", (-1,))
    buf = np.zeros(3 * PS, np.uint8)
    with memckpt.track(buf, name="buf") as adopted:
        with pytest.raises(ValueError, match="adopted"):
            adopted.resize("buf", 10)


def _snapshot(arena):
    return {k: v.copy() for k, v in arena.arrays().items()}


def test_checkpoint_resize_checkpoint_restores_each_layout(backend, tmp_path):
    """Every epoch restores bit-exact with the layout it had, and a rollback
    across a resize is refused with a pointer to restore()."""
    rng = np.random.default_rng(14)
    with memckpt.Arena(512 * PS) as arena:
        arena.array("a", (40, 100), np.float64)[...] = rng.random((40, 100))
        arena.array("b", 3 * PS, np.uint8)[...] = rng.integers(0, 256, 3 * PS, dtype=np.uint8)
        arena.array("c", 1000, np.int32)[...] = rng.integers(0, 1 << 30, 1000, dtype=np.int32)
        seen = {}
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="sync", tracker=backend) as ck:
            def take():
                info = ck.checkpoint().result()
                seen[info.epoch] = (arena.layout(), _snapshot(arena))
                return info
            take()
            c = arena.resize("c", 5000)  # last: in place
            c[1000:] = 5
            take()
            a = arena.resize("a", (60, 100))  # middle: moved
            a[40:] = rng.random((20, 100))
            take()
            b = arena.resize("b", PS // 2)  # middle: moved, shrunk
            b[:10] = 0
            c = arena.resize("c", 10)  # last again after moves: b now
            arena.arrays()["c"][:] = 9
            e4 = take().epoch
            arena.arrays()["a"][0, :5] = -1
            take()
            with pytest.raises(MemckptError, match="restore\\(store, 1\\)"):
                ck.rollback(1)
            ck.rollback(e4)  # same layout: allowed
            assert np.array_equal(arena.arrays()["a"], seen[e4][1]["a"])
    for epoch, (layout, want) in seen.items():
        with memckpt.restore(tmp_path / "s", epoch) as got:
            assert got.layout()["arrays"] == layout["arrays"], epoch
            arrays = got.arrays()
            assert list(arrays) == list(want)
            for k, v in want.items():
                assert arrays[k].dtype == v.dtype and arrays[k].shape == v.shape
                assert arrays[k].tobytes() == v.tobytes(), (epoch, k)
            del arrays


def test_shrink_then_grow_in_place_restores_zeros(backend, tmp_path):
    """The bytes a shrink lets go of read as zero when the array grows back,
    in memory and in every later epoch (never the bytes of before the shrink)."""
    with memckpt.Arena(64 * PS) as arena:
        arena.array("a", PS, np.uint8)[:] = 1
        b = arena.array("b", 8 * PS, np.uint8)
        b[:] = 7
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="sync", tracker=backend) as ck:
            ck.checkpoint().result()
            arena.resize("b", PS // 2)
            ck.checkpoint().result()
            b = arena.resize("b", 8 * PS)
            b[0] = 8
            last = ck.checkpoint().result().epoch
            assert b[0] == 8 and np.all(b[1:PS // 2] == 7) and not b[PS // 2:].any()
            want = b.copy()
            del b
        with memckpt.restore(tmp_path / "s", last) as got:
            assert got.arrays()["b"].tobytes() == want.tobytes()


def test_large_reservation_costs_what_is_used(tmp_path):
    """8 GiB reserved, 16 MiB used, default tracker: the full epoch reads the
    used pages only and each increment holds the pages written, counted (not
    timed); the compare tracker, which would read all 8 GiB, is warned about."""
    _need_scan()
    reserve, used = 8 << 30, 16 << 20
    with memckpt.Arena(reserve) as arena:
        x = arena.array("x", used // 8)
        x[:] = 1.5
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="copy") as ck:
            full = ck.checkpoint().result()
            assert full.kind == "full"
            assert full.extra["pages_unpopulated"] == arena.npages - used // PS
            assert full.pages_stored <= used // PS
            x[:: PS // 8 * 4] = 2.0  # every 4th page
            inc = ck.checkpoint().result()
            assert inc.kind == "incremental" and inc.pages_dirty == used // PS // 4
            x = arena.resize("x", used // 4)  # the last: grows in place, untouched pages stay free
            x[-1] = 3.0
            inc2 = ck.checkpoint().result()
            assert inc2.pages_dirty == 1
        assert _resident_pages(arena, 0, arena.nbytes) <= used // PS + 1
        want = x.copy()
        del x
    with memckpt.restore(tmp_path / "s") as got:
        assert got.arrays()["x"].tobytes() == want.tobytes()


@pytest.mark.parametrize("name,reserve,what", [("compare", 1 << 30, "reads all 1073741824 bytes"),
                                               ("uffd-async", 32 << 30, "about 64 MiB of page tables")])
def test_a_tracker_whose_cost_grows_with_the_reservation_warns(name, reserve, what):
    require_backend(name)
    with memckpt.Arena(reserve) as arena:
        arena.array("x", PS, np.uint8)
        with pytest.warns(ResourceWarning, match=f"the {name} tracker .*{what}"):
            memckpt.DirtyTracker(arena, name).close()
    with memckpt.Arena(4 * PS) as arena:  # sized to what it holds: no warning
        arena.array("x", PS, np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            memckpt.DirtyTracker(arena, name).close()
