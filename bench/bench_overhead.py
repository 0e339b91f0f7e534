"""Does the overhead account (memckpt.checkpoint.stats) agree with the wall clock?

One process, two arenas of the same shape, the same step on each, in
interleaved blocks of ``--steps`` steps:

- ``ckpt``: arena A, tracked by a Checkpointer, ``maybe_checkpoint()`` every step;
- ``armed``: arena A, tracked, no checkpoint calls;
- ``bare``: arena B, not tracked.

The account of the ``ckpt`` blocks' epochs (``sum(call_s)``: the program was
stopped in checkpoint() this long) is compared with the measured difference
``ckpt - armed``; the tracker's slowdown ``armed / bare - 1`` is the
calibration's number, and ``account + tracking`` is compared with
``ckpt - bare``. Medians over blocks, and totals. Beside it, an account with
no calibration (``ratio_live_cpu``): the calls, plus the CPU the other
threads (persist, writers) took in the checkpointed blocks beyond the
untracked ones, plus the main thread's CPU outside the calls beyond the
untracked blocks' (on a machine with no idle core, CPU another thread takes
comes out of the program's wall time).

    python bench/bench_overhead.py [--mib 64] [--touch 0.05] [--interval 0.05]
        [--steps 200] [--rounds 8] [--mode copy] [--work-ms 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

import memckpt
from memckpt.checkpoint.stats import account


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--touch", type=float, default=0.05, help="fraction of pages a step writes")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--mode", default="copy")
    ap.add_argument("--tracker", default="auto")
    ap.add_argument("--work-ms", type=float, default=2.0, help="compute per step besides the writes")
    ap.add_argument("--json")
    a = ap.parse_args()
    ps = memckpt.features().page_size
    npages = a.mib * 2**20 // ps
    arenas = [memckpt.Arena(npages * ps) for _ in range(2)]
    fields = [ar.array("f", (npages, ps // 8)) for ar in arenas]
    for f in fields:
        f[:] = 1.0
    rng = np.random.default_rng(1)
    k = max(1, int(npages * a.touch))
    work = np.ones((256, 256))

    def step(f: np.ndarray) -> None:
        idx = rng.integers(0, npages, k)
        f[idx, 0] += 1.0
        t = time.perf_counter() + a.work_ms / 1e3
        while time.perf_counter() < t:  # the step's own compute
            work.sum()

    with tempfile.TemporaryDirectory() as d, \
            memckpt.Checkpointer(arenas[0], d + "/s", mode=a.mode, tracker=a.tracker,
                                 interval=a.interval) as ck:
        ck.checkpoint().result()  # the full epoch is not part of the steady state
        times: dict[str, list[float]] = {"ckpt": [], "armed": [], "bare": []}
        cpu: dict[str, list[float]] = {"ckpt": [], "armed": [], "bare": []}
        pcpu: dict[str, list[float]] = {"ckpt": [], "armed": [], "bare": []}
        accounted: list[float] = []
        called: list[float] = []  # maybe_checkpoint() as timed around the call
        for r in range(a.rounds):
            order = ["ckpt", "armed", "bare"] if r % 2 == 0 else ["bare", "armed", "ckpt"]
            for kind in order:
                f = fields[1] if kind == "bare" else fields[0]
                ck.wait()
                first = (ck.head or 0) + 1
                t0 = time.perf_counter()
                c0, p0 = time.thread_time(), time.process_time()
                in_calls = 0.0
                for _ in range(a.steps):
                    step(f)
                    if kind == "ckpt":
                        c = time.perf_counter()
                        ck.maybe_checkpoint()
                        in_calls += time.perf_counter() - c
                times[kind].append(time.perf_counter() - t0)
                cpu[kind].append(time.thread_time() - c0)
                pcpu[kind].append(time.process_time() - p0)
                if kind == "ckpt":
                    ck.wait()
                    es = [e for e in ck.store.epochs() if e.epoch >= first]
                    accounted.append(sum(e.call_s or 0.0 for e in es) if es else 0.0)
                    called.append(in_calls)
                    acc = account(es, interval=a.interval) if es else None
        tot = {k: sum(v) for k, v in times.items()}
        # calibration from the first half of the rounds: how much slower a step is
        # between checkpoints (first writes to re-protected pages, the persist
        # thread's CPU and GIL) than the same step on an untracked arena
        h = a.rounds // 2
        outside = [t - c for t, c in zip(times["ckpt"], called)]
        slow = sum(outside[:h]) / sum(times["bare"][:h]) - 1
        # the second half: the account (call_s of its epochs + that slowdown applied
        # to the time between calls) against the wall-clock difference
        calls2 = sum(accounted[h:])
        wall2 = sum(times["ckpt"][h:])
        acct2 = calls2 + (wall2 - calls2) * slow / (1 + slow)
        meas2 = wall2 - sum(times["bare"][h:])
        # the alternative measured live, no calibration: the calls plus the CPU the
        # other threads (persist, writer) took in the same blocks, beyond what they
        # took in the untracked ones (on a machine with no idle core that CPU comes
        # out of the program's share), plus the main thread's CPU outside the calls
        # beyond the untracked blocks' (the tracker's faults)
        others = [p - c for p, c in zip(pcpu["ckpt"][h:], cpu["ckpt"][h:])]
        others_bare = [p - c for p, c in zip(pcpu["bare"][h:], cpu["bare"][h:])]
        persist2 = sum(others) - sum(others_bare)
        faults2 = max(0.0, sum(cpu["ckpt"][h:]) - sum(called[h:]) - sum(cpu["bare"][h:]))
        live2 = calls2 + persist2 + faults2
        rep = {
            "args": vars(a), "backend": ck.tracker.backend,
            "block_s_median": {k: statistics.median(v) for k, v in times.items()},
            "total_s": tot,
            "main_thread_cpu_s": {k: sum(v) for k, v in cpu.items()},
            "process_cpu_s": {k: sum(v) for k, v in pcpu.items()},
            "account_call_s": sum(accounted),
            "timed_around_calls_s": sum(called),
            "armed_idle_slowdown": tot["armed"] / tot["bare"] - 1,
            "between_checkpoints_slowdown_first_half": slow,
            "second_half": {"measured_ckpt_minus_bare_s": meas2, "account_call_s": calls2,
                            "account_with_tracking_s": acct2,
                            "ratio_account_to_measured": acct2 / meas2,
                            "ratio_calls_only": calls2 / meas2,
                            "other_threads_cpu_s": persist2, "main_cpu_outside_calls_s": faults2,
                            "account_live_cpu_s": live2, "ratio_live_cpu": live2 / meas2},
            "last_block_account": acc.to_dict() if acc else None,
        }
    for ar in arenas:
        del ar
    print(json.dumps({k: v for k, v in rep.items() if k != "last_block_account"}, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rep, fh, indent=1)


if __name__ == "__main__":
    main()
