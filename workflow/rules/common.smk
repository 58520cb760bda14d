"""Helpers shared by every rule: resources, config sections as params, input functions."""

import re

from bioaug.arms import ARMS
from bioaug.config import dataset_section
from bioaug.formats.items import read_items, safe_name
from bioaug.formats.shards import n_shards

DATASETS = list(config["datasets"])
ARM_PATTERN = "|".join(re.escape(arm) for arm in ARMS)


wildcard_constraints:
    dataset="|".join(re.escape(ds) for ds in DATASETS),
    arm=ARM_PATTERN,
    seed=r"\d+",
    shard=r"\d+",
    fold=r"\d+",


# The fold whose GAN makes the balanced dataset and the report's GAN figures.
BALANCED_FOLD = 0


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


# ----------------------------------------------------------------------------- params
# Each rule's params name exactly the config keys its stage reads, so that Snakemake's
# params trigger reruns the stages a change touches, and only those.


def section(name, *, without=()):
    """params: the `name` section of the rule's dataset (with its overrides), less `without`."""

    def params(wildcards):
        cfg = dataset_section(config, wildcards.dataset, name)
        return {k: v for k, v in cfg.items() if k not in without}

    return params


def dataset_keys(*keys):
    """params: the given keys of the dataset's own entry (those it sets)."""

    def params(wildcards):
        dcfg = config["datasets"][wildcards.dataset]
        return {k: dcfg[k] for k in keys if k in dcfg}

    return params


def section_keys(name, *keys):
    """params: the given keys of a section of the rule's dataset."""

    def params(wildcards):
        cfg = dataset_section(config, wildcards.dataset, name)
        return {k: cfg[k] for k in keys}

    return params


def n_folds(dataset):
    return dataset_section(config, dataset, "split")["folds"]


def selective_synthesis(dataset):
    return dataset_section(config, dataset, "generate")["min_confidence"] is not None


def generate_params(wildcards):
    """The generate section; max_draws_factor only matters with selective synthesis on, and
    match_histograms is passed only unless false (a run with it off has the params of runs
    from before it existed, so those are not rerun)."""
    cfg = dataset_section(config, wildcards.dataset, "generate")
    if cfg["min_confidence"] is None:
        del cfg["max_draws_factor"]
    if cfg["match_histograms"] is False:
        del cfg["match_histograms"]
    return cfg


# ----------------------------------------------------------------------------- inputs


def index_table(dataset):
    """index.csv, once the index checkpoint has run (input functions re-evaluate then)."""
    return read_items(checkpoints.index.get(dataset=dataset).output.index)


def shard_prefixes(wildcards):
    tiles = dataset_section(config, wildcards.dataset, "tiles")
    n = n_shards(index_table(wildcards.dataset), tiles)
    return [f"results/{wildcards.dataset}/tiles/shard-{k:05d}" for k in range(n)]


def shard_npys(wildcards):
    return [f"{p}.npy" for p in shard_prefixes(wildcards)]


def shard_tables(wildcards):
    """The tile tables (.csv) beside the shards: read with them, so declared with them."""
    return [f"{p}.csv" for p in shard_prefixes(wildcards)]


def class_slugs(dataset):
    return sorted({safe_name(label) for label in index_table(dataset)["label"]})


def synthetic_files(suffix, fold=None):
    """The synthetic files of every class, of the job's fold (or of `fold`)."""

    def files(wildcards):
        f = wildcards.fold if fold is None else fold
        return [
            f"results/{wildcards.dataset}/fold-{f}/synthetic/{c}.{suffix}"
            for c in class_slugs(wildcards.dataset)
        ]

    return files


