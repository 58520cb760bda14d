"""The pipeline on a real one-node SLURM cluster (tests/cluster/slurm.sh), through
snakemake-executor-plugin-slurm and workflow/profiles/slurm.

A session fixture installs (Debian's packages, if missing) and starts the cluster, and
stops it at the end; it needs root and apt-get (or SLURM already installed), as on CI.
Then:

- the tiny pipeline runs through SLURM: every job went through sbatch (job ids in
  sacct), small jobs were grouped, outputs equal a local run, a second run submits nothing;
- train_gan is cancelled with scancel after its first checkpoint: Snakemake's retry
  resubmits it and training resumes from the checkpoint;
- changing a GAN setting resubmits only the GAN-dependent jobs.

About 6-8 minutes on 2 cores (the SLURM run waits on the plugin's status checks, at least
~12 s per dependent step). Set BIOAUG_KEEP_SLURM=1 to leave the cluster running afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import APT_LOCK, REPO, SNAKEFILE, load_tiny_config, planned_jobs, write_config

pytestmark = pytest.mark.slow

CLUSTER_SH = REPO / "tests" / "cluster" / "slurm.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
COMMON_SMK = REPO / "workflow" / "rules" / "common.smk"
ACCOUNT, PARTITION = "bioaug", "debug"
DS = "tiny"
RUN_LIMIT_S = 900  # per Snakemake run, enforced with `timeout -s KILL`
GROUPED = {"tile": "tiles", "generate": "generate", "classify": "classify"}  # rule -> group


# ----------------------------------------------------------------------------- the cluster
def why_no_cluster() -> str | None:
    """Why this machine cannot run the test cluster (a skip reason), or None."""
    if not sys.platform.startswith("linux"):
        return "the test cluster needs Linux"
    if os.geteuid() != 0:
        return "bringing up SLURM (apt-get install, starting munged/slurmctld/... by hand) needs root"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it (Debian/Ubuntu only)"
    return None


@dataclass
class ClusterStart:
    """What bringing the cluster up gave: a skip reason, a failure, or the cluster."""

    skip: str | None = None
    failure: str | None = None
    cluster: dict | None = None
    seconds: float = 0.0
    pipeline: tuple | None = None  # the tiny pipeline through SLURM, started (start_snakemake)
    workdir: Path | None = None


def bring_up_cluster(then_start_pipeline: bool = False) -> ClusterStart:
    """Install the SLURM plugin if missing, start the cluster (tests/cluster/slurm.sh up, which
    waits for apt's lock: tests/conftest.py installs ImageJ with apt meanwhile), and optionally
    start the tiny pipeline through it."""
    reason = why_no_cluster()
    if reason:
        return ClusterStart(skip=reason)
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:  # an optional extra
        pip = [sys.executable, "-m", "pip", "install", "-q", "-r", str(REPO / "envs" / "requirements-slurm.txt")]
        proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return ClusterStart(failure=f"could not install envs/requirements-slurm.txt:\n{proc.stderr[-3000:]}")
    env = {**os.environ, "SLURM_TEST_ACCOUNT": ACCOUNT, "SLURM_TEST_PARTITION": PARTITION}
    env["SLURM_TEST_APT_LOCK"] = str(APT_LOCK)  # the script locks its apt-get only: no daemon inherits the lock
    t0 = time.perf_counter()
    cmd = ["bash", str(CLUSTER_SH), "up"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        return ClusterStart(failure=f"tests/cluster/slurm.sh up failed ({proc.returncode}):\n{output}")
    cpus = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    start = ClusterStart(
        cluster={"account": ACCOUNT, "partition": PARTITION, "cpus": cpus}, seconds=time.perf_counter() - t0
    )
    if then_start_pipeline:
        start.workdir = Path(tempfile.mkdtemp(prefix="bioaug-slurm-run-"))
        write_config(start.workdir, load_tiny_config())
        start.pipeline = start_snakemake(start.workdir, *cluster_args(start.cluster))
    return start


# Started when the session collects these tests (tests/conftest.py calls start_early): the
# cluster's bring-up, the tiny pipeline through it and then the two runs on copies of it (the
# GAN-change rerun and the preemption run) mostly wait (apt, daemons, the plugin's status
# checks), so they run while the other test files do; the fixtures below wait for them.
EARLY: dict = {}
PHASES = ("cluster", "run", "preempted")  # an Event each, set when that part is done (or failed)


def start_early() -> None:
    if "thread" in EARLY:
        return
    EARLY.update({phase: threading.Event() for phase in PHASES})
    EARLY["follow_ups"] = Path(tempfile.mkdtemp(prefix="bioaug-slurm-follow-ups-"))
    EARLY["thread"] = threading.Thread(target=_run_early, daemon=True)
    EARLY["thread"].start()


def _run_early() -> None:
    try:
        start = EARLY["start"] = bring_up_cluster(True)
        EARLY["cluster"].set()
        if not start.pipeline:
            return
        run = EARLY["slurm_run"] = finish_snakemake(start.workdir, *start.pipeline)
        if run.returncode != 0:
            return
        follow_ups = EARLY["follow_ups"]
        EARLY["gan_change"] = start_gan_change(run.workdir, start.cluster, follow_ups / "gan_change")
        EARLY["run"].set()
        EARLY["preempted_run"] = run_preemption(run.workdir, start.cluster, follow_ups / "preempt")
    except Exception as e:  # reported by the fixture that waits for the failed part
        EARLY["error"] = f"{type(e).__name__}: {e}"
    finally:
        for phase in PHASES:
            EARLY[phase].set()


def wait_early(phase: str, timeout: float = 1500) -> None:
    """Wait for a part started at collection; fail with the thread's error if it raised."""
    if not EARLY[phase].wait(timeout):
        pytest.fail(f"the SLURM tests' background start ({phase}) did not finish in {timeout:.0f} s")
    if "error" in EARLY:
        pytest.fail(f"the SLURM tests' background start failed: {EARLY['error']}")


def finish_early() -> None:
    """At the end of the session: nothing started early keeps running (the fixtures normally
    have finished it already)."""
    if "thread" not in EARLY:
        return
    EARLY["thread"].join(timeout=900)
    start = EARLY.get("start")
    handle = EARLY.get("gan_change")
    if handle and handle["run"] is None:
        finish_snakemake(handle["workdir"], *handle["started"])
    if start and start.pipeline and "slurm_run" not in EARLY:
        start.pipeline[0].kill()
        run_id = run_id_of(start.pipeline[1].read_text(errors="replace"))
        if run_id:
            subprocess.run(["scancel", "--name", run_id], capture_output=True)
    if start and start.cluster and not EARLY.get("down") and not os.environ.get("BIOAUG_KEEP_SLURM"):
        subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, text=True, timeout=300)
    if start and start.workdir:
        shutil.rmtree(start.workdir, ignore_errors=True)
    shutil.rmtree(EARLY["follow_ups"], ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster: {'account', 'partition', 'cpus'}; stopped at the end."""
    if "thread" in EARLY:
        EARLY["cluster"].wait(timeout=1200)
        start = EARLY.get("start") or ClusterStart(
            failure=EARLY.get("error", "the cluster's bring-up did not finish in 20 minutes")
        )
    else:  # this module imported without conftest's early start
        start = bring_up_cluster()
    if start.skip:
        pytest.skip(start.skip)
    if start.failure:
        pytest.fail(start.failure)
    print(f"\nSLURM test cluster up in {start.seconds:.1f} s")
    yield start.cluster
    if not os.environ.get("BIOAUG_KEEP_SLURM"):
        subprocess.run(["bash", str(CLUSTER_SH), "down"], capture_output=True, text=True, timeout=300)
        EARLY["down"] = True


# ----------------------------------------------------------------------------- running Snakemake
@dataclass
class SlurmRun:
    workdir: Path
    returncode: int
    output: str
    seconds: float
    run_id: str | None = None
    submitted: dict[str, str] = field(default_factory=dict)  # SLURM job id -> log dir (rule_x / group_x)

    def finished(self) -> dict[str, int]:
        """Jobs per rule that Snakemake reports finished (without the local `all`)."""
        counts: dict[str, int] = {}
        for rule in re.findall(r"Finished jobid: \S+ \(Rule: (\w+)\)", self.output):
            if rule != "all":
                counts[rule] = counts.get(rule, 0) + 1
        return counts

    def tail(self, n: int = 6000) -> str:
        return self.output[-n:]


def rules_with_resources() -> list[str]:
    """The rule names in RESOURCES (workflow/rules/common.smk)."""
    text = COMMON_SMK.read_text()
    block = text[text.index("RESOURCES = {") :]
    block = block[: block.index("\n}\n")]
    return re.findall(r'^\s+"(\w+)":\s*\{', block, flags=re.M)


def cluster_args(cluster: dict, *extra: str) -> list[str]:
    """The slurm profile, adapted to the test cluster.

    Command-line values replace the profile's value of the same key as a whole, so
    --default-resources restates what the profile sets there. The node has no GPU (gpu=0
    for the two GPU rules) and only `cpus` CPUs (--cores caps threads and group width);
    every rule asks for 1000 MB so that the cluster's memory is never the limit.
    """
    mem = [f"{rule}:mem_mb=1000" for rule in rules_with_resources()]
    return [
        "--workflow-profile",
        str(PROFILE),
        "--jobs",
        "4",
        "--cores",
        str(cluster["cpus"]),
        "--default-resources",
        f"slurm_account={cluster['account']}",
        f"slurm_partition={cluster['partition']}",
        "runtime=30",
        "mem_mb=1000",
        "--set-resources",
        "train_gan:gpu=0",
        "generate:gpu=0",
        *mem,
        "--slurm-init-seconds-before-status-checks",
        "2",
        *extra,
    ]


def start_snakemake(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path, float]:
    log = workdir / f"snakemake-slurm-{time.time_ns()}.out"
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(RUN_LIMIT_S),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        *args,
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return proc, log, time.perf_counter()


def run_id_of(text: str) -> str | None:
    m = re.search(r"SLURM run ID: (\S+)", text)
    return m.group(1) if m else None


def finish_snakemake(workdir: Path, proc: subprocess.Popen, log: Path, t0: float) -> SlurmRun:
    try:
        proc.wait(timeout=RUN_LIMIT_S + 60)
    finally:
        output = log.read_text(errors="replace")
        run_id = run_id_of(output)
        if proc.returncode is None or proc.returncode != 0:
            proc.kill()
            if run_id:  # leave nothing queued behind a failed or killed run
                subprocess.run(["scancel", "--name", run_id], capture_output=True)
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/([^/\s]+)/", output))
    return SlurmRun(workdir, proc.returncode, output, time.perf_counter() - t0, run_id, submitted)


def slurm_snakemake(workdir: Path, *args: str) -> SlurmRun:
    return finish_snakemake(workdir, *start_snakemake(workdir, *args))


def sacct_jobs(run_id: str, expected: int | None = None) -> pd.DataFrame:
    """SLURM jobs (allocations) of one Snakemake run: JobIDRaw, Comment, State."""
    start = (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    cmd = ["sacct", "-X", "-n", "-P", "--name", run_id, "-S", start, "-o", "JobIDRaw,Comment,State"]
    for _ in range(60):  # accounting records reach slurmdbd asynchronously
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows = [line.split("|", 2) for line in out.splitlines() if line.strip()]
        jobs = pd.DataFrame(rows, columns=["JobIDRaw", "Comment", "State"])
        done = jobs["State"].str.match(r"^(COMPLETED|CANCELLED|FAILED|TIMEOUT|OUT_OF_MEMORY)")
        if (expected is None or len(jobs) >= expected) and done.all():
            return jobs
        time.sleep(0.5)
    return jobs


def expected_submissions(jobs_per_rule: dict[str, int]) -> int:
    """SLURM jobs for these jobs: one per ungrouped job, one per group-components bundle."""
    components = yaml.safe_load((PROFILE / "config.yaml").read_text())["group-components"]
    return sum(math.ceil(n / components[GROUPED[rule]]) if rule in GROUPED else n for rule, n in jobs_per_rule.items())


# ----------------------------------------------------------------------------- comparisons
TIMING = {"seconds", "train_seconds", "steps_per_s", "elapsed_s"}  # wall-clock figures


def _no_timing(obj):
    if isinstance(obj, dict):
        return {k: _no_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_no_timing(v) for v in obj]
    return obj


def assert_same_outputs(local: Path, cluster: Path) -> None:
    """Results of the cluster run equal the local run's, wall-clock figures aside."""
    a, b = local / "results" / DS, cluster / "results" / DS
    exact = ["fold-0/items.csv", "index.csv", "balanced/manifest.csv", "fold-0/gan_quality.csv"]
    exact += ["fold-0/memorisation.csv"]
    exact += sorted(
        str(p.relative_to(a))
        for d in ("tiles", "fold-0/synthetic", "balanced")
        for p in (a / d).rglob("*")
        if p.is_file()
    )
    assert any(f.startswith("tiles/shard-") and f.endswith(".npy") for f in exact)
    for rel in dict.fromkeys(exact):
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), f"{rel} differs between the local and the SLURM run"
    assert sorted(p.relative_to(b) for p in (b / "tiles").rglob("*")) == sorted(
        p.relative_to(a) for p in (a / "tiles").rglob("*")
    )
    # The GAN's log and the classifiers' metrics (y_pred included) hold timings too.
    for rel in ("fold-0/gan/train_log.csv", "summary.csv"):
        ta, tb = pd.read_csv(a / rel), pd.read_csv(b / rel)
        keep = [c for c in ta.columns if c not in TIMING]
        pd.testing.assert_frame_equal(ta[keep], tb[keep], obj=rel)
    jsons = sorted(p.relative_to(a) for p in (a / "fold-0" / "classify").rglob("*.json"))
    assert jsons and jsons == sorted(p.relative_to(b) for p in (b / "fold-0" / "classify").rglob("*.json"))
    for rel in jsons:
        ja, jb = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
        assert ja["y_pred"] == jb["y_pred"], rel
        assert _no_timing(ja) == _no_timing(jb), rel


