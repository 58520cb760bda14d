"""Generate stage: the synthetic tiles of one class, as many as the balance policy asks for.

Each class gets `target` tiles (the balancing target, `bioaug.balance_policy`). The first `target - real` of them,
in seed order, balance the class (`used_for_balance`); all of them feed the `gan_only`
arm and the GAN quality metrics, which need synthetic tiles of every class, the largest
included. Each tile has its own seed (derived from generate.seed, the class and its index,
prefix-stable), so any tile can be regenerated from the generator checkpoint and its seed.

With generate.match_histograms (true; or auto where the tiles were normalised per channel),
every tile of the class goes through the class's histogram match (bioaug.histogram_match):
fitted on a reference draw with seeds of its own against the class's real train tiles, and
stored in the class's .json, so a tile is still reproducible from the checkpoint, its seed
and that map.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .. import gan, histogram_match
from ..balance_policy import class_targets
from ..formats import synthetic
from ..formats.items import class_names, label_of, read_items
from ..formats.shards import read_norm_table, select_tiles
from ..gan.input_pipeline import ShardedTiles, evenly_spaced_rows
from ..runtime import BioaugError

log = logging.getLogger("bioaug.generate")


# Synthetic tiles drawn (with their own seeds) to fit a class's histogram match, and the most
# real train tiles it reads (evenly spaced through the class; 4096 tiles of 32 px are 4 M
# values per channel, plenty for 1025 quantiles, and memory stays bounded for a large class).
REFERENCE_TILES = 512
REAL_TILES_MAX = 4096


def run(
    generator_dir,
    items_csv,
    cls: str,
    balance_cfg: dict,
    generate_cfg: dict,
    out_npy,
    filter_classifier_dir=None,
    shard_npys=None,
) -> dict:
    """The generate stage for the class whose file name is `cls` (`shard_npys`: the tile
    shards, read only for generate.match_histograms)."""
    items = read_items(items_csv)
    filter_clf = None
    if filter_classifier_dir:
        from ..classifier import load_classifier

        filter_clf = load_classifier(filter_classifier_dir)
    return generate_class(
        generator_dir,
        items,
        label_of(items, cls),
        balance_cfg,
        generate_cfg,
        out_npy,
        filter_classifier=filter_clf,
        shard_npys=shard_npys,
    )


def tile_seeds(seed: int, class_index: int, n: int, stream: int = 0) -> np.ndarray:
    """Independent 31-bit seeds (JAX keys take int32), one per tile, stable for (seed, class,
    index); stream 1 is the histogram match's reference draw (stream 0 keeps the seeds that
    tiles had before streams existed)."""
    extra = [stream] if stream else []
    return np.array(
        [np.random.SeedSequence([seed, class_index, i, *extra]).generate_state(1)[0] >> 1 for i in range(n)],
        dtype=np.int64,
    )


def class_train_tiles(shard_npys, items: pd.DataFrame, label: str, max_tiles: int) -> np.ndarray:
    """The class's real train tiles, or `max_tiles` of them evenly spaced in shard order (only
    those rows are read from the memory-mapped shards)."""
    parts, _, _ = select_tiles(shard_npys, items[items["label"] == label], splits=("train",))
    return evenly_spaced_rows(ShardedTiles(parts), max_tiles)


def histogram_match_applies(setting, shard_npys) -> bool:
    """generate.match_histograms: true / false as set; auto: true where every image of the
    shards was normalised per channel (fluorescence), false where normalisation kept the colour
    balance (joint, bit_depth: RGB, whose channels one map per channel would pull apart)."""
    if setting != "auto":
        return bool(setting)
    if not shard_npys:
        raise BioaugError("generate.match_histograms is auto but no tile shards were given")
    methods = set().union(*(set(read_norm_table(npy)["method"]) for npy in shard_npys))
    return methods == {"per_channel"}


def fit_histogram_match(gen, items: pd.DataFrame, label: str, generate_cfg: dict, shard_npys) -> np.ndarray:
    """The class's histogram match: a reference draw of REFERENCE_TILES synthetic tiles
    against the class's real train tiles (rounded to 6 decimals, as stored)."""
    if not shard_npys:
        raise BioaugError("generate.match_histograms is on but no tile shards were given")
    cls = class_names(items).index(label)
    real = class_train_tiles(shard_npys, items, label, REAL_TILES_MAX)
    reference = gan.sample_tiles(
        gen, cls, tile_seeds(generate_cfg["seed"], cls, REFERENCE_TILES, stream=1), generate_cfg["batch_size"]
    )
    return np.round(histogram_match.fit(real, reference), 6)


