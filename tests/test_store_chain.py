"""The chain of epochs (issue 10, items 5, 6, 12): a store directory replaced
under a live writer; an epoch tied to its parent's content (parent_digest,
format 1.1) so that a parent spliced in from another store is caught, 1.0
stores still read, and compaction keeps descendants valid; and what a deep
chain costs, tested by its mechanism (manifest reads counted, index cache
bytes counted), never by time."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import blake3
import numpy as np
import pytest

import memckpt
from memckpt import CorruptionError, FormatError, MemckptError
from memckpt.store import Store, catalog
from memckpt.store import format as fmt

from _store_util import PS, build_chain, load_json, read, write_epoch, write_signed

MODES = ["copy", "sync", "fork", "background"]


def manifests(path: Path) -> list[str]:
    return sorted(n.name for n in path.iterdir() if fmt.parse_manifest_name(n.name) is not None)


# -- item 5: the store directory deleted and re-created under a live writer ---------------------
@pytest.mark.parametrize("mode", MODES)
def test_store_replaced_under_a_live_checkpointer(tmp_path, mode):
    """Before: checkpoint() went on returning durable epochs, written into the
    new empty directory, that nothing could restore ("not a memckpt store")."""
    path = tmp_path / "s"
    with memckpt.Arena(16 * PS) as arena:
        pages = np.frombuffer(arena.buffer(), np.uint8).reshape(-1, PS)
        pages[:4] = 7
        with memckpt.Checkpointer(arena, path, mode=mode) as ck:
            ck.checkpoint().result()
            shutil.rmtree(path)
            path.mkdir()
            pages[5] = 9
            for _ in range(2):  # and again: it does not go on as if nothing happened
                with pytest.raises(MemckptError, match=rf"store {path}: .* since this process "
                                                       r"opened it; no epoch can be committed"):
                    ck.checkpoint().result()
            assert manifests(path) == [], "no epoch may be reported durable there"
            with pytest.raises(FormatError, match="not a memckpt store"):
                Store(path)


def test_store_replaced_between_begin_and_commit(tmp_path):
    path = tmp_path / "s"
    s = Store(path, create=True, page_size=PS)
    state = np.full((4, PS), 3, np.uint8)
    write_epoch(s, state, None, kind="full")
    w = s.begin(kind="incremental", parent=1, layout={}, npages=4)
    w.add_pages(np.array([1], np.uint64), state[1:2])
    shutil.rmtree(path)
    Store(path, create=True, page_size=PS)  # someone else's new store at the same path
    with pytest.raises(MemckptError, match=rf"store {path}: the (directory at this path|store's "
                                           r"memckpt-store.json) is not the one it opened"):
        w.commit(pages_dirty=1, pause_s=0.0)
    assert manifests(path) == []
    assert {n.name for n in path.iterdir()} <= {"lock", fmt.STORE_HEADER}, "the epoch's files went"


def test_store_that_lost_its_header(tmp_path):
    path = tmp_path / "s"
    s = Store(path, create=True, page_size=PS)
    write_epoch(s, np.full((4, PS), 3, np.uint8), None, kind="full")
    (path / fmt.STORE_HEADER).unlink()
    with pytest.raises(MemckptError, match=rf"store {path}: the store's memckpt-store.json is gone"):
        s.begin(kind="incremental", parent=1, layout={}, npages=4)
    shutil.rmtree(path)
    with pytest.raises(MemckptError, match=rf"store {path}: the store directory was deleted"):
        s.begin(kind="full", layout={}, npages=4)
    assert not path.exists(), "nothing is made at a path the store left"


# -- item 6: an epoch tied to its parent's content --------------------------------------------------
def splice(dst: Path, src: Path, epoch: int) -> None:
    """Put src's epoch (manifest, index, pack) in place of dst's."""
    for n in list(dst.iterdir()):
        p = fmt.parse_data_name(n.name)
        if n.name == fmt.manifest_name(epoch) or (p is not None and p[0] == epoch):
            n.unlink()
    for n in src.iterdir():
        p = fmt.parse_data_name(n.name)
        if n.name == fmt.manifest_name(epoch) or (p is not None and p[0] == epoch):
            shutil.copy2(n, dst / n.name)


@pytest.fixture
def two_stores(tmp_path):
    """Two stores of the same shape (1 full, 2..4 incremental), different content."""
    a, b = tmp_path / "a", tmp_path / "b"
    ea = build_chain(Store(a, create=True, page_size=PS), npages=24, nepochs=4, seed=1)
    eb = build_chain(Store(b, create=True, page_size=PS), npages=24, nepochs=4, seed=2)
    return a, b, ea, eb


@pytest.mark.parametrize("spliced", [1, 2])
def test_spliced_parent_is_caught(two_stores, spliced):
    """Before: an epoch of another store in place of this one's passed
    verify, and the epochs built on it restored a silent mix of the two."""
    a, b, ea, eb = two_stores
    splice(a, b, spliced)
    s = Store(a)
    if spliced == 1:  # a full epoch needs no parent: it is whole, only foreign
        np.testing.assert_array_equal(read(s, 1), eb[1])
    def tie(child: int) -> str:
        return (rf"epoch {child} was written on an epoch {child - 1} whose manifest digest is "
                rf".*, but this store's epoch {child - 1} is")
    # verify() goes up from epoch 1: the first tie it meets is epoch 2's, to 1
    # (a foreign 1 under 2, or a foreign 2 on 1)
    with pytest.raises(CorruptionError, match=rf"epoch 2: the chain is spliced: {tie(2)}"):
        s.verify()
    for e in (2, 3, 4):
        # a walk goes down from e: the first broken tie is the one above the splice
        child = 2 if spliced == 1 or e == 2 else 3
        with pytest.raises(CorruptionError, match=rf"epoch {e}: the chain is spliced: {tie(child)}"):
            s.verify(e)
        with pytest.raises(CorruptionError, match=tie(child)):
            read(s, e)
        with pytest.raises(CorruptionError, match=tie(child)):
            s.chain(e)
    with pytest.raises(CorruptionError, match=tie(child)):
        s.begin(kind="incremental", parent=4, layout={}, npages=24)


def test_every_epoch_records_its_parents_identity(tmp_path):
    s = Store(tmp_path / "s", create=True, page_size=PS)
    build_chain(s, npages=16, nepochs=3)
    assert "parent_digest" not in s.manifest(1)
    for e in (2, 3):
        m = s.manifest(e)
        assert m["version"] == [1, 2]
        assert m["parent_digest"] == s.manifest(e - 1)["digest"]
    # a full epoch records its lineage parent's too, and does not need it
    state = np.full((16, PS), 5, np.uint8)
    e4 = write_epoch(s, state, None, kind="full", parent=3)
    lineage = s.manifest(e4)["parent_digest"]
    assert lineage == s.manifest(3)["digest"]
    e5 = write_epoch(s, state, [0], parent=e4)
    assert s.prune(keep_last=2) == [1, 2, 3]
    s.verify()
    assert s.chain(e5) == [e4, e5]
    info = s.compact(e4, e5)                      # first's lineage parent is gone: kept as recorded
    m = s.manifest(info.epoch)
    assert (m["kind"], m["parent"], m["parent_digest"]) == ("full", 3, lineage)
    s.verify()
    np.testing.assert_array_equal(read(s, e5), state)


def test_incremental_1_1_manifest_without_parent_digest_is_refused(tmp_path):
    path = tmp_path / "s"
    build_chain(Store(path, create=True, page_size=PS), npages=8, nepochs=2)
    doc = load_json(path / fmt.manifest_name(2))
    del doc["parent_digest"]
    write_signed(path / fmt.manifest_name(2), doc)
    with pytest.raises(FormatError, match="must record its parent_digest"):
        Store(path).manifest(2)


def downgrade_to_1_0(path: Path) -> None:
    """What memckpt 1.0 wrote: no parent_digest, version [1, 0], and the
    pack's whole-file digest (dropped in 1.2)."""
    for mpath in path.glob("e*.json"):
        doc = load_json(mpath)
        doc.pop("parent_digest", None)
        pack = doc["files"]["pack"]
        pack["blake3"] = blake3.blake3((path / pack["name"]).read_bytes()).hexdigest()
        write_signed(mpath, dict(doc, version=[1, 0]))


