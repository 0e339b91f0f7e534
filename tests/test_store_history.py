"""A checkpoint's cost does not grow with the store's history (issue 12).

Not timed: the file-system calls a small epoch makes are counted (listings,
stats, opens, reads, syncs; manifests read; chain walks) at epoch ~20 and at
epoch ~500, and must be the same. The writer keeps its head (store/head.py)
instead of rediscovering it; so what another writer does between two epochs
must still be seen: another process's commits, a prune, a writer killed while
holding the lock, a lock file removed, an epoch that appears without the lock.
The syncs left per epoch are the four docs/format.md lists, in its order."""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import memckpt
from memckpt import EpochNotFound
from memckpt.store import Store
from memckpt.store import catalog
from memckpt.store import format as fmt

from _store_util import PS, random_pages, read, write_epoch

NPAGES = 16
_CALLS = ("listdir", "scandir", "stat", "lstat", "open", "fstat", "pread", "read", "rename",
          "unlink", "fsync", "fdatasync", "ftruncate", "pwrite")


@contextlib.contextmanager
def no_sync() -> Iterator[None]:
    """Builds of long histories: durability is not what they are for."""
    saved = os.fsync, os.fdatasync
    os.fsync = os.fdatasync = lambda fd: None  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync, os.fdatasync = saved  # type: ignore[assignment]


