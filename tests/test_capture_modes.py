"""Capture modes (Checkpointer(mode=...)): what every mode must show, and
what belongs to mode "copy" (staging bound, backpressure, errors raised from
the persist thread).

Every mode: while another thread keeps writing known patterns into the arena
as soon as checkpoint() returns (during persist), each epoch holds exactly
the arena's content at its checkpoint instant, and the later epochs stay
correct increments. The writers stop only for the pause, as a program's step
loop does: they take ``world`` for every batch of writes, the checkpointing
thread holds it across checkpoint().
"""
import threading
import time

import numpy as np
import pytest

import memckpt
from memckpt.capture import MODES

PS = memckpt.features().page_size
NPAGES = 2048  # 8 MiB


def mode_kwargs(mode: str) -> dict:
    return {"mode": mode}


@pytest.fixture
def arena():
    with memckpt.Arena(NPAGES * PS) as a:
        a.array("x", NPAGES * PS, np.uint8)
        yield a


def pages_of(arena):
    return arena.arrays()["x"].reshape(NPAGES, PS)


class Writers:
    """A thread that writes batches of known patterns into random pages, one
    batch per hold of ``world``, and counts the batches written while an
    epoch was persisting."""

    def __init__(self, pages: np.ndarray, seed: int) -> None:
        self.pages = pages
        self.world = threading.Lock()
        self.stop = threading.Event()
        self.pending: memckpt.PendingEpoch | None = None
        self.during_persist = 0
        self.batches = 0
        self.error: BaseException | None = None
        self._rng = np.random.default_rng(seed)
        self._t = threading.Thread(target=self._run, name="test-writer")

    def _run(self) -> None:
        try:
            gen = 0
            while not self.stop.is_set():
                idx = self._rng.choice(NPAGES, size=32, replace=False)
                with self.world:
                    gen += 1
                    # a pattern that names the batch and the page: a torn or
                    # stale page cannot pass for the right one
                    self.pages[idx, :8] = np.frombuffer(np.uint64(gen).tobytes(), np.uint8)
                    self.pages[idx, 8:16] = idx.astype("<u8").view(np.uint8).reshape(-1, 8)
                    self.pages[idx, 16:] = np.uint8(gen & 0xFF)
                    self.batches += 1
                    p = self.pending
                    if p is not None and not p.done():
                        self.during_persist += 1
                time.sleep(0)  # let the checkpointing thread take the world
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e

    def __enter__(self) -> "Writers":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._t.join()


@pytest.mark.parametrize("mode", MODES)
def test_each_epoch_is_the_arena_at_its_instant_while_writers_go_on(mode, arena, tmp_path):
    pages = pages_of(arena)
    pages[:] = np.random.default_rng(1).integers(0, 256, size=pages.shape, dtype=np.uint8)
    taken: list[tuple[memckpt.PendingEpoch, np.ndarray]] = []
    with memckpt.Checkpointer(arena, tmp_path / "s", **mode_kwargs(mode)) as ck, \
            Writers(pages, seed=2) as w:
        for _ in range(8):
            time.sleep(0.02)                 # some batches of writes between checkpoints
            with w.world:                    # the instant: writers are between batches
                expect = pages.copy()
                p = ck.checkpoint()
                w.pending = p
            assert p.mode == mode
            taken.append((p, expect))
        ck.wait()
    assert w.error is None
    infos = [p.result() for p, _ in taken]
    assert [i.kind for i in infos] == ["full"] + ["incremental"] * 7
    assert [i.parent for i in infos[1:]] == [i.epoch for i in infos[:-1]]
    assert all(i.mode == mode for i in infos)
    if mode != "sync":
        # the premise: the writers did write while epochs were persisting
        assert w.during_persist > 0, "no write landed during a persist: the test proved nothing"
    with memckpt.Store(tmp_path / "s") as st:
        st.verify()
        for (p, expect), info in zip(taken, infos):
            got = memckpt.restore(st, info.epoch)
            try:
                np.testing.assert_array_equal(got.arrays()["x"].reshape(NPAGES, PS), expect,
                                              err_msg=f"epoch {info.epoch} ({info.kind})")
            finally:
                got.close()


