"""A model-based test of Checkpointer and Store together.

Hypothesis drives random writes, checkpoints, rollbacks to earlier epochs,
compactions, prunes and restores (here and in another process); the model is
a numpy copy of the arena kept for every committed epoch, and every restore
and every rollback must equal it bit for bit.
"""
import collections
import concurrent.futures
import multiprocessing
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

import memckpt

PS = memckpt.features().page_size
ARRAYS = {"field": ((8, PS // 8), np.float64),          # 8 pages
          "ids": ((5 * PS // 4 // 2 + 3,), np.int32),   # 3 pages, the last partly
          "raw": ((12 * PS,), np.uint8)}                # 12 pages
NPAGES = 26  # 23 used, 3 spare

COMPRESSORS = [None, "zstd", "lz4"]


def restore_to_file(store_path: str, epoch: int, out: str) -> None:
    """In another process: restore and write the arrays and the raw pages to out (.npz)."""
    arena = memckpt.restore(store_path, epoch)
    arrays = arena.arrays()
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
    np.savez(out, __pages__=pages, **arrays)


@pytest.fixture(scope="module")
def other_process():
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        yield pool


class Model(RuleBasedStateMachine):
    pool: concurrent.futures.Executor | None = None
    counts: collections.Counter = collections.Counter()  # what ran, over all examples

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="memckpt-model-"))
        self.arena = memckpt.Arena(NPAGES * PS)
        self.arrays = {n: self.arena.array(n, shape, dt) for n, (shape, dt) in ARRAYS.items()}
        self.pages = np.frombuffer(self.arena.buffer(), np.uint8).reshape(NPAGES, PS)
        self.ck: memckpt.Checkpointer | None = None
        self.expect: dict[int, np.ndarray] = {}
        self.head: int | None = None     # the epoch the arena holds since the last checkpoint/rollback
        self.since_reopen = 0            # checkpoints since the checkpointer was (re)opened

    @initialize(full_every=st.sampled_from([None, 2, 4]), compress=st.sampled_from(COMPRESSORS))
    def start(self, full_every, compress):
        self.full_every, self.compress = full_every, compress
        self.ck = memckpt.Checkpointer(self.arena, self.dir / "s", full_every=full_every,
                                       compress=compress)
        self.store = self.ck.store

    # -- the program -----------------------------------------------------------------
    @rule(name=st.sampled_from(sorted(ARRAYS)), data=st.data())
    def write(self, name, data):
        if data.draw(st.integers(0, 7), label="zero a page") == 0:
            self.pages[data.draw(st.integers(0, NPAGES - 1), label="page")] = 0
            return
        a = self.arrays[name].reshape(-1)
        start = data.draw(st.integers(0, a.size - 1), label="start")
        n = data.draw(st.integers(1, min(a.size - start, 3 * PS // a.itemsize)), label="n")
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
        vals = np.random.default_rng(seed).integers(0, 256, size=n * a.itemsize, dtype=np.uint8)
        a[start:start + n] = vals.view(a.dtype)

    # -- checkpoints -----------------------------------------------------------------
    @rule(label=st.one_of(st.none(), st.text(max_size=8)))
    def checkpoint(self, label):
        Model.counts["checkpoint"] += 1
        head_alive = self.head is not None and self.head in self.expect
        e = self.ck.checkpoint(label).result()
        assert e.label == label
        assert e.epoch not in self.expect
        # a full epoch's parent is lineage only; either way it is the head, if the store has it
        assert e.parent == (self.head if head_alive else None)
        if e.kind == "incremental":
            assert head_alive
        elif head_alive and self.full_every is None:
            raise AssertionError(f"a full epoch {e.epoch} though head {self.head} is alive")
        if self.full_every is not None:
            assert len(self.store.chain(e.epoch)) <= self.full_every
        self.expect[e.epoch] = self.pages.copy()
        self.head = e.epoch
        self.since_reopen += 1

    @precondition(lambda self: self.expect)
    @rule(data=st.data())
    def rollback(self, data):
        """To an epoch, or (None) to the head: undo the writes since."""
        Model.counts["rollback"] += 1
        choices = sorted(self.expect)
        if self.head in self.expect:
            choices = [None] + choices
        epoch = data.draw(st.sampled_from(choices), label="epoch")
        r = self.ck.rollback(epoch)
        if epoch is None:
            Model.counts["rollback_to_head"] += 1
            epoch = self.head
        assert r.epoch == epoch
        np.testing.assert_array_equal(self.pages, self.expect[epoch], err_msg=f"rollback to {epoch}")
        self.head = epoch

    # -- store maintenance -----------------------------------------------------------
    @precondition(lambda self: len(self.expect) >= 2)
    @rule(data=st.data())
    def compact(self, data):
        last = data.draw(st.sampled_from(sorted(self.expect)), label="last")
        chain = self.store.chain(last)
        if len(chain) < 2:
            return
        i = data.draw(st.integers(0, len(chain) - 2), label="first")
        run = chain[i:]
        retired = set(run[:-1])
        # the store refuses to retire the parent of an epoch outside the run:
        # an increment's (its chain would break) or a full epoch's (its lineage)
        breaks = any(e.parent in retired and e.epoch not in run for e in self.store.epochs())
        before = [e.epoch for e in self.store.epochs()]
        if breaks:
            with pytest.raises(memckpt.MemckptError):
                self.store.compact(run[0], last)
            assert [e.epoch for e in self.store.epochs()] == before
            Model.counts["compact_refused"] += 1
            return
        info = self.store.compact(run[0], last)
        Model.counts["compact"] += 1
        assert info.epoch == last
        first_info_kind = "full" if i == 0 else "incremental"
        assert info.kind == first_info_kind
        assert self.store.chain(last) == chain[:i] + [last]
        for e in retired:
            del self.expect[e]
        assert [e.epoch for e in self.store.epochs()] == sorted(self.expect)
        self.check_restore(last)

    @precondition(lambda self: self.expect)
    @rule(keep_last=st.one_of(st.none(), st.integers(1, 4)),
          keep_every=st.one_of(st.none(), st.integers(2, 4)))
    def prune(self, keep_last, keep_every):
        Model.counts["prune"] += 1
        if keep_last is None and keep_every is None:
            keep_last = 1
        removed = self.store.prune(keep_last=keep_last, keep_every=keep_every)
        assert removed == sorted(removed)
        assert not removed or max(self.expect) not in removed, "prune keeps the newest epoch"
        for e in removed:
            del self.expect[e]
        assert [e.epoch for e in self.store.epochs()] == sorted(self.expect)

    @precondition(lambda self: self.since_reopen >= 2)  # else it crowds out the other rules
    @rule(how=st.sampled_from(["same-arena", "resume-head", "resume-latest"]))
    def reopen(self, how):
        """A new checkpointer: over the same arena (it knows nothing of it: full
        next), or resumed from an epoch into a new arena (incremental next)."""
        Model.counts["reopen"] += 1
        self.ck.close()
        self.since_reopen = 0
        compress, full_every = self.compress, self.full_every
        if how == "same-arena" or not self.expect:
            self.ck = memckpt.Checkpointer(self.arena, self.dir / "s", full_every=full_every,
                                           compress=compress)
            self.head = None
        else:
            epoch = self.head if how == "resume-head" and self.head in self.expect else None
            self.ck = memckpt.Checkpointer.resume(self.dir / "s", epoch, full_every=full_every,
                                                  compress=compress)
            self.head = epoch if epoch is not None else max(self.expect)
            assert self.ck.head == self.head
            self.pages = self.arrays = None
            self.arena.close()
            self.arena = self.ck.arena
            self.arrays = self.arena.arrays()
            self.pages = np.frombuffer(self.arena.buffer(), np.uint8).reshape(NPAGES, PS)
            np.testing.assert_array_equal(self.pages, self.expect[self.head])
        self.store = self.ck.store

    # -- restores --------------------------------------------------------------------
    def check_restore(self, epoch):
        got = memckpt.restore(self.store, epoch)
        try:
            pages = np.frombuffer(got.buffer(), np.uint8).reshape(NPAGES, PS)
            np.testing.assert_array_equal(pages, self.expect[epoch], err_msg=f"restore of {epoch}")
            assert got.layout() == self.arena.layout()
            del pages
        finally:
            got.close()

    @precondition(lambda self: self.expect)
    @rule(data=st.data())
    def restore(self, data):
        """Here, or in another process (which writes the arrays to an .npz)."""
        epoch = data.draw(st.sampled_from(sorted(self.expect)), label="epoch")
        if Model.pool is None or data.draw(st.booleans(), label="here"):
            Model.counts["restore_here"] += 1
            self.check_restore(epoch)
            return
        Model.counts["restore_elsewhere"] += 1
        out = self.dir / f"restored-{epoch}.npz"
        Model.pool.submit(restore_to_file, str(self.dir / "s"), epoch, str(out)).result(timeout=120)
        with np.load(out) as z:
            np.testing.assert_array_equal(z["__pages__"], self.expect[epoch],
                                          err_msg=f"restore of {epoch} in another process")
            for name, a in self.arrays.items():
                assert z[name].dtype == a.dtype and z[name].shape == a.shape

    @invariant()
    def store_lists_the_model(self):
        if self.ck is not None:
            assert [e.epoch for e in self.store.epochs()] == sorted(self.expect)

    def teardown(self):
        try:
            if self.ck is not None:
                self.ck.close()
                self.store.verify()
                for e in self.expect:
                    self.check_restore(e)
        finally:
            self.pages = None
            self.arrays = {}
            self.arena.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def run_model(pool, **kw):
    Model.pool = pool
    Model.counts = collections.Counter()
    try:
        run_state_machine_as_test(Model, settings=settings(
            deadline=None, suppress_health_check=[HealthCheck.too_slow], **kw))
    finally:
        Model.pool = None
    print(dict(Model.counts))
    # hypothesis enables a random subset of rules per example (swarm testing):
    # check that, over the run, each one did run
    for name in ["checkpoint", "rollback", "rollback_to_head", "prune", "restore_here",
                 "restore_elsewhere", "reopen", "compact"]:
        assert Model.counts[name] >= 1, f"rule {name} never ran: {dict(Model.counts)}"


def test_model(other_process):
    run_model(other_process, max_examples=60, stateful_step_count=30)


@pytest.mark.slow
def test_model_long(other_process):
    run_model(other_process, max_examples=300, stateful_step_count=60)
