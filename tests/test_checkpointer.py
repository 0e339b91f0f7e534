"""Checkpointer and restore, table-driven over the available backends."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import memckpt
from conftest import require_backend

PS = memckpt.features().page_size
NPAGES = 256


def make_arena(npages: int = NPAGES) -> memckpt.Arena:
    """Three arrays of different dtypes, one not a whole number of pages."""
    arena = memckpt.Arena(npages * PS)
    arena.array("field", (64, PS // 8), np.float64)      # 64 pages
    arena.array("ids", 3 * PS // 4 + 5, np.int32)          # 4 pages, the last partly
    arena.array("raw", (npages - 80) * PS, np.uint8)       # the rest, less 12 spare pages
    return arena


def pages_of(arena: memckpt.Arena) -> np.ndarray:
    return np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, PS)


def snapshot(arena: memckpt.Arena) -> np.ndarray:
    return pages_of(arena).copy()


def write(pages: np.ndarray, idx, rng) -> None:
    """Give each page in idx new, nonzero content at a few places."""
    for i in np.atleast_1d(idx):
        cols = rng.integers(0, PS, size=8)
        pages[i, cols] = (pages[i, cols] + rng.integers(1, 255, size=8)).astype(np.uint8) | 1


def assert_restores(store, epoch: int, expect: np.ndarray) -> None:
    got = memckpt.restore(store, epoch)
    try:
        np.testing.assert_array_equal(pages_of(got), expect, err_msg=f"epoch {epoch}")
        layout = store.layout(epoch)
        assert got.layout()["arrays"] == layout["arrays"]
    finally:
        got.close()


def dirty_ok(info: memckpt.TrackerInfo, reported: int, written: int) -> bool:
    return reported == written if info.exact else reported >= written


@pytest.fixture
def arena():
    with make_arena() as a:   # leaving lets go of the mapping even if a failed test holds a view
        yield a


def test_full_then_incremental(backend, arena, tmp_path):
    info = require_backend(backend)
    rng = np.random.default_rng(1)
    pages = pages_of(arena)
    write(pages, range(10, 20), rng)
    with memckpt.Checkpointer(arena, tmp_path / "s", tracker=backend) as ck:
        assert ck.tracker.backend == backend
        store = ck.store
        e1 = ck.checkpoint("first").result()
        assert (e1.kind, e1.parent, e1.label, e1.tracker) == ("full", None, "first", backend)
        assert e1.pages_dirty == NPAGES            # every page is a candidate
        assert e1.pages_stored == 10               # zero pages elided
        assert e1.pause_s > 0 and e1.total_s >= e1.pause_s
        snaps = {e1.epoch: snapshot(arena)}

        write(pages, [3, 70, 200, 255], rng)
        e2 = ck.checkpoint().result()
        assert (e2.kind, e2.parent) == ("incremental", e1.epoch) and e2.epoch > e1.epoch
        assert dirty_ok(info, e2.pages_dirty, 4) and e2.pages_stored == e2.pages_dirty
        snaps[e2.epoch] = snapshot(arena)

        e3 = ck.checkpoint().result()                      # nothing written
        assert (e3.kind, e3.parent) == ("incremental", e2.epoch)
        assert dirty_ok(info, e3.pages_dirty, 0) and e3.pages_stored == 0
        snaps[e3.epoch] = snapshot(arena)

        pages[15] = 0                               # a page becomes zero: recorded, not stored
        e4 = ck.checkpoint().result()
        assert dirty_ok(info, e4.pages_dirty, 1) and e4.pages_stored == 0
        snaps[e4.epoch] = snapshot(arena)
        assert ck.head == e4.epoch
        assert [e.epoch for e in store.epochs()] == sorted(snaps)
        assert store.chain(e4.epoch) == [e1.epoch, e2.epoch, e3.epoch, e4.epoch]
    store.verify()
    for epoch, expect in snaps.items():
        assert_restores(store, epoch, expect)
    # the arrays come back as named arrays, with dtypes and shapes
    got = memckpt.restore(tmp_path / "s")
    arrs = got.arrays()
    assert list(arrs) == ["field", "ids", "raw"]
    for name, a in arena.arrays().items():
        assert arrs[name].dtype == a.dtype and arrs[name].shape == a.shape
        np.testing.assert_array_equal(arrs[name], a)
    del arrs
    got.close()


class RecordingStore(memckpt.Store):
    """A Store that records which pages each read_into was asked for."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.reads: list = []

    def read_into(self, epoch, out, pages=None, **kw):
        self.reads.append(None if pages is None else set(np.asarray(pages).tolist()))
        return super().read_into(epoch, out, pages=pages, **kw)


