"""Synthetic tiles of one class: results/<ds>/synthetic/<class>.{npy,csv,json}.

  <class>.npy   float32 (N, H, W, C) in [0, 1]: every tile generated for the class, in seed order
  <class>.csv   one row per tile: label, seed, checkpoint, step, used_for_balance,
                filter_confidence (NaN without selective synthesis)
  <class>.json  the acceptance figures of the class (target, generated, drawn, ...) and, with
                generate.match_histograms, the class's histogram match (`histogram_match`)
The first `needed_for_balance` rows balance the class (`used_for_balance`); all of them feed
the `gan_only` arm and the GAN quality metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..runtime import BioaugError, atomic_path
from .items import read_table

META_COLUMNS = ["label", "seed", "checkpoint", "step", "used_for_balance", "filter_confidence"]


def side_files(npy_path: str | Path) -> tuple[Path, Path, Path]:
    """(.npy, .csv, .json) of one class."""
    npy = Path(npy_path)
    return npy, npy.with_suffix(".csv"), npy.with_suffix(".json")


def write_class(npy_path, tiles: np.ndarray, meta: pd.DataFrame, summary: dict) -> None:
    """Write one class's files; the .npy (the declared output) last."""
    npy, csv, js = side_files(npy_path)
    if len(tiles) != len(meta):
        raise ValueError(f"{npy}: {len(tiles)} tiles but {len(meta)} rows of metadata")
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(csv) as tmp:
        meta[META_COLUMNS].to_csv(tmp, index=False)
    with atomic_path(npy) as tmp:
        np.save(tmp, tiles.astype(np.float32))


def read_meta(npy_path) -> pd.DataFrame:
    meta = read_table(side_files(npy_path)[1], ("label", "checkpoint"))
    return meta.astype({"seed": np.int64, "step": np.int64, "used_for_balance": bool})


def read_class(npy_path, balance_only: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """(tiles, metadata rows) of one class; with `balance_only`, only the balancing tiles."""
    tiles, meta = np.load(npy_path), read_meta(npy_path)
    if balance_only:
        use = meta["used_for_balance"].to_numpy(bool)
        tiles, meta = tiles[use], meta[use].reset_index(drop=True)
    return tiles, meta


def read_synthetic(
    npy_paths, class_names: list[str], balance_only: bool = False
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Every synthetic tile (or only the balancing ones) of the given classes as (x, y, meta),
    y in `class_names` order."""
    index = {n: i for i, n in enumerate(class_names)}
    xs, metas = [], []
    for npy in npy_paths:
        tiles, meta = read_class(npy, balance_only)
        xs.append(tiles)
        metas.append(meta)
    if not xs:
        raise BioaugError("no synthetic tiles: no class was generated")
    meta = pd.concat(metas, ignore_index=True)
    unknown = sorted(set(meta["label"]) - set(index))
    if unknown:
        raise BioaugError(f"synthetic tiles of unknown class(es) {unknown} (classes: {class_names})")
    return np.concatenate(xs), meta["label"].map(index).to_numpy(np.int32), meta


def read_summary(npy_path) -> dict:
    """The .json written beside one class's tiles (acceptance figures, histogram match)."""
    return json.loads(side_files(npy_path)[2].read_text())


def read_acceptance(json_paths) -> pd.DataFrame:
    """The acceptance figures of the given classes (their .json files), one row per class."""
    return pd.DataFrame([json.loads(Path(p).read_text()) for p in json_paths])
