"""memckpt.mpi under real MPI jobs: ``mpiexec -n 4`` (from the mpich wheel)
started here, each rank running tests/_mpi_worker.py. The ranks are
oversubscribed on this machine's cores (MPICH's hydra allows it as is).

Every restart is checked bit for bit: each rank recomputes from (rank, step)
the state its arena must hold and compares. The global commit records are
read here too, and each rank's store opened, so the tests see what a restart
had to choose from.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt.errors import CorruptionError, FormatError, MemckptError
from memckpt.mpi import records
from memckpt.mpi.records import GlobalEpoch, RankEpoch
from memckpt.store.documents import manifest_identity

WORKER = Path(__file__).with_name("_mpi_worker.py")
RANKS = 4
TIMEOUT = 180


def _mpiexec() -> str | None:
    here = Path(sysconfig.get_path("scripts")) / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
NO_MPI = ("mpi4py is not installed (pip install 'memckpt[mpi]')"
          if importlib.util.find_spec("mpi4py") is None
          else "no mpiexec on PATH or beside this Python (pip install mpich)"
          if MPIEXEC is None else None)
needs_mpi = pytest.mark.skipif(NO_MPI is not None, reason=NO_MPI or "")


def _mpich_shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}
    except FileNotFoundError:
        return set()


class Job:
    """One root shared by the jobs of a test, and the reports of the last job."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.out = tmp_path / "out"
        self.out.mkdir()

    def run(self, steps: int, *flags: str, ranks: int = RANKS) -> int:
        """Run one job to its end (or its kill); its exit status."""
        for p in self.out.iterdir():
            p.unlink()
        shm_before = _mpich_shm()
        assert MPIEXEC is not None
        cmd = [MPIEXEC, "-launcher", "fork", "-n", str(ranks), sys.executable, str(WORKER),
               str(self.root), str(self.out), str(steps), *flags]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"mpiexec ran over {TIMEOUT} s: {' '.join(cmd)}\n{out.decode()[-3000:]}")
        self.log = out.decode(errors="replace")
        if proc.returncode != 0:
            # MPICH's shared-memory segments outlive a job whose rank was
            # killed (4 MiB of RAM each in /dev/shm): the job is over, its
            # segments are ours to remove
            for name in _mpich_shm() - shm_before:
                Path("/dev/shm", name).unlink(missing_ok=True)
        return proc.returncode

    def ok(self, steps: int, *flags: str) -> None:
        rc = self.run(steps, *flags)
        assert rc == 0, f"the MPI job failed ({rc}):\n{self.log[-4000:]}"

    def reports(self, kind: str) -> list[dict]:
        got = sorted(self.out.glob(f"{kind}-rank-*.json"))
        assert len(got) == RANKS, f"{len(got)} ranks wrote {kind} reports:\n{self.log[-4000:]}"
        return [json.loads(p.read_text()) for p in got]

    def newest(self) -> GlobalEpoch:
        return records.read_record(self.root, records.record_numbers(self.root)[-1])

    def store(self, rank: int) -> memckpt.Store:
        return memckpt.Store(self.root / f"rank-{rank:05d}")

    def check_restart(self) -> GlobalEpoch:
        """Restart into new ranks (no step taken): every rank resumes the
        newest global record, bit for bit; returns it."""
        want = self.newest()
        self.ok(0)
        got = self.reports("resume")
        for r in got:
            assert r["bit_exact"], f"rank {r['rank']}'s arena differs from step {r['resumed_step']}"
            assert (r["resumed_global"], r["resumed_step"]) == (want.number, int(want.label)), r
            assert r["resumed_epoch"] == want.ranks[r["rank"]].epoch, r
        return want


@pytest.fixture
def job(tmp_path):
    if NO_MPI:
        pytest.skip(NO_MPI)
    return Job(tmp_path)


# -- under mpiexec -----------------------------------------------------------------------
@needs_mpi
def test_twenty_coordinated_checkpoints_restart_bit_exact(job):
    job.ok(20, "--fresh")
    assert [r["end_global"] for r in job.reports("end")] == [21] * RANKS
    assert records.record_numbers(job.root) == list(range(1, 22))
    for n in records.record_numbers(job.root):
        rec = records.read_record(job.root, n)
        assert rec.label == str(n - 1) and rec.size == RANKS
        for part in rec.ranks:  # each names an epoch of its rank's store, of that step
            with job.store(part.rank) as st:
                assert manifest_identity(st.manifest(part.epoch)) == part.digest
                assert st.info(part.epoch).label == rec.label
    # the ranks' patterns differ: rank 1 rewrites every page, the others a few
    with job.store(1) as dense, job.store(0) as sparse:
        assert dense.info(21).pages_dirty > 4 * sparse.info(21).pages_dirty
    rec = job.check_restart()
    assert rec.number == 21


