import gc
import json

import numpy as np
import pytest

import memckpt


def test_arrays_are_page_aligned_zero_filled_and_named():
    with memckpt.Arena(1 << 20) as arena:
        a = arena.array("a", (10, 3), np.float32)
        b = arena.array("b", 5000, np.int64)
        c = arena.array("c", (2, 2, 2), "u2")
        for arr in (a, b, c):
            assert arr.ctypes.data % arena.page_size == 0
            assert not arr.any()
            assert arr.flags.writeable and arr.flags.c_contiguous
        assert a.shape == (10, 3) and a.dtype == np.float32
        assert b.shape == (5000,) and c.dtype == np.uint16
        assert list(arena.arrays()) == ["a", "b", "c"]
        assert arena.arrays()["b"] is b
        # the arrays live inside the mapping, one after the other
        assert a.ctypes.data == arena.address
        assert b.ctypes.data == arena.address + arena.page_size
        assert c.ctypes.data == arena.address + arena.page_size * (1 + -(-5000 * 8 // arena.page_size))
        b[:] = 7
        assert (arena.arrays()["b"] == 7).all()
        del a, b, c


def test_layout_is_json_and_describes_every_array():
    with memckpt.Arena(64 * 1024) as arena:
        arena.array("x", (3, 4), np.complex64)
        arena.array("y", 1, np.uint8)
        lay = json.loads(json.dumps(arena.layout()))
        assert lay["nbytes"] == arena.nbytes and lay["page_size"] == arena.page_size
        assert [e["name"] for e in lay["arrays"]] == ["x", "y"]
        x = lay["arrays"][0]
        assert np.dtype(x["dtype"]) == np.complex64 and x["shape"] == [3, 4]
        assert x["offset"] == 0 and x["nbytes"] == 3 * 4 * 8
        assert lay["arrays"][1]["offset"] == arena.page_size


def test_nbytes_rounds_up_to_whole_pages():
    with memckpt.Arena(1) as arena:
        assert arena.nbytes == arena.page_size
        assert arena.npages == 1


@pytest.mark.parametrize("nbytes, exc", [(0, ValueError), (-4096, ValueError), (1.5, TypeError),
                                         ("4096", TypeError), (True, TypeError)])
def test_bad_sizes_are_refused(nbytes, exc):
    with pytest.raises(exc, match="nbytes"):
        memckpt.Arena(nbytes)


def test_bad_arrays_are_refused_with_the_name():
    with memckpt.Arena(8192) as arena:
        arena.array("a", 10)
        with pytest.raises(ValueError, match="already has an array named 'a'"):
            arena.array("a", 10)
        with pytest.raises(ValueError, match="non-empty string"):
            arena.array("", 10)
        with pytest.raises(ValueError, match="shape"):
            arena.array("neg", (-1, 2))
        with pytest.raises(TypeError, match="Python objects"):
            arena.array("obj", 3, object)
        with pytest.raises(memckpt.ArenaFull, match="'big' needs 8000 bytes but the arena has 4096"):
            arena.array("big", 1000)
        with pytest.raises(MemoryError):  # ArenaFull is a MemoryError too
            arena.array("big", 1000)
        # a failed request takes no room
        assert arena.array("fits", 512).nbytes == 4096


def test_close_refuses_while_arrays_live_and_then_succeeds():
    arena = memckpt.Arena(8192)
    a = arena.array("a", 16)
    a[:] = 3
    with pytest.raises(BufferError, match="arrays still referenced: a"):
        arena.close()
    # refused, so nothing changed: the arena still works
    assert not arena.closed
    assert (arena.arrays()["a"] == 3).all()
    view = a[2:5]
    del a
    with pytest.raises(BufferError):
        arena.close()  # a view holds the buffer too
    del view
    gc.collect()
    arena.close()
    assert arena.closed
    with pytest.raises(ValueError, match="closed"):
        arena.array("b", 1)
    arena.close()  # twice is fine


def test_with_block_leaves_arrays_valid_after_exit():
    with memckpt.Arena(8192) as arena:
        a = arena.array("a", 16)
        a[:] = 5
    # the mapping lives as long as the array does: reading it is safe
    assert (a == 5).all()
    a[0] = 1
    assert a[0] == 1


def test_hugepage_arena_is_2mib_aligned():
    with memckpt.Arena(3 << 20, hugepages=True) as arena:
        x = arena.array("x", 1 << 18, np.float64)
        assert arena.address % (2 << 20) == 0
        assert arena.nbytes == 4 << 20
        x[:] = 1.0
        assert x.sum() == 1 << 18
        del x


def test_subarray_dtype_shape_goes_to_the_end():
    """Regression (issue 10, item 14): a sub-array dtype raised numpy's bare
    reshape error; it means what it means to numpy (np.zeros(4, ("f8", 3)))."""
    with memckpt.Arena(16 * 4096) as a:
        x = a.array("x", (4,), ("f8", (3,)))
        assert x.shape == (4, 3) and x.dtype == np.float64
        assert x.shape == np.zeros(4, ("f8", 3)).shape
        y = a.array("y", 2, np.dtype(("i4", (2, 2))))
        assert y.shape == (2, 2, 2) and y.dtype == np.int32
        assert [e["shape"] for e in a.layout()["arrays"]] == [[4, 3], [2, 2, 2]]
        del x, y


def test_close_names_the_open_tracker(tmp_path):
    """Regression (issue 10, item 14): a Checkpointer dropped without close()
    keeps its tracker open and the arena busy; the error says so."""
    import gc
    a = memckpt.Arena(16 * 4096)
    ck = memckpt.Checkpointer(a, tmp_path / "s", tracker="compare")
    ck.checkpoint().result()
    del ck
    gc.collect()
    with pytest.raises(BufferError, match=r"compare tracker is open on it.*Checkpointer dropped "
                                          r"without close\(\)"):
        a.close()
    a.tracker.close()
    a.close()
