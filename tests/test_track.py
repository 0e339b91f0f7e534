"""memckpt.track (Arena.adopt): memory the program already has, checkpointed
in place. Its whole pages are tracked by the backend, its partial edge pages,
shared with its neighbours, by comparing its own bytes; a restore or rollback
gives back exactly its bytes and never writes a neighbour's.

The conformance part runs in every backend available here and in the capture
modes that can snapshot an adopted buffer (not "background": its edge pages
cannot be write-protected without stopping the neighbour)."""
import errno
import mmap

import numpy as np
import pytest

import memckpt
from memckpt.track import adopted_entry

PS = memckpt.features().page_size
BACKENDS = [t.name for t in memckpt.trackers() if t.available]
MODES = ["copy", "fork", "sync"]


def pool_and_view(n_items: int, lead: int, tail: int, seed: int = 0):
    """A float64 pool (the neighbours) and a C-contiguous view into it that
    starts ``lead`` items in and stops ``tail`` items before the end, placed
    so that both of its ends fall inside pages."""
    pool = np.random.default_rng(seed).random(n_items + lead + tail + PS)
    # move the view's start off any page boundary
    skew = (-(pool.ctypes.data + lead * 8)) % PS // 8
    start = lead + (skew + 3) % (PS // 8)
    if (pool.ctypes.data + start * 8) % PS == 0:
        start += 1
    x = pool[start:start + n_items]
    assert x.ctypes.data % PS and (x.ctypes.data + x.nbytes) % PS
    return pool, x, start


def neighbour_mask(pool, start, n):
    m = np.ones(pool.size, bool)
    m[start:start + n] = False
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_edges_compared_and_neighbours_ignored(backend):
    pool, x, start = pool_and_view(3 * PS // 8, 64, 64)
    with memckpt.track(x, name="x") as arena, memckpt.DirtyTracker(arena, backend) as t:
        n = arena.npages
        assert arena.adopted and arena.arrays()["x"] is x
        assert t.collect().size == 0
        pool[start - 1] = -1.0          # the neighbour, in the head edge page
        pool[start + x.size] = -2.0     # the neighbour, in the tail edge page
        assert t.collect().tolist() == []
        x[0] = 5.0                      # head edge
        assert t.collect().tolist() == [0]
        x[-1] = 6.0                     # tail edge
        assert t.collect().tolist() == [n - 1]
        x[0] = x[0]                     # the same bytes: no change
        assert t.collect().tolist() == []
        mid = (PS - (x.ctypes.data % PS)) // 8 + PS // 8   # an element of page 2
        x[mid] += 1
        x[-1] += 1
        assert t.collect().tolist() == [2, n - 1]


@pytest.mark.parametrize("nbytes,offset", [(100, 1000), (PS, 2000), (PS + 8, 8)])
def test_small_buffers(nbytes, offset, tmp_path):
    """A buffer inside one page, and over two pages with no whole page."""
    raw = bytearray(3 * PS)
    base = np.frombuffer(raw, np.uint8)
    skew = (-base.ctypes.data) % PS
    mv = memoryview(raw)[skew + offset:skew + offset + nbytes]
    with memckpt.track(mv, name="b") as arena:
        with memckpt.Checkpointer(arena, tmp_path / "s", tracker=BACKENDS[0]) as ck:
            mv[:] = bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
            e1 = ck.checkpoint().result().epoch
            want = bytes(mv)
            mv[-1] ^= 0xFF
            raw[skew + offset - 1] = 7          # neighbours
            raw[skew + offset + nbytes] = 9
            ck.checkpoint().result()
            ck.rollback(e1)
            assert bytes(mv) == want
            assert raw[skew + offset - 1] == 7 and raw[skew + offset + nbytes] == 9
    got = memckpt.restore(tmp_path / "s", e1).arrays()["b"]
    assert got.tobytes() == want


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_writes_every_epoch_exact(backend, mode, tmp_path):
    """Random writes, to the whole pages, the edge pages and the neighbours
    that share them, across many checkpoints: every epoch restores bit-exact,
    and rollbacks give back the buffer's bytes without touching a neighbour."""
    rng = np.random.default_rng(hash((backend, mode)) % 2**32)
    pool, x, start = pool_and_view(40 * PS // 8 + 5, 32, 32)
    nb = neighbour_mask(pool, start, x.size)
    store = tmp_path / "s"
    snaps = {}
    with memckpt.track(x, name="x") as arena:
        with memckpt.Checkpointer(arena, store, tracker=backend, mode=mode) as ck:
            for step in range(12):
                k = rng.integers(1, 40)
                idx = rng.integers(0, x.size, size=k)
                x[idx] = rng.random(k)
                x[: rng.integers(0, 3)] = step            # head edge
                x[x.size - rng.integers(0, 3):] = -step   # tail edge
                pool[start - rng.integers(1, 32)] = rng.random()   # neighbours
                pool[start + x.size + rng.integers(0, 32)] = rng.random()
                e = ck.checkpoint().result().epoch
                snaps[e] = x.copy()
            for e in rng.permutation(list(snaps))[:5]:
                x[rng.integers(0, x.size, size=50)] = rng.random(50)
                x[0], x[-1] = 1e9, -1e9
                pool[start - 1], pool[start + x.size] = 42.0, 43.0
                before = pool[nb].copy()
                ck.rollback(int(e))
                assert np.array_equal(x, snaps[e]), f"rollback to {e}"
                assert np.array_equal(pool[nb], before), "a rollback wrote a neighbour"
    for e, want in snaps.items():
        got = memckpt.restore(store, e).arrays()["x"]
        assert got.dtype == x.dtype and got.shape == x.shape
        assert got.tobytes() == want.tobytes(), f"epoch {e}"


def test_resume_continues_typed(tmp_path):
    pool, x, start = pool_and_view(10 * PS // 8, 16, 16)
    with memckpt.track(x, name="x") as arena, memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        ck.checkpoint().result()
        x[7] = 3.5
        ck.checkpoint().result()
    ck2 = memckpt.Checkpointer.resume(tmp_path / "s")
    try:
        y = ck2.arena.arrays()["x"]
        assert y.tobytes() == x.tobytes()
        y[9] = 1.25
        e = ck2.checkpoint().result()
        assert e.kind == "incremental"
        want = y.copy()
    finally:
        ck2.close()
    assert memckpt.restore(tmp_path / "s").arrays()["x"].tobytes() == want.tobytes()


def test_layout_readable_by_older_readers():
    """The store sees the covered pages as one page-aligned uint8 array (what
    a reader without adoption restores bit-exact), the buffer in `adopted`."""
    pool, x, start = pool_and_view(5 * PS // 8, 8, 8)
    with memckpt.track(x, name="x") as arena:
        (e,) = arena.layout()["arrays"]
        assert (e["offset"], e["dtype"], e["nbytes"]) == (0, "|u1", arena.nbytes)
        assert e["adopted"] == {"dtype": "<f8", "shape": [x.size],
                                "offset": x.ctypes.data % PS, "nbytes": x.nbytes}
        assert adopted_entry("x", x.dtype, x.shape, x.ctypes.data % PS, arena.nbytes) == e


def test_what_cannot_be_tracked(tmp_path):
    with pytest.raises(ValueError, match="read-only"):
        a = np.zeros(10)
        a.flags.writeable = False
        memckpt.track(a)
    with pytest.raises(ValueError, match="not C-contiguous"):
        memckpt.track(np.zeros((10, 10))[:, 1])
    with pytest.raises(ValueError, match="empty"):
        memckpt.track(np.zeros(0))
    with pytest.raises(TypeError, match="Python objects"):
        memckpt.track(np.empty(3, object))
    with pytest.raises(TypeError, match="not a buffer"):
        memckpt.track(3)
    with pytest.raises(ValueError, match="read-only"):
        memckpt.track(b"abc")
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(4 * PS))
    mm = np.memmap(path, dtype=np.uint8, mode="r+")
    with pytest.raises(memckpt.TrackerUnavailable, match="file-backed"):
        memckpt.track(mm)
    del mm
    shared = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_SHARED)
    with pytest.raises(memckpt.TrackerUnavailable, match="shared"):
        memckpt.track(shared)
    shared.close()
    private = mmap.mmap(-1, 4 * PS, flags=mmap.MAP_PRIVATE)
    arena = memckpt.track(private, name="m")   # anonymous private memory: fine
    arena.close()
    private.close()


def test_background_mode_refused(tmp_path):
    if not any(t.name == "uffd-sync" and t.available for t in memckpt.trackers()):
        pytest.skip("no uffd-sync here")
    pool, x, start = pool_and_view(5 * PS // 8, 8, 8)
    with memckpt.track(x) as arena, memckpt.Checkpointer(arena, tmp_path / "s",
                                                          mode="background") as ck:
        with pytest.raises(OSError, match="edge pages") as ei:
            ck.checkpoint()
        assert ei.value.errno == errno.EOPNOTSUPP


def test_arena_releases_the_buffer():
    pool, x, start = pool_and_view(5 * PS // 8, 8, 8)
    arena = memckpt.track(x)
    with pytest.raises(ValueError, match="holds that buffer only"):
        arena.array("y", 10)
    t = memckpt.DirtyTracker(arena)
    with pytest.raises(BufferError):
        arena.close()
    t.close()
    arena.close()
    assert arena.closed
    x[0] = 1.0  # the program's memory: still its own
