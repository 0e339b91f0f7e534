"""What a checkpoint reports is what a stopwatch measures (issue 12).

- ``call_s``: how long ``checkpoint()`` blocked its caller, against a wall
  clock read around the call, in every mode; the manifest records the same
  number; it holds the pause and the wait for the epoch before.
- ``pause_s`` in modes copy and fork: the program is stopped for it. A
  Python thread that runs throughout, reading the clock in a loop, sees one
  gap that covers the pause (before issue 12 the copy ran with the GIL
  released: the thread kept running, and no gap came near pause_s).
- mode sync: the caller is stopped until the epoch is durable, so its pause
  holds the write: pause_s is total_s, and call_s covers both.
"""
import threading
import time

import numpy as np
import pytest

import memckpt
from memckpt.capture import MODES

PS = memckpt.features().page_size


def need(mode):
    if mode == "background":
        ok, why = memckpt._core.bg_supported(memckpt._core.backend_lookup("uffd-sync"))
        if not ok:
            pytest.skip(f"mode background needs uffd-sync: {why}")


@pytest.mark.parametrize("mode", MODES)
def test_call_s_is_the_time_checkpoint_blocks_its_caller(mode, tmp_path):
    need(mode)
    with memckpt.Arena(256 * PS) as arena:
        x = arena.array("x", 256 * PS, np.uint8)
        with memckpt.Checkpointer(arena, tmp_path / "s", mode=mode) as ck:
            for i in range(6):
                x[(i * 37 % 256) * PS] = i + 1
                t0 = time.perf_counter()
                p = ck.checkpoint()
                wall = time.perf_counter() - t0
                info = p.result()
                assert p.call_s is not None and 0 <= p.call_s <= wall, (p.call_s, wall)
                assert p.call_s >= p.pause_s + p.wait_s - 1e-6, (p.call_s, p.pause_s, p.wait_s)
                if mode == "sync":
                    # measured by the commit, once the pages are durable: the
                    # manifest's own write and rename come after
                    assert info.call_s <= p.call_s
                else:
                    assert info.call_s == pytest.approx(p.call_s, abs=1e-9)
                assert info.pause_s == pytest.approx(p.pause_s, abs=1e-9)
                if mode == "sync":
                    assert info.pause_s == info.total_s        # stopped until durable
                    assert info.call_s >= info.total_s
                else:
                    assert info.pause_s < info.total_s
        st = memckpt.Store(tmp_path / "s")
        assert len(st.epochs()) == 6 and all(e.call_s is not None for e in st.epochs())


class Spinner:
    """Reads the clock in a loop, keeping the longest gap between two reads
    (the longest time it was kept from running)."""

    def __init__(self) -> None:
        self.stop = False
        self.gaps: list[tuple[float, float]] = []
        self.last = 0.0  # its latest read: every gap that ended before it is in gaps
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self.stop:
            now = time.perf_counter()
            if now - last > 2e-4:
                self.gaps.append((last, now))
            last = self.last = now

    def longest_within(self, a: float, b: float) -> float:
        """The longest gap over [a, b], once the thread has read the clock
        after b: a gap is recorded when the thread runs again, and a thread the
        load kept off the CPU after the pause had not recorded it yet."""
        deadline = time.perf_counter() + 60
        while self.last <= b and time.perf_counter() < deadline:
            time.sleep(0.001)
        assert self.last > b, "the clock-reading thread did not run for 60 s"
        return max((e - s for s, e in self.gaps if s < b and e > a), default=0.0)

    def __enter__(self) -> "Spinner":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self._t.join()


@pytest.mark.parametrize("mode", ["copy", "fork"])
def test_the_pause_stops_a_running_python_thread(mode, tmp_path):
    npages = (64 << 20) // PS  # a full epoch of 64 MiB: a pause of milliseconds
    with memckpt.Arena(npages * PS) as arena:
        x = arena.array("x", npages * PS // 8, np.uint64)
        x[:] = np.arange(x.size, dtype=np.uint64)
        with memckpt.Checkpointer(arena, tmp_path / "s", mode=mode) as ck, Spinner() as sp:
            time.sleep(0.01)
            rows = []
            for i in range(3):
                x[i * 1000:(i + 1) * 1000] += 1
                t0 = time.perf_counter()
                p = ck.checkpoint()
                t1 = time.perf_counter()
                p.result()
                rows.append((p.pause_s, sp.longest_within(t0, t1), p.kind))
                time.sleep(0.01)
            del x
    # the thread was kept from running for the whole pause (the GIL held:
    # pause_s is measured inside that one call)
    for pause, gap, kind in rows:
        assert gap >= pause, (mode, kind, pause, gap, rows)
    assert rows[0][0] > 1e-3, rows  # the check means something only for a real pause