def train_gan_inputs(wildcards):
    """The train split's tiles; the feature classifier too with gan.feature_discriminator
    (its features are what D's second head judges)."""
    fold = f"results/{wildcards.dataset}/fold-{wildcards.fold}"
    inputs = {
        "items_csv": f"{fold}/items.csv",
        "shards": shard_npys(wildcards),
        "shard_tables": shard_tables(wildcards),
    }
    if dataset_section(config, wildcards.dataset, "gan")["feature_discriminator"]:
        inputs["feature_classifier"] = f"{fold}/feature_classifier"
    return inputs


def generate_inputs(wildcards):
    """The generator; the feature classifier (the filter) when selective synthesis is on; the
    tile shards unless the histogram match is off (it reads the class's real train tiles, and
    `auto` the tiles' normalisation)."""
    fold = f"results/{wildcards.dataset}/fold-{wildcards.fold}"
    inputs = {"generator": f"{fold}/gan/generator", "items_csv": f"{fold}/items.csv"}
    if selective_synthesis(wildcards.dataset):
        inputs["filter_classifier"] = f"{fold}/feature_classifier"
    match = dataset_section(config, wildcards.dataset, "generate")["match_histograms"]
    if match is not False:
        inputs["shards"] = shard_npys(wildcards)
        inputs["shard_tables"] = shard_tables(wildcards)
    return inputs


def classify_inputs(wildcards):
    """Each arm reads only what it trains on, so a GAN change never reruns the real arms."""
    inputs = {
        "items_csv": f"results/{wildcards.dataset}/fold-{wildcards.fold}/items.csv",
        "shards": shard_npys(wildcards),
        "shard_tables": shard_tables(wildcards),
    }
    # The GAN arms read the synthetic tiles themselves (full precision, whatever balance.format
    # the balanced dataset is written in); "balanced" arms add the real train tiles.
    if ARMS[wildcards.arm]["data"] != "real":
        inputs["synthetic"] = synthetic_files("npy")(wildcards)
        inputs["synthetic_tables"] = synthetic_files("csv")(wildcards)
    # the user's initial weights: a new file reruns the models that start from it
    init_weights = dataset_section(config, wildcards.dataset, "classifier")[
        "init_weights"
    ]
    if init_weights is not None:
        inputs["init_weights"] = init_weights
    return inputs


def classify_jsons(wildcards):
    cfg = dataset_section(config, wildcards.dataset, "classifier")
    return [
        f"results/{wildcards.dataset}/fold-{fold}/classify/{arm}/seed-{seed}.json"
        for fold in range(n_folds(wildcards.dataset))
        for arm in cfg["arms"]
        for seed in cfg["seeds"]
    ]


def fold_files(name):
    """`name` (under results/<ds>/fold-<f>/) of every fold: what the report pools."""

    def files(wildcards):
        return [
            f"results/{wildcards.dataset}/fold-{fold}/{name}"
            for fold in range(n_folds(wildcards.dataset))
        ]

    return files


def upstream_benchmarks(wildcards):
    """The benchmark file of every job the report waits for, keyed bench_<name of the
    rule>; the report's "where the time went" table. balance and report are not upstream.
    """
    ds = wildcards.dataset
    cfg = dataset_section(config, ds, "classifier")
    folds = range(n_folds(ds))
    bench = f"benchmarks/{ds}"
    per_fold = ("split", "train_gan", "feature_classifier", "gan_quality")
    return {
        "bench_download": [f"{bench}/download.tsv"],
        "bench_index": [f"{bench}/index.tsv"],
        "bench_tile": [
            f"{bench}/tile-{k:05d}.tsv" for k in range(len(shard_prefixes(wildcards)))
        ],
        **{
            f"bench_{r}": [f"{bench}/fold-{f}/{r}.tsv" for f in folds] for r in per_fold
        },
        "bench_generate": [
            f"{bench}/fold-{f}/generate-{c}.tsv" for f in folds for c in class_slugs(ds)
        ],
        "bench_classify": [
            f"{bench}/fold-{f}/classify-{arm}-{seed}.tsv"
            for f in folds
            for arm in cfg["arms"]
            for seed in cfg["seeds"]
        ],
    }


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
