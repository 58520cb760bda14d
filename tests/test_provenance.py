"""Every synthetic tile can be regenerated from its manifest row, bit for bit, also after the
GAN was retrained with other settings (the row names an archived generator, not the
`gan/generator` folder the next training overwrites)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bioaug import histogram_match
from bioaug.formats.items import class_names
from bioaug.gan import load_generator, sample_tiles
from conftest import load_tiny_config, run_snakemake, write_config

pytestmark = pytest.mark.slow


def test_a_synthetic_tile_regenerates_from_its_manifest_row_after_retraining(copy_of_run, monkeypatch):
    res = copy_of_run / "results" / "tiny"
    cls = "apoptotic"
    before = np.load(res / "fold-0" / "synthetic" / f"{cls}.npy")
    meta = pd.read_csv(res / "fold-0" / "synthetic" / f"{cls}.csv")
    manifest = pd.read_csv(res / "balanced" / "manifest.csv")
    row = manifest[(manifest["origin"] == "synthetic") & (manifest["label"] == cls)].iloc[0]
    assert row["checkpoint"] == meta["checkpoint"].iloc[0] and "generator-step40" in row["checkpoint"]
    assert int(row["seed"]) == meta["seed"].iloc[0]
    synthetic_rows = [
        line for line in (res / "balanced" / "manifest.csv").read_text().splitlines() if "synthetic" in line
    ]
    assert synthetic_rows and not any(
        f",{int(row['step'])}.0," in line for line in synthetic_rows
    )  # integers, not 40.0

    config = load_tiny_config()
    config["gan"]["lr_d"] = 0.0003  # another run: gan/generator is overwritten
    write_config(copy_of_run, config)
    run_snakemake(copy_of_run, str((res / "fold-0" / "synthetic" / f"{cls}.npy").relative_to(copy_of_run)))
    after = np.load(res / "fold-0" / "synthetic" / f"{cls}.npy")
    assert not np.array_equal(after[0], before[0])  # the new generator draws another tile

    monkeypatch.chdir(copy_of_run)  # manifest paths are relative to the working folder
    gen = load_generator(row["checkpoint"])
    names = class_names(pd.read_csv(res / "fold-0" / "items.csv", dtype=str))
    again = sample_tiles(gen, names.index(cls), np.array([int(row["seed"])]))
    # the tiny run's fluorescence tiles are histogram-matched (tiny.yaml: match_histograms auto): the
    # balanced folder keeps each class's map beside the manifest
    m = json.loads((res / "balanced" / "histogram_match.json").read_text())["classes"][cls]
    again = histogram_match.apply(again, np.stack([m["synthetic_quantiles"], m["real_quantiles"]], axis=1))
    np.testing.assert_array_equal(again[0], before[0])  # bit for bit
    assert gen.meta["step"] == int(row["step"]) == 40
