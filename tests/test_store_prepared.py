"""The next epoch's writer made ready after a commit (store/prepared.py):
begin() adopts it without the lock, the lock is taken at the epoch's first
name, and anything another writer changed meanwhile fails the epoch cleanly
or is found harmless. Every committed epoch is read back bit for bit."""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pytest

import memckpt
from memckpt.capture import MODES
from memckpt.errors import StoreLocked
from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, random_pages, read, write_epoch

NP = 16
LAYOUT = {"nbytes": NP * PS, "arrays": []}


def _begin(store: Store, kind: str, parent: int | None):
    return store.begin(kind=kind, parent=parent, layout=LAYOUT, page_size=PS, npages=NP)


def _store_with_one(tmp_path, seed: int = 0) -> tuple[Store, np.ndarray]:
    store = Store(tmp_path / "s", create=True)
    state = random_pages(np.random.default_rng(seed), NP)
    write_epoch(store, state, None, kind="full")
    return store, state


def _names(store: Store) -> set[str]:
    return {n for n in os.listdir(store.path) if n != fmt.LOCK_NAME}


def test_begin_adopts_the_prepared_writer_without_taking_the_lock(tmp_path):
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    ready = store._ready.writer
    gen = store._lock_gen
    w = _begin(store, "incremental", 1)
    assert w is ready and store._lock_gen == gen  # no lock taken by begin()
    # no lock held: another Store object can take it (and give it back) meanwhile
    with Store(store.path)._writer_lock("write"):
        pass
    state[[2, 7]] = random_pages(np.random.default_rng(1), 2)
    w.add_pages(np.array([2, 7], dtype=np.uint64), state[[2, 7]])
    info = w.commit(pages_dirty=2, pause_s=0.0)
    assert info.epoch == 2
    assert np.array_equal(read(store, 2), state)
    store.verify()


def test_a_begin_with_other_arguments_drops_the_prepared_writer(tmp_path):
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    ready = store._ready.writer
    w = _begin(store, "full", None)  # not what was prepared
    assert w is not ready and ready._closed
    w.add_pages(np.arange(NP, dtype=np.uint64), state)
    assert w.commit(pages_dirty=NP, pause_s=0.0).epoch == 2
    assert np.array_equal(read(store, 2), state)


def test_this_stores_own_prune_makes_the_prepared_writer_stale(tmp_path):
    store, state = _store_with_one(tmp_path)
    write_epoch(store, state, None, kind="full")
    write_epoch(store, state, None, kind="full")
    assert store.prepare_next("full", 3)
    ready = store._ready.writer
    store.prune(keep_last=1)  # takes the lock: the head may have moved
    w = _begin(store, "full", 3)
    assert w is not ready
    w.add_pages(np.arange(NP, dtype=np.uint64), state)
    assert w.commit(pages_dirty=NP, pause_s=0.0).epoch == 4
    assert store.epoch_numbers() == [3, 4]


def test_another_writer_taking_the_number_fails_the_epoch_and_leaves_its_files(tmp_path):
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    w = _begin(store, "incremental", 1)
    assert w.epoch == 2
    # another writer (another Store object: another process would do the same)
    other_state = state.copy()
    other_state[5] = 9
    other = Store(store.path)
    assert write_epoch(other, other_state, [5], parent=1) == 2
    before = {n: os.stat(store.path / n).st_ino for n in _names(store)}
    w.add_pages(np.array([3], dtype=np.uint64), state[[3]])
    with pytest.raises(StoreLocked, match=r"another writer changed the store while epoch 2 .*"
                                          r"holds epoch 2 now"):
        w.commit(pages_dirty=1, pause_s=0.0)
    # the other writer's epoch 2 is whole: nothing of ours was named, nothing of its removed
    assert {n: os.stat(store.path / n).st_ino for n in _names(store)} == before
    assert np.array_equal(read(store, 2), other_state)
    store.verify()
    # and this Store writes on, from what is there now
    assert write_epoch(store, state, [3], parent=2) == 3


def test_another_writers_prune_that_spares_the_parent_is_harmless(tmp_path):
    store, state = _store_with_one(tmp_path)
    write_epoch(store, state, None, kind="full")
    assert store.prepare_next("incremental", 2)
    w = _begin(store, "incremental", 2)
    Store(store.path).prune(keep_last=1)  # another writer: retires epoch 1, keeps 2
    state[4] = 1
    w.add_pages(np.array([4], dtype=np.uint64), state[[4]])
    assert w.commit(pages_dirty=1, pause_s=0.0).epoch == 3
    assert store.epoch_numbers() == [2, 3]
    assert np.array_equal(read(store, 3), state)


def test_another_writers_compaction_of_the_parent_is_followed(tmp_path):
    """A compaction keeps the content and the identity children name: the
    epoch goes on, on top of the merged parent."""
    store, state = _store_with_one(tmp_path)
    state[1] = 3
    write_epoch(store, state, [1], parent=1)
    assert store.prepare_next("incremental", 2)
    w = _begin(store, "incremental", 2)
    Store(store.path).compact(1, 2)  # another writer: epoch 2 is now a merged manifest
    state[4] = 1
    w.add_pages(np.array([4], dtype=np.uint64), state[[4]])
    assert w.commit(pages_dirty=1, pause_s=0.0).epoch == 3
    assert store.epoch_numbers() == [2, 3]
    assert np.array_equal(read(store, 3), state)
    store.verify()


