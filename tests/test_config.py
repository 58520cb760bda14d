"""Configuration: schema validation at start-up and the cross-key checks, each naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from bioaug.config import check_config, dataset_section, safe_name
from bioaug.runtime import BioaugError
from conftest import REPO, load_tiny_config, run_snakemake, write_config


def test_default_config_passes_checks():
    check_config(yaml.safe_load((REPO / "config.yaml").read_text()))


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["gan"].update(stepz=10), "stepz"),  # unknown key
        (lambda c: c["gan"].update(steps="many"), "steps"),  # wrong type
        (lambda c: c["classifier"].update(arms=["real", "magic"]), "magic"),  # unknown enum value
        (lambda c: c["datasets"]["tiny"].pop("format"), "format"),  # missing required key
    ],
)
def test_schema_errors_name_the_key_before_any_job(tmp_path, mutate, expected):
    config = load_tiny_config()
    mutate(config)
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Error validating config file" in out and expected in out
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["gan"].update(g_channels=[32, 16, 8]), "gan.g_channels"),
        (lambda c: c["split"]["fractions"].update(train=0.7), "split.fractions"),
        (lambda c: c["tiles"].update(percentiles=[99, 1]), "tiles.percentiles"),
        (lambda c: c["balance"].update(target="fixed", count=None), "balance.count"),
        (lambda c: c["datasets"]["tiny"].update(source="https://example.org/x.zip"), "datasets.tiny.sha256"),
        (lambda c: c["datasets"]["tiny"].update(gan={"g_channels": [8]}), "datasets.tiny.gan.g_channels"),
    ],
)
def test_cross_key_checks(mutate, key):
    config = load_tiny_config()
    mutate(config)
    with pytest.raises(BioaugError, match=key.replace(".", r"\.")):
        check_config(config)


def test_cross_key_error_stops_snakemake(tmp_path):
    config = load_tiny_config()
    config["gan"]["g_channels"] = [32, 16, 8]
    write_config(tmp_path, config)
    proc = run_snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0 and "gan.g_channels" in proc.stdout + proc.stderr


def test_dataset_section_overrides_global_values():
    config = load_tiny_config()
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
    """Every key GanConfig reads is in the schema (documented, type-checked) and no more."""
    from bioaug.gan import GanConfig

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["$defs"]["gan"]["properties"]) == set(GanConfig.config_keys())
