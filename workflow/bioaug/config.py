"""Configuration helpers: per-dataset sections and the checks JSON schema cannot express.

The schema (workflow/schemas/config.schema.yaml) checks keys and types. `check_config`
adds cross-key rules, each failing with a BioaugError that names the offending key.
"""

from __future__ import annotations

import copy
import math
import re

from .runtime import BioaugError

STAGE_SECTIONS = ("split", "tiles", "gan", "generate", "balance", "classifier")
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def dataset_section(config: dict, dataset: str, section: str) -> dict:
    """The config `section` for `dataset`: global values overridden by the dataset's own."""
    if dataset not in config["datasets"]:
        raise BioaugError(f"datasets.{dataset}: no such dataset in the config")
    merged = copy.deepcopy(config[section])
    merged.update(copy.deepcopy(config["datasets"][dataset].get(section, {})))
    return merged


def safe_name(label: str) -> str:
    """A class label as a file-system-safe name (used for folders and wildcards)."""
    name = SAFE_NAME.sub("_", str(label)).strip("._")
    return name or "class"


def check_config(config: dict) -> None:
    """Cross-key checks; raises BioaugError naming the key."""
    for ds, dcfg in config["datasets"].items():
        where = f"datasets.{ds}"
        if dcfg["source"] == "builtin" and "builtin" not in dcfg:
            raise BioaugError(f"{where}.builtin: required when source is 'builtin'")
        if dcfg["source"].startswith(("http://", "https://")) and "sha256" not in dcfg:
            raise BioaugError(f"{where}.sha256: required for a URL source, so the download can be verified")
        if "builtin" in dcfg:
            lo, hi = dcfg["builtin"]["cells_per_image"]
            if lo > hi:
                raise BioaugError(f"{where}.builtin.cells_per_image: minimum {lo} is above maximum {hi}")

        split = dataset_section(config, ds, "split")
        total = sum(split["fractions"].values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise BioaugError(f"{_key(config, ds, 'split')}.fractions: must sum to 1, got {total:g}")

        tiles = dataset_section(config, ds, "tiles")
        lo, hi = tiles["percentiles"]
        if not lo < hi:
            raise BioaugError(f"{_key(config, ds, 'tiles')}.percentiles: low {lo} must be below high {hi}")

        gan = dataset_section(config, ds, "gan")
        expected = 4 * 2 ** len(gan["g_channels"])
        if expected != tiles["size"]:
            raise BioaugError(
                f"{_key(config, ds, 'gan')}.g_channels: {len(gan['g_channels'])} upsampling blocks make "
                f"{expected} px tiles, but tiles.size is {tiles['size']} (need log2(size/4) entries)"
            )
        if tiles["size"] < 2 ** len(gan["d_channels"]):
            raise BioaugError(f"{_key(config, ds, 'gan')}.d_channels: too many downsampling blocks for {tiles['size']} px tiles")

        balance = dataset_section(config, ds, "balance")
        if balance["target"] == "fixed" and not balance.get("count"):
            raise BioaugError(f"{_key(config, ds, 'balance')}.count: required when balance.target is 'fixed'")

        clf = dataset_section(config, ds, "classifier")
        if tiles["size"] < 2 ** len(clf["channels"]):
            raise BioaugError(f"{_key(config, ds, 'classifier')}.channels: too many pooling blocks for {tiles['size']} px tiles")


def _key(config: dict, ds: str, section: str) -> str:
    """Where a section's value came from: the dataset override or the global section."""
    return f"datasets.{ds}.{section}" if section in config["datasets"][ds] else section
