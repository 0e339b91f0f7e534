"""Processes for tests/test_store_readers.py: a writer that checkpoints, prunes
and compacts; readers that loop ls, verify and restore beside it; creators
racing to make one store; a tour of the readers over planted odd files.

Each prints one JSON line on stdout (or puts a dict on a queue) with what it
counted; the test asserts on the counts. Run as
``python _readers_worker.py writer|reader|odd ARGS...``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

NPAGES = 32
PS = 4096
WORDS = PS // 8


def state(k: int) -> np.ndarray:
    """The arena (NPAGES pages of uint64 words) after round k: page p is
    rewritten at every round that is a multiple of 1 + p % 4, each word then
    holding p * 1_000_003 + that round; never written: zero."""
    out = np.zeros((NPAGES, WORDS), dtype=np.uint64)
    for p in range(NPAGES):
        r = k - k % (1 + p % 4)
        if r > 0:
            out[p] = p * 1_000_003 + r
    return out


# -- the writer ----------------------------------------------------------------------
def writer(path: str, seconds: float, stop_file: str, prune_every: int = 3,
           compact_every: int = 4) -> dict[str, Any]:
    """Checkpoint round after round for ``seconds``; prune(keep_last=4) every
    3rd round, compact the newest epoch's last 3 every 4th (by default). A reader must
    never make a write fail or wait: the lock wait is 0 here, so a reader
    holding the lock even for a moment would fail the write at once."""
    import memckpt
    from memckpt.store import locking
    locking._LOCK_WAIT_S = 0.0
    counts: dict[str, Any] = {"rounds": 0, "failures": [], "pruned": 0, "compacted": 0}
    arena = memckpt.Arena(NPAGES * PS)
    data = arena.array("data", (NPAGES, WORDS), np.uint64)
    deadline = time.monotonic() + seconds
    k = 0
    with memckpt.Checkpointer(arena, path, full_every=5) as ck:
        store = ck.store
        while time.monotonic() < deadline:
            k += 1
            for p in range(NPAGES):
                if k % (1 + p % 4) == 0:
                    data[p] = p * 1_000_003 + k
            try:
                ck.checkpoint(label=str(k)).result()
                counts["rounds"] += 1
                if k % prune_every == 0:
                    counts["pruned"] += len(store.prune(keep_last=4))
                if k % compact_every == 0:
                    latest = store.latest()
                    chain = store.chain(latest)
                    if len(chain) >= 3:
                        store.compact(chain[-3], latest)
                        counts["compacted"] += 1
            except Exception:
                counts["failures"].append(f"round {k}: {traceback.format_exc()}")
                if len(counts["failures"]) > 20:
                    break
    Path(stop_file).write_text("done")
    return counts


# -- a reader ------------------------------------------------------------------------
def reader(path: str, stop_file: str, seed: int) -> dict[str, Any]:
    """Loop ls, verify (all, and the newest epoch's chain) and a restore of
    the newest epoch checked word for word against state(its round), until
    the writer is done. Damage reported on this healthy store, or a restore
    that is not exact, is counted; so is every other kind of failure."""
    from memckpt.cli.ls import ls
    from memckpt.errors import CorruptionError, EpochNotFound, FormatError, MemckptError
    from memckpt.store import Store
    rng = np.random.default_rng(seed)
    counts: dict[str, Any] = {"ls": 0, "verify": 0, "restores": 0, "retired": 0, "gave_up": 0,
                              "damage": [], "wrong": [], "other": []}
    out = np.empty((NPAGES, PS), dtype=np.uint8)

    def once(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except EpochNotFound as exc:  # retired between our listing and the read: fine
            counts["retired"] += 1
            if "was retired" not in str(exc) and "has no epoch" not in str(exc):
                counts["other"].append(f"{name}: {exc}")
        except (CorruptionError, FormatError) as exc:
            counts["damage"].append(f"{name}: {type(exc).__name__}: {exc}")
        except MemckptError as exc:
            if "gave up" in str(exc):
                counts["gave_up"] += 1
            else:
                counts["other"].append(f"{name}: {type(exc).__name__}: {exc}")
        except Exception:
            counts["other"].append(f"{name}: {traceback.format_exc()}")
        return None

    while not os.path.exists(stop_file):
        s = Store(path)  # a fresh open each time, as the CLI does
        op = int(rng.integers(0, 4))
        if op == 0:
            rep = once("ls", lambda: ls(s))
            if rep is not None:
                counts["ls"] += 1
                for d in rep["damaged"]:
                    counts["damage"].append(f"ls: epoch {d['epoch']}: {d['error']}")
            once("epochs", s.epochs)
        elif op == 1:
            if once("verify", lambda: (s.verify(), True)[1]):
                counts["verify"] += 1
        else:
            latest = s.latest()
            if latest is None:
                continue
            if op == 2:
                once(f"verify {latest}", lambda: s.verify(latest))
                continue
            info = once(f"info {latest}", lambda: s.info(latest))
            if info is None:
                continue
            if once(f"read_into {latest}", lambda: (s.read_into(latest, out), True)[1]):
                # a compaction may have merged the epoch meanwhile: same number, same content
                got = out.view(np.uint64)
                want = state(int(info.label))
                if not np.array_equal(got, want):
                    bad = np.flatnonzero((got != want).any(axis=1))
                    counts["wrong"].append(f"epoch {latest} (round {info.label}): pages {bad[:8]}")
                else:
                    counts["restores"] += 1
    return counts


# -- creators ------------------------------------------------------------------------
def create_rounds(root: str, rounds: int, barrier: Any, queue: Any) -> None:
    """At each round, at the same instant as the others: create the store
    ``root/r<i>`` (the writer's first sweep right after, as a Checkpointer's
    first checkpoint would), and report what happened."""
    from memckpt.store import Store
    for i in range(rounds):
        barrier.wait()
        try:
            s = Store(Path(root) / f"r{i}", create=True, page_size=PS)
            sweep = getattr(s, "sweep", None)  # (a memckpt before 0.2 swept on open)
            if sweep is not None:
                sweep()
            queue.put((i, os.getpid(), "ok"))
        except Exception as exc:
            queue.put((i, os.getpid(), f"{type(exc).__name__}: {exc}"))


# -- odd files in place of store files -------------------------------------------------
class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def odd_tour(path: str) -> dict[str, str]:
    """Every reader, then a write, each under a 10 s alarm: "ok", the error's
    type and message, or "hang"."""
    from memckpt.errors import MemckptError
    from memckpt.store import Store
    signal.signal(signal.SIGALRM, _alarm)
    out: dict[str, str] = {}
    store: Any = None

    def call(name: str, fn: Callable[[], Any]) -> Any:
        signal.alarm(10)
        try:
            v = fn()
            out[name] = "ok"
            return v
        except Hang:
            out[name] = "hang"
        except (MemckptError, OSError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
        return None

    store = call("open", lambda: Store(path))
    if store is None:
        return out
    call("ls", store.epochs)
    buf = np.empty((NPAGES, PS), dtype=np.uint8)
    for e in store.epoch_numbers():
        call(f"read_into {e}", lambda: store.read_into(e, buf))
    call("verify", store.verify)
    call("begin", lambda: store.begin("full", npages=NPAGES).abort())
    return out


def main() -> None:
    what = sys.argv[1]
    if what == "writer":
        res = writer(sys.argv[2], float(sys.argv[3]), sys.argv[4], *map(int, sys.argv[5:7]))
    elif what == "reader":
        res = reader(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif what == "odd":
        res = odd_tour(sys.argv[2])
    else:
        raise SystemExit(f"unknown role {what!r}")
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
