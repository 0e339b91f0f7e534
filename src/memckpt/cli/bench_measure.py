"""The measurements of ``memckpt bench``, one function each, on arrays the
caller lays out: the floor (a memcpy of the D dirty pages, plus one bare
PAGEMAP_SCAN of the arena when the kernel has it), the peers (what programs
do today: np.save, np.savez and pickle.dump, each with fsync; hashing every
page with BLAKE3 and writing the changed ones; a full arr.copy()), a
backend's collect, a chain of checkpoints in one capture mode, and the
program's own slowdown from tracking.

What to measure, and in which order, is :mod:`.bench_run`'s business.
"""
from __future__ import annotations

import os
import pickle
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import _core
from ..arena import Arena
from ..kernel import features

SLOWDOWN_ITERS = 10          # stencil iterations of one slowdown run
SLOWDOWN_EVERY = [1, 10]     # checkpoint every K iterations
SLOWDOWN_WINDOW = 0.05       # the fraction of the grid's rows the stencil writes
PEERS = ["np.save+fsync", "np.savez+fsync", "pickle+fsync", "blake3-pages+fsync", "arr.copy"]
_SCAN_WRITTEN = 1 << 1  # PAGE_IS_WRITTEN


# -- the workloads: native kernels, or numpy when cffi (or a compiler) is missing -----------
def kernels() -> tuple[Callable[..., Any], Callable[..., Any], str | None]:
    """(random_pages(arr, npages, seed) -> indices, stencil(grid, iters, window), note)."""
    try:
        from .. import workloads
        workloads.load()

        def rp(arr: np.ndarray, npages: int, seed: int) -> np.ndarray:
            return workloads.random_pages(arr, npages=npages, seed=seed)
        return rp, workloads.stencil_2d, None
    except Exception as exc:  # ImportError (no cffi) or WorkloadBuildError (no compiler)
        note = (f"native kernels unavailable ({' '.join(str(exc).split())}); "
                "the workloads ran in numpy, slower, so the slowdown ratios understate tracking")
        ps = features().page_size

        def rp_np(arr: np.ndarray, npages: int, seed: int) -> np.ndarray:
            words = arr.reshape(-1).view(np.uint64)
            n = arr.nbytes // ps
            idx = np.sort(np.random.default_rng(seed).choice(n, size=npages, replace=False))
            words[idx * (ps // 8)] += 1
            return idx.astype(np.uint64)

        def stencil_np(grid: np.ndarray, iters: int, window: Any) -> None:
            r0, r1, c0, c1 = window
            for _ in range(iters):
                c = grid[r0:r1, c0:c1]
                new = c + 0.1 * ((((grid[r0 - 1:r1 - 1, c0:c1] + grid[r0 + 1:r1 + 1, c0:c1])
                                   + grid[r0:r1, c0 - 1:c1 - 1]) + grid[r0:r1, c0 + 1:c1 + 1])
                                 - 4.0 * c)
                grid[r0:r1, c0:c1] = new
        return rp_np, stencil_np, note


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def fsync_write(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the parts ------------------------------------------------------------------------
def floor(arena: Arena, pages: np.ndarray, state: np.ndarray, npages: int, rounds: int,
           rp: Callable[..., Any], seed: int, scan: bool) -> dict[str, Any]:
    buf = np.ones((npages, arena.page_size), np.uint8)  # touched: no page faults in the timing
    copies, scans = [], []
    for r in range(rounds + 1):
        idx = rp(state, npages, seed + r).astype(np.intp)
        t = timed(lambda: np.take(pages, idx, axis=0, mode="clip", out=buf))
        s = timed(lambda: _core.pagemap_scan_count(arena.address, arena.nbytes, _SCAN_WRITTEN)) \
            if scan else 0.0
        if r:  # round 0 warms up
            copies.append(t)
            scans.append(s)
    copy_s, scan_s = median(copies), (median(scans) if scan else None)
    return {"copy_s": copy_s, "scan_s": scan_s, "floor_s": copy_s + (scan_s or 0.0)}


def peers_fixed(arena: Arena, rounds: int, tmp: Path) -> dict[str, float]:
    """The peers whose cost does not depend on how much was written: they
    save (or copy) every array every time."""
    arrays = arena.arrays()
    times: dict[str, list[float]] = {p: [] for p in PEERS if p != "blake3-pages+fsync"}
    for _ in range(rounds):
        def save_all() -> None:
            for name, a in arrays.items():
                def write(f: Any, a: np.ndarray = a) -> None:
                    np.save(f, a)
                fsync_write(tmp / f"save-{name}.npy", write)
        times["np.save+fsync"].append(timed(save_all))
        times["np.savez+fsync"].append(timed(lambda: fsync_write(
            tmp / "savez.npz", lambda f: np.savez(f, **arrays))))  # type: ignore[arg-type]
        times["pickle+fsync"].append(timed(lambda: fsync_write(
            tmp / "state.pkl", lambda f: pickle.dump(arrays, f, protocol=5))))
        times["arr.copy"].append(timed(lambda: [a.copy() for a in arrays.values()]))
    for f in tmp.iterdir():
        f.unlink()
    return {p: median(v) for p, v in times.items()}


def peer_blake3(pages: np.ndarray, state: np.ndarray, npages: int, rounds: int,
                 rp: Callable[..., Any], seed: int, tmp: Path) -> float:
    """The incremental scheme programs write by hand: hash every page with
    BLAKE3 (the blake3 package, a call per page), write the changed ones."""
    import blake3  # type: ignore[import-not-found,unused-ignore]
    digests = [blake3.blake3(p).digest() for p in pages]  # the approach's previous state
    times = []
    for r in range(rounds):
        rp(state, npages, seed + 1000 + r)

        def hash_pages() -> None:
            changed = []
            for i, p in enumerate(pages):
                d = blake3.blake3(p).digest()
                if d != digests[i]:
                    digests[i] = d
                    changed.append(i)
            idx = np.asarray(changed, np.intp)

            def write(f: Any) -> None:
                f.write(idx.astype(np.uint64).tobytes())
                f.write(np.take(pages, idx, axis=0).tobytes())
            fsync_write(tmp / f"pages-{r}.bin", write)
        times.append(timed(hash_pages))
    for f in tmp.iterdir():
        f.unlink()
    return median(times)


def collects(arena: Arena, state: np.ndarray, backend: str, npages: int, rounds: int,
              rp: Callable[..., Any], seed: int) -> float:
    from ..tracker import DirtyTracker
    times = []
    with DirtyTracker(arena, backend) as tr:
        tr.collect()
        for r in range(rounds + 1):
            rp(state, npages, seed + r)
            t = timed(tr.collect)
            if r:
                times.append(t)
    return median(times)


def chain(arena: Arena, state: np.ndarray, backend: str, mode: str, ratios: list[tuple[float, int]],
           rounds: int, rp: Callable[..., Any], seed: int, tmp: Path
           ) -> dict[float, dict[str, Any]] | str:
    """Checkpoints of one backend in one capture mode: an untimed full epoch,
    then at each ratio a warm-up round and ``rounds`` timed ones, each
    durable before the next round writes. The reason, when the combination
    is impossible here."""
    from ..checkpoint import Checkpointer
    from ..errors import MemckptError
    store = tmp / f"store-{backend}-{mode}"
    out: dict[float, dict[str, Any]] = {}
    try:
        ck = Checkpointer(arena, str(store), tracker=backend, mode=mode)
    except (MemckptError, ValueError) as e:
        shutil.rmtree(store, ignore_errors=True)
        return str(e)
    try:
        ck.checkpoint().result()  # the full epoch: not timed
        for k, (pct, npages) in enumerate(ratios):
            cols: dict[str, list[float]] = {"pause_s": [], "call_s": [], "total_s": [], "persist_s": [],
                                            "bytes_on_disk": [], "extra_bytes": [], "wait_s": []}
            for r in range(rounds + 1):
                rp(state, npages, seed + 100 * k + r)
                p = ck.checkpoint()
                info = p.result()
                if r:
                    cols["pause_s"].append(info.pause_s)
                    cols["call_s"].append(p.call_s if p.call_s is not None else float("nan"))
                    cols["total_s"].append(info.total_s)
                    cols["persist_s"].append(info.total_s - info.pause_s)
                    cols["bytes_on_disk"].append(info.bytes_on_disk)
                    cols["extra_bytes"].append(float(info.extra.get(
                        "extra_bytes", info.extra.get("staging_bytes", 0))))
                    cols["wait_s"].append(p.wait_s)
            out[pct] = {c: median(v) for c, v in cols.items()}
            out[pct]["bytes_on_disk"] = int(out[pct]["bytes_on_disk"])
            out[pct]["extra_bytes"] = int(out[pct]["extra_bytes"])
    finally:
        ck.close()
        shutil.rmtree(store, ignore_errors=True)
    return out


def slowdown(size_mib: int, pairs: list[tuple[str, str]], rounds: int, stencil: Callable[..., Any],
              tmp: Path, step: Callable[[str], None]) -> dict[str, Any]:
    from ..checkpoint import Checkpointer
    cols = 2048
    rows = (size_mib << 20) // (cols * 8)
    win = max(1, int(rows * SLOWDOWN_WINDOW))
    window = (1, 1 + win, 1, cols - 1)
    with Arena(size_mib << 20) as arena:
        grid = arena.array("grid", (rows, cols), np.float64)
        grid[:] = 1.0
        grid[0, :] = 100.0

        def run(ck: Any, every: int) -> tuple[float, float]:
            compute = pause = 0.0
            for it in range(1, SLOWDOWN_ITERS + 1):
                compute += timed(lambda: stencil(grid, 1, window))
                if ck is not None and it % every == 0:
                    p = ck.checkpoint()
                    pause += p.wait_s + p.pause_s  # what the loop was held for
            if ck is not None:
                ck.wait()  # the last epoch's persist belongs to this run, not to the next
            return compute, pause

        step("slowdown: untracked")
        run(None, 1)  # warm-up
        untracked = median([run(None, 1)[0] for _ in range(rounds)])
        out = []
        for b, mode in pairs:
            step(f"slowdown: {b} {mode}")
            store = tmp / f"slow-{b}-{mode}"
            try:
                ck = Checkpointer(arena, str(store), tracker=b, mode=mode)
            except Exception:  # an impossible pair: chain() has said why
                continue
            with ck:
                ck.checkpoint().result()
                for every in SLOWDOWN_EVERY:
                    comp, comp_pause = [], []
                    for _ in range(rounds):
                        c, p = run(ck, every)
                        comp.append(c)
                        comp_pause.append(c + p)
                    c_med, cp_med = median(comp), median(comp_pause)
                    out.append({"backend": b, "mode": mode, "every": every, "compute_s": c_med,
                                "compute_plus_pause_s": cp_med,
                                "slowdown": c_med / untracked,
                                "slowdown_with_pauses": cp_med / untracked})
            shutil.rmtree(store, ignore_errors=True)
    return {"size_mib": size_mib, "iterations": SLOWDOWN_ITERS,
            "window_rows": win, "grid": [rows, cols],
            "written_per_iteration_mib": round(win * (cols - 2) * 8 / (1 << 20), 1),
            "untracked_s": untracked, "rows": out}
