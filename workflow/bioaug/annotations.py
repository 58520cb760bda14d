"""Index stage: read a dataset's annotations into one table of items.

An item is one annotated object (a point here); `items` has columns
item_id, image, group, label, x, y. Inputs that cannot be used go to `rejected` with a reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .config import safe_name
from .images import RASTER_SUFFIXES, TIFF_SUFFIXES, image_shape
from .runtime import BioaugError

log = logging.getLogger("bioaug.index")
REJECTED_COLUMNS = ["input", "reason"]
POINT_COLUMNS = ["image", "label", "x", "y"]


def index_points(root: str | Path, annotations: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items from a points CSV (`image, label, x, y`, optional `group`) under `root`."""
    root = Path(root)
    ann_path = root / annotations
    if not ann_path.is_file():
        raise BioaugError(f"{ann_path}: annotation file not found")
    try:
        table = pd.read_csv(ann_path)
    except Exception as err:
        raise BioaugError(f"{ann_path}: not a readable CSV ({err})") from err
    missing = [c for c in POINT_COLUMNS if c not in table.columns]
    if missing:
        raise BioaugError(f"{ann_path}: missing column(s) {missing}; a points CSV needs {POINT_COLUMNS}")
    if table.empty:
        raise BioaugError(f"{ann_path}: no annotations")
    table["label"] = table["label"].astype(str)
    if "group" not in table.columns:
        table["group"] = table["image"]

    rejected = []
    for image, rows in table.groupby("image", sort=True):
        h, w, _ = image_shape(root / image)  # raises, naming the file, if missing or unreadable
        outside = (rows["x"] < 0) | (rows["x"] >= w) | (rows["y"] < 0) | (rows["y"] >= h) | rows[["x", "y"]].isna().any(axis=1)
        if outside.any():
            bad = rows[outside].iloc[0]
            raise BioaugError(f"{ann_path}: point ({bad['x']}, {bad['y']}) of {image} lies outside the {w}x{h} image")

    # Image files that no annotation mentions are listed, so every input is accounted for.
    mentioned = {str(Path(p)) for p in table["image"].unique()}
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() in TIFF_SUFFIXES + RASTER_SUFFIXES and str(f.relative_to(root)) not in mentioned:
            rejected.append({"input": str(f.relative_to(root)), "reason": "image has no annotations"})

    _check_class_names(table["label"])
    items = table.sort_values(["image"], kind="stable").reset_index(drop=True)
    items.insert(0, "item_id", [f"it{i:06d}" for i in range(len(items))])
    items = items[["item_id", "image", "group", "label", "x", "y"]]
    log.info("%d items in %d images; %d inputs rejected", len(items), items["image"].nunique(), len(rejected))
    return items, pd.DataFrame(rejected, columns=REJECTED_COLUMNS)


def _check_class_names(labels: pd.Series) -> None:
    """Class names become folder names; two labels must not collapse into one folder."""
    seen: dict[str, str] = {}
    for label in sorted(labels.unique()):
        name = safe_name(label)
        if name in seen:
            raise BioaugError(f"class labels {seen[name]!r} and {label!r} map to the same folder name {name!r}")
        seen[name] = label


INDEXERS = {"points": index_points}


def index_dataset(root: str | Path, dataset_cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    fmt = dataset_cfg["format"]
    if fmt not in INDEXERS:
        raise BioaugError(f"format {fmt!r}: not supported (known: {sorted(INDEXERS)})")
    return INDEXERS[fmt](root, dataset_cfg["annotations"])
