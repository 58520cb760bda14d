"""An NPZ (MedMNIST-layout) dataset with numeric labels through the whole pipeline: labels
"0", "1", "2" stay strings from items.csv to the balanced set and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import load_tiny_config, run_snakemake, write_config

pytestmark = pytest.mark.slow


def make_npz(path, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 60), ("val", 24), ("test", 24)):
        labels = np.arange(n) % 3
        labels[: n // 6] = 0  # imbalanced: class 0 most common
        images = rng.integers(0, 40, (n, 3, 28, 28), dtype=np.uint8)  # channels first, as PyTorch writes
        for i, c in enumerate(labels):
            images[i, c, 6:22, 6:22] += 180  # class c: a bright square in channel c
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1)
    np.savez(path, **arrays)


def test_npz_dataset_runs_end_to_end_with_its_labels(tmp_path):
    make_npz(tmp_path / "mnistlike.npz")
    config = load_tiny_config()
    config["datasets"] = {"npz": {"source": str(tmp_path / "mnistlike.npz"), "format": "npz",
                                  "annotations": "mnistlike.npz"}}  # fmt: skip
    config["split"]["use_source_split"] = True
    config["classifier"]["arms"] = ["real", "real+gan"]
    work = tmp_path / "work"
    write_config(work, config)
    run_snakemake(work)
    res = work / "results" / "npz"
    items = pd.read_csv(res / "fold-0" / "items.csv", dtype=str)
    assert sorted(items["label"].unique()) == ["0", "1", "2"]
    assert items.groupby("split").size().to_dict() == {"test": 24, "train": 60, "val": 24}
    tiles = pd.read_csv(res / "tiles" / "shard-00000.csv", dtype=str)
    assert sorted(tiles["label"].unique()) == ["0", "1", "2"]
    shard = np.load(res / "tiles" / "shard-00000.npy")
    assert shard.shape[1:] == (16, 16, 3)  # channels first was read as 3 channels, resized to the tile
    manifest = pd.read_csv(res / "balanced" / "manifest.csv", dtype=str)
    largest = int(items[items["split"] == "train"]["label"].value_counts().max())
    assert largest > 20 and manifest.groupby("label").size().to_dict() == {"0": largest, "1": largest, "2": largest}
    assert sorted(p.name for p in (res / "balanced").iterdir() if p.is_dir()) == ["0", "1", "2"]
    summary = (res / "summary.md").read_text()
    assert "| 0 |" in summary and "| 2 |" in summary
