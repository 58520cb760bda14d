"""The verdict rule (bioaug.verdicts): paired group bootstrap, baseline chosen on validation,
support floor, Bonferroni adjustment. Each test is built so that the shortcut it guards
against (an unpaired or a tiles-only bootstrap, a baseline picked on test, no floor, no
adjustment) would fail it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bioaug.verdicts import MACRO, bootstrap_p, summarise_arms


def fake_results(y_true, preds_by_arm, val=None, items=None):
    """Classify results of every (arm, seed): per-tile test predictions and validation scores
    (val: arm -> per-class validation F1, the same for every seed; default 0.5)."""
    n_classes = int(np.max(y_true)) + 1
    names = [f"c{i}" for i in range(n_classes)]
    out = []
    for arm, preds in preds_by_arm.items():
        v = (val or {}).get(arm, [0.5] * n_classes)
        for s, p in enumerate(preds):
            out.append(
                {
                    "arm": arm,
                    "seed": s,
                    "y_true": list(map(int, y_true)),
                    "y_pred": list(map(int, p)),
                    "test_tile_ids": [f"t{i}" for i in range(len(y_true))],
                    "test_item_ids": list(items) if items is not None else [f"t{i}" for i in range(len(y_true))],
                    "seconds": 1.0,
                    "val_per_class_f1": dict(zip(names, map(float, v))),
                    "val_macro_f1": float(np.mean(v)),
                }
            )
    return out, names


def rare_predictions(y, p_rare_correct, rng):
    out = y.copy()
    rare = np.flatnonzero(y == 1)
    out[rare[rng.random(len(rare)) > p_rare_correct]] = 0
    return out


def test_verdicts_from_paired_adjusted_intervals():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], [300, 60])  # class 1 is rare
    results, names = fake_results(
        y,
        {
            "real": [rare_predictions(y, 0.3, rng) for _ in range(3)],
            "oversample": [rare_predictions(y, 0.4, rng) for _ in range(3)],
            "real+gan": [rare_predictions(y, 0.9, rng) for _ in range(3)],  # clearly better on the rare class
            "gan_only": [rare_predictions(y, 0.05, rng) for _ in range(3)],  # clearly worse
            "real+gan+classic": [rare_predictions(y, 0.4, rng) for _ in range(3)],  # as good as the baseline
        },
        val={"real": [0.9, 0.3], "oversample": [0.9, 0.4]},
    )
    arm_table, verdicts = summarise_arms(results, names, n_boot=2000)
    v = verdicts.set_index(["gan_arm", "class"])
    assert v.loc[("real+gan", "c1"), "verdict"] == "helps"
    assert v.loc[("gan_only", "c1"), "verdict"] == "hurts"
    assert v.loc[("real+gan+classic", "c1"), "verdict"] == "no evidence"
    assert v.loc[("real+gan", "c1"), "baseline_arm"] == "oversample"  # best on validation for that class
    assert v.loc[("real+gan", "c1"), "n_test"] == 60 and v.loc[("real+gan", "c1"), "n_test_groups"] == 60
    row = arm_table[(arm_table["arm"] == "real+gan") & (arm_table["class"] == "c1")].iloc[0]
    assert row["recall_lo"] < row["recall"] < row["recall_hi"] and row["recall"] == pytest.approx(0.9, abs=0.07)
    # the macro comparisons: one per GAN arm, a family of their own
    macro = verdicts[verdicts["class"] == MACRO]
    assert sorted(macro["gan_arm"]) == ["gan_only", "real+gan", "real+gan+classic"]
    assert (macro["n_comparisons"] == 3).all() and (macro["n_test"] == 360).all()


def test_baseline_is_chosen_on_validation_not_on_test():
    """Test says oversample is the best arm without GAN tiles for the rare class; validation
    says real. The baseline is real, so the comparison is not biased towards the baseline."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [200, 50])
    results, names = fake_results(
        y,
        {
            "real": [rare_predictions(y, 0.4, rng) for _ in range(2)],
            "oversample": [rare_predictions(y, 0.7, rng) for _ in range(2)],
            "real+gan": [rare_predictions(y, 0.7, rng) for _ in range(2)],
        },
        val={"real": [0.8, 0.6], "oversample": [0.8, 0.5], "real+gan": [0.8, 0.5]},
    )
    _, verdicts = summarise_arms(results, names, n_boot=500)
    row = verdicts.set_index("class").loc["c1"]
    assert row["baseline_arm"] == "real" and row["baseline_val_f1"] == pytest.approx(0.6)
    assert row["baseline_f1"] < verdicts.set_index("class").loc["c1", "gan_f1"]


def test_validation_scores_are_required():
    y = np.array([0, 1] * 10)
    results, names = fake_results(y, {"real": [y], "real+gan": [y]})
    del results[0]["val_per_class_f1"]
    with pytest.raises(ValueError, match="arm real seed.*no validation scores"):
        summarise_arms(results, names, n_boot=100)


