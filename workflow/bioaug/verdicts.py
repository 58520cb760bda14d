"""The verdict rule: uncertainty and verdicts: does a GAN arm help a class, compared with the best alternative?

Intervals come from a two-level bootstrap: each resample draws the seeds (with replacement)
and the test tiles (with replacement), and averages the per-seed metric over the drawn seeds.
So an interval covers both the sampling of the test set and the training randomness.
Comparisons are paired: both arms see the same resampled seeds and tiles in each resample.

Per class, each GAN arm is compared with the non-GAN arm of highest mean test F1 for that
class. Choosing that baseline on the test split favours the baseline, so the comparison is
conservative for the GAN. Verdict: "helps" when the 95% interval of the F1 difference lies
above 0, "hurts" when below 0, otherwise "no evidence".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .arms import uses_gan

VERDICT_METRIC = "f1"


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Recall, precision, F1 per class along the last axis of (..., n) label arrays."""
    shape = np.broadcast_shapes(y_true.shape, y_pred.shape)[:-1]
    out = {m: np.zeros(shape + (n_classes,)) for m in ("recall", "precision", "f1")}
    for c in range(n_classes):
        t, p = y_true == c, y_pred == c
        tp = (t & p).sum(-1)
        fn = (t & ~p).sum(-1)
        fp = (~t & p).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
            prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
        out["recall"][..., c], out["precision"][..., c], out["f1"][..., c] = rec, prec, f1
    return out


def bootstrap_indices(n_seeds: int, n_items: int, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (n_boot, n_seeds)), rng.integers(0, n_items, (n_boot, n_items))


def arm_bootstrap(
    y_true: np.ndarray, preds: np.ndarray, n_classes: int, seed_idx: np.ndarray, item_idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Per resample and class, the seed-averaged metric: arrays of shape (n_boot, n_classes).

    preds: (n_seeds, n_items) predictions of one arm on the common test tiles.
    """
    yt = y_true[item_idx]  # (B, n)
    out = {m: np.zeros((len(item_idx), n_classes)) for m in ("recall", "precision", "f1")}
    for s in range(preds.shape[0]):
        scores = per_class_scores(yt, preds[s][item_idx], n_classes)  # (B, C) for seed s
        weight = (seed_idx == s).sum(1, keepdims=True) / seed_idx.shape[1]
        for m in out:
            out[m] += weight * scores[m]
    return out


def summarise_arms(results: list[dict], class_names: list[str], n_boot: int, seed: int = 0):
    """From per-(arm, seed) metric dicts with per-tile predictions: the per-arm table with
    intervals, and the per-class verdicts of every GAN arm. Returns (arm_table, verdicts)."""
    k = len(class_names)
    arms = sorted({r["arm"] for r in results})
    by_arm = {a: sorted((r for r in results if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    ref = by_arm[arms[0]][0]
    y_true = np.asarray(ref["y_true"])
    for a in arms:
        for r in by_arm[a]:
            if r["test_tile_ids"] != ref["test_tile_ids"]:
                raise ValueError(f"arm {a} seed {r['seed']} was scored on other test tiles than {ref['arm']}")
    seeds = [[r["seed"] for r in by_arm[a]] for a in arms]
    if any(s != seeds[0] for s in seeds):
        raise ValueError(f"arms have different seeds: {dict(zip(arms, seeds))}; paired comparison needs the same seeds")
    seed_idx, item_idx = bootstrap_indices(len(seeds[0]), len(y_true), n_boot, seed)
    preds = {a: np.array([r["y_pred"] for r in by_arm[a]]) for a in arms}
    boot = {a: arm_bootstrap(y_true, preds[a], k, seed_idx, item_idx) for a in arms}
    point = {
        a: {m: per_class_scores(y_true[None, :], preds[a], k)[m].mean(0) for m in ("recall", "precision", "f1")}
        for a in arms
    }

    rows = []
    for a in arms:
        secs = [r.get("seconds", np.nan) for r in by_arm[a]]
        for c, name in enumerate(class_names):
            row = {"arm": a, "class": name, "n_seeds": len(by_arm[a]), "mean_seconds_per_model": float(np.mean(secs))}
            for m in ("recall", "precision", "f1"):
                lo, hi = np.percentile(boot[a][m][:, c], [2.5, 97.5])
                row.update({m: point[a][m][c], f"{m}_lo": lo, f"{m}_hi": hi})
            rows.append(row)
        macro = np.mean(boot[a]["f1"], axis=1)
        lo, hi = np.percentile(macro, [2.5, 97.5])
        rows.append(
            {
                "arm": a,
                "class": "(macro)",
                "n_seeds": len(by_arm[a]),
                "mean_seconds_per_model": float(np.mean(secs)),
                "f1": point[a]["f1"].mean(),
                "f1_lo": lo,
                "f1_hi": hi,
                "recall": point[a]["recall"].mean(),
                "recall_lo": np.percentile(boot[a]["recall"].mean(1), 2.5),
                "recall_hi": np.percentile(boot[a]["recall"].mean(1), 97.5),
            }
        )
    arm_table = pd.DataFrame(rows)

    verdicts = []
    baselines = [a for a in arms if not uses_gan(a)]
    for g in (a for a in arms if uses_gan(a)):
        for c, name in enumerate(class_names):
            row = {"class": name, "gan_arm": g}
            if not baselines:
                verdicts.append({**row, "baseline_arm": None, "verdict": "no baseline"})
                continue
            base = max(baselines, key=lambda a: (point[a][VERDICT_METRIC][c], a))
            diff = boot[g][VERDICT_METRIC][:, c] - boot[base][VERDICT_METRIC][:, c]
            lo, hi = np.percentile(diff, [2.5, 97.5])
            verdict = "helps" if lo > 0 else "hurts" if hi < 0 else "no evidence"
            verdicts.append(
                {
                    **row,
                    "baseline_arm": base,
                    "gan_f1": point[g][VERDICT_METRIC][c],
                    "baseline_f1": point[base][VERDICT_METRIC][c],
                    "difference": point[g][VERDICT_METRIC][c] - point[base][VERDICT_METRIC][c],
                    "diff_lo": lo,
                    "diff_hi": hi,
                    "verdict": verdict,
                }
            )
    return arm_table, pd.DataFrame(verdicts)
