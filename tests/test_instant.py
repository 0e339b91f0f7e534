"""Every epoch is one instant of the arena, even while a Python thread that
never pauses keeps writing (issue 12).

The writer does step after step, step i one 8-byte store of i into page
seq[i] (a fixed random sequence of pages), with nothing to stop it: no lock
shared with the checkpointing thread, no sleep. The arena after step k is
therefore known exactly: page p holds the last i <= k with seq[i] == p (0 if
none). An epoch restored must be that state for some k. An epoch that took
one page at one time and another page later (a snapshot taken over an
interval while the writer ran) holds a page newer than another that should
already have been overwritten, and no k fits.

Modes copy and sync stop the Python program for the pause (the collect and
the copy run with the GIL held); fork holds it from the collect to the fork;
background protects every collected page in one critical section.
"""
import sys
import threading
import time

import numpy as np
import pytest

import memckpt
from memckpt.capture import MODES

PS = memckpt.features().page_size
NPAGES = 2048
STEPS = 3_000_000
CHECKPOINTS = 12


def is_an_instant(values: np.ndarray, seq: np.ndarray) -> tuple[bool, int]:
    """(the page values are the arena after some step k of ``seq``, that k)."""
    k = int(values.max())
    return bool((values == state_after(seq, k, values.size)).all()), k


def state_after(seq: np.ndarray, k: int, n: int) -> np.ndarray:
    want = np.zeros(n, dtype=np.int64)
    np.maximum.at(want, seq[1:k + 1], np.arange(1, k + 1))
    return want


def test_the_instant_check_can_fail():
    seq = np.array([0, 1, 2, 1, 0, 3, 1], dtype=np.int64)  # seq[0] unused: steps start at 1
    assert is_an_instant(np.zeros(4, np.int64), seq) == (True, 0)
    assert is_an_instant(np.array([4, 6, 2, 5]), seq) == (True, 6)
    assert is_an_instant(np.array([4, 3, 2, 0]), seq) == (True, 4)
    assert not is_an_instant(np.array([4, 6, 2, 0]), seq)[0]  # page 3 missed step 5
    assert not is_an_instant(np.array([0, 3, 0, 0]), seq)[0]  # page 2 missed step 2


class Writer:
    """Writes step after step until stopped; never waits for anything."""

    def __init__(self, words: np.ndarray, seq: np.ndarray) -> None:
        self.words = words  # one uint64 per page (the first word of each)
        self.seq = seq.tolist()
        self.stop = False
        self.steps = 0
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, name="instant-writer", daemon=True)

    def _run(self) -> None:
        try:
            w, seq, i = self.words, self.seq, 0
            for i in range(1, len(seq)):
                if self.stop:
                    break
                w[seq[i]] = i
            self.steps = i
        except BaseException as e:  # pragma: no cover - reported by the test
            self.error = e

    def __enter__(self) -> "Writer":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self._t.join(10)


# beside the four modes as a user picks them: staging smaller than an epoch
# (mode copy writes the rest in the pause, through the C writer), and the
# same with compressed pages
CASES = [(m, {}) for m in MODES] + [
    ("copy", {"staging": 8 * PS}),
    ("copy", {"staging": 8 * PS, "compress": "zstd"}),
    ("sync", {"compress": "lz4"}),
]


@pytest.mark.parametrize("mode,kw", CASES, ids=[m + "".join(f"-{k}" for k in kw) for m, kw in CASES])
def test_every_epoch_is_one_instant_under_a_writer_that_never_pauses(mode, kw, tmp_path):
    if mode == "background":
        ok, why = memckpt._core.bg_supported(memckpt._core.backend_lookup("uffd-sync"))
        if not ok:
            pytest.skip(f"mode background needs uffd-sync: {why}")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # hand the GIL over often: the writer runs in any gap
    try:
        with memckpt.Arena(NPAGES * PS) as arena:
            x = arena.array("x", (NPAGES, PS // 8), np.uint64)
            seq = np.random.default_rng(12).integers(0, NPAGES, size=STEPS)
            epochs = []
            with memckpt.Checkpointer(arena, tmp_path / "s", mode=mode, **kw) as ck:
                with Writer(x[:, 0], seq) as wr:
                    for _ in range(CHECKPOINTS):
                        epochs.append(ck.checkpoint())
                        time.sleep(0.002)  # the writer runs between checkpoints too
                    ck.wait()
                assert wr.error is None
            del x
    finally:
        sys.setswitchinterval(old)
    assert [p.result().epoch for p in epochs] == list(range(1, CHECKPOINTS + 1))
    seen = []
    for p in epochs:
        got = memckpt.restore(tmp_path / "s", p.epoch)
        try:
            values = got.arrays()["x"][:, 0].astype(np.int64)
            ok, k = is_an_instant(values, seq)
            bad = np.flatnonzero(values != state_after(seq, k, NPAGES))
            assert ok, (f"mode {mode}: epoch {p.epoch} is no instant of the arena: {bad.size} "
                        f"pages (first {bad[:8].tolist()}) disagree with step {k}")
            seen.append(k)
        finally:
            del values
            got.close()
    assert seen == sorted(seen) and seen[-1] > seen[0], seen  # the writer did write between epochs
