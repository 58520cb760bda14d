"""Index stage: read a dataset's annotations, in any supported format, into one item table.

An item is one annotated object (a point or a box) or one tile source (an image with an
image-level label, or one image of an NPZ array). `items` has the columns
item_id, image, group, label, kind, x, y, xmin, ymin, xmax, ymax (and source_split for NPZ).

Every input is accounted for: each annotation row (or labelled image) becomes an item or a
row of `rejected` with its reason; image files nobody annotated are listed in `rejected`
too. With `on_bad_input: error` (the default) the first bad input stops the run instead,
with the same message.

Formats (dataset key `format`):
  points       CSV  image, label, x, y [, group]
  boxes_csv    CSV  image, label, xmin, ymin, xmax, ymax [, group]
  voc          a folder of Pascal VOC XML files (`annotations`), images in `images`
  class_folders  root/<class>/*.tif|png|jpg, one image-level label per image (sliding windows)
  npz          MedMNIST layout: {split}_images, {split}_labels in one .npz (`annotations`)
CSV column names can be mapped with `columns: {image: filename, label: cell_type}`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from ..formats.images import IMAGE_SUFFIXES, NPZ_SEPARATOR, validate_image
from ..formats.items import ITEM_COLUMNS, REJECTED_COLUMNS, safe_name, write_items, write_rejected
from ..runtime import BioaugError, progress

log = logging.getLogger("bioaug.index")
BOX_COLUMNS = ["xmin", "ymin", "xmax", "ymax"]
NPZ_SPLITS = {"train": "train", "val": "val", "test": "test"}


def run(data_dir, reading: dict, tiles: dict, index_csv, rejected_csv) -> None:
    """The index stage: items of the dataset in `data_dir` to index.csv, the rest to rejected.csv."""
    items, rejected = index_dataset(data_dir, reading, tiles)
    write_rejected(rejected, rejected_csv)
    write_items(items, index_csv)


class BadInputs:
    """Collects rejected inputs, or raises on the first one when on_bad_input is 'error'."""

    def __init__(self, mode: str = "error"):
        if mode not in ("error", "skip"):
            raise BioaugError(f"on_bad_input: must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.rows: list[dict] = []

    def __call__(self, input_ref: str, reason: str) -> None:
        if self.mode == "error":
            raise BioaugError(
                f"{input_ref}: {reason} (set on_bad_input: skip to list such inputs in rejected.csv instead)"
            )
        self.rows.append({"input": input_ref, "reason": reason})

    def unused(self, input_ref: str, reason: str) -> None:
        """An input that is fine but not used (e.g. an image without objects): always listed."""
        self.rows.append({"input": input_ref, "reason": reason})

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=REJECTED_COLUMNS)


# ----------------------------------------------------------------------------- readers
# Each reader returns candidate rows with at least image, label, kind, source (the input
# reference used in rejections) and the geometry its kind needs.


def _read_csv(path: Path, needed: list[str], columns: dict) -> pd.DataFrame:
    if not path.is_file():
        raise BioaugError(f"{path}: annotation file not found")
    try:
        table = pd.read_csv(path)
    except Exception as err:
        raise BioaugError(f"{path}: not a readable CSV ({err})") from err
    table = table.rename(columns={v: k for k, v in (columns or {}).items()})
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise BioaugError(
            f"{path}: missing column(s) {missing}; this format needs {needed} (map names with `columns:`)"
        )
    if table.empty:
        raise BioaugError(f"{path}: no annotations")
    table["source"] = [f"{path.name}:{i + 2}" for i in range(len(table))]  # +2: header, 1-based lines
    return table


def read_points(root: Path, cfg: dict) -> pd.DataFrame:
    table = _read_csv(root / cfg["annotations"], ["image", "label", "x", "y"], cfg.get("columns"))
    table["image"] = [_rel(root, cfg, p) for p in table["image"]]
    return table.assign(kind="point")


def read_boxes_csv(root: Path, cfg: dict) -> pd.DataFrame:
    table = _read_csv(root / cfg["annotations"], ["image", "label", *BOX_COLUMNS], cfg.get("columns"))
    table["image"] = [_rel(root, cfg, p) for p in table["image"]]
    return table.assign(kind="box")


def read_voc(root: Path, cfg: dict) -> pd.DataFrame:
    ann_dir = root / cfg["annotations"]
    if not ann_dir.is_dir():
        raise BioaugError(f"{ann_dir}: VOC annotation folder not found")
    images = cfg.get("images") or str(Path(cfg["annotations"]).parent / "JPEGImages")
    rows = []
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise BioaugError(f"{ann_dir}: no .xml files")
    for xml in xml_files:
        ref = str(xml.relative_to(root))
        try:
            node = ET.parse(xml).getroot()
        except ET.ParseError as err:
            rows.append({"source": ref, "error": f"not a readable VOC XML file ({err})"})
            continue
        filename = (node.findtext("filename") or "").strip() or xml.stem + ".jpg"
        for k, obj in enumerate(node.findall("object")):
            box = obj.find("bndbox")
            row = {
                "source": f"{ref}#object{k}",
                "image": str(Path(images) / filename),
                "label": (obj.findtext("name") or "").strip(),
            }
            try:
                row.update({c: float(box.findtext(c)) for c in BOX_COLUMNS})
            except (AttributeError, TypeError, ValueError):
                row["error"] = "object has no numeric bndbox"
            rows.append(row)
    return pd.DataFrame(rows).assign(kind="box")


def read_class_folders(root: Path, cfg: dict) -> pd.DataFrame:
    base = root / cfg.get("images", ".")
    rows = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(folder.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                ref = str(f.relative_to(root))
                row = {"source": ref, "image": ref, "label": folder.name}
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    row["unused"] = f"not an image file ({f.suffix or 'no suffix'})"
                rows.append(row)
    if not rows:
        raise BioaugError(f"{base}: no class folders with files (expected <root>/<class>/*.tif|png|jpg)")
    return pd.DataFrame(rows).assign(kind="window")


def read_npz(root: Path, cfg: dict) -> pd.DataFrame:
    path = root / cfg["annotations"]
    if not path.is_file():
        raise BioaugError(f"{path}: NPZ file not found")
    try:
        arrays = np.load(path)
        names = set(arrays.files)
    except Exception as err:
        raise BioaugError(f"{path}: not a readable NPZ file ({err})") from err
    rows = []
    for split in NPZ_SPLITS:
        if f"{split}_images" not in names:
            continue
        if f"{split}_labels" not in names:
            raise BioaugError(f"{path}: has {split}_images but no {split}_labels")
        labels = np.asarray(arrays[f"{split}_labels"]).reshape(len(arrays[f"{split}_labels"]), -1)
        n_images = arrays[f"{split}_images"].shape[0]
        if labels.shape[1] != 1 or len(labels) != n_images:
            raise BioaugError(
                f"{path}: {split}_labels must hold one label per image ({n_images}), got shape {labels.shape}"
            )
        for i, lab in enumerate(labels[:, 0]):
            ref = f"{cfg['annotations']}{NPZ_SEPARATOR}{split}_images/{i}"
            rows.append({"source": ref, "image": ref, "label": str(lab), "source_split": NPZ_SPLITS[split]})
    if not rows:
        raise BioaugError(f"{path}: no arrays named train_images / val_images / test_images")
    table = pd.DataFrame(rows).assign(kind="array")
    table["group"] = table["image"]  # each array image is its own group
    return table


READERS = {
    "points": read_points,
    "boxes_csv": read_boxes_csv,
    "voc": read_voc,
    "class_folders": read_class_folders,
    "npz": read_npz,
}


def _rel(root: Path, cfg: dict, image) -> str:
    return str(Path(cfg.get("images", ".")) / str(image)) if cfg.get("images") else str(image)


# ----------------------------------------------------------------------------- checks


def _geometry_problem(row, h: int, w: int, tiles: dict) -> str | None:
    size = tiles.get("size", 0)
    if min(h, w) < size and row["kind"] in ("window", "point", "box"):
        return f"image {w}x{h} is smaller than the {size} px tile"
    if row["kind"] == "point":
        x, y = row["x"], row["y"]
        if not (np.isfinite(x) and np.isfinite(y)):
            return "point has no numeric x/y"
        if not (0 <= x < w and 0 <= y < h):
            return f"point ({x:g}, {y:g}) lies outside the {w}x{h} image"
    elif row["kind"] == "box":
        b = [row[c] for c in BOX_COLUMNS]
        if not all(np.isfinite(b)):
            return "box has no numeric coordinates"
        xmin, ymin, xmax, ymax = b
        if xmax <= xmin or ymax <= ymin:
            return f"degenerate box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}): zero or negative size"
        if xmin < 0 or ymin < 0 or xmax > w or ymax > h:
            return f"box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) extends outside the {w}x{h} image"
    if row["kind"] in ("point", "box") and tiles.get("border") == "skip":
        cx, cy = (
            (row["x"], row["y"])
            if row["kind"] == "point"
            else ((row["xmin"] + row["xmax"]) / 2, (row["ymin"] + row["ymax"]) / 2)
        )
        half = size / 2
        if cx - half < 0 or cy - half < 0 or cx + half > w or cy + half > h:
            return f"the {size} px tile around ({cx:g}, {cy:g}) crosses the image border (tiles.border: skip)"
    return None


def index_dataset(root: str | Path, dataset_cfg: dict, tiles: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Items and rejected inputs of one dataset (see the module docstring)."""
    root = Path(root)
    tiles = tiles or {}
    fmt = dataset_cfg["format"]
    if fmt not in READERS:
        raise BioaugError(f"format {fmt!r}: not supported (known: {sorted(READERS)})")
    if fmt in ("points", "boxes_csv", "voc", "npz") and not dataset_cfg.get("annotations"):
        raise BioaugError(f"annotations: required for format {fmt!r}")
    bad = BadInputs(dataset_cfg.get("on_bad_input", "error"))
    table = READERS[fmt](root, dataset_cfg)
    for col in ["error", "unused", "group", "x", "y", *BOX_COLUMNS]:
        if col not in table.columns:
            table[col] = np.nan
    table["label"] = table["label"].fillna("").astype(str).str.strip()
    classes = dataset_cfg.get("classes")

    keep = np.zeros(len(table), bool)
    image_info: dict[str, tuple | str] = {}
    for i, row in enumerate(progress(list(table.itertuples(index=False)), desc="index")):
        row = row._asdict()
        if isinstance(row["error"], str):
            bad(row["source"], row["error"])
            continue
        if isinstance(row["unused"], str):
            bad.unused(row["source"], row["unused"])
            continue
        if not row["label"]:
            bad(row["source"], "no class label")
            continue
        if classes is not None and row["label"] not in classes:
            bad(row["source"], f"unknown class {row['label']!r} (classes: {list(classes)})")
            continue
        image = row["image"]
        if image not in image_info:
            try:
                image_info[image] = validate_image(root / image, tiles.get("channels"))
            except BioaugError as err:
                image_info[image] = str(err)
        info = image_info[image]
        if isinstance(info, str):
            bad(row["source"], info if row["source"] == image else f"image {info}")
            continue
        problem = _geometry_problem(row, info[0], info[1], tiles)
        if problem:
            bad(row["source"] if row["source"] != image else image, problem)
            continue
        keep[i] = True

    # Image files no annotation mentions are listed, so every input is accounted for.
    if fmt not in ("class_folders", "npz"):
        mentioned = {str(Path(p)) for p in table["image"].dropna().unique()}
        for f in sorted(root.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and str(f.relative_to(root)) not in mentioned:
                bad.unused(str(f.relative_to(root)), "image has no annotations")

    items = table[keep].copy()
    if items.empty:
        raise BioaugError(f"{root}: no usable items ({len(bad.rows)} inputs rejected; see rejected.csv reasons)")
    items["group"] = items["group"].where(items["group"].notna(), items["image"])
    if items["kind"].isin(["box"]).any():
        box = items["kind"] == "box"
        items.loc[box, "x"] = (items.loc[box, "xmin"] + items.loc[box, "xmax"]) / 2
        items.loc[box, "y"] = (items.loc[box, "ymin"] + items.loc[box, "ymax"]) / 2
    _check_class_names(items["label"])
    items = items.sort_values(["image"], kind="stable").reset_index(drop=True)
    items.insert(0, "item_id", [f"it{i:06d}" for i in range(len(items))])
    extra = ["source_split"] if "source_split" in items.columns else []
    items = items[ITEM_COLUMNS + extra]
    rejected = bad.table()
    log.info(
        "%d items in %d images, classes %s; %d inputs rejected",
        len(items),
        items["image"].nunique(),
        items["label"].value_counts().to_dict(),
        len(rejected),
    )
    return items, rejected


def _check_class_names(labels: pd.Series) -> None:
    """Class names become folder names; two labels must not collapse into one folder."""
    seen: dict[str, str] = {}
    for label in sorted(labels.unique()):
        name = safe_name(label)
        if name in seen:
            raise BioaugError(f"class labels {seen[name]!r} and {label!r} map to the same folder name {name!r}")
        seen[name] = label
