"""The regression farm (tb.farm, `make regress`) on real clusters: a LocalCluster of 2
workers, a planted mutant reproduced by the command the report prints, and a loopback
deployment (`dask scheduler` + two `dask worker` processes) with workers that die.

Kept small (a few fast cases, 1-2 seeds); the compiled models are shared by every test
of the session (--models), so each simulator builds once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from distributed import Client
from qbridge.childenv import child_env

from models.contract.layout import REPO
from tb.coverage import CoverageDb
from tb.farm_cluster import JOBQUEUES, Call, gather_jobs, jobqueue_cluster
from tb.farm_plan import RTL, Job, job_seeds, plan
from tb.farm_worker import JobResult

FAST = ("ConfigSpaceEnumeratesAsQemuAndLinuxExpect", "UnclaimedRequestsCompleteUnsupported")
FARM_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def farm_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("farm-models")


def _farm(out: Path, models: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tb.farm", "--out", str(out), "--models",
                           str(models), *args], cwd=REPO, env=child_env(), text=True,
                          capture_output=True, timeout=FARM_TIMEOUT_S)


def _section(stdout: str, title: str) -> list[str]:
    """The indented lines under the `=== title ...` heading of the printed report."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"=== {title}"))
    body = []
    for ln in lines[start + 1:]:
        if not ln.startswith("  "):
            break
        body.append(ln[2:])
    return body