def test_a_1_0_store_still_reads_and_grows(tmp_path):
    path = tmp_path / "s"
    expected = build_chain(Store(path, create=True, page_size=PS), npages=24, nepochs=4)
    downgrade_to_1_0(path)
    s = Store(path)
    assert all(s.manifest(e)["version"] == [1, 0] for e in expected)
    s.verify()
    for e, want in expected.items():
        np.testing.assert_array_equal(read(s, e), want)
    # a 1.1 epoch on a 1.0 parent is tied to it
    state = expected[4].copy()
    state[0] = 1
    e5 = write_epoch(s, state, [0], parent=4)
    assert s.manifest(e5)["parent_digest"] == s.manifest(4)["digest"]
    s.verify()
    np.testing.assert_array_equal(read(Store(path), e5), state)
    # and a compaction of 1.0 epochs keeps the 1.1 child valid
    s.compact(2, 4)
    Store(path).verify()
    np.testing.assert_array_equal(read(Store(path), e5), state)


def test_compaction_keeps_descendants_valid(tmp_path):
    """Compaction rewrites epoch `last`'s manifest (new digest): its children,
    which recorded the old one, stay valid, through repeated compactions; and
    a spliced parent is still caught after them."""
    path = tmp_path / "s"
    s = Store(path, create=True, page_size=PS)
    expected = build_chain(s, npages=24, nepochs=8, seed=3)
    before4 = s.manifest(4)["digest"]
    s.compact(2, 4)
    m4 = s.manifest(4)
    assert m4["digest"] != before4 and m4["compacted"]["identity"] == before4
    assert m4["parent"] == 1 and m4["parent_digest"] == s.manifest(1)["digest"]
    assert s.manifest(5)["parent_digest"] == before4
    Store(path).verify()
    s.compact(5, 7)                  # 8 builds on the merged 7
    s.compact(4, 7)                  # 7 merged again: its identity is still the first one's
    assert s.manifest(7)["compacted"]["identity"] == s.manifest(8)["parent_digest"]
    fresh = Store(path)
    fresh.verify()
    assert fresh.chain(8) == [1, 7, 8]
    for e in (1, 7, 8):
        np.testing.assert_array_equal(read(fresh, e), expected[e])
    # a new epoch on the twice-merged chain, and a splice of its parent
    state = expected[8].copy()
    state[3] = 4
    e9 = write_epoch(fresh, state, [3], parent=8)
    fresh.verify()
    other = tmp_path / "o"
    build_chain(Store(other, create=True, page_size=PS), npages=24, nepochs=8, seed=4)
    splice(path, other, 8)
    with pytest.raises(CorruptionError, match=rf"epoch {e9}: the chain is spliced: epoch {e9} was "
                                              r"written on an epoch 8 whose"):
        Store(path).verify(e9)


