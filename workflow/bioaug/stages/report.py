"""Report stage: the summary table and figures, from the per-job metric files only."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..formats import balanced
from ..formats.classify_results import read_results
from ..formats.items import class_names, read_items
from ..formats.shards import load_tiles
from ..formats.synthetic import read_acceptance
from ..runtime import atomic_path
from ..verdicts import summarise_arms

log = logging.getLogger("bioaug.report")
GRID_PER_ROW = 8


def run(
    *,
    metric_jsons,
    items_csv,
    shard_npys,
    balanced_dir,
    gan_log,
    quality_csv,
    acceptance_jsons,
    outputs: dict,
    dataset: str,
    cfg: dict,
) -> None:
    """The report stage: every table and figure of one dataset, from the stages' files."""
    write_report(
        metric_jsons=metric_jsons,
        items=read_items(items_csv),
        shard_npys=shard_npys,
        balanced_dir=balanced_dir,
        gan_log=gan_log,
        quality_csv=quality_csv,
        acceptance_jsons=acceptance_jsons,
        outputs=outputs,
        dataset=dataset,
        n_boot=cfg["bootstrap"],
    )


def summarise(results: list[dict]) -> pd.DataFrame:
    """One row per (arm, seed): overall test metrics, then recall and F1 per class."""
    rows = []
    for m in results:
        row = {
            "arm": m["arm"],
            "seed": m["seed"],
            "n_test": m["n"],
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"],
            "macro_auc": m.get("macro_auc"),
            "best_epoch": m["best_epoch"],
            "seconds": m["seconds"],
        }
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
    classes = [c[len("recall[") : -1] for c in summary.columns if c.startswith("recall[")]
    arms = sorted(summary["arm"].unique())
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 3.5))
    for i, arm in enumerate(arms):
        sub = summary[summary["arm"] == arm]
        means = [sub[f"recall[{c}]"].mean() for c in classes]
        errs = [sub[f"recall[{c}]"].std(ddof=0) for c in classes]
        xs = np.arange(len(classes)) + (i - (len(arms) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=f"{arm} (n={len(sub)} seeds)")
        for _, r in sub.iterrows():  # the individual seeds, so nothing hides behind a mean
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
    from ..viz import save_class_grid

    x_real, y_real, _ = load_tiles(shard_npys, items, splits=("train",))
    manifest = balanced.read_manifest(balanced_dir)
    rng = np.random.default_rng(seed)
    names, rows = [], []
    for ci, cls in enumerate(class_names(items)):
        idx = np.flatnonzero(y_real == ci)
        pick = rng.choice(idx, size=min(GRID_PER_ROW, len(idx)), replace=False)
        names.append(f"{cls} real")
        rows.append(x_real[pick])
        syn = manifest[(manifest["label"] == cls) & (manifest["origin"] == "synthetic")]
        if len(syn):
            names.append(f"{cls} synthetic")
            rows.append(balanced.read_tiles(balanced_dir, syn["path"].iloc[:GRID_PER_ROW]))
    with atomic_path(path) as tmp:
        save_class_grid(tmp, names, rows, title="Real (train) vs synthetic tiles per class")


def plot_f1_with_intervals(arm_table: pd.DataFrame, path) -> None:
    """Per-class F1 by arm with bootstrap 95% intervals (seeds and test tiles resampled)."""
    plt = _plt()
    table = arm_table[arm_table["class"] != "(macro)"]
    classes = list(dict.fromkeys(table["class"]))
    arms = sorted(table["arm"].unique())
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(1.8 * len(classes) + 3, 3.8))
    for i, arm in enumerate(arms):
        sub = table[table["arm"] == arm].set_index("class").loc[classes]
        xs = np.arange(len(classes)) + (i - (len(arms) - 1) / 2) * width
        err = np.vstack([sub["f1"] - sub["f1_lo"], sub["f1_hi"] - sub["f1"]]).clip(min=0)
        ax.bar(xs, sub["f1"], width, yerr=err, capsize=2, label=arm)
    ax.set_xticks(np.arange(len(classes)), classes)
    ax.set_ylabel("test F1")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("Per-class F1 by arm (mean over seeds, 95% bootstrap interval)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_confusions(results: list[dict], class_names_: list[str], path) -> None:
    """Row-normalised test confusion matrix per arm, summed over seeds."""
    plt = _plt()
    arms = sorted({r["arm"] for r in results})
    cols = min(4, len(arms))
    rows = int(np.ceil(len(arms) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, arm in zip(axes.flat, arms):
        cm = sum(np.asarray(r["confusion_matrix"], float) for r in results if r["arm"] == arm)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for (i, j), v in np.ndenumerate(norm):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
        ax.set_xticks(range(len(class_names_)), class_names_, rotation=45, fontsize=7)
        ax.set_yticks(range(len(class_names_)), class_names_, fontsize=7)
        ax.set_title(arm, fontsize=9)
    for ax in list(axes.flat)[len(arms) :]:
        ax.axis("off")
    fig.suptitle("Test confusion (rows: true class, normalised; summed over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(x, digits=2):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(
    dataset: str,
    verdicts: pd.DataFrame,
    arm_table: pd.DataFrame,
    quality: pd.DataFrame | None,
    acceptance: pd.DataFrame | None = None,
) -> str:
    lines = [
        f"# bioaug summary: {dataset}",
        "",
        "## Does the GAN help? (per class, test F1, paired bootstrap over seeds and test tiles)",
        "",
        "| class | GAN arm | F1 | best non-GAN arm | its F1 | difference [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in verdicts.to_dict("records"):
        if r.get("baseline_arm") is None:
            lines.append(f"| {r['class']} | {r['gan_arm']} | | | | | {r['verdict']} |")
            continue
        lines.append(
            f"| {r['class']} | {r['gan_arm']} | {_fmt(r['gan_f1'])} | {r['baseline_arm']} | "
            f"{_fmt(r['baseline_f1'])} | {r['difference']:+.2f} [{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}] | "
            f"**{r['verdict']}** |"
        )
    lines += [
        "",
        "## F1 per arm and class (mean over seeds [95% CI]), and compute time",
        "",
        "| arm | " + " | ".join(dict.fromkeys(arm_table["class"])) + " | seconds per model |",
        "|---|" + "---|" * (arm_table["class"].nunique() + 1),
    ]
    for arm, sub in arm_table.groupby("arm", sort=True):
        cells = [f"{_fmt(r['f1'])} [{_fmt(r['f1_lo'])}, {_fmt(r['f1_hi'])}]" for r in sub.to_dict("records")]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {sub['mean_seconds_per_model'].iloc[0]:.0f} |")
    if quality is not None:
        lines += [
            "",
            "## GAN quality (feature space of a classifier trained on real train tiles)",
            "",
            quality.to_markdown(index=False, floatfmt=".3f"),
        ]
    if acceptance is not None and len(acceptance):
        lines += [
            "",
            "## Synthetic tiles per class (selective synthesis: acceptance by the real-trained classifier)",
            "",
            acceptance.to_markdown(index=False, floatfmt=".3f"),
        ]
    lines += [
        "",
        "Verdict: *helps* / *hurts* when the 95% interval of the F1 difference excludes 0, "
        "else *no evidence*. The baseline per class is the non-GAN arm with the highest mean test F1 "
        "(a choice that favours the baseline).",
        "",
    ]
    return "\n".join(lines)


def write_report(
    *,
    metric_jsons,
    items: pd.DataFrame,
    shard_npys,
    balanced_dir,
    gan_log,
    outputs: dict,
    quality_csv,
    acceptance_jsons,
    dataset: str,
    n_boot: int,
) -> None:
    names = class_names(items)
    results = read_results(metric_jsons)
    summary = summarise(results)
    with atomic_path(outputs["summary"]) as tmp:
        summary.to_csv(tmp, index=False)
    arm_table, verdicts = summarise_arms(results, names, n_boot=n_boot)
    with atomic_path(outputs["arm_summary"]) as tmp:
        arm_table.to_csv(tmp, index=False)
    with atomic_path(outputs["verdicts"]) as tmp:
        verdicts.to_csv(tmp, index=False)
    quality = pd.read_csv(quality_csv) if quality_csv else None
    acceptance = read_acceptance(acceptance_jsons)
    with atomic_path(outputs["markdown"]) as tmp:
        tmp.write_text(summary_markdown(dataset, verdicts, arm_table, quality, acceptance))
    log.info(
        "summary by arm (mean over seeds):\n%s",
        by_arm(summary)[["arm", "balanced_accuracy_mean", "macro_f1_mean"]].to_string(index=False),
    )
    if len(verdicts):
        log.info("verdicts:\n%s", verdicts.to_string(index=False))
    plot_recall_by_arm(summary, outputs["recall"])
    plot_f1_with_intervals(arm_table, outputs["f1"])
    plot_confusions(results, names, outputs["confusion"])
    plot_gan_losses(pd.read_csv(gan_log), outputs["losses"])
    plot_real_vs_synthetic(items, shard_npys, balanced_dir, outputs["grid"])
