"""generate.match_histograms: the per-class map of synthetic pixel values to the real train
tiles' distribution, and the generate stage that fits, applies and stores it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bioaug import histogram_match
from bioaug.runtime import BioaugError
from helpers import write_shard


def real_like(rng, n: int) -> np.ndarray:
    """Tiles with a gamma-shaped body and an atom of saturated pixels (4%, as in mitotic tiles)."""
    t = np.clip(rng.gamma(2.0, 0.2, (n, 8, 8, 2)), 0, 1).astype(np.float32)  # 4% at 1
    t[..., 1] *= 0.5
    return t


def test_fit_apply_gives_the_real_distribution_and_keeps_the_order():
    rng = np.random.default_rng(0)
    real = real_like(rng, 200)
    fake, fit_on = rng.normal(0.3, 0.2, (2, 300, 8, 8, 2)).astype(np.float32)
    table = histogram_match.fit(real, fit_on)
    assert table.shape == (2, 2, histogram_match.N_QUANTILES)
    assert np.all(np.diff(table, axis=-1) >= 0)  # both quantile rows rise
    matched = histogram_match.apply(fake, table)
    assert matched.dtype == np.float32 and matched.shape == fake.shape
    q = np.linspace(0.01, 0.99, 25)
    for k in range(2):  # channel by channel: the second channel has half the first one's range
        np.testing.assert_allclose(np.quantile(matched[..., k], q), np.quantile(real[..., k], q), atol=0.02)
    # the real atom of saturated pixels is reproduced, and nothing leaves the real range
    assert 0.5 * (real[..., 0] == 1).mean() < (matched[..., 0] == 1).mean() < 2 * (real[..., 0] == 1).mean()
    assert matched.min() >= real.min() and matched.max() <= real.max()
    order = np.argsort(fake[..., 0].ravel(), kind="stable")  # monotone: every tile's arrangement is kept
    assert np.all(np.diff(matched[..., 0].ravel()[order]) >= 0)


def test_fit_names_what_does_not_fit():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="2 channel.*3"):
        histogram_match.fit(real_like(rng, 4), np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="needs real and synthetic tiles"):
        histogram_match.fit(real_like(rng, 4)[:0], np.zeros((4, 8, 8, 2), np.float32))


class FakeGenerator:
    """class c, seed s -> a smooth dark tile whose level depends on the seed (a GAN whose
    intensities are compressed toward the dark end)."""

    class_names, tile_size, channels, meta = ["a", "b"], 8, 2, {"step": 7}


def fake_sample(gen, cls, seeds, batch_size=256):
    out = []
    for s in np.asarray(seeds):
        r = np.random.default_rng(int(s))
        out.append(np.clip(r.normal(0.1 + 0.05 * cls, 0.03, (8, 8, 2)), 0, 1))
    return np.asarray(out, np.float32)


@pytest.fixture
def class_run(tmp_path, monkeypatch):
    """A generator stand-in and one shard: class 'b' has 30 train tiles (real_like), 30 test
    tiles all at 1 and class 'a' 40 train tiles all at 0, so reading anything but b's train
    tiles would show in the map."""
    import bioaug.gan as gan

    monkeypatch.setattr(gan, "load_generator", lambda d: FakeGenerator())
    monkeypatch.setattr(gan, "sample_tiles", fake_sample)
    rng = np.random.default_rng(2)
    b_train = real_like(rng, 30)
    tiles = np.concatenate([b_train, np.ones((30, 8, 8, 2), np.float32), np.zeros((40, 8, 8, 2), np.float32)])
    labels = ["b"] * 60 + ["a"] * 40
    splits = ["train"] * 30 + ["test"] * 30 + ["train"] * 40
    ids = [f"it{i:03d}" for i in range(100)]
    meta = pd.DataFrame({"tile_id": ids, "item_id": ids, "label": labels, "image": "f.tif", "pixel_size_um": np.nan})
    norm = pd.DataFrame({"image": "f.tif", "channel": [0, 1], "low": 0.0, "high": 1.0, "method": "per_channel"})
    write_shard(tmp_path / "shard-00000.npy", tiles, meta, norm)
    items = pd.DataFrame({"item_id": ids, "image": "f.tif", "group": "f.tif", "label": labels, "split": splits})
    return tmp_path, items, b_train


def test_generate_matches_the_class_to_its_own_train_tiles(class_run):
    from bioaug.stages.generate import REFERENCE_TILES, generate_class, tile_seeds

    tmp_path, items, b_train = class_run
    cfg = {"batch_size": 16, "seed": 0, "min_confidence": None, "match_histograms": True}
    summary = generate_class(
        tmp_path / "gen", items, "b", {"target": "max_class", "count": None}, cfg, tmp_path / "b.npy",
        shard_npys=[tmp_path / "shard-00000.npy"],
    )  # fmt: skip
    tiles, seeds = np.load(tmp_path / "b.npy"), pd.read_csv(tmp_path / "b.csv")["seed"].to_numpy()
    assert summary["match_histograms"] is True and len(tiles) == 40  # up to class a's 40
    q = np.linspace(0.02, 0.98, 13)
    for k in range(2):  # b's train tiles, not its test tiles (1) or class a's (0)
        np.testing.assert_allclose(np.quantile(tiles[..., k], q), np.quantile(b_train[..., k], q), atol=0.03)
    # the stored map reproduces every tile from its seed
    stored = json.loads((tmp_path / "b.json").read_text())["histogram_match"]
    table = np.stack([stored["synthetic_quantiles"], stored["real_quantiles"]], axis=1)
    assert stored["reference_tiles"] == REFERENCE_TILES
    np.testing.assert_array_equal(histogram_match.apply(fake_sample(None, 1, seeds), table), tiles)
    # fitted on a reference draw with seeds of its own, not on the tiles it maps
    assert not set(tile_seeds(0, 1, REFERENCE_TILES, stream=1).tolist()) & set(seeds.tolist())
    np.testing.assert_array_equal(seeds, tile_seeds(0, 1, 40))  # the tiles' own seeds are unchanged


def test_generate_off_and_the_filter_sees_matched_tiles(class_run):
    from bioaug.stages.generate import generate_class

    tmp_path, items, _ = class_run
    balance = {"target": "max_class", "count": None}
    off = generate_class(
        tmp_path / "gen", items, "b", balance, {"batch_size": 16, "seed": 0, "min_confidence": None},
        tmp_path / "off.npy",
    )  # fmt: skip
    raw = np.load(tmp_path / "off.npy")
    assert off["match_histograms"] is False and "histogram_match" not in off and raw.max() < 0.4

    seen = []

    class Filter:  # records what it judges; accepts everything
        def predict_proba(self, x):
            seen.append(x)
            return np.tile([0.0, 1.0], (len(x), 1))

    cfg = {"batch_size": 16, "seed": 0, "min_confidence": 0.5, "max_draws_factor": 2, "match_histograms": True}
    generate_class(
        tmp_path / "gen", items, "b", balance, cfg, tmp_path / "on.npy", filter_classifier=Filter(),
        shard_npys=[tmp_path / "shard-00000.npy"],
    )  # fmt: skip
    judged = np.concatenate(seen)
    assert judged.max() > 0.6  # the matched tiles (real b reaches 1), not the raw dark ones
    np.testing.assert_array_equal(judged[:40], np.load(tmp_path / "on.npy"))


def test_generate_without_shards_names_the_key(class_run):
    from bioaug.stages.generate import generate_class

    tmp_path, items, _ = class_run
    with pytest.raises(BioaugError, match="generate.match_histograms"):
        generate_class(
            tmp_path / "gen", items, "b", {"target": "max_class", "count": None},
            {"batch_size": 16, "seed": 0, "min_confidence": None, "match_histograms": True}, tmp_path / "b.npy",
        )  # fmt: skip


def test_the_real_side_reads_at_most_max_tiles_of_the_class_train_split(tmp_path):
    """A large class is read as an evenly spaced subset of its train tiles, across shards; other
    classes and splits never; a small class whole, in shard order."""
    from bioaug.stages.generate import class_train_tiles

    ids = [f"it{i:03d}" for i in range(40)]
    labels = ["b", "a"] * 20
    splits = ["train"] * 30 + ["test"] * 10
    tiles = np.arange(40, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1), np.float32)  # tile i holds i
    meta = pd.DataFrame({"tile_id": ids, "item_id": ids, "label": labels, "image": "f.tif", "pixel_size_um": np.nan})
    norm = pd.DataFrame(columns=["image", "channel", "low", "high"])
    shards = [tmp_path / "shard-00000.npy", tmp_path / "shard-00001.npy"]
    write_shard(shards[0], tiles[:17], meta[:17], norm)
    write_shard(shards[1], tiles[17:], meta[17:].reset_index(drop=True), norm)
    items = pd.DataFrame({"item_id": ids, "image": "f.tif", "group": "f.tif", "label": labels, "split": splits})
    b_train = [i for i in range(40) if labels[i] == "b" and splits[i] == "train"]  # 0, 2, ..., 28: 15 tiles
    whole = class_train_tiles(shards, items, "b", 100)
    assert whole[:, 0, 0, 0].tolist() == b_train
    some = class_train_tiles(shards, items, "b", 5)[:, 0, 0, 0].tolist()
    assert some == [b_train[i] for i in (0, 4, 7, 10, 14)]  # evenly spaced, first and last included


@pytest.mark.parametrize(
    "methods, applies",
    [
        (["per_channel"], True),  # fluorescence
        (["joint"], False),  # stained RGB: one map per channel would pull its colours apart
        (["bit_depth"], False),
        (["per_channel", "joint"], False),  # mixed shards: not every image per channel
    ],
)
def test_auto_follows_the_tiles_normalisation(class_run, methods, applies):
    from bioaug.stages.generate import generate_class

    tmp_path, items, _ = class_run
    shards = [tmp_path / "shard-00000.npy"]
    if len(methods) > 1:  # a second shard, its image normalised another way
        ids = ["zz0"]
        meta = pd.DataFrame({"tile_id": ids, "item_id": ids, "label": "a", "image": "g.tif", "pixel_size_um": np.nan})
        norm = pd.DataFrame({"image": "g.tif", "channel": [0, 1], "low": 0.0, "high": 1.0, "method": methods[1]})
        write_shard(tmp_path / "shard-00001.npy", np.zeros((1, 8, 8, 2), np.float32), meta, norm)
        shards.append(tmp_path / "shard-00001.npy")
    else:  # rewrite the fixture's shard with the method under test
        from bioaug.formats.shards import read_norm_table, shard_files

        norm = read_norm_table(shards[0]).assign(method=methods[0])
        norm.to_csv(shard_files(shards[0])[2], index=False)
    cfg = {"batch_size": 16, "seed": 0, "min_confidence": None, "match_histograms": "auto"}
    balance = {"target": "max_class", "count": None}
    summary = generate_class(tmp_path / "gen", items, "b", balance, cfg, tmp_path / "b.npy", shard_npys=shards)
    assert summary["match_histograms"] is applies and ("histogram_match" in summary) is applies
    off = {**cfg, "match_histograms": False}
    generate_class(tmp_path / "gen", items, "b", balance, off, tmp_path / "off.npy", shard_npys=shards)
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "off.npy")) is not applies
    with pytest.raises(BioaugError, match="generate.match_histograms is auto"):
        generate_class(tmp_path / "gen", items, "b", balance, cfg, tmp_path / "c.npy")
