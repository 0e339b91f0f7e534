"""The store commands (ls, show, verify, restore, compact, prune) and `memckpt demo`,
through a subprocess (exit codes, stderr) and through main() (output), on small
real stores made with the Checkpointer."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt.__main__ import main

PS = memckpt.features().page_size


def run(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "memckpt", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def cli_json(capsys, *args):
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def fails(p, code=1):
    """A clean failure: the exit code, one line on stderr, no traceback."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    if code == 1:
        assert len(lines) == 1, p.stderr
    return p.stderr.strip()


def make_store(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """Two chains (full_every=3): epochs 1 full, 2, 3; 4 full, 5. Returns each
    epoch's arrays as they were checkpointed."""
    rng = np.random.default_rng(7)
    arena = memckpt.Arena(48 * PS)
    field = arena.array("field", (32, PS // 8), np.float64)     # 32 pages
    ids = arena.array("ids", 1000, np.int32)                     # 1 page, partly
    grid = arena.array("grid", (10, PS // 2), np.uint16)         # 10 pages
    field[...] = rng.random(field.shape)
    ids[...] = np.arange(1000)
    grid[...] = 3
    seen: dict[int, dict[str, np.ndarray]] = {}
    with memckpt.Checkpointer(arena, path, full_every=3) as ck:
        for round_ in range(5):
            if round_:
                field[rng.integers(0, 32, size=4)] += 1.0
                ids[round_ * 100] = -round_
                grid[round_] = round_
            e = ck.checkpoint(f"round {round_}").result()
            seen[e.epoch] = {k: v.copy() for k, v in arena.arrays().items()}
    del field, ids, grid
    arena.close()
    return seen


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store"
    return path, make_store(path)


@pytest.fixture
def store(built):
    return built[0]


@pytest.fixture
def scratch(built, tmp_path):
    """A copy of the store, for the commands that change it."""
    dst = tmp_path / "copy"
    shutil.copytree(built[0], dst)
    return dst


# -- ls / show -----------------------------------------------------------------------

def test_ls_json_matches_the_api(capsys, store):
    rep = cli_json(capsys, "ls", store)
    api = memckpt.Store(store).epochs()
    assert [e["epoch"] for e in rep["epochs"]] == [e.epoch for e in api] == [1, 2, 3, 4, 5]
    for got, want in zip(rep["epochs"], api):
        for key in ("kind", "parent", "pages_dirty", "pages_stored", "bytes_on_disk", "label",
                    "tracker", "mode", "pause_s", "call_s", "total_s"):
            assert got[key] == getattr(want, key), key
    assert rep["latest"] == 5
    assert rep["chains"] == [1, 4]
    assert rep["bytes_on_disk"] == sum(e.bytes_on_disk for e in api)


def test_ls_table_lists_every_epoch(capsys, store):
    assert main(["ls", str(store)]) == 0
    out = capsys.readouterr().out
    assert "5 epochs in 2 chains" in out
    for label in ("round 0", "round 4"):
        assert label in out
    assert out.count("incremental") == 3 and out.count("full") == 2


def test_show_json_matches_the_api(capsys, store):
    s = memckpt.Store(store)
    rep = cli_json(capsys, "show", store, 3)
    assert rep["epoch"]["epoch"] == 3 and rep["epoch"]["kind"] == "incremental"
    assert rep["epoch"]["parent"] == 2
    assert rep["chain"] == s.chain(3) == [1, 2, 3]
    assert rep["children"] == [4]  # a full epoch records the epoch it follows, as lineage
    assert rep["children_info"] == [{"epoch": 4, "kind": "full"}]
    assert cli_json(capsys, "show", store, 4)["chain"] == [4]
    assert rep["layout"] == s.layout(3)
    assert [a["name"] for a in rep["layout"]["arrays"]] == ["field", "ids", "grid"]
    assert rep["manifest"]["layout"] == s.layout(3)


def test_show_explains_an_epoch(capsys, store):
    assert main(["show", str(store), "2"]) == 0
    out = capsys.readouterr().out
    for want in ("incremental", "holds the pages written since epoch 1", "1 -> 2", "tracker",
                 "pages dirty", "pages stored", "bytes on disk", "pause", "total", "field",
                 "float64", "32x512", "ids", "int32", "grid", "uint16"):
        assert want in out, want


def test_show_latest_and_counting_back(capsys, store):
    assert cli_json(capsys, "show", store, "latest")["epoch"]["epoch"] == 5
    assert cli_json(capsys, "show", store, "-2")["epoch"]["epoch"] == 4


# -- verify ---------------------------------------------------------------------------

def test_verify_ok(capsys, store):
    rep = cli_json(capsys, "verify", store)
    assert rep["ok"] and rep["epochs"] == [1, 2, 3, 4, 5]
    rep = cli_json(capsys, "verify", store, "--epoch", "3")
    assert rep["epochs"] == [1, 2, 3]
    assert main(["verify", str(store)]) == 0
    assert capsys.readouterr().out.startswith("ok: 5 epochs")


def test_verify_progress_goes_to_stderr(store):
    p = run("verify", store, "--progress")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok:")
    assert "verify" in p.stderr  # the progress line, drawn and then erased


# -- restore ----------------------------------------------------------------------------

@pytest.mark.parametrize("epoch", [1, 3, 5])
def test_restore_writes_the_epochs_arrays(capsys, built, tmp_path, epoch):
    store, seen = built
    out = tmp_path / "x.npz"
    rep = cli_json(capsys, "restore", store, "--epoch", epoch, "--out", out)
    assert rep["epoch"] == epoch and rep["out"] == str(out)
    with np.load(out) as z:
        assert sorted(z.files) == sorted(seen[epoch])
        for name, want in seen[epoch].items():
            assert z[name].dtype == want.dtype
            np.testing.assert_array_equal(z[name], want, err_msg=name)
    with memckpt.restore(store, epoch) as api, np.load(out) as z:
        for name, arr in api.arrays().items():
            np.testing.assert_array_equal(z[name], arr)


def test_restore_defaults_to_the_latest(capsys, built, tmp_path):
    store, seen = built
    out = tmp_path / "latest.npz"
    assert main(["restore", str(store), "--out", str(out)]) == 0
    assert "restored epoch 5" in capsys.readouterr().out
    with np.load(out) as z:
        np.testing.assert_array_equal(z["ids"], seen[5]["ids"])


# -- compact / prune ----------------------------------------------------------------------

def test_compact_default_merges_the_latest_chain(capsys, built, scratch):
    seen = built[1]
    rep = cli_json(capsys, "compact", scratch)
    assert rep["merged"] == [4, 5] and rep["removed"] == [4]
    assert rep["epoch"]["epoch"] == 5 and rep["epoch"]["kind"] == "full"
    s = memckpt.Store(scratch)
    assert [e.epoch for e in s.epochs()] == [1, 2, 3, 5]
    with memckpt.restore(s, 5) as got:
        for name, want in seen[5].items():
            np.testing.assert_array_equal(got.arrays()[name], want)
    # and again: nothing left to merge
    rep = cli_json(capsys, "compact", scratch)
    assert rep["noop"] and rep["removed"] == []


def test_compact_a_range(capsys, built, scratch):
    assert main(["compact", str(scratch), "--first", "2", "--last", "3"]) == 0
    out = capsys.readouterr().out
    assert "compacted epochs 2-3 into epoch 3 (incremental, parent 1)" in out
    s = memckpt.Store(scratch)
    assert s.chain(3) == [1, 3]
    with memckpt.restore(s, 3) as got:
        np.testing.assert_array_equal(got.arrays()["field"], built[1][3]["field"])


def test_compact_refuses_a_run_outside_the_chain(scratch):
    err = fails(run("compact", scratch, "--first", "2", "--last", "5"))
    assert "epoch 2 is not in the chain of epoch 5" in err


def test_prune_keeps_whole_chains_with_no_rebase(capsys, scratch):
    rep = cli_json(capsys, "prune", scratch, "--keep-last", "1", "--no-rebase")
    assert rep["removed"] == [1, 2, 3] and rep["kept"] == [4, 5] and not rep["rebased"]
    assert [e.epoch for e in memckpt.Store(scratch).epochs()] == [4, 5]
    assert main(["prune", str(scratch), "--keep-last", "1", "--no-rebase"]) == 0
    assert "nothing to prune" in capsys.readouterr().out


def test_prune_rebases_the_oldest_kept_epoch(capsys, built, scratch):
    """--keep-last alone keeps only the last N even inside one chain: epoch 5
    (an increment on 4) becomes a full epoch of the same content first."""
    rep = cli_json(capsys, "prune", scratch, "--keep-last", "1")
    assert rep["rebased"] and rep["removed"] == [1, 2, 3, 4] and rep["kept"] == [5]
    s = memckpt.Store(scratch)
    assert [(e.epoch, e.kind) for e in s.epochs()] == [(5, "full")]
    s.verify()
    with memckpt.restore(s, 5) as got:
        for name, want in built[1][5].items():
            np.testing.assert_array_equal(got.arrays()[name], want)
    assert main(["prune", str(scratch), "--keep-last", "1"]) == 0
    assert "nothing to prune" in capsys.readouterr().out


# -- errors: one line, exit 1 (2 for usage), never a traceback --------------------------------

def test_missing_store(tmp_path):
    err = fails(run("ls", tmp_path / "nope"))
    assert err == f"memckpt ls: no store at {tmp_path / 'nope'}: no such file or directory"


def test_a_file_is_not_a_store(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is not a store" in fails(run("show", f, "1"))


def test_a_directory_that_is_not_a_store_is_left_alone(tmp_path):
    (tmp_path / "keep.tmp").write_text("mine")
    err = fails(run("ls", tmp_path))
    assert "is not a memckpt store" in err
    assert (tmp_path / "keep.tmp").read_text() == "mine"


def test_absent_epoch(store):
    err = fails(run("show", store, "9"))
    assert err == f"memckpt show: no epoch 9 in {store} (it has epochs 1-5)"
    assert "no epoch 9" in fails(run("restore", store, "--epoch", "9", "--out", "x.npz"))
    assert "must be a number or 'latest'" in fails(run("show", store, "two"))


def test_unwritable_output(store, tmp_path):
    err = fails(run("restore", store, "--out", tmp_path / "no" / "dir" / "x.npz"))
    assert "cannot write" in err and "No such file or directory" in err


def test_out_never_replaces_what_is_not_a_regular_file(store, tmp_path):
    """Regression (issue 10, item 7): `--out /dev/null` as root turned the
    device node into a regular file, and a FIFO likewise. What --out names is
    a new file or a regular file; anything else is refused and left as it was."""
    import os
    import stat
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    dev = tmp_path / "null.npz"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    for path, what in ((fifo, "a FIFO"), (dev, "a character device"),
                       (link, "a symbolic link"), (tmp_path, "a directory")):
        before = os.lstat(path)
        err = fails(run("restore", store, "--out", path, timeout=60))
        assert f"is {what}" in err and str(path) in err, err
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino,
                                                                before.st_rdev)
    assert target.read_bytes() == b"old"  # not written through the link
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # a regular file is replaced whole
    assert run("restore", store, "--out", target).returncode == 0
    assert set(np.load(target)) == {"field", "ids", "grid"}


def test_usage_errors_exit_2(store):
    assert "--out" in fails(run("restore", store), code=2)
    assert "--keep-last" in fails(run("prune", store), code=2)
    fails(run("prune", store, "--keep-last", "0"), code=2)


def test_damaged_store(built, tmp_path):
    dst = tmp_path / "damaged"
    shutil.copytree(built[0], dst)
    pack = sorted(dst.glob("e*0002-*.pack"))[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    err = fails(run("verify", dst))
    assert err.startswith("memckpt verify: damaged store:") and "epoch 2" in err, err
    err = fails(run("restore", dst, "--epoch", "2", "--out", tmp_path / "x.npz"))
    assert "damaged store" in err and "epoch 2" in err, err
    assert run("verify", dst, "--epoch", "5").returncode == 0  # the other chain is intact
    # --no-verify takes the pages as stored: the damage goes through unseen
    assert run("restore", dst, "--epoch", "2", "--no-verify",
               "--out", tmp_path / "y.npz").returncode == 0


def test_unreadable_manifest(built, tmp_path):
    dst = tmp_path / "badmanifest"
    shutil.copytree(built[0], dst)
    man = sorted(dst.glob("e*0003.json"))[0]
    man.write_text("{not json")
    err = fails(run("show", dst, "3"))
    assert err.startswith("memckpt show: damaged store: epoch 3"), err
    # the other epochs stay readable, and ls lists them beside the damaged one
    assert run("show", dst, "2").returncode == 0
    assert run("restore", dst, "--epoch", "5", "--out", tmp_path / "x.npz").returncode == 0
    p = run("ls", dst)
    assert "epoch 3" in fails(p)
    assert "DAMAGED" in p.stdout and "round 4" in p.stdout


def test_every_help_teaches():
    for cmd in ("ls", "show", "verify", "restore", "compact", "prune", "demo", "doctor"):
        p = run(cmd, "--help")
        assert p.returncode == 0, p.stderr
        assert "examples:" in p.stdout and f"memckpt {cmd}" in p.stdout, cmd
    p = run("--help")
    assert "examples:" in p.stdout and "_demo-worker" not in p.stdout


# -- the demo ---------------------------------------------------------------------------------

def test_demo_end_to_end(tmp_path):
    p = run("demo", "--store", tmp_path / "demo", "--size-mib", 16, "--steps", 60, "--every", 10,
            "--kill-at", 35, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "SIGKILL after it reported step 35" in out
    assert "bit-identical: yes" in out
    digests = [ln.split()[-1] for ln in out.splitlines() if ln.startswith("sha256 of the arrays")]
    assert len(digests) == 3 and len(set(digests)) == 1
    # the table, and the store it describes
    s = memckpt.Store(tmp_path / "demo")
    epochs = s.epochs()
    assert epochs[0].kind == "full" and all(e.kind == "incremental" for e in epochs[1:])
    assert [e.label for e in epochs][-1] == "step 60 (end)"
    assert [e.parent for e in epochs[1:]] == [e.epoch for e in epochs[:-1]]  # one chain, resumed
    for e in epochs:
        assert f"\n{e.epoch} " in out
    # a second run cleans the store first, and says so
    p = run("demo", "--store", tmp_path / "demo", "--size-mib", 4, "--steps", 20, "--every", 5,
            timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "removed the previous demo store" in p.stdout
    assert memckpt.Store(tmp_path / "demo").epochs()[-1].label == "step 20 (end)"


def test_demo_refuses_to_delete_what_is_not_a_store(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    err = fails(run("demo", "--store", mine, "--size-mib", 4, "--steps", 20, "--every", 5))
    assert "is not a memckpt store" in err
    assert (mine / "thesis.tex").read_text() == "precious"


def test_demo_default_store_and_tmp(tmp_path):
    p = run("demo", "--tmp", "--size-mib", 4, "--steps", 20, "--every", 5, cwd=tmp_path,
            timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bit-identical: yes" in p.stdout
    assert not (tmp_path / "memckpt-demo").exists()  # --tmp leaves nothing behind


def test_demo_bad_options_are_clear_errors():
    assert "unknown backend 'nope'" in fails(run("demo", "--tracker", "nope", "--tmp"))
    assert "--every" in fails(run("demo", "--tmp", "--steps", "10", "--every", "10"))
    assert "--kill-at" in fails(run("demo", "--tmp", "--steps", "10", "--every", "2",
                                    "--kill-at", "10"))
