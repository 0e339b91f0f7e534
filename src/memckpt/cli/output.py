"""How the command line prints: aligned tables, sizes and durations for
people, JSON for scripts, and the progress line on stderr."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any, Callable, TextIO

from .base import CliError


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


# -- the report: a table for people, JSON for scripts -----------------------------
def print_report(args: argparse.Namespace, rep: dict[str, Any],
                 fmt: Callable[[dict[str, Any]], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rep, indent=2, default=json_default))
    else:
        print(fmt(rep))


def json_default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


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
