"""A child for tests/test_lazy_restore.py: restores an epoch lazily (drain
held, so the touches below are served by the fault handler) and then does
one thing that must end in a clear failure, never a hang:

  touch PAGE     read page PAGE (damaged in the store: SIGBUS)
  wait           let the drain run and wait (a damaged page: CorruptionError)
  kill PAGE      the handler dies, then page PAGE is touched (abort)
  closefd PAGE   the handler's userfaultfd is closed, then page PAGE is touched (abort)
  badindex PAGE  (the epoch's index damaged) page 0 is touched while the index is not
                 checked yet (served), then the check runs and wait() raises
                 CorruptionError, page 0 still reads; then PAGE is touched (SIGBUS)
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from memckpt import CorruptionError
from memckpt.lazy import restore_lazy
from memckpt.restore import arena_from_layout, open_store


def main() -> int:
    path, epoch, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    page = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    st, _ = open_store(path, create=False)
    arena = arena_from_layout(st.layout(epoch))
    h = restore_lazy(arena, st, epoch, verify=True, threads=1, prefetch=None,
                     t0=time.perf_counter(), hold=True)
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
    srv = h._test_server()
    if what == "wait":
        srv.release()
        try:
            h.wait(30)
        except CorruptionError as exc:
            print(f"CorruptionError: {exc}", flush=True)
            return 3
        return 0
    if what == "badindex":
        print("served", int(pages[0].sum()), flush=True)
        srv.release()
        try:
            h.wait(30)
        except CorruptionError as exc:
            print(f"CorruptionError: {exc}", flush=True)
        print("served again", int(pages[0].sum()), flush=True)
    if what == "kill":
        srv.kill_handler()
        time.sleep(0.2)  # (the abort may come before the touch: either is the outcome)
    elif what == "closefd":
        os.close(srv.fd)
    print("touching", flush=True)
    print(int(pages[page].sum()), flush=True)  # must not return: SIGBUS or abort
    return 0


if __name__ == "__main__":
    sys.exit(main())
