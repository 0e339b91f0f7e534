"""The local store: epochs written from numpy data read back bit for bit;
zero elision, dedup, compression, chains, changed_pages, prune, compact,
the writer lock and the sweep of uncommitted garbage."""
from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memckpt import FormatError, MemckptError, _reader
from memckpt.epoch import EpochInfo
from memckpt.errors import EpochNotFound, StoreLocked
from memckpt.store import Store
from memckpt.store import format as fmt
from memckpt.store import catalog, eager
from memckpt.store import io as store_io

from _store_util import PS, build_chain, random_pages, read, write_epoch

COMPRESS = [None, "zstd", "lz4"]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "st", create=True, page_size=PS)


# -- round trips -----------------------------------------------------------------------
@pytest.mark.parametrize("compress", COMPRESS)
def test_every_epoch_reads_back_exactly(tmp_path, compress):
    s = Store(tmp_path / "st", create=True, page_size=PS)
    expected = build_chain(s, npages=64, nepochs=6, compress=compress)
    for e, want in expected.items():
        assert np.array_equal(read(s, e), want), f"epoch {e}"
    # a fresh Store object (no caches) reads the same, and verify passes
    s2 = Store(tmp_path / "st")
    for e, want in expected.items():
        assert np.array_equal(read(s2, e), want)
    s2.verify()
    for e in expected:
        s2.verify(e)


@pytest.mark.parametrize("compress", COMPRESS)
def test_read_only_some_pages(store, compress):
    expected = build_chain(store, npages=40, nepochs=4, compress=compress)
    rng = np.random.default_rng(3)
    for e, want in expected.items():
        pages = rng.choice(40, 9, replace=False)
        out = read(store, e, pages)
        assert np.array_equal(out[pages], want[pages])
        rest = np.setdiff1d(np.arange(40), pages)
        assert (out[rest] == 0xA5).all(), "rows not asked for are left alone"
    assert np.array_equal(read(store, 4, [7, 7, 7]), read(store, 4, [7]))  # duplicates are fine
    with pytest.raises(ValueError):
        read(store, 4, [40])


def test_many_add_pages_calls_and_chunks(tmp_path, monkeypatch):
    """Batches split into chunks (the pipelined write path), across calls,
    with dedup across chunks and calls."""
    monkeypatch.setattr(store_io, "_CHUNK_BYTES", 5 * PS)
    for compress in COMPRESS:
        s = Store(tmp_path / f"st-{compress}", create=True, page_size=PS)
        rng = np.random.default_rng(1)
        state = random_pages(rng, 97)
        state[::7] = state[1]                  # the same page across chunks and calls
        state[::11] = 0
        e1 = write_epoch(s, state, None, kind="full", compress=compress)
        old = state.copy()
        pages = np.arange(3, 97, 2)
        state[pages] = random_pages(rng, len(pages))
        state[pages[::5]] = state[2]
        e2 = write_epoch(s, state, pages, parent=e1, compress=compress, calls=4)
        assert np.array_equal(read(s, e1), old)
        assert np.array_equal(read(s, e2), state)
        s.verify()
        m = s.manifest(e1)
        assert m["counts"]["pages_dedup"] >= 12


