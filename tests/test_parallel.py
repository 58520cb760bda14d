"""tests/parallel.py, the plan by which the suite shares the cores: a small pytest session on
two pytest-xdist workers, in a scratch folder, with the plan's hooks, and where each test ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import REPO

FILES = {
    "conftest.py": f"""
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from parallel import (  # noqa: F401
    pytest_collection_modifyitems, pytest_configure, pytest_unconfigure, pytest_xdist_make_scheduler,
    starts_background_work,
)

def pytest_collection_finish(session):  # as tests/conftest.py starts test_slurm.py's cluster
    if starts_background_work():
        for module in {{item.module for item in session.items}}:
            if hasattr(module, "start_early"):
                module.start_early()
""",
    "pytest.ini": "[pytest]\nmarkers =\n    slow: long\naddopts = -p no:cacheprovider\n",
    "record.py": """
import json, os, time
from pathlib import Path

def record(name):
    with open(Path(__file__).parent / "ran.jsonl", "a") as f:
        f.write(json.dumps({"test": name, "worker": os.environ["PYTEST_XDIST_WORKER"], "t": time.time()}) + "\\n")
""",
    # a module whose background work starts at collection on gw0 (like test_slurm.py)
    "test_background.py": """
import os, time
from pathlib import Path
from record import record

def start_early():
    (Path(__file__).parent / f"started-{os.environ['PYTEST_XDIST_WORKER']}").touch()

def test_b1():
    record("b1")

def test_b2():
    record("b2")
""",
    "test_module_fixture.py": """
import time
from pathlib import Path
import pytest
from record import record

@pytest.fixture(scope="module")
def expensive():
    with open(Path(__file__).parent / "built.txt", "a") as f:
        f.write("x")
    return 1

@pytest.mark.parametrize("i", range(4))
def test_m(expensive, i):
    time.sleep(0.05)
    record(f"m{i}")
""",
    "test_free.py": """
import time
import pytest
from record import record

@pytest.mark.parametrize("i", range(12))
def test_f(i):
    time.sleep(0.1)
    record(f"f{i}")

@pytest.mark.slow
def test_long():
    time.sleep(0.5)
    record("long")
""",
}


def test_plan_keeps_fixtures_together_pins_background_work_and_starts_slow_tests_first(tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "BIOAUG_TEST_PLAN"))}
    plans_before = set(Path(tempfile.gettempdir()).glob("bioaug-test-plan-*"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "19 passed" in proc.stdout
    ran = [json.loads(line) for line in (tmp_path / "ran.jsonl").read_text().splitlines()]
    worker = {r["test"]: r["worker"] for r in ran}
    assert len(worker) == 19
    # background work started on gw0 alone, and its tests ran there, after gw0's other tests
    assert sorted(p.name for p in tmp_path.glob("started-*")) == ["started-gw0"]
    assert worker["b1"] == worker["b2"] == "gw0"
    on_gw0 = [r["test"] for r in sorted(ran, key=lambda r: r["t"]) if r["worker"] == "gw0"]
    assert set(on_gw0[-2:]) == {"b1", "b2"}, on_gw0
    # the module fixture was built once: its tests stayed on one worker
    assert (tmp_path / "built.txt").read_text() == "x"
    assert len({worker[f"m{i}"] for i in range(4)}) == 1
    # both workers worked, and the slow test was the first its worker ran
    assert set(worker.values()) == {"gw0", "gw1"}
    first = min((r for r in ran if r["worker"] == worker["long"]), key=lambda r: r["t"])
    assert first["test"] == "long"
    # the plan's folder is gone with the session
    assert set(Path(tempfile.gettempdir()).glob("bioaug-test-plan-*")) <= plans_before
