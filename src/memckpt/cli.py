"""What the command line does and prints: tables for people, dicts for --json.

Every command is a function that returns a JSON-ready dict, and a
``format_*`` function turns that dict into what a person reads, so the two
outputs never disagree. Errors a user can cause (a wrong path, an absent
epoch, a damaged store) are raised as :class:`CliError` or memckpt's own
errors, and ``__main__`` prints them as one line and exits 1.
"""
from __future__ import annotations

import math
import os
import stat
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from . import _core
from .kernel import features, trackers


class CliError(Exception):
    """A mistake the user can fix, said in one line; the command exits 1."""


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files (Agg), or a CliError naming the install:
    matplotlib is not a dependency of memckpt."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed: "
                       "pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    return plt


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(x.rstrip() for x in out)


def doctor() -> dict[str, Any]:
    f = features()
    num, why = _core.backend_auto()
    return {
        "features": asdict(f),
        "trackers": [asdict(t) for t in trackers()],
        "auto": {"backend": _core.backend_names()[num] if num >= 0 else None, "reason": why},
    }


def format_doctor(report: dict[str, Any]) -> str:
    f = report["features"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    feats = [
        ["kernel", f["kernel_release"]],
        ["page size", f["page_size"]],
        ["transparent huge pages", f["thp_mode"]],
        ["userfaultfd", yes(f["uffd"]) + (f" ({f['uffd_reason']})" if f["uffd_reason"] else "")],
        ["  features offered", hex(f["uffd_features"])],
        ["  write-protect", yes(f["uffd_wp"])],
        ["  WP_ASYNC", yes(f["uffd_wp_async"])],
        ["  WP_UNPOPULATED", yes(f["uffd_wp_unpopulated"])],
        ["vm.unprivileged_userfaultfd", "unreadable" if f["unprivileged_userfaultfd"] is None
         else f["unprivileged_userfaultfd"]],
        ["PAGEMAP_SCAN", yes(f["pagemap_scan"]) + (f" ({f['pagemap_scan_reason']})"
                                                   if f["pagemap_scan_reason"] else "")],
        ["soft-dirty", yes(f["soft_dirty"]) + (f" ({f['soft_dirty_reason']})"
                                               if f["soft_dirty_reason"] else "")],
    ]
    rows = [[t["name"], yes(t["available"]), yes(t["exact"]), yes(t["kernel_writes"]),
             yes(t["concurrent"]), t["reason"]] for t in report["trackers"]]
    auto = report["auto"]
    return "\n".join([
        "Kernel features",
        table(["feature", "value"], feats),
        "",
        "Dirty-page trackers (in the order `auto` prefers them)",
        table(["backend", "available", "exact", "kernel writes", "concurrent collect", "reason"], rows),
        "",
        f"auto picks: {auto['backend'] or 'nothing'} ({auto['reason']})",
    ])


# -- formatting -----------------------------------------------------------------
def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def fmt_seconds(s: float | None) -> str:
    """A duration for a table: ms below 10 s, else seconds."""
    if s is None:
        return "-"
    if s < 0.001:
        return f"{s * 1e3:.2f} ms"
    if s < 10:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.1f} s"


