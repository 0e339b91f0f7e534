"""Time to remote durability beside the local one, for a full epoch and a 1%
incremental epoch, medians of --reps in one run, against a moto S3 server
started here on loopback (a separate process; it keeps objects in memory).

Columns, per epoch kind:
  local        Store: write + commit, durable on the local disk (the floor here)
  s3           S3Store: spool locally, upload pack + index, conditional manifest PUT
  replica      a local commit, then Replicator (told at once): the time from
               the start of the local write to the replica's manifest PUT
  np+put       the tool a user would pick: np.save of the arena into memory
               and one put_object (no increments: always the whole arena)
  np+fsync     np.save to a local file + fsync (the local baseline)
and the restore of the newest epoch: local read_into vs S3 (ranged GETs into
a fresh S3Store's sparse mirror, then the C reader) vs one GET + np.load.

    python bench/bench_s3.py                  # 128 MiB arena, 5 reps
    python bench/bench_s3.py --size-mib 32 --reps 3
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from memckpt.store import Store
from memckpt.store.replicate import Replicator
from memckpt.store.s3 import S3Store

PS = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen, dict]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opts = {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1",
            "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, opts
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def write(store, state, pages, kind, parent):
    t0 = time.perf_counter()
    w = store.begin(kind, parent=parent, npages=state.shape[0])
    w.add_pages(pages, state[pages])
    info = w.commit(pages_dirty=len(pages), pause_s=0.0, started=t0)
    return info, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.01)
    args = ap.parse_args()
    npages = args.size_mib * (1 << 20) // PS
    rng = np.random.default_rng(0)
    state = rng.integers(0, 256, (npages, PS), dtype=np.uint8)
    allp = np.arange(npages, dtype=np.uint64)
    proc, opts = start_moto()
    import boto3
    client = boto3.client("s3", **opts)
    tmp = tempfile.mkdtemp(prefix="bench-s3-")
    res: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        res.setdefault(k, []).append(v)
    try:
        for rep in range(args.reps):
            bucket = f"bench-{rep}"
            client.create_bucket(Bucket=bucket)
            local = Store(os.path.join(tmp, f"l{rep}"), create=True, page_size=PS)
            s3 = S3Store(f"s3://{bucket}/direct", create=True, page_size=PS, storage_options=opts)
            # the replica: started before the local writes, told of each commit
            r = Replicator(local, f"s3://{bucket}/replica", storage_options=opts)
            # full
            full_l, t = write(local, state, allp, "full", None)
            r.submit(full_l.epoch)
            add("full local", t)
            r.wait()
            add("full replica", r.records[full_l.epoch].remote_lag_s + full_l.total_s)
            full_s, t = write(s3, state, allp, "full", None)
            add("full s3", t)
            # 1% incremental, parent the full epoch
            k = max(1, int(npages * args.ratio))
            pages = np.sort(rng.choice(npages, k, replace=False)).astype(np.uint64)
            state[pages, 0] += 1
            inc_l, t = write(local, state, pages, "incremental", full_l.epoch)
            r.submit(inc_l.epoch)
            add("1% local", t)
            r.wait()
            add("1% replica", r.records[inc_l.epoch].remote_lag_s + inc_l.total_s)
            r.close()
            _, t = write(s3, state, pages, "incremental", full_s.epoch)
            add("1% s3", t)
            # baselines: the whole arena every time
            for kind in ("full", "1%"):
                t0 = time.perf_counter()
                buf = io.BytesIO()
                np.save(buf, state)
                client.put_object(Bucket=bucket, Key=f"np-{kind}", Body=buf.getvalue())
                add(f"{kind} np+put", time.perf_counter() - t0)
                t0 = time.perf_counter()
                with open(os.path.join(tmp, f"np{rep}.npy"), "wb") as f:
                    np.save(f, state)
                    f.flush()
                    os.fsync(f.fileno())
                add(f"{kind} np+fsync", time.perf_counter() - t0)
            # restore of the newest epoch
            out = np.empty_like(state)
            t0 = time.perf_counter()
            local.read_into(inc_l.epoch, out)
            add("restore local", time.perf_counter() - t0)
            fresh = S3Store(s3.url, storage_options=opts)
            t0 = time.perf_counter()
            fresh.read_into(fresh.latest(), out)
            add("restore s3", time.perf_counter() - t0)
            assert np.array_equal(out, state)
            t0 = time.perf_counter()  # the user's tool: one GET of the whole array, np.load
            body = client.get_object(Bucket=bucket, Key="np-1%")["Body"].read()
            np.load(io.BytesIO(body))
            add("restore np+get", time.perf_counter() - t0)
            del body
            os.unlink(os.path.join(tmp, f"np{rep}.npy"))
    finally:
        proc.kill()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"arena {args.size_mib} MiB, {args.ratio:.0%} incremental, {args.reps} reps, moto on loopback; "
          f"medians in ms, ratio to the same row's local commit")
    for kind in ("full", "1%"):
        base = med[f"{kind} local"]
        cells = "  ".join(f"{c} {med[f'{kind} {c}'] * 1e3:8.1f} ({med[f'{kind} {c}'] / base:4.1f}x)"
                          for c in ("local", "s3", "replica", "np+put", "np+fsync"))
        print(f"{kind:>5}: {cells}")
    print(f"restore: local {med['restore local'] * 1e3:.1f}  s3 {med['restore s3'] * 1e3:.1f} "
          f"({med['restore s3'] / med['restore local']:.1f}x)  np+get {med['restore np+get'] * 1e3:.1f} "
          f"({med['restore np+get'] / med['restore local']:.1f}x)")


if __name__ == "__main__":
    main()