def test_a_small_regression_on_two_workers_merges_results_and_coverage(
        farm_models: Path, tmp_path: Path) -> None:
    run = _farm(tmp_path, farm_models, "--seeds", "2", "--seed", "7", "--sim", "icarus",
                "--sim", "verilator", "--workers", "2", *(f"--test={c}" for c in FAST))
    text = run.stdout + run.stderr
    assert run.returncode == 0, f"farm failed ({run.returncode}):\n{text[-4000:]}"
    assert "REGRESS PASSED: 8 case runs" in run.stdout, run.stdout[-2000:]
    assert not [ln for ln in text.splitlines() if "ERROR" in ln], text[-4000:]
    assert "cluster: LocalCluster, 2 workers; dashboard: http://" in run.stdout

    rows = json.loads((tmp_path / "jobs.json").read_text())
    seeds = job_seeds(7, 2)
    assert sorted((r["case"], r["seed"], r["sim"]) for r in rows) == sorted(
        (c, s, sim) for c in FAST for s in seeds for sim in ("icarus", "verilator")), rows
    assert all(r["result"] == "PASS" and r["seconds"] > 0 and r["worker"] for r in rows), rows

    junit = ET.parse(tmp_path / "results.xml").getroot()
    cases = list(junit.iter("testcase"))
    assert len(cases) == 8 and not [c for c in cases if c.find("failure") is not None]
    assert {c.get("name") for c in cases} == {f"{c}[seed={s}]" for c in FAST for s in seeds}

    # The merged coverage, recomputed from each job's own coverage.json: hits summed, the
    # first seed the first job in plan order that hit the bin.
    merged = json.loads((tmp_path / "coverage.json").read_text())
    expect = CoverageDb()
    first: dict[tuple[str, str], int] = {}
    for r in sorted(rows, key=lambda r: r["job"]):
        job_cov = CoverageDb.load(Path(r["out"]) / "coverage.json")
        expect.merge(job_cov)
        for cp, bins in job_cov.hits.items():
            for b, n in bins.items():
                if n:
                    first.setdefault((cp, b), r["seed"])
    for cp, bins in expect.hits.items():
        for b, n in bins.items():
            got = merged["coverpoints"][cp][b]
            assert got["hits"] == n, f"{cp}/{b}: merged {got['hits']}, jobs sum {n}"
            assert got["first_seed"] == first.get((cp, b)), f"{cp}/{b}: first seed"
    assert merged["covered"] > 0, "the cases recorded no coverage at all"
    # Printed in make sim's format, from the merged database.
    assert _section(run.stdout, "functional coverage") == expect.report(()), run.stdout

    curve = merged["curve"]
    assert len(curve) == 8 and curve == sorted(curve) and curve[-1] == merged["covered"]
    assert (tmp_path / "closure.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert _section(run.stdout, "coverage closure")[0].startswith("bins covered after N jobs")


def test_a_planted_mutant_fails_and_the_printed_command_reproduces_it(
        farm_models: Path, tmp_path: Path) -> None:
    case = FAST[0]
    run = _farm(tmp_path, farm_models, "--seeds", "1", "--sim", "icarus", "--workers", "2",
                "--test", case, "--mutant", "completion_tag")
    assert run.returncode == 0, f"farm failed ({run.returncode}):\n{run.stdout[-4000:]}"
    assert "CAUGHT   completion_tag" in run.stdout, run.stdout
    rows = json.loads((tmp_path / "jobs.json").read_text())
    [rtl] = [r for r in rows if r["variant"] == RTL]
    [bad] = [r for r in rows if r["variant"] == "completion_tag"]
    assert rtl["result"] == "PASS" and bad["result"] == "FAIL", rows
    assert "tag 0 matches no outstanding request" in bad["why"], bad
    assert f"rerun: {bad['repro']}" in run.stdout, "the report does not print the rerun"
    assert bad["repro"].startswith(f"make sim SIM=icarus SEED={bad['seed']} TEST={case} "
                                   "WAVES=1 VERILOG="), bad["repro"]

    again = subprocess.run(["bash", "-c", bad["repro"]], cwd=REPO, env=child_env(),
                           text=True, capture_output=True, timeout=FARM_TIMEOUT_S)
    assert again.returncode != 0, f"the rerun passed:\n{again.stdout[-3000:]}"
    assert f"FAIL  {case}  -- {bad['why'][:120]}" in again.stdout, again.stdout[-3000:]
    waves = [ln.split("waves: ")[1] for ln in again.stdout.splitlines() if "waves: " in ln]
    assert waves and Path(waves[0]).stat().st_size > 0, "the rerun wrote no waves"


# ---------------------------------------------------------------------------------------
# A real multi-process deployment on loopback.

def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def loopback_cluster(tmp_path: Path) -> Iterator[str]:
    """`dask scheduler` on 127.0.0.1 (allowed-failures 1, as docs/regression.md says an
    existing scheduler must run) and two `dask worker`
    processes (nannies restart a dead worker); the scheduler's address.  All stopped
    after the test."""
    env = child_env(extra={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    sched_file = tmp_path / "scheduler.json"
    procs = [_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                     "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                     str(sched_file)], tmp_path / "scheduler.log", env)]
    try:
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.stat().st_size):
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            procs.append(_start([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                 "--local-directory", str(tmp_path / f"w{i}")],
                                tmp_path / f"worker{i}.log", env))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_the_farm_runs_on_a_scheduler_and_two_worker_processes(
        loopback_cluster: str, farm_models: Path, tmp_path: Path) -> None:
    run = _farm(tmp_path, farm_models, "--seeds", "2", "--sim", "icarus", "--sim",
                "verilator", "--test", FAST[0], "--scheduler", loopback_cluster)
    assert run.returncode == 0, f"farm failed ({run.returncode}):\n{run.stdout[-4000:]}"
    assert f"cluster: scheduler {loopback_cluster}" in run.stdout
    rows = json.loads((tmp_path / "jobs.json").read_text())
    assert len(rows) == 4 and all(r["result"] == "PASS" for r in rows), rows
    workers = {r["worker"] for r in rows}
    assert len(workers) == 2, f"the jobs ran on {workers}, not on both worker processes"


def test_a_dying_worker_is_retried_once_then_reported(loopback_cluster: str,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    # Defined here so that Dask ships them by value to the workers.
    def die_once(job: Job, marker: str) -> JobResult:
        import os
        from pathlib import Path

        from tb.farm_worker import JobResult, worker_name
        if not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)
        return JobResult(job, "ran", worker=worker_name())

    def die_always(job: Job, attempts: str) -> JobResult:
        import os
        import uuid
        from pathlib import Path
        (Path(attempts) / uuid.uuid4().hex).touch()
        os._exit(1)

    once, always = plan(["c"], ["icarus"], [1, 2])
    with Client(loopback_cluster, timeout=60) as client:
        # One after the other: a task the scheduler hands to a worker that is dying of
        # another task's doing takes a strike too (Dask counts every task assigned).
        [retried] = gather_jobs(client, {once: Call("test-die-once", die_once,
                                                    (once, str(marker)))}, stall=120)
        [lost] = gather_jobs(client, {always: Call("test-die-always", die_always,
                                                   (always, str(attempts)))}, stall=120)
        results = {retried.job: retried, lost.job: lost}
    assert marker.exists(), "die_once never ran"
    assert results[once].status == "ran", f"not retried: {results[once]}"
    assert results[always].status == "lost", f"not reported lost: {results[always]}"
    assert "KilledWorker" in results[always].note, results[always].note
    tries = len(list(attempts.iterdir()))
    assert tries == 2, f"a task whose worker always dies ran {tries} times, not twice"


_FAKE_SBATCH = """#!/bin/bash
# Slurm's sbatch for tests/test_farm.py: runs (a copy of) the job script here, in its own
# session; dask-jobqueue removes the script once sbatch has returned.
job="$FAKE_SLURM_DIR/job-$(date +%s%N)"
cp "$1" "$job.sh"
setsid bash "$job.sh" > "$job.log" 2>&1 < /dev/null &
echo $! >> "$FAKE_SLURM_DIR/pids"
echo "Submitted batch job $!"
"""
_FAKE_SCANCEL = """#!/bin/bash
for id in "$@"; do kill -TERM -- "-$id" 2> /dev/null; done
exit 0
"""


def test_the_farm_runs_on_slurm_from_the_shipped_config_file(farm_models: Path,
                                                            tmp_path: Path) -> None:
    """dask-jobqueue's Slurm path end to end, with sbatch and scancel stand-ins that run
    the job scripts on this machine: the shipped tb/farm-jobqueue.yaml with only the site's
    facts changed (the checkout's path, one core per batch job, the scheduler on 127.0.0.1)."""
    bindir, slurm = tmp_path / "bin", tmp_path / "slurm"
    bindir.mkdir()
    slurm.mkdir()
    for name, text in (("sbatch", _FAKE_SBATCH), ("scancel", _FAKE_SCANCEL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    shipped = (REPO / "tb" / "farm-jobqueue.yaml").read_text()
    config = yaml.safe_load(shipped.replace("/shared/cosim-kit", str(REPO)))
    site = config["jobqueue"]["slurm"]
    site.update({"cores": 1, "processes": 1, "memory": "2GB", "local-directory": str(slurm),
                 "scheduler-options": {"host": "127.0.0.1"}})
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": site}}))
    env = child_env(extra={"PATH": f"{bindir}:{os.environ['PATH']}",
                           "FAKE_SLURM_DIR": str(slurm)})
    try:
        run = subprocess.run(
            [sys.executable, "-m", "tb.farm", "--out", str(tmp_path / "out"), "--models",
             str(farm_models), "--jobqueue", "slurm", "--jobqueue-config",
             str(tmp_path / "site.yaml"), "--workers", "2", "--sim", "icarus", "--seeds", "2",
             "--test", FAST[0], "--worker-wait", "120"], cwd=REPO, env=env, text=True,
            capture_output=True, timeout=FARM_TIMEOUT_S)
    finally:
        for pid in (slurm / "pids").read_text().split() if (slurm / "pids").exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
    assert run.returncode == 0, f"farm failed ({run.returncode}):\n{run.stdout[-3000:]}"
    assert "cluster: slurm via dask-jobqueue" in run.stdout, run.stdout
    jobs = (slurm / "pids").read_text().split()
    assert len(jobs) == 2, f"{len(jobs)} batch jobs submitted for 2 workers"
    rows = json.loads((tmp_path / "out" / "jobs.json").read_text())
    assert len(rows) == 2 and all(r["result"] == "PASS" for r in rows), rows


def test_a_batch_queue_that_never_starts_a_worker_is_reported_not_waited_on(
        farm_models: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("sbatch", '#!/bin/bash\necho "Submitted batch job 42"\n'),
                       ("scancel", "#!/bin/bash\nexit 0\n")):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": {
        "cores": 1, "processes": 1, "memory": "1GB",
        "scheduler-options": {"host": "127.0.0.1"}}}}))
    env = child_env(extra={"PATH": f"{bindir}:{os.environ['PATH']}"})
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "tb.farm", "--out", str(tmp_path / "out"), "--models",
         str(farm_models), "--jobqueue", "slurm", "--jobqueue-config",
         str(tmp_path / "site.yaml"), "--sim", "icarus", "--seeds", "1", "--test", FAST[0],
         "--worker-wait", "5"], cwd=REPO, env=env, text=True, capture_output=True,
        timeout=FARM_TIMEOUT_S)
    assert run.returncode == 1, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert time.monotonic() - t0 < 120, "the farm waited far past --worker-wait"
    rows = json.loads((tmp_path / "out" / "jobs.json").read_text())
    assert rows and all(r["status"] == "lost" for r in rows), rows
    assert "no worker in the cluster for 5 s" in rows[0]["why"], rows[0]
    assert f"FAIL  {FAST[0]} seed" in run.stdout and "rerun: make sim" in run.stdout


