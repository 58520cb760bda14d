"""Index stage: read a dataset's annotations, in any supported format, into one item table.

An item is one annotated object (a point or a box) or one tile source (an image with an
image-level label, or one image of an NPZ array). `items` has the columns
item_id, image, group, label, kind, x, y, xmin, ymin, xmax, ymax (and source_split for NPZ).

Every input is accounted for: each annotation row (or labelled image) becomes an item or a
row of `rejected` with its reason; every other file under the dataset root (an image nobody
annotated, a hidden file, a file of another type, a file outside the class folders) is
listed there as unused, with its reason. With `on_bad_input: error` (the default) the first
bad input stops the run instead, with the same message.

Annotations are read as text: a label stays the string written (`NA`, `None`, `0`), a blank
cell is "no label". Image paths are relative to the dataset root and canonicalised (`a.tif`,
`./a.tif` and `sub/../a.tif` are one image); an absolute path or one that climbs out of the
root with `..` is a bad input and is never read.

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
import math
import posixpath
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from .. import tiling_rules
from ..formats.images import IMAGE_SUFFIXES, NPZ_SEPARATOR, ImageLimits, validate_image
from ..formats.items import ITEM_COLUMNS, REJECTED_COLUMNS, safe_name, write_items, write_rejected
from ..runtime import BioaugError, progress

log = logging.getLogger("bioaug.index")
BOX_COLUMNS = ["xmin", "ymin", "xmax", "ymax"]
NPZ_SPLITS = {"train": "train", "val": "val", "test": "test"}


# Columns the readers add; user columns of these names are bioaug's business, not read.
INTERNAL = ("source", "kind", "error", "unused")
OPTIONAL_COLUMNS = ["group"]
SNAKEMAKE_MARKER = ".snakemake_timestamp"  # Snakemake's own file in a directory output, not an input


def run(data_dir, reading: dict, tiles: dict, limits: dict, index_csv, rejected_csv, failed_rejected_csv=None) -> None:
    """The index stage: items of the dataset in `data_dir` to index.csv, the rest to rejected.csv.

    When no input is usable the stage fails, and Snakemake removes its outputs; the rejected
    inputs are then written to `failed_rejected_csv` (beside the log), which the error names."""
    try:
        items, rejected = index_dataset(data_dir, reading, tiles, ImageLimits.from_config(limits))
    except NoUsableItems as err:
        if failed_rejected_csv is None:
            raise
        write_rejected(err.rejected, failed_rejected_csv)
        raise BioaugError(
            f"{err} The {len(err.rejected)} rejected inputs and their reasons: {failed_rejected_csv}"
        ) from None
    write_rejected(rejected, rejected_csv)
    write_items(items, index_csv)


class NoUsableItems(BioaugError):
    def __init__(self, message: str, rejected: pd.DataFrame):
        super().__init__(message)
        self.rejected = rejected


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


def _read_csv(path: Path, needed: list[str], columns: dict | None) -> pd.DataFrame:
    """A user's annotation CSV, every cell as text, with the `columns:` mapping applied."""
    if not path.is_file():
        raise BioaugError(f"{path}: annotation file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise BioaugError(f"{path}: not a readable CSV ({type(err).__name__}: {err})") from err
    columns = columns or {}
    targets: dict[str, list[str]] = {}
    for ours, theirs in columns.items():
        targets.setdefault(theirs, []).append(ours)
    for theirs, ours in targets.items():
        if len(ours) > 1:
            raise BioaugError(f"columns: {' and '.join(sorted(ours))} all map to the one column {theirs!r}")
    for ours, theirs in columns.items():
        if theirs not in table.columns:
            raise BioaugError(f"columns.{ours}: {path} has no column {theirs!r} (it has {list(table.columns)})")
        if ours in table.columns and ours != theirs:
            raise BioaugError(
                f"columns.{ours}: maps {theirs!r} onto {ours!r}, but {path} already has a column {ours!r}"
            )
    table = table.rename(columns={v: k for k, v in columns.items()})
    if "item_id" in table.columns:
        raise BioaugError(f"{path}: has a column 'item_id', which bioaug writes itself; rename or drop it")
    if table.columns.duplicated().any():
        raise BioaugError(f"{path}: repeated column name(s) {sorted(set(table.columns[table.columns.duplicated()]))}")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise BioaugError(
            f"{path}: missing column(s) {missing}; this format needs {needed} (map names with `columns:`)"
        )
    if table.empty:
        raise BioaugError(f"{path}: no annotations")
    lines = [f"{path.name}:{i + 2}" for i in range(len(table))]  # +2: header, 1-based lines
    keep = needed + [c for c in OPTIONAL_COLUMNS if c in table.columns]
    table = table[keep].copy()
    table["source"] = lines
    table["error"] = None
    if "group" in table.columns:
        blank = table["group"].str.strip() == ""
        if blank.any() and not blank.all():
            rows = ", ".join(lines[i].rsplit(":", 1)[1] for i in np.flatnonzero(blank)[:10])
            raise BioaugError(
                f"{path}: column 'group' is empty on line(s) {rows} ({int(blank.sum())} of {len(table)}); "
                f"give every row a group, or none"
            )
        table["group"] = table["group"].str.strip().replace("", np.nan)
    return table


def _numeric(table: pd.DataFrame, cols: list[str]) -> None:
    """Coordinates as numbers; a row with a value that is not one gets an error naming it."""
    for col in cols:
        text = table[col].astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna() & (text != "") & table["error"].isna()
        table.loc[bad, "error"] = [f"{col}: {v!r} is not a number" for v in text[bad]]
        table[col] = values


def _image_paths(table: pd.DataFrame, cfg: dict) -> None:
    """Canonical image paths (relative to the root); bad ones become row errors."""
    paths, errors = [], []
    for raw, err in zip(table["image"], table["error"]):
        path, problem = image_path(raw, cfg.get("images"))
        paths.append(path)
        errors.append(err if err is not None else problem)
    table["image"], table["error"] = paths, errors


def image_path(raw, folder: str | None = None) -> tuple[str | None, str | None]:
    """(canonical path relative to the dataset root, None) or (None, the problem)."""
    text = str(raw).strip() if raw is not None else ""
    if not text or text.lower() == "nan":
        return None, "no image path"
    p = text.replace("\\", "/")
    if p.startswith("/") or re.match(r"^[A-Za-z]:", p):
        return None, f"image path {text!r} is absolute; give it relative to the dataset folder"
    if folder:
        p = f"{folder.rstrip('/')}/{p}"
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        return None, f"image path {text!r} leaves the dataset folder; it is not read"
    return norm, None


def read_points(root: Path, cfg: dict) -> pd.DataFrame:
    table = _read_csv(root / cfg["annotations"], ["image", "label", "x", "y"], cfg.get("columns"))
    _numeric(table, ["x", "y"])
    _image_paths(table, cfg)
    return table.assign(kind="point")


def read_boxes_csv(root: Path, cfg: dict) -> pd.DataFrame:
    table = _read_csv(root / cfg["annotations"], ["image", "label", *BOX_COLUMNS], cfg.get("columns"))
    _numeric(table, BOX_COLUMNS)
    _image_paths(table, cfg)
    return table.assign(kind="box")


def read_voc(root: Path, cfg: dict) -> pd.DataFrame:
    ann_dir = root / cfg["annotations"]
    if not ann_dir.is_dir():
        raise BioaugError(f"{ann_dir}: VOC annotation folder not found")
    images = cfg.get("images") or str(Path(cfg["annotations"]).parent / "JPEGImages")
    rows = []
    xml_files = sorted(f for f in ann_dir.glob("*.xml") if not f.name.startswith("."))
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
        image, problem = image_path(filename, images)
        objects = node.findall("object")
        if not objects:
            rows.append({"source": ref, "unused": "VOC file lists no objects"})
        for k, obj in enumerate(objects):
            row = {"source": f"{ref}#object{k}", "image": image, "label": (obj.findtext("name") or "").strip()}
            row["error"] = problem
            box = obj.find("bndbox")
            for c in BOX_COLUMNS:
                text = ((box.findtext(c) if box is not None else None) or "").strip()
                try:
                    row[c] = float(text)
                except ValueError:
                    row[c] = np.nan
                    why = f"bndbox {c}: {text!r} is not a number" if text else "object has no numeric bndbox"
                    row["error"] = row["error"] or why
            rows.append(row)
    return pd.DataFrame(rows).assign(kind="box")


def read_class_folders(root: Path, cfg: dict) -> pd.DataFrame:
    base = root / cfg.get("images", ".")
    if not base.is_dir():
        raise BioaugError(f"{base}: class-folder root not found")
    rows = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(folder.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(folder).parts):
                continue  # hidden files are listed by the accounting of every file (unused_files)
            ref = str(f.relative_to(root))
            row = {"source": ref, "image": ref, "label": folder.name}
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                row["unused"] = f"not a supported image type ({''.join(f.suffixes) or 'no suffix'}; TIFF, PNG or JPEG)"
            rows.append(row)
    if not rows:
        raise BioaugError(f"{base}: no class folders with files (expected <root>/<class>/*.tif|png|jpg)")
    return pd.DataFrame(rows).assign(kind="window")


def read_npz(root: Path, cfg: dict) -> pd.DataFrame:
    path = root / cfg["annotations"]
    if not path.is_file():
        raise BioaugError(f"{path}: NPZ file not found")
    try:
        arrays = np.load(path, allow_pickle=False)
        names = set(arrays.files)
    except Exception as err:
        raise BioaugError(f"{path}: not a readable NPZ file ({err})") from err
    rows = []
    for split in NPZ_SPLITS:
        if f"{split}_images" not in names:
            continue
        if f"{split}_labels" not in names:
            raise BioaugError(f"{path}: has {split}_images but no {split}_labels")
        try:
            labels = np.asarray(arrays[f"{split}_labels"])
            shape = arrays[f"{split}_images"].shape
        except Exception as err:  # e.g. an object array (pickles are refused)
            raise BioaugError(f"{path}: {split}_images / {split}_labels not readable ({err})") from err
        labels = labels.reshape(len(labels), -1)
        n_images = shape[0]
        if labels.shape[1] != 1 or len(labels) != n_images:
            raise BioaugError(
                f"{path}: {split}_labels must hold one label per image ({n_images}), got shape {labels.shape}"
            )
        if len(shape) not in (3, 4):
            raise BioaugError(f"{path}: {split}_images must be (N, H, W) or (N, H, W, C), got shape {shape}")
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


def annotation_files(root: Path, cfg: dict) -> set[str]:
    """The files the reader reads as annotations (relative to the root)."""
    fmt = cfg["format"]
    if fmt in ("points", "boxes_csv", "npz"):
        return {posixpath.normpath(cfg["annotations"])}
    if fmt == "voc":
        ann = root / cfg["annotations"]
        return {str(f.relative_to(root)) for f in ann.glob("*.xml") if not f.name.startswith(".")}
    return set()


def unused_files(root: Path, cfg: dict, listed: set[str], mentioned: set[str]) -> list[tuple[str, str]]:
    """Every file under the root that is neither an annotation file nor already `listed` (an
    item's image, an input of a rejection), with the reason it is not used; `mentioned`:
    images some annotation names."""
    used = listed | annotation_files(root, cfg)
    class_root = (root / cfg.get("images", ".")).resolve() if cfg["format"] == "class_folders" else None
    out = []
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        if f.is_dir() or rel in used or rel == SNAKEMAKE_MARKER:
            continue
        parts = f.relative_to(root).parts
        if any(part.startswith(".") for part in parts):
            reason = "hidden file (its name starts with '.')" if parts[-1].startswith(".") else "in a hidden folder"
        elif class_root is not None and f.resolve().parent == class_root:
            reason = "outside the class folders (class_folders reads <root>/<class>/*)"
        elif rel in mentioned:
            reason = "image whose annotations were all rejected"
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            reason = "image has no annotations"
        else:
            reason = f"not an image or annotation file ({''.join(f.suffixes) or 'no suffix'})"
        out.append((rel, reason))
    return out


# ----------------------------------------------------------------------------- checks


def _geometry_problem(row, h: int, w: int, tiles: dict) -> str | None:
    size = tiles.get("size", 0)
    windows = (
        row["kind"] == "window" and tiling_rules.image_mode(tiles.get("image_mode", "auto"), h, w, size) == "windows"
    )
    if min(h, w) < size and (windows or row["kind"] in ("point", "box")):
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


def index_dataset(
    root: str | Path, dataset_cfg: dict, tiles: dict | None = None, limits: ImageLimits | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
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
    for col in ["error", "unused", "group", "image", "x", "y", *BOX_COLUMNS]:
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
                image_info[image] = validate_image(root / image, tiles.get("channels"), limits)
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

    # Every other file under the root is listed, so every input is accounted for.
    if fmt != "npz":
        listed = set(table.loc[keep, "image"]) | {r["input"] for r in bad.rows}
        mentioned = set(table["image"].dropna())
        for rel, reason in unused_files(root, dataset_cfg, listed, mentioned):
            bad.unused(rel, reason)

    items = table[keep].copy()
    if items.empty:
        raise NoUsableItems(f"{root}: no usable items ({len(bad.rows)} inputs rejected or unused).", bad.table())
    _check_channels(items, image_info, tiles)
    items["group"] = items["group"].where(items["group"].notna(), items["image"])
    if items["kind"].isin(["box"]).any():
        box = items["kind"] == "box"
        items.loc[box, "x"] = (items.loc[box, "xmin"] + items.loc[box, "xmax"]) / 2
        items.loc[box, "y"] = (items.loc[box, "ymin"] + items.loc[box, "ymax"]) / 2
    _check_class_names(items["label"])
    items["image_pixels"] = [math.prod(image_info[image][:3]) for image in items["image"]]
    items = items.sort_values(["image"], kind="stable").reset_index(drop=True)
    items.insert(0, "item_id", [f"it{i:06d}" for i in range(len(items))])
    extra = ["source_split"] if "source_split" in items.columns else []
    items = items[ITEM_COLUMNS + extra]
    rejected = bad.table()
    log.info(
        "%d items in %d images, classes %s; %d inputs rejected or unused",
        len(items),
        items["image"].nunique(),
        items["label"].value_counts().to_dict(),
        len(rejected),
    )
    return items, rejected


def _check_channels(items: pd.DataFrame, image_info: dict, tiles: dict) -> None:
    """All images must give the same number of channels (tiles of one dataset are stacked)."""
    by_count: dict[int, list[str]] = {}
    for image in items["image"].unique():
        by_count.setdefault(image_info[image][2], []).append(image)
    if len(by_count) > 1:
        parts = "; ".join(
            f"{c} channel(s): {', '.join(imgs[:3])}{' ...' if len(imgs) > 3 else ''} ({len(imgs)} images)"
            for c, imgs in sorted(by_count.items())
        )
        hint = "" if tiles.get("channels") else " Choose common channels with tiles.channels."
        raise BioaugError(f"images have different numbers of channels: {parts}.{hint}")


def _check_class_names(labels: pd.Series) -> None:
    """Class names become folder names; two labels must not collapse into one folder."""
    seen: dict[str, str] = {}
    for label in sorted(labels.unique()):
        name = safe_name(label)
        if name in seen:
            raise BioaugError(f"class labels {seen[name]!r} and {label!r} map to the same folder name {name!r}")
        seen[name] = label
