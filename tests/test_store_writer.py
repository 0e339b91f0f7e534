"""The C epoch writer behind EpochWriter (csrc/epoch_writer.c, memckpt._writer):
its files are those of the format's rules, byte for byte, whatever the number
of threads, and what it wrote restores bit for bit."""
from __future__ import annotations

import os
from pathlib import Path

import blake3
import numpy as np
import pytest

from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, random_pages, read

NPAGES = 3000  # 12 MiB: several of the writer's windows, and many pack subtrees


def _content(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A full epoch's arena, then an incremental one's: zero pages, pages
    repeated within and across add calls, pages written back to zero."""
    rng = np.random.default_rng(seed)
    first = random_pages(rng, NPAGES)
    first[::7] = 0
    first[5::11] = first[2]
    first[NPAGES // 2:NPAGES // 2 + 300] = 0  # a sparse stretch
    second = first.copy()
    pages = np.sort(rng.choice(NPAGES, 1100, replace=False)).astype(np.uint64)
    second[pages] = random_pages(rng, len(pages))
    second[pages[::6]] = 0
    second[pages[1::8]] = second[pages[0]]
    second[pages[2::9]] = first[2]  # content the full epoch has: no dedup across epochs
    return first, second, pages


def _write(path: Path, threads: int | None, *, from_arena: bool = True,
           compress: str | None = None) -> Store:
    first, second, pages = _content()
    if compress:  # pages that shrink beside the random ones, which do not
        first, second = _compressible(first), _compressible(second)
    s = Store(path, create=True, page_size=PS)
    with s.begin("full", npages=NPAGES, threads=threads, compress=compress) as w:
        if from_arena:
            w.add_pages_from(first, np.arange(NPAGES))
        else:
            w.add_pages(np.arange(NPAGES), first)
        w.commit(pages_dirty=NPAGES, pause_s=0.0)
    with s.begin("incremental", parent=1, npages=NPAGES, threads=threads, compress=compress) as w:
        for part in np.array_split(pages, 3):
            if from_arena:
                w.add_pages_from(second, part)
            else:
                w.add_pages(part, second[part])
        w.commit(pages_dirty=len(pages), pause_s=0.0)
    return s


def _compressible(state: np.ndarray) -> np.ndarray:
    """Every third page a run of its page number's bytes: each compresses,
    to a different image (and page 0's twin, page 3 * k, dedups)."""
    out = state.copy()
    rows = np.arange(0, NPAGES, 3)
    out[rows] = (rows % 251).astype(np.uint8)[:, None]
    out[rows[1::5], : PS // 2] = 7
    return out


def _data_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())
            if p.suffix in (".idx", ".pack")}


def test_one_thread_and_many_write_the_same_store(tmp_path):
    one = _write(tmp_path / "one", threads=1)
    many = _write(tmp_path / "many", threads=4)
    files = _data_files(one.path)
    assert sorted(files) == ["e00000001-0.idx", "e00000001-0.pack",
                             "e00000002-0.idx", "e00000002-0.pack"]
    assert files == _data_files(many.path)
    for e in (1, 2):
        assert one.manifest(e)["files"] == many.manifest(e)["files"]
        assert one.manifest(e)["counts"] == many.manifest(e)["counts"]
    first, second, _ = _content()
    for s in (one, many):
        s.verify()
        assert np.array_equal(read(s, 1), first)
        assert np.array_equal(read(s, 2), second)


@pytest.mark.parametrize("compress", ["zstd", "lz4"])
def test_compressed_epochs_in_c_are_the_same_for_any_threads(tmp_path, compress):
    """The C writer compresses (csrc/page_codec.c): the same files for 1 and 4
    threads; pages that shrink stored as their image, the rest raw; a dedup
    record points at the first copy's bytes, flags and length; all restore."""
    from memckpt import _writer
    if not _writer.codecs() & {"zstd": fmt.FLAG_ZSTD, "lz4": fmt.FLAG_LZ4}[compress]:
        pytest.skip(f"this build has no {compress} library (compressed in Python)")
    one = _write(tmp_path / "one", threads=1, compress=compress)
    many = _write(tmp_path / "many", threads=4, compress=compress)
    assert _data_files(one.path) == _data_files(many.path)
    flag = {"zstd": fmt.FLAG_ZSTD, "lz4": fmt.FLAG_LZ4}[compress]
    first, second, _ = _content()
    first, second = _compressible(first), _compressible(second)
    for s in (one, many):
        s.verify()
        assert np.array_equal(read(s, 1), first)
        assert np.array_equal(read(s, 2), second)
    idx = np.frombuffer(_data_files(one.path)["e00000001-0.idx"][fmt.IDX_HEADER_SIZE:],
                        dtype=fmt.RECORD_DTYPE)
    packed = idx[(idx["flags"] & flag) != 0]
    assert len(packed) > NPAGES // 4 and (packed["length"] < PS).all()
    assert set(idx["page"][(idx["flags"] & flag) != 0].tolist()) <= set(range(0, NPAGES, 3))
    raw = idx[idx["flags"] == 0]
    assert len(raw) and (raw["length"] == PS).all()
    offs, first_at = np.unique(idx["offset"], return_index=True)
    for o, i in zip(offs.tolist(), first_at.tolist()):  # every sharer: the same bytes
        same = idx[idx["offset"] == o]
        assert (same["length"] == idx["length"][i]).all() and (same["flags"] == idx["flags"][i]).all()
    assert len(offs) < len(idx)  # there were dedup hits


def _reference(state: np.ndarray, pages: np.ndarray, *, epoch: int, incremental: bool,
               calls: int = 1) -> tuple[bytes, bytes]:
    """The pack and the index the format's rules make of these pages, one
    page at a time (docs/format.md: zero pages elided, the first copy of a
    content stored, in page order)."""
    pack = bytearray(fmt.pack_header(epoch, PS))
    recs = []
    seen: dict[bytes, int] = {}
    zero = bytes(PS)
    for p in pages.tolist():
        page = state[p].tobytes()
        if page == zero:
            if incremental:
                recs.append((p, 0, 0, fmt.FLAG_ZERO, fmt.zero_digest(PS)))
            continue
        d = blake3.blake3(page).digest()
        if d not in seen:
            seen[d] = len(pack)
            pack += page
        recs.append((p, seen[d], PS, 0, d))
    arr = np.zeros(len(recs), dtype=fmt.RECORD_DTYPE)
    for i, (p, off, length, flags, d) in enumerate(recs):
        arr[i] = (p, off, length, flags, np.frombuffer(d, np.uint8))
    return bytes(pack), fmt.idx_header(epoch, PS, len(recs)) + arr.tobytes()


@pytest.mark.parametrize("from_arena", [True, False], ids=["add_pages_from", "add_pages"])
def test_files_are_the_formats(tmp_path, from_arena):
    s = _write(tmp_path / "s", threads=None, from_arena=from_arena)
    first, second, pages = _content()
    files = _data_files(s.path)
    assert (files["e00000001-0.pack"], files["e00000001-0.idx"]) == \
        _reference(first, np.arange(NPAGES), epoch=1, incremental=False)
    assert (files["e00000002-0.pack"], files["e00000002-0.idx"]) == \
        _reference(second, pages, epoch=2, incremental=True)
    for e in (1, 2):
        m = s.manifest(e)["files"]
        for kind in ("idx", "pack"):
            raw = files[m[kind]["name"]]
            assert m[kind]["size"] == len(raw)
        # format 1.2: the index has a whole-file digest, the pack none (its
        # images are covered by the records' digests)
        assert m["idx"]["blake3"] == blake3.blake3(files[m["idx"]["name"]]).hexdigest()
        assert "blake3" not in m["pack"]


def test_add_pages_from_equals_add_pages_compressed(tmp_path):
    pytest.importorskip("zstandard")
    first, _, _ = _content()
    first = first[:200].copy()
    first[10] = np.tile(np.arange(64, dtype=np.uint8), PS // 64)  # compressible
    got = {}
    for how in ("add_pages", "add_pages_from"):
        s = Store(tmp_path / how, create=True, page_size=PS)
        with s.begin("full", npages=200, compress="zstd") as w:
            if how == "add_pages":
                w.add_pages(np.arange(200), first)
            else:
                w.add_pages_from(first, np.arange(200))
            w.commit(pages_dirty=200, pause_s=0.0)
        s.verify()
        assert np.array_equal(read(s, 1), first)
        got[how] = _data_files(s.path)
    assert got["add_pages"] == got["add_pages_from"]


def test_add_pages_from_refuses_bad_bases(tmp_path):
    s = Store(tmp_path / "s", create=True, page_size=PS)
    base = np.zeros((8, PS), np.uint8)
    with s.begin("full", npages=8) as w:
        with pytest.raises(ValueError, match=r"base must be a uint8 array of shape \(rows, 4096\)"):
            w.add_pages_from(base.view(np.uint16), [0])
        with pytest.raises(ValueError, match="base must be a uint8 array"):
            w.add_pages_from(base.reshape(-1), [0])
        with pytest.raises(ValueError, match="base must be C-contiguous"):
            w.add_pages_from(np.zeros((8, 2 * PS), np.uint8)[:, ::2], [0])
        with pytest.raises(ValueError, match="page 5 is beyond base's 4 rows"):
            w.add_pages_from(base[:4], [1, 5])
        with pytest.raises(ValueError, match="strictly increasing"):
            w.add_pages_from(base, [3, 2])
        w.add_pages_from(base, [2, 3])
        with pytest.raises(ValueError, match="does not follow the last page added"):
            w.add_pages(np.array([3]), base[:1])
        w.add_pages(np.array([4]), base[:1])  # the two mix under one rule
        info = w.commit(pages_dirty=3, pause_s=0.0)
    assert s.manifest(info.epoch)["counts"]["pages_zero"] == 3


def test_threads_are_checked_and_reported(tmp_path):
    s = Store(tmp_path / "s", create=True, page_size=PS)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threads must be None"):
            s.begin("full", npages=1, threads=bad)
    with pytest.raises(TypeError, match="threads must be an int"):
        s.begin("full", npages=1, threads=1.5)
    with s.begin("full", npages=1, threads=3) as w:
        assert w.threads == 3
    with s.begin("full", npages=1) as w:
        assert w.threads == len(os.sched_getaffinity(0))


def test_a_failed_write_aborts_the_epoch(tmp_path):
    """A write of the C writer fails: the epoch is aborted and its files
    removed, as when the Python path failed."""
    s = Store(tmp_path / "s", create=True, page_size=PS)
    w = s.begin("full", npages=4)
    ro = os.open(os.devnull, os.O_RDONLY)
    os.dup2(ro, w._pack_fd)  # the pack's fd now refuses writes
    os.close(ro)
    with pytest.raises(OSError, match="writing epoch 1 to store .*: not committed"):
        w.add_pages(np.arange(4), np.ones((4, PS), np.uint8))
    assert not [p for p in s.path.iterdir() if p.suffix in (".idx", ".pack")]
    assert s.epoch_numbers() == []