# ---------------------------------------------------------------------------------------
# Plan, input checking and the batch-system config, without a simulator.

def test_seeds_are_distinct_the_base_first_and_nearby_bases_do_not_overlap() -> None:
    a, b = job_seeds(7, 50), job_seeds(8, 50)
    assert a[0] == 7 and len(set(a)) == 50, a
    assert len(set(a) & set(b)) <= 1, "runs with bases 7 and 8 share seeds"
    jobs = plan(["x", "y"], ["icarus", "verilator"], a[:3], ["m"], mutant_seeds=1)
    assert len(jobs) == 2 * 2 * 3 + 2 * 2 and [j.index for j in jobs] == list(range(16))
    assert [j.seed for j in jobs[:4]] == [7] * 4, "the first seed slot is not swept first"
    assert {j.variant for j in jobs[12:]} == {"m"} and {j.seed for j in jobs[12:]} == {7}
    grouped = plan(["x", "y"], ["icarus"], a[:2], group="seed")
    assert [j.cases for j in grouped] == [("x", "y")] * 2


@pytest.mark.parametrize("args, said", [
    (["--seeds", "0"], "argument --seeds: 0 is not at least 1"),
    (["--test", "NoSuchCase"], "unknown case 'NoSuchCase'"),
    (["--mutant", "no_such"], "unknown mutant 'no_such'"),
    (["--seed", "nope"], "--seed must be an integer"),
    (["--jobqueue", "slurm"], "--jobqueue needs --jobqueue-config"),
    (["--scheduler", "nonsense"], "cannot reach the scheduler nonsense"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], said: str, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "tb.farm", "--out", str(tmp_path), *args],
                         cwd=REPO, env=child_env(), text=True, capture_output=True, timeout=120)
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("tb.farm: error: "), run.stderr
    assert said in run.stderr, run.stderr
    assert "Traceback" not in run.stderr + run.stdout, run.stdout


