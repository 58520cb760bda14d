"""The test session on several processes (pytest-xdist, `-n auto --dist loadgroup` in pyproject).

The suite spends a third of its time with one core idle (XLA compiles on one thread, Snakemake
waits on its jobs), so two workers on two cores finish it sooner. What must stay together:

- the tests that share a module-scoped fixture run on one worker (the fixture is built once);
- test_slurm.py runs on worker gw0: its cluster and SLURM runs are started in the background
  at collection (tests/conftest.py) by gw0 alone, so its tests must run there. They are
  handed out last, when that background work is done;
- the shared runs (conftest's tiny_run, folds_run) are built once for the whole session,
  whichever worker asks first (conftest.built_once); gw0 starts on the tests that use them
  and the other workers on the rest, so nobody waits on a lock at the start;
- the reader tests wait for the reader environment, built in the background at collection
  on gw0: they are handed out after the other tests.

Slow tests (`@pytest.mark.slow`, minutes) go first, so no long test starts when the others are
done. Tests are grouped and tagged on the workers (they know the fixtures and marks), which
write {nodeid: "tags|unit"} (`slow,run|tests/test_x.py`) to a file the controller's scheduler
reads. (Not xdist_group marks: xdist 3.8 renames nodeids for them, which pytest 9.2 ignores.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

SHARED_RUNS = {"tiny_run", "copy_of_run", "folds_run"}  # built once per session (conftest)
LATE = {"readers_venv", "imagej_seen"}  # wait for conftest's background installs
BACKGROUND_WORKER = "gw0"  # the worker that starts the background work of the session
TAGS = {"slow", "run", "late", BACKGROUND_WORKER}
PLAN_ENV = "BIOAUG_TEST_PLAN"  # the folder where the workers write their plan (set by the controller)


def worker() -> str | None:
    """This process's pytest-xdist worker id (gw0, gw1, ...), None outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def starts_background_work() -> bool:
    """Whether this process starts the session's background work (one process per session)."""
    return worker() in (None, BACKGROUND_WORKER)


def _unit(item) -> str:
    """What item is scheduled with: its module when it uses a module-scoped fixture, else itself."""
    fixtures = item._fixtureinfo.name2fixturedefs.values()
    scoped = any(defs[-1].scope in ("module", "package", "class") for defs in fixtures)
    return item.nodeid.split("::", 1)[0] if scoped else item.nodeid


def _tags(item) -> set[str]:
    fixtures = set(item.fixturenames)
    tags = {"slow"} if item.get_closest_marker("slow") else set()
    if fixtures & SHARED_RUNS:
        tags.add("run")
    if fixtures & LATE:
        tags.add("late")
    if hasattr(item.module, "start_early"):
        tags.add(BACKGROUND_WORKER)
    return tags


_MADE_PLAN: list[str] = []  # the plan folder this process made (a pytest run inside a test makes its own)


def pytest_configure(config):
    if worker() is None and config.getvalue("dist") == "loadgroup" and config.getvalue("numprocesses"):
        _MADE_PLAN.append(tempfile.mkdtemp(prefix="bioaug-test-plan-"))
        os.environ[PLAN_ENV] = _MADE_PLAN[-1]  # the workers inherit it


def pytest_unconfigure(config):
    if _MADE_PLAN:
        shutil.rmtree(_MADE_PLAN.pop(), ignore_errors=True)
        os.environ.pop(PLAN_ENV, None)


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: the items that will run
def pytest_collection_modifyitems(config, items):
    """On each worker: write the plan, {nodeid: unit}, for the controller's scheduler."""
    if worker() is None or not os.environ.get(PLAN_ENV):
        return
    units, tags = {}, defaultdict(set)
    for item in items:
        units[item.nodeid] = unit = BACKGROUND_WORKER if hasattr(item.module, "start_early") else _unit(item)
        tags[unit] |= _tags(item)
    plan = {nodeid: f"{','.join(sorted(tags[unit]))}|{unit}" for nodeid, unit in units.items()}
    path = Path(os.environ[PLAN_ENV]) / f"{worker()}.json"
    path.with_suffix(".tmp").write_text(json.dumps(plan))
    path.with_suffix(".tmp").replace(path)


def tags_of(scope: str) -> set[str]:
    head, sep, _ = scope.partition("|")
    tags = set(head.split(",")) - {""} if sep else set()
    return tags if tags <= TAGS else set()


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PlannedScheduling(LoadScopeScheduling):
        """Units of work as the workers' plan says, each handed to the worker that should run
        it next (see above)."""

        plan: dict | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.plan is None:  # written by the workers before they report their collection
                files = sorted(Path(os.environ[PLAN_ENV]).glob("*.json"))
                self.plan = json.loads(files[0].read_text()) if files else {}
            return self.plan.get(nodeid, nodeid)

        def _assign_work_unit(self, node) -> None:
            me = node.gateway.id

            def order(entry):
                position, scope = entry
                tags = tags_of(scope)
                return (
                    BACKGROUND_WORKER in tags,
                    "late" in tags,
                    "slow" not in tags,
                    ("run" in tags) != (me == BACKGROUND_WORKER),
                    -len(self.workqueue[scope]),
                    position,
                )

            mine = [
                (i, scope)
                for i, scope in enumerate(self.workqueue)
                if BACKGROUND_WORKER not in tags_of(scope) or me == BACKGROUND_WORKER
            ]
            if not mine:  # what is left is for another worker
                node.shutdown()
                return
            self.workqueue.move_to_end(min(mine, key=order)[1], last=False)
            super()._assign_work_unit(node)

    return PlannedScheduling(config, log)
