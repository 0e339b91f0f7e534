"""Readers beside the writer (issue 10, items 8-11): opening a store to read
writes nothing and takes no lock (so it works on a full or read-only file
system and never makes a writer fail or wait); verify and restore take a
consistent view while another process prunes and compacts; processes racing
to create one store all succeed; a FIFO or device in place of a store file is
a clear error, never a hang."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memckpt import CorruptionError, EpochNotFound, FormatError, MemckptError, StoreLocked
from memckpt.store import Store
from memckpt.store import format as fmt
from memckpt.store import io as store_io
from memckpt.store import locking
from memckpt.store import writer as store_writer

from _store_util import PS, build_chain, read, write_epoch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_readers_worker.py"
sys.path.insert(0, str(HERE))
import _readers_worker  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    path = tmp_path_factory.mktemp("readers") / "st"
    s = Store(path, create=True, page_size=PS)
    expected = build_chain(s, npages=_readers_worker.NPAGES, nepochs=3)
    return path, expected


@pytest.fixture
def copy(pristine, tmp_path) -> tuple[Path, dict[int, np.ndarray]]:
    path, expected = pristine
    dst = tmp_path / "st"
    shutil.copytree(path, dst)
    return dst, expected


def listing(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every name in the store with its type, size and mtime; the directory's own too."""
    out = {n: ((st := os.lstat(path / n)).st_mode, st.st_size, st.st_mtime_ns)
           for n in os.listdir(path)}
    st = os.lstat(path)
    out["."] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


# -- item 8: a reader writes nothing and takes no lock ---------------------------------------
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_MUTATIONS = {"os.remove", "os.rename", "os.link", "os.symlink", "os.mkdir", "os.rmdir",
              "os.chmod", "os.chown", "os.truncate", "os.utime", "fcntl.flock", "fcntl.lockf"}
_seen: dict[str, Any] = {"on": False, "events": []}


def _hook(event: str, args: tuple) -> None:
    if not _seen["on"]:
        return
    if event == "open" and len(args) >= 3 and isinstance(args[2], int) and args[2] & _WRITES:
        _seen["events"].append((event, args[0], args[2]))
    elif event in _MUTATIONS:
        _seen["events"].append((event,) + tuple(args))


sys.addaudithook(_hook)  # does nothing unless a test turns it on


def test_reading_a_store_writes_nothing_and_takes_no_lock(copy):
    """Open, list, read every epoch, verify, chain and diff: no file is
    opened for writing, created, removed or locked (the audit hook sees
    every os.open and fcntl.flock), no lock file appears, and the listing,
    sizes and mtimes are unchanged; garbage is left for the writer to sweep."""
    from memckpt.cli.ls import ls
    path, expected = copy
    (path / fmt.LOCK_NAME).unlink(missing_ok=True)
    (path / "junk.tmp").write_bytes(b"x")
    (path / fmt.data_name(9, 0, "pack")).write_bytes(b"x")
    before = listing(path)
    _seen["events"] = []
    _seen["on"] = True
    try:
        s = Store(path)
        s2 = Store(path, create=True)  # an existing store: create=True reads it too
        assert s2.page_size == PS
        assert [i.epoch for i in s.epochs()] == sorted(expected)
        for e, want in expected.items():
            assert np.array_equal(read(s, e), want), e
            s.chain(e)
            s.verify(e)
        s.verify()
        s.changed_pages(1, max(expected))
        assert not ls(s)["damaged"]
        s.close()
    finally:
        _seen["on"] = False
    assert _seen["events"] == [], f"a reader wrote or locked: {_seen['events']}"
    assert not (path / fmt.LOCK_NAME).exists()
    assert listing(path) == before


