"""The matrix of ``memckpt bench``: which backends, capture modes, dirty
ratios and arena sizes to measure, in which order, with the progress line,
and the JSON-ready report they make. The measurements themselves are in
:mod:`.bench_measure`.

The default matrix (1 GiB; 1% and 10%; every backend in mode copy plus auto's
backend in the other modes) is sized to finish in about two minutes on two
CPUs; ``--full`` measures every pair at more sizes and ratios.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..arena import Arena
from ..kernel import features, trackers
from . import bench_measure as measure
from .base import CliError
from .output import Progress

DEFAULT_SIZES_MIB = [1024]
FULL_SIZES_MIB = [256, 1024]
DEFAULT_RATIOS = [1.0, 10.0]  # percent of the arena's pages written between checkpoints
FULL_RATIOS = [0.1, 1.0, 10.0, 100.0]
DEFAULT_ROUNDS = 3
SLOWDOWN_MIB = 64            # the slowdown's grid (at most the first arena size)
FULL_SLOWDOWN_MIB = 256


def combos(backends: list[str], modes: list[str] | None, full: bool) -> list[tuple[str, str]]:
    """The (backend, capture mode) pairs to measure. Default: every backend in
    mode copy, and the first backend (auto's choice) in every other mode,
    except "background", which runs on the uffd-sync tracker it needs.
    --full (or --modes): every backend in every mode."""
    from ..capture import MODES
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


def run(*, sizes_mib: list[int] | None = None, ratios: list[float] | None = None,
        full: bool = False, rounds: int = DEFAULT_ROUNDS, backends: list[str] | None = None,
        modes: list[str] | None = None, directory: str | None = None,
        slowdown: bool = True, slowdown_mib: int | None = None,
        progress: bool = False) -> dict[str, Any]:
    """Measure the matrix and return the report (JSON-ready); its "plot" is
    None, for the command to fill once it has drawn one."""
    from ..capture import MODES
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
    rp, stencil, native_note = measure.kernels()
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
                    fixed = measure.peers_fixed(arena, rounds, tmp)
                    done()
                    at = [(pct, max(1, round(arena.npages * pct / 100))) for pct in pcts]
                    per: dict[float, dict[str, Any]] = {}
                    for k, (pct, npages) in enumerate(at):
                        seed = 1_000_000 * k + size
                        step(f"{size} MiB {pct:g}%: floor")
                        fl = measure.floor(arena, pages, state, npages, rounds, rp, seed, scan)
                        done()
                        step(f"{size} MiB {pct:g}%: peer blake3-pages")
                        pr = dict(fixed)
                        pr["blake3-pages+fsync"] = measure.peer_blake3(pages, state, npages, rounds, rp,
                                                                seed, tmp)
                        pr = {p: pr[p] for p in measure.PEERS}
                        done()
                        per[pct] = {"floor": fl, "peers": pr, "collect": {}}
                        peer_rows.append({"size_mib": size, "ratio_pct": pct, "dirty_pages": npages,
                                          "floor_copy_s": fl["copy_s"], "floor_scan_s": fl["scan_s"],
                                          "floor_s": fl["floor_s"], "peers_s": pr})
                    for b in chosen:
                        step(f"{size} MiB: {b} collect")
                        for k, (pct, npages) in enumerate(at):
                            per[pct]["collect"][b] = measure.collects(arena, state, b, npages, rounds, rp,
                                                               1_000_000 * k + size + 77)
                        done()
                    for b, mode in pairs:
                        step(f"{size} MiB: {b} {mode}")
                        got = measure.chain(arena, state, b, mode, at, rounds, rp, 31 * size, tmp)
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
                slow = measure.slowdown(slow_mib, [p for p in slow_pairs if p not in impossible],
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
    return rep
