"""Generate stage: how many synthetic tiles each class needs, and making them.

Each class gets `target` tiles (the balancing target). The first `target - real` of them,
in seed order, balance the class (`used_for_balance`); all of them feed the `gan_only`
arm and the GAN quality metrics, which need synthetic tiles of every class, the largest
included. Each tile has its own seed (derived from generate.seed, the class and its index,
prefix-stable), so any tile can be regenerated from the generator checkpoint and its seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .runtime import BioaugError, atomic_path
from .tilestore import class_names

log = logging.getLogger("bioaug.generate")


def class_targets(items: pd.DataFrame, balance_cfg: dict) -> pd.DataFrame:
    """Per class: real train tiles, the target count and the synthetic tiles needed.

    `max_class` brings every class up to the largest; `fixed` up to `count`. Real tiles are
    never dropped, so a class already above a fixed count keeps them all (target = real).
    """
    train = items[items["split"] == "train"]
    n_real = train["label"].value_counts().reindex(class_names(items), fill_value=0)
    if (n_real == 0).any():
        raise BioaugError(f"class {n_real[n_real == 0].index[0]!r} has no items in the train split")
    goal = int(n_real.max()) if balance_cfg["target"] == "max_class" else int(balance_cfg["count"])
    table = pd.DataFrame({"label": n_real.index, "n_real": n_real.to_numpy()})
    table["target"] = np.maximum(table["n_real"], goal)
    table["n_synthetic"] = table["target"] - table["n_real"]
    return table


def tile_seeds(seed: int, class_index: int, n: int) -> np.ndarray:
    """Independent 31-bit seeds (JAX keys take int32), one per tile, stable for (seed, class, index)."""
    return np.array(
        [np.random.SeedSequence([seed, class_index, i]).generate_state(1)[0] >> 1 for i in range(n)], dtype=np.int64
    )


def generate_class(generator_dir: str | Path, items: pd.DataFrame, label: str, balance_cfg: dict,
                   generate_cfg: dict, out_npy: str | Path) -> int:
    """Write the synthetic tiles one class needs to out_npy (+ a .csv with their seeds)."""
    generator_dir = Path(generator_dir)
    names = class_names(items)
    if label not in names:
        raise BioaugError(f"class {label!r} is not in items.csv (classes: {names})")
    targets = class_targets(items, balance_cfg).set_index("label")
    n = int(targets.loc[label, "target"])
    n_balance = int(targets.loc[label, "n_synthetic"])
    cls = names.index(label)
    info = json.loads((generator_dir / "generator.json").read_text())
    if info["class_names"] != names:
        raise BioaugError(f"{generator_dir}: generator was trained on classes {info['class_names']}, items.csv has {names}")
    seeds = tile_seeds(generate_cfg["seed"], cls, n)
    if n:
        from .gan import load_generator, sample_tiles

        gen = load_generator(generator_dir)
        tiles = sample_tiles(gen, cls, seeds, batch_size=generate_cfg["batch_size"])
    else:
        tiles = np.zeros((0, info["tile_size"], info["tile_size"], info["out_channels"]), np.float32)
    meta = pd.DataFrame({"label": label, "seed": seeds, "checkpoint": str(generator_dir), "step": info["step"],
                         "used_for_balance": np.arange(n) < n_balance})
    out_npy = Path(out_npy)
    with atomic_path(out_npy.with_suffix(".csv")) as tmp:
        meta.to_csv(tmp, index=False)
    with atomic_path(out_npy) as tmp:
        np.save(tmp, tiles.astype(np.float32))
    log.info("class %s: %d real train tiles, target %d: generated %d, %d of them balance the class", label,
             targets.loc[label, "n_real"], targets.loc[label, "target"], n, n_balance)
    return n
