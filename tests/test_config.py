"""Configuration: one validation layer (schema types, ranges and defaults, then the cross-key
rules of bioaug.config), each error naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from bioaug.config import STAGE_SECTIONS, dataset_section, defaults, schema, validate_config
from bioaug.formats.items import safe_name
from bioaug.runtime import BioaugError
from conftest import REPO, load_tiny_config, run_snakemake, write_config

MINIMAL = {
    "datasets": {
        "d": {
            "source": "builtin",
            "format": "points",
            "annotations": "annotations.csv",
            "builtin": {
                "n_images": 4,
                "image_size": 64,
                "cells_per_image": [2, 3],
                "class_fractions": {"a": 0.5, "b": 0.5},
                "seed": 0,
            },
        }
    }
}


def test_default_config_passes():
    validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))


def test_hard_preset_is_config_yaml_with_a_harder_dataset():
    """presets/hard.yaml validates and differs from config.yaml only in its dataset: the key, the
    three builtin knobs that make it harder, its size, its own split fractions and the GAN's
    fitted pixel noise for its dim stain (every global stage setting is the demo's)."""
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    hard = yaml.safe_load((REPO / "presets" / "hard.yaml").read_text())
    validate_config(copy.deepcopy(hard))
    assert list(hard["datasets"]) == ["hard"]
    ds = hard["datasets"]["hard"]
    knobs = {k: ds["builtin"].pop(k) for k in ("separation", "signal", "blur")}
    assert 0 < knobs["separation"] < 1 and 0 < knobs["signal"] < 1 and knobs["blur"][0] > 1.0, knobs
    assert ds["builtin"].pop("n_images") > demo["datasets"]["demo"]["builtin"].pop("n_images")
    assert set(ds.pop("split")) == {"fractions"}
    assert ds.pop("gan") == {"pixel_noise": "fitted"}  # its dim stain's grain (README, The GAN)
    assert ds == demo["datasets"]["demo"]
    assert {k: v for k, v in hard.items() if k != "datasets"} == {k: v for k, v in demo.items() if k != "datasets"}


def test_config_yaml_writes_exactly_the_schema_defaults():
    """config.yaml documents the defaults: every value it gives is the schema's default, so a
    key left out of a user's config behaves as config.yaml says."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    expected = defaults()
    for section in STAGE_SECTIONS:
        for key, value in config.get(section, {}).items():
            assert value == expected[section][key], (
                f"{section}.{key}: config.yaml {value!r}, schema {expected[section][key]!r}"
            )


def test_only_datasets_is_a_complete_config():
    config = validate_config(copy.deepcopy(MINIMAL))
    assert {s: config[s] for s in STAGE_SECTIONS} == defaults()
    assert config["datasets"]["d"]["on_bad_input"] == "error"
    assert config["gan"]["lr_d"] == 0.0004 and config["gan"]["mode_seeking_weight"] == 1.0


def test_every_schema_key_has_a_default():
    for section in STAGE_SECTIONS:
        props = schema()["$defs"][section]["properties"]
        assert [k for k, v in props.items() if "default" not in v] == [], section


def test_dataset_overrides_stay_sparse():
    """Defaults fill the global sections only: an override changes just the keys it gives."""
    config = copy.deepcopy(MINIMAL)
    config["tiles"] = {"size": 64, "percentiles": [2, 98]}
    config["gan"] = {"g_channels": [64, 32, 16, 8]}
    config["datasets"]["d"]["tiles"] = {"size": 16}
    config["datasets"]["d"]["gan"] = {"g_channels": [16, 8], "d_channels": [8, 16]}
    validate_config(config)
    assert config["datasets"]["d"]["tiles"] == {"size": 16}
    tiles = dataset_section(config, "d", "tiles")
    assert tiles["size"] == 16 and tiles["percentiles"] == [2, 98] and tiles["shard_size"] is None
    assert tiles["shard_megapixels"] == 256


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["gan"].update(stepz=10), "stepz"),  # unknown key
        (lambda c: c["gan"].update(steps="many"), "gan.steps"),  # wrong type
        (lambda c: c["gan"].update(steps=0), "gan.steps"),  # out of range
        (lambda c: c["gan"].update(lr_d=0), "gan.lr_d"),
        (lambda c: c["gan"].update(lr_g=-1e-4), "gan.lr_g"),
        (lambda c: c["gan"].update(betas=[0.5, 1.0]), "gan.betas"),
        (lambda c: c["gan"].update(betas=[0.5]), "gan.betas"),
        (lambda c: c["gan"].update(loss="wasserstein"), "gan.loss"),
        (lambda c: c["gan"].update(diffaugment=["zoom"]), "gan.diffaugment"),
        (lambda c: c["gan"].update(diffaugment=["color", "color"]), "gan.diffaugment"),
        (lambda c: c["gan"].update(g_channels=[]), "gan.g_channels"),
        (lambda c: c["gan"].update(d_channels=[16, 0]), "gan.d_channels"),
        (lambda c: c["gan"].update(ada="yes"), "gan.ada"),
        (lambda c: c["gan"].update(augment_p=1.5), "gan.augment_p"),
        (lambda c: c["gan"].update(ada_kimg=0), "gan.ada_kimg"),
        (lambda c: c["gan"].update(r1_gamma=-1), "gan.r1_gamma"),
        (lambda c: c["gan"].update(compute_dtype="float16"), "gan.compute_dtype"),
        (lambda c: c["classifier"].update(compute_dtype="float16"), "classifier.compute_dtype"),
        (lambda c: c["feature_classifier"].update(compute_dtype="half"), "feature_classifier.compute_dtype"),
        (lambda c: c["gan"].update(ema_half_life_steps=0), "gan.ema_half_life_steps"),
        (lambda c: c["gan"].update(batch_size=1), "gan.batch_size"),
        (lambda c: c["gan"].update(batch_size=True), "gan.batch_size"),  # a boolean is no integer
        (lambda c: c["gan"].update(spectral_norm="yes"), "gan.spectral_norm"),
        (lambda c: c["gan"].update(conditional_bn="yes"), "gan.conditional_bn"),
        (lambda c: c["gan"].update(ada_target=-0.1), "gan.ada_target"),
        (lambda c: c["gan"].update(ada_interval=0), "gan.ada_interval"),
        (lambda c: c["gan"].update(r1_interval=0), "gan.r1_interval"),
        (lambda c: c["gan"].update(lecam_weight=-0.5), "gan.lecam_weight"),
        (lambda c: c["gan"].update(mode_seeking_weight=-1), "gan.mode_seeking_weight"),
        (lambda c: c["gan"].update(conditional_transition=[5]), "gan.conditional_transition"),
        (lambda c: c["gan"].update(tanh_scale=0.9), "gan.tanh_scale"),  # would never reach the data's range
        (lambda c: c["gan"].update(tanh_scale=None), "gan.tanh_scale"),
        (lambda c: c["gan"].update(g_padding="reflect"), "gan.g_padding"),
        (lambda c: c["gan"].update(g_padding=None), "gan.g_padding"),
        (lambda c: c["gan"].update(pixel_noise=True), "gan.pixel_noise"),  # YAML's yes: not a mode
        (lambda c: c["gan"].update(pixel_noise="poisson"), "gan.pixel_noise"),
        (lambda c: c["gan"].update(noise_variance=[[0.1], [0.1]]), "noise_variance"),  # fitted, not set
        (lambda c: c["gan"].update(feature_dim=128), "feature_dim"),  # the feature classifier's, not set
        (lambda c: c["gan"].update(feature_discriminator="yes"), "gan.feature_discriminator"),
        (lambda c: c["gan"].update(feature_discriminator=1), "gan.feature_discriminator"),
        (lambda c: c["gan"].update(conditional_transition=[-5, 10]), "gan.conditional_transition"),
        (lambda c: c["gan"].update(conditional_transition=[5.5, 10]), "gan.conditional_transition"),
        (lambda c: c["gan"].update(conditional_transition="500-1500"), "gan.conditional_transition"),
        (lambda c: c["gan"].update(learning_rate=1e-3), "learning_rate"),  # unknown key
        (lambda c: c["classifier"].update(arms=["real", "magic"]), "classifier.arms"),
        (lambda c: c["classifier"].update(seeds=[]), "classifier.seeds"),
        (lambda c: c["feature_classifier"].update(lr=0), "feature_classifier.lr"),
        (lambda c: c["gan_quality"].update(max_per_class=5), "gan_quality.max_per_class"),
        (lambda c: c["report"].update(bootstrap=10), "report.bootstrap"),
        (lambda c: c["split"].update(folds=0), "split.folds"),
        (lambda c: c["split"].update(folds=2.5), "split.folds"),
        (lambda c: c["split"].update(folds=50), "split.folds"),
        (lambda c: c["report"].update(min_support=0), "report.min_support"),
        (lambda c: c["balance"].update(format="jpeg"), "balance.format"),
        (lambda c: c["balance"].update(format="TIFF"), "balance.format"),
        (lambda c: c["balance"].update(channel_names=[]), "balance.channel_names"),
        (lambda c: c["balance"].update(channel_names="dapi"), "balance.channel_names"),
        (lambda c: c["balance"].update(channel_names=["dapi", ""]), "balance.channel_names"),
        (lambda c: c["balance"].update(channel_names=["dapi", "   "]), "balance.channel_names"),
        (lambda c: c["balance"].update(channel_names=["dapi|gfp"]), "balance.channel_names"),
        (lambda c: c["balance"].update(channel_names=["dapi", 3]), "balance.channel_names"),
        (lambda c: c["tiles"].update(size=4), "tiles.size"),
        (lambda c: c["split"]["fractions"].pop("test"), "split.fractions"),
        (lambda c: c["datasets"]["tiny"].pop("format"), "datasets.tiny"),  # missing required key
        (lambda c: c["datasets"]["tiny"].update(tiles={"sizee": 8}), "sizee"),  # unknown key in an override
        (lambda c: c["datasets"]["tiny"].update(gan={"lr_d": "fast"}), "datasets.tiny.gan.lr_d"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(separation=0), "datasets.tiny.builtin.separation"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(separation=1.2), "datasets.tiny.builtin.separation"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(separation="low"), "datasets.tiny.builtin.separation"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(signal=0), "datasets.tiny.builtin.signal"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(signal=-0.5), "datasets.tiny.builtin.signal"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(blur=[1.0]), "datasets.tiny.builtin.blur"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(blur=[0, 1.0]), "datasets.tiny.builtin.blur"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(blur=[1.0, 50]), "datasets.tiny.builtin.blur"),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(blurr=[1, 2]), "blurr"),  # unknown key
        (lambda c: c["generate"].update(match_histograms="yes"), "generate.match_histograms"),
        (lambda c: c["generate"].update(match_histograms=1), "generate.match_histograms"),  # not a bool
        (lambda c: c["datasets"]["tiny"].update(generate={"match_histograms": None}), "datasets.tiny.generate"),
    ],
)
def test_schema_errors_name_the_key(mutate, key):
    config = load_tiny_config()
    mutate(config)
    with pytest.raises(BioaugError, match="invalid config") as err:
        validate_config(config)
    assert key in str(err.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["gan"].update(stepz=10), "stepz"),
        (lambda c: c["classifier"].update(arms=["real", "magic"]), "magic"),
        (lambda c: c["datasets"]["tiny"].pop("format"), "format"),
    ],
)
def test_schema_errors_stop_snakemake_before_any_job(tmp_path, mutate, expected):
    config = load_tiny_config()
    mutate(config)
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "invalid config" in out and expected in out
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["gan"].update(g_channels=[32, 16, 8]), "gan.g_channels"),
        (lambda c: c["gan"].update(d_channels=[8, 8, 8, 8, 8]), "gan.d_channels"),
        (lambda c: c["gan"].update(batch_size=15), "gan.batch_size"),  # odd, with mode seeking on
        (lambda c: c["split"]["fractions"].update(train=0.7), "split.fractions"),
        (lambda c: c["tiles"].update(percentiles=[99, 1]), "tiles.percentiles"),
        (lambda c: c["balance"].update(target="fixed", count=None), "balance.count"),
        (lambda c: c["balance"].update(channel_names=["dapi", "dapi"]), "balance.channel_names"),
        (lambda c: c["split"].update(folds=5, use_source_split=True), "split.folds"),
        (
            lambda c: (c["tiles"].update(channels=[0, 1]), c["balance"].update(channel_names=["dapi"])),
            "balance.channel_names",
        ),
        (
            lambda c: c["datasets"]["tiny"].update(tiles={"channels": [0]}, balance={"channel_names": ["a", "b"]}),
            "datasets.tiny.balance.channel_names",
        ),
        (lambda c: c["gan"].update(conditional_transition=[30, 10]), "gan.conditional_transition"),  # end < start
        (lambda c: c["gan"].update(conditional_transition=[10, 41]), "gan.conditional_transition"),  # past steps
        (
            lambda c: c["datasets"]["tiny"].update(gan={"steps": 20, "conditional_transition": [0, 30]}),
            "datasets.tiny.gan.conditional_transition",
        ),
        (lambda c: c["classifier"].update(channels=[8] * 5), "classifier.channels"),
        (lambda c: c["feature_classifier"].update(channels=[8] * 5), "feature_classifier.channels"),
        (lambda c: c["datasets"]["tiny"].update(source="https://example.org/x.zip"), "datasets.tiny.sha256"),
        (lambda c: c["datasets"]["tiny"].pop("builtin"), "datasets.tiny.builtin"),
        (
            lambda c: c["datasets"]["tiny"]["builtin"].update(cells_per_image=[9, 2]),
            "datasets.tiny.builtin.cells_per_image",
        ),
        (lambda c: c["datasets"]["tiny"]["builtin"].update(blur=[2.0, 1.0]), "datasets.tiny.builtin.blur"),
        (lambda c: c["datasets"]["tiny"].update(gan={"g_channels": [8]}), "datasets.tiny.gan.g_channels"),
        (
            lambda c: c["datasets"]["tiny"].update(tiles={"size": 32}),
            "gan.g_channels",
        ),  # override makes the global G wrong
    ],
)
def test_cross_key_rules(mutate, key):
    config = load_tiny_config()
    mutate(config)
    with pytest.raises(BioaugError, match=key.replace(".", r"\.")):
        validate_config(config)


def test_generator_depth_message_says_what_to_use():
    config = load_tiny_config()
    config["tiles"]["size"] = 64
    config["gan"]["g_channels"] = [64, 32, 16]
    with pytest.raises(
        BioaugError,
        match=r"gan\.g_channels: 3 upsampling block\(s\) make 32 px tiles, but "
        r"tiles\.size is 64 \(use 4 entries\)",
    ):
        validate_config(config)


def test_odd_gan_batch_is_fine_without_mode_seeking():
    config = load_tiny_config()
    config["gan"].update(batch_size=15, mode_seeking_weight=0.0)
    validate_config(config)


def test_cross_key_error_stops_snakemake(tmp_path):
    config = load_tiny_config()
    config["gan"]["g_channels"] = [32, 16, 8]
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0 and "gan.g_channels" in proc.stdout + proc.stderr


def test_dataset_section_overrides_global_values():
    config = validate_config(load_tiny_config())
    config["datasets"]["tiny"]["classifier"] = {"epochs": 9}
    merged = dataset_section(config, "tiny", "classifier")
    assert merged["epochs"] == 9 and merged["lr"] == config["classifier"]["lr"]
    assert config["classifier"]["epochs"] == 2  # the global section is not modified
    with pytest.raises(BioaugError, match="datasets.nope"):
        dataset_section(copy.deepcopy(config), "nope", "gan")


def test_safe_name():
    assert safe_name("Platelets") == "Platelets"
    assert safe_name("T cell / CD4+") == "T_cell_CD4"
    assert safe_name("..") == "class"


def test_schema_lists_exactly_the_gan_keys():
    """Every key GanConfig reads is in the schema (documented, type-checked, defaulted) and no more."""
    from bioaug.gan import GanConfig

    assert set(schema()["$defs"]["gan"]["properties"]) == set(GanConfig.config_keys())


def test_gan_config_takes_the_validated_section():
    from bioaug.gan import GanConfig

    gan = validate_config(copy.deepcopy(MINIMAL))["gan"]
    cfg = GanConfig.from_section(gan, tile_size=32, channels=2, n_classes=2)
    assert cfg.lr_d == gan["lr_d"] and cfg.g_channels == tuple(gan["g_channels"]) and cfg.conditional_bn


def test_a_users_configfile_replaces_the_default(tmp_path):
    """--configfile runs exactly the user's datasets (config.yaml's demo is not merged in), and a
    config giving only `datasets:` is complete."""
    from conftest import planned_jobs

    write_config(tmp_path, load_tiny_config())  # the folder's own config.yaml: dataset "tiny"
    mine = copy.deepcopy(MINIMAL)
    mine["datasets"]["mine"] = mine["datasets"].pop("d")
    mine.update(tiles={"size": 16}, gan={"g_channels": [32, 16], "d_channels": [16, 32]})
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(mine))
    out = run_snakemake(tmp_path, "--dry-run", "--configfile", str(tmp_path / "my.yaml")).stdout
    assert "resources/datasets/mine" in out and "datasets/tiny" not in out
    assert planned_jobs(tmp_path)["download"] == 1  # without --configfile: the folder's config.yaml
    assert "datasets/tiny" in run_snakemake(tmp_path, "--dry-run").stdout
