"""The program's steps as a Checkpointer sees them: the time between two
:meth:`Checkpointer.maybe_checkpoint` calls (a checkpoint's own call left
out), split by whether an epoch was persisting meanwhile.

On a machine with no idle core the persist thread, the C writer's threads
and a fork child take CPU from the program between checkpoints, and the
persist thread takes the GIL for its Python parts: the program is not paused,
but its steps get slower while an epoch is in flight. No epoch's timings
show it (``call_s`` ends when checkpoint() returns). What it shows in is the
stepping thread's *off-CPU* time, wall time minus the thread's CPU time
(``time.thread_time()``): waiting for a CPU or for the GIL. The same steps'
CPU time holds the tracker's first-write faults (and mode fork's copy-on-write
faults), which the calibration's tracking term accounts for; counting only
off-CPU time here keeps the two terms apart.

Each epoch's manifest records, in ``extra["steps"]``, the steps since the
checkpoint before it returned, in three kinds by when each began: while
that epoch was persisting (``flight_*``); after it was durable, within as
long again as it had been in flight and at least ``SETTLE_S`` (``after_*``:
a scheduler that shares the CPUs fairly lets a thread that waited catch up,
and favours a process that was busy a moment ago, so these steps wait less
than usual); and later (``idle_*``: the steady state). Each kind has
its count and its wall and CPU seconds. The overhead account
(checkpoint/stats.py) takes the persist interference as the off-CPU time of
the in-flight and catch-up steps beyond what the steady steps spent off-CPU
per second of their CPU (the machine's own load, which the program meets
with or without checkpointing).

With :func:`memckpt.checkpoint.tracking.measure_tracking`, a record also
holds ``base_*``: the untracked steps the clock ran (on a second arena, at
a boundary with no epoch in flight) to measure the tracker's cost on the run
(checkpoint/tracking.py); their time is in no step of the run.

The cost to a loop: two clock reads (one of them the thread's CPU clock, a
system call of well under a microsecond) at each maybe_checkpoint().
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

KEYS = ("flight_steps", "flight_wall_s", "flight_cpu_s", "idle_steps", "idle_wall_s",
        "idle_cpu_s")
# the steps in the catch-up window after an epoch became durable (records
# written before these keys existed have none)
AFTER_KEYS = ("after_steps", "after_wall_s", "after_cpu_s")
# the untracked rounds between the checkpoints (checkpoint/tracking.py; none in
# records written before them, or without measure_tracking): their timed steps,
# the rounds' wall time (warm-up included) and the rounds' whole CPU (with
# base_wall_s: the machine's off-CPU time per CPU second with nothing in
# flight, the interference term's baseline where no step is steady)
BASE_KEYS = ("base_steps", "base_wall_s", "base_cpu_s", "base_round_cpu_s")

# The catch-up lasts at least this long: Linux's scheduler shares the CPUs by
# averages of recent runnable time that decay by half every 32 ms (PELT), so
# a process whose threads were busy a moment ago is still favoured for a few
# half-lives. Measured (bench/bench_overhead.py, 2 CPUs at load 5-8, 50 ms
# intervals): the steps more than twice the flight after a checkpoint waited
# 0.5-0.6 times as long per CPU second as the same steps untracked.
SETTLE_S = 0.25


class StepClock:
    """Step boundaries (:meth:`boundary`, at every maybe_checkpoint), the
    return of a checkpoint (:meth:`launched`) and the durability of its epoch
    (:meth:`durable`, on the persist thread). :meth:`take` hands the sums
    since the last take to the next epoch's manifest."""

    def __init__(self) -> None:
        self._reset()
        self._at: tuple[int, float, float] | None = None  # (thread, wall, cpu) of the last boundary
        self._launched: float | None = None  # perf_counter() when the epoch in flight was handed off
        self._durable: float | None = None   # ... and when it became durable
        self.rounds: Any = None  # tracking.UntrackedRounds, from measure_tracking()
        # whether the checkpointer's own work still runs (the persist thread, up to the
        # end of what it does after a commit): the untracked rounds wait for it
        self.busy: Callable[[], bool] | None = None

    def _reset(self) -> None:
        self._n = [0, 0, 0, 0]          # steps: [in flight, idle, after, untracked rounds]
        self._wall = [0.0, 0.0, 0.0, 0.0]
        self._cpu = [0.0, 0.0, 0.0, 0.0]
        self._round_cpu = 0.0           # the rounds' CPU, warm-up included

    def boundary(self) -> None:
        """A step ended (and the next began): count it."""
        me, wall, cpu = threading.get_ident(), time.perf_counter(), time.thread_time()
        at, self._at = self._at, (me, wall, cpu)
        if at is None or at[0] != me:  # the first step seen, or another thread's clock
            return
        launched, durable = self._launched, self._durable
        if launched is None:
            return  # before the first checkpoint: nothing to compare with
        if durable is None or durable > at[1]:
            k = 0
        else:  # within the flight's own length after it (or SETTLE_S): catching up
            k = 2 if at[1] < durable + max(durable - launched, SETTLE_S) else 1
        self._n[k] += 1
        self._wall[k] += wall - at[1]
        self._cpu[k] += cpu - at[2]
        rounds = self.rounds
        if rounds is not None:
            rounds.run_cpu += cpu - at[2]
            # nothing in flight, and the persist thread done with what follows a commit
            # (the next epoch's writer made ready: store/prepared.py): rounds right after
            # durable() met that work on the other CPU, and came out slower than untracked
            # steps elsewhere (the sparse writer: 2.6% against 3.1-3.3%; benchmarks.md)
            if durable is not None and rounds.due() \
                    and not (self.busy is not None and self.busy()):
                n, w, c, all_cpu = rounds.run()
                self._n[3] += n
                self._wall[3] += w
                self._cpu[3] += c
                self._round_cpu += all_cpu
                # the next step of the run starts after the round
                self._at = (me, time.perf_counter(), time.thread_time())

    def launched(self) -> None:
        """A checkpoint returns (its epoch persists from here): the next step starts now."""
        now = time.perf_counter()
        self._launched, self._durable = now, None
        if self.rounds is not None:
            self.rounds.done_this_interval = False
        self._at = (threading.get_ident(), now, time.thread_time())

    def durable(self) -> None:
        """The epoch in flight is durable: steps from here are idle."""
        self._durable = time.perf_counter()

    def take(self) -> dict[str, Any] | None:
        """The sums since the last take (None if no step was counted), and start again."""
        rec = self.peek()
        self._reset()
        return rec

    def peek(self) -> dict[str, Any] | None:
        """The sums since the last take, left in place (a live account)."""
        n, wall, cpu = self._n, self._wall, self._cpu
        if not any(n):
            return None
        rec = dict(zip(KEYS + AFTER_KEYS, (n[0], wall[0], cpu[0], n[1], wall[1], cpu[1],
                                           n[2], wall[2], cpu[2])))
        if n[3]:
            rec.update(zip(BASE_KEYS, (n[3], wall[3], cpu[3], self._round_cpu)))
        return rec
