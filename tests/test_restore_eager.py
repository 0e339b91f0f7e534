"""The eager read path (store/eager.py over csrc/epoch_reader.c): every epoch
of randomized chains (compressed, zero pages, dedup, full epochs mid-chain)
read bit for bit against a model, into fresh and used memory, whole and in
part, on one thread and several; what verify=False skips, and what it does
not; progress in batches."""
from __future__ import annotations

import numpy as np
import pytest

import memckpt
from memckpt import CorruptionError, _reader
from memckpt.store import Store, eager
from memckpt.store import format as fmt

from _lazy_util import page_kinds as _page_kinds
from _store_util import PS, load_json, resign_files, write_epoch

NPAGES = 700  # a few units of 128 pages: threads get more than one each


def _random_chain(path, seed: int, compress: str | None, nepochs: int = 7) -> tuple[Store, dict]:
    rng = np.random.default_rng(seed)
    s = Store(path, create=True, page_size=PS)
    state = np.zeros((NPAGES, PS), np.uint8)
    _page_kinds(rng, state, np.arange(NPAGES))
    expected = {}
    e = write_epoch(s, state, None, kind="full", compress=compress, calls=3)
    expected[e] = state.copy()
    for i in range(nepochs - 1):
        if i == 3:  # a full epoch mid-chain ends the chain walk there
            _page_kinds(rng, state, rng.choice(NPAGES, 50, replace=False))
            e = write_epoch(s, state, None, kind="full", parent=e, compress=compress)
        else:
            k = int(rng.integers(1, NPAGES // 2))
            pages = np.sort(rng.choice(NPAGES, k, replace=False))
            _page_kinds(rng, state, pages)
            e = write_epoch(s, state, pages, parent=e, compress=compress,
                            calls=int(rng.integers(1, 4)))
        expected[e] = state.copy()
    return s, expected


@pytest.mark.parametrize("codecs_in", ["c", "python"])
@pytest.mark.parametrize("compress", [None, "zstd", "lz4"])
def test_every_epoch_bit_for_bit(tmp_path, monkeypatch, compress, codecs_in):
    if codecs_in == "c" and compress and compress not in _reader.codecs():
        pytest.skip(f"this build decodes no {compress} in C (no library and header found)")
    monkeypatch.setattr(eager, "DEFER_CODED", codecs_in == "python")
    s, expected = _random_chain(tmp_path / "st", seed=len(str(compress)), compress=compress)
    rng = np.random.default_rng(1)
    for e, want in expected.items():
        fresh = np.zeros_like(want)
        s.read_into(e, fresh, out_is_zero=True, threads=int(rng.integers(1, 5)))
        assert np.array_equal(fresh, want), f"epoch {e} into fresh memory"
        used = np.full_like(want, 0xA5)
        s.read_into(e, used, threads=int(rng.integers(1, 5)))
        assert np.array_equal(used, want), f"epoch {e} into used memory (zero pages written)"
        part = np.sort(rng.choice(NPAGES, 120, replace=False))
        used[:] = 0x5A
        s.read_into(e, used, part)
        assert np.array_equal(used[part], want[part]), f"epoch {e}, some pages"
        others = np.setdiff1d(np.arange(NPAGES), part)
        assert (used[others] == 0x5A).all(), f"epoch {e}: pages not asked for were written"
    if compress:  # the chain held compressed and raw pages side by side
        flags = np.concatenate([s._index(e)["flags"] for e in expected])
        assert (flags & fmt.COMPRESSORS[compress]).any() and (flags == 0).any()


def test_threads_agree_on_bytes_and_on_faults(tmp_path):
    s, expected = _random_chain(tmp_path / "st", seed=5, compress=None)
    last = max(expected)
    ref = None
    for threads in (1, 2, 3, 8):
        out = np.full((NPAGES, PS), 0x11, np.uint8)
        s.read_into(last, out, threads=threads)
        assert np.array_equal(out, expected[last])
        ref = out if ref is None else ref
        assert np.array_equal(out, ref)
    # damage two images the last epoch reads: every thread count names the same one
    recs = s._index(last)
    stored = recs[(recs["flags"] & fmt.FLAG_ZERO) == 0]
    only = [r for r in stored if (stored["offset"] == r["offset"]).sum() == 1]
    pack = tmp_path / "st" / s.manifest(last)["files"]["pack"]["name"]
    data = bytearray(pack.read_bytes())
    for r in (only[len(only) // 2], only[-1]):
        data[int(r["offset"]) + 3] ^= 0xFF
    pack.write_bytes(bytes(data))
    msgs = set()
    for threads in (1, 2, 3, 8):
        with pytest.raises(CorruptionError) as ei:
            Store(tmp_path / "st").read_into(last, np.zeros((NPAGES, PS), np.uint8),
                                             threads=threads)
        msgs.add(str(ei.value))
    first = only[len(only) // 2]
    assert len(msgs) == 1, msgs
    assert msgs.pop().startswith(f"epoch {last}: page {int(first['page'])} in {pack.name} "
                                 f"(offset {int(first['offset'])}) does not match its "
                                 f"BLAKE3 digest")
    with pytest.raises(ValueError, match="threads"):
        s.read_into(last, np.zeros((NPAGES, PS), np.uint8), threads=0)


def _arena_store(path, seed: int) -> tuple[np.ndarray, int]:
    """A store of an arena with one array, a full epoch and an incremental one."""
    rng = np.random.default_rng(seed)
    with memckpt.Arena(64 * PS) as arena:
        x = arena.array("x", (64 * PS // 8,), np.float64)
        x[:] = rng.standard_normal(x.size)
        with memckpt.Checkpointer(arena, path, mode="sync") as ck:
            ck.checkpoint()
            x[1000:3000] += 1.0
            info = ck.checkpoint().result()
        return x.copy(), info.epoch


def _damage_page(path, epoch: int, nth: int) -> tuple[int, str]:
    """Flip a byte of the nth stored image of epoch; (its page, pack name)."""
    s = Store(path)
    recs = s._index(epoch)
    r = recs[(recs["flags"] & fmt.FLAG_ZERO) == 0][nth]
    pack = path / s.manifest(epoch)["files"]["pack"]["name"]
    data = bytearray(pack.read_bytes())
    data[int(r["offset"]) + 100] ^= 0x08
    pack.write_bytes(bytes(data))
    return int(r["page"]), pack.name


def test_verify_false_skips_the_page_digests(tmp_path):
    path = tmp_path / "st"
    x, e = _arena_store(path, 2)
    page, pack = _damage_page(path, e, 1)
    with pytest.raises(CorruptionError) as ei:
        memckpt.restore(path)  # verify=True is the default
    assert f"epoch {e}: page {page} in {pack}" in str(ei.value)
    with memckpt.restore(path, verify=False) as arena:  # not detected: restored as stored
        got = arena.arrays()["x"].view(np.uint8).reshape(-1, PS)
        want = x.view(np.uint8).reshape(-1, PS)
        differ = np.flatnonzero((got != want).any(axis=1))
        assert differ.tolist() == [page]
        assert int((got[page] != want[page]).sum()) == 1
        del got


def test_verify_false_never_reads_a_digest(tmp_path):
    """A record's digest forged (the files re-signed, as a forger would): only
    verify=True looks at it."""
    path = tmp_path / "st"
    x, e = _arena_store(path, 3)
    s = Store(path)
    idx = path / s.manifest(e)["files"]["idx"]["name"]
    raw = bytearray(idx.read_bytes())
    rec0 = fmt.IDX_HEADER_SIZE
    page = int.from_bytes(raw[rec0:rec0 + 8], "little")
    raw[rec0 + 24] ^= 0x01  # the first record's digest
    idx.write_bytes(bytes(raw))
    resign_files(path, e)
    assert load_json(path / fmt.manifest_name(e))["files"]["idx"]["size"] == len(raw)
    with pytest.raises(CorruptionError, match=f"epoch {e}: page {page} in"):
        memckpt.restore(path, e)
    with memckpt.restore(path, e, verify=False) as arena:
        assert np.array_equal(arena.arrays()["x"], x)


def test_progress_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(eager, "_BATCH_BYTES", 64 * PS)
    s, expected = _random_chain(tmp_path / "st", seed=9, compress=None, nepochs=3)
    last = max(expected)
    calls: list[tuple[int, int]] = []
    out = np.zeros((NPAGES, PS), np.uint8)
    s.read_into(last, out, out_is_zero=True, progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(out, expected[last])
    assert len(calls) > 4, calls
    assert all(t == NPAGES for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == NPAGES


@pytest.mark.parametrize("layout", [{}, {"nbytes": 2 * PS, "arrays": []}])
@pytest.mark.parametrize("lazy", [False, True])
def test_restore_of_an_epoch_without_an_arena_layout(tmp_path, layout, lazy):
    """An epoch written with Store.begin(layout=...) has pages but no arena to
    rebuild: restore says so and points to Store.read_into (which reads it)."""
    s = Store(tmp_path / "st", create=True, page_size=PS)
    w = s.begin("full", layout=layout, npages=2)
    w.add_pages(np.arange(2, dtype=np.uint64), np.full((2, PS), 3, np.uint8))
    e = w.commit(pages_dirty=2, pause_s=0.0).epoch
    with pytest.raises(memckpt.FormatError, match=r"epoch 1 of store .*'page_size'.*Store\.read_into"):
        memckpt.restore(s, lazy=lazy)
    out = np.zeros((2, PS), np.uint8)
    s.read_into(e, out)
    assert (out == 3).all()