def interval_width(arm_table, arm="real", cls="c1", metric="recall"):
    row = arm_table[(arm_table["arm"] == arm) & (arm_table["class"] == cls)].iloc[0]
    return row[f"{metric}_hi"] - row[f"{metric}_lo"]


def test_singleton_groups_give_the_binomial_interval():
    """With every tile its own group and one seed, the recall interval of a class of n tiles
    is the binomial one: half-width 1.96 * sqrt(p (1 - p) / n)."""
    rng = np.random.default_rng(1)
    n, p = 400, 0.7
    y = np.repeat([0, 1], [n, n])
    pred = y.copy()
    wrong = rng.choice(np.flatnonzero(y == 1), size=int(n * (1 - p)), replace=False)
    pred[wrong] = 0
    results, names = fake_results(y, {"real": [pred]})
    arm_table, _ = summarise_arms(results, names, n_boot=4000)
    assert interval_width(arm_table) / 2 == pytest.approx(1.96 * np.sqrt(p * (1 - p) / n), rel=0.12)


def clustered(n_groups, size, rho, rng, p=0.7):
    """Two classes, each in `n_groups` source images of `size` tiles; a tile of class 1 is
    right with probability p, and with probability rho it shares its image's outcome."""
    y, groups, pred = [], [], []
    for c in (0, 1):
        for g in range(n_groups):
            shared = rng.random() < p
            own = rng.random(size) < p
            right = np.where(rng.random(size) < rho, shared, own) if c == 1 else np.ones(size, bool)
            y += [c] * size
            groups += [f"img{c}-{g}"] * size
            pred += [c if r else 1 - c for r in right]
    return np.array(y), np.array(groups), np.array(pred)


def test_group_bootstrap_widens_with_within_group_correlation():
    """The interval grows with the correlation of the tiles of one image (about
    sqrt(1 + (size - 1) rho^2) for this design), where resampling tiles does not."""
    widths, tile_widths = {}, {}
    for rho in (0.0, 0.5, 0.95):
        w, tw = [], []
        for rep in range(4):  # average a few datasets: one draw of 40 images is noisy
            y, groups, pred = clustered(40, 15, rho, np.random.default_rng(10 * rep + int(rho * 100)))
            results, names = fake_results(y, {"real": [pred]})
            w.append(interval_width(summarise_arms(results, names, n_boot=1000, groups=groups)[0]))
            tw.append(interval_width(summarise_arms(results, names, n_boot=1000)[0]))
        widths[rho], tile_widths[rho] = np.mean(w), np.mean(tw)
    assert widths[0.0] == pytest.approx(tile_widths[0.0], rel=0.25)  # independent tiles: the same
    assert widths[0.0] < widths[0.5] < widths[0.95]
    assert widths[0.95] > 2.5 * widths[0.0]  # design effect ~ sqrt(1 + 14 * 0.9) = 3.7
    assert widths[0.95] > 2.5 * tile_widths[0.95]  # a tiles-only bootstrap would be far too narrow


def test_comparison_is_paired():
    """Two arms that differ on 3 of 80 rare tiles: the paired interval of the difference is a
    fraction of what two independent intervals would give (an unpaired bootstrap fails this)."""
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], [200, 80])
    base = rare_predictions(y, 0.5, rng)
    better = base.copy()
    better[np.flatnonzero((y == 1) & (base == 0))[:3]] = 1
    results, names = fake_results(y, {"real": [base], "real+gan": [better]})
    arm_table, verdicts = summarise_arms(results, names, n_boot=2000)
    row = verdicts.set_index("class").loc["c1"]
    widths = [interval_width(arm_table, arm, "c1", "f1") for arm in ("real", "real+gan")]
    unpaired = np.hypot(*widths)
    assert row["diff_hi"] - row["diff_lo"] < 0.35 * unpaired
    assert row["diff_lo"] >= 0  # the GAN arm is never worse in any resample: same tiles, same seeds


