"""Damaged and hostile stores: every kind of store file truncated and
bit-flipped; versions from the future; missing, extra and misnamed files.
The store must answer CorruptionError or FormatError naming the epoch and the
file (or page), never another exception, and never a silently wrong result."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from memckpt import CorruptionError, FormatError
from memckpt.errors import EpochNotFound
from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, build_chain, load_json, read, relink, resign_files, write_signed

DAMAGED = 2          # the epoch whose files are damaged; 3 and 4 build on it
NEPOCHS = 4
BAD = (CorruptionError, FormatError)


@pytest.fixture(scope="module", params=[None, "zstd"])
def pristine(request, tmp_path_factory):
    """A store (1 full, 2..4 incremental) and the content of every epoch."""
    path = tmp_path_factory.mktemp("pristine") / "st"
    s = Store(path, create=True, page_size=PS)
    expected = build_chain(s, npages=24, nepochs=NEPOCHS, compress=request.param)
    s.verify()
    return path, expected


@pytest.fixture
def copy(pristine, tmp_path):
    path, expected = pristine
    dst = tmp_path / "st"
    shutil.copytree(path, dst)
    return dst, expected


def file_of(path: Path, kind: str) -> Path:
    if kind == "header":
        return path / fmt.STORE_HEADER
    if kind == "manifest":
        return path / fmt.manifest_name(DAMAGED)
    return path / fmt.data_name(DAMAGED, 0, kind)


def cut_points(size: int) -> list[int]:
    return sorted({0, 1, 8, size // 3, size // 2, size - 40, size - 1} & set(range(size)))


def flip_points(size: int, kind: str) -> list[int]:
    rng = np.random.default_rng(size)
    pts = {0, 3, 8, 12, 20, 40, 47, 60, size // 2, size - 1}
    if kind == "pack":  # inside the page data too, not only the header
        pts |= {fmt.PACK_HEADER_SIZE + 5, fmt.PACK_HEADER_SIZE + PS + 100}
    pts |= set(rng.integers(0, size, 6).tolist())
    return sorted(p for p in pts if p < size)


def same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def check_damaged(path: Path, expected: dict[int, np.ndarray], name: str) -> None:
    """Either refused on open (the header), or: verify names the damaged
    epoch and file; reading the damaged epoch fails; every other epoch
    reads exactly or fails naming an epoch."""
    try:
        s = Store(path)
    except BAD as exc:
        assert fmt.STORE_HEADER in str(exc)
        return
    with pytest.raises(BAD) as ei:
        s.verify()
    msg = str(ei.value)
    assert f"epoch {DAMAGED}" in msg and (name in msg or "page" in msg), msg
    with pytest.raises(BAD) as ei:
        read(s, DAMAGED)
    assert f"epoch {DAMAGED}" in str(ei.value), str(ei.value)
    for e, want in expected.items():
        try:
            got = read(Store(path), e)
        except BAD as exc:
            assert "epoch" in str(exc)
            assert e >= DAMAGED, f"epoch {e} does not depend on epoch {DAMAGED}: {exc}"
        else:
            assert np.array_equal(got, want), f"epoch {e} read wrong data silently"


@pytest.mark.parametrize("kind", ["header", "manifest", "idx", "pack"])
def test_truncated(copy, kind, tmp_path):
    path, expected = copy
    victim = file_of(path, kind)
    data = victim.read_bytes()
    for cut in cut_points(len(data)):
        trial = tmp_path / f"cut{cut}"
        shutil.copytree(path, trial)
        (trial / victim.name).write_bytes(data[:cut])
        if kind in ("header", "manifest") and same_json(data[:cut], data):
            continue  # only the trailing newline went
        check_damaged(trial, expected, victim.name)


@pytest.mark.parametrize("kind", ["header", "manifest", "idx", "pack"])
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped(copy, kind, mask, tmp_path):
    path, expected = copy
    victim = file_of(path, kind)
    data = victim.read_bytes()
    for off in flip_points(len(data), kind):
        trial = tmp_path / f"flip{off}"
        shutil.copytree(path, trial)
        bad = bytearray(data)
        bad[off] ^= mask
        (trial / victim.name).write_bytes(bytes(bad))
        if kind in ("header", "manifest"):
            if same_json(bytes(bad), data):  # whitespace for whitespace: the document did not change
                assert np.array_equal(read(Store(trial), DAMAGED), expected[DAMAGED])
                continue
        check_damaged(trial, expected, victim.name)


def test_flipped_page_names_the_page(copy):
    path, expected = copy
    doc = load_json(path / fmt.manifest_name(DAMAGED))
    s = Store(path)
    recs = s._index(DAMAGED)
    rec = recs[(recs["flags"] & fmt.FLAG_ZERO) == 0][0]
    pack = path / doc["files"]["pack"]["name"]
    data = bytearray(pack.read_bytes())
    data[int(rec["offset"]) + 1] ^= 0x10
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as ei:
        read(Store(path), DAMAGED)
    msg = str(ei.value)
    assert f"epoch {DAMAGED}: page {int(rec['page'])} in {pack.name}" in msg, msg
    # a read of the other pages (not sharing the damaged bytes by dedup) works and is exact
    shared = set(recs["page"][recs["offset"] == rec["offset"]].tolist())
    other = [p for p in range(24) if p not in shared]
    got = read(Store(path), DAMAGED, other)
    assert np.array_equal(got[other], expected[DAMAGED][other])


def test_bytes_no_record_covers_are_damage(copy):
    """Format 1.2 keeps no whole-file digest of a pack: verify checks instead
    that its images fill it back to back. Bytes appended (the manifest's size
    forged to match) are named, and restores of the epoch stay exact."""
    path, expected = copy
    mpath = path / fmt.manifest_name(DAMAGED)
    doc = load_json(mpath)
    assert doc["version"] == [1, 2] and "blake3" not in doc["files"]["pack"]
    pack = path / doc["files"]["pack"]["name"]
    size = pack.stat().st_size
    pack.write_bytes(pack.read_bytes() + bytes(PS))
    doc["files"]["pack"]["size"] = size + PS
    write_signed(mpath, doc)
    relink(path)
    with pytest.raises(CorruptionError, match=rf"{pack.name}: bytes from {size} are not a page image"):
        Store(path).verify()
    assert np.array_equal(read(Store(path), DAMAGED), expected[DAMAGED])


# -- versions ----------------------------------------------------------------------------
def test_store_header_from_the_future(copy):
    path, _ = copy
    doc = load_json(path / fmt.STORE_HEADER)
    write_signed(path / fmt.STORE_HEADER, dict(doc, version=[2, 0]))
    with pytest.raises(FormatError, match=r"newer memckpt: format 2\.0, this reads 1\.x"):
        Store(path)


def test_manifest_from_the_future(copy):
    path, _ = copy
    mpath = path / fmt.manifest_name(DAMAGED)
    write_signed(mpath, dict(load_json(mpath), version=[2, 0], digest_scheme="v2"))
    s = Store(path)
    for call in (lambda: s.info(DAMAGED), lambda: read(s, DAMAGED + 1), s.verify):
        with pytest.raises(FormatError, match=r"epoch 2: e00000002\.json: store written by a newer "
                                              r"memckpt: format 2\.0, this reads 1\.x"):
            call()
    assert (path / "e00000002-0.pack").exists(), "an unreadable epoch's files are not swept"


def test_newer_minor_version_is_read(copy):
    path, expected = copy
    mpath = path / fmt.manifest_name(DAMAGED)
    write_signed(mpath, dict(load_json(mpath), version=[1, 7], future_field={"x": 1}))
    relink(path)  # a newer memckpt wrote epoch 2 and the epochs built on it
    hpath = path / fmt.STORE_HEADER
    write_signed(hpath, dict(load_json(hpath), version=[1, 3], owner="someone"))
    s = Store(path)
    assert np.array_equal(read(s, DAMAGED), expected[DAMAGED])
    s.verify()


def test_index_from_the_future(copy):
    path, _ = copy
    ipath = path / fmt.data_name(DAMAGED, 0, "idx")
    data = bytearray(ipath.read_bytes())
    struct.pack_into("<H", data, 8, 2)
    ipath.write_bytes(bytes(data))
    resign_files(path, DAMAGED)
    with pytest.raises(FormatError, match=r"newer memckpt: format 2\.0"):
        read(Store(path), DAMAGED)


def test_index_with_longer_records_of_a_newer_minor(copy):
    """A 1.x index whose records carry 8 more bytes: a 1.0 reader uses the fields it knows."""
    path, expected = copy
    ipath = path / fmt.data_name(DAMAGED, 0, "idx")
    data = ipath.read_bytes()
    hdr = list(fmt.IDX_HEADER.unpack_from(data))
    recs = np.frombuffer(data, fmt.RECORD_DTYPE, offset=fmt.IDX_HEADER_SIZE)
    longer = np.zeros((len(recs), fmt.RECORD_SIZE + 8), np.uint8)
    longer[:, :fmt.RECORD_SIZE] = recs.view(np.uint8).reshape(len(recs), -1)
    longer[:, fmt.RECORD_SIZE:] = 0xEE
    hdr[2], hdr[4] = 4, fmt.RECORD_SIZE + 8            # minor 4, record size 64
    ipath.write_bytes(fmt.IDX_HEADER.pack(*hdr) + longer.tobytes())
    resign_files(path, DAMAGED)
    s = Store(path)
    assert np.array_equal(read(s, DAMAGED), expected[DAMAGED])
    s.verify()


# -- missing, extra, misnamed files ------------------------------------------------------------
@pytest.mark.parametrize("ext", ["idx", "pack"])
def test_missing_data_file(copy, ext):
    path, expected = copy
    os.unlink(path / fmt.data_name(DAMAGED, 0, ext))
    s = Store(path)
    with pytest.raises(CorruptionError, match=rf"epoch 2: e00000002-0\.{ext}: the file is missing"):
        s.verify()
    with pytest.raises(CorruptionError, match="missing"):
        read(s, DAMAGED + 1)
    assert np.array_equal(read(s, 1), expected[1])


def test_missing_manifest_breaks_the_chain(copy):
    path, expected = copy
    os.unlink(path / fmt.manifest_name(DAMAGED))
    s = Store(path)
    s.sweep()                                         # its data are garbage now: swept
    assert not (path / fmt.data_name(DAMAGED, 0, "pack")).exists()
    with pytest.raises(EpochNotFound):
        read(s, DAMAGED)
    with pytest.raises(CorruptionError, match=r"epoch 3: the chain is broken: epoch 3's parent 2 is missing"):
        read(s, 3)
    with pytest.raises(CorruptionError, match="chain is broken"):
        s.verify()
    assert np.array_equal(read(s, 1), expected[1])


def test_extra_garbage_is_swept(copy):
    path, expected = copy
    extra = ["e00000009-0.pack", "e00000009-0.idx", "e00000002-5.pack", "e00000005.json.tmp", "x.tmp"]
    for n in extra:
        (path / n).write_bytes(os.urandom(100))
    s = Store(path)
    assert set(extra) <= set(os.listdir(path))  # a reader removes nothing
    s.sweep()
    assert not set(extra) & set(os.listdir(path))
    s.verify()
    for e, want in expected.items():
        assert np.array_equal(read(s, e), want)


def test_symlinked_file_is_refused(copy, tmp_path):
    path, _ = copy
    victim = path / fmt.data_name(DAMAGED, 0, "pack")
    outside = tmp_path / "outside.pack"
    shutil.move(victim, outside)
    os.symlink(outside, victim)
    with pytest.raises(FormatError, match="symbolic link"):
        read(Store(path), DAMAGED)


# -- hostile manifests: valid digest, bad content ---------------------------------------------------
def _mutations():
    def setf(*keys, value):
        def f(doc):
            d = doc
            for k in keys[:-1]:
                d = d[k]
            d[keys[-1]] = value
        return f

    def delf(*keys):
        def f(doc):
            d = doc
            for k in keys[:-1]:
                d = d[k]
            del d[keys[-1]]
        return f

    yield "pack outside the store", setf("files", "pack", "name", value="../outside.pack")
    yield "absolute pack path", setf("files", "pack", "name", value="/etc/passwd")
    yield "idx of another epoch", setf("files", "idx", "name", value="e00000001-0.idx")
    yield "different generations", setf("files", "idx", "name", value="e00000002-3.idx")
    yield "pack name not a string", setf("files", "pack", "name", value=7)
    yield "files not an object", setf("files", value=[])
    yield "no files", delf("files")
    yield "size negative", setf("files", "pack", "size", value=-1)
    yield "size a string", setf("files", "idx", "size", value="12")
    yield "digest not hex", setf("files", "idx", "blake3", value="zz" * 32)
    yield "epoch differs from name", setf("epoch", value=3)
    yield "epoch a float", setf("epoch", value=2.0)
    yield "parent not older", setf("parent", value=2)
    yield "parent a string", setf("parent", value="1")
    yield "incremental without parent", setf("parent", value=None)
    yield "unknown kind", setf("kind", value="delta")
    yield "npages a string", setf("npages", value="24")
    yield "npages a bool", setf("npages", value=True)
    yield "npages too large", setf("npages", value=2**70)
    yield "page size differs", setf("page_size", value=8192)
    yield "counts a list", setf("counts", value=[1, 2])
    yield "count missing", delf("counts", "records")
    yield "timings missing", delf("timings")
    yield "pause negative", setf("timings", "pause_s", value=-1.0)
    yield "label a number", setf("label", value=5)
    yield "compress unknown", setf("compress", value="brotli")
    yield "layout a list", setf("layout", value=[])
    yield "layout arrays a dict", setf("layout", value={"arrays": {}})
    yield "layout object dtype", setf("layout", value={"arrays": [
        {"name": "a", "dtype": "O", "shape": [1], "offset": 0, "nbytes": 8}]})
    yield "layout bad dtype", setf("layout", value={"arrays": [
        {"name": "a", "dtype": "not-a-dtype", "shape": [1], "offset": 0, "nbytes": 8}]})
    yield "layout array outside the arena", setf("layout", value={"arrays": [
        {"name": "a", "dtype": "<f8", "shape": [10**6], "offset": 0, "nbytes": 8 * 10**6}]})
    yield "extra a list", setf("extra", value=[])
    yield "records count differs", setf("counts", "records", value=1)
    yield "format wrong", setf("format", value="memckpt-store")


@pytest.mark.parametrize("what,mutate", list(_mutations()), ids=[m[0] for m in _mutations()])
def test_hostile_manifest(copy, what, mutate):
    path, expected = copy
    mpath = path / fmt.manifest_name(DAMAGED)
    doc = load_json(mpath)
    mutate(doc)
    write_signed(mpath, doc)
    s = Store(path)
    with pytest.raises(BAD) as ei:
        s.verify()
    assert "epoch 2" in str(ei.value), str(ei.value)
    with pytest.raises(BAD) as ei:
        read(s, DAMAGED)
    assert "epoch 2" in str(ei.value)
    assert np.array_equal(read(s, 1), expected[1])
    assert os.path.exists(path.parent / "st")  # nothing outside was touched


def _index_mutations():
    # each acts on the record array r and i, the first record that holds stored bytes
    def page_beyond(r, i):
        r["page"][-1] = 10**6

    def out_of_order(r, i):
        r["page"][[0, 1]] = r["page"][[1, 0]]

    def setf(field, value):
        def f(r, i):
            r[field][i] = value
        return f

    yield "page beyond the arena", page_beyond
    yield "pages out of order", out_of_order
    yield "offset beyond the pack", setf("offset", 2**63)
    yield "offset wraps around", setf("offset", 2**64 - 10)
    yield "offset into the header", setf("offset", 0)
    yield "unknown flag", setf("flags", 1 << 9)
    yield "zstd and lz4", setf("flags", fmt.FLAG_ZSTD | fmt.FLAG_LZ4)
    yield "zero with bytes", setf("flags", fmt.FLAG_ZERO)
    yield "length huge", setf("length", 2**32 - 1)
    yield "length zero", setf("length", 0)
    yield "wrong digest", setf("digest", 7)


@pytest.mark.parametrize("what,mutate", list(_index_mutations()), ids=[m[0] for m in _index_mutations()])
def test_hostile_index(copy, what, mutate):
    """An index rewritten on purpose, with the manifest re-signed to match."""
    path, expected = copy
    ipath = path / fmt.data_name(DAMAGED, 0, "idx")
    data = ipath.read_bytes()
    recs = np.frombuffer(data, fmt.RECORD_DTYPE, offset=fmt.IDX_HEADER_SIZE).copy()
    i = int(np.flatnonzero((recs["flags"] & fmt.FLAG_ZERO) == 0)[0])
    mutate(recs, i)
    ipath.write_bytes(data[:fmt.IDX_HEADER_SIZE] + recs.tobytes())
    resign_files(path, DAMAGED)
    s = Store(path)
    with pytest.raises(BAD) as ei:
        read(s, DAMAGED)
    assert "epoch 2" in str(ei.value), str(ei.value)
    with pytest.raises(BAD):
        s.verify()
    assert np.array_equal(read(s, 1), expected[1])
