"""``memckpt bench``: the standard benchmark matrix, measured in one run.

For backends x capture modes x dirty ratios x arena sizes: the median collect
time, checkpoint pause, total and extra memory, beside the floor (a memcpy of
the D dirty pages, plus one bare PAGEMAP_SCAN of the arena when the kernel
has it) and beside what users do today, on the same arrays in the same run:
np.save (+fsync), np.savez (+fsync), pickle.dump (+fsync), hashing every page
with BLAKE3 and writing the changed ones (+fsync), and a full copy
(arr.copy()). Then the program's own slowdown from tracking: a native
stencil's run time with each backend, checkpointing every 1 and every 10
iterations, over the same run untracked.

The default matrix (1 GiB; 1% and 10%; every backend in mode copy plus auto's
backend in the other modes) is sized to finish in about two minutes on two
CPUs; ``--full`` measures every pair at more sizes and ratios.

:func:`run` returns a JSON-ready dict; :func:`format_bench` makes the tables.
"""
from __future__ import annotations

import os
import pickle
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import _core
from .arena import Arena
from .cli import CliError, Progress, fmt_seconds, pyplot, table
from .kernel import features, trackers

DEFAULT_SIZES_MIB = [1024]
FULL_SIZES_MIB = [256, 1024]
DEFAULT_RATIOS = [1.0, 10.0]  # percent of the arena's pages written between checkpoints
FULL_RATIOS = [0.1, 1.0, 10.0, 100.0]
DEFAULT_ROUNDS = 3
SLOWDOWN_ITERS = 10          # stencil iterations of one slowdown run
SLOWDOWN_EVERY = [1, 10]     # checkpoint every K iterations
SLOWDOWN_WINDOW = 0.05       # the fraction of the grid's rows the stencil writes
SLOWDOWN_MIB = 64            # the slowdown's grid (at most the first arena size)
FULL_SLOWDOWN_MIB = 256
PEERS = ["np.save+fsync", "np.savez+fsync", "pickle+fsync", "blake3-pages+fsync", "arr.copy"]
_SCAN_WRITTEN = 1 << 1  # PAGE_IS_WRITTEN