@pytest.mark.parametrize("kind", JOBQUEUES)
def test_the_shipped_jobqueue_config_makes_a_job_script_for_each_batch_system(
        kind: str) -> None:
    with jobqueue_cluster(kind, REPO / "tb" / "farm-jobqueue.yaml") as cluster:
        script = cluster.job_script()
    assert "cd /shared/cosim-kit" in script and "export PYTHONPATH=" in script, script
    assert "/shared/cosim-kit/.venv/bin/python -m distributed.cli.dask_worker" in script
    assert "--nthreads 1" in script and "--nworkers 4" in script, script


def test_the_benchs_model_for_n_workers_divides_only_the_simulation() -> None:
    from bench.regress import Sample, model

    two = Sample(workers=2, group="case", jobs=120, case_runs=120, wall_s=100.0,
                 cluster_start_s=3.0, dispatch_s=95.0, build_s=0.0, job_process_s=180.0,
                 longest_job_s=5.0, case_s=90.0, report_s=2.0, ok=True)
    paper = model(two, build_s=10.0, efficiency=1.0)
    assert paper[1]["wall_s"] == 3.0 + 10.0 + 2.0 + 180.0, paper[1]
    assert paper[4]["wall_s"] == 3.0 + 10.0 + 2.0 + 45.0, paper[4]
    # 64 workers: 2 jobs of 1.5 s each is less than the longest job.
    assert paper[64]["wall_s"] == 3.0 + 10.0 + 2.0 + 5.0, paper[64]
    assert model(two, 0.0, 0.5, jobs=1200)[8]["wall_s"] == 3.0 + 2.0 + 150 * 1.5 / 0.5


