"""memckpt.allocating: numpy arrays made in the block (by any code, on this
thread) of at least ``threshold`` bytes live in the arena, are checkpointed
and restored bit-exact, and are freed into it whenever numpy frees them."""
import threading

import numpy as np
import pytest

import memckpt

PS = memckpt.features().page_size


def inside(arena, a) -> bool:
    lo = arena.address
    return lo <= a.ctypes.data and a.ctypes.data + a.nbytes <= lo + arena.nbytes


@pytest.fixture
def arena():
    a = memckpt.Arena(256 * PS)
    yield a
    try:
        a.close()
    except BufferError:
        pass


def test_arrays_land_in_the_arena_above_threshold(arena):
    with memckpt.allocating(arena, threshold=8 * PS):
        big = np.zeros(8 * PS // 8)             # exactly the threshold
        small = np.zeros(8 * PS // 8 - 1)       # one item below
        derived = big + 1                        # a ufunc's output: numpy allocates it
        copied = big.copy()
    after = np.zeros(8 * PS // 8)
    assert inside(arena, big) and inside(arena, derived) and inside(arena, copied)
    assert not inside(arena, small) and not inside(arena, after)
    assert big.ctypes.data % PS == 0
    assert np.all(derived == 1)
    names = [e["name"] for e in arena.layout()["arrays"]]
    assert len(names) == 3 and all(n.startswith("numpy@") for n in names)


def test_other_threads_unaffected(arena):
    out = {}
    gate = threading.Event()

    def worker():
        gate.wait()
        out["a"] = np.zeros(64 * PS // 8)

    t = threading.Thread(target=worker)
    t.start()
    with memckpt.allocating(arena, threshold=PS):
        gate.set()
        t.join()
        mine = np.zeros(64 * PS // 8)
    assert inside(arena, mine) and not inside(arena, out["a"])


def test_checkpoint_and_restore_exact(arena, tmp_path):
    rng = np.random.default_rng(1)
    with memckpt.allocating(arena, threshold=PS):
        u = rng.random((64, 64))          # random() allocates its result
        v = np.empty(3 * PS + 17, np.uint8)
    arena.name_array(u, "u")
    v[:] = rng.integers(0, 255, v.size, dtype=np.uint8)
    with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        snaps = {}
        for step in range(6):
            u[rng.integers(0, 64), :] = rng.random(64)
            v[rng.integers(0, v.size, 5)] = step
            snaps[ck.checkpoint().result().epoch] = (u.copy(), v.copy())
        e = list(snaps)[2]
        u[:] = 0
        ck.rollback(e)
        assert np.array_equal(u, snaps[e][0]) and np.array_equal(v, snaps[e][1])
    off_v = v.ctypes.data - arena.address
    for e, (wu, wv) in snaps.items():
        r = memckpt.restore(tmp_path / "s", e)
        got = r.arrays()
        assert got["u"].dtype == u.dtype and got["u"].shape == u.shape
        assert got["u"].tobytes() == wu.tobytes()
        assert got[f"numpy@{off_v}"].tobytes() == wv.tobytes()


def test_freed_blocks_are_reused_and_zeroed(arena):
    with memckpt.allocating(arena, threshold=PS):
        a = np.ones(4 * PS // 8)
        addr = a.ctypes.data
        del a
        b = np.zeros(4 * PS // 8)             # calloc into the freed block: zeroed
        assert b.ctypes.data == addr and not b.any()
        c = np.empty(2 * PS // 8)
    del b
    with memckpt.allocating(arena, threshold=PS):
        d = np.empty(4 * PS // 8)
        assert d.ctypes.data == addr
    assert inside(arena, c)


def test_arrays_outlive_the_block(arena):
    with memckpt.allocating(arena, threshold=PS):
        a = np.zeros(16 * PS // 8)
    with pytest.raises(BufferError, match="still alive"):
        arena.close()
    a += 1          # still usable
    del a           # freed by the arena's handler, after the block
    assert arena.layout()["arrays"] == []
    arena.close()
    assert arena.closed


def test_realloc_moves_within_the_arena(arena):
    with memckpt.allocating(arena, threshold=PS):
        a = np.arange(2 * PS // 8, dtype=np.float64)
        a.resize(8 * PS // 8, refcheck=False)     # numpy reallocs the data
    assert inside(arena, a)
    assert np.array_equal(a[:2 * PS // 8], np.arange(2 * PS // 8)) and not a[2 * PS // 8:].any()
    assert len(arena.layout()["arrays"]) == 1


def test_full_error(arena):
    with pytest.raises(memckpt.ArenaFull, match="does not fit in the arena"):
        with memckpt.allocating(arena, threshold=PS):
            np.zeros(300 * PS // 8)
    with memckpt.allocating(arena, threshold=PS):     # inside the block: numpy's MemoryError
        with pytest.raises(MemoryError):
            np.zeros(300 * PS // 8)


def test_full_fallback(arena):
    with memckpt.allocating(arena, threshold=PS, on_full="fallback"):
        fits = np.zeros(200 * PS // 8)
        spills = np.ones(100 * PS // 8)
    assert inside(arena, fits) and not inside(arena, spills)
    assert spills.sum() == spills.size
    del spills  # freed by the C library's free: no crash, nothing in the layout
    assert len(arena.layout()["arrays"]) == 1


def test_bad_arguments(arena, tmp_path):
    with pytest.raises(ValueError, match="on_full"):
        memckpt.allocating(arena, on_full="grow")
    with pytest.raises(ValueError, match="threshold"):
        memckpt.allocating(arena, threshold=-1)
    with pytest.raises(TypeError, match="memckpt.Arena"):
        memckpt.allocating(np.zeros(3))
    x = np.zeros(PS)
    with memckpt.track(x) as adopted:
        with pytest.raises(ValueError, match="adopted"):
            memckpt.allocating(adopted)
    with pytest.raises(ValueError, match="no array was made"):
        arena.name_array(np.zeros(3), "z")
    with memckpt.allocating(arena, threshold=PS):
        a = np.zeros(PS)
    with pytest.raises(ValueError, match="does not start a block"):
        arena.name_array(np.zeros(PS), "a")     # not in the arena
    arena.name_array(a[1:-1], "a")              # a view: the array it views is named
    (e,) = arena.layout()["arrays"]
    assert (e["name"], e["shape"], e["dtype"]) == ("a", [PS], "<f8")
    with pytest.raises(ValueError, match="already has"):
        arena.name_array(a, "a")


def test_checkpoint_taken_inside_the_block(arena, tmp_path):
    """memckpt's own scratch (page lists, the staging of mode "copy", as big as
    the arena) never lands in the arena a checkpoint inside the block snapshots."""
    with memckpt.allocating(arena, threshold=PS):
        u = np.random.default_rng(3).random(64 * PS // 8)
        arena.name_array(u, "u")
        with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
            ck.checkpoint().result()
            u[::512] = -1.0
            ck.checkpoint().result()
            assert [e["name"] for e in arena.layout()["arrays"]] == ["u"]
    assert memckpt.restore(tmp_path / "s").arrays()["u"].tobytes() == u.tobytes()
