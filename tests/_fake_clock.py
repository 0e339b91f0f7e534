"""A clock the test moves, for modules that read ``time.perf_counter`` and
``time.thread_time`` (checkpoint/steps.py, checkpoint/tracking.py)."""
from __future__ import annotations

from typing import Any


def fake_clock(monkeypatch: Any, *modules: Any) -> dict[str, float]:
    """Make each module's ``time`` a clock read from the returned dict
    (keys ``wall`` and ``cpu``), which the test sets."""
    now = {"wall": 0.0, "cpu": 0.0}

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return now["wall"]

        @staticmethod
        def thread_time() -> float:
            return now["cpu"]

    for m in modules:
        monkeypatch.setattr(m, "time", Clock)
    return now
