"""Report stage: the summary tables and figures, from the per-job metric files only.

Each table is built once as formatted cells (`Table`) and written twice, from the same cells:
as a Markdown table in summary.md and as an HTML table in the self-contained pages that
`snakemake --report` shows inline (verdicts.html, f1_by_arm.html, gan_quality.html). The CSVs
(verdicts.csv, arm_summary.csv, summary.csv) stay the machine-readable downloads.
"""

from __future__ import annotations

import html
import importlib.metadata
import logging
import platform
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..arms import ARMS, uses_gan
from ..formats.classify_results import read_results
from ..formats.items import class_names, read_items
from ..formats.shards import load_tiles
from ..formats.synthetic import read_acceptance, read_synthetic
from ..run_times import models_per_hour, rule_times
from ..runtime import BioaugError, atomic_path
from ..verdicts import MACRO, pool_folds, summarise_arms

log = logging.getLogger("bioaug.report")
GRID_PER_ROW = 16  # tiles per class and kind in the real-vs-synthetic figure (each >= 100 px at 150 dpi)
DPI = 150

# What each arm trains on, in words (the legend of every table and figure; see arms.py).
ARM_DESCRIPTIONS = {
    "real": "the real train tiles as they are (the plain baseline)",
    "real+classic": "real train tiles with classic augmentation (flips, 90° rotations, intensity jitter)",
    "oversample": "real train tiles, minibatches drawn class-balanced (rare-class tiles repeated)",
    "class_weights": "real train tiles, the loss weighted by inverse class frequency",
    "real+gan": "real train tiles plus GAN tiles that fill each class up to the balance target",
    "real+gan+classic": "real + GAN tiles (as real+gan) with classic augmentation",
    "gan_only": "GAN tiles only (every generated tile, no real tile); tested on real tiles like every arm",
}
# How bioaug.viz.to_rgb shows 1, 2 and 3+ channels (stored intensities 0-1, not rescaled per tile).
CHANNEL_KEY = {
    1: "grey: {0}",
    2: "magenta: {0}, green: {1} (white: both)",
    3: "red, green, blue: {0}, {1}, {2}",
}


def channel_key(n_channels: int, names=None) -> str:
    """How the tile grids colour the channels, with the channels' names (balance.channel_names)."""
    k = min(n_channels, 3)
    names = list(names) if names and len(names) == n_channels else [f"channel {i}" for i in range(n_channels)]
    return CHANNEL_KEY[k].format(*names[:k])


GAN_LOSS_NAMES = {"hinge": "hinge loss", "nonsaturating": "non-saturating loss"}
# The software whose version the report records (bioaug itself and what computed the numbers).
SOFTWARE = ("bioaug", "jax", "jaxlib", "flax", "optax", "snakemake")


def run(
    *,
    metric_jsons,
    items_csvs,
    shard_npys,
    synthetic_npys,
    gan_log,
    quality_csvs,
    acceptance_jsons,
    outputs: dict,
    dataset: str,
    cfg: dict,
    gan_loss: str | None = None,
    channel_names=None,
    benchmarks: dict[str, list] | None = None,
) -> None:
    """The report stage: every table and figure of one dataset, from the stages' files.
    items_csvs and quality_csvs: one per fold, fold 0 first (its GAN makes the GAN figures);
    benchmarks: the Snakemake benchmark files of the jobs upstream, by rule."""
    fold_items = [read_items(p) for p in items_csvs]
    write_report(
        metric_jsons=metric_jsons,
        items=fold_items[0],
        train_counts=real_train_counts(fold_items),
        shard_npys=shard_npys,
        synthetic_npys=synthetic_npys,
        gan_log=gan_log,
        quality_csvs=quality_csvs,
        acceptance_jsons=acceptance_jsons,
        outputs=outputs,
        dataset=dataset,
        n_boot=cfg["bootstrap"],
        min_support=cfg["min_support"],
        gan_loss=gan_loss,
        channel_names=channel_names,
        times=rule_times(benchmarks) if benchmarks else None,
    )


# ----------------------------------------------------------------------------- numbers


