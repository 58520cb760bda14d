"""Balance stage: real train tiles + the synthetic tiles that balance each class, written as
a dataset any classifier or viewer can read (the layout is `bioaug.formats.balanced`).

Only the train split's real tiles go in; validation and test items stay in the tile shards,
so the user can evaluate their own classifier on real held-out data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..formats import balanced, synthetic
from ..formats.items import read_items
from ..formats.shards import load_tiles, read_norm_table
from ..runtime import BioaugError, atomic_path, progress

log = logging.getLogger("bioaug.balance")


def run(items_csv, shard_npys, synthetic_npys, out_dir, cfg: dict, tiles: dict) -> pd.DataFrame:
    """The balance stage. cfg: the balance section's format and channel_names; tiles: the tiles
    section's percentiles (the README.txt says what the normalisation did)."""
    return write_balanced(read_items(items_csv), shard_npys, synthetic_npys, out_dir, cfg, tiles["percentiles"])


def image_normalisation(shard_npys) -> dict[str, dict]:
    """Per source image: the normalisation method and the raw low/high of each channel, as the
    manifest's text ('|' between channels)."""
    out = {}
    for npy in shard_npys:
        for image, rows in read_norm_table(npy).sort_values("channel").groupby("image", sort=False):
            out[image] = {
                "normalisation": rows["method"].iloc[0],
                "low": "|".join(f"{v:.6g}" for v in rows["low"]),
                "high": "|".join(f"{v:.6g}" for v in rows["high"]),
            }
    return out


def finite_or_none(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def common(values):
    """The one value all of `values` share (NaN and empty left out), else None."""
    values = {v for v in values if isinstance(v, str) and v or isinstance(v, float) and np.isfinite(v)}
    return values.pop() if len(values) == 1 else None


def write_balanced(
    items: pd.DataFrame, shard_npys, synthetic_npys, out_dir: str | Path, cfg: dict, percentiles=(1.0, 99.8)
) -> pd.DataFrame:
    """Write the balanced dataset atomically and return its manifest.

    Real tiles carry their source image's pixel size and normalisation; synthetic tiles the
    ones all real tiles share (none where the real tiles differ)."""
    fmt = balanced.get_format(cfg["format"]).name
    x, _, real = load_tiles(shard_npys, items, splits=("train",))
    names = balanced.channel_names(cfg["channel_names"], x.shape[-1], fmt)  # before any file is written
    norms = image_normalisation(shard_npys)
    real_rows = [
        {**r, **norms.get(r["image"], {}), "pixel_size_um": r.get("pixel_size_um")} for r in real.to_dict("records")
    ]
    synthetic_px = common(r["pixel_size_um"] for r in real_rows)
    synthetic_norm = common(r.get("normalisation") for r in real_rows)
    rows, maps = [], {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for tile, r in progress(zip(x, real_rows), total=len(x), desc="real tiles"):
            rel = balanced.real_path(r["label"], r["tile_id"], fmt)
            balanced.write_tile(tmp / rel, tile, fmt, names, finite_or_none(r["pixel_size_um"]))
            keys = ("label", "item_id", "tile_id", "image", "normalisation", "low", "high", "pixel_size_um")
            rows.append({"path": rel.as_posix(), "origin": "real", "split": "train", **{k: r.get(k) for k in keys}})
        for npy in synthetic_npys:
            syn, meta = synthetic.read_class(npy, balance_only=True)
            match = synthetic.read_summary(npy).get("histogram_match")
            if match is not None and len(syn):
                maps[str(meta["label"].iloc[0])] = match
            if len(syn) and syn.shape[-1] != len(names):
                raise BioaugError(f"{npy}: tiles of {syn.shape[-1]} channels, the real tiles have {len(names)}")
            for i, (tile, m) in enumerate(zip(syn, meta.to_dict("records"))):
                rel = balanced.synthetic_path(m["label"], i, m["seed"], fmt)
                balanced.write_tile(tmp / rel, tile, fmt, names, synthetic_px)
                rows.append(
                    {
                        "path": rel.as_posix(),
                        "label": m["label"],
                        "origin": "synthetic",
                        "split": "train",
                        "checkpoint": m["checkpoint"],
                        "step": int(m["step"]),
                        "seed": int(m["seed"]),
                        "pixel_size_um": synthetic_px,
                        "normalisation": synthetic_norm,
                    }
                )
        manifest = balanced.write_manifest(rows, tmp, fmt, names)
        if maps:
            balanced.write_histogram_match(tmp, maps)
        balanced.write_readme(tmp, manifest, fmt, names, percentiles, matched=bool(maps))
    counts = manifest.groupby(["label", "origin"]).size().unstack(fill_value=0)
    log.info(
        "balanced dataset (%s, channels %s): %d tiles\n%s", fmt, "|".join(names), len(manifest), counts.to_string()
    )
    return manifest
