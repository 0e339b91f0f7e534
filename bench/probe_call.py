"""Where a small checkpoint's call_s goes (issue 12): the median time of
each step of Checkpointer.checkpoint() for 4-page increments of a 16 MiB
arena, mode copy (or MODE=fork|sync|background), beside pause_s and call_s.
Between checkpoints the program "runs" for STEP_MS (a sleep; default 2 ms):
the next epoch's writer is prepared then, after the commit, on the persist
thread (store/prepared.py). STEP_MS=0 takes them back to back: the next
checkpoint then waits for that preparation (wait_s).

    python bench/probe_call.py            # ROUNDS=200 MODE=copy STEP_MS=2
"""
import os
import statistics
import tempfile
import time

import numpy as np

import memckpt

PS = memckpt.features().page_size
MODE = os.environ.get("MODE", "copy")
ROUNDS = int(os.environ.get("ROUNDS", "200"))
STEP_S = float(os.environ.get("STEP_MS", "2")) / 1e3


def main() -> None:
    acc: dict[str, list[float]] = {}

    def wrap(obj, name, key):
        real = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                acc.setdefault(key, []).append(time.perf_counter() - t)
        setattr(obj, name, timed)

    with memckpt.Arena(4096 * PS) as arena:
        x = arena.array("x", 4096 * PS, np.uint8)
        with tempfile.TemporaryDirectory() as d, \
                memckpt.Checkpointer(arena, os.path.join(d, "s"), mode=MODE) as ck:
            ck.checkpoint().result()
            wrap(ck._head, "next_kind", "next kind")
            wrap(ck._store, "begin", "store.begin()")
            wrap(ck._capturer, "capture", "capture (the pause, and the Python around it)")
            wrap(ck._inflight, "launch", "hand-off to the persist thread")
            for i in range(ROUNDS):
                p0 = (i * 7 % 4092) * PS
                x[p0:p0 + 4 * PS] = i % 250
                t = time.perf_counter()
                p = ck.checkpoint()
                acc.setdefault("wall around checkpoint()", []).append(time.perf_counter() - t)
                acc.setdefault("pause_s", []).append(p.pause_s)
                acc.setdefault("call_s", []).append(p.call_s)
                p.result()
                acc.setdefault("wait_s (the epoch before, and its prepare)", []).append(p.wait_s)
                time.sleep(STEP_S)
        del x
    print(f"mode {MODE}, {ROUNDS} checkpoints of 4 pages, {STEP_S * 1e3:g} ms apart, medians:")
    for k, v in acc.items():
        print(f"  {k:48s} {statistics.median(v) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
