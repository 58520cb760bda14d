"""What the report says, read back: summary.md's rows and the HTML tables (the pages that
`snakemake --report` shows inline) checked against the metric files, cell by cell at the
printed precision; the figures' labels and resolution; the sections that depend on the config."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bioaug import viz
from bioaug.arms import ARMS, uses_gan
from bioaug.formats.synthetic import read_acceptance, write_class
from bioaug.metrics.classification import classification_metrics
from bioaug.stages import report
from bioaug.verdicts import summarise_arms
from conftest import planned_jobs, run_snakemake

# ----------------------------------------------------------------------------- readers of the report


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def md_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Markdown tables by the title of their `## ` section: (headers, rows)."""
    lines: dict[str, list[str]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
        elif line.startswith("|") and title is not None:
            lines.setdefault(title, []).append(line)
    out = {}
    for t, ls in lines.items():
        assert set(ls[1].replace("|", "")) == {"-"}, ls[1]
        out[t] = (split_row(ls[0]), [split_row(x) for x in ls[2:]])
    return out


def md_table(text: str, title_start: str):
    found = [v for t, v in md_tables(text).items() if t.startswith(title_start)]
    assert len(found) == 1, f"{title_start!r}: {len(found)} sections in\n{text}"
    return found[0]


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self._table, self._row, self._cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """HTML tables by id: (headers, rows)."""
    parser = _Tables()
    parser.feed(text)
    return {k: (rows[0], rows[1:]) for k, rows in parser.tables.items()}


def f2(x) -> str:
    return f"{x:.2f}"


def ci(point, lo, hi, sign=False) -> str:
    f = (lambda v: f"{v:+.2f}") if sign else f2
    return f"{f(point)} [{f(lo)}, {f(hi)}]"


# ----------------------------------------------------------------------------- checks shared by both tests

MD_TITLES = {
    "in_words": "The answer in words",
    "verdicts": "Does the GAN help? (per class",
    "macro": "Does the GAN help overall?",
    "arms": "Arms",
    "f1_by_arm": "Test F1 per arm",
    "gan_quality": "GAN quality",
    "acceptance": "Selective synthesis",
    "software": "Software",
}


def expected_f1(results: list[dict], arm: str, cls: str) -> float:
    """Mean over seeds of the per-class test F1 in the metric files."""
    return float(np.mean([r["per_class"][cls]["f1"] for r in results if r["arm"] == arm]))


def expected_val_f1(results: list[dict], arm: str, cls: str) -> float:
    """Mean over seeds of the per-class validation F1 in the metric files (the macro: cls None)."""
    runs = [r for r in results if r["arm"] == arm]
    return float(np.mean([r["val_macro_f1"] if cls is None else r["val_per_class_f1"][cls] for r in runs]))


def check_report_tables(
    md: str,
    pages: dict[str, str],
    results: list[dict],
    arm_table: pd.DataFrame,
    verdicts: pd.DataFrame,
    n_real_train: dict[str, int],
    quality: pd.DataFrame | None,
    acceptance: pd.DataFrame | None,
    min_support: int = 10,
) -> None:
    """summary.md and the HTML pages say what the metric files and the CSVs say."""
    names = results[0]["class_names"]
    arms = sorted({r["arm"] for r in results})
    # test tiles per class: counted from the per-tile truths, equal to each file's support
    n_test = dict(zip(names, np.bincount(results[0]["y_true"], minlength=len(names)).tolist()))
    for r in results:
        assert {c: r["per_class"][c]["support"] for c in names} == n_test

    # the verdict table: one row per (class, GAN arm), numbers from the metric files
    headers, rows = md_table(md, MD_TITLES["verdicts"])
    assert headers == report.VERDICT_HEADERS
    gan_arms = [a for a in arms if uses_gan(a)]
    per_class = verdicts[verdicts["class"] != "(macro)"]
    assert len(rows) == len(per_class) == len(gan_arms) * len(names)
    by_key = {(r[0], r[4]): r for r in rows}
    baselines = [a for a in arms if not uses_gan(a)]
    items = np.asarray(results[0]["test_item_ids"])
    y_true = np.asarray(results[0]["y_true"])
    decided = per_class[~per_class["verdict"].str.startswith("too few")]
    for v in per_class.to_dict("records"):
        row = by_key[(v["class"], v["gan_arm"])]
        n_items = len(np.unique(items[y_true == names.index(v["class"])]))
        assert row[1] == str(n_items) == str(v["n_test"]) and int(row[2]) == v["n_test_groups"] <= n_items
        assert row[3] == str(n_real_train[v["class"]]) == str(int(v["n_real_train"]))  # (the CSV: float, NaN for macro)
        gan_f1 = expected_f1(results, v["gan_arm"], v["class"])
        # the baseline: the arm without GAN tiles of best mean *validation* F1 for the class
        best_val = max(expected_val_f1(results, a, v["class"]) for a in baselines)
        assert expected_val_f1(results, v["baseline_arm"], v["class"]) == pytest.approx(best_val)
        base_f1 = expected_f1(results, v["baseline_arm"], v["class"])
        assert v["gan_f1"] == pytest.approx(gan_f1) and v["baseline_f1"] == pytest.approx(base_f1)
        assert v["difference"] == pytest.approx(gan_f1 - base_f1)
        assert row[5:9] == [f2(v["gan_f1"]), v["baseline_arm"], f2(v["baseline_f1"]),
                            ci(v["difference"], v["diff_lo"], v["diff_hi"], sign=True)]  # fmt: skip
        if v["n_test"] < min_support:
            assert v["verdict"] == row[10] == f"too few test items (n={v['n_test']})" and row[9] == ""
            continue
        assert row[9] == f"[{v['diff_lo_adj']:+.2f}, {v['diff_hi_adj']:+.2f}]" and row[10] == v["verdict"]
        # Bonferroni over the decided rows: the adjusted interval holds the raw one, the verdict reads it
        assert v["n_comparisons"] == len(decided)
        assert v["diff_lo_adj"] <= v["diff_lo"] <= v["diff_hi"] <= v["diff_hi_adj"]
        assert v["p_adjusted"] == pytest.approx(min(1.0, len(decided) * v["p_value"]))
        lo_excl, hi_excl = v["diff_lo_adj"] > 0, v["diff_hi_adj"] < 0
        assert v["verdict"] == ("helps" if lo_excl else "hurts" if hi_excl else "no evidence")
    # rows grouped by class, in class order
    assert [r[0] for r in rows] == [c for c in names for _ in gan_arms]

    # the macro comparison: each GAN arm against the arm of best validation macro F1
    _, rows = md_table(md, MD_TITLES["macro"])
    macro = verdicts[verdicts["class"] == "(macro)"]
    assert [r[0] for r in rows] == list(macro["gan_arm"]) == [a for a in ARMS if a in gan_arms]  # arms.py order
    for row, v in zip(rows, macro.to_dict("records")):
        best_val = max(expected_val_f1(results, a, None) for a in baselines)
        assert expected_val_f1(results, v["baseline_arm"], None) == pytest.approx(best_val)
        assert row[2] == v["baseline_arm"] and row[-1] == v["verdict"] and v["n_comparisons"] == len(gan_arms)

    # one sentence per class
    _, rows = md_table(md, MD_TITLES["in_words"])
    assert [r[0] for r in rows] == names
    for cls, text in rows:
        sub = per_class[per_class["class"] == cls]
        if sub["verdict"].str.startswith("too few").any():
            assert text.startswith("Too few test items")
        elif (sub["verdict"] == "helps").any():
            assert " raised " in text and f"{cls} F1" in text
        elif (sub["verdict"] == "hurts").any():
            assert " lowered " in text
        elif (sub["gan_f1"] == 0).all() and (sub["baseline_f1"] == 0).all():
            assert text.startswith(f"No arm recognises {cls}: F1 = 0")
        else:
            assert text.startswith(f"No evidence that a GAN arm changes {cls} F1")

    # the arm legend: every arm, in words
    _, arm_rows = md_table(md, MD_TITLES["arms"])
    assert [r[0] for r in arm_rows] == [a for a in ARMS if a in arms]
    assert all(r[1] == ("yes" if uses_gan(r[0]) else "no") and r[2] for r in arm_rows)

    # the F1 table: arm x class cells from arm_summary.csv, point estimates from the metric files
    headers, rows = md_table(md, MD_TITLES["f1_by_arm"])
    per_model = ["macro F1", "steps per model", "seconds per model"]
    assert headers == ["arm", *(f"{c} (n={n_test[c]})" for c in names), *per_model]
    assert sorted(r[0] for r in rows) == arms
    for row in rows:
        sub = arm_table[arm_table["arm"] == row[0]].set_index("class")
        for cell, c in zip(row[1:], names):
            assert sub.loc[c, "f1"] == pytest.approx(expected_f1(results, row[0], c))
            assert cell == ci(sub.loc[c, "f1"], sub.loc[c, "f1_lo"], sub.loc[c, "f1_hi"])
        macro = sub.loc["(macro)"]
        assert row[-3] == ci(macro["f1"], macro["f1_lo"], macro["f1_hi"])
        secs = np.mean([r["seconds"] for r in results if r["arm"] == row[0]])
        assert row[-1] == f"{secs:.0f}"
        steps = np.mean([r.get("train_steps", np.nan) for r in results if r["arm"] == row[0]])
        assert row[-2] == ("" if np.isnan(steps) else str(int(steps)))

    # GAN quality: gan_quality.csv at the printed precision
    if quality is not None:
        headers, rows = md_table(md, MD_TITLES["gan_quality"])
        assert len(rows) == len(quality)
        column_of = {header: col for col, (header, _) in report.QUALITY_COLUMNS.items()}
        assert headers[0] == "class"
        assert {column_of[h] for h in headers[1:]} == set(quality.columns) & set(column_of.values())
        for row, q in zip(rows, quality.to_dict("records")):
            assert row[0] == ("all classes" if q["class"] == "all" else q["class"])
            for header, cell in zip(headers[1:], row[1:]):
                col = column_of[header]
                assert cell == quality_cell(q[col], report.QUALITY_COLUMNS[col][1]), (col, q["class"])

    # selective synthesis: the acceptance section exactly when the filter was on
    selective = acceptance is not None and acceptance["min_confidence"].notna().any()
    has_section = any(t.startswith(MD_TITLES["acceptance"]) for t in md_tables(md))
    assert has_section == selective
    assert ("acceptance" in html_tables(pages["quality_html"])) == selective
    if selective:
        _, rows = md_table(md, MD_TITLES["acceptance"])
        acc = acceptance.set_index("label")
        for row in rows:
            a = acc.loc[row[0]]
            assert row[1:6] == [
                str(int(a[k])) for k in ("n_real", "target", "needed_for_balance", "generated", "drawn")
            ]
            assert row[6] == f"{a['acceptance_rate']:.3f}" and row[7] == f"{a['min_confidence']:.2f}"

    # software versions, as installed
    _, rows = md_table(md, MD_TITLES["software"])
    versions = dict((r[0], r[1]) for r in rows)
    for pkg in ("bioaug", "jax", "flax", "optax", "snakemake"):
        assert versions[pkg] == importlib.metadata.version(pkg)

    # the HTML pages show the same cells as summary.md
    shown = {}
    for page in pages.values():
        for table_id, table in html_tables(page).items():
            assert table_id not in shown or shown[table_id] == table
            shown[table_id] = table
    assert {"verdicts", "arms", "f1_by_arm", "software"} <= set(shown)
    for table_id, title in MD_TITLES.items():
        if table_id in shown:
            assert shown[table_id] == md_table(md, title), table_id


# ----------------------------------------------------------------------------- fast: synthetic inputs


def fake_results(rng, names, arms, seeds, n=40) -> list[dict]:
    y_true = rng.integers(0, len(names), n)
    out = []
    for arm in arms:
        for seed in seeds:
            skill = {"real": 0.5, "oversample": 0.6, "real+gan": 0.8}.get(arm, 0.4)
            y_pred = np.where(rng.random(n) < skill, y_true, rng.integers(0, len(names), n))
            m = classification_metrics(y_true, y_pred, None, names)
            m.update(
                arm=arm,
                seed=seed,
                split="test",
                n_train_per_class=[10] * len(names),
                best_epoch=1,
                history=[],
                seconds=1.0 + seed,
                train_seconds=1.0,
                test_tile_ids=[f"t{i}" for i in range(n)],
                test_item_ids=[f"t{i}" for i in range(n)],
                y_true=y_true.tolist(),
                y_pred=y_pred.tolist(),
                # validation scores that disagree with the test ranking (the baseline is chosen on them)
                val_per_class_f1={c: float(rng.random()) for c in names},
                val_macro_f1=float(rng.random()),
            )
            out.append(m)
    return out


def build_report(tmp_path, results, names, quality, acceptance, min_support=10):
    arm_table, verdicts = summarise_arms(results, names, n_boot=200, min_support=min_support)
    n_test = report.support_per_class(results, names)
    n_train = {c: 10 + i for i, c in enumerate(names)}
    verdicts = report.ordered_verdicts(verdicts, names, n_train)
    n_seeds = int(arm_table["n_seeds"].min())
    tables = report.summary_tables(
        verdicts, arm_table, quality, acceptance, n_test, n_seeds, report.software_versions(), min_support
    )
    md = report.summary_markdown("demo", tables)
    outputs = {k: tmp_path / f"{k}.html" for k in ("verdicts_html", "f1_html", "quality_html")}
    report.write_html_pages("demo", tables, outputs)
    pages = {k: p.read_text() for k, p in outputs.items()}
    return md, pages, arm_table, verdicts, n_train


def quality_cell(value, digits) -> str:
    """A gan_quality.csv value as the report should print it (digits: None a count, "%" a share)."""
    if pd.isna(value):
        return "n/a"
    return str(int(value)) if digits is None else f"{100 * value:.1f}" if digits == "%" else f"{value:.{digits}f}"


def fake_quality(names) -> pd.DataFrame:
    rows = [{"class": "all", "n_real_train": 30, "n_synthetic": 20}] + [
        {"class": c, "n_real_train": 10, "n_synthetic": 0 if i == 0 else 10} for i, c in enumerate(names)
    ]
    q = pd.DataFrame(rows)
    for j, col in enumerate(["fid", "kid", "precision", "recall", "density", "coverage"]):
        q[col] = [0.1234 * (j + 1) + 0.01 * i for i in range(len(q))]
    q["near_copy_share_feature"], q["near_copy_share_pixel"] = 0.0125, 0.5
    q["heldout_precision"], q["n_real_heldout"] = 0.6789, 7
    q["heldout_c2st_accuracy"] = [np.nan] + [0.5 + 0.01 * i for i in range(1, len(q))]  # per class only
    q.loc[1, ["fid", "kid", "precision", "near_copy_share_pixel"]] = np.nan  # the class without synthetic tiles
    return q


def acceptance_of(label: str, i: int, min_confidence) -> dict:
    """The acceptance figures of one class, as generate writes them."""
    return {
        "label": label,
        "n_real": 10,
        "target": 20,
        "needed_for_balance": 10,
        "generated": 18,
        "drawn": 40 + i,
        "acceptance_rate": 18 / (40 + i),
        "min_confidence": min_confidence,
        "short_by": 2,
    }


def fake_acceptance(names, min_confidence) -> pd.DataFrame:
    return pd.DataFrame([acceptance_of(c, i, min_confidence) for i, c in enumerate(names)])


@pytest.mark.parametrize("min_confidence", [None, 0.8])
def test_tables_say_what_the_metric_files_say(tmp_path, min_confidence):
    names = ["common", "rare|odd <class>"]  # a class name with Markdown and HTML metacharacters
    results = fake_results(np.random.default_rng(0), names, ["real", "oversample", "real+gan", "gan_only"], [0, 1])
    quality, acceptance = fake_quality(names), fake_acceptance(names, min_confidence)
    md, pages, arm_table, verdicts, n_train = build_report(tmp_path, results, names, quality, acceptance)
    check_report_tables(md, pages, results, arm_table, verdicts, n_train, quality, acceptance)
    assert "2 seeds (training runs) per arm" in md
    assert "<class>" not in pages["verdicts_html"]  # escaped


def test_one_seed_and_a_class_nobody_recognises_are_said_in_words(tmp_path):
    names = ["a", "b"]
    results = fake_results(np.random.default_rng(1), names, ["real", "real+gan"], [0])
    for r in results:  # nobody ever predicts class b
        r["y_pred"] = [0] * len(r["y_pred"])
        r.update(classification_metrics(r["y_true"], r["y_pred"], None, names))
    md, pages, *_ = build_report(tmp_path, results, names, None, None)
    _, rows = md_table(md, "Does the GAN help?")
    assert rows[1][0] == "b" and rows[1][-1] == "F1 = 0 in both arms: neither recognises this class"
    assert "1 seed per arm, so the intervals cover the test-set sampling only" in md
    assert "gan_quality" not in html_tables(pages["quality_html"])


def test_gan_arms_alone_have_no_baseline(tmp_path):
    names = ["a", "b"]
    results = fake_results(np.random.default_rng(4), names, ["real+gan", "gan_only"], [0])
    md, pages, *_ = build_report(tmp_path, results, names, None, None)
    headers, rows = md_table(md, "Does the GAN help?")
    assert len(rows) == 4 and all(r[headers.index("verdict")] == "no baseline" for r in rows)
    assert html_tables(pages["verdicts_html"])["verdicts"] == (headers, rows)


def test_every_arm_is_explained():
    assert set(report.ARM_DESCRIPTIONS) == set(ARMS)


def test_selective_synthesis_is_read_from_the_acceptance_files(tmp_path):
    names = ["a", "b"]
    for min_conf in (None, 0.9):
        paths = []
        for c in names:
            meta = pd.DataFrame(
                {"label": [c], "seed": [1], "checkpoint": ["x"], "step": [1], "used_for_balance": [True]}
            ).assign(filter_confidence=np.nan)
            path = tmp_path / f"{c}-{min_conf}.npy"
            write_class(path, np.zeros((1, 4, 4, 1), np.float32), meta, acceptance_of(c, 0, min_conf))
            paths.append(path.with_suffix(".json"))
        assert report.selective_synthesis_on(read_acceptance(paths)) == (min_conf is not None)
    assert not report.selective_synthesis_on(pd.DataFrame())


def test_histogram_matching_is_said_under_the_quality_table(tmp_path):
    """generate.match_histograms changes the synthetic tiles' values: the report says so, read
    from the acceptance files generate writes (files from before the option say nothing)."""
    names = ["a", "b"]
    results = fake_results(np.random.default_rng(5), names, ["real", "real+gan", "gan_only"], [0])
    note = "The synthetic tiles were histogram-matched (generate.match_histograms)"
    for matched in (None, False, True):
        jsons = []
        for i, c in enumerate(names):
            meta = pd.DataFrame(
                {"label": [c], "seed": [1], "checkpoint": ["x"], "step": [1], "used_for_balance": [True]}
            ).assign(filter_confidence=np.nan)
            summary = acceptance_of(c, i, None)
            if matched is not None:
                summary["match_histograms"] = matched
            if matched:
                summary["histogram_match"] = {"synthetic_quantiles": [[0.0, 1.0]], "real_quantiles": [[0.1, 0.9]]}
            path = tmp_path / f"{c}-{matched}.npy"
            write_class(path, np.zeros((1, 4, 4, 1), np.float32), meta, summary)
            jsons.append(path.with_suffix(".json"))
        acceptance = read_acceptance(jsons)
        assert report.histograms_matched(acceptance) == bool(matched)
        md, pages, *_ = build_report(tmp_path / str(matched), results, names, fake_quality(names), acceptance)
        assert (note in md) == bool(matched) and (note in pages["quality_html"]) == bool(matched)
        assert "Selective synthesis" not in md  # the match alone does not make an acceptance table


@pytest.fixture
def figures(monkeypatch):
    """The figures each plot function made, kept open (after being saved) to read their labels."""
    made = []

    def save(fig, path):
        with report.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=report.DPI, bbox_inches="tight")
        made.append(fig)

    monkeypatch.setattr(report, "_save", save)
    yield made
    report._plt().close("all")


