"""A fresh arena filled by a restore (csrc/read_fill.c): the 2 MiB blocks an
epoch fills wholly are faulted in as 2 MiB pages where the kernel has them,
in the read by the thread about to read each (or, the way before, in a pass
before the read: both ways are run), and split back into 4 KiB page-table
entries after it.
What must hold afterwards: the bytes (bit for bit), no huge page left in the
arena, the arena still one VMA advised MADV_NOHUGEPAGE, a sparse arena still
sparse, and every tracker this kernel has exact per 4 KiB page."""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import memckpt
from memckpt import CorruptionError, _reader
from memckpt.store import Store, eager

from conftest import BACKENDS, require_backend, touch

PS = memckpt.features().page_size
BLOCK = 2 << 20
PER_BLOCK = BLOCK // PS


def mapping_of(addr: int, nbytes: int) -> list[dict]:
    """The /proc/self/smaps entries that overlap [addr, addr + nbytes)."""
    out: list[dict] = []
    cur: dict | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = {"lo": lo, "hi": hi} if lo < addr + nbytes and hi > addr else None
                if cur is not None:
                    out.append(cur)
            elif cur is not None:
                key = head[0].rstrip(":")
                cur[key] = head[1:] if key == "VmFlags" else int(head[1])
    return out


def huge_kib(arena: memckpt.Arena) -> int:
    return sum(m["AnonHugePages"] for m in mapping_of(arena.address, arena.nbytes))


def rss_kib(arena: memckpt.Arena) -> int:
    return sum(m["Rss"] for m in mapping_of(arena.address, arena.nbytes))


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "none"


def _store(tmp_path, content: np.ndarray, name: str = "st") -> Store:
    """A store whose one full epoch is ``content`` ((npages, PS) uint8)."""
    with memckpt.Arena(content.nbytes) as arena:
        arena.array("x", content.nbytes, np.uint8)[:] = content.reshape(-1)
        with memckpt.Checkpointer(arena, tmp_path / name, mode="sync") as ck:
            ck.checkpoint()
    return Store(tmp_path / name)


def _dense_with_holes(nblocks: int, seed: int) -> np.ndarray:
    """Random pages, but block 1 has one zero page (a block filled in part)
    and the last half block is zero (the tail past the last whole block)."""
    rng = np.random.default_rng(seed)
    content = rng.integers(1, 256, (nblocks * PER_BLOCK + PER_BLOCK // 2, PS), dtype=np.uint8)
    content[PER_BLOCK + 5] = 0
    content[nblocks * PER_BLOCK + 3:] = 0
    return content


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("fill")
    content = _dense_with_holes(6, 1)
    return _store(path, content), content


@pytest.fixture(params=["in run", "pass"])
def fill_way(request, monkeypatch):
    """Blocks populated in the read (the default), or in a pass before it."""
    monkeypatch.setattr(eager, "FILL_IN_RUN", request.param == "in run")
    return request.param


def test_restore_is_exact_and_leaves_no_huge_page(dense, fill_way):
    st, content = dense
    arena = memckpt.restore(st)
    try:
        assert arena.address % BLOCK == 0, "an arena of 2 MiB or more starts on a 2 MiB boundary"
        got = np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS)
        assert np.array_equal(got, content)
        del got
        maps = mapping_of(arena.address, arena.nbytes)
        assert len(maps) == 1, f"the arena is {len(maps)} VMAs: the split left boundaries behind"
        assert "nh" in maps[0]["VmFlags"], "the arena is not advised MADV_NOHUGEPAGE after the read"
        assert huge_kib(arena) == 0
    finally:
        arena.close()


def test_prefault_backs_whole_blocks_with_huge_pages_then_split(dense):
    """The plan's own steps: what prefault() did is visible before the split."""
    if thp_mode() == "never" or thp_mode() == "none":
        pytest.skip(f"transparent huge pages are {thp_mode()!r} here")
    st, content = dense
    epoch = st.latest()
    with memckpt.Arena(content.nbytes) as arena:
        out = np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS)
        # the store's own parsed index and pack, as store/reader.py hands them over
        doc = st._doc(epoch)  # noqa: SLF001
        fd = st._open_pack(epoch, doc)  # noqa: SLF001
        try:
            plan = _reader.ReadPlan([(fd, st._index(epoch), doc["files"]["pack"]["size"])],  # noqa: SLF001
                                    out, out_is_zero=True, fill_huge=True)
            blocks, asked = plan.prefault()
            # blocks 0, 2..5: block 1 has a zero page, the tail is half a block
            assert blocks == 5 and 1 <= asked <= 5
            got_huge = huge_kib(arena)
            plan.run()
            plan.split_huge()
        finally:
            os.close(fd)
        assert np.array_equal(out, content)
        assert huge_kib(arena) == 0
        if got_huge == 0:
            pytest.skip("the kernel had no 2 MiB page at hand: nothing was split")
        assert got_huge <= 5 * BLOCK // 1024
        del out, plan