def summarise(results: list[dict]) -> pd.DataFrame:
    """One row per (arm, seed, fold): overall test metrics, then recall and F1 per class."""
    rows = []
    for m in results:
        row = {
            "arm": m["arm"],
            "seed": m["seed"],
            "fold": m.get("fold", 0),
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
    return pd.DataFrame(rows).sort_values(["arm", "seed", "fold"], key=lambda c: c.astype(str)).reset_index(drop=True)


def by_arm(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds for every metric column."""
    metrics = [c for c in summary.columns if c not in ("arm", "seed", "fold")]
    agg = summary.groupby("arm")[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg.reset_index()


def arm_order(arms) -> list[str]:
    """The arms in the order of arms.py (baselines first, then the GAN arms); unknown ones last."""
    known = [a for a in ARMS if a in set(arms)]
    return known + sorted(set(arms) - set(known))


def support_per_class(results: list[dict], names: list[str]) -> dict[str, int]:
    """Test tiles per class (every model is scored on the same test tiles; summarise_arms checks it)."""
    per_class = results[0]["per_class"]
    return {c: int(per_class[c]["support"]) for c in names}


def real_train_counts(fold_items: list[pd.DataFrame]) -> dict[str, int]:
    """Real train items per class that one model trains on (the mean over folds, rounded)."""
    names = class_names(fold_items[0])
    counts = [items.loc[items["split"] == "train", "label"].value_counts() for items in fold_items]
    return {c: int(round(np.mean([n.get(c, 0) for n in counts]))) for c in names}


def ordered_verdicts(
    verdicts: pd.DataFrame, names: list[str], n_train: dict, n_added: dict | None = None
) -> pd.DataFrame:
    """The verdicts grouped by class (in class order, the macro rows last), GAN arms in arms.py
    order, with the class's real train tile count and the GAN tiles that balancing added to it."""
    if not len(verdicts):
        return verdicts.assign(n_real_train=pd.Series(dtype=int))
    rank = {a: i for i, a in enumerate(arm_order(verdicts["gan_arm"].unique()))}
    out = verdicts.assign(
        n_real_train=verdicts["class"].map(n_train).astype("Int64"),
        n_gan_added=verdicts["class"].map(n_added or {}).astype("Int64"),
        _c=verdicts["class"].map({c: i for i, c in enumerate([*names, MACRO])}),
        _a=verdicts["gan_arm"].map(rank),
    )
    first = ["class", "n_test", "n_test_groups", "n_real_train", "n_gan_added"]
    cols = [c for c in first if c in out] + [c for c in verdicts.columns if c not in first]
    return out.sort_values(["_c", "_a"], kind="stable")[cols].reset_index(drop=True)


def read_quality(quality_csvs) -> pd.DataFrame | None:
    """gan_quality.csv of every fold, with a `fold` column when there are several."""
    if not quality_csvs:
        return None
    tables = [pd.read_csv(p, dtype={"class": str}) for p in quality_csvs]
    if len(tables) == 1:
        return tables[0]
    return pd.concat([t.assign(fold=f) for f, t in enumerate(tables)], ignore_index=True)


def test_groups(items: pd.DataFrame, results: list[dict]) -> np.ndarray:
    """The group (source image, or the `group` column) of every test tile, in the results' order."""
    group_of = items.set_index("item_id")["group"].astype(str)
    ids = pd.Index(results[0]["test_item_ids"]).astype(str)
    unknown = ids.difference(group_of.index)
    if len(unknown):
        raise BioaugError(f"classify results name test items not in items.csv: {list(unknown[:5])}")
    return group_of.reindex(ids).to_numpy()


def histograms_matched(acceptance: pd.DataFrame | None) -> bool:
    """Whether the synthetic tiles went through generate.match_histograms."""
    return acceptance is not None and "match_histograms" in acceptance and bool(acceptance["match_histograms"].any())


def selective_synthesis_on(acceptance: pd.DataFrame | None) -> bool:
    """Whether the synthetic tiles were filtered (generate.min_confidence was set)."""
    return (
        acceptance is not None
        and len(acceptance) > 0
        and "min_confidence" in acceptance
        and bool(acceptance["min_confidence"].notna().any())
    )


def software_versions() -> list[tuple[str, str]]:
    """(package, version) of the software behind the numbers, from the installed metadata."""
    out = [("python", platform.python_version())]
    for name in SOFTWARE:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "bioaug":  # run from a source checkout without installing it
                from .. import __version__ as version
            else:
                version = "not installed"
        out.append((name, version))
    return out


# ----------------------------------------------------------------------------- tables


def _fmt(x, digits=2):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _ci(point, lo, hi, digits=2, sign=False):
    f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"

    def num(v):  # a value that rounds to zero prints as 0.00, not -0.00
        return f.format(0.0 if round(v, digits) == 0 else v)

    return f"{num(point)} [{num(lo)}, {num(hi)}]"


@dataclass
class Table:
    """One table of the report as display strings: written to Markdown and to HTML alike."""

    id: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    intro: str = ""  # plain text above the table
    notes: list[str] = field(default_factory=list)  # plain-text lines below it
    css: list[str] | None = None  # one CSS class per row (HTML only)

    def markdown(self) -> str:
        def cell(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [f"## {self.title}", ""]
        if self.intro:
            lines += [self.intro, ""]
        lines += ["| " + " | ".join(map(cell, self.headers)) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(map(cell, r)) + " |" for r in self.rows]
        if self.notes:
            lines += [""] + [f"{n}  " for n in self.notes[:-1]] + self.notes[-1:]
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        head = "".join(f"<th>{e(h)}</th>" for h in self.headers)
        tds = [' class="verdict"' if h == "verdict" else "" for h in self.headers]  # coloured by the row's verdict
        body = []
        for i, r in enumerate(self.rows):
            cls = f' class="{e(self.css[i].strip())}"' if self.css and self.css[i].strip() else ""
            cells = "".join(f"<td{tds[j]}>{e(c)}</td>" for j, c in enumerate(r))
            body.append(f"<tr{cls}>{cells}</tr>")
        parts = [f"<section><h2>{e(self.title)}</h2>"]
        if self.intro:
            parts.append(f"<p>{e(self.intro)}</p>")
        parts.append(f'<table id="{e(self.id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
        parts += [f'<p class="note">{e(n)}</p>' for n in self.notes]
        parts.append("</section>")
        return "\n".join(parts)


VERDICT_HEADERS = [
    "class", "test items (n)", "test groups (n)", "real train items (n, per model)", "GAN arm", "GAN arm F1",
    "baseline (best on validation)", "its F1", "difference [95% CI]", "adjusted [CI]", "verdict", "note",
]  # fmt: skip


def _has_baseline(r: dict) -> bool:
    return r.get("baseline_arm") is not None and not pd.isna(r.get("baseline_arm"))


def _verdict_rows(verdicts: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    rows, css = [], []
    records = verdicts.to_dict("records")
    for i, r in enumerate(records):
        n_train = r.get("n_real_train")
        head = [
            r["class"],
            _count(r.get("n_test")),
            _count(r.get("n_test_groups")),
            _count(n_train),
            r["gan_arm"],
        ]
        if not _has_baseline(r):
            rows.append(head + ["", "", "", "", "", r["verdict"], "no arm without GAN tiles to compare with"])
            css.append("none")
        else:
            note = ""
            if r["verdict"].startswith("too few"):
                note = "fewer than report.min_support test items: an interval this wide means nothing"
            elif r["baseline_f1"] >= 0.995:
                note = "the baseline is at F1 = 1: no arm can do better here, so 'helps' is impossible"
            elif r.get("n_gan_added") == 0 and r["gan_arm"] != "gan_only":
                note = "no GAN tiles added to this class (it met the target): any change comes from the other classes"
            elif r["gan_f1"] == 0 and r["baseline_f1"] == 0:
                note = "F1 = 0 in both arms: neither recognises this class"
            elif r["baseline_f1"] == 0:
                note = "no arm without GAN tiles recognises this class (F1 = 0)"
            adjusted = "" if pd.isna(r.get("diff_lo_adj")) else f"[{r['diff_lo_adj']:+.2f}, {r['diff_hi_adj']:+.2f}]"
            rows.append(
                head
                + [
                    _fmt(r["gan_f1"]),
                    r["baseline_arm"],
                    _fmt(r["baseline_f1"]),
                    _ci(r["difference"], r["diff_lo"], r["diff_hi"], sign=True),
                    adjusted,
                    r["verdict"],
                    note,
                ]
            )
            css.append("too-few" if r["verdict"].startswith("too few") else r["verdict"].replace(" ", "-"))
        if i == 0 or r["class"] != records[i - 1]["class"]:  # a rule above each class's first row
            css[i] += " first"
    return rows, css


def _count(x) -> str:
    return "" if x is None or pd.isna(x) else str(int(x))


def _seeds_text(n_seeds: int) -> str:
    if n_seeds > 1:
        return f"{n_seeds} seeds (training runs) per arm"
    return "1 seed per arm, so the intervals cover the test-set sampling only, not the training randomness"


def _family_size(verdicts: pd.DataFrame, macro: bool) -> int:
    rows = verdicts[(verdicts["class"] == MACRO) == macro]
    return (
        int(rows["n_comparisons"].dropna().max())
        if "n_comparisons" in rows and rows["n_comparisons"].notna().any()
        else 0
    )


def verdict_table(verdicts: pd.DataFrame, n_seeds: int, min_support: int = 10) -> Table:
    """verdicts: `ordered_verdicts` output, per class (the macro rows go to `macro_table`)."""
    per_class = verdicts[verdicts["class"] != MACRO]
    rows, css = _verdict_rows(per_class)
    m = _family_size(verdicts, macro=False)
    return Table(
        "verdicts",
        "Does the GAN help? (per class, test F1)",
        VERDICT_HEADERS,
        rows,
        intro=(
            "Each row compares, for one class, an arm trained with GAN tiles against the arm trained without them "
            "that scored best on the validation split for that class (chosen without looking at the test split). "
            "F1 is between 0 and 1, higher is better; the difference is the GAN arm minus that baseline on the real "
            "test split, with a 95% paired bootstrap interval that resamples whole test groups (source images) and "
            f"the seeds ({_seeds_text(n_seeds)})."
        ),
        notes=[
            f"Adjusted: the interval widened for the {m} comparisons of this table (Bonferroni: all of them hold "
            "together with 95% probability). Verdict: helps / hurts when the adjusted interval lies above / below "
            "0, else no evidence. No evidence is not evidence of no effect: with few test items or groups the "
            f"interval is wide. Classes with fewer than {min_support} test items (report.min_support) get no verdict.",
        ],
        css=css,
    )


def macro_table(verdicts: pd.DataFrame, n_seeds: int) -> Table:
    """The macro-F1 comparison of every GAN arm with the arm of best validation macro F1."""
    macro = verdicts[verdicts["class"] == MACRO]
    rows, css = [], []
    for r in macro.to_dict("records"):
        if not _has_baseline(r):
            rows.append([r["gan_arm"], "", "", "", "", "", r["verdict"]])
            css.append("none")
            continue
        rows.append(
            [
                r["gan_arm"],
                _fmt(r["gan_f1"]),
                r["baseline_arm"],
                _fmt(r["baseline_f1"]),
                _ci(r["difference"], r["diff_lo"], r["diff_hi"], sign=True),
                f"[{r['diff_lo_adj']:+.2f}, {r['diff_hi_adj']:+.2f}]",
                r["verdict"],
            ]
        )
        css.append(r["verdict"].replace(" ", "-"))
    m = _family_size(verdicts, macro=True)
    return Table(
        "macro",
        "Does the GAN help overall? (macro F1: every class counting the same)",
        [
            "GAN arm",
            "its macro F1",
            "baseline (best on validation)",
            "its macro F1",
            "difference [95% CI]",
            "adjusted [CI]",
            "verdict",
        ],  # fmt: skip
        rows,
        intro=(
            f"Macro F1 on the real test split, against the arm without GAN tiles of best validation macro F1; "
            f"paired group bootstrap as above ({_seeds_text(n_seeds)}); adjusted for the {m} GAN arms."
        ),
        css=css,
    )


def verdict_sentences(verdicts: pd.DataFrame, n_seeds: int, n_folds: int = 1) -> Table:
    """One plain sentence per class: the GAN arm with the strongest evidence, in words."""
    rows = []
    per_class = verdicts[(verdicts["class"] != MACRO)]
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    if n_folds > 1:
        seeds = f"{n_folds} folds and {seeds}"
    for cls, sub in per_class.groupby("class", sort=False):
        sub = sub[sub.apply(lambda r: _has_baseline(r), axis=1)] if "baseline_arm" in sub else sub.iloc[:0]
        if not len(sub):
            rows.append([cls, "No arm without GAN tiles to compare with."])
            continue
        r = sub.iloc[0]
        if r["verdict"].startswith("too few"):
            rows.append([cls, f"Too few test items (n={int(r['n_test'])}) to say whether the GAN helps {cls}."])
            continue
        helps, hurts = sub[sub["verdict"] == "helps"], sub[sub["verdict"] == "hurts"]
        if len(helps):
            r, verb = helps.sort_values("diff_lo_adj").iloc[-1], "raised"
        elif len(hurts):
            r, verb = hurts.sort_values("diff_hi_adj").iloc[0], "lowered"
        else:
            r, verb = sub.loc[sub["difference"].idxmax()], None
        where = (
            f"across {seeds} and {int(r['n_test'])} test items from {int(r['n_test_groups'])} groups, "
            f"adjusted for {int(r['n_comparisons'])} comparisons"
        )
        size = f"{abs(r['difference']):.2f} [{r['diff_lo_adj']:+.2f}, {r['diff_hi_adj']:+.2f}]"
        if verb:
            text = f"{r['gan_arm']} {verb} {cls} F1 by {size} over {r['baseline_arm']}, {where}."
        elif (sub["gan_f1"] == 0).all() and r["baseline_f1"] == 0:
            text = f"No arm recognises {cls}: F1 = 0 for every GAN arm and for {r['baseline_arm']} ({where})."
        else:
            text = (
                f"No evidence that a GAN arm changes {cls} F1: the closest, {r['gan_arm']}, differs from "
                f"{r['baseline_arm']} by {r['difference']:+.2f} [{r['diff_lo_adj']:+.2f}, {r['diff_hi_adj']:+.2f}], "
                f"{where}."
            )
        rows.append([cls, text])
    return Table("in_words", "The answer in words", ["class", "what the numbers say"], rows)


def arms_table(arms) -> Table:
    rows = [[a, "yes" if uses_gan(a) else "no", ARM_DESCRIPTIONS.get(a, "")] for a in arm_order(arms)]
    return Table(
        "arms",
        "Arms (ways of handling the class imbalance, each trained with the same classifier and budget)",
        ["arm", "uses GAN tiles", "trains on"],
        rows,
    )


def f1_table(arm_table: pd.DataFrame, n_test: dict) -> Table:
    classes = [c for c in dict.fromkeys(arm_table["class"]) if c != "(macro)"]
    headers = ["arm"] + [f"{c} (n={n_test[c]})" for c in classes] + ["macro F1", "steps per model", "seconds per model"]
    rows = []
    for arm in arm_order(arm_table["arm"].unique()):
        sub = arm_table[arm_table["arm"] == arm].set_index("class")
        cells = [_ci(sub.loc[c, "f1"], sub.loc[c, "f1_lo"], sub.loc[c, "f1_hi"]) for c in classes]
        macro = _ci(sub.loc["(macro)", "f1"], sub.loc["(macro)", "f1_lo"], sub.loc["(macro)", "f1_hi"])
        steps = sub["mean_steps_per_model"].iloc[0] if "mean_steps_per_model" in sub else np.nan
        rows.append([arm, *cells, macro, _count(steps), f"{sub['mean_seconds_per_model'].iloc[0]:.0f}"])
    return Table(
        "f1_by_arm",
        "Test F1 per arm and class (mean over seeds [95% CI]), and compute time",
        headers,
        rows,
        intro=(
            "n = test tiles of the class. Macro F1: the mean over classes, every class counting the same. Steps: "
            "optimiser steps per model (classifier.budget: steps gives every arm the same number); seconds: the "
            "classifier's training and scoring, not the GAN's. An interval of [1.00, 1.00] means every resample "
            "was right, not certainty: with n test tiles all right, the true F1 may still be about 1 - 3/n."
        ),
    )


QUALITY_COLUMNS = {  # column of gan_quality.csv -> (header, digits; None for a count, "%" for a share)
    "n_real_train": ("real train tiles compared (n)", None),
    "n_synthetic": ("synthetic tiles compared (n)", None),
    "fid": ("FID", 3),
    "kid": ("KID", 3),
    "precision": ("precision", 3),
    "heldout_precision": ("precision of held-out real tiles (reference)", 3),
    "recall": ("recall", 3),
    "density": ("density", 3),
    "coverage": ("coverage", 3),
    "near_copy_share_feature": ("near-copies, feature space (%)", "%"),
    "near_copy_share_pixel": ("near-copies, pixel space (%)", "%"),
    "c2st_accuracy": ("real vs synthetic told apart (accuracy)", 2),
    "c2st_n_test": ("tiles the test scored (n)", None),
    "heldout_c2st_accuracy": ("held-out real vs train told apart (reference)", 2),
    "n_real_heldout": ("held-out real tiles (n)", None),
}


def _quality_cell(x, digits) -> str:
    if x is None or pd.isna(x):
        return "n/a"
    if digits is None:
        return str(int(x))
    if digits == "%":
        return f"{100 * float(x):.1f}"
    return f"{float(x):.{digits}f}"


def fold_table(per_fold: list[dict]) -> Table:
    """Macro F1 of every arm in every fold (mean over seeds): how much the folds disagree."""
    frame = pd.DataFrame([{"arm": r["arm"], "fold": r["fold"], "macro_f1": r["macro_f1"]} for r in per_fold])
    means = frame.groupby(["arm", "fold"])["macro_f1"].mean().unstack("fold")
    folds = list(means.columns)
    rows = []
    for arm in arm_order(means.index):
        vals = means.loc[arm]
        rows.append([arm, *(_fmt(vals[f]) for f in folds), f"{vals.min():.2f} to {vals.max():.2f}"])
    return Table(
        "folds",
        "Macro F1 per fold (mean over seeds)",
        ["arm", *(f"fold {f}" for f in folds), "range"],
        rows,
        intro=(
            "Each fold tests on its own items, with models trained on the other folds only; the verdicts above pool "
            "the test predictions of all folds. A wide range means the answer depends on which items are tested."
        ),
    )


def quality_table(quality: pd.DataFrame, histograms_matched: bool = False) -> Table:
    cols = [c for c in QUALITY_COLUMNS if c in quality.columns]
    by_fold = "fold" in quality.columns
    rows = [
        ([str(r["fold"])] if by_fold else [])
        + ["all classes" if r["class"] == "all" else str(r["class"])]
        + [_quality_cell(r[c], QUALITY_COLUMNS[c][1]) for c in cols]
        for r in quality.to_dict("records")
    ]
    return Table(
        "gan_quality",
        "GAN quality (in the feature space of a classifier trained on the real train tiles)",
        (["fold"] if by_fold else []) + ["class"] + [QUALITY_COLUMNS[c][0] for c in cols],
        rows,
        intro=(
            "Synthetic tiles against the real train tiles of the same class (n: the tiles compared, at most "
            "gan_quality.max_per_class of each per row). FID, KID: distance between the two sets (0 = "
            "indistinguishable, lower is better; no unit). Precision, density: are synthetic tiles realistic; "
            "recall, coverage: do they cover the real variety (precision, recall, coverage from 0 to 1, higher is "
            "better; density about 1 for a realistic set). Near-copies: share of synthetic tiles closer to a train "
            "tile than 99% of the real test tiles are (by construction about 1% for new real images; well above that, "
            "the GAN copies its training images). Told apart: a small CNN trained on half of a class's real and "
            "synthetic tiles to tell them apart, scored on the other half (0.5: indistinguishable to it; 1: every "
            "tile told apart; 0.70 or less is the aim). Reference columns: the same precision and test for the "
            "class's held-out real tiles (val and test) in place of the synthetic ones, what a perfect generator "
            "would score with this many tiles (a rare class's real tiles are often outside each other's "
            "neighbourhoods too)."
        ),
        notes=[
            "FID and KID are computed in bioaug's own feature space (the classifier above), not in the Inception "
            "features of published FID values: compare them between runs on this dataset only.",
            "n/a: undefined for the class (e.g. no synthetic tiles).",
        ]
        + (
            [
                "The synthetic tiles were histogram-matched (generate.match_histograms): each class's pixel values "
                "were mapped to the distribution of its real train tiles, channel by channel; the shapes are the "
                "GAN's own."
            ]
            if histograms_matched
            else []
        ),
    )


ACCEPTANCE_COLUMNS = {
    "n_real": ("real train tiles (n)", None),
    "target": ("target (n)", None),
    "needed_for_balance": ("needed for balance (n)", None),
    "generated": ("kept (n)", None),
    "drawn": ("drawn (n)", None),
    "acceptance_rate": ("acceptance rate", 3),
    "min_confidence": ("min confidence", 2),
    "short_by": ("short by (n)", None),
}


def acceptance_table(acceptance: pd.DataFrame) -> Table:
    cols = [c for c in ACCEPTANCE_COLUMNS if c in acceptance.columns]
    rows = [
        [str(r["label"])] + [_quality_cell(r[c], ACCEPTANCE_COLUMNS[c][1]) for c in cols]
        for r in acceptance.sort_values("label").to_dict("records")
    ]
    return Table(
        "acceptance",
        "Selective synthesis: GAN tiles kept per class",
        ["class"] + [ACCEPTANCE_COLUMNS[c][0] for c in cols],
        rows,
        intro=(
            "A drawn GAN tile was kept only if the classifier trained on real tiles assigned it to its intended "
            "class with at least the minimum confidence. Short by: tiles the class lacks after the draw limit."
        ),
    )


def software_table(versions: list[tuple[str, str]]) -> Table:
    return Table(
        "software",
        "Software",
        ["package", "version"],
        [[p, v] for p, v in versions],
        intro="Versions installed where this report was made (the report job).",
    )


def times_table(times: pd.DataFrame) -> Table:
    """Where the time went: job seconds per rule, from Snakemake's benchmark files."""
    rows = [
        [
            r.rule,
            str(int(r.jobs)),
            f"{r.wall_s:.0f}",
            f"{r.share:.0%}",
            f"{r.mean_s:.1f}",
            f"{r.max_s:.1f}",
            f"{r.cpu_s:.0f}",
            f"{r.max_rss_mb:.0f}",
        ]
        for r in times.itertuples()
    ]
    notes = []
    per_hour = models_per_hour(times)
    if per_hour is not None:
        notes.append(f"Classifier models (arm x seed x fold) per hour of job time: {per_hour:.0f}.")
    notes.append(
        "Job time is summed over jobs: jobs that ran side by side overlap, so the total exceeds "
        "the run's wall time; CPU seconds above wall seconds mean several cores. The balance and "
        "report jobs are not included (they run after this table is made). Every job's file is "
        "under benchmarks/<dataset>/."
    )
    return Table(
        "run_times",
        "Where the time went",
        ["rule", "jobs", "job seconds", "share", "mean s", "max s", "CPU seconds", "peak memory (MB)"],
        rows,
        intro="Wall seconds per rule of the jobs behind this report, from Snakemake's benchmark files.",
        notes=notes,
    )


def summary_tables(
    verdicts: pd.DataFrame,
    arm_table: pd.DataFrame,
    quality: pd.DataFrame | None,
    acceptance: pd.DataFrame | None,
    n_test: dict,
    n_seeds: int,
    versions: list[tuple[str, str]],
    min_support: int = 10,
    per_fold: list[dict] | None = None,
    times: pd.DataFrame | None = None,
) -> dict[str, Table]:
    """Every table of the report, by id; acceptance only with selective synthesis on, the
    per-fold table only with several folds."""
    tables = {
        "in_words": verdict_sentences(verdicts, n_seeds, len({r.get("fold", 0) for r in per_fold or [{}]})),
        "verdicts": verdict_table(verdicts, n_seeds, min_support),
        "macro": macro_table(verdicts, n_seeds),
        "arms": arms_table(arm_table["arm"].unique()),
        "f1_by_arm": f1_table(arm_table, n_test),
    }
    if per_fold and len({r.get("fold", 0) for r in per_fold}) > 1:
        tables["folds"] = fold_table(per_fold)
    if quality is not None:
        tables["gan_quality"] = quality_table(quality, histograms_matched(acceptance))
    if selective_synthesis_on(acceptance):
        tables["acceptance"] = acceptance_table(acceptance)
    if times is not None and len(times):
        tables["run_times"] = times_table(times)
    tables["software"] = software_table(versions)
    return tables


def summary_markdown(dataset: str, tables: dict[str, Table]) -> str:
    order = [
        "in_words",
        "verdicts",
        "macro",
        "arms",
        "f1_by_arm",
        "folds",
        "gan_quality",
        "acceptance",
        "run_times",
        "software",
    ]
    parts = [f"# bioaug summary: {dataset}"] + [tables[k].markdown() for k in order if k in tables]
    return "\n\n".join(parts) + "\n"


PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1e293b; margin: 1.5em;
       max-width: 80em; line-height: 1.4; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #cbd5e1; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f1f5f9; }
td { font-variant-numeric: tabular-nums; white-space: nowrap; }
td:last-child { white-space: normal; min-width: 12em; }
tr.first td { border-top: 2px solid #64748b; }
tr.helps td.verdict { background: #dcfce7; font-weight: bold; }
tr.hurts td.verdict { background: #fee2e2; font-weight: bold; }
tr.no-evidence td.verdict, tr.too-few td.verdict { color: #475569; }
p.note, p.footer { color: #475569; font-size: 0.85em; max-width: 60em; }
p { max-width: 60em; }
"""


def html_page(title: str, tables: list[Table], footer: str = "") -> str:
    e = html.escape
    body = "\n".join(t.html() for t in tables)
    foot = f'<p class="footer">{e(footer)}</p>' if footer else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{PAGE_CSS}</style></head>\n<body><h1>{e(title)}</h1>\n{body}\n{foot}\n</body></html>\n"
    )


def write_html_pages(dataset: str, tables: dict[str, Table], outputs: dict) -> None:
    """The pages shown inline by `snakemake --report` (an .html result is shown in a frame)."""
    versions = tables["software"].rows
    footer = "Made with " + ", ".join(f"{p} {v}" for p, v in versions) + "."
    pages = {
        "verdicts_html": (
            f"bioaug, dataset {dataset}: verdicts",
            ["in_words", "verdicts", "macro", "arms", "software"],
            "",
        ),
        "f1_html": (f"bioaug, dataset {dataset}: test F1 per arm", ["f1_by_arm", "folds", "arms", "run_times"], footer),
        "quality_html": (f"bioaug, dataset {dataset}: GAN quality", ["gan_quality", "acceptance"], footer),
    }
    for key, (title, ids, foot) in pages.items():
        if key not in outputs:
            continue
        shown = [tables[i] for i in ids if i in tables]
        with atomic_path(outputs[key]) as tmp:
            tmp.write_text(html_page(title, shown, foot))


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _class_ticks(classes, n_test: dict | None) -> list[str]:
    return [f"{c}\n(n={n_test[c]})" if n_test and c in n_test else c for c in classes]


def plot_recall_by_arm(summary: pd.DataFrame, path, n_test: dict | None = None) -> None:
    plt = _plt()
    classes = [c[len("recall[") : -1] for c in summary.columns if c.startswith("recall[")]
    arms = arm_order(summary["arm"].unique())
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 3.8))
    for i, arm in enumerate(arms):
        sub = summary[summary["arm"] == arm]
        means = np.array([sub[f"recall[{c}]"].mean() for c in classes])
        sds = np.array([sub[f"recall[{c}]"].std(ddof=0) for c in classes])
        errs = np.vstack([np.minimum(sds, means), np.minimum(sds, 1 - means)])  # a recall stays in [0, 1]
        xs = np.arange(len(classes)) + (i - (len(arms) - 1) / 2) * width
        hatch = "//" if arm in ARMS and uses_gan(arm) else None
        ax.bar(
            xs,
            means,
            width,
            yerr=errs,
            capsize=3,
            hatch=hatch,
            label=f"{arm} ({len(sub)} seed{'s' if len(sub) != 1 else ''})",
        )
        for _, r in sub.iterrows():  # the individual seeds, so nothing hides behind a mean
            ax.scatter(xs, [r[f"recall[{c}]"] for c in classes], s=8, color="k", zorder=3)
    _finish_class_bars(
        fig, ax, classes, n_test, path,
        ylabel="test recall (share of the class's test tiles found)",
        title="Per-class recall on the real test split (bars: mean ± sd over seeds; dots: seeds)",
    )  # fmt: skip


def _finish_class_bars(fig, ax, classes, n_test, path, *, ylabel: str, title: str) -> None:
    """The axes, legend and title of a bar chart with one group of arm bars per class; saved."""
    ax.set_xticks(np.arange(len(classes)), _class_ticks(classes, n_test))
    ax.set_xlabel("class (n = test tiles)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(
        fontsize=8, title="arm (hatched: uses GAN tiles)", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_gan_losses(gan_log: pd.DataFrame, path, loss: str | None = None) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(gan_log["step"], gan_log["d_loss"], label="discriminator (D) loss")
    axes[0].plot(gan_log["step"], gan_log["g_loss"], label="generator (G) loss")
    axes[0].set_xlabel("GAN training step")
    axes[0].set_ylabel(GAN_LOSS_NAMES.get(loss, f"{loss} loss") if loss else "loss")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Losses")
    axes[1].plot(gan_log["step"], gan_log["d_real"], label="D(real tiles)")
    axes[1].plot(gan_log["step"], gan_log["d_fake"], label="D(generated tiles)")
    axes[1].axhline(0, color="grey", lw=0.6)
    axes[1].set_xlabel("GAN training step")
    axes[1].set_ylabel("D output (mean logit)")
    axes[1].legend(fontsize=8)
    axes[1].set_title("Discriminator outputs (real > 0 > generated: D tells them apart)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_real_vs_synthetic(
    items: pd.DataFrame, shard_npys, synthetic_npys, path, seed: int = 0, channel_names=None
) -> None:
    """Two rows per class: real train tiles (a random pick), then the first synthetic tiles of
    the class (all generated tiles, the balancing ones first; a class may have none)."""
    from ..viz import save_class_grid

    names_ = class_names(items)
    x_real, y_real, _ = load_tiles(shard_npys, items, splits=("train",))
    x_syn, y_syn, _ = read_synthetic(synthetic_npys, names_) if len(synthetic_npys) else (None, np.zeros(0), None)
    rng = np.random.default_rng(seed)
    names, rows = [], []
    for ci, cls in enumerate(names_):
        idx = np.flatnonzero(y_real == ci)
        pick = rng.choice(idx, size=min(GRID_PER_ROW, len(idx)), replace=False)
        names.append(f"{cls}: real")
        rows.append(x_real[pick])
        syn = np.flatnonzero(y_syn == ci)[:GRID_PER_ROW]
        if len(syn):
            names.append(f"{cls}: synthetic")
            rows.append(x_syn[syn])
    title = "Real (train) vs synthetic (GAN) tiles per class\n" + channel_key(x_real.shape[-1], channel_names)
    with atomic_path(path) as tmp:
        save_class_grid(tmp, names, rows, title=title)


def plot_f1_with_intervals(arm_table: pd.DataFrame, path, n_test: dict | None = None) -> None:
    """Per-class F1 by arm with bootstrap 95% intervals (seeds and test tiles resampled)."""
    plt = _plt()
    table = arm_table[arm_table["class"] != "(macro)"]
    classes = list(dict.fromkeys(table["class"]))
    arms = arm_order(table["arm"].unique())
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(1.8 * len(classes) + 3, 3.8))
    for i, arm in enumerate(arms):
        sub = table[table["arm"] == arm].set_index("class").loc[classes]
        xs = np.arange(len(classes)) + (i - (len(arms) - 1) / 2) * width
        err = np.vstack([sub["f1"] - sub["f1_lo"], sub["f1_hi"] - sub["f1"]]).clip(min=0)
        hatch = "//" if arm in ARMS and uses_gan(arm) else None
        ax.bar(xs, sub["f1"], width, yerr=err, capsize=2, hatch=hatch, label=arm)
        ax.scatter(xs, sub["f1"], marker="_", s=40, color="k", zorder=3)  # so an F1 of 0 shows too
    _finish_class_bars(
        fig, ax, classes, n_test, path,
        ylabel="test F1", title="Per-class F1 by arm (mean over seeds, 95% bootstrap interval over test groups)",
    )  # fmt: skip


VERDICT_COLOURS = {"helps": "#15803d", "hurts": "#b91c1c", "no evidence": "#334155"}


def plot_forest(verdicts: pd.DataFrame, path) -> None:
    """One line per class and GAN arm (the macro comparison last): the F1 difference from the
    baseline, its 95% interval (thin) and the adjusted interval the verdict reads (thick)."""
    plt = _plt()
    rows = [r for r in verdicts.to_dict("records") if _has_baseline(r)]
    fig, ax = plt.subplots(figsize=(9, 0.32 * max(len(rows), 1) + 1.6))
    for y, r in enumerate(rows):
        label = f"{r['class']} (n={_count(r['n_test'])}) · {r['gan_arm']} vs {r['baseline_arm']}"
        ax.text(-0.01, y, label, ha="right", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        if r["verdict"].startswith("too few"):
            ax.text(0, y, r["verdict"], ha="center", va="center", fontsize=7, color="#64748b")
            continue
        colour = VERDICT_COLOURS.get(r["verdict"], "#334155")
        ax.hlines(y, r["diff_lo_adj"], r["diff_hi_adj"], color=colour, lw=4, alpha=0.35)
        ax.hlines(y, r["diff_lo"], r["diff_hi"], color=colour, lw=1.2)
        ax.plot(r["difference"], y, "o", color=colour, ms=4)
        if y and r["class"] != rows[y - 1]["class"]:
            ax.axhline(y - 0.5, color="#cbd5e1", lw=0.6)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks([])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-1.02, 1.02)
    ax.set_xlabel("test F1 difference, GAN arm minus baseline (F1 from 0 to 1; > 0: the GAN arm is better)")
    if not rows:
        ax.text(0, 0, "no arm without GAN tiles to compare with", ha="center", va="center")
    ax.set_title(
        "Does the GAN help? Dot: difference; thin line: 95% interval; thick: adjusted for all comparisons\n"
        "(green: helps, red: hurts, grey: no evidence; n = test items of the class)",
        fontsize=9,
    )
    _save(fig, path)


def plot_confusions(results: list[dict], class_names_: list[str], path) -> None:
    """Row-normalised test confusion matrix per arm, summed over seeds."""
    plt = _plt()
    arms = arm_order({r["arm"] for r in results})
    cols = min(2, len(arms))  # two panels a row: legible where the report shows the figure
    rows = int(np.ceil(len(arms) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    for ax, arm in zip(axes.flat, arms):
        cm = sum(np.asarray(r["confusion_matrix"], float) for r in results if r["arm"] == arm)
        n_seeds = sum(r["arm"] == arm for r in results)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for (i, j), v in np.ndenumerate(norm):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color="white" if v > 0.5 else "black")
        ax.set_xticks(range(len(class_names_)), class_names_, rotation=45, ha="right", fontsize=9)
        ax.set_yticks(
            range(len(class_names_)),
            [
                f"{c} (n={int(n) // max(n_seeds, 1)} × {n_seeds} seeds)" if n_seeds > 1 else f"{c} (n={int(n)})"
                for c, n in zip(class_names_, cm.sum(1))
            ],
            fontsize=9,  # fmt: skip
        )
        ax.set_xlabel("predicted class", fontsize=10)
        ax.set_ylabel("true class", fontsize=10)
        ax.set_title(f"{arm} ({n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=11)
    for ax in list(axes.flat)[len(arms) :]:
        ax.axis("off")
    fig.suptitle(
        "Test confusion per arm: share of each true class (row) predicted as each class; rows sum to 1\n"
        "n = test tiles of the class (each scored once per seed)"
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the two-line title
    _save(fig, path)


# ----------------------------------------------------------------------------- the stage


def write_report(
    *,
    metric_jsons,
    items: pd.DataFrame,
    shard_npys,
    synthetic_npys,
    gan_log,
    outputs: dict,
    quality_csvs,
    acceptance_jsons,
    dataset: str,
    n_boot: int,
    min_support: int = 10,
    gan_loss: str | None = None,
    train_counts: dict[str, int] | None = None,
    channel_names=None,
    times: pd.DataFrame | None = None,
) -> None:
    """Every table and figure. items: fold 0's items.csv (the groups, and the real tiles of the
    GAN figures); train_counts: real train items per class of one model (default fold 0's)."""
    names = class_names(items)
    train_counts = train_counts or real_train_counts([items])
    per_fold = read_results(metric_jsons)
    with atomic_path(outputs["summary"]) as tmp:
        summarise(per_fold).to_csv(tmp, index=False)
    # every (arm, seed) scored on all its folds' test items at once (each item once)
    results = pool_folds(per_fold, names)
    summary = summarise(results)
    groups = test_groups(items, results)
    arm_table, verdicts = summarise_arms(results, names, n_boot=n_boot, groups=groups, min_support=min_support)
    n_test = support_per_class(results, names)
    acceptance = read_acceptance(acceptance_jsons)
    added = dict(zip(acceptance["label"], acceptance["needed_for_balance"])) if "label" in acceptance else {}
    verdicts = ordered_verdicts(verdicts, names, train_counts, added)
    with atomic_path(outputs["arm_summary"]) as tmp:
        arm_table.to_csv(tmp, index=False)
    with atomic_path(outputs["verdicts"]) as tmp:
        verdicts.to_csv(tmp, index=False)
    quality = read_quality(quality_csvs)
    n_seeds = int(arm_table["n_seeds"].min())
    tables = summary_tables(
        verdicts, arm_table, quality, acceptance, n_test, n_seeds, software_versions(), min_support, per_fold, times
    )
    with atomic_path(outputs["markdown"]) as tmp:
        tmp.write_text(summary_markdown(dataset, tables))
    write_html_pages(dataset, tables, outputs)
    log.info(
        "summary by arm (mean over seeds):\n%s",
        by_arm(summary)[["arm", "balanced_accuracy_mean", "macro_f1_mean"]].to_string(index=False),
    )
    if len(verdicts):
        log.info("verdicts:\n%s", verdicts.to_string(index=False))
    plot_recall_by_arm(summary, outputs["recall"], n_test)
    plot_f1_with_intervals(arm_table, outputs["f1"], n_test)
    plot_forest(verdicts, outputs["forest"])
    plot_confusions(results, names, outputs["confusion"])
    plot_gan_losses(pd.read_csv(gan_log), outputs["losses"], gan_loss)
    plot_real_vs_synthetic(items, shard_npys, synthetic_npys, outputs["grid"], channel_names=channel_names)
