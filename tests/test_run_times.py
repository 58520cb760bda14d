"""The time-per-rule table from Snakemake benchmark files (bioaug.run_times)."""

from __future__ import annotations

import pytest

from bioaug.run_times import models_per_hour, read_benchmark, rule_times

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(tmp_path, name, *rows):
    path = tmp_path / f"{name}.tsv"
    path.write_text(HEADER + "".join(f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t0\t{cpu}\n" for s, rss, cpu in rows))
    return path


def test_rules_are_summed_over_their_jobs(tmp_path):
    files = {
        "classify": [bench(tmp_path, "c0", (10.0, 300, 9.5)), bench(tmp_path, "c1", (30.0, 500, 29.0))],
        "train_gan": [bench(tmp_path, "g", (60.0, 900, 110.0))],
        "report": [],
    }
    times = rule_times(files).set_index("rule")
    assert list(times.index) == ["train_gan", "classify"]  # slowest first; a rule without files left out
    assert times.loc["classify", "jobs"] == 2
    assert times.loc["classify", "wall_s"] == pytest.approx(40.0)
    assert times.loc["classify", "mean_s"] == pytest.approx(20.0)
    assert times.loc["classify", "max_s"] == pytest.approx(30.0)
    assert times.loc["classify", "cpu_s"] == pytest.approx(38.5)
    assert times.loc["classify", "max_rss_mb"] == pytest.approx(500)
    assert times["share"].sum() == pytest.approx(1.0)
    assert times.loc["train_gan", "share"] == pytest.approx(0.6)
    assert models_per_hour(times.reset_index()) == pytest.approx(2 / 40 * 3600)
    assert models_per_hour(times.reset_index(), "split") is None


def test_repeated_benchmarks_use_the_last_repeat_and_odd_files_are_named(tmp_path):
    assert read_benchmark(bench(tmp_path, "r", (5.0, 1, 4.0), (7.0, 2, 6.0)))["s"] == pytest.approx(7.0)
    bad = tmp_path / "bad.tsv"
    bad.write_text("seconds\n3\n")
    with pytest.raises(ValueError, match="bad.tsv"):
        read_benchmark(bad)
    empty = bench(tmp_path, "empty")
    with pytest.raises(ValueError, match="empty.tsv"):
        read_benchmark(empty)