def test_rollback_writes_back_only_what_differs(backend, arena, tmp_path):
    info = require_backend(backend)
    rng = np.random.default_rng(2)
    pages = pages_of(arena)
    write(pages, range(0, NPAGES, 3), rng)
    A, B, C = [5, 6, 100], [6, 150, 151, 152], [7, 200]
    rs = RecordingStore(tmp_path / "s", create=True)
    with memckpt.Checkpointer(arena, rs, tracker=backend) as ck:
        e1 = ck.checkpoint().result()
        s1 = snapshot(arena)
        write(pages, A, rng)
        e2 = ck.checkpoint().result()
        s2 = snapshot(arena)
        write(pages, B, rng)
        e3 = ck.checkpoint().result()
        s3 = snapshot(arena)

        # back to the latest: only the pages written since are written back
        write(pages, C, rng)
        r = ck.rollback()
        assert r.epoch == e3.epoch
        np.testing.assert_array_equal(pages, s3)
        if info.exact:
            assert r.pages_written == len(C)

        # to an older epoch: what changed between them, plus what was written since
        write(pages, C, rng)
        r = ck.rollback(e1.epoch)
        assert r.epoch == e1.epoch and ck.head == e1.epoch
        np.testing.assert_array_equal(pages, s1)
        if info.exact:
            assert r.pages_written == len(set(A) | set(B) | set(C))
            assert rs.reads[-1] == set(A) | set(B) | set(C)   # the only pages the store filled
        # no write-back leaks into the next epoch, an increment on e1
        e4 = ck.checkpoint().result()
        assert (e4.kind, e4.parent) == ("incremental", e1.epoch)
        assert dirty_ok(info, e4.pages_dirty, 0)
        e_empty = e4.epoch

        # the next increment is on the rolled-back state: history branches at e1
        write(pages, [9, 100], rng)
        e5 = ck.checkpoint().result()
        assert (e5.kind, e5.parent) == ("incremental", e_empty)
        assert dirty_ok(info, e5.pages_dirty, 2)
        s5 = snapshot(arena)

        # across the branch: e2 from e5 differs in A ∪ {9, 100}
        r = ck.rollback(e2.epoch)
        np.testing.assert_array_equal(pages, s2)
        if info.exact:
            assert r.pages_written == len(set(A) | {9, 100})
        e6 = ck.checkpoint().result()
        assert e6.parent == e2.epoch
        s6 = snapshot(arena)
        np.testing.assert_array_equal(s6, s2)
    store = memckpt.Store(tmp_path / "s")
    store.verify()
    for e, s in [(e1, s1), (e2, s2), (e3, s3), (e5, s5), (e6, s6)]:
        assert_restores(store, e.epoch, s)


def test_rollback_without_a_head_writes_every_page(arena, tmp_path):
    rng = np.random.default_rng(3)
    pages = pages_of(arena)
    write(pages, [1, 2, 3], rng)
    with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        e1 = ck.checkpoint().result()
        s1 = snapshot(arena)
    write(pages, [4], rng)
    # a second checkpointer knows nothing of what the arena holds
    with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        assert ck.head is None
        r = ck.rollback()
        assert (r.epoch, r.pages_written) == (e1.epoch, NPAGES)
        np.testing.assert_array_equal(pages, s1)
        write(pages, [5], rng)
        e2 = ck.checkpoint().result()
        assert (e2.kind, e2.parent) == ("incremental", e1.epoch)