# ----------------------------------------------------------------------------- a: the whole pipeline
@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, request):
    """The tiny pipeline through SLURM (started at collection, see start_early); the local
    reference run (tiny_run) is made meanwhile if it is not there yet."""
    start = EARLY.get("start")
    if start and start.pipeline:
        local = request.getfixturevalue("tiny_run")  # already there when test_pipeline.py ran first
        wait_early("run")
        run = EARLY["slurm_run"]
    else:
        workdir = tmp_path_factory.mktemp("slurm_run")
        write_config(workdir, load_tiny_config())
        started = start_snakemake(workdir, *cluster_args(slurm_cluster))
        local = request.getfixturevalue("tiny_run")
        run = finish_snakemake(workdir, *started)
    assert run.returncode == 0, f"SLURM run failed ({run.returncode}):\n{run.tail()}"
    print(
        f"\ntiny pipeline through SLURM: {run.seconds:.0f} s, {len(run.submitted)} SLURM jobs "
        f"for {sum(run.finished().values())} Snakemake jobs {run.finished()}"
    )
    return run, local


def test_pipeline_through_slurm(slurm_run, slurm_cluster):
    run, local = slurm_run
    finished = run.finished()
    assert {"download", "index", "split", "tile", "train_gan", "generate", "balance", "classify", "report"} <= set(
        finished
    )
    # every job went through sbatch, in bundles for the grouped rules
    assert run.run_id and run.submitted
    assert len(run.submitted) == expected_submissions(finished) < sum(finished.values())
    for rule, group in GROUPED.items():
        bundles = sum(1 for d in run.submitted.values() if d.startswith(f"group_{group}_"))
        assert bundles == math.ceil(
            finished[rule] / yaml.safe_load((PROFILE / "config.yaml").read_text())["group-components"][group]
        )
    jobs = sacct_jobs(run.run_id, expected=len(run.submitted))
    assert sorted(jobs["JobIDRaw"]) == sorted(run.submitted), jobs
    assert (jobs["State"] == "COMPLETED").all(), jobs
    assert jobs["Comment"].str.contains("rule_train_gan").sum() == 1

    assert_same_outputs(local, run.workdir)

    again = slurm_snakemake(run.workdir, *cluster_args(slurm_cluster))
    assert again.returncode == 0, again.tail()
    assert "Nothing to be done" in again.output and not again.submitted
    if again.run_id:
        assert sacct_jobs(again.run_id).empty


