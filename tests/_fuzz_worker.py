"""The process tests/test_fuzz_store.py runs the store readers in.

Reads one JSON request per line on stdin ({"path": STORE}) and answers one
JSON line on stdout: {"fail": null | "why, with the traceback", "outcomes":
{operation: "ok" | error class name}}.

Every operation of a reader on the (possibly hostile) store runs under:

- a time limit (SIGALRM; ``--op-timeout`` seconds): running out is a "hang";
- an address-space limit (RLIMIT_AS: what the process had mapped after its
  imports plus ``--memory-mib``): an allocation sized from the input rather
  than validated first ends in MemoryError, reported as "unbounded memory".

A MemckptError (CorruptionError, FormatError, EpochNotFound, ...) is the
expected answer to bad input; any other exception fails the input. A crash
(a signal) ends this process: the parent sees EOF and fails the input too.
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import traceback
from typing import Any, Callable

import numpy as np

from memckpt.errors import MemckptError
from memckpt.store import Store

#: read_into needs an (npages, page_size) buffer: the harness allocates it
#: only up to this size (the caller's choice, not the reader's)
MAX_OUT_BYTES = 64 << 20


class Hang(BaseException):
    """An operation ran past its time limit (not an Exception: nothing catches it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


class Failed(Exception):
    pass


def run(path: str, op_timeout: float) -> dict[str, Any]:
    outcomes: dict[str, str] = {}

    def call(name: str, fn: Callable[[], Any]) -> Any:
        signal.setitimer(signal.ITIMER_REAL, op_timeout)
        try:
            value = fn()
            outcomes[name] = "ok"
            return value
        except MemckptError as exc:
            outcomes[name] = type(exc).__name__
            return None
        except Hang:
            raise Failed(f"{name}: hang (no answer in {op_timeout} s)") from None
        except MemoryError:
            raise Failed(f"{name}: unbounded memory (MemoryError under RLIMIT_AS):\n"
                         + traceback.format_exc()) from None
        except Exception:
            raise Failed(f"{name}: {traceback.format_exc()}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    try:
        store = call("open", lambda: Store(path))
        if store is None:
            return {"fail": None, "outcomes": outcomes}
        call("ls", store.epochs)
        nums = call("epoch_numbers", store.epoch_numbers) or []
        for e in nums:
            call(f"info {e}", lambda: store.info(e))
            call(f"manifest {e}", lambda: store.manifest(e))
            call(f"layout {e}", lambda: store.layout(e))
            call(f"chain {e}", lambda: store.chain(e))
            doc = call(f"manifest {e} (for read)", lambda: store.manifest(e))
            if doc is not None and doc["npages"] * store.page_size <= MAX_OUT_BYTES:
                out = np.empty((doc["npages"], store.page_size), dtype=np.uint8)
                call(f"read_into {e}", lambda: store.read_into(e, out))
                if doc["npages"]:
                    want = np.array([0, doc["npages"] - 1, doc["npages"] // 2])
                    call(f"read_into {e} pages", lambda: store.read_into(e, out, want))
        for a in nums:
            for b in nums:
                if a < b:
                    call(f"changed_pages {a} {b}", lambda: store.changed_pages(a, b))
        call("verify", store.verify)
        for e in nums:
            call(f"verify {e}", lambda: store.verify(e))
        if len(nums) >= 2:  # writes: last, on the worker's own copy of the store
            call(f"compact {nums[0]} {nums[-1]}", lambda: store.compact(nums[0], nums[-1]))
            call("verify after compact", store.verify)
    except Failed as exc:
        return {"fail": str(exc), "outcomes": outcomes}
    return {"fail": None, "outcomes": outcomes}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op-timeout", type=float, default=20.0)
    ap.add_argument("--memory-mib", type=int, default=1024)
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    limit = _vm_size() + (args.memory_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({"ready": True, "rlimit_as": limit}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(run(req["path"], args.op_timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
