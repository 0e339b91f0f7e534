"""What a reserved, mostly unused arena costs each tracker (issue 14, arenas
that grow): an arena of exactly the 16 MiB its array uses (the baseline)
against one of RESERVE GiB (default 8) holding the same array, measured in
the same run. Per backend, medians of REPS (default 5) of:

- ``open``: DirtyTracker() on the arena;
- ``collect``: a collect after writing every 8th page of the array;
- ``idle``: a collect with nothing written;
- ``full``: Checkpointer(mode="copy") first (full) epoch, time to durable,
  and the pages it did not read (``pages_unpopulated``).

    python bench/probe_arena_reserve.py          # RESERVE=8 REPS=5 STORE=/tmp
"""
import os
import statistics
import tempfile
import time

import memckpt
from memckpt.kernel import backend_names

USED = 16 << 20


def once(nbytes, backend):
    with memckpt.Arena(nbytes) as arena:
        x = arena.array("x", USED // 8)
        x[:] = 1.0
        t0 = time.perf_counter()
        t = memckpt.DirtyTracker(arena, backend)
        t1 = time.perf_counter()
        x[::512 * 8] = 2.0
        t2 = time.perf_counter()
        t.collect()
        t3 = time.perf_counter()
        t.collect()
        t4 = time.perf_counter()
        t.close()
        with tempfile.TemporaryDirectory(dir=os.environ.get("STORE")) as d:
            with memckpt.Checkpointer(arena, d + "/s", mode="copy", tracker=backend) as ck:
                info = ck.checkpoint().result()
        del x
        return t1 - t0, t3 - t2, t4 - t3, info.total_s, info.extra.get("pages_unpopulated", 0)


def main():
    reserve = int(os.environ.get("RESERVE", "8")) << 30
    reps = int(os.environ.get("REPS", "5"))
    print(f"array {USED >> 20} MiB; arena sized to it vs {reserve >> 30} GiB reserved; medians of {reps}")
    print(f"{'backend':11s} {'arena':>7s} {'open ms':>9s} {'collect ms':>11s} {'idle ms':>9s} "
          f"{'full ms':>9s} {'unpopulated':>12s}")
    for b in backend_names():
        if not next(t for t in memckpt.trackers() if t.name == b).available:
            continue
        base = None
        for nbytes in (USED, reserve):
            runs = [once(nbytes, b) for _ in range(reps)]
            med = [statistics.median(r[i] for r in runs) for i in range(4)]
            ratio = "" if base is None else "  x" + " x".join(f"{m / max(b0, 1e-9):.1f}" for m, b0 in zip(med, base))
            base = base or med
            label = f"{nbytes >> 20}M" if nbytes < 1 << 30 else f"{nbytes >> 30}G"
            print(f"{b:11s} {label:>7s} {med[0] * 1e3:9.2f} {med[1] * 1e3:11.2f} {med[2] * 1e3:9.2f} "
                  f"{med[3] * 1e3:9.2f} {runs[0][4]:12d}{ratio}")


if __name__ == "__main__":
    main()
