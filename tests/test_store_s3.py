"""The store contract over both backends, local and S3 (a moto server on
loopback, started here), and what is the S3 backend's own: the commit
protocol without rename (a racing writer loses cleanly), damaged and missing
objects named, bytes uploaded proportional to the pages written."""
from __future__ import annotations

import numpy as np
import pytest

import memckpt
from memckpt.errors import CorruptionError, EpochNotFound, MemckptError, StoreLocked
from memckpt.store import Store
from memckpt.store.s3 import S3Store, _merge, _subtract

from _s3_util import any_store, s3_server, s3_url  # noqa: F401  (fixtures)
from _store_util import PS, build_chain, random_pages, write_epoch


def _reopen(store):
    if isinstance(store, S3Store):  # a new object: nothing cached, a new mirror
        return S3Store(store.url, storage_options=store.bucket.options)
    return Store(store.path)


# -- the contract, over both backends ------------------------------------------------------
@pytest.mark.parametrize("compress", [None, "zstd"])
def test_chain_reads_back_bit_for_bit(any_store, compress):
    expected = build_chain(any_store, npages=48, nepochs=5, seed=3, compress=compress)
    st = _reopen(any_store)
    assert st.epoch_numbers() == sorted(expected) and st.latest() == max(expected)
    assert [i.epoch for i in st.epochs()] == sorted(expected)
    for e, want in expected.items():
        out = np.full((48, PS), 0xA5, np.uint8)
        st.read_into(e, out)
        assert np.array_equal(out, want), e
        some = np.array([0, 3, 5, 17, 47])
        part = np.zeros((48, PS), np.uint8)
        st.read_into(e, part, pages=some)
        assert np.array_equal(part[some], want[some])
        assert not part[np.setdiff1d(np.arange(48), some)].any()
    assert st.chain(5) == [1, 2, 3, 4, 5]
    assert st.info(3).kind == "incremental" and st.info(1).kind == "full"
    assert st.layout(2) == {"nbytes": 48 * PS, "arrays": []}
    changed = st.changed_pages(2, 5)
    assert changed is not None
    diff = np.flatnonzero((expected[2] != expected[5]).any(axis=1))
    assert set(diff.tolist()) <= set(changed.tolist())
    st.verify()
    st.verify(4)


def test_keeps_the_contract(any_store):
    from memckpt.store.contract import EpochWriterContract, StoreContract
    assert isinstance(any_store, StoreContract)
    with any_store.begin("full", npages=1) as w:
        assert isinstance(w, EpochWriterContract)
    assert any_store.epoch_numbers() == []  # aborted: nothing committed