# ----------------------------------------------------------------------------- b: preemption
PREEMPT_STEPS, PREEMPT_CKPT, PREEMPT_LOG = 1000, 20, 10
RESUMED = re.compile(r"resumed GAN training from (\S+) at step (\d+)")


@pytest.fixture(scope="module")
def preempted_run(slurm_run, slurm_cluster, tmp_path_factory, gan_change_rerun):
    """train_gan (1000 steps) scancel'ed once it has a checkpoint, then retried by Snakemake
    (run_preemption; done at collection's start when the session started it early)."""
    if "slurm_run" in EARLY:  # the background start goes on with it
        wait_early("preempted")
        result, cancelled = EARLY["preempted_run"]
    else:
        result, cancelled = run_preemption(slurm_run[0].workdir, slurm_cluster, tmp_path_factory.mktemp("preempt"))
    assert cancelled, f"train_gan was never seen running with a checkpoint:\n{result.tail()}"
    assert result.returncode == 0, f"the retried run failed ({result.returncode}):\n{result.tail()}"
    print(
        f"\npreemption run: {result.seconds:.0f} s, cancelled SLURM job {cancelled['job']} "
        f"with a checkpoint at step {cancelled['checkpoint']}"
    )
    return result, cancelled


def copy_run(run_workdir: Path, dest: Path, **gan) -> Path:
    """A copy of a finished run at dest/run (timestamps and Snakemake metadata kept), its
    config the tiny one with these `gan` settings."""
    workdir = dest / "run"
    shutil.copytree(run_workdir, workdir, symlinks=True)
    config = load_tiny_config()
    config["gan"].update(gan)
    write_config(workdir, config)
    return workdir