# -- the workloads: native kernels, or numpy when cffi (or a compiler) is missing -----------
def _kernels() -> tuple[Callable[..., Any], Callable[..., Any], str | None]:
    """(random_pages(arr, npages, seed) -> indices, stencil(grid, iters, window), note)."""
    try:
        from . import workloads
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


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _fsync_write(path: Path, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the parts ------------------------------------------------------------------------
def _floor(arena: Arena, pages: np.ndarray, state: np.ndarray, npages: int, rounds: int,
           rp: Callable[..., Any], seed: int, scan: bool) -> dict[str, Any]:
    buf = np.ones((npages, arena.page_size), np.uint8)  # touched: no page faults in the timing
    copies, scans = [], []
    for r in range(rounds + 1):
        idx = rp(state, npages, seed + r).astype(np.intp)
        t = _timed(lambda: np.take(pages, idx, axis=0, mode="clip", out=buf))
        s = _timed(lambda: _core.pagemap_scan_count(arena.address, arena.nbytes, _SCAN_WRITTEN)) \
            if scan else 0.0
        if r:  # round 0 warms up
            copies.append(t)
            scans.append(s)
    copy_s, scan_s = _median(copies), (_median(scans) if scan else None)
    return {"copy_s": copy_s, "scan_s": scan_s, "floor_s": copy_s + (scan_s or 0.0)}


def _peers_fixed(arena: Arena, rounds: int, tmp: Path) -> dict[str, float]:
    """The peers whose cost does not depend on how much was written: they
    save (or copy) every array every time."""
    arrays = arena.arrays()
    times: dict[str, list[float]] = {p: [] for p in PEERS if p != "blake3-pages+fsync"}
    for _ in range(rounds):
        def save_all() -> None:
            for name, a in arrays.items():
                def write(f: Any, a: np.ndarray = a) -> None:
                    np.save(f, a)
                _fsync_write(tmp / f"save-{name}.npy", write)
        times["np.save+fsync"].append(_timed(save_all))
        times["np.savez+fsync"].append(_timed(lambda: _fsync_write(
            tmp / "savez.npz", lambda f: np.savez(f, **arrays))))  # type: ignore[arg-type]
        times["pickle+fsync"].append(_timed(lambda: _fsync_write(
            tmp / "state.pkl", lambda f: pickle.dump(arrays, f, protocol=5))))
        times["arr.copy"].append(_timed(lambda: [a.copy() for a in arrays.values()]))
    for f in tmp.iterdir():
        f.unlink()
    return {p: _median(v) for p, v in times.items()}


def _peer_blake3(pages: np.ndarray, state: np.ndarray, npages: int, rounds: int,
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
            _fsync_write(tmp / f"pages-{r}.bin", write)
        times.append(_timed(hash_pages))
    for f in tmp.iterdir():
        f.unlink()
    return _median(times)


def _collects(arena: Arena, state: np.ndarray, backend: str, npages: int, rounds: int,
              rp: Callable[..., Any], seed: int) -> float:
    from .tracker import DirtyTracker
    collects = []
    with DirtyTracker(arena, backend) as tr:
        tr.collect()
        for r in range(rounds + 1):
            rp(state, npages, seed + r)
            t = _timed(tr.collect)
            if r:
                collects.append(t)
    return _median(collects)


def _chain(arena: Arena, state: np.ndarray, backend: str, mode: str, ratios: list[tuple[float, int]],
           rounds: int, rp: Callable[..., Any], seed: int, tmp: Path
           ) -> dict[float, dict[str, Any]] | str:
    """Checkpoints of one backend in one capture mode: an untimed full epoch,
    then at each ratio a warm-up round and ``rounds`` timed ones, each
    durable before the next round writes. The reason, when the combination
    is impossible here."""
    from .checkpointer import Checkpointer
    from .errors import MemckptError
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
            cols: dict[str, list[float]] = {"pause_s": [], "total_s": [], "persist_s": [],
                                            "bytes_on_disk": [], "extra_bytes": [], "wait_s": []}
            for r in range(rounds + 1):
                rp(state, npages, seed + 100 * k + r)
                p = ck.checkpoint()
                info = p.result()
                if r:
                    cols["pause_s"].append(info.pause_s)
                    cols["total_s"].append(info.total_s)
                    cols["persist_s"].append(info.total_s - info.pause_s)
                    cols["bytes_on_disk"].append(info.bytes_on_disk)
                    cols["extra_bytes"].append(float(info.extra.get(
                        "extra_bytes", info.extra.get("staging_bytes", 0))))
                    cols["wait_s"].append(p.wait_s)
            out[pct] = {c: _median(v) for c, v in cols.items()}
            out[pct]["bytes_on_disk"] = int(out[pct]["bytes_on_disk"])
            out[pct]["extra_bytes"] = int(out[pct]["extra_bytes"])
    finally:
        ck.close()
        shutil.rmtree(store, ignore_errors=True)
    return out


def combos(backends: list[str], modes: list[str] | None, full: bool) -> list[tuple[str, str]]:
    """The (backend, capture mode) pairs to measure. Default: every backend in
    mode copy, and the first backend (auto's choice) in every other mode,
    except "background", which runs on the uffd-sync tracker it needs.
    --full (or --modes): every backend in every mode."""
    from .checkpointer import MODES
    if modes is not None or full:
        return [(b, m) for m in (modes or list(MODES)) for b in backends]
    out = [(b, "copy") for b in backends]
    for m in MODES:
        if m == "copy" or not backends:
            continue
        b = "uffd-sync" if m == "background" else backends[0]
        if b in backends:
            out.append((b, m))
    return out


def _slowdown(size_mib: int, pairs: list[tuple[str, str]], rounds: int, stencil: Callable[..., Any],
              tmp: Path, step: Callable[[str], None]) -> dict[str, Any]:
    from .checkpointer import Checkpointer
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
                compute += _timed(lambda: stencil(grid, 1, window))
                if ck is not None and it % every == 0:
                    p = ck.checkpoint()
                    pause += p.wait_s + p.pause_s  # what the loop was held for
            if ck is not None:
                ck.wait()  # the last epoch's persist belongs to this run, not to the next
            return compute, pause

        step("slowdown: untracked")
        run(None, 1)  # warm-up
        untracked = _median([run(None, 1)[0] for _ in range(rounds)])
        out = []
        for b, mode in pairs:
            step(f"slowdown: {b} {mode}")
            store = tmp / f"slow-{b}-{mode}"
            try:
                ck = Checkpointer(arena, str(store), tracker=b, mode=mode)
            except Exception:  # an impossible pair: _chain has said why
                continue
            with ck:
                ck.checkpoint().result()
                for every in SLOWDOWN_EVERY:
                    comp, comp_pause = [], []
                    for _ in range(rounds):
                        c, p = run(ck, every)
                        comp.append(c)
                        comp_pause.append(c + p)
                    c_med, cp_med = _median(comp), _median(comp_pause)
                    out.append({"backend": b, "mode": mode, "every": every, "compute_s": c_med,
                                "compute_plus_pause_s": cp_med,
                                "slowdown": c_med / untracked,
                                "slowdown_with_pauses": cp_med / untracked})
            shutil.rmtree(store, ignore_errors=True)
    return {"size_mib": size_mib, "iterations": SLOWDOWN_ITERS,
            "window_rows": win, "grid": [rows, cols],
            "written_per_iteration_mib": round(win * (cols - 2) * 8 / (1 << 20), 1),
            "untracked_s": untracked, "rows": out}


# -- the command ----------------------------------------------------------------------
def run(*, sizes_mib: list[int] | None = None, ratios: list[float] | None = None,
        full: bool = False, rounds: int = DEFAULT_ROUNDS, backends: list[str] | None = None,
        modes: list[str] | None = None, directory: str | None = None, plot: str | None = None,
        slowdown: bool = True, slowdown_mib: int | None = None,
        progress: bool = False) -> dict[str, Any]:
    from .checkpointer import MODES
    if plot is not None:
        pyplot()  # fail now, not after the work
    sizes = sorted(set(sizes_mib or (FULL_SIZES_MIB if full else DEFAULT_SIZES_MIB)))
    pcts = sorted(set(ratios or (FULL_RATIOS if full else DEFAULT_RATIOS)))
    for p in pcts:
        if not 0 < p <= 100:
            raise CliError(f"--ratios: {p:g} is not a percentage in (0, 100]")
    if rounds < 1:
        raise CliError("--rounds must be positive")
    if directory is not None and not Path(directory).is_dir():
        raise CliError(f"--dir {directory}: no such directory")
    if modes:
        for m in modes:
            if m not in MODES:
                raise CliError(f"--modes: unknown capture mode {m!r}; known: {', '.join(MODES)}")
    infos = {t.name: t for t in trackers()}
    if backends:
        for b in backends:
            if b not in infos:
                raise CliError(f"--backends: unknown backend {b!r}; "
                               f"known: {', '.join(infos)}")
            if not infos[b].available:
                raise CliError(f"--backends: {b} is not available here: {infos[b].reason}")
        chosen = [b for b in infos if b in backends]
        skipped: list[dict[str, str]] = []
    else:
        chosen = [n for n, t in infos.items() if t.available]
        skipped = [{"backend": n, "reason": t.reason} for n, t in infos.items() if not t.available]
    pairs = combos(chosen, modes, full)
    slow_mib = slowdown_mib or min(sizes[0], FULL_SLOWDOWN_MIB if full else SLOWDOWN_MIB)
    slow_pairs = [(b, m) for b, m in pairs if m == "copy"] if not (modes or full) else pairs
    feats = features()
    rp, stencil, native_note = _kernels()
    scan = bool(feats.pagemap_scan)
    ps = feats.page_size
    load0 = os.getloadavg()
    t_start = time.monotonic()

    steps = (len(sizes) * (1 + 2 * len(pcts) + len(chosen) + len(pairs))
             + (1 + len(slow_pairs) if slowdown else 0))
    rows: list[dict[str, Any]] = []
    peer_rows: list[dict[str, Any]] = []
    impossible: dict[tuple[str, str], str] = {}
    slow: dict[str, Any] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="memckpt-bench-", dir=directory))
    try:
        with Progress("bench", steps, unit="steps", enabled=progress) as bar:
            def step(note: str) -> None:
                bar.update(bar.done, note=note)

            def done() -> None:
                bar.advance()
            for size in sizes:
                with Arena(size << 20) as arena:
                    state = arena.array("state", (size << 20) // 8, np.uint64)
                    state[:] = np.arange(state.size, dtype=np.uint64)  # every page different
                    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, ps)
                    step(f"{size} MiB: peers (np.save, savez, pickle, copy)")
                    fixed = _peers_fixed(arena, rounds, tmp)
                    done()
                    at = [(pct, max(1, round(arena.npages * pct / 100))) for pct in pcts]
                    per: dict[float, dict[str, Any]] = {}
                    for k, (pct, npages) in enumerate(at):
                        seed = 1_000_000 * k + size
                        step(f"{size} MiB {pct:g}%: floor")
                        fl = _floor(arena, pages, state, npages, rounds, rp, seed, scan)
                        done()
                        step(f"{size} MiB {pct:g}%: peer blake3-pages")
                        pr = dict(fixed)
                        pr["blake3-pages+fsync"] = _peer_blake3(pages, state, npages, rounds, rp,
                                                                seed, tmp)
                        pr = {p: pr[p] for p in PEERS}
                        done()
                        per[pct] = {"floor": fl, "peers": pr, "collect": {}}
                        peer_rows.append({"size_mib": size, "ratio_pct": pct, "dirty_pages": npages,
                                          "floor_copy_s": fl["copy_s"], "floor_scan_s": fl["scan_s"],
                                          "floor_s": fl["floor_s"], "peers_s": pr})
                    for b in chosen:
                        step(f"{size} MiB: {b} collect")
                        for k, (pct, npages) in enumerate(at):
                            per[pct]["collect"][b] = _collects(arena, state, b, npages, rounds, rp,
                                                               1_000_000 * k + size + 77)
                        done()
                    for b, mode in pairs:
                        step(f"{size} MiB: {b} {mode}")
                        got = _chain(arena, state, b, mode, at, rounds, rp, 31 * size, tmp)
                        done()
                        if isinstance(got, str):
                            impossible[(b, mode)] = got
                            continue
                        for pct, npages in at:
                            c, fl, pr = got[pct], per[pct]["floor"], per[pct]["peers"]
                            rows.append({
                                "backend": b, "mode": mode, "size_mib": size, "ratio_pct": pct,
                                "dirty_pages": npages, "collect_s": per[pct]["collect"][b], **c,
                                "floor_s": fl["floor_s"],
                                "total_over_floor": c["total_s"] / fl["floor_s"],
                                "pause_over_floor": c["pause_s"] / fl["floor_s"],
                                "peer_over_total": {p: v / c["total_s"] for p, v in pr.items()},
                                "peer_over_pause": {p: v / c["pause_s"] for p, v in pr.items()},
                            })
                    del pages, state
            started: list[str] = []

            def slow_step(note: str) -> None:
                if started:
                    done()
                started.append(note)
                step(note)
            if slowdown:
                slow = _slowdown(slow_mib, [p for p in slow_pairs if p not in impossible],
                                 rounds, stencil, tmp, slow_step)
                done()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rep: dict[str, Any] = {
        "config": {"sizes_mib": sizes, "ratios_pct": pcts, "rounds": rounds, "backends": chosen,
                   "pairs": [list(p) for p in pairs],
                   "impossible": [{"backend": b, "mode": m, "reason": r}
                                  for (b, m), r in impossible.items()],
                   "skipped": skipped, "page_size": ps, "dir": directory or tempfile.gettempdir(),
                   "native": native_note is None, "note": native_note, "pagemap_scan": scan},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.monotonic() - t_start, 1),
        "rows": rows, "peers": peer_rows, "slowdown": slow, "plot": None,
    }
    if plot is not None:
        _plot(rep, plot)
        rep["plot"] = plot
    return rep