def test_epoch_info_and_manifest(store):
    state = random_pages(np.random.default_rng(0), 8)
    layout = {"nbytes": 8 * PS, "page_size": PS, "hugepages": False,
              "arrays": [{"name": "a", "dtype": "<f8", "shape": [8, 512], "offset": 0,
                          "nbytes": 8 * PS}]}
    w = store.begin(kind="full", parent=None, layout=layout, page_size=PS, npages=8)
    assert w.epoch == 1
    w.add_pages(np.arange(8, dtype=np.uint64), state)
    info = w.commit(pages_dirty=8, pause_s=0.25, label="first", tracker="uffd-async",
                    mode="sync", extra={"capture_s": 0.1})
    assert isinstance(info, EpochInfo)
    assert (info.epoch, info.parent, info.kind, info.pages_dirty, info.pages_stored) == (1, None, "full", 8, 8)
    assert (info.label, info.tracker, info.mode, info.pause_s) == ("first", "uffd-async", "sync", 0.25)
    assert info.extra == {"capture_s": 0.1}
    assert info.total_s >= 0 and info.created > 1e9
    assert info.bytes_on_disk == os.path.getsize(store.path / "e00000001-0.pack") + \
        os.path.getsize(store.path / "e00000001-0.idx")
    assert store.info(1) == info
    assert store.epochs() == [info]
    assert store.latest() == 1
    assert store.layout(1) == layout
    m = store.manifest(1)
    assert m["format"] == "memckpt-epoch" and m["version"][0] == 1
    assert m["counts"] == {"pages_dirty": 8, "pages_stored": 8, "pages_zero": 0,
                           "pages_dedup": 0, "records": 8}
    m["layout"]["arrays"] = []                     # a copy: the store's is untouched
    assert store.layout(1) == layout
    with pytest.raises(EpochNotFound) as ei:
        store.info(2)
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, MemckptError)
    assert "no epoch 2" in str(ei.value)


def test_started_sets_total_s(store):
    import time
    t = time.perf_counter() - 5.0
    w = store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=1)
    info = w.commit(pages_dirty=0, pause_s=0.0, started=t)
    assert info.total_s >= 5.0


# -- zero pages and dedup ------------------------------------------------------------------
def test_zero_pages_are_not_stored(store):
    state = np.zeros((16, PS), dtype=np.uint8)
    state[[2, 9]] = 7
    e1 = write_epoch(store, state, None, kind="full")
    m = store.manifest(e1)
    assert m["counts"]["pages_stored"] == 1          # pages 2 and 9 are the same page
    assert m["counts"]["pages_zero"] == 14 and m["counts"]["pages_dedup"] == 1
    assert m["counts"]["records"] == 2               # a full epoch records no zero page
    assert m["files"]["pack"]["size"] == fmt.PACK_HEADER_SIZE + PS
    # an incremental epoch writes page 2 back to zero: a ZERO record, nothing stored
    state[2] = 0
    e2 = write_epoch(store, state, [2], parent=e1)
    m2 = store.manifest(e2)
    assert m2["counts"]["pages_zero"] == 1 and m2["counts"]["pages_stored"] == 0
    assert m2["counts"]["records"] == 1
    assert np.array_equal(read(store, e2), state)
    assert read(store, e2)[2].sum() == 0
    assert read(store, e1)[2].sum() == 7 * PS


def test_all_zero_full_epoch(store):
    state = np.zeros((5, PS), dtype=np.uint8)
    e = write_epoch(store, state, None, kind="full")
    assert store.info(e).pages_stored == 0
    assert np.array_equal(read(store, e), state)
    store.verify()


def test_empty_incremental_epoch(store):
    state = random_pages(np.random.default_rng(2), 6)
    e1 = write_epoch(store, state, None, kind="full")
    w = store.begin(kind="incremental", parent=e1, layout={}, page_size=PS, npages=6)
    w.add_pages(np.empty(0, np.uint64), np.empty((0, PS), np.uint8))
    e2 = w.commit(pages_dirty=0, pause_s=0.0).epoch
    assert np.array_equal(read(store, e2), state)
    assert store.changed_pages(e1, e2).size == 0