def _hold_lock(path, role: str, seconds: float | threading.Event) -> threading.Thread:
    """Another writer (its own lock file description) holding the lock a
    while, or until the event is set."""
    from memckpt.store import locking
    took = threading.Event()

    def hold():
        with locking._Lock(path, role, wait=0.0):
            took.set()
            if isinstance(seconds, threading.Event):
                seconds.wait(60)
            else:
                time.sleep(seconds)
    t = threading.Thread(target=hold)
    t.start()
    took.wait()
    return t


def test_the_late_lock_waits_out_another_writers_prune(tmp_path):
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    w = _begin(store, "incremental", 1)
    state[6] = 2
    w.add_pages(np.array([6], dtype=np.uint64), state[[6]])
    t = _hold_lock(store.path, "prune", 0.3)
    try:
        assert w.commit(pages_dirty=1, pause_s=0.0).epoch == 2
    finally:
        t.join()
    assert np.array_equal(read(store, 2), state)


def test_the_late_lock_gives_up_after_a_while(tmp_path, monkeypatch):
    from memckpt.store import locking
    monkeypatch.setattr(locking, "_LOCK_WAIT_S", 0.1)
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    w = _begin(store, "incremental", 1)
    w.add_pages(np.array([6], dtype=np.uint64), state[[6]])
    # held until the commit gave up (a 0.6 s hold raced a commit the load
    # delayed past it: it then took the lock and succeeded)
    done = threading.Event()
    t = _hold_lock(store.path, "prune", done)
    try:
        with pytest.raises(StoreLocked, match=r"locked by this process \(prune\)"):
            w.commit(pages_dirty=1, pause_s=0.0)
    finally:
        done.set()
        t.join()
    assert store.epoch_numbers() == [1] and _names(store) == {fmt.STORE_HEADER,
                                                               fmt.manifest_name(1),
                                                               *_data_names(store, 1)}


def _data_names(store: Store, epoch: int) -> set[str]:
    files = store.manifest(epoch)["files"]
    return {files["pack"]["name"], files["idx"]["name"]}


def test_an_abort_before_the_lock_removes_nothing(tmp_path):
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    w = _begin(store, "incremental", 1)
    other = Store(store.path)
    write_epoch(other, state, [0], parent=1)  # epoch 2, the number w holds
    before = _names(store)
    w.abort()
    assert _names(store) == before
    assert np.array_equal(read(store, 2), state)


def test_drop_and_close_let_the_prepared_writer_go(tmp_path):
    store, _ = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    fd = store._ready.writer._pack_fd
    store.drop_prepared()
    assert store._ready is None
    with pytest.raises(OSError):
        os.fstat(fd)
    assert store.prepare_next("incremental", 1)
    store.close()
    assert store._ready is None


def test_a_fork_child_never_adopts_its_parents_prepared_writer(tmp_path):
    store, state = _store_with_one(tmp_path)
    assert store.prepare_next("incremental", 1)
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = store._ready is None
            os.write(wfd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(wfd)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1"
    w = _begin(store, "incremental", 1)  # the parent's is still there, and works
    w.add_pages(np.array([0], dtype=np.uint64), state[[0]])
    assert w.commit(pages_dirty=1, pause_s=0.0).epoch == 2


@pytest.mark.parametrize("mode", [m for m in MODES if m != "sync"])
def test_checkpoint_takes_no_lock_in_the_callers_thread(tmp_path, monkeypatch, mode):
    """After the first epoch, checkpoint() begins with the writer prepared
    after the last commit: the lock (and every name in the store) is the
    persist thread's (in mode fork the child's files are handed out in the
    pause: there the caller takes it)."""
    takers: list[int] = []
    real = Store._writer_lock

    def spy(self, role, *args, **kwargs):
        takers.append(threading.get_ident())
        return real(self, role, *args, **kwargs)
    monkeypatch.setattr(Store, "_writer_lock", spy)
    with memckpt.Arena(64 * PS) as arena:
        x = arena.array("x", 64 * PS, np.uint8)
        with memckpt.Checkpointer(arena, tmp_path / "s", mode=mode) as ck:
            ck.checkpoint().result()
            expected = {}
            for i in range(5):
                x[i * PS:(i + 1) * PS] = i + 1
                takers.clear()
                p = ck.checkpoint()
                mine = [t for t in takers if t == threading.get_ident()]
                p.result()
                expected[p.epoch] = x.copy()
                assert mine == [], f"checkpoint {i} took the lock in the caller's thread"
            ck.wait()
        del x
    for epoch, want in expected.items():
        out = memckpt.restore(tmp_path / "s", epoch)
        try:
            assert np.array_equal(np.frombuffer(out.buffer(), np.uint8), want)
        finally:
            out.close()


@pytest.mark.parametrize("err,stops", [(errno.EOPNOTSUPP, True), (errno.EISDIR, True),
                                       (errno.ENOSPC, False), (errno.EMFILE, False)])
def test_the_spare_stops_trying_only_where_o_tmpfile_is_missing(tmp_path, monkeypatch, err, stops):
    from memckpt.store import spare as spare_mod
    sp = spare_mod.Spare()
    if sp.disabled:
        pytest.skip("no O_TMPFILE or /proc here")

    def refuse(directory):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(spare_mod, "unnamed_file", refuse)
    sp.make(tmp_path)
    assert sp.take() is None
    assert sp.disabled is stops
    monkeypatch.undo()
    sp.make(tmp_path)  # the next commit tries again unless it stopped
    fd = sp.take()
    assert (fd is None) is stops
    if fd is not None:
        os.close(fd)