def run_preemption(run_workdir: Path, cluster: dict, dest: Path) -> tuple[SlurmRun, dict | None]:
    """A copy of the SLURM run at `dest` whose train_gan (1000 steps) is scancel'ed once it
    has a checkpoint, then retried by Snakemake: (the run, {'job', 'checkpoint'} cancelled).

    `--slurm-status-command squeue`: with the plugin's default (sacct), a job cancelled
    with scancel is never seen as ended, since sacct reports 'CANCELLED by <uid>' and the
    plugin (2.8.0) only knows 'CANCELLED': Snakemake would wait forever. squeue says
    'CANCELLED' (it keeps ended jobs for MinJobAge = 300 s, longer than the plugin's
    longest pause between checks, 180 s). Runs beside the GAN-change rerun (started first).
    """
    # another seed: a fresh run (a longer run of the same settings would resume at step 40)
    workdir = copy_run(
        run_workdir, dest, steps=PREEMPT_STEPS, checkpoint_every=PREEMPT_CKPT, log_every=PREEMPT_LOG, seed=1
    )
    ckpt_root = workdir / "results" / DS / "fold-0" / "gan" / "checkpoints"
    before = {p.name for p in ckpt_root.iterdir()} if ckpt_root.exists() else set()

    proc, log, t0 = start_snakemake(
        workdir,
        *cluster_args(
            cluster,
            "--set-threads",  # (takes several values: not right before the target)
            "train_gan=1",
            "--retries",
            "1",
            "--slurm-status-command",
            "squeue",
            f"results/{DS}/fold-0/gan/train_log.csv",
        ),
    )
    cancelled = None
    try:
        deadline = time.monotonic() + 400
        while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
            steps = [
                int(s.name)
                for d in (ckpt_root.iterdir() if ckpt_root.exists() else ())
                if d.name not in before
                for s in d.iterdir()
                if s.name.isdigit()
            ]
            run_id = run_id_of(log.read_text(errors="replace"))
            if steps and run_id:
                ids = subprocess.run(
                    ["squeue", "-h", "--name", run_id, "-o", "%i"], capture_output=True, text=True, check=True
                ).stdout.split()
                if len(ids) != 1:
                    raise RuntimeError(f"expected one train_gan job of run {run_id} in squeue, got {ids}")
                subprocess.run(["scancel", ids[0]], check=True)
                cancelled = {"job": ids[0], "checkpoint": max(steps)}
                break
            time.sleep(0.1)
    finally:
        result = finish_snakemake(workdir, proc, log, t0)
    return result, cancelled