# -- item 12: history costs, by their mechanism ------------------------------------------------------
def tiny_chain(path: Path, depth: int) -> Store:
    s = Store(path, create=True, page_size=PS)
    state = np.zeros((16, PS), np.uint8)
    state[:, 0] = 1
    e = write_epoch(s, state, None, kind="full")
    for i in range(1, depth):
        state[i % 16, 1] = i
        e = write_epoch(s, state, [i % 16], parent=e)
    return s


@pytest.fixture
def manifest_reads(monkeypatch):
    """Counts manifest files read (every manifest read goes through _read_fd)."""
    n = [0]
    real = catalog._read_fd

    def counting(fd, limit, where):
        if where.startswith("epoch ") and where.endswith(".json"):
            n[0] += 1
        return real(fd, limit, where)
    monkeypatch.setattr(catalog, "_read_fd", counting)
    return n


def test_deep_chain_walks_read_no_manifest(tmp_path, monkeypatch, manifest_reads):
    """Before: once the chain outgrew the manifest cache, every chain() and
    every begin() re-read and re-parsed every manifest (62 ms -> 406 ms a
    checkpoint past 4,096 epochs)."""
    monkeypatch.setattr(catalog, "_MANIFEST_CACHE", 8)
    depth = 40
    tiny_chain(tmp_path / "s", depth)
    s = Store(tmp_path / "s")
    assert s.chain(depth) == list(range(1, depth + 1))      # learns the links
    assert len(s._manifests) <= 8
    manifest_reads[0] = 0
    for _ in range(3):
        assert s.chain(depth) == list(range(1, depth + 1))
        w = s.begin(kind="incremental", parent=depth, layout={}, npages=16)
        w.abort()
    assert manifest_reads[0] == 0