@pytest.mark.parametrize("mode", ["copy", "fork"])
def test_checkpointer_and_restore(any_store, mode):
    """The checkpointer and restore code against the contract: both backends
    serve them alike, every restore bit for bit."""
    arena = memckpt.Arena(64 * PS)
    a = arena.array("a", 64 * PS // 8)
    rng = np.random.default_rng(5)
    want = {}
    with memckpt.Checkpointer(arena, any_store, tracker="compare", mode=mode) as ck:
        for step in range(4):
            idx = rng.choice(a.size, 300, replace=False)
            a[idx] = rng.random(300)
            want[ck.checkpoint().result().epoch] = a.copy()
    del a
    arena.close()
    with pytest.raises(EpochNotFound, match="has no epoch 99"):
        any_store.info(99)
    st = _reopen(any_store)
    for e, w in want.items():
        got = memckpt.restore(st, e)
        try:
            assert np.array_equal(got.arrays()["a"], w), e
        finally:
            got.close()


def test_prune_keeps_what_the_kept_need(any_store):
    rng = np.random.default_rng(1)
    state = random_pages(rng, 8)
    write_epoch(any_store, state, None, kind="full")
    for e in range(2, 6):
        state[e] = e
        write_epoch(any_store, state, [e], parent=e - 1 if e != 4 else None,
                    kind="incremental" if e != 4 else "full")
    assert any_store.prune(keep_last=2) == [1, 2, 3]
    st = _reopen(any_store)
    assert st.epoch_numbers() == [4, 5]
    out = np.zeros((8, PS), np.uint8)
    st.read_into(5, out)
    assert np.array_equal(out, state)


# -- S3's own ------------------------------------------------------------------------------
def test_racing_writers_one_epoch_number(s3_url, s3_server):
    """Two writers (two S3Store objects: two processes to S3) begin the same
    epoch; the first manifest PUT commits, the second is refused and leaves
    nothing behind; what is read is the winner's."""
    a = S3Store(s3_url, create=True, page_size=PS, storage_options=s3_server.options)
    b = S3Store(s3_url, storage_options=s3_server.options)
    rng = np.random.default_rng(2)
    base = random_pages(rng, 8)
    write_epoch(a, base, None, kind="full")
    wa = a.begin("incremental", parent=1, npages=8)
    wb = b.begin("incremental", parent=1, npages=8)
    assert wa.epoch == wb.epoch == 2
    pa, pb = random_pages(rng, 1), random_pages(rng, 1)
    wa.add_pages(np.array([3], np.uint64), pa)
    wb.add_pages(np.array([3], np.uint64), pb)
    wa.commit(pages_dirty=1, pause_s=0.0)
    before = set(b.bucket.list())
    with pytest.raises(StoreLocked, match="epoch 2 was committed by another writer"):
        wb.commit(pages_dirty=1, pause_s=0.0)
    assert set(b.bucket.list()) == before  # the loser's data objects are gone
    out = np.zeros((8, PS), np.uint8)
    _reopen(a).read_into(2, out)
    assert np.array_equal(out[3], pa[0])
    # the loser's Store writes on: its next epoch is 3, on the winner's 2
    write_epoch(b, base, [4], parent=2)
    assert _reopen(a).chain(3) == [1, 2, 3]


def test_conditional_put_is_enforced_by_the_server(s3_url, s3_server):
    """The protocol rests on the server refusing a second PUT of a name with
    If-None-Match: "*" (moto does, as S3 has since 2024)."""
    from memckpt.store.s3client import ObjectExists
    st = S3Store(s3_url, create=True, page_size=PS, storage_options=s3_server.options)
    st.bucket.put("x", b"1", 1, exclusive=True)
    with pytest.raises(ObjectExists):
        st.bucket.put("x", b"2", 1, exclusive=True)
    assert st.bucket.get("x") == b"1"


def _damage(srv, url: str, name: str, how: str) -> None:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    key = f"{prefix}/{name}"
    if how == "delete":
        srv.client.delete_object(Bucket=bucket, Key=key)
        return
    data = bytearray(srv.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    if how == "truncate":
        data = data[:-100]
    else:
        data[40 if name.endswith(".pack") else len(data) - 10] ^= 0x40  # a page's, a record's bytes
    srv.client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


@pytest.mark.parametrize("ext,how,match", [
    ("pack", "flip", r"epoch 2: (page \d+ in e00000002-\d+\.pack .*does not match its BLAKE3"
                     r"|e00000002-\d+\.pack: BLAKE3 digest mismatch)"),  # read | verify
    ("pack", "truncate", r"e00000002-\d+\.pack: is \d+ bytes but the manifest says \d+ \(truncated\)"),
    ("pack", "delete", r"e00000002-\d+\.pack: the object is missing"),
    ("idx", "flip", r"epoch 2: e00000002-\d+\.idx: BLAKE3 digest mismatch"),
    ("idx", "delete", r"e00000002-\d+\.idx: the object is missing"),
    ("json", "flip", r"e00000002\.json: (BLAKE3 digest mismatch|not valid JSON)"),
])
def test_damaged_object_is_named(s3_url, s3_server, ext, how, match):
    st = S3Store(s3_url, create=True, page_size=PS, storage_options=s3_server.options)
    build_chain(st, npages=48, nepochs=3)
    names = st.manifest(2)["files"]
    name = "e00000002.json" if ext == "json" else names[ext]["name"]
    _damage(s3_server, s3_url, name, how)
    for op in ("read", "verify"):
        fresh = _reopen(st)
        with pytest.raises(CorruptionError, match=match) as ei:
            if op == "read":
                fresh.read_into(2, np.zeros((48, PS), np.uint8))
            else:
                fresh.verify()
        assert s3_url in str(ei.value)


def test_incremental_upload_is_proportional_to_pages_written(s3_url, s3_server):
    npages = 2048
    st = S3Store(s3_url, create=True, page_size=PS, storage_options=s3_server.options)
    rng = np.random.default_rng(4)
    state = random_pages(rng, npages)
    s0 = st.bucket.sent
    e = write_epoch(st, state, None, kind="full")
    full = st.bucket.sent - s0
    assert full >= npages * PS
    sent = {}
    for k in (20, 200):
        pages = rng.choice(npages, k, replace=False)
        state[pages] = random_pages(rng, k)
        s0 = st.bucket.sent
        e = write_epoch(st, state, pages, parent=e)
        sent[k] = st.bucket.sent - s0
        assert st.manifest(e)["extra"]["object_store"]["bytes_uploaded"] == sent[k] - len(
            st.bucket.get(f"e{e:08d}.json"))
        # the pages, their index records and one manifest: nothing of the rest of the arena
        assert k * PS <= sent[k] <= k * PS + k * 64 + 16384, (k, sent[k])
    assert sent[200] < full / 8


def test_unsupported_and_file_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("gs://bucket/run", "az://c/run", "http://host/run"):
        scheme = url.split(":")[0]
        with pytest.raises(memckpt.MemckptError, match=f"cannot open {scheme}:// URLs"):
            Store(url, create=True)
        with pytest.raises(ValueError, match=f"cannot open {scheme}:// URLs"):
            memckpt.Checkpointer(memckpt.Arena(1 << 16), url)
    with pytest.raises(MemckptError, match="is in S3: open it with memckpt.open_store"):
        Store("s3://bucket/run", create=True)
    assert list(tmp_path.iterdir()) == []  # no ./gs:/bucket/run, no ./s3:/...
    st = Store(f"file://{tmp_path}/s", create=True)
    assert st.path == tmp_path / "s" and (tmp_path / "s" / "memckpt-store.json").exists()
    assert isinstance(memckpt.open_store(f"file://{tmp_path}/s"), Store)


def test_cli_refuses_unsupported_urls(tmp_path, monkeypatch, capsys):
    from memckpt.cli.app import main
    monkeypatch.chdir(tmp_path)
    rc = main(["ls", "gs://bucket/run"])
    err = capsys.readouterr().err
    assert rc != 0 and "cannot open gs:// URLs" in err, err
    assert list(tmp_path.iterdir()) == []


def test_range_bookkeeping():
    assert _merge([(5, 9), (0, 3), (3, 4), (8, 12)]) == [(0, 4), (5, 12)]
    assert _subtract([(0, 10), (20, 30)], [(2, 4), (6, 22), (25, 26)]) == \
        [(0, 2), (4, 6), (22, 25), (26, 30)]
    assert _subtract([(0, 10)], []) == [(0, 10)]
    assert _subtract([(3, 5)], [(0, 10)]) == []


def test_cli_and_restore_by_url_from_the_environment(s3_url, s3_server, monkeypatch, capsys):
    """With the endpoint and credentials in the environment (as boto3 reads
    them), a URL is all the CLI, restore and the checkpointer need."""
    from memckpt.cli.app import main
    for k, v in (("AWS_ENDPOINT_URL", s3_server.endpoint), ("AWS_DEFAULT_REGION", "us-east-1"),
                 ("AWS_ACCESS_KEY_ID", "memckpt-test"), ("AWS_SECRET_ACCESS_KEY", "memckpt-test")):
        monkeypatch.setenv(k, v)
    arena = memckpt.Arena(8 * PS)
    a = arena.array("a", 8 * PS // 8)
    with memckpt.Checkpointer(arena, s3_url, tracker="compare") as ck:
        a[:] = 1.5
        ck.checkpoint().result()
        a[3] = 2.5
        ck.checkpoint().result()
    want = a.copy()
    del a
    arena.close()
    got = memckpt.restore(s3_url)
    try:
        assert np.array_equal(got.arrays()["a"], want)
    finally:
        got.close()
    capsys.readouterr()
    assert main(["ls", s3_url]) == 0
    out = capsys.readouterr().out
    assert s3_url in out or "incremental" in out, out
    assert main(["verify", s3_url]) == 0, capsys.readouterr().err
    bucket = s3_url.split("/")[2]
    assert main(["ls", f"s3://{bucket}/nothing-here"]) == 1
    assert "no store" in capsys.readouterr().err


def test_small_pieces_and_few_workers(s3_url, s3_server):
    """Runs split into many ranged GETs (part_size) on few threads read the same."""
    st = S3Store(s3_url, create=True, page_size=PS, storage_options=s3_server.options)
    expected = build_chain(st, npages=64, nepochs=3, seed=6)
    small = S3Store(s3_url, storage_options=dict(s3_server.options, part_size=3 * PS + 5,
                                                 max_workers=3))
    for e, want in expected.items():
        out = np.zeros((64, PS), np.uint8)
        small.read_into(e, out)
        assert np.array_equal(out, want)
    assert small.bucket.requests > 25  # the pieces were many (about 20 with the default size)
    with pytest.raises(ValueError, match="part_size >= 4096"):
        S3Store(s3_url, storage_options=dict(s3_server.options, part_size=10))
