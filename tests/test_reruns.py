"""Change one setting, and Snakemake reruns exactly the stages that read it (the rules' params),
and what depends on their outputs: for every config section, a per-dataset override, a new
seed and a new arm. Dry runs on a copy of the finished tiny run, asserting the exact plan."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import load_tiny_config, planned_jobs, run_snakemake, write_config

pytestmark = pytest.mark.slow

REPORT = {"report": 1, "all": 1}
AFTER_GENERATE = {"generate": 4, "balance": 1, "classify": 3, "gan_quality": 1, **REPORT}  # 4 classes, 3 GAN arms
GAN = {"train_gan": 1, **AFTER_GENERATE}
CLASSIFY = {"classify": 7, **REPORT}  # 7 arms x 1 seed
AFTER_TILES = {**GAN, "feature_classifier": 1, "classify": 7}


def override(section, **values):
    return lambda c: c["datasets"]["tiny"].setdefault(section, {}).update(values)


CASES = {
    "split.seed": (lambda c: c["split"].update(seed=1), {"split": 1, **AFTER_TILES}),
    "split.fractions": (
        lambda c: c["split"].update(fractions={"train": 0.5, "val": 0.25, "test": 0.25}),
        {"split": 1, **AFTER_TILES},
    ),
    "tiles.percentiles": (lambda c: c["tiles"].update(percentiles=[2.0, 99.0]), {"tile": 2, **AFTER_TILES}),
    "tiles.shard_size": (lambda c: c["tiles"].update(shard_size=24), {"tile": 1, **AFTER_TILES}),
    "tiles.foreground_threshold": (lambda c: c["tiles"].update(foreground_threshold=0.3), {"tile": 2, **AFTER_TILES}),
    "gan.steps": (lambda c: c["gan"].update(steps=60), GAN),
    "gan.log_every": (lambda c: c["gan"].update(log_every=20), GAN),
    "gan.lr_d": (lambda c: c["gan"].update(lr_d=0.0003), GAN),
    "gan.feature_discriminator": (lambda c: c["gan"].update(feature_discriminator=True), GAN),
    "feature_classifier.epochs under gan.feature_discriminator (the GAN reads it)": (
        lambda c: (c["gan"].update(feature_discriminator=True), c["feature_classifier"].update(epochs=3)),
        {"feature_classifier": 1, **GAN},
    ),
    "generate.seed": (lambda c: c["generate"].update(seed=1), AFTER_GENERATE),
    "generate.max_draws_factor without selective synthesis": (lambda c: c["generate"].update(max_draws_factor=8), {}),
    "generate.min_confidence": (lambda c: c["generate"].update(min_confidence=0.3), AFTER_GENERATE),
    "generate.match_histograms off": (lambda c: c["generate"].update(match_histograms=False), AFTER_GENERATE),
    "generate.match_histograms on": (lambda c: c["generate"].update(match_histograms=True), AFTER_GENERATE),
    "generate.match_histograms auto (as tiny.yaml)": (lambda c: c["generate"].update(match_histograms="auto"), {}),
    "balance.target": (lambda c: c["balance"].update(target="fixed", count=40), AFTER_GENERATE),
    "classifier.lr": (lambda c: c["classifier"].update(lr=0.002), CLASSIFY),
    "classifier.seeds (one more)": (lambda c: c["classifier"].update(seeds=[0, 1]), CLASSIFY),
    "classifier.arms (one fewer)": (lambda c: c["classifier"]["arms"].remove("gan_only"), REPORT),
    "feature_classifier.epochs": (
        lambda c: c["feature_classifier"].update(epochs=3),
        {"feature_classifier": 1, "gan_quality": 1, **REPORT},
    ),
    "gan_quality.max_per_class": (lambda c: c["gan_quality"].update(max_per_class=100), {"gan_quality": 1, **REPORT}),
    "report.bootstrap": (lambda c: c["report"].update(bootstrap=300), REPORT),
    "report.min_support": (lambda c: c["report"].update(min_support=2), REPORT),
    "override classifier.lr": (override("classifier", lr=0.002), CLASSIFY),
    "override gan.lr_d": (override("gan", lr_d=0.0003), GAN),
    "override equal to the global value": (override("report", bootstrap=200), {}),
    "override gan_quality": (override("gan_quality", max_per_class=100), {"gan_quality": 1, **REPORT}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_change_reruns_exactly_what_reads_it(copy_of_run, case):
    mutate, expected = CASES[case]
    config = load_tiny_config()
    mutate(config)
    write_config(copy_of_run, config)
    assert planned_jobs(copy_of_run) == expected


@pytest.mark.parametrize(
    "mutate, download",
    [
        (lambda c: c["tiles"].update(border="skip"), False),
        (lambda c: c["tiles"].update(channels=[0]), False),
        (lambda c: c["datasets"]["tiny"].update(on_bad_input="skip"), False),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(seed=4), True),
        (lambda c: c.setdefault("limits", {}).update(max_image_pages=8), False),
        (lambda c: c.setdefault("limits", {}).update(download_timeout_s=60), True),
    ],
    ids=[
        "tiles.border",
        "tiles.channels",
        "dataset.on_bad_input",
        "dataset.builtin",
        "limits.max_image_pages",
        "limits.download_timeout_s",
    ],
)
def test_a_change_the_index_reads_reruns_the_index_first(copy_of_run, mutate, download):
    """The index is a checkpoint: the jobs after it are planned once it has run again."""
    config = load_tiny_config()
    mutate(config)
    write_config(copy_of_run, config)
    jobs = planned_jobs(copy_of_run)
    assert jobs.get("index") == 1 and ("download" in jobs) == download


def test_initial_weights_rerun_the_classifiers_only(copy_of_run):
    """classifier.init_weights (a param of classify, and its file an input): the models and
    the report rerun, nothing before them."""
    config = load_tiny_config()
    weights = copy_of_run / "weights.npz"
    weights.write_bytes(b"")
    config["classifier"]["init_weights"] = "weights.npz"
    write_config(copy_of_run, config)
    assert planned_jobs(copy_of_run) == CLASSIFY


def test_a_new_arm_runs_only_its_models_and_the_report(copy_of_run):
    config = load_tiny_config()
    config["classifier"]["arms"].remove("class_weights")
    shutil.rmtree(copy_of_run / "results" / "tiny" / "fold-0" / "classify" / "class_weights")
    write_config(copy_of_run, config)
    run_snakemake(copy_of_run)  # the report without the arm
    config["classifier"]["arms"].append("class_weights")
    write_config(copy_of_run, config)
    assert planned_jobs(copy_of_run) == {"classify": 1, **REPORT}


def test_raising_gan_steps_resumes_from_the_checkpoint(copy_of_run):
    """gan.steps is not part of the run identity: training continues at the last step."""
    config = load_tiny_config()
    before = pd.read_csv(copy_of_run / "results/tiny/fold-0/gan/train_log.csv")
    config["gan"]["steps"] = 60
    write_config(copy_of_run, config)
    run_snakemake(copy_of_run, "--allowed-rules", "train_gan", "--force", "results/tiny/fold-0/gan/train_log.csv")
    log = (copy_of_run / "logs/tiny/fold-0/train_gan.log").read_text()
    assert "resumed GAN training" in log and "at step 40" in log
    after = pd.read_csv(copy_of_run / "results/tiny/fold-0/gan/train_log.csv")
    assert after["step"].tolist() == [10, 20, 30, 40, 50, 60]
    pd.testing.assert_frame_equal(after.iloc[:4], before)  # the first 40 steps are the old run's rows