def test_full_every(arena, tmp_path):
    rng = np.random.default_rng(4)
    pages = pages_of(arena)
    kinds, snaps, prev = [], {}, None
    with memckpt.Checkpointer(arena, tmp_path / "s", full_every=3) as ck:
        for i in range(8):
            write(pages, rng.choice(NPAGES, 5, replace=False), rng)
            e = ck.checkpoint().result()
            kinds.append(e.kind)
            snaps[e.epoch] = snapshot(arena)
            assert e.parent == prev   # a full epoch's parent is its lineage: the chain walk stops there
            prev = e.epoch
        assert kinds == ["full", "incremental", "incremental"] * 2 + ["full", "incremental"]
        chains = [ck.store.chain(e) for e in snaps]
        assert max(len(c) for c in chains) == 3
        # a rollback into an older chain counts that chain's length
        first = sorted(snaps)[1]                    # the 2nd epoch of chain 1
        ck.rollback(first)
        assert ck.checkpoint().kind == "incremental"
        assert ck.checkpoint().kind == "full"
    for epoch, expect in snaps.items():
        assert_restores(ck.store, epoch, expect)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compress(arena, tmp_path, codec):
    rng = np.random.default_rng(5)
    pages = pages_of(arena)
    i = np.arange(64 * PS // 8)
    arena.arrays()["field"].flat[:] = i % 7 + 1 + i // (PS // 8) * 10  # compressible, each page its own
    write(pages, [100, 101], rng)
    try:
        with memckpt.Checkpointer(arena, tmp_path / "s", compress=codec) as ck:
            e1 = ck.checkpoint().result()
            s1 = snapshot(arena)
            arena.arrays()["field"][3] += 1.5
            e2 = ck.checkpoint().result()
            s2 = snapshot(arena)
    except (ImportError, memckpt.MemckptError) as exc:
        if codec in str(exc) and ("install" in str(exc) or isinstance(exc, ImportError)):
            pytest.skip(f"{codec} unavailable: {exc}")
        raise
    assert e1.pages_stored == 66 and e2.pages_stored == 1
    assert e1.bytes_on_disk < 66 * PS // 2, "compressible pages not compressed"
    assert_restores(ck.store, e1.epoch, s1)
    assert_restores(ck.store, e2.epoch, s2)


RESUME_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import memckpt
    path, how = sys.argv[1], sys.argv[2]
    if how == "resume":
        ck = memckpt.Checkpointer.resume(path)
        arena = ck.arena
    else:                                   # a restored arena handed to a new checkpointer
        arena = memckpt.restore(path)
        ck = memckpt.Checkpointer(arena, path)
    head = ck.head
    arena.arrays()["field"][7, :3] = [1.0, 2.0, 3.0]
    arena.arrays()["raw"][-1] = 42
    e = ck.checkpoint("child").result()
    ck.close()
    json.dump({"head": head, "epoch": e.epoch, "parent": e.parent, "kind": e.kind,
               "pages_dirty": e.pages_dirty}, sys.stdout)
""")


def run_child(code: str, *args) -> str:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, timeout=120, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_resume_in_a_new_process(arena, tmp_path):
    rng = np.random.default_rng(6)
    pages = pages_of(arena)
    path = tmp_path / "s"
    with memckpt.Checkpointer(arena, path) as ck:
        write(pages, range(0, 40), rng)
        ck.checkpoint().result()
        write(pages, [50, 60], rng)
        e2 = ck.checkpoint().result()
    arena.arrays()["field"][7, :3] = [1.0, 2.0, 3.0]
    arena.arrays()["raw"][-1] = 42
    expect = snapshot(arena)

    out = json.loads(run_child(RESUME_CHILD, path, "resume"))
    assert out["head"] == e2.epoch
    assert (out["kind"], out["parent"]) == ("incremental", e2.epoch) and out["epoch"] > e2.epoch
    assert out["pages_dirty"] == 2                # field page 7 and raw's last page
    store = memckpt.Store(path)
    assert store.chain(out["epoch"])[-3:] == [e2.epoch - 1, e2.epoch, out["epoch"]]
    assert_restores(store, out["epoch"], expect)

    out2 = json.loads(run_child(RESUME_CHILD, path, "restore"))
    assert out2["head"] is None and out2["kind"] == "full" and out2["parent"] is None
    assert out2["epoch"] > out["epoch"]           # numbering continues
    assert_restores(store, out2["epoch"], expect)
    store.verify()


def test_resume_an_older_epoch_branches(arena, tmp_path):
    rng = np.random.default_rng(7)
    pages = pages_of(arena)
    path = tmp_path / "s"
    with memckpt.Checkpointer(arena, path) as ck:
        write(pages, [1], rng)
        e1 = ck.checkpoint().result()
        s1 = snapshot(arena)
        write(pages, [2], rng)
        ck.checkpoint().result()
    with memckpt.Checkpointer.resume(path, e1.epoch) as ck2:
        np.testing.assert_array_equal(pages_of(ck2.arena), s1)
        write(pages_of(ck2.arena), [3], rng)
        e3 = ck2.checkpoint().result()
        assert (e3.kind, e3.parent, e3.pages_dirty) == ("incremental", e1.epoch, 1)
        s3 = snapshot(ck2.arena)
    assert_restores(ck2.store, e3.epoch, s3)
    ck2.arena.close()


def test_incremental_size_is_proportional_to_dirty_pages(tmp_path):
    """1% of the pages written -> the epoch holds about 1% of the arena, plus its index."""
    npages = 16384                                   # 64 MiB
    rng = np.random.default_rng(8)
    with memckpt.Arena(npages * PS) as arena:
        data = arena.array("data", (npages, PS), np.uint8)
        data[:] = rng.integers(0, 256, size=data.shape, dtype=np.uint8)  # incompressible, no zeros
        with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
            full = ck.checkpoint().result()
            assert full.pages_stored == npages
            assert full.bytes_on_disk >= npages * PS
            dirty = rng.choice(npages, npages // 100, replace=False)
            data[dirty, 0] += np.uint8(1)
            inc = ck.checkpoint().result()
        del data
    assert inc.pages_dirty == inc.pages_stored == dirty.size
    payload = dirty.size * PS
    index = 64 * dirty.size + 16384                  # generous per-entry index and manifest budget
    assert payload <= inc.bytes_on_disk <= 1.1 * payload + index, \
        f"{inc.bytes_on_disk} bytes on disk for {dirty.size} dirty pages ({payload} bytes)"


class FailingStore:
    """Wraps a Store and fails add_pages when told to."""

    def __init__(self, store):
        self._s = store
        self.fail = False

    def __getattr__(self, name):
        return getattr(self._s, name)

    def begin(self, **kw):
        w = self._s.begin(**kw)
        if not self.fail:
            return w
        outer = self

        class W:
            epoch, threads, compress = w.epoch, w.threads, w.compress

            def add_pages(self, *a):
                raise OSError(28, "No space left on device (injected)")

            def native_writer(self):  # no C writer: its pages come through add_pages
                return 0

            def abort(self):
                w.abort()

            def commit(self, **k):  # pragma: no cover
                raise AssertionError("commit after a failed add_pages")
        outer.fail = False
        return W()


def test_a_failed_epoch_carries_its_pages_to_the_next(arena, tmp_path):
    rng = np.random.default_rng(9)
    pages = pages_of(arena)
    fs = FailingStore(memckpt.Store(tmp_path / "s", create=True))
    with memckpt.Checkpointer(arena, fs) as ck:
        e1 = ck.checkpoint().result()
        write(pages, [10, 11], rng)
        fs.fail = True
        with pytest.raises(OSError, match="injected"):
            ck.checkpoint().result()
        assert ck.head == e1.epoch
        write(pages, [12], rng)
        e2 = ck.checkpoint().result()
        assert (e2.parent, e2.pages_dirty) == (e1.epoch, 3)
        s2 = snapshot(arena)
        # and a rollback after a failed epoch writes those pages back too
        write(pages, [13], rng)
        fs.fail = True
        with pytest.raises(OSError):
            ck.checkpoint().result()
        r = ck.rollback()
        assert r.pages_written == 1
        np.testing.assert_array_equal(pages, s2)
    assert_restores(fs, e2.epoch, s2)


class FullDiskStore(FailingStore):
    """Its next epoch's pack is /dev/full: the C writer's write in the pause fails."""

    def begin(self, **kw):
        w = self._s.begin(**kw)
        if self.fail:
            self.fail = False
            fd = os.open("/dev/full", os.O_WRONLY)
            os.dup2(fd, w._pack_fd)
            os.close(fd)
        return w


@pytest.mark.parametrize("mode,staging", [("sync", None), ("copy", 0)])
def test_a_write_failing_in_the_pause_carries_its_pages_to_the_next(arena, tmp_path, mode, staging):
    rng = np.random.default_rng(11)
    pages = pages_of(arena)
    fs = FullDiskStore(memckpt.Store(tmp_path / "s", create=True))
    with memckpt.Checkpointer(arena, fs, mode=mode, staging=staging) as ck:
        e1 = ck.checkpoint().result()
        write(pages, [10, 11], rng)
        fs.fail = True
        with pytest.raises(OSError, match="epoch 2 to store .*not committed") as exc:
            ck.checkpoint().result()
        assert exc.value.errno == errno.ENOSPC
        assert ck.head == e1.epoch and fs.latest() == e1.epoch
        write(pages, [12], rng)
        e2 = ck.checkpoint().result()
        assert (e2.parent, e2.pages_dirty) == (e1.epoch, 3)
        assert e2.extra["pages_in_pause"] == 3
        s2 = snapshot(arena)
    assert_restores(fs, e2.epoch, s2)


def test_a_failed_capture_or_full_epoch_keeps_the_written_pages(arena, tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    pages = pages_of(arena)
    fs = FailingStore(memckpt.Store(tmp_path / "s", create=True))
    with memckpt.Checkpointer(arena, fs, full_every=2) as ck:
        e1 = ck.checkpoint().result()
        s1 = snapshot(arena)
        write(pages, [20], rng)
        with monkeypatch.context() as m:   # the copy fails (out of memory, say)
            m.setattr(ck._capturer, "_staging", lambda n: (_ for _ in ()).throw(MemoryError("injected")))
            with pytest.raises(MemoryError):
                ck.checkpoint().result()
        e2 = ck.checkpoint().result()
        assert (e2.kind, e2.parent, e2.pages_dirty) == ("incremental", e1.epoch, 1)
        write(pages, [21, 22], rng)
        fs.fail = True                     # a full epoch (full_every=2) fails in persist
        with pytest.raises(OSError):
            ck.checkpoint().result()
        r = ck.rollback(e1.epoch)          # e1..e2 differ in page 20; 21, 22 were written since
        assert r.pages_written == 3
        np.testing.assert_array_equal(pages, s1)


def test_lifetime_and_errors(tmp_path):
    arena = make_arena()
    with pytest.raises(ValueError, match="compress"):
        memckpt.Checkpointer(arena, tmp_path / "s", compress="gzip")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            memckpt.Checkpointer(arena, tmp_path / "s", threads=bad)
    with memckpt.Checkpointer(arena, tmp_path / "t", threads=1) as ck:
        assert ck.checkpoint().result().extra["writer_threads"] == 1
    with memckpt.Checkpointer(arena, tmp_path / "t") as ck:  # default: the CPUs available
        assert ck.checkpoint().result().extra["writer_threads"] == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="full_every"):
        memckpt.Checkpointer(arena, tmp_path / "s", full_every=0)
    with pytest.raises(TypeError):
        memckpt.Checkpointer(object(), tmp_path / "s")  # type: ignore[arg-type]
    ck = memckpt.Checkpointer(arena, tmp_path / "s")
    with pytest.raises(memckpt.TrackerBusy):
        memckpt.Checkpointer(arena, tmp_path / "s")
    with pytest.raises(BufferError):
        arena.close()                                  # the checkpointer holds it
    ck.checkpoint().result()
    ck.wait()
    ck.close()
    ck.close()
    with pytest.raises(ValueError, match="closed"):
        ck.checkpoint().result()
    arena.close()                                      # free once the checkpointer is closed

    with pytest.raises(memckpt.MemckptError, match="no committed epoch"):
        memckpt.restore(memckpt.Store(tmp_path / "empty", create=True))


def test_rollback_refuses_another_layout(tmp_path):
    with memckpt.Arena(64 * PS) as a:
        a.array("x", 10 * PS, np.uint8)
        with memckpt.Checkpointer(a, tmp_path / "s") as ck:
            ck.checkpoint().result()
    with memckpt.Arena(64 * PS) as b:
        b.array("y", 10 * PS, np.uint8)
        with memckpt.Checkpointer(b, tmp_path / "s") as ck:
            with pytest.raises(memckpt.MemckptError, match="other arrays"):
                ck.rollback()
    with memckpt.Arena(32 * PS) as c:
        with memckpt.Checkpointer(c, tmp_path / "s") as ck:
            with pytest.raises(memckpt.MemckptError, match="bytes"):
                ck.rollback()
    # an array made since the epoch is fine, and comes back zero
    with memckpt.Arena(64 * PS) as d:
        x = d.array("x", 10 * PS, np.uint8)
        with memckpt.Checkpointer(d, tmp_path / "s") as ck:
            e = ck.checkpoint().result()
            z = d.array("z", PS, np.uint8)
            z[:] = 7
            ck.rollback(e.epoch)
            assert not z.any()
        del x, z


def test_restore_sees_arrays_at_their_offsets(tmp_path):
    with memckpt.Arena(64 * PS) as a:
        a.array("empty", 0, np.float32)
        a.array("odd", (3, 5), np.dtype(">i2"))
        a.array("c", 2, np.complex128)[:] = [1 + 2j, -3j]
        a.array("rec", 4, np.dtype([("x", "<f4"), ("n", "<u8")]))["n"] = 9
        ooo = np.dtype({"names": ["p", "q"], "formats": ["<i4", ("u1", (2,))], "offsets": [4, 0],
                        "itemsize": 12, "titles": ["pee", None]})  # fields out of order, a sub-array
        a.array("ooo", (2, 2), ooo)["p"] = [[1, 2], [3, 4]]
        with memckpt.Checkpointer(a, tmp_path / "s") as ck:
            ck.checkpoint().result()
        r = memckpt.restore(tmp_path / "s")
        assert r.layout() == a.layout()
        for name, arr in a.arrays().items():
            got = r.arrays()[name]
            assert got.dtype == arr.dtype and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)
        del got, arr
        r.close()


def test_restore_of_a_sparse_arena_stays_sparse(tmp_path):
    """Pages no epoch holds are left unwritten in the new arena, so they never
    become resident: restoring 64 MiB with 10 pages written maps ~10 pages."""
    if not memckpt.features().pagemap_scan:
        pytest.skip("needs PAGEMAP_SCAN to count resident pages")
    from memckpt import _core
    PAGE_IS_PRESENT = 1 << 3
    with memckpt.Arena(64 << 20) as a:
        d = a.array("d", (64 << 20) // 8, np.uint64)
        d[np.arange(10) * 4096] = np.arange(1, 11, dtype=np.uint64)
        with memckpt.Checkpointer(a, tmp_path / "s", tracker="compare") as ck:
            e = ck.checkpoint().result()
        del d
    got = memckpt.restore(tmp_path / "s", e.epoch)
    resident = _core.pagemap_scan_count(got.address, got.nbytes, PAGE_IS_PRESENT)
    assert resident <= 16, f"{resident} pages resident after restoring 10"
    assert (got.arrays()["d"][np.arange(10) * 4096] == np.arange(1, 11)).all()


@pytest.mark.parametrize("full_every", [None, 1])
def test_a_head_retired_by_a_prune_makes_the_next_epoch_full(tmp_path, full_every):
    """The next epoch's parent is checked by the store's begin() (one lstat):
    a head another process pruned (here: after a rollback to it) makes the
    next epoch full, with no parent, instead of an error."""
    arena = make_arena()
    pages = pages_of(arena)
    rng = np.random.default_rng(21)
    with memckpt.Checkpointer(arena, tmp_path / "s", full_every=full_every) as ck:
        e1 = ck.checkpoint().result()
        write(pages, [1], rng)
        ck.checkpoint().result()
        write(pages, [2], rng)
        e3 = ck.checkpoint().result()
        ck.rollback(e1.epoch)
        with memckpt.Store(tmp_path / "s") as other:  # another writer: an external prune
            removed = other.prune(keep_last=1, rebase=True)
        assert e1.epoch in removed
        write(pages, [3], rng)
        e4 = ck.checkpoint().result()
        want = snapshot(arena)
    assert (e4.kind, e4.parent, e4.epoch) == ("full", None, e3.epoch + 1)
    with memckpt.Store(tmp_path / "s") as st:
        assert_restores(st, e4.epoch, want)
    del pages
    arena.close()