def test_mode_is_checked_before_anything_is_made(arena, tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        memckpt.Checkpointer(arena, tmp_path / "s", mode="snapshot")
    with pytest.raises(ValueError, match="staging"):
        memckpt.Checkpointer(arena, tmp_path / "s", staging=-1)
    assert not (tmp_path / "s").exists()


class DelayedCommits:
    """A store whose epoch writers run ``before_commit()`` (on the persist
    thread) before they commit."""

    def __init__(self, st, before_commit):
        self._s = st
        self._before = before_commit

    def __getattr__(self, name):
        return getattr(self._s, name)

    def begin(self, **kw):
        w = self._s.begin(**kw)
        commit = w.commit

        def delayed(**k):
            self._before()
            return commit(**k)
        w.commit = delayed
        return w


def test_copy_mode_checkpoint_returns_before_the_epoch_is_durable(arena, tmp_path):
    gate = threading.Event()
    st = memckpt.Store(tmp_path / "s", create=True)
    pages = pages_of(arena)
    # every commit is held until the test opens the gate
    with memckpt.Checkpointer(arena, DelayedCommits(st, lambda: gate.wait(10))) as ck:
        pages[3, 0] = 1
        p = ck.checkpoint("held")
        assert not p.done() and p.epoch == 1 and p.kind == "full" and p.pause_s > 0
        assert "persisting" in repr(p)
        with pytest.raises(TimeoutError, match="epoch 1 is not durable"):
            p.result(timeout=0.05)
        assert st.latest() is None            # nothing committed yet
        pages[3, 0] = 2                        # the program goes on: the epoch keeps 1
        gate.set()
        info = p.result()
        assert p.done() and info.label == "held" and "durable" in repr(p)
        assert ck.head == 1
    with memckpt.restore(st, 1) as got:
        assert got.arrays()["x"].reshape(NPAGES, PS)[3, 0] == 1
    st.close()


def test_copy_mode_waits_for_the_epoch_in_flight(arena, tmp_path):
    """One epoch is in flight at a time: the next checkpoint waits for it
    (backpressure) and says how long in extra["wait_s"]."""
    st = memckpt.Store(tmp_path / "s", create=True)
    pages = pages_of(arena)
    gate, waiting = threading.Event(), threading.Event()
    # p1's commit is held until 0.3 s after the next checkpoint() began its
    # wait (a fixed delay in the commit raced a caller the load held back)
    with memckpt.Checkpointer(arena, DelayedCommits(st, lambda: gate.wait(60))) as ck:
        real_wait = ck._inflight.wait

        def wait() -> None:
            waiting.set()
            real_wait()
        ck._inflight.wait = wait

        def open_later() -> None:
            waiting.wait(60)
            time.sleep(0.3)
            gate.set()
        opener = threading.Thread(target=open_later)
        pages[1, 0] = 1
        p1 = ck.checkpoint()
        waiting.clear()                       # (the first checkpoint had nothing to wait for)
        opener.start()
        pages[2, 0] = 2
        p2 = ck.checkpoint()                  # waits for p1 to be durable first
        assert p1.done()
        info2 = p2.result()
        opener.join()
    assert info2.parent == p1.epoch and info2.pages_dirty == 1
    assert info2.extra["wait_s"] > 0.25, info2.extra
    st.close()


@pytest.mark.parametrize("staging_pages", [0, 5, 100])
def test_copy_mode_staging_bound_writes_the_rest_in_the_pause(arena, tmp_path, staging_pages):
    pages = pages_of(arena)
    rng = np.random.default_rng(3)
    pages[:] = rng.integers(0, 256, size=pages.shape, dtype=np.uint8)
    with memckpt.Checkpointer(arena, tmp_path / "s", staging=staging_pages * PS) as ck:
        full = ck.checkpoint().result()
        assert full.extra["pages_in_pause"] == NPAGES - staging_pages
        assert full.extra["staging_bytes"] == staging_pages * PS
        dirty = np.sort(rng.choice(NPAGES, size=40, replace=False))
        pages[dirty, 5] ^= 0xFF
        expect = pages.copy()
        inc = ck.checkpoint().result()
        assert inc.pages_dirty == 40
        assert inc.extra["pages_in_pause"] == max(0, 40 - staging_pages)
    with memckpt.restore(tmp_path / "s", inc.epoch) as got:
        np.testing.assert_array_equal(got.arrays()["x"].reshape(NPAGES, PS), expect)


class FailOnce:
    """A store whose next epoch fails in add_pages (on the persist thread)."""

    def __init__(self, st):
        self._s = st
        self.fail = False

    def __getattr__(self, name):
        return getattr(self._s, name)

    def begin(self, **kw):
        w = self._s.begin(**kw)
        if self.fail:
            self.fail = False
            real = w.add_pages

            def broken(*a, **k):
                raise OSError(28, "No space left on device (injected)")
            w.add_pages = broken
            w._real_add_pages = real
        return w


def test_copy_mode_a_failed_persist_is_raised_once_and_loses_nothing(arena, tmp_path):
    st = memckpt.Store(tmp_path / "s", create=True)
    fs = FailOnce(st)
    pages = pages_of(arena)
    with memckpt.Checkpointer(arena, fs) as ck:
        e1 = ck.checkpoint().result()
        pages[10, 0] = 10
        fs.fail = True
        p = ck.checkpoint()
        with pytest.raises(OSError, match="injected"):
            p.result()
        assert ck.head == e1.epoch and st.latest() == e1.epoch
        ck.wait()                              # already seen through result(): not again
        pages[11, 0] = 11
        # nobody looks at this one's result: the next checkpoint raises it
        fs.fail = True
        ck.checkpoint()
        with pytest.raises(OSError, match="injected"):
            ck.checkpoint()
        e2 = ck.checkpoint().result()          # and the next one carries every page since e1
        assert (e2.parent, e2.pages_dirty) == (e1.epoch, 2)
        expect = pages.copy()
    assert st.epoch_numbers() == [e1.epoch, e2.epoch]
    st.verify()
    with memckpt.restore(st, e2.epoch) as got:
        np.testing.assert_array_equal(got.arrays()["x"].reshape(NPAGES, PS), expect)
    st.close()


def test_close_raises_an_unseen_failure_after_closing(arena, tmp_path):
    st = memckpt.Store(tmp_path / "s", create=True)
    fs = FailOnce(st)
    ck = memckpt.Checkpointer(arena, fs)
    ck.checkpoint().result()
    pages_of(arena)[4, 0] = 4
    fs.fail = True
    ck.checkpoint()
    with pytest.raises(OSError, match="injected"):
        ck.close()
    assert ck.closed
    ck.close()                                 # idempotent, and the error was told once
    st.close()


def test_sync_mode_is_durable_on_return(arena, tmp_path):
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="sync") as ck:
        p = ck.checkpoint()
        assert p.done() and ck.store.latest() == p.epoch
        assert p.result().mode == "sync"


def test_prune_of_the_same_store_waits_for_the_epoch_in_flight(arena, tmp_path):
    """A loop that prunes right after each checkpoint: the prune waits for the
    persisting epoch instead of colliding with it on the store's lock."""
    pages = pages_of(arena)
    with memckpt.Checkpointer(arena, tmp_path / "s", full_every=3) as ck:
        for i in range(7):
            pages[i, 0] = i + 1
            ck.checkpoint()
            ck.store.prune(keep_last=2)
        ck.wait()
        assert len(ck.store.epoch_numbers()) >= 2
        expect = pages.copy()
        ck.store.verify()
        with memckpt.restore(ck.store, ck.head) as got:
            np.testing.assert_array_equal(got.arrays()["x"].reshape(NPAGES, PS), expect)


def test_a_writer_held_by_this_thread_is_refused_not_waited_for(tmp_path):
    with memckpt.Store(tmp_path / "s", create=True, page_size=PS) as st:
        w = st.begin(kind="full", npages=4)
        with pytest.raises(memckpt.StoreLocked, match="this thread holds the open writer of epoch 1"):
            st.prune(keep_last=1)
        w.abort()
        assert st.prune(keep_last=1) == []
