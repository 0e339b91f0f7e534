"""A process checkpointing in a loop is SIGKILLed at random instants: the store
must open, verify, and restore its latest committed epoch exactly.

The child's writes are a function of the round number alone (round k seeds
its own generator), and each epoch is labelled with its round, so the parent
recomputes the content any committed epoch must hold. Children of one store
resume its chain (``Checkpointer.resume``), so a kill also lands in a resume,
and the store keeps growing across crashes.
"""
import mmap
import os
import select
import signal
import time
import traceback

import numpy as np
import pytest

import memckpt

PS = memckpt.features().page_size
MID_CHAIN = 6  # a store's last trial is killed after this round is durable


def apply_round(pages: np.ndarray, k: int) -> None:
    """Round k's writes: a few pages get new bytes, now and then one is zeroed."""
    rng = np.random.default_rng(k)
    n = pages.shape[0]
    idx = np.sort(rng.choice(n, size=int(rng.integers(1, max(2, n // 8))), replace=False))
    pages[idx, :64] = rng.integers(0, 256, size=(idx.size, 64), dtype=np.uint8)
    pages[idx, -1] = np.uint8(k % 255 + 1)
    if k % 5 == 0:
        pages[int(rng.integers(0, n))] = 0


def expected(npages: int, k: int) -> np.ndarray:
    pages = np.zeros((npages, PS), dtype=np.uint8)
    for r in range(1, k + 1):
        apply_round(pages, r)
    return pages


def child(path: str, npages: int, full_every: int, ready: int, inside: np.ndarray,
          committed: np.ndarray) -> None:
    """Runs in the forked child; never returns. ``inside`` (shared with the
    parent) is 1 while checkpoint() runs, so the parent knows where it killed;
    ``committed`` the last round whose epoch is durable."""
    code = 1
    try:
        store = memckpt.Store(path, create=True)
        latest = store.latest()
        if latest is None:
            arena = memckpt.Arena(npages * PS)
            arena.array("data", (npages, PS), np.uint8)
            ck = memckpt.Checkpointer(arena, store, full_every=full_every)
            k = 0
            ck.checkpoint(label="0").result()
        else:
            ck = memckpt.Checkpointer.resume(store, full_every=full_every)
            k = int(store.info(latest).label)
        pages = ck.arena.arrays()["data"]
        committed[0] = k
        os.write(ready, b"r")
        while True:
            k += 1
            apply_round(pages, k)
            inside[0] = 1
            ck.checkpoint(label=str(k)).result()
            inside[0] = 0
            committed[0] = k
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def kill_trials(tmp_path, trials: int, npages: int, max_delay: float, seed: int,
                per_store: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    stats = {"trials": 0, "killed_inside": 0, "max_round": 0}
    cache: dict[int, np.ndarray] = {}
    shared = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED: the child's flag, seen here
    inside = np.frombuffer(shared, dtype=np.uint8, count=1)
    committed = np.frombuffer(shared, dtype=np.uint32, count=1, offset=8)
    for t in range(trials):
        path = str(tmp_path / f"store{t // per_store}")
        full_every = int(rng.choice([3, 8, 1000]))
        inside[0] = 0
        committed[0] = 0
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(r)
            child(path, npages, full_every, w, inside, committed)
        os.close(w)
        try:
            ok, _, _ = select.select([r], [], [], 60)
            got = os.read(r, 1) if ok else b""
            if got != b"r":
                _, status = os.waitpid(pid, 0)
                pytest.fail(f"trial {t}: the child died before its loop (status {status})")
            if (t + 1) % per_store == 0:
                # the store's last trial: its chain past round MID_CHAIN
                # first, however slow the machine (a kill mid-chain is the
                # point; the random delays alone may not get there)
                deadline = time.monotonic() + 60
                while committed[0] < MID_CHAIN and time.monotonic() < deadline:
                    time.sleep(0.001)
                assert committed[0] >= MID_CHAIN, \
                    f"trial {t}: round {committed[0]} after 60 s; see the child's stderr"
            time.sleep(float(rng.uniform(0, max_delay)))
            os.kill(pid, signal.SIGKILL)
        finally:
            os.close(r)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
            f"trial {t}: the child stopped on its own (status {status}); see its stderr"

        store = memckpt.Store(path)
        store.sweep()  # what the killed writer left (the next writer would do it)
        store.verify()
        latest = store.latest()
        assert latest is not None  # the child committed epoch "0" before signalling
        k = int(store.info(latest).label)
        # the child's last result() had returned: that epoch is durable
        assert k >= int(committed[0]), f"trial {t}: round {int(committed[0])} committed, latest {k}"
        base = max((c for c in cache if c <= k), default=None)
        want = cache[base].copy() if base is not None else np.zeros((npages, PS), np.uint8)
        for rr in range((base or 0) + 1, k + 1):
            apply_round(want, rr)
        cache = {k: want}
        got = memckpt.restore(store, latest)
        try:
            np.testing.assert_array_equal(got.arrays()["data"], want,
                                          err_msg=f"trial {t}: epoch {latest} (round {k})")
        finally:
            got.close()
        stats["trials"] += 1
        stats["killed_inside"] += int(inside[0])
        stats["max_round"] = max(stats["max_round"], k)
        if (t + 1) % per_store == 0:
            cache = {}
    del inside, committed
    shared.close()
    return stats


def test_sigkill_during_checkpoints(tmp_path):
    stats = kill_trials(tmp_path, trials=50, npages=256, max_delay=0.08, seed=11)
    print(stats)
    assert stats["trials"] == 50
    assert stats["killed_inside"] >= 25, f"too few kills landed inside checkpoint(): {stats}"
    assert stats["max_round"] > MID_CHAIN - 1, "the children never got far enough to be killed mid-chain"


@pytest.mark.slow
def test_sigkill_during_checkpoints_many(tmp_path):
    kill_trials(tmp_path, trials=400, npages=256, max_delay=0.1, seed=12, per_store=20)
    kill_trials(tmp_path / "big", trials=60, npages=8192, max_delay=0.5, seed=13)
