"""Helpers shared by every rule: config sections, checkpoint-driven input functions."""

import pandas as pd

import re

from bioaug.config import check_config, dataset_section, safe_name
from bioaug.evaluate import ARMS

check_config(config)

DATASETS = list(config["datasets"])
ARM_PATTERN = "|".join(re.escape(arm) for arm in ARMS)


wildcard_constraints:
    dataset="|".join(DATASETS),
    arm=ARM_PATTERN,
    seed=r"\d+",
    shard=r"\d+",


# What each job asks a cluster scheduler for, in one place (read by the rules' threads and
# resources). Sized for the default config.yaml and datasets up to ~10k images;
# override per rule without editing this from a profile or the command line, e.g.
#   --set-resources train_gan:mem_mb=32000 train_gan:runtime=1440 generate:gpu=0
#   --set-threads train_gan=16
# Local runs: threads are capped at --cores; mem_mb, runtime and gpu only limit anything
# when given to --resources (a plain `snakemake --cores N` runs train_gan with gpu=1 fine).
# gpu is Snakemake's standard GPU resource (the SLURM plugin turns it into --gpus=N); JAX
# uses the GPU when the CUDA requirements are installed, else the CPU.
# runtime is in minutes. Small jobs (tile, generate, classify) also form groups (see
# `group:` in the rules and group-components in workflow/profiles/slurm/config.yaml).
RESOURCES = {
    "download": {"mem_mb": 2000, "runtime": 60},
    "index": {"mem_mb": 4000, "runtime": 60},
    "split": {"mem_mb": 2000, "runtime": 10},
    "tile": {"threads": 1, "mem_mb": 4000, "runtime": 15},
    "train_gan": {"threads": 8, "gpu": 1, "mem_mb": 16000, "runtime": 720},
    "generate": {"threads": 1, "gpu": 1, "mem_mb": 8000, "runtime": 20},
    "balance": {"mem_mb": 8000, "runtime": 60},
    "feature_classifier": {"threads": 1, "mem_mb": 8000, "runtime": 120},
    "gan_quality": {"threads": 1, "mem_mb": 8000, "runtime": 60},
    "classify": {"threads": 1, "mem_mb": 8000, "runtime": 60},
    "report": {"mem_mb": 4000, "runtime": 30},
}


def rule_threads(rule):
    """threads: of `rule` from RESOURCES (1 unless given); capped at --cores when running."""
    return RESOURCES[rule].get("threads", 1)


def rule_resources(rule):
    """resources: of `rule` from RESOURCES (everything but threads)."""
    return {k: v for k, v in RESOURCES[rule].items() if k != "threads"}


def section(name):
    """params: the `name` config section of the rule's dataset (with its overrides)."""
    return lambda wildcards: dataset_section(config, wildcards.dataset, name)


def source_params(wildcards):
    """What the download depends on: where the data comes from (not how it is read)."""
    dcfg = config["datasets"][wildcards.dataset]
    return {k: dcfg[k] for k in ("source", "sha256", "builtin") if k in dcfg}


READING_KEYS = ("format", "annotations", "images", "columns", "classes", "on_bad_input")


def reading_params(wildcards):
    """How the index reads the raw data: format, file names, accepted classes."""
    dcfg = config["datasets"][wildcards.dataset]
    return {k: dcfg[k] for k in READING_KEYS if k in dcfg}


def index_tile_params(wildcards):
    """The tile settings that decide at index time whether an object can be tiled."""
    tiles = dataset_section(config, wildcards.dataset, "tiles")
    return {k: tiles[k] for k in ("size", "border", "channels")}


def classifier_params(wildcards):
    """The classifier settings one (arm, seed) job depends on; the arm/seed lists are not."""
    cfg = dataset_section(config, wildcards.dataset, "classifier")
    return {k: v for k, v in cfg.items() if k not in ("arms", "seeds")}


def index_table(dataset):
    """index.csv, once the index checkpoint has run (input functions re-evaluate then)."""
    path = checkpoints.index.get(dataset=dataset).output.index
    return pd.read_csv(path)


def shard_npys(wildcards):
    from bioaug.tiling import n_shards

    size = dataset_section(config, wildcards.dataset, "tiles")["shard_size"]
    n = n_shards(index_table(wildcards.dataset), size)
    return [f"results/{wildcards.dataset}/tiles/shard-{k:05d}.npy" for k in range(n)]


def class_slugs(dataset):
    return sorted({safe_name(label) for label in index_table(dataset)["label"].astype(str)})


def synthetic_npys(wildcards):
    return [f"results/{wildcards.dataset}/synthetic/{c}.npy" for c in class_slugs(wildcards.dataset)]


def synthetic_jsons(wildcards):
    return [f"results/{wildcards.dataset}/synthetic/{c}.json" for c in class_slugs(wildcards.dataset)]


def generate_inputs(wildcards):
    """The generator; and the real-trained filter classifier when selective synthesis is on."""
    inputs = {"generator": f"results/{wildcards.dataset}/gan/generator",
              "items_csv": f"results/{wildcards.dataset}/items.csv"}
    if dataset_section(config, wildcards.dataset, "generate").get("min_confidence") is not None:
        inputs["filter_classifier"] = f"results/{wildcards.dataset}/feature_classifier"
    return inputs


def classify_inputs(wildcards):
    """Each arm reads only what it trains on, so a GAN change never reruns the real arms."""
    inputs = {"items_csv": f"results/{wildcards.dataset}/items.csv", "shards": shard_npys(wildcards)}
    data = ARMS[wildcards.arm]["data"]
    if data == "balanced":
        inputs["balanced"] = f"results/{wildcards.dataset}/balanced"
    elif data == "synthetic":
        inputs["synthetic"] = synthetic_npys(wildcards)
    return inputs


def classify_jsons(wildcards):
    cfg = dataset_section(config, wildcards.dataset, "classifier")
    return [
        f"results/{wildcards.dataset}/classify/{arm}/seed-{seed}.json"
        for arm in cfg["arms"]
        for seed in cfg["seeds"]
    ]


def all_outputs():
    return [
        out
        for ds in DATASETS
        for out in (
            f"results/{ds}/balanced",
            f"results/{ds}/summary.csv",
            f"results/{ds}/summary.md",
        )
    ]