def _unshare_ok() -> str | None:
    """Why mount namespaces cannot be used here, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare(1)/mount(8) are not installed"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs -o size=64k tmpfs /mnt 2>&1 || mount -t tmpfs -o size=64k tmpfs /tmp"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"cannot mount in a private mount namespace (needs CAP_SYS_ADMIN): {r.stdout}{r.stderr}".strip()
    return None


_FS_SCRIPT = textwrap.dedent(r"""
    import errno, json, os, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from _store_util import PS, build_chain, read
    from memckpt.cli.ls import ls
    from memckpt.store import Store
    where, how = sys.argv[1], sys.argv[2]
    res = {}
    if how == "build":
        s = Store(where + "/st", create=True, page_size=PS)
        expected = build_chain(s, npages=32, nepochs=3)
        s.close()  # its spare pack file (an unnamed inode) too, before the fill counts inodes
        np.savez(where + "/../expected.npz", **{str(k): v for k, v in expected.items()})
        os.unlink(where + "/st/lock")
        if len(sys.argv) < 5 or sys.argv[4] != "fill":
            print(json.dumps({"built": True}))
            raise SystemExit(0)
        # fill the (small, private tmpfs) file system: its blocks, then its inodes
        vfs = os.statvfs(where)
        assert vfs.f_blocks * vfs.f_frsize <= 16 << 20, "refusing to fill a real file system"
        try:
            with open(where + "/filler", "wb") as f:
                while True:
                    f.write(b"\xff" * 65536)
                    f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        i = 0
        try:
            while True:
                open(f"{where}/i{i}", "wb").close()
                i += 1
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        print(json.dumps({"built": True}))
        raise SystemExit(0)
    # how == "read": the file system is full or read-only; prove it, then read
    try:
        open(where + "/st/probe", "wb").close()
        res["probe"] = "created"
    except OSError as exc:
        res["probe"] = errno.errorcode[exc.errno]
    expected = np.load(where + "/../expected.npz")
    try:
        s = Store(where + "/st")
        res["epochs"] = [i.epoch for i in s.epochs()]
        res["exact"] = all(np.array_equal(read(s, int(k)), expected[k]) for k in expected.files)
        s.verify()
        res["damaged"] = ls(s)["damaged"]
        res["lock"] = os.path.exists(where + "/st/lock")
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(res))
""")


@pytest.mark.parametrize("fs", ["full", "read-only"])
def test_readers_work_on_a_full_or_read_only_file_system(tmp_path, fs):
    """A tmpfs filled to the last block and inode (Store() used to write the
    lock file: ENOSPC, with no path), and a read-only bind mount of a store
    (root ignores chmod, so a mount it is), in a private mount namespace."""
    why = _unshare_ok()
    if why:
        pytest.skip(why)
    base = tmp_path / "m"
    (base / "fs").mkdir(parents=True)
    (base / "ro").mkdir()
    script = tmp_path / "fs_script.py"
    script.write_text(_FS_SCRIPT)
    py, here = sys.executable, str(HERE)
    fs_dir, ro_dir = base / "fs", base / "ro"
    # everything on a small tmpfs of the namespace's own: filling it fills nothing else
    sh = f"mount -t tmpfs -o size=1m,nr_inodes=64 tmpfs {fs_dir} && "
    if fs == "full":
        sh += (f"{py} {script} {fs_dir} build {here} fill >/dev/null && "
               f"{py} {script} {fs_dir} read {here}")
        want_probe = "ENOSPC"
    else:
        sh += (f"{py} {script} {fs_dir} build {here} >/dev/null && "
               f"mount --bind {fs_dir} {ro_dir} && mount -o remount,ro,bind {ro_dir} && "
               f"{py} {script} {ro_dir} read {here}")
        want_probe = "EROFS"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", sh],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["probe"] == want_probe, res   # the file system does refuse writes
    assert "error" not in res, res["error"]
    assert res["epochs"] == [1, 2, 3] and res["exact"] and res["damaged"] == []
    assert res["lock"] is False


def test_a_looping_reader_never_makes_a_write_fail_or_wait(tmp_path, monkeypatch):
    """Readers opening, listing and verifying as fast as they can, while this
    thread writes with a lock wait of 0: a reader that held the writer's lock
    for an instant (the old sweep on open) would fail a write at once."""
    monkeypatch.setattr(locking, "_LOCK_WAIT_S", 0.0)
    s = Store(tmp_path / "st", create=True, page_size=PS)
    rng = np.random.default_rng(3)
    state = rng.integers(0, 256, (8, PS), dtype=np.uint8)
    write_epoch(s, state, None, kind="full")
    stop = threading.Event()
    reads = [0]
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                r = Store(tmp_path / "st")
                r.epochs()
                r.verify(r.latest())
                reads[0] += 1
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    locked = []
    try:
        for k in range(150):
            state[k % 8] ^= 1
            try:
                write_epoch(s, state, [k % 8], parent=s.latest())
            except StoreLocked as exc:
                locked.append(str(exc))
            if k % 10 == 9:
                s.prune(keep_last=3)
            if k > 50 and reads[0] > 20:
                break
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert locked == [], f"{len(locked)} writes failed on a reader: {locked[:3]}"
    assert errors == []
    assert reads[0] > 0


# -- item 11: FIFOs and devices in place of store files --------------------------------
def _plant(path: Path, name: str, kind: str) -> None:
    p = path / name
    p.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(p, 0o600)
    elif kind == "socket":
        import socket
        sk = socket.socket(socket.AF_UNIX)
        try:
            sk.bind(str(p))
        except OSError as exc:  # a path over sun_path's 108 bytes
            pytest.skip(f"cannot bind a unix socket at {p}: {exc}")
        finally:
            sk.close()  # the socket file stays
    else:
        try:  # /dev/null's numbers: reads of it would look like an empty file
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("mknod of a character device needs CAP_MKNOD")


_WHAT = {"fifo": "a FIFO", "chardev": "a character device", "socket": "a socket"}


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket"])
@pytest.mark.parametrize("victim", ["header", "manifest", "idx", "pack", "lock"])
def test_fifo_or_device_in_place_of_a_store_file(copy, victim, kind):
    """Every reader, and a write, run in a child under a 10 s alarm each:
    never a hang; the file is named with what it is; what does not need it
    still works (a FIFO or device as the lock stops writes only)."""
    path, _ = copy
    name = {"header": fmt.STORE_HEADER, "manifest": fmt.manifest_name(2),
            "idx": fmt.data_name(2, 0, "idx"), "pack": fmt.data_name(2, 0, "pack"),
            "lock": fmt.LOCK_NAME}[victim]
    _plant(path, name, kind)
    r = subprocess.run([sys.executable, str(WORKER), "odd", str(path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "hang" not in out.values(), out
    said = f"FormatError: .*{name}: is {_WHAT[kind]}, not a regular file"
    import re

    def refused(op: str) -> bool:
        return re.match(said, out.get(op, "")) is not None

    if victim == "header":
        assert refused("open"), out
        return
    assert out["open"] == "ok", out
    if victim == "lock":
        assert all(v == "ok" for k, v in out.items() if k != "begin"), out
        assert refused("begin"), out
        return
    assert out["read_into 1"] == "ok", out          # epoch 1 does not need the file
    assert refused("read_into 2") and refused("read_into 3") and refused("verify"), out
    if victim == "manifest":
        assert refused("ls"), out


def test_fifo_as_the_lock_refused_by_a_writer_in_process(copy):
    path, expected = copy
    _plant(path, fmt.LOCK_NAME, "fifo")
    s = Store(path)
    assert np.array_equal(read(s, 1), expected[1])
    with pytest.raises(FormatError, match=r"lock: is a FIFO, not a regular file"):
        s.begin("full", npages=4)
    with pytest.raises(FormatError, match=r"lock: is a FIFO"):
        s.prune(keep_last=1)


# -- item 10: processes racing to create one store ---------------------------------------
def test_processes_creating_one_store_at_once(tmp_path):
    """4 processes, 30 rounds, each round all at once (a barrier): every
    creation succeeds (each followed by the writer's sweep, which used to
    delete another creator's temporary header), one header, intact, no
    temporary left."""
    nproc, rounds = 4, 30
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(nproc)
    q = ctx.Queue()
    procs = [ctx.Process(target=_readers_worker.create_rounds, args=(str(tmp_path), rounds, barrier, q))
             for _ in range(nproc)]
    for p in procs:
        p.start()
    results = [q.get(timeout=300) for _ in range(nproc * rounds)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    bad = [r for r in results if r[2] != "ok"]
    assert bad == [], f"{len(bad)} of {len(results)} creations failed: {bad[:5]}"
    for i in range(rounds):
        d = tmp_path / f"r{i}"
        names = sorted(os.listdir(d))
        assert names == sorted([fmt.STORE_HEADER, fmt.LOCK_NAME]), names
        s = Store(d)
        assert s.page_size == PS and s.epochs() == []
        w = s.begin("full", npages=1)
        w.add_pages(np.array([0], np.uint64), np.ones((1, PS), np.uint8))
        w.commit(pages_dirty=1, pause_s=0.0)
        s.verify()


def test_create_waits_for_another_creator_not_for_a_writer(tmp_path):
    """A creator finding the lock taken by a writer of a store that exists
    by now (another creator finished it) returns at once with that store."""
    s = Store(tmp_path / "st", create=True, page_size=PS)
    w = s.begin("full", npages=1)
    try:
        assert Store(tmp_path / "st", create=True).page_size == PS
    finally:
        w.abort()


# -- item 9: a prune or compaction between a reader's manifests and its files ----------------
def _between(monkeypatch: pytest.MonkeyPatch, reader: Store, action: Any) -> list[int]:
    """Run ``action`` once, the first time ``reader`` opens a pack: after it
    has read the manifests (and indexes) it is working from."""
    real = Store._open_pack
    fired: list[int] = []

    def hooked(self: Store, epoch: int, doc: dict[str, Any]) -> int:
        if self is reader and not fired:
            fired.append(epoch)
            action()
        return real(self, epoch, doc)
    monkeypatch.setattr(Store, "_open_pack", hooked)
    return fired


@pytest.mark.parametrize("target", [None, 3])
def test_verify_over_a_compaction_is_not_damage(copy, monkeypatch, target):
    path, expected = copy
    reader, writer = Store(path), Store(path)
    fired = _between(monkeypatch, reader, lambda: writer.compact(1, 3))
    reader.verify(target)
    assert fired and writer.epoch_numbers() == [3]
    assert np.array_equal(read(reader, 3), expected[3])


def test_verify_over_a_prune_skips_what_was_retired(copy, monkeypatch):
    path, expected = copy
    reader, writer = Store(path), Store(path)
    new = write_epoch(writer, expected[3], None, kind="full")
    fired = _between(monkeypatch, reader, lambda: writer.prune(keep_last=1))
    reader.verify()
    assert fired and writer.epoch_numbers() == [new]


def test_read_over_a_compaction_rereads_and_over_a_prune_says_retired(copy, monkeypatch):
    path, expected = copy
    reader, writer = Store(path), Store(path)
    _between(monkeypatch, reader, lambda: writer.compact(2, 3))
    assert np.array_equal(read(reader, 3), expected[3])
    monkeypatch.undo()
    new = write_epoch(writer, expected[3], None, kind="full")
    _between(monkeypatch, reader, lambda: writer.prune(keep_last=1))
    with pytest.raises(EpochNotFound, match="epoch 3 was retired during read by a prune or compaction"):
        read(reader, 3)
    assert np.array_equal(read(reader, new), expected[3])


def test_a_read_spoiled_at_every_try_gives_up_naming_the_race(copy, monkeypatch):
    """Every try finds its files gone and the manifest replaced meanwhile
    (as a compaction in a loop would): after 5 tries, a MemckptError that
    names the concurrent prune/compaction and the last failure; not damage."""
    path, _ = copy
    s = Store(path)
    tries = [0]

    def spoiled(self: Store, epoch: int, doc: dict[str, Any]) -> int:
        tries[0] += 1
        m = path / fmt.manifest_name(3)
        tmp = path / "m.tmp"
        tmp.write_bytes(m.read_bytes())
        os.rename(tmp, m)  # the same manifest, a new file: what a compaction's rename looks like
        raise store_io._MissingFile(f"epoch {epoch}: {doc['files']['pack']['name']}: the file is missing")
    monkeypatch.setattr(Store, "_open_pack", spoiled)
    with pytest.raises(MemckptError, match=r"gave up trying to read epoch 3 after 5 tries: a prune "
                                           r"or compaction .* kept retiring .*the file is missing") as ei:
        read(s, 3)
    assert not isinstance(ei.value, CorruptionError) and tries[0] == 5
    with pytest.raises(MemckptError, match="gave up trying to verify epoch 3"):
        s.verify(3)


def test_real_damage_is_still_reported(copy):
    """A bad page in a file the current manifest names: CorruptionError, at
    once (nothing moved, so nothing is retried away)."""
    path, _ = copy
    pack = path / fmt.data_name(2, 0, "pack")
    raw = bytearray(pack.read_bytes())
    raw[fmt.PACK_HEADER_SIZE + 7] ^= 0xFF
    pack.write_bytes(bytes(raw))
    s = Store(path)
    with pytest.raises(CorruptionError, match="epoch 2"):
        s.verify()
    with pytest.raises(CorruptionError, match="epoch 2"):
        s.verify(3)
    with pytest.raises(CorruptionError, match="epoch 2"):
        read(s, 3)


# -- only the writer sweeps ---------------------------------------------------------------
def test_the_writer_sweeps_at_its_first_write_and_after_a_failed_epoch(copy, monkeypatch):
    path, expected = copy
    junk = [fmt.data_name(9, 0, "pack"), "junk.tmp"]
    for n in junk:
        (path / n).write_bytes(b"x")
    s = Store(path)
    read(s, 3)
    assert all((path / n).exists() for n in junk)       # a reader leaves it
    write_epoch(s, expected[3], [0], parent=3)          # the first write sweeps
    assert not any((path / n).exists() for n in junk)
    # an epoch whose abort was cut short leaves its files: the next write sweeps them
    # (a pack created by name: without the Store's spare, whose file has no name)
    s._spare.close()
    w = s.begin("incremental", parent=4, npages=expected[3].shape[0])
    w.add_pages(np.array([1], np.uint64), expected[3][1:2])
    left = w._pack_name
    monkeypatch.setattr(store_writer, "_unlink", lambda p: False)
    w.abort()
    monkeypatch.undo()
    assert (path / left).exists()
    assert s.prune(keep_last=100) == []  # a write: it sweeps, as begin() and compact() would
    assert not (path / left).exists()
    junk2 = path / fmt.data_name(9, 0, "idx")
    junk2.write_bytes(b"x")
    s.prune(keep_last=100)                   # nothing failed since: no sweep (it reads every manifest)
    assert junk2.exists()
    s.verify()


def test_the_spare_pack_is_named_at_commit_and_leaves_nothing_otherwise(copy):
    """After a commit the Store keeps an unnamed file for the next epoch's
    pack (store/spare.py): the next begin() takes it, the commit names it
    (and makes the next spare); an abort, or a Store dropped, leaves no file."""
    path, expected = copy
    s = Store(path)
    e = write_epoch(s, expected[3], [0], parent=3)
    names = set(os.listdir(path))
    w = s.begin("incremental", parent=e, npages=expected[3].shape[0])
    assert w._pack_unnamed and not (path / w._pack_name).exists()
    w.add_pages(np.array([1], np.uint64), expected[3][1:2])
    w.abort()
    assert set(os.listdir(path)) == names  # the aborted epoch: no file at all
    w = s.begin("incremental", parent=e, npages=expected[3].shape[0])
    assert not w._pack_unnamed  # the spare went with the aborted epoch: created by name
    w.add_pages(np.array([1], np.uint64), expected[3][1:2])
    info = w.commit(pages_dirty=1, pause_s=0.0)
    w = s.begin("incremental", parent=info.epoch, npages=expected[3].shape[0])
    assert w._pack_unnamed
    w.add_pages(np.array([2], np.uint64), expected[3][2:3])
    info = w.commit(pages_dirty=1, pause_s=0.0)
    assert (path / s.manifest(info.epoch)["files"]["pack"]["name"]).is_file()
    s.verify()
    want = expected[3].copy()
    assert np.array_equal(read(Store(path), info.epoch), want)
    fd = s._spare._fd
    assert fd is not None and os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
    s.close()
    assert s._spare._fd is None
    with pytest.raises(OSError):
        os.fstat(fd)


# -- item 9: readers beside a writer that checkpoints, prunes and compacts --------------------
def _beside(tmp_path: Path, seconds: float, nreaders: int) -> None:
    path, stop = tmp_path / "st", tmp_path / "stop"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    w = subprocess.Popen([sys.executable, str(WORKER), "writer", str(path), str(seconds), str(stop)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # the readers start once the store has a first epoch
    import time
    for _ in range(6000):
        if (path / fmt.manifest_name(1)).exists() or w.poll() is not None:
            break
        time.sleep(0.01)
    rs = [subprocess.Popen([sys.executable, str(WORKER), "reader", str(path), str(stop), str(i)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
          for i in range(nreaders)]
    wout, werr = w.communicate(timeout=seconds + 600)
    stop.write_text("done")
    routs = [r.communicate(timeout=600) for r in rs]
    assert w.returncode == 0, werr
    wres = json.loads(wout.strip().splitlines()[-1])
    assert wres["failures"] == [], "\n".join(wres["failures"][:3])
    assert wres["rounds"] > 5 and wres["pruned"] > 0 and wres["compacted"] > 0, wres
    total = {"restores": 0, "verify": 0, "ls": 0, "gave_up": 0, "retired": 0}
    for r, (out, err) in zip(rs, routs):
        assert r.returncode == 0, err
        res = json.loads(out.strip().splitlines()[-1])
        assert res["damage"] == [], "false damage on a healthy store:\n" + "\n".join(res["damage"][:5])
        assert res["wrong"] == [], res["wrong"][:5]
        assert res["other"] == [], "\n".join(res["other"][:3])
        for k in total:
            total[k] += res[k]
    assert total["restores"] > 0 and total["verify"] > 0 and total["ls"] > 0, total
    # (gave_up counts reads a prune/compaction spoiled 5 times running: not damage)
    print(f"writer {wres}, readers {total}")
    s = Store(path)
    s.verify()


def test_readers_beside_a_writer_that_prunes_and_compacts(tmp_path):
    _beside(tmp_path, seconds=20.0, nreaders=2)


@pytest.mark.slow
def test_readers_beside_a_writer_that_prunes_and_compacts_long(tmp_path):
    _beside(tmp_path, seconds=180.0, nreaders=3)


def _cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memckpt", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_cli_ls_and_verify_name_a_fifo_instead_of_hanging(copy):
    """`memckpt ls` used to hang on a FIFO manifest (every reader did); now it
    lists the other epochs and names the FIFO; a FIFO as the lock stops no reader."""
    path, _ = copy
    manifest = (path / fmt.manifest_name(2)).read_bytes()
    _plant(path, fmt.manifest_name(2), "fifo")
    r = _cli("ls", path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{fmt.manifest_name(2)}: is a FIFO, not a regular file" in r.stderr
    assert "Traceback" not in r.stderr
    os.unlink(path / fmt.manifest_name(2))
    (path / fmt.manifest_name(2)).write_bytes(manifest)
    _plant(path, fmt.LOCK_NAME, "fifo")
    for args in (("ls", path), ("verify", path)):
        r = _cli(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