def png_dpi(path) -> float:
    return min(Image.open(path).info["dpi"])


def test_figures_have_labelled_axes_and_150_dpi(tmp_path, figures):
    names = ["a", "b", "c"]
    results = fake_results(np.random.default_rng(2), names, ["real", "real+gan", "gan_only"], [0, 1])
    arm_table, _ = summarise_arms(results, names, n_boot=50)
    n_test = report.support_per_class(results, names)
    summary = report.summarise(results)
    log = pd.DataFrame({"step": [10, 20], "d_loss": [1.9, 1.5], "g_loss": [0.3, 0.6], "d_real": [0.1, 0.4]})
    log["d_fake"] = [-0.1, -0.3]
    report.plot_confusions(results, names, tmp_path / "confusion.png")
    report.plot_gan_losses(log, tmp_path / "losses.png", "hinge")
    report.plot_recall_by_arm(summary, tmp_path / "recall.png", n_test)
    report.plot_f1_with_intervals(arm_table, tmp_path / "f1.png", n_test)
    _, verdicts = summarise_arms(results, names, n_boot=50, min_support=15)
    report.plot_forest(report.ordered_verdicts(verdicts, names, {c: 5 for c in names}), tmp_path / "forest.png")
    confusion, losses, recall, f1, forest = figures
    for ax in confusion.axes[:3]:
        assert ax.get_xlabel() == "predicted class" and ax.get_ylabel().startswith("true class")
        # row labels carry the test tiles of each class, and the 2 seeds that each scored them
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{c} (n={n_test[c]} × 2 seeds)" for c in names]
    assert [ax.get_ylabel() for ax in losses.axes] == ["hinge loss", "D output (mean logit)"]
    assert all(ax.get_xlabel() == "GAN training step" for ax in losses.axes)
    for fig, ylabel in ((recall, "test recall"), (f1, "test F1")):
        ax = fig.axes[0]
        assert ax.get_ylabel().startswith(ylabel) and ax.get_xlabel() == "class (n = test tiles)"
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{c}\n(n={n_test[c]})" for c in names]
    ax = forest.axes[0]  # one line per (class, GAN arm) and the macro rows, labelled with n and the baseline
    assert ax.get_xlabel().startswith("test F1 difference, GAN arm minus baseline")
    labels = [t.get_text() for t in ax.texts]
    n_items = {c: int((np.asarray(results[0]["y_true"]) == i).sum()) for i, c in enumerate(names)}
    for c in names:
        for arm in ("real+gan", "gan_only"):
            assert any(t.startswith(f"{c} (n={n_items[c]}) · {arm} vs real") for t in labels), (c, arm, labels)
    assert sum(t.startswith("too few test items") for t in labels) == 2 * sum(n < 15 for n in n_items.values())
    for png in ("confusion", "losses", "recall", "f1", "forest"):
        assert png_dpi(tmp_path / f"{png}.png") == pytest.approx(150, abs=0.5)


