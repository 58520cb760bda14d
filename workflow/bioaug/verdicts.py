"""The verdict rule: does a GAN arm help a class, compared with the best arm without GAN tiles?

Uncertainty: a paired, two-level cluster bootstrap. Each resample draws the seeds (training
runs) with replacement and the test *groups* (source images, or the annotations' `group`:
a well, a patient) with replacement; every test tile of a drawn group counts as often as its
group was drawn. Tiles of one image share staining, focus and illumination, so resampling
tiles as if independent would make the intervals too narrow. Every arm sees the same resample
(paired), so a comparison's interval is that of the difference, not of two separate scores.

Baseline: per class, the arm without GAN tiles with the highest mean *validation* F1 (over
seeds). Choosing it on the test split would pick the luckiest of several noisy estimates and
bias the comparison. The macro comparison takes the arm of highest validation macro F1.

Support floor: a class with fewer than `min_support` test items gets "too few test items
(n=...)" and no verdict.

Multiplicity (Bonferroni): the m comparisons (GAN arm x class) that get a verdict are one
family; each adjusted interval is the (1 - alpha/m) percentile interval and p_adjusted =
min(1, m * p), so all m adjusted intervals hold together with probability >= 1 - alpha. The
macro comparisons (one per GAN arm) are a family of their own. The verdict reads the adjusted
interval: helps / hurts when it lies above / below 0, else no evidence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .arms import uses_gan

VERDICT_METRIC = "f1"
METRICS = ("recall", "precision", "f1")
ALPHA = 0.05
MACRO = "(macro)"
CHUNK = 256  # bootstrap resamples weighed at once (bounds memory: CHUNK x test tiles floats)


def weighted_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, weights: np.ndarray) -> dict:
    """Recall, precision and F1 per class, each tile counted `weights` times: (B, n) weights
    give (B, n_classes) scores. A class with no true (or no predicted) tiles scores 0."""
    t = np.eye(n_classes, dtype=weights.dtype)[y_true]  # (n, C); float32 weights for the bootstrap's speed
    p = np.eye(n_classes, dtype=weights.dtype)[y_pred]
    tp, true, pred = weights @ (t * p), weights @ t, weights @ p
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "recall": np.where(true > 0, tp / true, 0.0),
            "precision": np.where(pred > 0, tp / pred, 0.0),
            "f1": np.where(true + pred > 0, 2 * tp / (true + pred), 0.0),
        }


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Recall, precision, F1 per class along the last axis of (..., n) label arrays."""
    y_true, y_pred = np.broadcast_arrays(np.asarray(y_true), np.asarray(y_pred))
    flat_t, flat_p = y_true.reshape(-1, y_true.shape[-1]), y_pred.reshape(-1, y_pred.shape[-1])
    ones = np.ones((1, flat_t.shape[1]), np.float64)
    rows = [weighted_scores(t, p, n_classes, ones) for t, p in zip(flat_t, flat_p)]
    return {m: np.concatenate([r[m] for r in rows]).reshape(*y_true.shape[:-1], n_classes) for m in METRICS}