def test_incremental_stores_about_what_was_written(store):
    """1% of a 64 MiB arena written: the epoch holds about 1% of the arena plus its index."""
    npages = 16384
    rng = np.random.default_rng(4)
    state = random_pages(rng, npages)
    e1 = write_epoch(store, state, None, kind="full")
    pages = rng.choice(npages, npages // 100, replace=False)
    state[pages] = random_pages(rng, len(pages))
    e2 = write_epoch(store, state, pages, parent=e1)
    info = store.info(e2)
    payload = len(pages) * PS
    index = fmt.IDX_HEADER_SIZE + len(pages) * fmt.RECORD_SIZE
    assert info.bytes_on_disk == fmt.PACK_HEADER_SIZE + payload + index
    assert info.bytes_on_disk < 0.0102 * npages * PS
    assert np.array_equal(read(store, e2, pages)[pages], state[pages])


@pytest.mark.parametrize("compress", ["zstd", "lz4"])
def test_compression_shrinks_compressible_pages(tmp_path, compress):
    s = Store(tmp_path / "st", create=True, page_size=PS)
    rng = np.random.default_rng(5)
    state = np.zeros((32, PS), dtype=np.uint8)
    state[:16] = np.tile(np.arange(256, dtype=np.uint8), PS // 256)     # compressible
    state[:16, :8] = np.arange(16, dtype=np.uint8)[:, None]             # distinct pages
    state[16:] = random_pages(rng, 16)                                  # not compressible
    e = write_epoch(s, state, None, kind="full", compress=compress)
    recs = s._index(e)
    flag = fmt.COMPRESSORS[compress]
    assert ((recs["flags"][:16] & flag) != 0).all()
    assert (recs["flags"][16:] == 0).all(), "incompressible pages are stored raw"
    assert s.info(e).bytes_on_disk < 16 * PS + 16 * PS // 2
    assert np.array_equal(read(s, e), state)
    s.verify()


def test_missing_codec_names_the_extra(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails
    with pytest.raises(MemckptError, match=r"pip install 'memckpt\[zstd\]'"):
        store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=4, compress="zstd")
    assert not any(n.endswith(".pack") for n in os.listdir(store.path))
    with pytest.raises(ValueError, match="compress"):
        store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=4, compress="gzip")


def test_reading_compressed_pages_without_codec(tmp_path, monkeypatch):
    """Pages the C reader leaves to Python (a build without liblz4, here
    forced) need the lz4 package, and the error names the extra."""
    s = Store(tmp_path / "st", create=True, page_size=PS)
    state = np.zeros((4, PS), dtype=np.uint8)
    state[1] = 3
    e = write_epoch(s, state, None, kind="full", compress="lz4")
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.block", None)
    monkeypatch.setattr(eager, "DEFER_CODED", True)
    with pytest.raises(MemckptError, match=r"memckpt\[lz4\]"):
        read(Store(tmp_path / "st"), e)


@pytest.mark.parametrize("compress", ["zstd", "lz4"])
def test_c_reader_decodes_without_the_python_codec(tmp_path, monkeypatch, compress):
    if compress not in _reader.codecs():
        pytest.skip(f"this build found no {compress} library and header: Python decodes its pages")
    s = Store(tmp_path / "st", create=True, page_size=PS)
    state = np.zeros((4, PS), dtype=np.uint8)
    state[1] = 3
    e = write_epoch(s, state, None, kind="full", compress=compress)
    assert s.manifest(e)["counts"]["pages_stored"] == 1
    for mod in ("lz4", "lz4.block", "zstandard"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert np.array_equal(read(Store(tmp_path / "st"), e), state)


# -- chains and changed_pages ----------------------------------------------------------------
def test_chain_and_branches(store):
    rng = np.random.default_rng(6)
    a = random_pages(rng, 20)
    e1 = write_epoch(store, a, None, kind="full")
    b = a.copy()
    b[[1, 2, 3]] = random_pages(rng, 3)
    e2 = write_epoch(store, b, [1, 2, 3], parent=e1)
    c = a.copy()                                           # a branch from e1
    c[[3, 4]] = random_pages(rng, 2)
    e3 = write_epoch(store, c, [3, 4], parent=e1)
    d = b.copy()
    d[5] = 0
    d[1] = a[1]                                            # back to e1's content
    e4 = write_epoch(store, d, [1, 5], parent=e2)
    f = random_pages(rng, 20)
    e5 = write_epoch(store, f, None, kind="full", parent=e4)   # lineage only
    assert store.chain(e4) == [e1, e2, e4]
    assert store.chain(e3) == [e1, e3]
    assert store.chain(e5) == [e5]
    assert [i.epoch for i in store.epochs()] == [1, 2, 3, 4, 5]
    for e, want in ((e1, a), (e2, b), (e3, c), (e4, d), (e5, f)):
        assert np.array_equal(read(store, e), want)

    def changed(x, y):
        got = store.changed_pages(x, y)
        return None if got is None else got.tolist()

    assert changed(e1, e2) == [1, 2, 3]
    assert changed(e2, e1) == [1, 2, 3]
    assert changed(e1, e4) == [2, 3, 5]          # page 1 went back to e1's content
    assert changed(e2, e3) == [1, 2, 3, 4]       # siblings: both sides' writes
    assert changed(e4, e4) == []
    assert changed(e1, e5) is None               # no shared chain
    assert store.changed_pages(e1, e2).dtype == np.uint64
    # the answer is exact: every page it leaves out is equal
    for x in (e1, e2, e3, e4):
        for y in (e1, e2, e3, e4):
            diff = np.flatnonzero((read(store, x) != read(store, y)).any(axis=1)).tolist()
            assert changed(x, y) == diff


def test_begin_checks_its_arguments(store):
    state = random_pages(np.random.default_rng(7), 4)
    e1 = write_epoch(store, state, None, kind="full")
    args = dict(layout={}, page_size=PS, npages=4)
    with pytest.raises(ValueError):
        store.begin(kind="incremental", parent=None, **args)
    with pytest.raises(EpochNotFound):
        store.begin(kind="incremental", parent=9, **args)
    with pytest.raises(ValueError):
        store.begin(kind="incremental", parent=e1, layout={}, page_size=PS, npages=5)
    with pytest.raises(ValueError):
        store.begin(kind="full", parent=None, layout={}, page_size=PS * 2, npages=4)
    with pytest.raises(ValueError):
        store.begin(kind="diff", parent=None, **args)
    with pytest.raises(ValueError):
        store.begin(kind="full", parent=None, layout={"x": object()}, page_size=PS, npages=4)
    with pytest.raises(ValueError):  # an array outside the arena
        store.begin(kind="full", parent=None, page_size=PS, npages=4, layout={
            "arrays": [{"name": "a", "dtype": "<f8", "shape": [4096], "offset": 0, "nbytes": 32768}]})
    # none of that left a lock or a file behind
    w = store.begin(kind="full", parent=None, **args)
    w.abort()
    assert sorted(os.listdir(store.path)) == sorted(
        ["lock", "memckpt-store.json", "e00000001.json", "e00000001-0.idx", "e00000001-0.pack"])


def test_add_pages_checks_its_arguments(store):
    w = store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=10)
    data = np.ones((2, PS), dtype=np.uint8)
    with pytest.raises(ValueError):
        w.add_pages(np.array([3, 2], np.uint64), data)
    with pytest.raises(ValueError):
        w.add_pages(np.array([3, 3], np.uint64), data)
    with pytest.raises(ValueError):
        w.add_pages(np.array([9, 10], np.uint64), data)
    with pytest.raises(ValueError):
        w.add_pages(np.array([1, 2], np.uint64), np.ones((2, PS // 2), np.uint8))
    with pytest.raises(ValueError):
        w.add_pages(np.array([-1, 2]), data)
    w.add_pages(np.array([4, 5], np.uint64), data)
    with pytest.raises(ValueError, match="increase across calls"):
        w.add_pages(np.array([5, 6], np.uint64), data)
    # a non-contiguous view is accepted
    big = np.ones((4, PS), dtype=np.uint8)
    w.add_pages(np.array([6, 7], np.int64), big[::2])
    info = w.commit(pages_dirty=4, pause_s=0)
    assert info.pages_stored == 1
    with pytest.raises(ValueError, match="already committed"):
        w.add_pages(np.array([8], np.uint64), data[:1])


# -- writer lock, abort, permissions, sweep -----------------------------------------------------
def test_one_writer_at_a_time(store):
    w = store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=2)
    with pytest.raises(StoreLocked, match="this thread holds the open writer of epoch 1"):
        store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=2)
    other = Store(store.path)                     # a second Store object: also refused
    with pytest.raises(StoreLocked):
        other.begin(kind="full", parent=None, layout={}, page_size=PS, npages=2)
    with pytest.raises(StoreLocked):
        other.compact(1, 1)
    w.commit(pages_dirty=0, pause_s=0)
    w2 = other.begin(kind="full", parent=None, layout={}, page_size=PS, npages=2)
    assert w2.epoch == 2
    w2.abort()


def test_lock_holder_pid_from_another_process(store):
    import subprocess
    code = ("import sys, time; from memckpt.store import Store; s = Store(sys.argv[1]); "
            "w = s.begin(kind='full', parent=None, layout={}, page_size=4096, npages=1); "
            "print('ok', flush=True); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", code, str(store.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ok"
        with pytest.raises(StoreLocked, match=f"pid {p.pid}"):
            store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=1)
    finally:
        p.kill()
        p.wait()
    # the kernel dropped the lock with the process; its garbage is swept by the next writer
    Store(store.path).sweep()
    assert not [n for n in os.listdir(store.path) if n.endswith((".pack", ".idx"))]
    store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=1).abort()


def test_abort_and_context_manager(store):
    with store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=3) as w:
        w.add_pages(np.arange(3, dtype=np.uint64), np.ones((3, PS), np.uint8))
    assert store.latest() is None
    assert sorted(os.listdir(store.path)) == ["lock", "memckpt-store.json"]
    with pytest.raises(RuntimeError):
        with store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=3) as w:
            raise RuntimeError("boom")
    with store.begin(kind="full", parent=None, layout={}, page_size=PS, npages=3) as w:
        w.commit(pages_dirty=0, pause_s=0)
    assert store.latest() == 1
    w.abort()  # after commit: nothing happens
    assert store.latest() == 1