def _plan(st: Store, epoch: int, out: np.ndarray, fd: int) -> "_reader.ReadPlan":
    """The plan store/reader.py makes for a restore: the store's own parsed index."""
    doc = st._doc(epoch)  # noqa: SLF001
    return _reader.ReadPlan([(fd, st._index(epoch), doc["files"]["pack"]["size"])],  # noqa: SLF001
                            out, out_is_zero=True, fill_huge=True)


def test_fill_in_run_populates_blocks_as_it_reads(dense):
    """fill_in_run(): the pages outside whole blocks are there (as 4 KiB pages)
    before the run, the whole blocks come with the run, then the split."""
    st, content = dense
    epoch = st.latest()
    with memckpt.Arena(content.nbytes) as arena:
        out = np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS)
        fd = st._open_pack(epoch, st._doc(epoch))  # noqa: SLF001
        try:
            plan = _plan(st, epoch, out, fd)
            assert plan.fill_in_run() == 5  # blocks 0, 2..5
            # block 1's 511 stored pages and the tail's 3, nothing of the whole blocks
            assert rss_kib(arena) == (PER_BLOCK - 1 + 3) * PS // 1024
            with pytest.raises(OSError):
                plan.fill_in_run()  # (set up once)
            plan.run()
            asked = plan.huge_blocks()
            got_huge = huge_kib(arena)
            plan.split_huge()
        finally:
            os.close(fd)
        assert np.array_equal(out, content)
        assert huge_kib(arena) == 0 and asked <= 5 and got_huge <= 5 * BLOCK // 1024
        maps = mapping_of(arena.address, arena.nbytes)
        assert len(maps) == 1 and "nh" in maps[0]["VmFlags"]
        del out, plan


def test_fill_in_run_leaves_a_sparse_read_to_the_pass(tmp_path):
    """More pages outside whole blocks than in them: fill_in_run() declines."""
    content = np.zeros((8 * PER_BLOCK, PS), np.uint8)
    content[:PER_BLOCK] = 3           # one whole block
    content[PER_BLOCK::2] = 5         # every other page of the rest
    st = _store(tmp_path, content)
    epoch = st.latest()
    with memckpt.Arena(content.nbytes) as arena:
        out = np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS)
        fd = st._open_pack(epoch, st._doc(epoch))  # noqa: SLF001
        try:
            plan = _plan(st, epoch, out, fd)
            assert plan.fill_in_run() == 0
            assert rss_kib(arena) == 0, "a declined fill populated pages"
            assert plan.prefault()[0] == 1
            plan.run()
            plan.split_huge()
        finally:
            os.close(fd)
        assert np.array_equal(out, content)
        del out, plan


