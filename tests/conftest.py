"""Shared test helpers: paths, running Snakemake in a scratch folder, real data from ../shared."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from parallel import (  # noqa: F401  (pytest hooks)
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_unconfigure,
    pytest_xdist_make_scheduler,
    starts_background_work,
)

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
SHARED = REPO.parent / "shared"

# Tests run on the CPU even where a GPU is present, so numbers compare across machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session's Snakemake runs (the workflow takes JAX's
# JAX_COMPILATION_CACHE_DIR over results/.jax-cache): each run works in its own folder, and
# without it every one of them compiled the tiny config's programs again (a warm tiny run
# spends about half the CPU time of a cold one).
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = SESSION_JAX_CACHE = tempfile.mkdtemp(prefix="bioaug-jax-cache-")
else:
    SESSION_JAX_CACHE = None

# The readers of tests/test_readers.py (a torch + napari virtualenv, Debian's ImageJ) take a
# minute or two to install. Started in the background as soon as the session knows it runs
# those tests, they install while the other tests run; the readers' fixtures wait for them.
READERS_VENV = Path(os.environ.get("BIOAUG_READERS_VENV", REPO / ".venv-readers"))
IMAGEJ_APT = "apt-get install -y -q imagej xvfb xauth || (apt-get update -q && apt-get install -y -q imagej xvfb xauth)"
BACKGROUND: dict[str, tuple[subprocess.Popen, Path]] = {}
READER_TESTS = ("test_readers.py", "test_byo_classifier.py")  # the tests that use the reader venv


def imagej_missing() -> bool:
    return shutil.which("imagej") is None or shutil.which("xvfb-run") is None


APT_LOCK = Path(tempfile.gettempdir()) / "bioaug-apt.lock"  # apt-get runs one at a time (flock)


def apt_lock() -> list[str]:
    """A prefix that serialises apt-get with the other installs of the session (any worker)."""
    return ["flock", str(APT_LOCK)] if shutil.which("flock") else []


def collected_modules(session) -> set:
    items = getattr(session, "items", ())  # none on pytest-xdist's controller
    return {item.module for item in items if hasattr(item, "module")}


def pytest_collection_finish(session):
    if not starts_background_work():  # one xdist worker starts them (tests/parallel.py)
        return
    # A test module with start_early() (test_slurm.py: the cluster) starts its slow set-up now.
    for module in collected_modules(session):
        if hasattr(module, "start_early"):
            module.start_early()
    if not any(Path(str(item.fspath)).name in READER_TESTS for item in session.items):
        return
    logs = Path(tempfile.mkdtemp(prefix="bioaug-readers-"))
    setup = ["bash", str(REPO / "tests" / "readers" / "setup_venv.sh"), str(READERS_VENV), sys.executable]
    jobs = {"venv": (setup, {})}
    if imagej_missing() and os.geteuid() == 0 and shutil.which("apt-get"):
        jobs["imagej"] = ([*apt_lock(), "bash", "-c", IMAGEJ_APT], {"DEBIAN_FRONTEND": "noninteractive"})
    for name, (cmd, env) in jobs.items():
        log = logs / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
        BACKGROUND[name] = (proc, log)


def pytest_sessionfinish(session):
    for module in collected_modules(session):
        if hasattr(module, "finish_early"):
            module.finish_early()
    if SESSION_JAX_CACHE:
        shutil.rmtree(SESSION_JAX_CACHE, ignore_errors=True)


NETWORK_ERRORS = (
    "No matching distribution",
    "Could not find a version",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectionError",
    "ReadTimeoutError",
)


def wait_for_background(name: str, timeout: float = 1500) -> str:
    """Wait for a background install started at collection; its output ('' if none ran)."""
    if name not in BACKGROUND:
        return ""
    proc, log = BACKGROUND[name]
    proc.wait(timeout=timeout)
    return log.read_text()


def load_tiny_config() -> dict:
    return yaml.safe_load(TINY_CONFIG.read_text())


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _local_env() -> dict[str, str]:
    """The environment for local (non-SLURM) Snakemake runs.

    snakemake-executor-plugin-slurm 2.8 runs `scontrol show config` when it is imported,
    i.e. at every Snakemake start, whatever the executor. Where SLURM's client is installed
    but no controller answers (this machine once the SLURM tests have stopped their
    cluster) that call waits 10 s. Local runs don't use SLURM, so a stub `scontrol` that
    fails at once goes first on their PATH.
    """
    stub_dir = Path(tempfile.gettempdir()) / f"bioaug-no-slurm-{os.getuid()}"
    stub = stub_dir / "scontrol"
    if not stub.exists():
        stub_dir.mkdir(parents=True, exist_ok=True)
        tmp = stub_dir / f".scontrol.{os.getpid()}"
        tmp.write_text("#!/bin/sh\nexit 1\n")
        tmp.chmod(0o755)
        os.replace(tmp, stub)
    return {**os.environ, "PATH": f"{stub_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the workflow with `workdir` as working directory (its config.yaml is the config)."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--nolock",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_local_env())
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule that a dry run would execute ({} when nothing is to be done)."""
    proc = run_snakemake(workdir, "--dry-run", *args)
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real test data not found: {SHARED} is absent (it sits beside the repository on CI)")
    return SHARED


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder of a session fixture, built once per test session by build(folder), also
    across pytest-xdist's workers: the first to ask builds it under a lock, the others wait
    for it and share it (read-only). A failed build fails the others the same way."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders sit side by side in the session's
    folder, failed = root / name, root / f"{name}.failed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():
            pytest.fail(f"{name} failed to build in another worker:\n{failed.read_text()}")
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException as e:
                failed.write_text(str(e)[-12000:])
                raise
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One full run of the pipeline on the tiny config, shared by the end-to-end tests."""

    def build(workdir: Path) -> None:
        write_config(workdir, load_tiny_config())
        run_snakemake(workdir)

    return built_once(tmp_path_factory, "tiny_run", build)


@pytest.fixture(scope="session")
def folds_run(tmp_path_factory) -> Path:
    """The tiny config with 2-fold cross-validation, 2 arms and 1 seed: the per-fold tests."""

    def build(workdir: Path) -> None:
        config = load_tiny_config()
        config["split"]["folds"] = 2
        config["classifier"].update(arms=["real", "real+gan"], seeds=[0])
        write_config(workdir, config)
        run_snakemake(workdir)

    return built_once(tmp_path_factory, "folds_run", build)


@pytest.fixture
def copy_of_run(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (timestamps and Snakemake metadata kept) to modify."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def readers_venv() -> dict:
    """The reader virtualenv (built by tests/readers/setup_venv.sh if absent): python path and
    what is installed in it."""
    marker = READERS_VENV / ".bioaug-readers"
    t0 = time.perf_counter()
    background = wait_for_background("venv")  # started at collection (conftest); then this is instant
    setup = ["bash", str(REPO / "tests" / "readers" / "setup_venv.sh"), str(READERS_VENV), sys.executable]
    proc = subprocess.run(setup, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0 or not marker.exists():
        log = (proc.stdout + proc.stderr)[-4000:]
        if any(e in log for e in NETWORK_ERRORS):
            pytest.skip(f"the reader environment (torch 2.13, torchvision) did not install, no registry?\n{log}")
        pytest.fail(f"tests/readers/setup_venv.sh failed ({proc.returncode}):\n{log}")
    steps = [line for line in (background + proc.stdout).splitlines() if line.endswith(" s")]
    if steps:
        print(f"\nreader environment: {'; '.join(steps)} (waited {time.perf_counter() - t0:.0f} s)")
    installed = marker.read_text()
    return {"python": READERS_VENV / "bin" / "python", "installed": installed, "napari": "\nnapari==" in installed}