def test_permissions(tmp_path):
    s = Store(tmp_path / "a" / "st", create=True, page_size=PS)
    write_epoch(s, np.ones((2, PS), np.uint8), None, kind="full")
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o700
    for n in os.listdir(s.path):
        assert stat.S_IMODE(os.stat(s.path / n).st_mode) & 0o077 == 0, n


def test_sweep_removes_only_garbage(store):
    state = random_pages(np.random.default_rng(8), 4)
    write_epoch(store, state, None, kind="full")
    garbage = ["e00000002-0.pack", "e00000002-0.idx", "e00000001-1.pack",
               "e00000002.json.tmp", "memckpt-store.json.123.tmp", "junk.tmp"]
    kept = ["notes.txt", "e1.pack", "e00000001-0.pack.bak"]
    for n in garbage + kept:
        (store.path / n).write_bytes(b"x")
    # no sweep by a reader ever, and none while a writer holds the lock
    Store(store.path)
    assert all((store.path / n).exists() for n in garbage)
    w = store.begin(kind="incremental", parent=1, layout={}, page_size=PS, npages=4)
    with pytest.raises(StoreLocked):
        Store(store.path).sweep()
    w.abort()
    Store(store.path).sweep()
    left = set(os.listdir(store.path))
    assert not left & set(garbage)
    assert set(kept) <= left
    assert {"e00000001.json", "e00000001-0.idx", "e00000001-0.pack"} <= left
    assert np.array_equal(read(Store(store.path), 1), state)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FormatError, match="not a memckpt store"):
        Store(tmp_path / "plain")
    (tmp_path / "plain" / "data.bin").write_bytes(b"x")
    with pytest.raises(FormatError, match="not empty"):
        Store(tmp_path / "plain", create=True)
    s = Store(tmp_path / "st", create=True, page_size=8192)
    assert Store(tmp_path / "st", create=True).page_size == 8192
    with pytest.raises(ValueError):
        Store(tmp_path / "st", page_size=4096)
    with pytest.raises(ValueError):
        Store(tmp_path / "x", create=True, page_size=3000)
    assert s.latest() is None and s.epochs() == []