def test_real_vs_synthetic_reads_the_synthetic_npy_files(tmp_path, monkeypatch):
    items = pd.DataFrame({"label": ["a", "b", "c"] * 4, "split": "train"})
    rng = np.random.default_rng(3)
    x_real = rng.random((12, 6, 6, 2)).astype(np.float32)
    y_real = np.array([0, 1, 2] * 4)
    monkeypatch.setattr(report, "load_tiles", lambda shards, items, splits: (x_real, y_real, None))
    syn = {}
    for c, k in (("a", 10), ("c", 3)):  # b has no synthetic tiles
        syn[c] = rng.random((k, 6, 6, 2)).astype(np.float32)
        meta = pd.DataFrame(
            {"label": c, "seed": np.arange(k), "checkpoint": "x", "step": 1, "used_for_balance": np.arange(k) < 2}
        ).assign(filter_confidence=np.nan)
        write_class(tmp_path / f"{c}.npy", syn[c], meta, {"label": c, "min_confidence": None})
    grids = []
    real_save = viz.save_class_grid
    monkeypatch.setattr(
        viz, "save_class_grid", lambda path, n, r, title: grids.append((n, r, title)) or real_save(path, n, r, title)
    )
    out = tmp_path / "grid.png"
    report.plot_real_vs_synthetic(items, [], [tmp_path / "a.npy", tmp_path / "c.npy"], out)
    row_names, rows, title = grids[0]
    assert row_names == ["a: real", "a: synthetic", "b: real", "c: real", "c: synthetic"]
    np.testing.assert_array_equal(rows[1], syn["a"][: report.GRID_PER_ROW])  # the first tiles, all rows
    np.testing.assert_array_equal(rows[4], syn["c"])
    assert "magenta: channel 0, green: channel 1" in title
    report.plot_real_vs_synthetic(items, [], [tmp_path / "a.npy"], out, channel_names=["dna", "actin"])
    assert "magenta: dna, green: actin" in grids[-1][2]  # balance.channel_names name the colours
    assert png_dpi(out) == pytest.approx(150, abs=0.5)