@needs_mpi
def test_deferred_commits_and_a_job_that_continues(job):
    """Global commits left to the next checkpoint (the default of a loop that
    never calls result()): close() commits the last; a resumed job goes on
    numbering and chaining where the first stopped."""
    job.ok(6, "--defer", "--fresh")
    assert records.record_numbers(job.root) == list(range(1, 8))
    job.ok(5, "--defer")
    assert {r["resumed_step"] for r in job.reports("resume")} == {6}
    assert {(r["end_step"], r["end_global"]) for r in job.reports("end")} == {(11, 12)}
    with job.store(2) as st:
        assert st.info(st.latest()).kind == "incremental"  # the chain goes on after the resume
    assert job.check_restart().label == "11"


@needs_mpi
def test_ranks_with_stores_of_their_own(job, tmp_path):
    """store= gives each rank its own store outside the root (a node-local
    disk): the records name them by absolute path, and a restart that gives
    each rank its store back resumes bit for bit; the root holds only records."""
    own = tmp_path / "nodes"
    job.ok(4, "--fresh", "--own", str(own))
    rec = job.newest()
    assert [p.store for p in rec.ranks] == [str(own / f"node-{r}") for r in range(RANKS)]
    assert sorted(p.name for p in job.root.iterdir()) == ["global"]
    job.ok(0, "--own", str(own))
    assert {(r["resumed_global"], r["bit_exact"]) for r in job.reports("resume")} == {(5, True)}


@needs_mpi
def test_a_damaged_or_missing_rank_epoch_falls_back_to_an_older_global_epoch(job):
    job.ok(5, "--fresh")
    newest = job.newest()
    # rank 2's epoch of the newest global epoch: one byte of its pages flipped
    with job.store(2) as st:
        pack = st.path / st.manifest(newest.ranks[2].epoch)["files"]["pack"]["name"]
    raw = bytearray(pack.read_bytes())
    raw[-100] ^= 0xFF
    pack.write_bytes(bytes(raw))
    job.ok(0)
    assert {(r["resumed_global"], r["resumed_step"], r["bit_exact"])
            for r in job.reports("resume")} == {(newest.number - 1, 4, True)}
    assert f"not resuming from global epoch {newest.number}" in job.log
    # rank 3's epoch of that one gone: one more back
    before = records.read_record(job.root, newest.number - 1)
    with job.store(3) as st:
        (st.path / f"e{before.ranks[3].epoch:08d}.json").unlink()
    job.ok(0)
    assert {(r["resumed_global"], r["resumed_step"], r["bit_exact"])
            for r in job.reports("resume")} == {(newest.number - 2, 3, True)}
    # and a damaged record commits nothing
    rec = records.global_dir(job.root) / records.record_name(newest.number - 2)
    rec.write_text(rec.read_text().replace('"label": "3"', '"label": "9"'))
    job.ok(0)
    assert {r["resumed_step"] for r in job.reports("resume")} == {2}


def _last_two_whole(job: Job) -> None:
    """The last two global epochs are whole on every rank."""
    for n in records.record_numbers(job.root)[-2:]:
        for part in records.read_record(job.root, n).ranks:
            with job.store(part.rank) as st:
                assert manifest_identity(st.manifest(part.epoch)) == part.digest
                st.verify(part.epoch)


@needs_mpi
def test_keep_last_keeps_the_last_global_epochs_restorable(job):
    """keep_last=2 prunes each rank's store after each global commit, never an
    epoch the last two global epochs name, even when the next global epoch
    dies after a rank's own commit (its epoch: an orphan the pruning counts)."""
    job.ok(12, "--fresh", "--keep", "2")
    for r in range(RANKS):
        with job.store(r) as st:
            assert len(st.epoch_numbers()) <= 3, (r, st.epoch_numbers())
    _last_two_whole(job)
    for t in range(3):  # each dies once the victim's own epoch is durable
        last = int(job.newest().label) + 2
        assert job.run(2, "--keep", "2", "--kill", str(t + 1), str(last), "-1") != 0
        assert job.reports("resume")[0]["bit_exact"]
        assert int(job.newest().label) == last - 1
    _last_two_whole(job)
    job.check_restart()