def test_read_into_checks_out(store):
    write_epoch(store, np.ones((4, PS), np.uint8), None, kind="full")
    with pytest.raises(ValueError):
        store.read_into(1, np.zeros((5, PS), np.uint8))
    with pytest.raises(TypeError):
        store.read_into(1, np.zeros((4, PS), np.float32))
    with pytest.raises(ValueError):
        store.read_into(1, np.zeros((4, PS * 2), np.uint8)[:, ::2])
    with pytest.raises(EpochNotFound):
        store.read_into(7, np.zeros((4, PS), np.uint8))


# -- prune --------------------------------------------------------------------------------------
def _linear(store, n, full_every=None, seed=9):
    rng = np.random.default_rng(seed)
    state = random_pages(rng, 12)
    expected = {}
    e = None
    for i in range(n):
        if e is None or (full_every and i % full_every == 0):
            e = write_epoch(store, state, None, kind="full")
        else:
            p = rng.choice(12, 3, replace=False)
            state[p] = random_pages(rng, 3)
            e = write_epoch(store, state, p, parent=e)
        expected[e] = state.copy()
    return expected


def test_prune_keeps_ancestors(store, monkeypatch):
    expected = _linear(store, 10, full_every=4)   # full at 1, 5, 9
    removed_order = []
    real_unlink = os.unlink

    def spy(path, *a, **k):
        name = os.path.basename(path)
        if fmt.parse_manifest_name(name) is not None:
            removed_order.append(fmt.parse_manifest_name(name))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", spy)
    removed = store.prune(keep_last=2)             # keeps 9, 10
    assert removed == [1, 2, 3, 4, 5, 6, 7, 8]
    assert removed_order == sorted(removed, reverse=True), "newest first"
    monkeypatch.undo()
    assert [i.epoch for i in store.epochs()] == [9, 10]
    for e in (9, 10):
        assert np.array_equal(read(store, e), expected[e])
    store.verify()
    assert not [n for n in os.listdir(store.path)
                if (p := fmt.parse_data_name(n)) is not None and p[0] < 9]


