"""Fork mode: how the pause splits into collect and fork, beside a bare
os.fork() + _exit of the same process measured in the same run (the goal of
issue 4: the fork-mode pause equals the fork itself); and the child's run and
the persist time.

A 1 GiB arena (MIB=... to change) of random bytes, tracker "auto", a full
epoch, then ROUNDS (default 7) rounds per dirty ratio (RATIOS, default
0.01,0.1,0.5): write one byte of each of D random pages, checkpoint, wait for
the epoch, then time one bare fork; medians printed. From a checkout:

    python bench/probe_fork_pause.py        # STORE=/path puts the store elsewhere
"""
import os
import shutil
import statistics
import time

import numpy as np

import memckpt

MIB = int(os.environ.get("MIB", "1024"))
RATIOS = [float(x) for x in os.environ.get("RATIOS", "0.01,0.1,0.5").split(",")]
ROUNDS = int(os.environ.get("ROUNDS", "7"))
STORE = os.environ.get("STORE", "/tmp/memckpt-probe-fork")


def bare_fork() -> float:
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    dt = time.perf_counter() - t
    os.waitpid(pid, 0)
    return dt


def main() -> None:
    arena = memckpt.Arena(MIB << 20)
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
    words = pages.reshape(-1).view(np.uint64)
    rng = np.random.default_rng(1)
    step = 8 << 20
    for s in range(0, words.size, step):
        words[s:s + step] = rng.bit_generator.random_raw(min(step, words.size - s))
    shutil.rmtree(STORE, ignore_errors=True)
    print(f"{MIB} MiB arena, {arena.npages} pages; medians of {ROUNDS} rounds")
    try:
        with memckpt.Checkpointer(arena, STORE, mode="fork") as ck:
            ck.checkpoint().result()
            for ratio in RATIOS:
                k = int(arena.npages * ratio)
                rows: dict[str, list[float]] = {x: [] for x in
                                                ("pause", "collect", "fork", "child", "persist", "bare")}
                for _ in range(ROUNDS):
                    idx = np.sort(rng.choice(arena.npages, k, replace=False))
                    pages[idx, 0] += 1
                    e = ck.checkpoint().result()
                    rows["pause"].append(e.pause_s)
                    rows["collect"].append(e.extra["collect_s"])
                    rows["fork"].append(e.extra["fork_s"])
                    rows["child"].append(e.extra["child_s"])
                    rows["persist"].append(e.total_s - e.pause_s)
                    rows["bare"].append(bare_fork())
                m = {x: statistics.median(v) * 1e3 for x, v in rows.items()}
                print(f"{ratio:.0%} dirty: " + "  ".join(f"{x} {v:.1f} ms" for x, v in m.items())
                      + f"  | pause/bare fork {m['pause'] / m['bare']:.2f}"
                      + f"  fork/bare fork {m['fork'] / m['bare']:.2f}", flush=True)
    finally:
        shutil.rmtree(STORE, ignore_errors=True)
        del pages, words  # the arena's views, before it closes
        arena.close()


if __name__ == "__main__":
    main()