def bootstrap_draws(groups, n_seeds: int, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per resample, how often each seed and each test group is drawn: (n_boot, n_seeds) and
    (n_boot, n_groups) counts, groups in the order of `np.unique(groups)`."""
    n_groups = len(np.unique(np.asarray(groups)))
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    group_counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return seed_counts, group_counts


def bootstrap_scores(
    y_true: np.ndarray, preds: dict[str, np.ndarray], n_classes: int, groups, n_boot: int, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Per arm and metric, the seed-averaged per-class score of every resample: (n_boot, C).

    preds: arm -> (n_seeds, n_tiles) predictions on the common test tiles; groups: the group
    of every test tile (tiles of one group are drawn together). All arms share the draws."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_seeds = next(iter(preds.values())).shape[0]
    seed_counts, group_counts = bootstrap_draws(groups, n_seeds, n_boot, seed)
    out = {a: {m: np.zeros((n_boot, n_classes)) for m in METRICS} for a in preds}
    for start in range(0, n_boot, CHUNK):
        block = slice(start, start + CHUNK)
        weights = group_counts[block][:, codes].astype(np.float32)  # (b, n_tiles)
        seed_w = seed_counts[block] / n_seeds  # (b, n_seeds)
        for arm, p in preds.items():
            for s in range(n_seeds):
                scores = weighted_scores(y_true, p[s], n_classes, weights)
                for m in METRICS:
                    out[arm][m][block] += seed_w[:, s : s + 1] * scores[m]
    return out


def bootstrap_p(diff: np.ndarray) -> float:
    """Two-sided bootstrap p-value of `diff` = 0: twice the smaller tail, (count + 1) / (B + 1)."""
    below, above = (diff <= 0).sum(), (diff >= 0).sum()
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(diff) + 1)))


def interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _check_common(by_arm: dict[str, list[dict]]) -> dict:
    """Every arm and seed scored on the same test tiles, every arm with the same seeds."""
    arms = list(by_arm)
    ref = by_arm[arms[0]][0]
    for a in arms:
        for r in by_arm[a]:
            if r["test_tile_ids"] != ref["test_tile_ids"]:
                raise ValueError(f"arm {a} seed {r['seed']} was scored on other test tiles than {ref['arm']}")
    seeds = [[r["seed"] for r in by_arm[a]] for a in arms]
    if any(s != seeds[0] for s in seeds):
        raise ValueError(f"arms have different seeds: {dict(zip(arms, seeds))}; paired comparison needs the same seeds")
    return ref


def validation_f1(by_arm: dict[str, list[dict]], class_names: list[str]) -> dict[str, dict[str, float]]:
    """Per arm: the mean over seeds of the validation F1 per class and of the validation macro F1."""
    out = {}
    for a, runs in by_arm.items():
        missing = [r["seed"] for r in runs if "val_per_class_f1" not in r]
        if missing:
            raise ValueError(f"arm {a} seed(s) {missing}: no validation scores in the classify result (rerun classify)")
        out[a] = {c: float(np.mean([r["val_per_class_f1"][c] for r in runs])) for c in class_names}
        out[a][MACRO] = float(np.mean([r["val_macro_f1"] for r in runs]))
    return out


def pool_folds(results: list[dict], class_names: list[str]) -> list[dict]:
    """One result per (arm, seed) from its per-fold results: the folds' test predictions
    concatenated (in fold order; every item is tested in exactly one fold), the metrics
    recomputed on them, the validation scores and seconds averaged over folds. With one fold,
    the results come back as they are."""
    from .metrics import get_metric

    folds = sorted({r.get("fold", 0) for r in results})
    if len(folds) == 1:
        return results
    by_model: dict[tuple, list[dict]] = {}
    for r in results:
        by_model.setdefault((r["arm"], r["seed"]), []).append(r)
    pooled = []
    for (arm, seed), runs in sorted(by_model.items()):
        runs = sorted(runs, key=lambda r: r["fold"])
        if [r["fold"] for r in runs] != folds:
            raise ValueError(f"arm {arm} seed {seed} has folds {[r['fold'] for r in runs]}, expected {folds}")
        cat = {k: [v for r in runs for v in r[k]] for k in ("test_tile_ids", "test_item_ids", "y_true", "y_pred")}
        if len(set(cat["test_tile_ids"])) != len(cat["test_tile_ids"]):
            raise ValueError(f"arm {arm} seed {seed}: a test tile is in the test part of more than one fold")
        metrics = get_metric("classification")(np.asarray(cat["y_true"]), np.asarray(cat["y_pred"]), None, class_names)
        pooled.append(
            {
                **metrics,
                **cat,
                "arm": arm,
                "seed": seed,
                "fold": "pooled",
                "split": "test",
                "n_folds": len(folds),
                "seconds": float(np.mean([r["seconds"] for r in runs])),
                "best_epoch": float(np.mean([r["best_epoch"] for r in runs])),
                "train_steps": float(np.mean([r.get("train_steps", np.nan) for r in runs])),
                "n_train_per_class": np.mean([r["n_train_per_class"] for r in runs], axis=0).tolist(),
                "val_per_class_f1": {c: float(np.mean([r["val_per_class_f1"][c] for r in runs])) for c in class_names},
                "val_macro_f1": float(np.mean([r["val_macro_f1"] for r in runs])),
                "fold_macro_f1": [r["macro_f1"] for r in runs],
            }
        )
    return pooled


def summarise_arms(
    results: list[dict],
    class_names: list[str],
    n_boot: int,
    seed: int = 0,
    groups=None,
    min_support: int = 10,
    alpha: float = ALPHA,
):
    """From per-(arm, seed) classify results (per-tile test predictions, validation scores):
    the per-arm table with intervals, and the verdicts of every GAN arm per class and for the
    macro F1. `groups`: the group of each test tile (in the results' test_tile_ids order);
    None treats every tile as its own group. Returns (arm_table, verdicts)."""
    k = len(class_names)
    arms = sorted({r["arm"] for r in results})
    by_arm = {a: sorted((r for r in results if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    ref = _check_common(by_arm)
    y_true = np.asarray(ref["y_true"])
    groups = np.asarray(ref["test_tile_ids"] if groups is None else groups, dtype=str)
    if len(groups) != len(y_true):
        raise ValueError(f"{len(groups)} groups for {len(y_true)} test tiles")
    items = np.asarray(ref.get("test_item_ids", ref["test_tile_ids"]), dtype=str)
    support = {
        c: (len(np.unique(items[y_true == i])), len(np.unique(groups[y_true == i])), int((y_true == i).sum()))
        for i, c in enumerate(class_names)
    }
    preds = {a: np.array([r["y_pred"] for r in by_arm[a]]) for a in arms}
    boot = bootstrap_scores(y_true, preds, k, groups, n_boot, seed)
    point = {a: {m: per_class_scores(y_true[None, :], preds[a], k)[m].mean(0) for m in METRICS} for a in arms}
    arm_table = _arm_table(by_arm, boot, point, class_names, support, alpha)

    baselines = [a for a in arms if not uses_gan(a)]
    gan_arms = [a for a in arms if uses_gan(a)]
    if not baselines:
        rows = [{"class": c, "gan_arm": g, "verdict": "no baseline"} for g in gan_arms for c in [*class_names, MACRO]]
        return arm_table, pd.DataFrame(rows)
    val = validation_f1(by_arm, class_names)
    per_class, macro = [], []
    for g in gan_arms:
        for c, name in enumerate([*class_names, MACRO]):
            base = max(baselines, key=lambda a: (val[a][name], a))
            if name == MACRO:
                diff = boot[g][VERDICT_METRIC].mean(1) - boot[base][VERDICT_METRIC].mean(1)
                gan_f1, base_f1 = point[g][VERDICT_METRIC].mean(), point[base][VERDICT_METRIC].mean()
                n_items, n_groups, n_tiles = len(np.unique(items)), len(np.unique(groups)), len(y_true)
            else:
                diff = boot[g][VERDICT_METRIC][:, c] - boot[base][VERDICT_METRIC][:, c]
                gan_f1, base_f1 = point[g][VERDICT_METRIC][c], point[base][VERDICT_METRIC][c]
                n_items, n_groups, n_tiles = support[name]
            lo, hi = interval(diff, alpha)
            row = {
                "class": name, "gan_arm": g, "baseline_arm": base, "n_test": n_items, "n_test_groups": n_groups,
                "n_test_tiles": n_tiles, "baseline_val_f1": val[base][name], "gan_f1": float(gan_f1),
                "baseline_f1": float(base_f1), "difference": float(gan_f1 - base_f1), "diff_lo": lo, "diff_hi": hi,
                "p_value": bootstrap_p(diff), "_diff": diff,
            }  # fmt: skip
            if name == MACRO:
                macro.append(row)
            elif n_items < min_support:
                per_class.append({**row, "verdict": f"too few test items (n={n_items})"})
            else:
                per_class.append(row)
    _adjust([r for r in per_class if "verdict" not in r], alpha)
    _adjust(macro, alpha)
    verdicts = pd.DataFrame(per_class + macro).drop(columns="_diff", errors="ignore")
    return arm_table, verdicts


def _adjust(rows: list[dict], alpha: float) -> None:
    """Bonferroni over `rows` (one family): adjusted interval, p-value and verdict, in place."""
    m = len(rows)
    for r in rows:
        r["diff_lo_adj"], r["diff_hi_adj"] = interval(r["_diff"], alpha / m)
        r["p_adjusted"] = min(1.0, m * r["p_value"])
        r["n_comparisons"] = m
        r["verdict"] = "helps" if r["diff_lo_adj"] > 0 else "hurts" if r["diff_hi_adj"] < 0 else "no evidence"


def _arm_table(by_arm, boot, point, class_names, support, alpha) -> pd.DataFrame:
    rows = []
    for a, runs in by_arm.items():
        secs = float(np.mean([r.get("seconds", np.nan) for r in runs]))
        steps = float(np.mean([r.get("train_steps", np.nan) for r in runs]))
        base = {"arm": a, "n_seeds": len(runs), "mean_seconds_per_model": secs, "mean_steps_per_model": steps}
        for c, name in enumerate(class_names):
            row = {**base, "class": name, "n_test": support[name][0], "n_test_groups": support[name][1]}
            for m in METRICS:
                lo, hi = interval(boot[a][m][:, c], alpha)
                row.update({m: point[a][m][c], f"{m}_lo": lo, f"{m}_hi": hi})
            rows.append(row)
        row = {**base, "class": MACRO}
        for m in ("f1", "recall"):
            lo, hi = interval(boot[a][m].mean(1), alpha)
            row.update({m: point[a][m].mean(), f"{m}_lo": lo, f"{m}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)