def test_kept_links_follow_another_writers_compaction_and_prune(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "_MANIFEST_CACHE", 4)
    path = tmp_path / "s"
    tiny_chain(path, 12)
    reader = Store(path)
    assert reader.chain(12) == list(range(1, 13))
    other = Store(path)                       # as another process would
    other.compact(3, 6)
    assert reader.chain(12) == [1, 2, 6, 7, 8, 9, 10, 11, 12]
    reader.verify(12)
    other.prune(keep_last=1)
    assert reader.chain(12) == [1, 2, 6, 7, 8, 9, 10, 11, 12]  # all needed: nothing went
    with pytest.raises(memckpt.errors.EpochNotFound):
        reader.chain(4)


def test_verify_walks_the_chain_once(tmp_path, monkeypatch, manifest_reads):
    """Before: verify(epoch) walked the whole chain again for every epoch of
    it (5.7 s at 1,000 epochs, 51 s at 3,000): quadratic in manifest reads
    once the chain outgrew the cache."""
    monkeypatch.setattr(catalog, "_MANIFEST_CACHE", 8)
    depth = 40
    tiny_chain(tmp_path / "s", depth)
    s = Store(tmp_path / "s")
    manifest_reads[0] = 0
    s.verify(depth)
    # the walk (a reader's Store has read no manifest before: opening reads the
    # header only), then each manifest afresh (its doc, and again for its index)
    assert manifest_reads[0] <= 3 * depth + 2
    manifest_reads[0] = 0
    s.verify()
    assert manifest_reads[0] <= 2 * depth + 2


def test_index_cache_is_bounded_in_bytes(tmp_path, monkeypatch):
    """Before: 64 parsed indexes were kept whatever their size (~7 MiB each
    for full epochs of a 512 MiB arena)."""
    npages = 64
    one = fmt.IDX_HEADER_SIZE + npages * fmt.RECORD_SIZE  # an index of a full epoch, about
    bound = 3 * one
    monkeypatch.setattr(catalog, "_INDEX_CACHE_BYTES", bound)
    path = tmp_path / "s"
    s = Store(path, create=True, page_size=PS)
    rng = np.random.default_rng(0)
    expected = {}
    for _ in range(10):
        state = rng.integers(1, 256, (npages, PS), dtype=np.uint8)
        expected[write_epoch(s, state, None, kind="full")] = state
    r = Store(path)
    for e, want in expected.items():
        np.testing.assert_array_equal(read(r, e), want)
        held = sum(x.nbytes for x in r._indexes.values())
        assert 0 < held <= bound
    # an index over the bound is read, not kept
    monkeypatch.setattr(catalog, "_INDEX_CACHE_BYTES", one // 2)
    r = Store(path)
    np.testing.assert_array_equal(read(r, 3), expected[3])
    assert sum(x.nbytes for x in r._indexes.values()) == 0


def test_links_of_retired_epochs_are_forgotten(tmp_path, monkeypatch):
    """Links are kept apart from the bounded manifest cache: those of epochs
    pruned away must not pile up in a process that checkpoints for days."""
    monkeypatch.setattr(catalog, "_LINK_SLACK", 4)
    path = tmp_path / "s"
    s = tiny_chain(path, 3)
    state = np.ones((16, PS), np.uint8)
    for _ in range(30):
        write_epoch(s, state, None, kind="full", parent=s.latest())
        s.prune(keep_last=2)
        s.chain(s.latest())
    assert len(s._links) <= 2 + 4 + 1
    assert json.loads((path / fmt.manifest_name(s.latest())).read_text())["kind"] == "full"
