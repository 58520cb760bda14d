"""The item table (index.csv, items.csv) and the inputs that were not used (rejected.csv).

index.csv (index stage): one row per item — an annotated object (point, box) or a tile
source (an image with an image-level label, an NPZ array image) — with the columns
ITEM_COLUMNS (and `source_split` for NPZ data). items.csv (split stage) adds `split`.
rejected.csv: `input, reason` for every input that is not an item.

The class order used everywhere is the sorted labels (`class_names`); a label becomes a
folder or file name through `safe_name`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..runtime import BioaugError, atomic_path

# image_pixels: height x width x channels of the item's source image (how shards are sized)
ITEM_COLUMNS = ["item_id", "image", "group", "label", "kind", "x", "y", "xmin", "ymin", "xmax", "ymax", "image_pixels"]
REJECTED_COLUMNS = ["input", "reason"]
# Read as text whatever they look like, so a label "0" or an image "001" survives the round trip.
TEXT_COLUMNS = ("item_id", "image", "group", "label", "kind", "split", "source_split")
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def read_table(path: str | Path, text_columns) -> pd.DataFrame:
    """A CSV that bioaug wrote: `text_columns` exactly as written (a label "NA", "None" or "0"
    stays that string), the others numbers (an empty cell is NaN)."""
    header = pd.read_csv(path, nrows=0).columns
    text = [c for c in header if c in text_columns]
    return pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False,
                       na_values={c: [""] for c in header if c not in text})  # fmt: skip


def read_items(path: str | Path) -> pd.DataFrame:
    """index.csv or items.csv as written by `write_items`."""
    return read_table(path, TEXT_COLUMNS)


def write_items(items: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        items.to_csv(tmp, index=False)


def write_rejected(rejected: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        rejected[REJECTED_COLUMNS].to_csv(tmp, index=False)


def class_names(items: pd.DataFrame) -> list[str]:
    """The class order used everywhere: sorted labels."""
    return sorted(items["label"].astype(str).unique())


def safe_name(label: str) -> str:
    """A class label as a file-system-safe name (used for folders and wildcards)."""
    name = SAFE_NAME.sub("_", str(label)).strip("._")
    return name or "class"


def label_of(items: pd.DataFrame, slug: str) -> str:
    """The class label whose `safe_name` is `slug` (the `{cls}` wildcard of generate)."""
    for label in class_names(items):
        if safe_name(label) == slug:
            return label
    raise BioaugError(f"no class of items.csv is named {slug!r} (classes: {class_names(items)})")
