"""The configuration, validated once: the schema, then the rules between keys.

`validate_config` checks the config against workflow/schemas/config.schema.yaml (types,
ranges), fills the schema's defaults into the global sections (so a config that gives only
`datasets:` runs), then applies the cross-key rules below, one formula each. Every error is a
BioaugError naming the key. Code below this layer receives validated sections
(`dataset_section`) and neither re-checks nor re-defaults them.

Defaults are filled into the global sections only: a section inside a dataset overrides just
the keys it gives. (Snakemake's `validate(..., set_default=True)` fills defaults wherever a
schema with `properties` applies, per-dataset sections included, which would turn every
override into a full copy of the defaults; hence this function.)
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import jsonschema
import yaml

from .runtime import BioaugError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
# Sections a dataset can override (everything a stage reads apart from the dataset's own keys).
STAGE_SECTIONS = (
    "split",
    "tiles",
    "gan",
    "generate",
    "balance",
    "classifier",
    "feature_classifier",
    "gan_quality",
    "report",
    "limits",
)


@functools.cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _section_defaults(name: str) -> dict:
    return {k: copy.deepcopy(v["default"]) for k, v in schema()["$defs"][name]["properties"].items() if "default" in v}


def defaults() -> dict:
    """Every stage section as the schema's defaults give it (what a config with only
    `datasets:` runs with)."""
    return {name: _section_defaults(name) for name in STAGE_SECTIONS}


def check_yaml(path: str | Path) -> None:
    """A YAML syntax error as one line naming the file, line and column (Snakemake's own
    message names neither); a missing file is left to Snakemake."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BioaugError(f"{path}: not valid YAML at {where}: {problem}") from None


def validate_config(config: dict) -> dict:
    """Validate `config` in place (schema, defaults, cross-key rules) and return it."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise BioaugError("invalid config: " + "; ".join(_describe(e) for e in errors[:5]))
    for name in STAGE_SECTIONS:
        section = config.setdefault(name, {})
        for key, value in _section_defaults(name).items():
            section.setdefault(key, value)
    dataset_defaults = {
        k: v["default"] for k, v in schema()["$defs"]["dataset"]["properties"].items() if "default" in v
    }
    for dcfg in config["datasets"].values():
        for key, value in dataset_defaults.items():
            dcfg.setdefault(key, copy.deepcopy(value))
    check_config(config)
    return config


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(map(str, error.absolute_path)) or "(top level)"
    return f"{where}: {error.message}"


def dataset_section(config: dict, dataset: str, section: str) -> dict:
    """The config `section` for `dataset`: global values overridden by the dataset's own."""
    if dataset not in config["datasets"]:
        raise BioaugError(f"datasets.{dataset}: no such dataset in the config")
    merged = copy.deepcopy(config[section])
    merged.update(copy.deepcopy(config["datasets"][dataset].get(section, {})))
    return merged


def check_config(config: dict) -> None:
    """The rules between keys, on a schema-valid config with defaults; raises BioaugError
    naming the key."""
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
            blur = dcfg["builtin"].get("blur")
            if blur is not None and blur[0] > blur[1]:
                raise BioaugError(f"{where}.builtin.blur: minimum {blur[0]} is above maximum {blur[1]}")

        def key(section: str, name: str, dcfg=dcfg, where=where) -> str:
            """Where a value came from: the dataset's override or the global section."""
            own = name in dcfg.get(section, {})
            return f"{where}.{section}.{name}" if own else f"{section}.{name}"

        split = dataset_section(config, ds, "split")
        if split["folds"] > 1 and split["use_source_split"]:
            raise BioaugError(
                f"{key('split', 'folds')}: {split['folds']} folds cannot keep the data's own split "
                f"(split.use_source_split); use one or the other"
            )
        total = sum(split["fractions"].values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise BioaugError(f"{key('split', 'fractions')}: must sum to 1, got {total:g}")

        tiles = dataset_section(config, ds, "tiles")
        size = tiles["size"]
        lo, hi = tiles["percentiles"]
        if not lo < hi:
            raise BioaugError(f"{key('tiles', 'percentiles')}: low {lo} must be below high {hi}")

        gan = dataset_section(config, ds, "gan")
        n_up, n_down = len(gan["g_channels"]), len(gan["d_channels"])
        if 4 * 2**n_up != size:
            need = math.log2(size / 4)
            hint = f"use {int(need)} entries" if need == int(need) and need >= 1 else "tiles.size must be 4 * 2**k"
            raise BioaugError(
                f"{key('gan', 'g_channels')}: {n_up} upsampling block(s) make {4 * 2**n_up} px tiles, "
                f"but tiles.size is {size} ({hint})"
            )
        if size % 2**n_down:
            raise BioaugError(
                f"{key('gan', 'd_channels')}: {n_down} stride-2 blocks need tiles.size divisible by "
                f"{2**n_down}, but it is {size}"
            )
        if gan["mode_seeking_weight"] > 0 and gan["batch_size"] % 2:
            raise BioaugError(
                f"{key('gan', 'batch_size')}: {gan['batch_size']} must be even with gan.mode_seeking_weight > 0 "
                f"(the term compares pairs of samples)"
            )
        transition = gan["conditional_transition"]
        if transition is not None and not transition[0] <= transition[1] <= gan["steps"]:
            raise BioaugError(
                f"{key('gan', 'conditional_transition')}: {transition} must be [start, end] steps with "
                f"start <= end <= gan.steps ({gan['steps']})"
            )

        balance = dataset_section(config, ds, "balance")
        if balance["target"] == "fixed" and not balance["count"]:
            raise BioaugError(f"{key('balance', 'count')}: required when balance.target is 'fixed'")
        names = balance["channel_names"]
        if names is not None and len(set(names)) != len(names):
            raise BioaugError(f"{key('balance', 'channel_names')}: {names} are not distinct")
        if tiles["channels"] is not None and names is not None:  # the channel count is known: check now
            n_channels = len(tiles["channels"])
            if len(names) != n_channels:
                raise BioaugError(
                    f"{key('balance', 'channel_names')}: {len(names)} names for the {n_channels} channels "
                    f"that tiles.channels keeps"
                )

        command = dataset_section(config, ds, "classifier")["command"]
        init_weights = dataset_section(config, ds, "classifier")["init_weights"]
        if init_weights is not None:
            if command is not None:
                raise BioaugError(
                    f"{key('classifier', 'init_weights')}: has no effect with {key('classifier', 'command')} "
                    "(your command trains its own network); remove one of them"
                )
            if not Path(init_weights).exists():
                raise BioaugError(f"{key('classifier', 'init_weights')}: {init_weights} does not exist")
        if command is not None:
            from .classifier.external import check_command

            try:
                check_command(command)
            except BioaugError as err:
                raise BioaugError(str(err).replace("classifier.command", key("classifier", "command"), 1)) from None

        for section in ("classifier", "feature_classifier"):
            net = dataset_section(config, ds, section)
            if net["architecture"] == "small_cnn" and size < 2 ** len(net["channels"]):
                raise BioaugError(
                    f"{key(section, 'channels')}: {len(net['channels'])} pooling blocks need tiles of at least "
                    f"{2 ** len(net['channels'])} px, but tiles.size is {size}"
                )
            if net["architecture"] == "resnet" and size < 2 ** (len(net["blocks"]) - 1):
                raise BioaugError(
                    f"{key(section, 'blocks')}: {len(net['blocks'])} stages halve the tile "
                    f"{len(net['blocks']) - 1} times, too often for tiles.size {size}"
                )