def test_teeth_verdicts_tell_a_catch_by_assertion_from_timeouts_crashes_and_no_build() -> None:
    from tb.farm_report import jobs_table, teeth_verdicts
    from tb.regression import CaseVerdict

    sims = ["icarus", "verilator"]
    jobs = plan(["c"], sims, [5], ["caught", "hangs", "lost", "unbuilt"])
    by = {(j.variant, j.sim): j for j in jobs}

    def ran(variant: str, sim: str, why: str) -> JobResult:
        return JobResult(by[variant, sim], "ran", [CaseVerdict("c", False, why, 1.0)],
                         verilog=f"/m/{variant}.v")

    results = [JobResult(by[RTL, s], "ran", [CaseVerdict("c", True, "", 1.0)]) for s in sims]
    results += [ran("caught", s, "Mismatch: console byte #3") for s in sims]
    results += [ran("hangs", s, "job timed out: killed after 600 s") for s in sims]
    results += [JobResult(by["lost", s], "lost", note="KilledWorker: ...") for s in sims]
    results += [JobResult(by["unbuilt", s], "error", note="did not build") for s in sims]
    assert teeth_verdicts(results, sims) == {"caught": "CAUGHT", "hangs": "TIMEOUT",
                                             "lost": "MISSED", "unbuilt": "MISSED"}
    assert teeth_verdicts(results[:3], sims) == {"caught": "WEAK"}
    rows = {(r["variant"], r["sim"]): r for r in jobs_table(results)}
    assert rows[RTL, "icarus"]["result"] == "PASS" and not rows[RTL, "icarus"]["repro"]
    assert rows["caught", "verilator"]["repro"] == (
        "make sim SIM=verilator SEED=5 TEST=c WAVES=1 VERILOG=/m/caught.v")


def test_a_build_folder_is_emptied_when_it_is_given_another_netlist(tmp_path: Path) -> None:
    from tb.regression import claim_build_dir

    build = tmp_path / "build-icarus"
    claim_build_dir(build, Path("/rtl/cosim_top.v"))
    (build / "sim.vvp").write_text("the RTL's model")
    claim_build_dir(build, Path("/rtl/cosim_top.v"))
    assert (build / "sim.vvp").exists(), "a build of the same netlist was thrown away"
    claim_build_dir(build, Path("/mutant/cosim_top.v"))
    assert not (build / "sim.vvp").exists(), "the RTL's model would run as the mutant's"
    assert (build / "verilog.path").read_text() == "/mutant/cosim_top.v"
