"""Replication of a local store to S3 (moto on loopback), driven directly:
epochs copied byte for byte in order, bounded bytes in flight, the time to
remote durability recorded, a chain never broken on the replica."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import memckpt
from memckpt.store import Store
from memckpt.store.replicate import ReplicationError, Replicator
from memckpt.store.s3 import S3Store

from _s3_util import s3_server, s3_url  # noqa: F401  (fixtures)
from _store_util import PS, build_chain, random_pages, write_epoch


def _same(local: Store, remote: S3Store, epochs) -> None:
    fresh = S3Store(remote.url, storage_options=remote.bucket.options)
    for e in epochs:
        assert fresh.bucket.get(f"e{e:08d}.json") == (local.path / f"e{e:08d}.json").read_bytes()
        want = np.zeros((local.manifest(e)["npages"], PS), np.uint8)
        got = np.zeros_like(want)
        local.read_into(e, want)
        fresh.read_into(e, got)
        assert np.array_equal(got, want), e
    fresh.verify()


def test_replicates_in_order_with_bounded_bytes_in_flight(tmp_path, s3_url, s3_server):
    local = Store(tmp_path / "s", create=True, page_size=PS)
    expected = build_chain(local, npages=96, nepochs=6, seed=2)
    sizes = [local.manifest(e)["files"][x]["size"] for e in expected for x in ("pack", "idx")]
    bound = max(sizes)  # one object at a time, however many workers
    rep = Replicator(local, s3_url, storage_options=s3_server.options,
                     max_inflight_bytes=bound, workers=4)
    # the PUTs in flight, seen from the client
    inflight, peak, lock = [0], [0], threading.Lock()
    put = rep.remote.bucket.put

    def counting_put(name, body, size, *, exclusive):
        with lock:
            inflight[0] += size
            peak[0] = max(peak[0], inflight[0])
        try:
            put(name, body, size, exclusive=exclusive)
        finally:
            with lock:
                inflight[0] -= size

    rep.remote.bucket.put = counting_put
    with rep:
        assert rep.catch_up() == sorted(expected)
        assert rep.wait(60)
    assert rep.errors() == {}
    assert rep.budget.peak <= bound
    assert peak[0] <= bound + 8192  # + a manifest
    assert sorted(rep.records) == sorted(expected)
    for e, r in rep.records.items():
        assert r.remote_lag_s >= 0 and r.upload_s > 0 and r.bytes > 0
    _same(local, rep.remote, expected)


def test_with_a_checkpointer_polling(tmp_path, s3_url, s3_server):
    """No hook in the checkpointer: the replicator watches the store."""
    local = Store(tmp_path / "s", create=True)
    arena = memckpt.Arena(32 * local.page_size)
    a = arena.array("a", 32 * local.page_size // 8)
    rng = np.random.default_rng(3)
    with Replicator(local, s3_url, storage_options=s3_server.options, poll_s=0.05) as rep:
        with memckpt.Checkpointer(arena, local, tracker="compare") as ck:
            for _ in range(4):
                a[rng.integers(0, a.size, 50)] = rng.random(50)
                ck.checkpoint().result()
        deadline = 200
        while len(rep.records) < 4 and deadline:
            rep.wait(0.1)
            threading.Event().wait(0.05)
            deadline -= 1
        rep.wait(30)
    del a
    arena.close()
    assert sorted(rep.records) == local.epoch_numbers()
    got = memckpt.restore(S3Store(s3_url, storage_options=s3_server.options))
    try:
        want = memckpt.restore(local)
        assert np.array_equal(got.arrays()["a"], want.arrays()["a"])
        want.close()
    finally:
        got.close()


def test_parent_first_and_no_overwrite(tmp_path, s3_url, s3_server):
    local = Store(tmp_path / "s", create=True, page_size=PS)
    expected = build_chain(local, npages=16, nepochs=3)
    with Replicator(local, s3_url, storage_options=s3_server.options) as rep:
        rep.submit(3)  # its parents go first: the replica's chain is whole
        assert rep.wait(30)
    assert sorted(rep.records) == [1, 2, 3] and rep.errors() == {}
    _same(local, rep.remote, expected)
    # another history with an epoch 4 on the replica: never overwritten
    other = S3Store(s3_url, storage_options=s3_server.options)
    state = random_pages(np.random.default_rng(9), 16)
    assert write_epoch(other, state, None, kind="full") == 4
    write_epoch(local, expected[3], [0], parent=3)
    with Replicator(local, s3_url, storage_options=s3_server.options) as rep:
        rep.submit(4)
        rep.wait(30)
    assert "holds another epoch 4" in rep.errors()[4]
    out = np.zeros((16, PS), np.uint8)
    S3Store(s3_url, storage_options=s3_server.options).read_into(4, out)
    assert np.array_equal(out, state)
    with pytest.raises(ReplicationError):
        raise ReplicationError("the class is public")


def test_checkpointer_replicate_to(tmp_path, s3_url, s3_server):
    """Checkpointer(replicate_to=): every committed epoch reaches the remote
    store byte for byte; close() waits for the replica; each epoch's time to
    remote durability is recorded."""
    with memckpt.Arena(64 * PS) as arena:
        x = arena.array("x", 64 * PS, np.uint8)
        rng = np.random.default_rng(5)
        with memckpt.Checkpointer(arena, tmp_path / "s", replicate_to=s3_url,
                                  storage_options=s3_server.options) as ck:
            for i in range(4):
                x[rng.integers(0, x.size, 50)] = i + 1
                ck.checkpoint()
            rep = ck.replicator
            want = x.copy()
        del x
    assert sorted(rep.records) == [1, 2, 3, 4] and not rep.errors()
    assert all(r.remote_lag_s > 0 and r.bytes > 0 for r in rep.records.values())
    local = Store(tmp_path / "s")
    _same(local, rep.remote, [1, 2, 3, 4])
    with memckpt.restore(memckpt.open_store(s3_url, storage_options=s3_server.options)) as got:
        assert np.array_equal(got.arrays()["x"], want)
