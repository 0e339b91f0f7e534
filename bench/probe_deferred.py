"""What memckpt._signals.deferred() costs per use: an outermost section (the
one a checkpoint() opens: it swaps the Python-level handlers out and back),
a nested one, and one off the main thread (a no-op), with only Python's
default SIGINT handler and with a SIGTERM handler too. Medians of ROUNDS
(default 7) runs of N (default 200,000) empty sections, less an empty loop.

    python bench/probe_deferred.py
"""
import os
import signal
import statistics
import threading
import time

from memckpt import _signals

N = int(os.environ.get("N", "200000"))
ROUNDS = int(os.environ.get("ROUNDS", "7"))


def per_use() -> float:
    runs = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(N):
            with _signals.deferred():
                pass
        d = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(N):
            pass
        runs.append((d - (time.perf_counter() - t)) / N)
    return statistics.median(runs)


def main() -> None:
    print(f"outermost section, default handlers: {per_use() * 1e6:.2f} us")
    with _signals.deferred():
        print(f"nested section:                      {per_use() * 1e6:.2f} us")
    got = []
    th = threading.Thread(target=lambda: got.append(per_use()))
    th.start()
    th.join()
    print(f"off the main thread:                 {got[0] * 1e6:.2f} us")
    signal.signal(signal.SIGTERM, lambda s, f: None)
    print(f"outermost, with a SIGTERM handler:   {per_use() * 1e6:.2f} us")


if __name__ == "__main__":
    main()