def kill_trials(job: Job, trials: int, seed: int) -> dict:
    """Each trial: a new job resumes (checked bit for bit), takes 1-3 steps,
    and rank ``trial % 4`` is SIGKILLed during the last step's checkpoint, at
    a random delay (or, every fourth trial, once its own epoch is durable and
    before the ranks agree). The next trial's restart must come from the
    newest global record, which names the last step or the one before it
    (or, with commits deferred to the next checkpoint, the one before that)."""
    rng = np.random.default_rng(seed)
    stats = {"killed": 0, "hazards": 0, "committed_before_kill": 0}
    shm_at_start = _mpich_shm()
    job.ok(1, "--fresh")
    for t in range(trials):
        start = int(job.newest().label)
        steps = int(rng.integers(1, 4))
        victim, last = t % RANKS, start + steps
        delay = -1.0 if t % 4 == 3 else float(rng.uniform(0, 0.03))
        defer = t % 2 == 1  # the last step's commit, and the one before's, are then pending
        rc = job.run(steps, "--kill", str(victim), str(last), f"{delay:.6f}",
                     *(["--defer"] if defer else []))
        stats["shm_left"] = len(_mpich_shm() - shm_at_start)
        resumed = job.reports("resume")  # this job began by a restart: checked
        assert all(r["bit_exact"] and r["resumed_step"] == start for r in resumed), resumed
        stats["killed"] += rc != 0
        if delay < 0:
            assert rc != 0, job.log[-3000:]
        newest = job.newest()
        # never a mix: one record names every rank's epoch, of one step
        lag = 2 if defer else 1
        assert last - lag <= int(newest.label) <= last, (t, newest, last)
        stats["committed_before_kill"] += int(newest.label) == last
        with job.store(victim) as st:
            mine = {e.label for e in st.epochs()}
        if newest.label != str(last) and str(last) in mine:
            stats["hazards"] += 1  # a rank held the last step; the job must not restore it
        if delay < 0:  # its own epoch was durable, the agreement never happened
            assert str(last) in mine and int(newest.label) < last
    job.check_restart()
    return stats


@needs_mpi
def test_a_rank_killed_during_a_coordinated_checkpoint_restarts_from_one_global_epoch(job):
    stats = kill_trials(job, trials=20, seed=15)
    print(stats)
    assert stats["killed"] >= 15 and stats["hazards"] >= 5, stats
    assert stats["shm_left"] == 0, stats  # the killed jobs' MPI segments removed


@needs_mpi
@pytest.mark.slow
def test_many_kills(job):
    stats = kill_trials(job, trials=120, seed=1515)
    print(stats)
    assert stats["killed"] >= 90 and stats["hazards"] >= 30, stats