def test_preempted_train_gan_resumes_from_checkpoint(preempted_run):
    run, cancelled = preempted_run
    # two SLURM jobs for train_gan: the cancelled one and Snakemake's retry
    assert "Trying to restart job" in run.output
    jobs = sacct_jobs(run.run_id, expected=2)
    assert list(jobs["JobIDRaw"]) == list(run.submitted) and len(jobs) == 2, jobs
    assert jobs["JobIDRaw"].iloc[0] == cancelled["job"] and jobs["State"].iloc[0].startswith("CANCELLED"), jobs
    assert jobs["State"].iloc[1] == "COMPLETED", jobs
    # the retry resumed from the checkpoint (the log file is the retry's: Snakemake
    # removes a job's log before each attempt)
    res = run.workdir / "results" / DS
    resumed = RESUMED.findall((run.workdir / "logs" / DS / "fold-0" / "train_gan.log").read_text())
    assert len(resumed) == 1, resumed
    step = int(resumed[0][1])
    assert cancelled["checkpoint"] <= step < PREEMPT_STEPS and step % PREEMPT_CKPT == 0
    assert Path(resumed[0][0]).parent == (res / "fold-0" / "gan" / "checkpoints").resolve()
    log = pd.read_csv(res / "fold-0" / "gan" / "train_log.csv")
    assert log["step"].iloc[-1] == PREEMPT_STEPS and log["step"].is_unique
    assert set(log["step"]) >= set(range(step + PREEMPT_LOG, PREEMPT_STEPS + 1, PREEMPT_LOG))