def _maps() -> set[tuple[int, int]]:
    with open("/proc/self/maps") as f:
        return {tuple(int(x, 16) for x in line.split()[0].split("-")) for line in f}


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_damaged_page_found_by_a_thread_filling_its_own_blocks(tmp_path, threads):
    """Two damaged pages in different blocks (so, with two threads, found by
    different threads, each having populated its own blocks): restore raises
    CorruptionError naming the epoch and the first page in the pack's order,
    and leaves no arena behind; a read_into of the same epoch into a fresh
    arena raises the same and leaves it one VMA with no huge page."""
    content = np.random.default_rng(5).integers(1, 256, (6 * PER_BLOCK, PS), dtype=np.uint8)
    st = _store(tmp_path, content)
    epoch = st.latest()
    recs = st._index(epoch)  # noqa: SLF001
    pack = tmp_path / "st" / st.manifest(epoch)["files"]["pack"]["name"]
    data = bytearray(pack.read_bytes())
    bad = [4 * PER_BLOCK + 10, 2 * PER_BLOCK + 300]
    for page in bad:
        r = recs[recs["page"] == page][0]
        data[int(r["offset"]) + 2000] ^= 0x01
    pack.write_bytes(bytes(data))
    first = min(bad, key=lambda p: int(recs[recs["page"] == p][0]["offset"]))
    before = _maps()
    with pytest.raises(CorruptionError, match=f"^epoch {epoch}: page {first} in {pack.name} ") as ei:
        memckpt.restore(tmp_path / "st", threads=threads)
    # (the traceback's frames hold the half-read pages until it goes)
    del ei
    gc.collect()
    left = [m for m in _maps() - before if m[1] - m[0] == content.nbytes]
    assert not left, f"a failed restore left a mapping of the arena's size: {left}"
    with memckpt.Arena(content.nbytes) as arena:
        out = np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS)
        with pytest.raises(CorruptionError, match=f"page {first} in"):
            Store(tmp_path / "st").read_into(epoch, out, out_is_zero=True, fill_huge=True,
                                             threads=threads)
        maps = mapping_of(arena.address, arena.nbytes)
        assert len(maps) == 1 and "nh" in maps[0]["VmFlags"] and huge_kib(arena) == 0
        # what was read before the fault is the epoch's; nothing past a damaged page is trusted
        assert np.array_equal(out[:PER_BLOCK], content[:PER_BLOCK])
        del out


def test_sparse_epoch_stays_sparse(tmp_path, fill_way):
    """One page written per 2 MiB block: no block is whole, none is huge."""
    npages = 16 * PER_BLOCK
    content = np.zeros((npages, PS), np.uint8)
    content[::PER_BLOCK] = 7
    st = _store(tmp_path, content)
    arena = memckpt.restore(st)
    try:
        assert np.array_equal(np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS), content)
        assert rss_kib(arena) <= 16 * 2 * PS // 1024, "pages the epoch holds as zero were faulted in"
        assert huge_kib(arena) == 0
    finally:
        arena.close()


def test_fill_huge_needs_a_fresh_arena(dense):
    st, content = dense
    out = np.zeros_like(content)
    with pytest.raises(ValueError, match="out_is_zero"):
        st.read_into(st.latest(), out, fill_huge=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trackers_exact_after_restore(dense, backend, fill_way):
    """Each tracker on the restored arena sees exactly the 4 KiB pages written,
    in whole blocks (huge during the restore) and elsewhere."""
    info = require_backend(backend)
    st, content = dense
    arena = memckpt.restore(st)
    try:
        pages = arena.arrays()["x"].reshape(-1, PS)
        rng = np.random.default_rng(7)
        with memckpt.DirtyTracker(arena, backend) as tracker:
            tracker.collect()
            for rnd in range(6):
                # a few pages in one whole block, a few anywhere
                written = np.concatenate([rng.integers(0, PER_BLOCK, 3) + 2 * PER_BLOCK,
                                          rng.integers(0, len(pages), 20)])
                touch(pages, written)
                got = tracker.collect()
                want = np.unique(written).astype(np.uint64)
                if info.exact:
                    assert np.array_equal(got, want), (
                        f"{backend}: reported {np.setdiff1d(got, want)[:8]} never written, "
                        f"missed {np.setdiff1d(want, got)[:8]}")
                else:
                    assert np.setdiff1d(want, got).size == 0
        del pages
    finally:
        arena.close()


def test_resume_after_restore_continues_incrementally(tmp_path):
    """Checkpointer.resume on a filled arena: the next epoch holds the pages
    written since, no more (the tracker sees 4 KiB pages)."""
    content = _dense_with_holes(3, 2)
    _store(tmp_path, content)
    with memckpt.Checkpointer.resume(tmp_path / "st", mode="sync") as ck:
        x = ck.arena.arrays()["x"].reshape(-1, PS)
        assert np.array_equal(x, content)
        x[[3, PER_BLOCK + 9, 2 * PER_BLOCK + 100], 0] ^= 0xFF
        info = ck.checkpoint()
        del x
    assert info.kind == "incremental" and info.pages_dirty == 3
