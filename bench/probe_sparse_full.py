"""The first (full) checkpoint of a mostly empty arena, in every capture mode:
time to durable and the memory it leaves behind (issue 10, item 13).

A 1 GiB arena (MIB=... to change) of which PCT percent (default 1) of the
pages, spread at random, hold random bytes; the rest were never touched.
Each mode runs in a fresh interpreter (so one mode's staging does not flatter
the next one's RSS) and reports:

- ``total``: time to durable (EpochInfo.total_s) and ``pause``;
- ``peak``: VmHWM minus VmRSS just before the checkpoint (VmHWM is reset
  with ``echo 5 > /proc/self/clear_refs`` right before it);
- ``after``: VmRSS once the epoch is durable (and the checkpointer still
  open, as in a program that goes on) minus VmRSS before it;
- ``arena``: the arena's resident pages after, not counting the shared
  zero page, as MiB (PAGEMAP_SCAN).

Each mode runs twice: ``new`` (full epochs take only the pages that may hold
data) and ``old`` (``memckpt.capture.base.SKIP_UNPOPULATED = False``: every
page of the arena, as before issue 10) - the same build, in the same run. The
``floor`` row writes only the written pages as a full epoch with the store's
own writer (no capture at all). From a checkout:

    python bench/probe_sparse_full.py            # MODES=copy,fork ... STORE=/path
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

MIB = int(os.environ.get("MIB", "1024"))
PCT = float(os.environ.get("PCT", "1"))
MODES = os.environ.get("MODES", "copy,sync,background,fork").split(",")
STORE = os.environ.get("STORE", "/tmp/memckpt-probe-sparse")


def status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def one(mode: str, variant: str) -> dict:
    import memckpt
    import memckpt.capture.base as ckmod
    from memckpt import _core

    if variant == "old":
        ckmod.SKIP_UNPOPULATED = False  # type: ignore[attr-defined]
    arena = memckpt.Arena(MIB << 20)
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
    rng = np.random.default_rng(1)
    idx = np.sort(rng.choice(arena.npages, int(arena.npages * PCT / 100), replace=False))
    for s in range(0, idx.size, 4096):
        part = idx[s:s + 4096]
        pages[part] = rng.integers(1, 256, (part.size, arena.page_size), dtype=np.uint8)
    store = f"{STORE}-{mode}-{variant}"
    shutil.rmtree(store, ignore_errors=True)
    tracker = "uffd-sync" if mode == "background" else "auto"
    out: dict = {"mode": mode, "variant": variant, "pages": int(arena.npages), "written": int(idx.size)}
    if mode == "floor":
        st = memckpt.Store(store, create=True)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0 = status_kib("VmRSS")
        t0 = time.perf_counter()
        w = st.begin(kind="full", layout=arena.layout(), page_size=arena.page_size,
                     npages=arena.npages)
        for s in range(0, idx.size, 8192):
            part = idx[s:s + 8192].astype(np.uint64)
            w.add_pages(part, pages[part.astype(np.int64)])
        info = w.commit(pages_dirty=int(idx.size), pause_s=0.0)
        out["total_s"] = time.perf_counter() - t0
        out["pause_s"] = 0.0
    else:
        ck = memckpt.Checkpointer(arena, store, mode=mode, tracker=tracker)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0 = status_kib("VmRSS")
        t0 = time.perf_counter()
        info = ck.checkpoint().result()
        out["total_s"] = time.perf_counter() - t0
        out["pause_s"] = info.pause_s
        out["tracker"] = ck.tracker.backend
    out["peak_mib"] = (status_kib("VmHWM") - rss0) / 1024
    out["after_mib"] = (status_kib("VmRSS") - rss0) / 1024
    # resident pages of the arena that are not the shared zero page
    present = _core.pagemap_scan_count(arena.address, arena.nbytes, 1 << 3)
    zero = _core.pagemap_scan_count(arena.address, arena.nbytes, (1 << 3) | (1 << 5))
    out["arena_mib"] = (present - zero) * arena.page_size / 2**20
    out["pages_stored"] = info.pages_stored
    if mode != "floor":
        ck.close()
    shutil.rmtree(store, ignore_errors=True)
    return out


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(one(sys.argv[1], sys.argv[2])))
        return
    print(f"{MIB} MiB arena, {PCT:g}% of its pages written; first checkpoint, one process per row")
    print(f"{'mode':<11}{'variant':<8}{'total s':>9}{'pause s':>9}{'peak MiB':>10}"
          f"{'after MiB':>11}{'arena MiB':>11}{'stored':>9}")
    rows = [("floor", "-")] + [(m, v) for m in MODES for v in ("old", "new")]
    for mode, variant in rows:
        r = subprocess.run([sys.executable, __file__, mode, variant], capture_output=True, text=True)
        if r.returncode:
            print(f"{mode:<11}{variant:<8} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{mode:<11}{variant:<8}{d['total_s']:>9.3f}{d['pause_s']:>9.3f}{d['peak_mib']:>10.1f}"
              f"{d['after_mib']:>11.1f}{d['arena_mib']:>11.1f}{d['pages_stored']:>9}")


if __name__ == "__main__":
    main()