def test_support_floor():
    """A class with fewer than min_support test items gets no verdict (and does not count as a
    comparison); every row says its n and groups."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], [100, 40, 6])
    items = [f"item{i // 2}" for i in range(len(y))]  # two tiles per item (e.g. sliding windows)
    preds = {a: [np.where(rng.random(len(y)) < 0.8, y, 0) for _ in range(2)] for a in ("real", "real+gan")}
    results, names = fake_results(y, preds, items=items)
    _, verdicts = summarise_arms(results, names, n_boot=300, min_support=10)
    v = verdicts.set_index("class")
    assert v.loc["c2", "verdict"] == "too few test items (n=3)" and v.loc["c2", "n_test_tiles"] == 6
    assert v.loc["c1", "n_test"] == 20 and not v.loc["c1", "verdict"].startswith("too few")
    assert v.loc["c0", "n_comparisons"] == 2 and pd.isna(v.loc["c2", "n_comparisons"])
    _, lower = summarise_arms(results, names, n_boot=300, min_support=3)
    assert not lower.set_index("class").loc["c2", "verdict"].startswith("too few")


def test_bonferroni_adjustment():
    """Adjusted intervals hold the raw ones and widen with the number of comparisons; the
    verdict reads the adjusted interval, so a difference that is significant alone can be
    'no evidence' among many."""
    rng = np.random.default_rng(5)
    n_classes = 8
    y = np.repeat(np.arange(n_classes), 60)
    base = np.where(rng.random(len(y)) < 0.6, y, (y + 1) % n_classes)
    preds = {"real": [base], "real+gan": [], "gan_only": []}
    for arm, step in (("real+gan", 0.025), ("gan_only", 0.0)):  # real+gan: effects from 0 to 0.18 by class
        p = base.copy()
        fix = (p != y) & (rng.random(len(y)) < step * y / 0.4)
        p[fix] = y[fix]
        preds[arm].append(p)
    results, names = fake_results(y, preds)
    _, verdicts = summarise_arms(results, names, n_boot=4000)
    v = verdicts[verdicts["class"] != MACRO]
    assert (v["n_comparisons"] == 2 * n_classes).all()
    assert ((v["diff_lo_adj"] <= v["diff_lo"]) & (v["diff_hi"] <= v["diff_hi_adj"])).all()
    np.testing.assert_allclose(v["p_adjusted"], np.minimum(1, 2 * n_classes * v["p_value"]))
    expected = np.where(v["diff_lo_adj"] > 0, "helps", np.where(v["diff_hi_adj"] < 0, "hurts", "no evidence"))
    assert (v["verdict"] == expected).all()
    raw_only = v[(v["diff_lo"] > 0) & (v["verdict"] == "no evidence")]
    assert len(raw_only) >= 1, v[["class", "gan_arm", "diff_lo", "diff_lo_adj", "verdict"]]


def test_bootstrap_p():
    assert bootstrap_p(np.full(999, 0.3)) == pytest.approx(2 / 1000)
    assert bootstrap_p(np.r_[np.full(500, -1.0), np.full(500, 1.0)]) == 1.0


def test_verdicts_need_common_test_tiles_and_seeds():
    y = np.array([0, 1, 0, 1])
    results, names = fake_results(y, {"real": [y], "real+gan": [y]})
    results[1]["test_tile_ids"] = ["x"] * 4
    with pytest.raises(ValueError, match="other test tiles"):
        summarise_arms(results, names, n_boot=100)
    results, names = fake_results(y, {"real": [y, y], "real+gan": [y]})
    with pytest.raises(ValueError, match="different seeds"):
        summarise_arms(results, names, n_boot=100)


def test_folds_are_pooled_into_one_evaluation():
    """Per (arm, seed), the folds' test predictions are concatenated: the support of a class is
    all its items, validation scores are averaged; a tile tested twice or a missing fold is refused."""
    from bioaug.verdicts import pool_folds

    rng = np.random.default_rng(6)
    per_fold = []
    for fold in range(3):
        y = rng.integers(0, 2, 30)
        results, names = fake_results(y, {"real": [y, 1 - y], "real+gan": [y, y]})
        for r in results:
            r.update(fold=fold, macro_f1=0.5, val_macro_f1=0.1 * fold, best_epoch=fold + 1, n_train_per_class=[5, 5])
            r["test_tile_ids"] = r["test_item_ids"] = [f"f{fold}-t{i}" for i in range(30)]
        per_fold += results
    pooled = pool_folds(per_fold, names)
    assert sorted((r["arm"], r["seed"]) for r in pooled) == [("real", 0), ("real", 1), ("real+gan", 0), ("real+gan", 1)]
    real0 = next(r for r in pooled if (r["arm"], r["seed"]) == ("real", 0))
    assert real0["n"] == 90 and real0["accuracy"] == 1.0 and real0["val_macro_f1"] == pytest.approx(0.1)
    assert real0["test_tile_ids"][:2] == ["f0-t0", "f0-t1"] and real0["test_tile_ids"][-1] == "f2-t29"
    _, verdicts = summarise_arms(pooled, names, n_boot=200)
    assert (verdicts["n_test"].sum() - verdicts.loc[verdicts["class"] == MACRO, "n_test"].sum()) == 90 * 1
    assert pool_folds([r for r in per_fold if r["fold"] == 0], names)[0] is per_fold[0]  # one fold: as it is
    with pytest.raises(ValueError, match="has folds \\[0, 2\\], expected \\[0, 1, 2\\]"):
        pool_folds([r for r in per_fold if not (r["fold"] == 1 and r["arm"] == "real" and r["seed"] == 0)], names)
    twice = [dict(r) for r in per_fold]
    for r in twice:
        if r["fold"] == 2:
            r["test_tile_ids"] = [f"f0-t{i}" for i in range(30)]
    with pytest.raises(ValueError, match="more than one fold"):
        pool_folds(twice, names)
