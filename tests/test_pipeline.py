"""End to end: the whole pipeline on the tiny config, its outputs, and incremental reruns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioaug.formats.items import safe_name
from conftest import load_tiny_config, planned_jobs, run_snakemake, write_config

pytestmark = pytest.mark.slow
DS = "tiny"


def test_outputs_and_contracts(tiny_run):
    res = tiny_run / "results" / DS
    items = pd.read_csv(res / "fold-0" / "items.csv")
    assert {"item_id", "image", "group", "label", "split", "x", "y"} <= set(items.columns)
    ann = pd.read_csv(tiny_run / "resources" / "datasets" / DS / "annotations.csv")
    rejected = pd.read_csv(res / "rejected.csv")
    assert len(items) == len(ann) and rejected.empty  # every annotation is an item

    # Groups (source images) never straddle splits; every class is in every split.
    assert (items.groupby("group")["split"].nunique() == 1).all()
    assert (items.groupby(["label", "split"]).size().unstack().min() > 0).all()

    # Balanced dataset: counts per class equal the target (the largest class's train count).
    manifest = pd.read_csv(res / "balanced" / "manifest.csv")
    train_counts = items[items["split"] == "train"]["label"].value_counts()
    per_class = manifest.groupby("label").size()
    assert (per_class == train_counts.max()).all(), per_class
    real = manifest[manifest["origin"] == "real"]
    assert real.groupby("label").size().sort_index().equals(train_counts.sort_index())
    assert set(real["item_id"]) <= set(items.loc[items["split"] == "train", "item_id"])  # train only
    syn = manifest[manifest["origin"] == "synthetic"]
    assert len(syn) == train_counts.max() * train_counts.size - train_counts.sum()
    assert syn["seed"].notna().all() and syn["checkpoint"].notna().all()
    # the default format: 8-bit ImageJ hyperstacks (2 channels), the synthetic tiles' values to within 1/255
    with tifffile.TiffFile(res / "balanced" / syn["path"].iloc[0]) as tif:
        tile, axes, ij = tif.asarray(), tif.series[0].axes, tif.imagej_metadata
    assert tile.shape == (2, 16, 16) and tile.dtype == np.uint8 and axes == "CYX" and ij["channels"] == 2
    first = syn.iloc[0]
    label_npy = res / "fold-0" / "synthetic" / f"{safe_name(first['label'])}.npy"
    generated = np.load(label_npy)[0]  # the first balancing tile of its class
    np.testing.assert_array_equal(tile, np.rint(np.clip(generated, 0, 1) * 255).astype(np.uint8).transpose(2, 0, 1))
    assert set(manifest[["format", "dtype", "scale"]].itertuples(index=False, name=None)) == {("tiff", "uint8", 255)}
    assert set(real["normalisation"]) == {"per_channel"} and real["low"].str.count("[|]").eq(1).all()
    assert (res / "balanced" / "README.txt").exists()
    # generate.match_histograms (auto in tiny.yaml; on here, as the fluorescence tiles are normalised
    # per channel): the balanced folder carries each class's map, and
    # checkpoint + seed + map regenerate a synthetic tile exactly as generate wrote it
    from bioaug import gan, histogram_match
    from bioaug.formats.items import class_names

    maps = json.loads((res / "balanced" / "histogram_match.json").read_text())["classes"]
    assert set(maps) == set(syn["label"])
    gen = gan.load_generator(res / "fold-0" / "gan" / "generator")
    m = maps[first["label"]]
    table = np.stack([m["synthetic_quantiles"], m["real_quantiles"]], axis=1)
    raw = gan.sample_tiles(gen, class_names(items).index(first["label"]), np.array([int(first["seed"])]))
    np.testing.assert_array_equal(histogram_match.apply(raw, table)[0], generated)
    assert not np.array_equal(raw[0], generated)  # the map did change the values

    # GAN log, classifier metrics, summary and figures.
    gan_log = pd.read_csv(res / "fold-0" / "gan" / "train_log.csv")
    assert gan_log["step"].iloc[-1] == 40 and np.isfinite(gan_log[["d_loss", "g_loss"]].to_numpy()).all()
    arms = ["class_weights", "gan_only", "oversample", "real", "real+classic", "real+gan", "real+gan+classic"]
    n_train = items[items["split"] == "train"]["label"].value_counts().sort_index().tolist()
    for arm in arms:
        m = json.loads((res / "fold-0" / "classify" / arm / "seed-0.json").read_text())
        assert m["split"] == "test" and m["n"] == (items["split"] == "test").sum() == len(m["y_pred"])
        assert 0 <= m["balanced_accuracy"] <= 1 and set(m["per_class"]) == set(items["label"])
        expected = {"real": n_train, "real+gan": [max(n_train)] * 4, "gan_only": [max(n_train)] * 4}.get(arm)
        if expected:
            assert m["n_train_per_class"] == expected, arm
    summary = pd.read_csv(res / "summary.csv")
    assert sorted(summary["arm"]) == arms

    # per-class verdicts for the three GAN arms, computed, with intervals around the difference
    verdicts = pd.read_csv(res / "verdicts.csv")
    per_class = verdicts[verdicts["class"] != "(macro)"]
    assert len(per_class) == 3 * 4 and len(verdicts) == 3 * 5  # and one macro comparison per GAN arm
    n_test = items[items["split"] == "test"]["label"].value_counts()
    for v in per_class.to_dict("records"):  # tiny.yaml: report.min_support 4
        assert v["n_test"] == n_test[v["class"]]
        if v["n_test"] < 4:
            assert v["verdict"] == f"too few test items (n={v['n_test']})"
        else:
            assert v["verdict"] in {"helps", "hurts", "no evidence"} and v["diff_lo_adj"] <= v["diff_lo"]
    assert (verdicts["diff_lo"] <= verdicts["difference"] + 1e-9).all() and (
        verdicts["difference"] <= verdicts["diff_hi"] + 1e-9
    ).all()
    assert not verdicts["baseline_arm"].isin(["real+gan", "real+gan+classic", "gan_only"]).any()
    assert "| verdict |" in (res / "summary.md").read_text()
    quality = pd.read_csv(res / "fold-0" / "gan_quality.csv")
    assert quality["class"].tolist() == ["all", *sorted(items["label"].unique())]
    assert (quality["fid"] >= 0).all() and quality[["precision", "recall", "coverage"]].apply(
        lambda c: c.between(0, 1)
    ).all().all()
    for png in (
        "report/recall_by_arm.png",
        "report/f1_by_arm.png",
        "report/confusion.png",
        "fold-0/closest_pairs.png",
        "report/real_vs_synthetic.png",
        "report/gan_losses.png",
        "fold-0/gan/samples.png",
    ):
        assert (res / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_second_run_does_nothing(tiny_run):
    assert planned_jobs(tiny_run) == {}


def test_classifier_change_reruns_only_classify_and_report(copy_of_run):
    config = load_tiny_config()
    config["classifier"]["lr"] = 0.002
    write_config(copy_of_run, config)
    assert planned_jobs(copy_of_run) == {"classify": 7, "report": 1, "all": 1}


def test_gan_change_reruns_gan_dependants_only(copy_of_run):
    config = load_tiny_config()
    config["gan"]["steps"] = 30
    write_config(copy_of_run, config)
    jobs = planned_jobs(copy_of_run)
    # train_gan, one generate per class, balance, the three GAN arms (not the others), quality, report.
    assert jobs == {"train_gan": 1, "generate": 4, "balance": 1, "classify": 3, "gan_quality": 1, "report": 1, "all": 1}
    out = run_snakemake(copy_of_run, "--dry-run").stdout
    for arm in ("real+gan", "real+gan+classic", "gan_only"):
        assert f"output: results/tiny/fold-0/classify/{arm}/seed-0.json" in out
    for arm in ("real", "real+classic", "oversample", "class_weights"):
        assert f"output: results/tiny/fold-0/classify/{arm}/seed-0.json" not in out


def test_html_report(copy_of_run):
    run_snakemake(copy_of_run, "--report", "report.html")
    html = (copy_of_run / "report.html").read_text(errors="replace")
    assert len(html) > 10_000 and "recall_by_arm.png" in html
