"""``memckpt restore``: an epoch's named arrays, written to an .npz file."""
from __future__ import annotations

import argparse
import math
import os
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np

from .base import CliError, Command, json_arg, progress_arg, store_arg
from .output import Progress, fmt_bytes, progress_wanted, table
from .stores import dtype_name, opened, resolve_epoch


def arguments(p: argparse.ArgumentParser) -> None:
    store_arg(p)
    p.add_argument("--epoch", metavar="N", help="the epoch (default: the latest)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="the file to write")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check the pages' BLAKE3 digests: only for a store `memckpt "
                        "verify` checked already (a damaged page is then written as it is)")
    p.add_argument("--lazy", action="store_true",
                   help="restore lazily (pages served on first touch while a drain reads the "
                        "rest) and report time to first access, fault latency and drain "
                        "throughput; the file written is the same")
    p.add_argument("--prefetch", choices=["recorded", "sequential", "none"], default="recorded",
                   help="with --lazy: the drain's order (default: recorded, the first touches "
                        "of the last lazy restore of this epoch)")
    json_arg(p)
    progress_arg(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args.store) as store:
        progress = progress_wanted(args.progress)
        epoch = resolve_epoch(store, args.epoch)
        return restore_npz(store, epoch, args.out, progress=progress, verify=not args.no_verify,
                           lazy=args.lazy,
                           prefetch=None if args.prefetch == "none" else args.prefetch)


# np.savez takes the arrays as keyword arguments besides its own parameters
_SAVEZ_OWN = {"file", "allow_pickle", "args", "kwds"}


