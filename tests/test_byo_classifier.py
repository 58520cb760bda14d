"""Bring your own classifier (classifier.command): the arm's tiles go to the user's script,
its predictions come back into the same result files the report judges."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioaug.classifier.external import check_command
from bioaug.config import defaults, validate_config
from bioaug.runtime import BioaugError
from bioaug.stages.classify import run_arm
from conftest import REPO, load_tiny_config
from helpers import write_shard

BYO = REPO / "tests" / "byo"
SPLITS = ["train"] * 24 + ["val"] * 12 + ["test"] * 12


@pytest.fixture
def easy_dataset(tmp_path):
    """Two classes a classifier cannot miss: a bright centre (a) or a bright border (b), 2 channels."""
    rng = np.random.default_rng(0)
    labels = ["a", "b", "a", "b", "a", "a"] * 8  # imbalanced: 2 a for every b
    tiles = rng.uniform(0, 0.3, (len(labels), 12, 12, 2)).astype(np.float32)
    for t, lab in zip(tiles, labels):
        if lab == "a":
            t[4:8, 4:8] += 0.6
        else:
            t[:2] += 0.6
            t[-2:] += 0.6
    items = pd.DataFrame({"item_id": [f"it{i:02d}" for i in range(len(labels))], "image": "f.tif", "group": "f.tif",
                          "label": labels, "x": 1.0, "y": 1.0, "split": SPLITS})  # fmt: skip
    shard = tmp_path / "shard-00000.npy"
    write_shard(shard, np.clip(tiles, 0, 1), items.assign(tile_id=items["item_id"]), pd.DataFrame())
    return items, [shard]


def cfg_with(command: str, **kw) -> dict:
    return {**defaults()["classifier"], "epochs": 3, "batch_size": 8, "command": command, **kw}


def test_the_script_gets_the_arms_tiles_and_its_predictions_are_judged(easy_dataset, tmp_path, monkeypatch):
    items, shards = easy_dataset
    seen = {}
    import bioaug.classifier.external as external

    real_read = external.read_predictions

    def spy(path, files, names):  # look at the scratch folder before it goes
        work = path.parent
        seen["job"] = json.loads((work / "seen_job.json").read_text())
        seen["train"] = {c: len(list((work / "train" / c).glob("*.tif"))) for c in ("a", "b")}
        seen["predict"] = len(list((work / "predict").glob("*.tif")))
        seen["tile"] = tifffile.imread(next((work / "train" / "b").glob("*.tif")))
        return real_read(path, files, names)

    monkeypatch.setattr(external, "read_predictions", spy)
    command = f"{sys.executable} {BYO / 'nearest_mean.py'} --train {{train}} --val {{val}} --predict {{predict}} " \
              f"--job {{job}} --out {{out}}"  # fmt: skip
    result = run_arm("class_weights", 1, items, shards, cfg_with(command))
    assert seen["train"] == {"a": 16, "b": 8} and seen["predict"] == 12 + 12  # val, then test: unlabelled
    assert seen["tile"].shape == (2, 12, 12) and seen["tile"].dtype == np.float32  # C x H x W, normalised
    assert seen["job"]["options"] == {"class_weighted": True} and seen["job"]["seed"] == 1
    assert seen["job"]["arm"] == "class_weights" and seen["job"]["class_names"] == ["a", "b"]
    assert seen["job"]["total_steps"] == 3 * (24 // 8)  # the shared step budget, for the script to honour
    assert result["classifier"] == "command" and result["n"] == 12 and result["accuracy"] == 1.0
    assert result["val_macro_f1"] == 1.0 and result["macro_auc"] == 1.0  # probabilities were given
    assert result["test_item_ids"] == items.loc[items["split"] == "test", "item_id"].tolist()


def write_script(tmp_path, body: str) -> str:
    script = tmp_path / "mine.py"
    script.write_text("import sys, pathlib\nout = pathlib.Path(sys.argv[2])\nfiles = sorted(p.name for p in "
                      "pathlib.Path(sys.argv[1]).glob('*.tif'))\n" + body)  # fmt: skip
    return f"{sys.executable} {script} {{predict}} {{out}}"


@pytest.mark.parametrize(
    "body, match",
    [
        ("sys.exit(3)", r"failed \(exit 3\) for arm real, seed 0"),
        ("pass", "wrote no predictions.csv"),
        ("out.write_text('file,label\\n' + ''.join(f'{f},a\\n' for f in files[1:]))", "1 missing"),
        ("out.write_text('file,label\\n' + ''.join(f'{f},zebra\\n' for f in files))", r"class\(es\) \['zebra'\]"),
        ("out.write_text('file,label\\n' + ''.join(f'{f},a\\n' for f in files + files[:1]))", "twice"),
        ("out.write_text('name,class\\n')", "needs columns file, label"),
    ],
    ids=["exit", "no-output", "missing", "unknown-class", "twice", "columns"],
)
def test_bad_predictions_are_named(easy_dataset, tmp_path, body, match):
    items, shards = easy_dataset
    with pytest.raises(BioaugError, match=match):
        run_arm("real", 0, items, shards, cfg_with(write_script(tmp_path, body)))


def test_command_is_checked_with_the_config():
    check_command("python x.py {train} {predict} {out}")
    for command, match in [
        ("python x.py {train}", r"needs \{predict\} and \{out\}"),
        ("python x.py {predict} {out} {gpu}", r"unknown placeholder\(s\) \['gpu'\]"),
        ("python x.py {predict} {out} {", "classifier.command"),
    ]:
        with pytest.raises(BioaugError, match=match):
            check_command(command)
    config = load_tiny_config()
    config["datasets"]["tiny"]["classifier"] = {"command": "train.sh {train}"}
    with pytest.raises(BioaugError, match=r"datasets\.tiny\.classifier\.command: needs"):
        validate_config(config)


@pytest.mark.slow
def test_a_pytorch_classifier_is_judged(easy_dataset, readers_venv):
    """tests/byo/train_torch.py, a plain PyTorch 2.13 script as a user would write it, run by
    classifier.command in the reader environment (torch is never a bioaug dependency)."""
    items, shards = easy_dataset
    command = f"{readers_venv['python']} {BYO / 'train_torch.py'} --train {{train}} --val {{val}} " \
              f"--predict {{predict}} --job {{job}} --out {{out}}"  # fmt: skip
    result = run_arm("real+classic", 0, items, shards, cfg_with(command, epochs=15))
    assert result["classifier"] == "command" and result["n"] == 12
    assert result["balanced_accuracy"] >= 0.9 and result["macro_auc"] is not None


@pytest.mark.slow
def test_the_classifier_benchmarks_pytorch_peer_trains(readers_venv, tmp_path):
    """bench_classifier.py's PyTorch worker (the peer the JAX classifier is raced against) runs
    in the torch environment and reports its steps/s."""
    import subprocess

    script = REPO / "tests" / "benchmarks" / "bench_classifier.py"
    cmd = [str(readers_venv["python"]), str(script), "--worker", "torch", "--steps", "3", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["fw"] == "torch" and res["steps"] == 3 and res["steps_per_s"] > 0
    assert res["version"].startswith("2.13")
