"""Balancing targets, per-tile seeds, and the balanced dataset on disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioaug.balance_policy import class_targets
from bioaug.formats.balanced import read_balanced
from bioaug.formats.synthetic import write_class
from bioaug.runtime import BioaugError
from bioaug.stages.balance import write_balanced
from bioaug.stages.generate import tile_seeds
from helpers import write_shard


def items_table(counts: dict[str, int], split="train") -> pd.DataFrame:
    labels = [c for c, n in counts.items() for _ in range(n)]
    return pd.DataFrame(
        {
            "item_id": [f"it{i:03d}" for i in range(len(labels))],
            "image": "f.tif",
            "group": "f.tif",
            "label": labels,
            "x": 1.0,
            "y": 1.0,
            "split": split,
        }
    )


def test_class_targets_max_class_and_fixed():
    items = pd.concat([items_table({"a": 10, "b": 3, "c": 1}), items_table({"a": 5, "b": 5, "c": 5}, "test")])
    t = class_targets(items, {"target": "max_class", "count": None}).set_index("label")
    assert t["target"].tolist() == [10, 10, 10] and t["n_synthetic"].tolist() == [0, 7, 9]
    t = class_targets(items, {"target": "fixed", "count": 6}).set_index("label")
    # real tiles are never dropped: a class above the fixed count keeps them all
    assert t["target"].tolist() == [10, 6, 6] and t["n_synthetic"].tolist() == [0, 3, 5]


def test_class_with_no_train_items_is_named():
    items = pd.concat([items_table({"a": 4, "b": 2}), items_table({"c": 2}, "val")])
    with pytest.raises(BioaugError, match="class 'c' has no items in the train split"):
        class_targets(items, {"target": "max_class", "count": None})


def test_tile_seeds_are_stable_and_distinct():
    a = tile_seeds(0, 1, 50)
    assert a.dtype == np.int64 and len(set(a.tolist())) == 50 and 0 <= a.min() and a.max() < 2**31
    np.testing.assert_array_equal(a[:10], tile_seeds(0, 1, 10))  # prefix-stable: more tiles, same first ones
    assert not np.array_equal(a, tile_seeds(0, 2, 50)) and not np.array_equal(a, tile_seeds(1, 1, 50))


def test_write_balanced(tmp_path):
    items = pd.concat([items_table({"a": 3, "b w": 1}), items_table({"a": 1, "b w": 1}, "test")], ignore_index=True)
    items["item_id"] = [f"it{i}" for i in range(len(items))]
    tiles = np.random.default_rng(0).random((len(items), 8, 8, 2), dtype=np.float32)
    shard = tmp_path / "tiles" / "shard-00000.npy"
    write_shard(
        shard, tiles, items.assign(tile_id=items["item_id"])[["tile_id", "item_id", "label", "image"]], pd.DataFrame()
    )
    syn = tmp_path / "syn" / "b_w.npy"
    syn.parent.mkdir()
    write_class(
        syn,
        np.full((2, 8, 8, 2), 0.5, np.float32),
        pd.DataFrame(
            {
                "label": "b w",
                "seed": [11, 12],
                "checkpoint": "gen",
                "step": 40,
                "used_for_balance": True,
                "filter_confidence": np.nan,
            }
        ),
        {},
    )

    manifest = write_balanced(items, [shard], [syn], tmp_path / "balanced")
    assert manifest.groupby("label").size().to_dict() == {"a": 3, "b w": 3}
    assert manifest.groupby("origin").size().to_dict() == {"real": 4, "synthetic": 2}
    assert (manifest["split"] == "train").all()
    assert sorted(p.name for p in (tmp_path / "balanced").iterdir()) == ["a", "b_w", "manifest.csv"]
    real_b = manifest[(manifest["label"] == "b w") & (manifest["origin"] == "real")].iloc[0]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "balanced" / real_b["path"]), tiles[3])
    x, m = read_balanced(tmp_path / "balanced")
    assert x.shape == (6, 8, 8, 2) and m["seed"].dropna().astype(int).tolist() == [11, 12]


class FakeGenerator:
    """Stands in for a trained generator: class c, seed s -> a tile filled with (s % 100) / 100."""

    class_names, tile_size, channels, meta = ["a", "b"], 4, 1, {"step": 7}


def test_selective_synthesis_keeps_confident_tiles_until_target(tmp_path, monkeypatch):
    import json

    import bioaug.gan as gan
    from bioaug.stages.generate import generate_class

    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    (gen_dir / "generator.json").write_text(
        json.dumps({"class_names": ["a", "b"], "tile_size": 4, "out_channels": 1, "step": 7})
    )
    monkeypatch.setattr(gan, "load_generator", lambda d: FakeGenerator())
    monkeypatch.setattr(
        gan,
        "sample_tiles",
        lambda g, c, seeds, batch_size: np.stack([np.full((4, 4, 1), (s % 100) / 100, np.float32) for s in seeds]),
    )

    class Filter:  # confident about its class only for bright tiles
        def predict_proba(self, x):
            p = x.reshape(len(x), -1).mean(1)
            return np.stack([1 - p, p], axis=1)

    items = items_table({"a": 20, "b": 5})
    cfg = {"batch_size": 8, "seed": 0, "min_confidence": 0.5, "max_draws_factor": 4}
    summary = generate_class(
        gen_dir, items, "b", {"target": "max_class", "count": None}, cfg, tmp_path / "b.npy", filter_classifier=Filter()
    )
    tiles, meta = np.load(tmp_path / "b.npy"), pd.read_csv(tmp_path / "b.csv")
    assert summary["target"] == 20 and summary["generated"] == len(tiles) == len(meta) == 20
    assert (tiles.reshape(20, -1).mean(1) >= 0.5).all() and (meta["filter_confidence"] >= 0.5).all()
    assert 0.3 < summary["acceptance_rate"] < 0.7 and summary["drawn"] > 20
    assert meta["used_for_balance"].sum() == 15  # 20 target - 5 real
    # an impossible threshold stops at the cap and records the shortfall
    summary = generate_class(
        gen_dir,
        items,
        "b",
        {"target": "max_class", "count": None},
        {**cfg, "min_confidence": 1.01},
        tmp_path / "b2.npy",
        filter_classifier=Filter(),
    )
    assert summary["generated"] == 0 and summary["drawn"] == 80 and summary["short_by"] == 20