def test_prune_keep_every(store):
    expected = _linear(store, 9, full_every=None)  # 1 full, 2..9 incremental
    removed = store.prune(keep_last=1, keep_every=4)
    # keeps 9 (newest), 4 and 8 (multiples of 4), and all their ancestors: everything
    assert removed == []
    store2_path = store.path.parent / "st2"
    s2 = Store(store2_path, create=True, page_size=PS)
    expected = _linear(s2, 9, full_every=3)       # full at 1, 4, 7
    removed = s2.prune(keep_every=4)
    # keeps 4 and 8 (+ 7, 8's ancestor) and the newest, 9
    assert removed == [1, 2, 3, 5, 6]
    assert [i.epoch for i in s2.epochs()] == [4, 7, 8, 9]
    for e in (4, 7, 8, 9):
        assert np.array_equal(read(s2, e), expected[e])
    assert s2.prune() == []
    with pytest.raises(ValueError):
        s2.prune(keep_last=0)


# -- compact --------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [None, "zstd"])
def test_compact_merges_and_reads_the_same(tmp_path, compress):
    s = Store(tmp_path / "st", create=True, page_size=PS)
    expected = build_chain(s, npages=40, nepochs=6, compress=compress)   # 1 full, 2..6
    before = {e: read(s, e) for e in expected}
    info = s.compact(2, 5)
    assert info.epoch == 5 and info.kind == "incremental" and info.parent == 1
    assert [i.epoch for i in s.epochs()] == [1, 5, 6]
    assert s.chain(6) == [1, 5, 6]
    m = s.manifest(5)
    assert m["compacted"]["from"] == [2, 3, 4, 5]
    assert m["files"]["pack"]["name"] == "e00000005-1.pack"
    for e in (1, 5, 6):
        assert np.array_equal(read(s, e), before[e])
    s.verify()
    # then the whole chain into one full epoch
    info = s.compact(1, 6)
    assert info.kind == "full" and info.parent is None
    assert [i.epoch for i in s.epochs()] == [6]
    assert np.array_equal(read(s, 6), before[6])
    assert sorted(os.listdir(s.path)) == ["e00000006-1.idx", "e00000006-1.pack", "e00000006.json",
                                          "lock", "memckpt-store.json"]
    s.verify()
    assert s.compact(6, 6).epoch == 6