def fmt_when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_epochs(nums: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    if not nums:
        return "none"
    out, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


# -- progress -------------------------------------------------------------------
class Progress:
    """One self-overwriting status line on stderr: a bar when the total is
    known, an elapsed-time spinner when it is not.

    Drawn only when ``enabled`` (the caller passes ``--progress or
    stderr.isatty()``), at most ten times a second, and erased on close so
    that what follows starts on a clean line. Nothing here is needed for
    correctness, so a closed or redirected stream never raises.
    """

    WIDTH = 28

    def __init__(self, label: str, total: float | None = None, *, unit: str = "",
                 enabled: bool = True, stream: TextIO | None = None,
                 fmt: Callable[[float], str] | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.note = ""
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.fmt = fmt or (lambda v: f"{v:,.0f}")
        self.start = time.monotonic()
        self._last = 0.0
        self._width = 0
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # the line
    def render(self) -> str:
        elapsed = time.monotonic() - self.start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            frac = min(1.0, max(0.0, self.done / self.total))
            fill = int(frac * self.WIDTH)
            bar = "#" * fill + "-" * (self.WIDTH - fill)
            line = (f"{self.label} [{bar}] {frac * 100:3.0f}%  "
                    f"{self.fmt(self.done)}/{self.fmt(self.total)}{unit}  {elapsed:.1f} s")
        else:
            spin = "|/-\\"[int(elapsed * 5) % 4]
            line = f"{self.label} {spin} {elapsed:.1f} s"
            if self.done:
                line += f"  {self.fmt(self.done)}{unit}"
        if self.note:
            line += f"  {self.note}"
        return line

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            line = self.render()
            pad = max(0, self._width - len(line))
            self._width = len(line)
            try:
                self.stream.write("\r" + line + " " * pad)
                self.stream.flush()
            except (OSError, ValueError):
                self.enabled = False

    def update(self, done: float, total: float | None = None, note: str | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        self._draw(force=self.total is not None and done >= self.total)

    def advance(self, n: float = 1) -> None:
        self.update(self.done + n)

    def callback(self) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` function for the store's long calls."""
        return lambda done, total: self.update(done, total)

    def tick(self) -> Progress:
        """Keep redrawing from a thread while the caller blocks in one long call."""
        if self.enabled and self._ticker is None:
            def run() -> None:
                while not self._stop.wait(0.2):
                    self._draw()
            self._ticker = threading.Thread(target=run, name="memckpt-progress", daemon=True)
            self._ticker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.enabled and self._width:
            try:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._width = 0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_wanted(flag: bool) -> bool:
    """--progress, or a person watching stderr."""
    if flag:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# -- opening a store and naming epochs ---------------------------------------------
def open_store(path: str) -> Any:
    """An existing store, or a CliError that says what is at ``path`` instead."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"no store at {path}: no such file or directory")
    if not p.is_dir():
        raise CliError(f"{path} is not a store: a store is a directory, and this is a file")
    from .store import Store  # imported late: `doctor` must work without the store's dependencies
    return Store(p, create=False)


def read_infos(store: Any) -> tuple[list[Any], list[tuple[int, str]]]:
    """Every epoch's EpochInfo that can be read, and (epoch, why) for those that cannot."""
    from .errors import EpochNotFound, MemckptError
    good, bad = [], []
    for n in store.epoch_numbers():
        try:
            good.append(store.info(n))
        except EpochNotFound:  # retired since the listing (a prune or compaction): not damage
            continue
        except (MemckptError, OSError) as exc:
            bad.append((n, " ".join(str(exc).split())))
    return good, bad


def resolve_epoch(store: Any, spec: str | int | None, *, what: str = "epoch") -> int:
    """An epoch number that the store has: an int, "latest", or None (= latest)."""
    nums = store.epoch_numbers()
    if not nums:
        raise CliError(f"the store {store.path} has no committed epochs")
    if spec is None or spec == "latest":
        return nums[-1]
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise CliError(f"{what} must be a number or 'latest', not {spec!r}") from None
    if n < 0:  # -1 is the latest, as in Python
        if -n > len(nums):
            raise CliError(f"{what} {n}: the store has only {len(nums)} epochs")
        return nums[n]
    if n not in nums:
        raise CliError(f"no epoch {n} in {store.path} (it has epochs {fmt_epochs(nums)})")
    return n


def epoch_dict(info: Any) -> dict[str, Any]:
    d = asdict(info)
    d["extra"] = dict(getattr(info, "extra", {}) or {})
    return d


# -- ls -----------------------------------------------------------------------------
def ls(store: Any) -> dict[str, Any]:
    infos, damaged = read_infos(store)
    chains: dict[int, int] = {}  # epoch -> the full epoch its chain starts at
    for e in infos:
        chains[e.epoch] = e.epoch if e.parent is None or e.kind == "full" else chains.get(e.parent, e.parent)
    return {
        "store": str(store.path),
        "latest": infos[-1].epoch if infos else None,
        "bytes_on_disk": sum(e.bytes_on_disk for e in infos),
        "chains": sorted(set(chains.values())),
        "epochs": [dict(epoch_dict(e), chain_start=chains[e.epoch]) for e in infos],
        "damaged": [{"epoch": n, "error": why} for n, why in damaged],
    }


def format_ls(rep: dict[str, Any]) -> str:
    eps = rep["epochs"]
    head = (f"store {rep['store']}: {len(eps)} epochs in {len(rep['chains'])} chain"
            f"{'s' if len(rep['chains']) != 1 else ''}, {fmt_bytes(rep['bytes_on_disk'])} on disk")
    if not eps and not rep["damaged"]:
        return head + "\n(no committed epochs)"
    rows = [[e["epoch"], e["kind"], "-" if e["parent"] is None else e["parent"],
             f"{e['pages_dirty']:,}", f"{e['pages_stored']:,}", fmt_bytes(e["bytes_on_disk"]),
             fmt_seconds(e["pause_s"]), fmt_seconds(e["total_s"]), e["tracker"] or "-",
             fmt_when(e["created"]), e["label"] or ""] for e in eps]
    for d in rep["damaged"]:
        rows.append([d["epoch"], "DAMAGED", "", "", "", "", "", "", "", "", d["error"]])
    rows.sort(key=lambda r: int(r[0]))
    return "\n".join([head, table(["epoch", "kind", "parent", "dirty pages", "stored pages", "bytes",
                                   "pause", "total", "tracker", "created", "label"], rows)])


# -- show ---------------------------------------------------------------------------
def show(store: Any, epoch: int) -> dict[str, Any]:
    info = store.info(epoch)
    children = [e for e in read_infos(store)[0] if e.parent == epoch and e.epoch != epoch]
    return {
        "store": str(store.path),
        "epoch": epoch_dict(info),
        "chain": [int(x) for x in store.chain(epoch)],
        "children": [c.epoch for c in children],
        "children_info": [{"epoch": c.epoch, "kind": c.kind} for c in children],
        "layout": store.layout(epoch),
        "manifest": store.manifest(epoch),
    }


def format_show(rep: dict[str, Any]) -> str:
    e = rep["epoch"]
    lay = rep["layout"]
    man = rep["manifest"]
    chain = rep["chain"]
    page_size = int(lay.get("page_size") or man.get("page_size") or 4096)
    npages = int(man.get("npages") or lay.get("nbytes", 0) // page_size)
    kind = e["kind"]
    if kind == "full":
        what = "holds every non-zero page of the arena; a chain starts here"
    else:
        what = (f"holds the pages written since epoch {e['parent']}; a restore reads "
                f"{len(chain)} epoch{'s' if len(chain) != 1 else ''}")
    pct = f" ({100 * e['pages_dirty'] / npages:.2f}% of {npages:,})" if npages else ""
    rows: list[list[Any]] = [
        ["kind", f"{kind}: {what}"],
        ["parent", "-" if e["parent"] is None else
         e["parent"] if kind != "full" else
         f"{e['parent']} (lineage only: the epoch this full epoch follows; a restore reads none of it)"],
        ["chain", " -> ".join(str(c) for c in chain)],
        ["children", ", ".join(f"{c['epoch']} ({c['kind']})" for c in rep.get("children_info", []))
         or "none"],
        ["label", e["label"] or "-"],
        ["created", fmt_when(e["created"])],
        ["tracker", e["tracker"] or "-"],
        ["capture mode", e["mode"] or "-"],
        ["pages dirty", f"{e['pages_dirty']:,}{pct}"],
        ["pages stored", f"{e['pages_stored']:,} (after zero pages were elided and identical pages "
                         f"stored once)"],
        ["bytes on disk", f"{fmt_bytes(e['bytes_on_disk'])} ({e['bytes_on_disk']:,} B)"],
        ["pause", f"{fmt_seconds(e['pause_s'])} (the program was stopped this long)"],
        ["total", f"{fmt_seconds(e['total_s'])} (until the epoch was durable)"],
        ["page size", f"{page_size} B"],
        ["arena", f"{fmt_bytes(lay.get('nbytes'))}, {npages:,} pages"
                  + (", huge pages" if lay.get("hugepages") else "")],
    ]
    for key in ("compress", "compression", "format_version", "version"):
        if key in man and not isinstance(man[key], (dict, list)):
            rows.append([key.replace("_", " "), man[key] if man[key] is not None else "none"])
    for key, val in sorted((e.get("extra") or {}).items()):
        if isinstance(val, (dict, list)):
            continue
        if isinstance(val, (int, float)) and key.endswith("_s"):
            val, key = fmt_seconds(val), key[:-2]
        elif key == "follows":
            val = f"epoch {val} (the previous chain's head, when this full epoch was taken)"
        rows.append([key.replace("_", " "), val])
    arrays = [[a["name"], _dtype_name(a),
               "x".join(map(str, a["shape"])) or "scalar", a["offset"] // page_size,
               math.ceil(a["nbytes"] / page_size), fmt_bytes(a["nbytes"])]
              for a in lay.get("arrays", [])]
    return "\n".join([
        f"epoch {e['epoch']} of {rep['store']}",
        table(["field", "value"], rows),
        "",
        "layout (named arrays, each starts on a page boundary)",
        table(["array", "dtype", "shape", "first page", "pages", "bytes"], arrays),
    ])


def _dtype_name(entry: dict[str, Any]) -> str:
    """float64, int32, ... (a structured dtype: its fields), for a table."""
    from .arena import layout_dtype
    try:
        dt = layout_dtype(entry)
    except (TypeError, ValueError, KeyError):
        return str(entry.get("dtype"))
    if dt.fields is not None:
        return "{" + ", ".join(f"{n}: {dt.fields[n][0].name}" for n in dt.names or ()) + "}"
    return dt.name


# -- verify -------------------------------------------------------------------------
def verify(store: Any, epoch: int | None, *, progress: bool = False) -> dict[str, Any]:
    """Check every digest of every epoch (or of one epoch's chain). A damaged
    store raises CorruptionError/FormatError, which name the epoch and file."""
    t0 = time.monotonic()
    with Progress("verify", unit="", enabled=progress) as bar:
        store.verify(epoch, progress=bar.callback())
    checked = [int(x) for x in store.chain(epoch)] if epoch is not None else store.epoch_numbers()
    infos = {e.epoch: e for e in read_infos(store)[0]}
    nbytes = sum(infos[n].bytes_on_disk for n in checked if n in infos)
    return {"store": str(store.path), "ok": True, "epochs": checked,
            "pages": sum(infos[n].pages_stored for n in checked if n in infos),
            "bytes": nbytes, "seconds": round(time.monotonic() - t0, 3)}


def format_verify(rep: dict[str, Any]) -> str:
    return (f"ok: {len(rep['epochs'])} epochs ({fmt_epochs(rep['epochs'])}), "
            f"{rep['pages']:,} stored pages, {fmt_bytes(rep['bytes'])} checked in "
            f"{rep['seconds']:.2f} s; every digest matches")


# -- restore to .npz ------------------------------------------------------------------
# np.savez takes the arrays as keyword arguments besides its own parameters
_SAVEZ_OWN = {"file", "allow_pickle", "args", "kwds"}


def read_epoch(store: Any, epoch: int, *, progress: bool = False,
               label: str = "restore") -> tuple[dict[str, Any], np.ndarray]:
    """The epoch's layout and its pages, (npages, page_size) uint8, with a progress bar."""
    lay = store.layout(epoch)
    man = store.manifest(epoch)
    page_size = int(lay.get("page_size") or man["page_size"])
    npages = int(man.get("npages") or lay["nbytes"] // page_size)
    out = np.zeros((npages, page_size), np.uint8)
    with Progress(label, npages, unit="pages", enabled=progress) as bar:
        store.read_into(epoch, out, progress=bar.callback(), out_is_zero=True)
    return lay, out


def arrays_of(lay: dict[str, Any], pages: np.ndarray) -> dict[str, np.ndarray]:
    flat = pages.reshape(-1)
    out = {}
    from .arena import layout_dtype
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


def restore_npz(store: Any, epoch: int, out: str, *, progress: bool = False) -> dict[str, Any]:
    dest = Path(out)
    _check_out(dest, out)
    t0 = time.monotonic()
    lay, pages = read_epoch(store, epoch, progress=progress)
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
    }


def format_restore(rep: dict[str, Any]) -> str:
    rows = [[a["name"], _dtype_name(a), "x".join(map(str, a["shape"])) or "scalar"]
            for a in rep["arrays"]]
    return "\n".join([
        f"restored epoch {rep['epoch']} of {rep['store']} into {rep['out']} "
        f"({fmt_bytes(rep['bytes'])}; read {rep['read_seconds']:.2f} s, "
        f"written {rep['write_seconds']:.2f} s)",
        table(["array", "dtype", "shape"], rows),
        f"load it with: numpy.load({rep['out']!r})",
    ])


# -- compact ---------------------------------------------------------------------------
def compact_range(store: Any, first: str | None, last: str | None) -> tuple[int, int]:
    """The run first..last to merge; by default the latest chain's whole run."""
    b = resolve_epoch(store, last, what="--last")
    chain = [int(x) for x in store.chain(b)]
    a = chain[0] if first is None else resolve_epoch(store, first, what="--first")
    if a not in chain:
        raise CliError(f"epoch {a} is not in the chain of epoch {b} "
                       f"({' -> '.join(map(str, chain))}); --first must be an ancestor of --last")
    return a, b


def compact(store: Any, first: int, last: int, *, progress: bool = False) -> dict[str, Any]:
    chain = [int(x) for x in store.chain(last)]
    run = chain[chain.index(first):]
    before = {n: store.info(n) for n in run}
    bytes_before = sum(before[n].bytes_on_disk for n in run)
    t0 = time.monotonic()
    if len(run) == 1:
        return {"store": str(store.path), "first": first, "last": last, "merged": run,
                "removed": [], "epoch": epoch_dict(before[last]), "bytes_before": bytes_before,
                "bytes_after": bytes_before, "seconds": 0.0, "noop": True}
    with Progress(f"compact {first}..{last}", enabled=progress) as bar:
        info = store.compact(first, last, progress=bar.callback())
    after = set(store.epoch_numbers())
    return {"store": str(store.path), "first": first, "last": last, "merged": run,
            "removed": [n for n in run if n not in after], "epoch": epoch_dict(info),
            "bytes_before": bytes_before, "bytes_after": info.bytes_on_disk,
            "seconds": round(time.monotonic() - t0, 3), "noop": False}


def format_compact(rep: dict[str, Any]) -> str:
    e = rep["epoch"]
    if rep["noop"]:
        return (f"nothing to compact: epoch {rep['last']} is a {e['kind']} epoch whose chain "
                f"run {rep['first']}..{rep['last']} is that epoch alone")
    return (f"compacted epochs {fmt_epochs(rep['merged'])} into epoch {e['epoch']} ({e['kind']}"
            + (f", parent {e['parent']}" if e["parent"] is not None and e["kind"] != "full" else "")
            + f") in {rep['seconds']:.2f} s: removed {fmt_epochs(rep['removed'])}; "
            f"{fmt_bytes(rep['bytes_before'])} -> {fmt_bytes(rep['bytes_after'])} on disk")


# -- prune -------------------------------------------------------------------------------
def prune(store: Any, keep_last: int, keep_every: int | None) -> dict[str, Any]:
    before = read_infos(store)[0]
    removed = sorted(int(x) for x in store.prune(keep_last=keep_last, keep_every=keep_every))
    kept = store.epoch_numbers()
    freed = sum(e.bytes_on_disk for e in before if e.epoch in set(removed))
    return {"store": str(store.path), "keep_last": keep_last, "keep_every": keep_every,
            "removed": removed, "kept": kept, "bytes_freed": freed}


def format_prune(rep: dict[str, Any]) -> str:
    rule = f"the last {rep['keep_last']}"
    if rep["keep_every"]:
        rule += f" and every {rep['keep_every']}th"
    if not rep["removed"]:
        return f"nothing to prune: keeping {rule} (and their ancestors) keeps all of {fmt_epochs(rep['kept'])}"
    return (f"removed epochs {fmt_epochs(rep['removed'])} ({fmt_bytes(rep['bytes_freed'])}); "
            f"kept {fmt_epochs(rep['kept'])} ({rule}, and the ancestors they need)")



# -- tune ------------------------------------------------------------------------
def _duration(flag: str, text: str | None) -> float | None:
    from .tuning import parse_duration
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def tune(*, mtbf: str, rpo: str | None = None, cost: str | None = None, store: str | None = None,
         restart: str | None = None, step: str | None = None, plot: str | None = None) -> dict[str, Any]:
    """The checkpoint interval for an MTBF, an RPO and a cost (given, or the median
    ``total_s`` of a store's incremental epochs): the recommendation, and Young's,
    Daly's and the RPO cap's intervals side by side. Draws the waste curve to
    ``plot`` if asked (needs matplotlib)."""
    from . import tuning as tn
    if plot is not None:
        pyplot()  # fail now, not after the work
    mtbf_s = _duration("--mtbf", mtbf)
    rpo_s = _duration("--rpo", rpo)
    restart_s = _duration("--restart", restart) or 0.0
    step_s = _duration("--step", step)
    assert mtbf_s is not None
    for flag, v in (("--mtbf", mtbf_s), ("--rpo", rpo_s), ("--step", step_s)):
        if v is not None and v <= 0:
            raise CliError(f"{flag} must be longer than zero")
    if (cost is None) == (store is None):
        raise CliError("give the checkpoint cost: --cost DURATION, or --store STORE to measure it")
    if cost is not None:
        cost_s = _duration("--cost", cost)
        assert cost_s is not None
        if cost_s <= 0:
            raise CliError("--cost must be longer than zero")
        source = "--cost"
        measured = None
    else:
        st = open_store(store)  # type: ignore[arg-type]
        try:
            cost_s = tn.cost_from_store(st)
            incs = [e for e in st.epochs() if e.kind == "incremental"]
            measured = {"epochs": len(incs), "median_total_s": cost_s,
                        "median_pause_s": float(np.median([e.pause_s for e in incs]))}
        finally:
            close = getattr(st, "close", None)
            if close is not None:
                close()
        source = f"store {store} (median total_s of {measured['epochs']} incremental epochs)"
    rec = tn.recommend(cost_s, mtbf_s, rpo_s, restart_s, step_s)

    def row(method: str, interval: float) -> dict[str, Any]:
        return {"method": method, "interval_s": interval,
                "interval_steps": None if step_s is None else max(1, (
                    math.floor if method == "rpo-cap" else round)(interval / step_s * (1 + 1e-12))),
                "expected_overhead": tn.expected_overhead(interval, cost_s, mtbf_s, restart_s),
                "expected_waste": tn.expected_waste(interval, cost_s, mtbf_s, restart_s),
                "expected_lost_work_s": tn.expected_lost_work(interval, cost_s, mtbf_s),
                "worst_lost_work_s": interval + cost_s,
                "within_rpo": None if rpo_s is None else interval + cost_s <= rpo_s * (1 + 1e-12)}

    methods = [row("young", tn.young_interval(cost_s, mtbf_s)),
               row("daly", tn.daly_interval(cost_s, mtbf_s))]
    if rpo_s is not None:
        methods.append(row("rpo-cap", tn.rpo_cap(rpo_s, cost_s)))
    rep: dict[str, Any] = {
        "inputs": {"cost_s": cost_s, "cost_source": source, "measured": measured,
                   "mtbf_s": mtbf_s, "rpo_s": rpo_s, "restart_s": restart_s, "step_s": step_s},
        "recommended": {"interval_s": rec.interval_s, "interval_steps": rec.interval_steps,
                        "method": rec.method, "expected_overhead": rec.expected_overhead,
                        "expected_waste": tn.expected_waste(rec.interval_s, cost_s, mtbf_s,
                                                            restart_s),
                        "expected_lost_work_s": rec.expected_lost_work,
                        "worst_lost_work_s": rec.worst_lost_work_s, "why": rec.why},
        "methods": methods,
        "plot": None,
    }
    if plot is not None:
        plot_waste(rep, plot)
        rep["plot"] = plot
    return rep


def plot_waste(rep: dict[str, Any], out: str) -> None:
    """Expected overhead against the interval (log scale), with the choices marked."""
    plt = pyplot()

    from . import tuning as tn
    i = rep["inputs"]
    c, m, r = i["cost_s"], i["mtbf_s"], i["restart_s"]
    xs = [row["interval_s"] for row in rep["methods"]] + [rep["recommended"]["interval_s"]]
    lo, hi = min(xs) / 20, min(max(xs) * 20, 50 * m)
    grid = np.geomspace(lo, hi, 400)
    ys = [100 * tn.expected_overhead(float(x), c, m, r) for x in grid]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid, ys, color="black", lw=1.5, label="expected overhead")
    styles = {"young": ("tab:blue", "--"), "daly": ("tab:green", ":"), "rpo-cap": ("tab:red", "-")}
    for row in rep["methods"]:
        col, ls = styles[row["method"]]
        ax.axvline(row["interval_s"], color=col, ls=ls, lw=1,
                   label=f"{row['method']}: {tn.fmt_duration(row['interval_s'])}")
    if i["rpo_s"] is not None:
        ax.axvspan(rep["methods"][-1]["interval_s"], hi, color="tab:red", alpha=0.07,
                   label="beyond the RPO")
    rc = rep["recommended"]
    ax.plot([rc["interval_s"]], [100 * rc["expected_overhead"]], "o", color="tab:orange",
            label=f"recommended ({rc['method']})")
    ax.set_xscale("log")
    ax.set_xlabel("checkpoint interval (s of work)")
    ax.set_ylabel("expected overhead (% of wall time)")
    ax.set_ylim(0, min(100, max(5 * 100 * rc["expected_overhead"], 1)))
    ax.set_title(f"C = {tn.fmt_duration(c)}, MTBF = {tn.fmt_duration(m)}, "
                 f"R = {tn.fmt_duration(r)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)


def format_tune(rep: dict[str, Any]) -> str:
    from .tuning import fmt_duration as fd
    i, rc = rep["inputs"], rep["recommended"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731

    def secs(v: float) -> str:
        return f"{v:.3g} s" if v < 100 else f"{v:.0f} s"

    steps = (f" = {rc['interval_steps']} steps of {fd(i['step_s'])}"
             if rc["interval_steps"] is not None else "")
    head = [f"checkpoint cost C {fd(i['cost_s'])} ({i['cost_source']})",
            f"MTBF M {fd(i['mtbf_s'])}, RPO {fd(i['rpo_s']) if i['rpo_s'] is not None else 'none'}"
            f", restart R {fd(i['restart_s'])}"]
    if i["measured"]:
        head[0] += f"; median pause {fd(i['measured']['median_pause_s'])}"
    step = i["step_s"] is not None
    rpo = i["rpo_s"] is not None
    headers = ["method", "interval"] + (["steps"] if step else []) + \
        ["overhead", "lost work (mean)", "lost work (worst)"] + (["within RPO"] if rpo else [])
    rows = []
    for row in rep["methods"]:
        rows.append([row["method"], secs(row["interval_s"])]
                    + ([row["interval_steps"]] if step else [])
                    + [pct(row["expected_overhead"]), secs(row["expected_lost_work_s"]),
                       secs(row["worst_lost_work_s"])]
                    + ([("yes" if row["within_rpo"] else "no")] if rpo else []))
    out = head + [
        "",
        f"checkpoint every {secs(rc['interval_s'])}"
        + (f" ({fd(rc['interval_s'])})" if rc["interval_s"] >= 120 else "") + f" of work{steps}"
        f"  [{rc['method']}]",
        f"  expected overhead   {pct(rc['expected_overhead'])} of wall time",
        f"  expected lost work  {secs(rc['expected_lost_work_s'])} per failure "
        f"(at most {secs(rc['worst_lost_work_s'])})",
        f"  why: {rc['why']}",
        "",
        table(headers, rows),
    ]
    if rep["plot"]:
        out += ["", f"plot written to {rep['plot']}"]
    return "\n".join(out)