def read_epoch(store: Any, epoch: int, *, progress: bool = False, label: str = "restore",
               verify: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """The epoch's layout and its pages, (npages, page_size) uint8, with a progress bar."""
    lay = store.layout(epoch)
    man = store.manifest(epoch)
    page_size = int(lay.get("page_size") or man["page_size"])
    npages = int(man.get("npages") or lay["nbytes"] // page_size)
    out = np.zeros((npages, page_size), np.uint8)
    with Progress(label, npages, unit="pages", enabled=progress) as bar:
        store.read_into(epoch, out, progress=bar.callback(), out_is_zero=True, verify=verify)
    return lay, out


def read_epoch_lazy(store: Any, epoch: int, prefetch: str | None, *,
                    verify: bool = True) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """The epoch's layout and pages restored lazily, and the lazy restore's figures."""
    from ..restore import restore
    arena = restore(store, epoch, lazy=True, prefetch=prefetch, verify=verify)
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
    pages[:, 0].sum()  # the first touch of every page, in page order, as a reader would
    st = arena.lazy.wait()  # type: ignore[attr-defined]
    figures = {
        "time_to_first_access_ms": round(st.time_to_first_access_s * 1e3, 3),
        "faults": st.faults,
        "fault_latency_median_us": None if st.fault_latency_median_s is None
        else round(st.fault_latency_median_s * 1e6, 1),
        "fault_latency_p99_us": None if st.fault_latency_p99_s is None
        else round(st.fault_latency_p99_s * 1e6, 1),
        "drain_seconds": st.drain_s and round(st.drain_s, 3),
        "drain_gb_per_s": st.drain_bytes_per_s and round(st.drain_bytes_per_s / 1e9, 3),
        "prefetch": st.prefetch,
    }
    return store.layout(epoch), pages, figures


def arrays_of(lay: dict[str, Any], pages: np.ndarray) -> dict[str, np.ndarray]:
    flat = pages.reshape(-1)
    out = {}
    from ..arena import layout_dtype
    for a in lay.get("arrays", []):
        dt = layout_dtype(a)
        count = math.prod(a["shape"])
        out[a["name"]] = np.frombuffer(flat, dtype=dt, count=count,
                                       offset=a["offset"] if count else 0).reshape(a["shape"])
    return out


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_out(dest: Path, out: str) -> None:
    """--out may name a new file or an existing regular file (replaced whole);
    anything else it names is refused, never replaced: `--out /dev/null` must
    not turn the device node into a file."""
    try:
        mode = os.lstat(dest).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        what = next((w for test, w in _KINDS if test(mode)), "not a regular file")
        hint = (f"; give a file name such as {dest / 'epoch.npz'}" if stat.S_ISDIR(mode)
                else "; --out writes a new .npz file or replaces a regular one")
        raise CliError(f"--out {out} is {what}{hint}")
    if not dest.parent.is_dir():
        raise CliError(f"cannot write {out}: No such file or directory ({dest.parent} does not exist)")


def restore_npz(store: Any, epoch: int, out: str, *, progress: bool = False,
                verify: bool = True, lazy: bool = False,
                prefetch: str | None = "recorded") -> dict[str, Any]:
    """``lazy``: restore lazily, draining in the ``prefetch`` order, and report its figures."""
    dest = Path(out)
    _check_out(dest, out)
    t0 = time.monotonic()
    figures = None
    if lazy:
        lay, pages, figures = read_epoch_lazy(store, epoch, prefetch, verify=verify)
    else:
        lay, pages = read_epoch(store, epoch, progress=progress, verify=verify)
    arrays = arrays_of(lay, pages)
    clash = sorted(_SAVEZ_OWN & set(arrays))
    if clash:
        raise CliError(f"array name {clash[0]!r} is one of np.savez's own parameters; "
                       f"use the Python API (memckpt.restore) for this store")
    t1 = time.monotonic()
    # written under a temporary name and renamed: no half-written FILE.npz
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with Progress("write " + dest.name, enabled=progress) as bar:
        bar.tick()
        made = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644)
            made = True
            with open(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]  # names checked above
            _check_out(dest, out)  # again: it may have been replaced while the epoch was read
            os.replace(tmp, dest)
        except OSError as exc:
            raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
        finally:
            if made and os.path.lexists(tmp):
                tmp.unlink()
    return {
        "store": str(store.path), "epoch": epoch, "out": str(dest),
        "bytes": dest.stat().st_size,
        "arrays": [dict(e, shape=list(e["shape"])) for e in lay.get("arrays", [])],
        "read_seconds": round(t1 - t0, 3), "write_seconds": round(time.monotonic() - t1, 3),
        **({"lazy": figures} if figures is not None else {}),
    }


def _format_lazy(f: dict[str, Any]) -> str:
    def us(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} us"
    drain = "-" if f["drain_seconds"] is None else \
        f"{f['drain_seconds']:.2f} s ({f['drain_gb_per_s']:.2f} GB/s)"
    return (f"lazy: first access after {f['time_to_first_access_ms']:.1f} ms; {f['faults']} "
            f"demand faults, latency median {us(f['fault_latency_median_us'])}, p99 "
            f"{us(f['fault_latency_p99_us'])}; drain {drain}; prefetch {f['prefetch']}")


def format_restore(rep: dict[str, Any]) -> str:
    rows = [[a["name"], dtype_name(a), "x".join(map(str, a["shape"])) or "scalar"]
            for a in rep["arrays"]]
    return "\n".join([
        f"restored epoch {rep['epoch']} of {rep['store']} into {rep['out']} "
        f"({fmt_bytes(rep['bytes'])}; read {rep['read_seconds']:.2f} s, "
        f"written {rep['write_seconds']:.2f} s)",
        *([_format_lazy(rep["lazy"])] if "lazy" in rep else []),
        table(["array", "dtype", "shape"], rows),
        f"load it with: numpy.load({rep['out']!r})",
    ])


COMMAND = Command(
    "restore", arguments, run, format_restore,
    help="write an epoch's named arrays to a .npz file",
    description="Restore an epoch (default: the latest) and write its named arrays to an .npz file "
                "(np.savez), for inspection with numpy.load. To continue a program from an epoch, "
                "use memckpt.Checkpointer.resume in Python.",
    examples="  memckpt restore memckpt-demo --out state.npz\n"
             "  memckpt restore memckpt-demo --epoch 3 --out epoch3.npz\n"
             "  memckpt restore memckpt-demo --lazy --out state.npz\n"
             "  memckpt verify memckpt-demo && memckpt restore memckpt-demo --no-verify --out s.npz\n"
             "  python -c \"import numpy; print(numpy.load('state.npz')['temperature'].max())\"")