def test_preempted_train_log_has_every_step_once(preempted_run):
    # Snakemake deletes a failed job's declared outputs (train_log.csv among them) before the
    # retry; the GAN keeps its log beside the checkpoints, so no row is lost.
    run, _ = preempted_run
    log = pd.read_csv(run.workdir / "results" / DS / "fold-0" / "gan" / "train_log.csv")
    assert log["step"].tolist() == list(range(PREEMPT_LOG, PREEMPT_STEPS + 1, PREEMPT_LOG))


# ----------------------------------------------------------------------------- c: incremental rerun
GAN_CHANGE = {"train_gan": 1, "generate": 4, "balance": 1, "classify": 3, "gan_quality": 1, "report": 1, "all": 1}


@pytest.fixture(scope="module")
def gan_change_rerun(slurm_run, slurm_cluster, tmp_path_factory):
    """A copy of the SLURM run with another gan.steps, its rerun started (not waited for): it
    runs beside the preemption run, both with train_gan on 1 CPU so the node fits both."""
    if "gan_change" in EARLY:
        yield EARLY["gan_change"]  # finish_early waits for it if no test did
        return
    handle = start_gan_change(slurm_run[0].workdir, slurm_cluster, tmp_path_factory.mktemp("slurm_gan_change"))
    yield handle
    if handle["run"] is None:  # never leave it running
        finish_snakemake(handle["workdir"], *handle["started"])


def start_gan_change(run_workdir: Path, cluster: dict, dest: Path) -> dict:
    """Copy the SLURM run to `dest`, set another gan.steps, plan (dry run) and start its rerun:
    {'planned', 'workdir', 'started', 'run': None until a test finishes it}."""
    workdir = copy_run(run_workdir, dest, steps=30)
    handle = {"planned": planned_jobs(workdir), "workdir": workdir, "run": None}
    handle["started"] = start_snakemake(workdir, *cluster_args(cluster, "--set-threads", "train_gan=1"))
    return handle


def test_gan_change_resubmits_only_gan_dependants(gan_change_rerun):
    assert gan_change_rerun["planned"] == GAN_CHANGE
    rerun = gan_change_rerun["run"] = finish_snakemake(gan_change_rerun["workdir"], *gan_change_rerun["started"])
    assert rerun.returncode == 0, rerun.tail()
    expected = {k: v for k, v in GAN_CHANGE.items() if k != "all"}
    assert rerun.finished() == expected
    # train_gan, generate (1 group), balance, classify (1 group), gan_quality, report
    n = expected_submissions(expected)
    assert len(rerun.submitted) == n
    jobs = sacct_jobs(rerun.run_id, expected=n)
    assert sorted(jobs["JobIDRaw"]) == sorted(rerun.submitted) and (jobs["State"] == "COMPLETED").all(), jobs
    for arm in ("real+gan", "real+gan+classic", "gan_only"):
        assert f"output: results/{DS}/fold-0/classify/{arm}/seed-0.json" in rerun.output
    for arm in ("real", "real+classic", "oversample", "class_weights"):
        assert f"output: results/{DS}/fold-0/classify/{arm}/seed-0.json" not in rerun.output
    print(
        f"\nGAN-change rerun through SLURM: {rerun.seconds:.0f} s, {len(rerun.submitted)} SLURM jobs "
        f"for {sum(rerun.finished().values())} Snakemake jobs"
    )