def test_compact_keeps_zero_records_of_an_incremental_run(store):
    state = random_pages(np.random.default_rng(10), 8)
    e1 = write_epoch(store, state, None, kind="full")
    state[3] = 0
    e2 = write_epoch(store, state, [3], parent=e1)
    state[4] = 1
    e3 = write_epoch(store, state, [4], parent=e2)
    store.compact(e2, e3)
    assert np.array_equal(read(store, e3), state)
    m = store.manifest(e3)
    assert m["counts"]["pages_zero"] == 1 and m["counts"]["records"] == 2


def test_compact_refuses_to_break_a_branch(store):
    rng = np.random.default_rng(11)
    state = random_pages(rng, 6)
    e1 = write_epoch(store, state, None, kind="full")
    e2 = write_epoch(store, state, [1], parent=e1)
    e3 = write_epoch(store, state, [2], parent=e2)
    e4 = write_epoch(store, state, [3], parent=e2)      # a branch from e2
    e5 = write_epoch(store, state, [4], parent=e3)
    with pytest.raises(MemckptError, match="branch would break"):
        store.compact(e2, e5)                            # would retire e2, e4's parent
    with pytest.raises(MemckptError, match="not in epoch"):
        store.compact(e4, e5)
    assert [i.epoch for i in store.epochs()] == [1, 2, 3, 4, 5]
    store.compact(e3, e5)                                # e4 hangs off e2: fine
    assert store.chain(e5) == [1, 2, 5] and store.chain(e4) == [1, 2, 4]
    # a full epoch's parent is lineage only, but compaction does not leave it dangling either
    e6 = write_epoch(store, state, None, kind="full", parent=e1)
    with pytest.raises(MemckptError, match=r"epoch 6 \(full\) has epoch 1 as its parent"):
        store.compact(e1, e2)
    store.prune(keep_last=1)    # prune may: e6 needs no ancestor
    assert [i.epoch for i in store.epochs()] == [e6]
    assert store.info(e6).parent == e1 and store.chain(e6) == [e6]
    store.verify()


def test_reader_sees_another_store_objects_compaction(tmp_path):
    """Cached manifests and indexes follow what another writer did since."""
    a = Store(tmp_path / "st", create=True, page_size=PS)
    expected = build_chain(a, npages=16, nepochs=5)
    for e in expected:
        read(a, e)                                   # fill a's caches
    b = Store(tmp_path / "st")
    b.compact(2, 4)
    b.prune(keep_last=1)
    assert [i.epoch for i in a.epochs()] == [1, 4, 5]
    assert a.chain(5) == [1, 4, 5]
    for e in (1, 4, 5):
        assert np.array_equal(read(a, e), expected[e])
    with pytest.raises(EpochNotFound):
        read(a, 3)