# ----------------------------------------------------------------------------- slow: a finished tiny run


@pytest.mark.slow
def test_tiny_run_report_says_what_its_metric_files_say(tiny_run):
    res = tiny_run / "results" / "tiny"
    results = [json.loads(p.read_text()) for p in sorted((res / "fold-0" / "classify").glob("*/seed-*.json"))]
    items = pd.read_csv(res / "fold-0" / "items.csv", dtype={"label": str})
    n_real_train = items.loc[items["split"] == "train", "label"].value_counts().to_dict()
    acceptance = read_acceptance(sorted((res / "fold-0" / "synthetic").glob("*.json")))
    pages = {
        "verdicts_html": (res / "report" / "verdicts.html").read_text(),
        "f1_html": (res / "report" / "f1_by_arm.html").read_text(),
        "quality_html": (res / "report" / "gan_quality.html").read_text(),
    }
    check_report_tables(
        (res / "summary.md").read_text(),
        pages,
        results,
        pd.read_csv(res / "arm_summary.csv", dtype={"class": str}),
        pd.read_csv(res / "verdicts.csv", dtype={"class": str}),
        n_real_train,
        pd.read_csv(res / "fold-0" / "gan_quality.csv", dtype={"class": str}),
        acceptance,
        min_support=4,  # tiny.yaml
    )
    assert acceptance["min_confidence"].isna().all()  # tiny.yaml: no selective synthesis, so no section
    quality = pd.read_csv(res / "fold-0" / "gan_quality.csv", dtype={"class": str}).set_index("class")
    per_class = quality.drop(index="all")
    assert np.isnan(quality.loc["all", "c2st_accuracy"])  # the two-sample test is per class
    assert per_class["c2st_accuracy"].between(0, 1).all() and (per_class["c2st_n_test"] >= 4).all()
    # the held-out reference: the class's val + test tiles in place of the synthetic ones
    items = pd.read_csv(res / "fold-0" / "items.csv", dtype={"label": str})
    held = items[items["split"].isin(["val", "test"])]
    assert quality.loc["all", "n_real_heldout"] == len(held)
    assert per_class["n_real_heldout"].to_dict() == held["label"].value_counts().to_dict()
    assert quality["heldout_precision"].between(0, 1).all() and np.isnan(quality.loc["all", "heldout_c2st_accuracy"])
    assert per_class["heldout_c2st_accuracy"].between(0, 1).all()
    m = per_class[["n_real_train", "n_real_heldout"]].min(axis=1)  # tiles per side of the test
    assert (per_class["heldout_c2st_n_test"] == np.where(m >= 4, 2 * (m - m // 2), 0)).all()
    assert "real vs synthetic told apart (accuracy)" in (res / "summary.md").read_text()
    for png in ("recall_by_arm", "f1_by_arm", "forest", "confusion", "gan_losses", "real_vs_synthetic"):
        assert png_dpi(res / "report" / f"{png}.png") == pytest.approx(150, abs=0.5), png
    # 16 real and 16 synthetic tiles a class, each at least 64 px on screen (tiny.yaml: 16 px tiles)
    from PIL import Image

    width, height = Image.open(res / "report" / "real_vs_synthetic.png").size
    assert width >= 16 * 64 and height >= 2 * 4 * 64  # 4 classes, a real and a synthetic row each
    # the report does not read the balanced dataset (whose file format is a user's choice)
    assert planned_jobs(tiny_run, "--forcerun", "balance") == {"balance": 1, "all": 1}


def test_tiny_run_report_says_where_the_time_went(tiny_run):
    """Every job wrote a Snakemake benchmark file; the report sums them per rule."""
    bench = tiny_run / "benchmarks" / "tiny"
    classify = sorted((bench / "fold-0").glob("classify-*.tsv"))
    assert len(classify) == 7  # tiny.yaml: 7 arms x 1 seed
    n_shards = len(list((tiny_run / "results" / "tiny" / "tiles").glob("shard-*.npy")))
    assert len(list(bench.glob("tile-*.tsv"))) == n_shards
    for name in ("download", "index", "balance", "report"):
        assert (bench / f"{name}.tsv").is_file(), name
    headers, rows = md_table((tiny_run / "results" / "tiny" / "summary.md").read_text(), "Where the time went")
    by_rule = {r[0]: dict(zip(headers, r)) for r in rows}
    expected_jobs = {"classify": 7, "generate": 4, "tile": n_shards, "train_gan": 1, "split": 1, "download": 1}
    for rule, n in expected_jobs.items():
        assert by_rule[rule]["jobs"] == str(n), rule
    walls = {rule: sum(pd.read_csv(f, sep="\t")["s"].iloc[-1] for f in bench.glob(pattern)) for rule, pattern in
             {"classify": "fold-0/classify-*.tsv", "train_gan": "fold-0/train_gan.tsv"}.items()}  # fmt: skip
    for rule, wall in walls.items():
        assert float(by_rule[rule]["job seconds"]) == pytest.approx(wall, abs=0.51), rule
    assert "report" not in by_rule and "balance" not in by_rule
    assert sum(float(r["share"].rstrip("%")) for r in by_rule.values()) == pytest.approx(100, abs=len(rows))
    assert "f1_by_arm" in (tiny_run / "results" / "tiny" / "report" / "f1_by_arm.html").read_text()
    assert "Where the time went" in (tiny_run / "results" / "tiny" / "report" / "f1_by_arm.html").read_text()


@pytest.mark.slow
def test_html_report_shows_the_tables_inline(copy_of_run):
    """In `snakemake --report`, the tables are HTML results (shown in a frame, like a figure),
    and the CSVs stay downloads."""
    run_snakemake(copy_of_run, "--report", "report.html")
    page = (copy_of_run / "report.html").read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", page, re.S).group(1))
    by_name = {entry["filename"]: entry for entry in results.values()}
    res = copy_of_run / "results" / "tiny"
    for name in ("verdicts.html", "f1_by_arm.html", "gan_quality.html"):
        entry = by_name[name]
        assert entry["mime_type"] == "text/html", name
        embedded = base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode()
        assert embedded == (res / "report" / name).read_text()
    for name in ("verdicts.csv", "arm_summary.csv", "summary.csv", "gan_quality.csv"):
        assert by_name[name]["mime_type"] == "text/csv", name
    verdict_rows = html_tables(base64.b64decode(by_name["verdicts.html"]["data_uri"].split(",", 1)[1]).decode())
    csv = pd.read_csv(res / "verdicts.csv", dtype={"class": str})
    assert len(verdict_rows["verdicts"][1]) == (csv["class"] != "(macro)").sum()
    assert len(verdict_rows["macro"][1]) == (csv["class"] == "(macro)").sum() == 3
    assert "Start with the" in page  # the workflow description, with its pointer to the verdicts


def test_a_baseline_at_ceiling_and_zero_printed_plainly(tmp_path):
    """A perfect baseline cannot be beaten, and the table says so; differences that round to
    zero print as 0.00 / +0.00, never -0.00."""
    names = ["a", "b"]
    results = fake_results(np.random.default_rng(5), names, ["real", "real+gan"], [0])
    real = next(r for r in results if r["arm"] == "real")
    real["y_pred"] = list(real["y_true"])  # the baseline is perfect
    real.update(classification_metrics(real["y_true"], real["y_pred"], None, names))
    md, *_ = build_report(tmp_path, results, names, None, None)
    headers, rows = md_table(md, "Does the GAN help? (per class")
    notes = [r[headers.index("note")] for r in rows]
    assert all(n.startswith("the baseline is at F1 = 1") for n in notes)
    assert "-0.00" not in md
    assert report._ci(-0.001, -0.004, 0.2, sign=True) == "+0.00 [+0.00, +0.20]"