def build(path: Path, epochs: int, layout: dict[str, Any] | None = None, seed: int = 0) -> np.ndarray:
    """A store of `epochs` chained epochs (one full, then one page each); returns the content."""
    rng = np.random.default_rng(seed)
    state = random_pages(rng, NPAGES)
    layout = {"nbytes": NPAGES * PS, "arrays": []} if layout is None else layout
    with no_sync():
        s = Store(path, create=True, page_size=PS)
        w = s.begin(kind="full", layout=layout, npages=NPAGES)
        w.add_pages(np.arange(NPAGES, dtype=np.uint64), state)
        e = w.commit(pages_dirty=NPAGES, pause_s=0.0).epoch
        for i in range(1, epochs):
            p = i % NPAGES
            state[p, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
            w = s.begin(kind="incremental", parent=e, layout=layout, npages=NPAGES)
            w.add_pages(np.array([p], np.uint64), state[p:p + 1])
            e = w.commit(pages_dirty=1, pause_s=0.0).epoch
    assert e == epochs
    return state


class Counts:
    """Calls to the os functions above, manifests read, chain walks, files synced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.synced: list[tuple[str, str]] = []
        self.on = False
        for name in _CALLS:
            real = getattr(os, name)

            def counted(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
                if self.on:
                    self.calls[_name] += 1
                    if _name in ("fsync", "fdatasync"):
                        self.synced.append((_name, os.readlink(f"/proc/self/fd/{a[0]}")))
                return _real(*a, **k)
            monkeypatch.setattr(os, name, counted)
        real_read = catalog._read_fd

        def read_manifest(*a: Any, **k: Any) -> bytes:
            if self.on:
                self.calls["manifest read"] += 1
            return real_read(*a, **k)
        monkeypatch.setattr(catalog, "_read_fd", read_manifest)
        real_chain = Store.chain

        def chain(store: Store, epoch: int) -> list[int]:
            if self.on:
                self.calls["chain walk"] += 1
            return real_chain(store, epoch)
        monkeypatch.setattr(Store, "chain", chain)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[collections.Counter[str]]:
        self.calls = collections.Counter()
        self.synced = []
        self.on = True
        try:
            yield self.calls
        finally:
            self.on = False


def small_epochs(s: Store, e: int, n: int, state: np.ndarray) -> int:
    """n epochs of 4 pages each on epoch e; returns the last."""
    for i in range(n):
        w = s.begin(kind="incremental", parent=e, layout={"nbytes": NPAGES * PS, "arrays": []},
                    npages=NPAGES)
        sel = np.arange(i % 4, NPAGES, 4, dtype=np.uint64)[:4]
        state[sel.astype(np.int64), 8:16] = i + 1
        w.add_pages(sel, state[sel.astype(np.int64)])
        e = w.commit(pages_dirty=4, pause_s=0.0).epoch
    return e


def test_a_small_epoch_makes_the_same_calls_at_epoch_20_and_at_500(tmp_path, monkeypatch):
    counts = Counts(monkeypatch)
    seen = {}
    for depth in (20, 500):
        path = tmp_path / f"d{depth}"
        state = build(path, depth)
        s = Store(path)
        # the first write of a Store sweeps and checks the chain, once
        e = small_epochs(s, depth, 1, state)
        with counts() as calls:
            small_epochs(s, e, 5, state)
        seen[depth] = dict(calls)
        assert s.latest() == depth + 6
        out = np.empty_like(state)
        s.read_into(depth + 6, out)
        assert np.array_equal(out, state)
    assert seen[20] == seen[500], seen
    for what in ("listdir", "scandir", "manifest read", "chain walk"):
        assert seen[500].get(what, 0) == 0, (what, seen[500])
    # what is left: the commit's syncs (the manifest's and the directory's
    # from Python; the pack's and the index's in the C writer: see below),
    # and a few stats per epoch
    assert seen[500].get("fsync", 0) + seen[500].get("fdatasync", 0) == 2 * 5
    assert seen[500]["stat"] + seen[500]["lstat"] <= 4 * 5, seen[500]


def test_a_checkpoint_makes_the_same_calls_at_epoch_20_and_at_500(tmp_path, monkeypatch):
    """The same through a Checkpointer (mode copy, until durable): the
    checkpointer's own look at its parent (info) reads no manifest either."""
    counts = Counts(monkeypatch)
    seen = {}
    with memckpt.Arena(NPAGES * PS) as a:
        a.array("pages", (NPAGES, PS), np.uint8)
        layout = a.layout()
    for depth in (20, 500):
        path = tmp_path / f"d{depth}"
        build(path, depth, layout)
        ck = memckpt.Checkpointer.resume(path, mode="copy")
        pages = ck.arena.arrays()["pages"]
        try:
            for i in range(6):
                if i == 1:
                    counts.on, counts.calls = True, collections.Counter()
                pages[[1, 5, 9, 13], :8] = i + 7
                info = ck.checkpoint().result()
                ck.wait()  # and its after-commit work (the next writer, prepared): counted whole
                assert (info.kind, info.pages_stored) == ("incremental", 4)
            counts.on = False
            seen[depth] = dict(counts.calls)
            with memckpt.restore(path) as back:
                assert np.array_equal(back.arrays()["pages"], pages)
        finally:
            counts.on = False
            arena = ck.arena
            ck.close()
            del pages
            arena.close()
    assert seen[20] == seen[500], seen
    for what in ("listdir", "scandir", "manifest read", "chain walk"):
        assert seen[500].get(what, 0) == 0, (what, seen[500])


_ONE_EPOCH = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from memckpt.store import Store
    import test_store_history as h
    s = Store({path!r})
    state = np.load({state!r})
    print(h.small_epochs(s, s.latest(), 1, state))
""")


def test_the_syncs_of_an_epoch_are_the_four_the_format_lists(tmp_path):
    """docs/format.md, "Writing an epoch": pack and index (the C writer
    syncs the two at once), then the manifest's temporary, then the
    directory after the rename; nothing else. Seen by strace: the pack's
    and the index's syncs are made in C, out of Python's sight."""
    strace = subprocess.run(["which", "strace"], capture_output=True, text=True).stdout.strip()
    if not strace:
        pytest.skip("strace is not installed (apt-get install strace)")
    state = build(tmp_path / "st", 3)
    np.save(tmp_path / "state.npy", state)
    d = str(tmp_path / "st")
    code = _ONE_EPOCH.format(tests=str(Path(__file__).parent), path=d,
                             state=str(tmp_path / "state.npy"))
    log = tmp_path / "strace.log"
    r = subprocess.run([strace, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(log),
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode and "ptrace" in r.stderr:
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    e = int(r.stdout.split()[-1])
    synced = []
    for line in log.read_text().splitlines():
        if "(" in line and "<" in line:
            call = line.split("(")[0].split()[-1]
            path = line.split("<", 1)[1].split(">", 1)[0]
            if path.startswith(d):
                synced.append((call, path))
    name = f"{d}/e{e:08d}"
    assert sorted(synced[:2]) == [("fdatasync", f"{name}-0.idx"), ("fdatasync", f"{name}-0.pack")]
    assert synced[2:] == [("fsync", f"{name}.json.tmp"), ("fsync", d)], synced


# -- what another writer does between two epochs is seen ------------------------------

_OTHER = textwrap.dedent("""
    import sys, os, numpy as np
    sys.path.insert(0, {tests!r})
    from memckpt.store import Store
    from _store_util import write_epoch
    s = Store({path!r})
    state = np.load({state!r})
    what = sys.argv[1]
    if what == "commit":      # two epochs on the latest
        e = s.latest()
        for k in range(2):
            state[k, :4] = 200 + k
            e = write_epoch(s, state, [k], parent=e)
        np.save({state!r}, state)
    elif what == "prune":
        print(s.prune(keep_last=1))
    elif what == "killed":    # commits one, then dies holding the lock of the next
        state[2, :4] = 222
        write_epoch(s, state, [2], parent=s.latest())
        np.save({state!r}, state)
        w = s.begin(kind="incremental", parent=s.latest(), layout={{}}, page_size=4096, npages=16)
        os.kill(os.getpid(), 9)
""")


def other(tmp_path: Path, path: Path, state: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """Run another writer process on the store; returns the content it left, and its output."""
    np.save(tmp_path / "state.npy", state)
    src = _OTHER.format(tests=str(Path(__file__).resolve().parent), path=str(path),
                        state=str(tmp_path / "state.npy"))
    r = subprocess.run([sys.executable, "-c", src, what], capture_output=True, text=True,
                       timeout=120)
    if what == "killed":
        assert r.returncode == -signal.SIGKILL, r.stderr
    else:
        assert r.returncode == 0, r.stderr
    return np.load(tmp_path / "state.npy"), r.stdout


def check(path: Path, epoch: int, want: np.ndarray) -> None:
    """A reader of its own sees the epoch, and it restores bit for bit."""
    reader = Store(path)
    assert reader.latest() == epoch
    reader.verify()
    assert np.array_equal(read(reader, epoch), want)


def test_another_processs_commits_are_seen_by_the_writer_and_by_readers(tmp_path):
    path = tmp_path / "st"
    state = build(path, 3)
    s = Store(path)
    reader = Store(path)
    state[7, :4] = 1
    assert write_epoch(s, state, [7], parent=3) == 4   # s has a head now
    state, _ = other(tmp_path, path, state, "commit")  # epochs 5 and 6, by another process
    assert reader.latest() == 6
    assert np.array_equal(read(reader, 6), state)
    # s continues from the other writer's epoch: numbered after it, tied to it
    state[8, :4] = 2
    assert write_epoch(s, state, [8], parent=6) == 7
    assert s.chain(7) == list(range(1, 8))
    check(path, 7, state)
    # and from its own older epoch (a branch): still numbered after everything
    old = read(s, 4)
    old[9, :4] = 3
    assert write_epoch(s, old, [9], parent=4) == 8
    check(path, 8, old)


def test_a_prune_by_another_process_is_seen(tmp_path):
    path = tmp_path / "st"
    state = random_pages(np.random.default_rng(1), NPAGES)
    s = Store(path, create=True, page_size=PS)
    for _ in range(4):
        state[0, :4] += 1
        write_epoch(s, state, None, kind="full")
    _, out = other(tmp_path, path, state, "prune")
    assert out.split() == ["[1,", "2,", "3]"]
    with pytest.raises(EpochNotFound):
        write_epoch(s, state, [1], parent=3)  # never built on a retired epoch
    state[1, :4] = 9
    assert write_epoch(s, state, [1], parent=4) == 5
    check(path, 5, state)


def test_a_writer_killed_holding_the_lock_is_seen(tmp_path):
    path = tmp_path / "st"
    state = build(path, 3)
    s = Store(path)
    state[7, :4] = 1
    assert write_epoch(s, state, [7], parent=3) == 4
    state, _ = other(tmp_path, path, state, "killed")  # committed 5, died in the writer of 6
    state[8, :4] = 2
    assert write_epoch(s, state, [8], parent=5) == 6
    check(path, 6, state)


def test_a_removed_lock_file_or_an_epoch_written_without_the_lock_is_seen(tmp_path):
    path = tmp_path / "st"
    state = build(path, 3)
    s = Store(path)
    state[7, :4] = 1
    assert write_epoch(s, state, [7], parent=3) == 4
    # another Store commits epoch 5, then the lock file is made to say what s left
    # there (a writer that took no lock): s must not number its next epoch 5 again
    left = (path / fmt.LOCK_NAME).read_bytes()
    state[8, :4] = 2
    assert write_epoch(Store(path), state, [8], parent=4) == 5
    (path / fmt.LOCK_NAME).write_bytes(left)
    state[9, :4] = 3
    assert write_epoch(s, state, [9], parent=5) == 6
    check(path, 6, state)
    # the lock file removed (and another writer in between): found again by a listing
    state[10, :4] = 4
    assert write_epoch(Store(path), state, [10], parent=6) == 7
    (path / fmt.LOCK_NAME).unlink()
    state[11, :4] = 5
    assert write_epoch(s, state, [11], parent=7) == 8
    check(path, 8, state)


def test_the_lock_file_says_who_holds_it_and_is_free_between_writes(tmp_path):
    """The line a writer leaves is no holder: a second writer meanwhile is
    told the holder's pid, and a write after the first is not refused."""
    path = tmp_path / "st"
    state = build(path, 2)
    s = Store(path)
    w = s.begin(kind="incremental", parent=2, layout={}, npages=NPAGES)
    line = (path / fmt.LOCK_NAME).read_bytes()
    assert line.split() == [str(os.getpid()).encode(), b"write"] and line.endswith(b"\n")
    with pytest.raises(memckpt.StoreLocked, match=f"locked by this process"):
        Store(path).begin(kind="incremental", parent=2, layout={}, npages=NPAGES)
    w.abort()
    left = (path / fmt.LOCK_NAME).read_bytes()
    assert left.startswith(b"- free ") and len(left) == len(line)  # written over, same size
    state[1, :4] = 1
    assert write_epoch(Store(path), state, [1], parent=2) == 3