@needs_mpi
def test_different_interval_arguments_are_refused_on_every_rank(job, tmp_path):
    script = tmp_path / "intervals.py"
    script.write_text(
        "import sys\nfrom mpi4py import MPI\nimport numpy as np\nimport memckpt\n"
        "from memckpt.mpi import Coordinator\n"
        "a = memckpt.Arena(1 << 16); a.array('x', (16,), np.uint8)\n"
        "c = MPI.COMM_WORLD\n"
        "try:\n"
        f"    Coordinator(c, a, {str(job.root)!r}, interval=10 + c.Get_rank())\n"
        "except ValueError as e:\n"
        "    print('refused', c.Get_rank(), e, flush=True)\n")
    assert MPIEXEC is not None
    out = subprocess.run([MPIEXEC, "-launcher", "fork", "-n", "2", sys.executable, str(script)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("refused") == 2 and "different interval arguments" in out.stdout


SCHEDULE_SCRIPT = """
import json, sys, time
from mpi4py import MPI
import numpy as np, memckpt
from memckpt.errors import MemckptError
from memckpt.mpi import Coordinator
root, out = sys.argv[1], sys.argv[2]
c = MPI.COMM_WORLD
r = c.Get_rank()
a = memckpt.Arena(1 << 16)
x = a.array("x", (1 << 16,), np.uint8)
rng = np.random.default_rng(r)
report = {}
for name, kw in (("fixed", dict(interval=0.02)), ("auto", dict(interval="auto", mtbf=0.5))):
    with Coordinator(c, a, f"{root}/{name}", **kw) as co:
        taken = []
        for step in range(60):
            x[step * 997 % x.size] = step + 1
            time.sleep(float(rng.uniform(0, 0.004)))  # each rank its own pace and clock
            if co.maybe_checkpoint(label=str(step)) is not None:
                taken.append(step)
        report[name] = taken
with Coordinator(c, a, f"{root}/error") as co:
    try:
        co.checkpoint(label=7 if r == 1 else "bad")  # a TypeError on rank 1 alone
        report["error"] = None
    except MemckptError as e:
        report["error"] = str(e)
    report["after"] = co.checkpoint(label="after").result().number
json.dump(report, open(f"{out}/{r}.json", "w"))
"""


@needs_mpi
def test_the_interval_decision_and_a_rank_s_error_are_the_same_on_every_rank(job, tmp_path):
    script = tmp_path / "schedule.py"
    script.write_text(SCHEDULE_SCRIPT)
    assert MPIEXEC is not None
    out = subprocess.run([MPIEXEC, "-launcher", "fork", "-n", str(RANKS), sys.executable,
                          str(script), str(job.root), str(job.out)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    got = [json.loads((job.out / f"{r}.json").read_text()) for r in range(RANKS)]
    for name in ("fixed", "auto"):
        assert all(g[name] == got[0][name] for g in got), [g[name] for g in got]
        assert 2 <= len(got[0][name]) < 60, (name, got[0][name])
        # every decision made a global epoch, labelled with its step
        labels = [records.read_record(job.root / name, n).label
                  for n in records.record_numbers(job.root / name)]
        assert labels == [str(s) for s in got[0][name]]
    for g in got:
        assert "global epoch 1 was not taken: rank 1: TypeError: label must be" in g["error"]
        assert g["after"] == 2  # a failed number is never reused
    assert records.record_numbers(job.root / "error") == [2]


# -- no MPI needed -----------------------------------------------------------------------
def test_import_memckpt_needs_no_mpi():
    code = ("import sys, memckpt, memckpt.mpi\n"
            "assert 'mpi4py' not in sys.modules, 'memckpt imported mpi4py'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _record(n: int, size: int = 2, label: str | None = "x") -> GlobalEpoch:
    return GlobalEpoch(n, tuple(RankEpoch(r, f"rank-{r:05d}", n + r, f"{r:064x}")
                                for r in range(size)), 1.0, label)


def test_records_round_trip_and_are_never_replaced(tmp_path):
    path = records.write_record(tmp_path, _record(3))
    assert path == tmp_path / "global" / "g00000003.json"
    assert records.read_record(tmp_path, 3) == _record(3)
    with pytest.raises(MemckptError, match="committed already"):
        records.write_record(tmp_path, _record(3, label="other"))
    assert records.read_record(tmp_path, 3).label == "x"
    assert os.listdir(tmp_path / "global") == ["g00000003.json"]  # no temporary left


def test_damaged_records_are_skipped_and_a_wrong_size_is_refused(tmp_path):
    for n in (1, 2, 3):
        records.write_record(tmp_path, _record(n))
    p = tmp_path / "global" / "g00000003.json"
    p.write_text(p.read_text().replace('"epoch": 4', '"epoch": 5'))
    with pytest.raises(CorruptionError, match="g00000003.json: BLAKE3 digest mismatch"):
        records.read_record(tmp_path, 3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert [r.number for r in records.readable_records(tmp_path, 2)] == [2, 1]
    assert "skipping global epoch 3" in str(w[0].message)
    with pytest.raises(MemckptError, match="global epoch 2 has 2 ranks, this job 4"), \
            pytest.warns(RuntimeWarning, match="skipping global epoch 3"):
        records.readable_records(tmp_path, 4)
    (tmp_path / "global" / "g00000002.json").write_text('{"format": "memckpt-store"}')
    with pytest.raises(FormatError, match="not a memckpt-global document"):
        records.read_record(tmp_path, 2)


def test_a_temporary_record_is_no_record_and_is_swept(tmp_path):
    records.write_record(tmp_path, _record(1))
    tmp = tmp_path / "global" / ".g00000002.json.123.tmp"
    tmp.write_text("{}")  # rank 0 killed before its rename
    assert records.record_numbers(tmp_path) == [1]
    records.sweep_tmp(tmp_path)
    assert not tmp.exists() and records.record_numbers(tmp_path) == [1]
