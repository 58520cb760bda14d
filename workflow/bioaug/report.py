"""Report stage: the summary table and figures, from the per-job metric files only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .runtime import atomic_path
from .tilestore import class_names, load_tiles

log = logging.getLogger("bioaug.report")
GRID_PER_ROW = 8


def summarise(metric_jsons) -> pd.DataFrame:
    """One row per (arm, seed): overall test metrics, then recall and F1 per class."""
    rows = []
    for path in metric_jsons:
        m = json.loads(Path(path).read_text())
        row = {"arm": m["arm"], "seed": m["seed"], "n_test": m["n"], "accuracy": m["accuracy"],
               "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
               "macro_auc": m.get("macro_auc"), "best_epoch": m["best_epoch"], "seconds": m["seconds"]}
        for cls, pc in m["per_class"].items():
            row[f"recall[{cls}]"] = pc["recall"]
            row[f"f1[{cls}]"] = pc["f1"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["arm", "seed"]).reset_index(drop=True)


def by_arm(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds for every metric column."""
    metrics = [c for c in summary.columns if c not in ("arm", "seed")]
    agg = summary.groupby("arm")[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg.reset_index()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_by_arm(summary: pd.DataFrame, path) -> None:
    plt = _plt()
    classes = [c[len("recall["):-1] for c in summary.columns if c.startswith("recall[")]
    arms = sorted(summary["arm"].unique())
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 3.5))
    for i, arm in enumerate(arms):
        sub = summary[summary["arm"] == arm]
        means = [sub[f"recall[{c}]"].mean() for c in classes]
        errs = [sub[f"recall[{c}]"].std(ddof=0) for c in classes]
        xs = np.arange(len(classes)) + (i - (len(arms) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=f"{arm} (n={len(sub)} seeds)")
        for s, (_, r) in enumerate(sub.iterrows()):  # the individual seeds, so nothing hides behind a mean
            ax.scatter(xs, [r[f"recall[{c}]"] for c in classes], s=8, color="k", zorder=3)
    ax.set_xticks(np.arange(len(classes)), classes)
    ax.set_ylabel("test recall")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Per-class recall on the real test split (bars: mean ± sd over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_gan_losses(gan_log: pd.DataFrame, path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(gan_log["step"], gan_log["d_loss"], label="D loss")
    axes[0].plot(gan_log["step"], gan_log["g_loss"], label="G loss")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("Losses")
    axes[1].plot(gan_log["step"], gan_log["d_real"], label="D(real)")
    axes[1].plot(gan_log["step"], gan_log["d_fake"], label="D(fake)")
    axes[1].set_xlabel("step")
    axes[1].legend()
    axes[1].set_title("Discriminator outputs")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_real_vs_synthetic(items: pd.DataFrame, shard_npys, balanced_dir, path, seed: int = 0) -> None:
    """Two rows per class: real train tiles, then synthetic tiles (when the class has any)."""
    from .balance import read_balanced
    from .viz import save_class_grid

    x_real, y_real, _ = load_tiles(shard_npys, items, splits=("train",))
    manifest = pd.read_csv(Path(balanced_dir) / "manifest.csv")
    rng = np.random.default_rng(seed)
    names, rows = [], []
    import tifffile

    for ci, cls in enumerate(class_names(items)):
        idx = np.flatnonzero(y_real == ci)
        pick = rng.choice(idx, size=min(GRID_PER_ROW, len(idx)), replace=False)
        names.append(f"{cls} real")
        rows.append(x_real[pick])
        syn = manifest[(manifest["label"].astype(str) == cls) & (manifest["origin"] == "synthetic")]
        if len(syn):
            paths = syn["path"].iloc[: GRID_PER_ROW]
            tiles = [tifffile.imread(Path(balanced_dir) / p) for p in paths]
            names.append(f"{cls} synthetic")
            rows.append(np.stack([t if t.ndim == 3 else t[..., None] for t in tiles]))
    with atomic_path(path) as tmp:
        save_class_grid(tmp, names, rows, title="Real (train) vs synthetic tiles per class")


def write_report(*, metric_jsons, items: pd.DataFrame, shard_npys, balanced_dir, gan_log, outputs: dict) -> None:
    summary = summarise(metric_jsons)
    with atomic_path(outputs["summary"]) as tmp:
        summary.to_csv(tmp, index=False)
    log.info("summary by arm (mean over seeds):\n%s",
             by_arm(summary)[["arm", "balanced_accuracy_mean", "macro_f1_mean"]].to_string(index=False))
    plot_recall_by_arm(summary, outputs["recall"])
    plot_gan_losses(pd.read_csv(gan_log), outputs["losses"])
    plot_real_vs_synthetic(items, shard_npys, balanced_dir, outputs["grid"])