def generate_class(
    generator_dir: str | Path,
    items: pd.DataFrame,
    label: str,
    balance_cfg: dict,
    generate_cfg: dict,
    out_npy: str | Path,
    filter_classifier=None,
    shard_npys=None,
) -> dict:
    """Write the synthetic tiles of one class to out_npy (+ .csv with their seeds, + .json
    with the acceptance figures).

    Selective synthesis (generate.min_confidence set, and a real-trained `filter_classifier`
    given): a drawn tile is kept only if that classifier assigns it to its intended class with
    at least that confidence; drawing goes on until the target is met or
    generate.max_draws_factor x target tiles were drawn (then the class stays short, and the
    shortfall is logged and recorded).
    """
    generator_dir = Path(generator_dir)
    names = class_names(items)
    if label not in names:
        raise BioaugError(f"class {label!r} is not in items.csv (classes: {names})")
    targets = class_targets(items, balance_cfg).set_index("label")
    n = int(targets.loc[label, "target"])
    n_balance = int(targets.loc[label, "n_synthetic"])
    cls = names.index(label)
    gen = gan.load_generator(generator_dir)
    if gen.class_names != names:
        raise BioaugError(f"{generator_dir}: generator was trained on classes {gen.class_names}, items.csv has {names}")
    threshold = generate_cfg["min_confidence"]
    if threshold is not None and filter_classifier is None:
        raise BioaugError("generate.min_confidence is set but no filter classifier was given")
    max_draws = n if threshold is None else int(np.ceil(n * generate_cfg["max_draws_factor"]))
    shape = (gen.tile_size, gen.tile_size, gen.channels)
    match = None
    if histogram_match_applies(generate_cfg.get("match_histograms", False), shard_npys):
        match = fit_histogram_match(gen, items, label, generate_cfg, shard_npys)
    kept_tiles, kept_seeds, kept_conf, drawn = [], [], [], 0
    if n:
        all_seeds = tile_seeds(generate_cfg["seed"], cls, max_draws)  # prefix-stable: same first tiles
        while sum(map(len, kept_seeds)) < n and drawn < max_draws:
            want = n - sum(map(len, kept_seeds))
            batch = all_seeds[drawn : drawn + (want if threshold is None else max(want, generate_cfg["batch_size"]))]
            tiles = gan.sample_tiles(gen, cls, batch, batch_size=generate_cfg["batch_size"])
            if match is not None:  # before the filter: it judges the tiles as they are written
                tiles = histogram_match.apply(tiles, match)
            drawn += len(batch)
            if threshold is None:
                keep, conf = np.ones(len(batch), bool), np.full(len(batch), np.nan)
            else:
                conf = filter_classifier.predict_proba(tiles)[:, cls]
                keep = conf >= threshold
            kept_tiles.append(tiles[keep])
            kept_seeds.append(batch[keep])
            kept_conf.append(conf[keep])
    tiles = np.concatenate(kept_tiles)[:n] if kept_tiles else np.zeros((0, *shape), np.float32)
    seeds = np.concatenate(kept_seeds)[:n] if kept_seeds else np.zeros(0, np.int64)
    conf = np.concatenate(kept_conf)[:n] if kept_conf else np.zeros(0)
    k = len(seeds)
    meta = pd.DataFrame(
        {
            "label": label,
            "seed": seeds,
            "checkpoint": gen.meta.get("archive", str(generator_dir)),
            "step": int(gen.meta["step"]),
            "used_for_balance": np.arange(k) < n_balance,
            "filter_confidence": conf,
        }
    )
    summary = {
        "label": label,
        "n_real": int(targets.loc[label, "n_real"]),
        "target": n,
        "needed_for_balance": n_balance,
        "generated": k,
        "drawn": drawn,
        "acceptance_rate": (k / drawn) if drawn else None,
        "min_confidence": threshold,
        "short_by": max(0, n - k),
        "match_histograms": match is not None,
    }
    if match is not None:  # the map itself, so every tile stays reproducible from its seed
        summary["histogram_match"] = {
            "reference_tiles": REFERENCE_TILES,
            "reference_seed_stream": 1,
            "synthetic_quantiles": match[:, 0].tolist(),
            "real_quantiles": match[:, 1].tolist(),
        }
    if k < n:
        log.warning(
            "class %s: only %d of %d tiles passed the filter (min_confidence %s) in %d draws",
            label,
            k,
            n,
            threshold,
            drawn,
        )
    synthetic.write_class(out_npy, tiles, meta, summary)
    log.info("class %s: %s", label, summary)
    return summary