def test_progress_callbacks(tmp_path):
    s = Store(tmp_path / "st", create=True, page_size=PS)
    build_chain(s, npages=32, nepochs=4)
    for call in (lambda p: s.read_into(4, np.empty((32, PS), np.uint8), progress=p),
                 lambda p: s.verify(progress=p),
                 lambda p: s.compact(1, 3, progress=p)):
        seen = []
        call(lambda done, total: seen.append((done, total)))
        assert seen and seen[-1][0] == seen[-1][1] > 0
        assert all(d <= t for d, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# -- property: random histories ------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["full", "incr", "incr", "incr", "compact", "prune"]),
                          st.integers(0, 2**32 - 1)), min_size=1, max_size=10),
       st.sampled_from(COMPRESS))
def test_random_histories(tmp_path_factory, ops, compress):
    s = Store(tmp_path_factory.mktemp("h") / "st", create=True, page_size=PS)
    npages = 16
    expected: dict[int, np.ndarray] = {}
    state = np.zeros((npages, PS), np.uint8)
    for op, seed in ops:
        rng = np.random.default_rng(seed)
        latest = s.latest()
        if op == "full" or latest is None:
            state[rng.integers(0, npages, 4)] = random_pages(rng, 4)
            expected[write_epoch(s, state, None, kind="full", compress=compress)] = state.copy()
        elif op == "incr":
            base = int(rng.choice(sorted(expected)))
            state = expected[base].copy()
            pages = rng.choice(npages, int(rng.integers(1, 6)), replace=False)
            state[pages] = random_pages(rng, len(pages)) * rng.integers(0, 2, (len(pages), 1)).astype(np.uint8)
            expected[write_epoch(s, state, pages, parent=base, compress=compress,
                                 calls=int(rng.integers(1, 3)))] = state.copy()
        elif op == "compact":
            last = int(rng.choice(sorted(expected)))
            ch = s.chain(last)
            first = int(rng.choice(ch))
            run = ch[ch.index(first):]
            try:
                s.compact(first, last)
            except MemckptError as exc:
                assert "branch would break" in str(exc)
            else:
                for e in run[:-1]:
                    del expected[e]
        else:
            removed = s.prune(keep_last=int(rng.integers(1, 4)))
            for e in removed:
                del expected[e]
        assert sorted(expected) == [i.epoch for i in s.epochs()]
    for e, want in expected.items():
        assert np.array_equal(read(s, e), want), e
    s.verify()


def test_read_only_store_opens_and_reads(store, monkeypatch):
    """No sweep (and no error) where the lock file cannot be opened for writing."""
    state = random_pages(np.random.default_rng(12), 4)
    write_epoch(store, state, None, kind="full")
    (store.path / "e00000007-0.pack").write_bytes(b"garbage")
    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if os.path.basename(path) == "lock" or flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "read-only", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    s = Store(store.path)
    assert np.array_equal(read(s, 1), state)
    s.verify()
    assert (store.path / "e00000007-0.pack").exists()
    with pytest.raises(PermissionError):
        s.begin(kind="full", parent=None, layout={}, page_size=PS, npages=4)


def test_manifest_cache_is_bounded_and_reads_stay_right(store, monkeypatch):
    """A Store keeps the most recently used manifests only: reading a chain
    longer than the cache still gives every epoch right."""
    monkeypatch.setattr(catalog, "_MANIFEST_CACHE", 8)
    rng = np.random.default_rng(5)
    state = rng.integers(0, 256, size=(16, PS), dtype=np.uint8)
    e = write_epoch(store, state, None, kind="full")
    expect = {e: state.copy()}
    for i in range(20):
        state[i % 16, :8] = i
        e = write_epoch(store, state, [i % 16], parent=e)
        expect[e] = state.copy()
    assert len(store.chain(e)) == 21
    assert len(store._manifests) <= 8
    for epoch, want in expect.items():
        np.testing.assert_array_equal(read(store, epoch), want)
    assert len(store._manifests) <= 8
    assert [i.epoch for i in store.epochs()] == sorted(expect)