def _plot(rep: dict[str, Any], out: str) -> None:
    """Checkpoint total per backend and each peer's time, against the dirty ratio."""
    plt = pyplot()
    sizes = rep["config"]["sizes_mib"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for b, mode in rep["config"]["pairs"]:
            rs = [r for r in rep["rows"]
                  if r["backend"] == b and r["mode"] == mode and r["size_mib"] == size]
            if rs:
                ax.plot([r["ratio_pct"] for r in rs], [r["total_s"] for r in rs], "o-",
                        label=f"{b} {mode}")
        ps = [p for p in rep["peers"] if p["size_mib"] == size]
        x = [p["ratio_pct"] for p in ps]
        ax.plot(x, [p["floor_s"] for p in ps], "k--", label="floor")
        for name in PEERS:
            ax.plot(x, [p["peers_s"][name] for p in ps], ":", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pages written between checkpoints (%)")
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{size} MiB arena")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _x(v: float) -> str:
    return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def format_bench(rep: dict[str, Any]) -> str:
    c, m = rep["config"], rep["machine"]
    out = [f"memckpt bench: {', '.join(f'{s} MiB' for s in c['sizes_mib'])} arena; "
           f"{', '.join(f'{p:g}%' for p in c['ratios_pct'])} of its pages written between "
           f"checkpoints; medians of {c['rounds']} round(s); store in {c['dir']}",
           f"{m['cpus']} CPUs, kernel {m['kernel']}, load average {m['loadavg_start'][0]:.2f} at "
           f"the start, {m['loadavg_end'][0]:.2f} at the end; {rep['seconds']:.0f} s"]
    for s in c["skipped"]:
        out.append(f"skipped {s['backend']}: {s['reason']}")
    for s in c.get("impossible", []):
        out.append(f"skipped {s['backend']} in mode {s['mode']}: {s['reason']}")
    if c["note"]:
        out.append(f"note: {c['note']}")
    short = {"np.save+fsync": "np.save", "np.savez+fsync": "savez", "pickle+fsync": "pickle",
             "blake3-pages+fsync": "blake3", "arr.copy": "copy"}
    headers = ["backend", "mode", "arena", "dirty", "pages", "collect", "pause", "total", "floor",
               "pause/floor", "total/floor", "extra mem"] + [f"{short[p]}/total (/pause)" for p in PEERS]
    body = []
    for r in rep["rows"]:
        body.append([r["backend"], r["mode"], f"{r['size_mib']} MiB", f"{r['ratio_pct']:g}%",
                     f"{r['dirty_pages']:,}", fmt_seconds(r["collect_s"]),
                     fmt_seconds(r["pause_s"]), fmt_seconds(r["total_s"]),
                     fmt_seconds(r["floor_s"]), _x(r["pause_over_floor"]),
                     _x(r["total_over_floor"]), _mib(r["extra_bytes"])]
                    + [f"{_x(r['peer_over_total'][p])} ({_x(r['peer_over_pause'][p])})"
                       for p in PEERS])
    out += ["", "Checkpoints (medians) against the floor and against each peer: "
            "peer's time / memckpt's checkpoint total (/ pause); above 1x, memckpt is faster. "
            "pause: what the program is stopped for; total: until the epoch is durable; "
            "extra mem: staging (copy, background, sync) or what the parent's writes "
            "duplicated (fork)",
            table(headers, body)]
    ph = ["arena", "dirty", "floor copy", "floor scan"] + PEERS
    pb = [[f"{p['size_mib']} MiB", f"{p['ratio_pct']:g}%", fmt_seconds(p["floor_copy_s"]),
           fmt_seconds(p["floor_scan_s"])] + [fmt_seconds(p["peers_s"][n]) for n in PEERS]
          for p in rep["peers"]]
    out += ["", "The floor (memcpy of the dirty pages; one bare PAGEMAP_SCAN) and the peers "
            "(medians, same arrays, same run)", table(ph, pb)]
    s = rep["slowdown"]
    if s:
        sh = ["backend", "mode", "checkpoint every", "compute", "slowdown", "with pauses"]
        sb = [[r["backend"], r["mode"], f"{r['every']} iteration{'s' if r['every'] > 1 else ''}",
               fmt_seconds(r["compute_s"]), _x(r["slowdown"]), _x(r["slowdown_with_pauses"])]
              for r in s["rows"]]
        out += ["", f"The program's slowdown from tracking: {s['iterations']} stencil iterations "
                f"over {s['window_rows']} of {s['grid'][0]} rows of a {s['size_mib']} MiB grid "
                f"({s['written_per_iteration_mib']} MiB written per iteration); untracked "
                f"{fmt_seconds(s['untracked_s'])}; ratios to that", table(sh, sb)]
    if rep["plot"]:
        out += ["", f"plot written to {rep['plot']}"]
    return "\n".join(out)
