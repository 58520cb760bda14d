"""The balanced dataset: results/<ds>/balanced/<class>/<tile files> + manifest.csv + README.txt
(+ histogram_match.json when generate.match_histograms mapped the synthetic tiles' values).

One file per tile, in the format `balance.format` names; a file holds round(x * scale) for the
normalised tile x in [0, 1] (scale 255, 65535 or 1):

  format      file  dtype    1 channel       2 channels         3 channels       4 (or more)
  tiff        .tif  uint8    2-D greyscale   ImageJ CYX         RGB              ImageJ CYX
  tiff16      .tif  uint16   2-D greyscale   ImageJ CYX         ImageJ CYX       ImageJ CYX
  tiff_float  .tif  float32  2-D greyscale   ImageJ CYX         ImageJ CYX       ImageJ CYX
  png         .png  uint8    L               RGB (R, G; B = 0)  RGB              RGBA (at most 4)
  png16       .png  uint16   L (16-bit)      RGB (R, G; B = 0)  RGB              RGBA (at most 4)

Every TIFF is an ImageJ TIFF (tifffile `imagej=True`): a CYX hyperstack opens in ImageJ/Fiji
as C channels (slices = frames = 1) with the channel names as slice labels and a display range
of the whole scale, and in napari as channels (napari-tiff, or `channel_axis=0` with the
builtin reader). PIL, and so torchvision's default loader, opens the 8-bit greyscale, RGB and
PNG files as they are and the first channel of a hyperstack (PIL reads 16-bit RGB PNGs as
8-bit). A PNG keeps the channel names in a text chunk `channels`. The pixel size, where the
source images state one, is the TIFF resolution (unit um) or the PNG pHYs chunk.

manifest.csv has one row per tile: path (relative to the folder), label, origin (real |
synthetic), split, the real item and tile ids, for synthetic rows the generator checkpoint,
its training step and the seed that made the tile (integers), and what the files hold: format,
dtype, scale, channels (names joined by '|'), pixel_size_um, and how the tile's source image
was mapped to [0, 1]: normalisation (per_channel | joint | bit_depth) and, for real tiles, the
source image and the raw values that became 0 and 1 per channel (low, high, joined by '|'),
so raw ~= low + pixel / scale * (high - low). `read_balanced` / `read_tiles` give the normalised float32 tiles back.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from ..runtime import BioaugError
from . import png_files
from .items import read_table, safe_name

MANIFEST = "manifest.csv"
README = "README.txt"
HISTOGRAM_MATCH = "histogram_match.json"
MANIFEST_COLUMNS = [
    "path", "label", "origin", "split", "item_id", "tile_id", "image", "checkpoint", "step", "seed",
    "format", "dtype", "scale", "channels", "pixel_size_um", "normalisation", "low", "high",
]  # fmt: skip
TEXT_COLUMNS = (
    "path", "label", "origin", "split", "item_id", "tile_id", "image", "checkpoint", "format", "dtype", "channels",
    "normalisation", "low", "high",
)  # fmt: skip
INT_COLUMNS = ("step", "seed")  # pandas Int64: integers, empty for real rows
PNG_MAX_CHANNELS = 4
IMAGEJ_COMPOSITE_MAX = 7  # ImageJ shows up to 7 channels as a composite; more as grey planes


@dataclass(frozen=True)
class Format:
    name: str
    ext: str
    dtype: np.dtype
    scale: int  # pixel = round(normalised * scale)


FORMATS = {
    "tiff": Format("tiff", ".tif", np.dtype(np.uint8), 255),
    "tiff16": Format("tiff16", ".tif", np.dtype(np.uint16), 65535),
    "tiff_float": Format("tiff_float", ".tif", np.dtype(np.float32), 1),
    "png": Format("png", ".png", np.dtype(np.uint8), 255),
    "png16": Format("png16", ".png", np.dtype(np.uint16), 65535),
}
SCALES = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}  # others (float32): 1


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise BioaugError(f"balance.format: {name!r} is not one of {sorted(FORMATS)}")
    return FORMATS[name]


def channel_names(names, n_channels: int, fmt: str = "tiff") -> list[str]:
    """The channel names of `n_channels`-channel tiles (`balance.channel_names`; None: R, G, B
    for 3 channels, else ch0, ch1, ...), checked against what format `fmt` can hold."""
    f = get_format(fmt)
    if f.ext == ".png" and n_channels > PNG_MAX_CHANNELS:
        raise BioaugError(
            f"balance.format: {f.name} holds at most {PNG_MAX_CHANNELS} channels (L, RGB, RGBA) but the tiles have "
            f"{n_channels}; use tiff, tiff16 or tiff_float (ImageJ hyperstacks of any number of channels)"
        )
    if names is None:
        return ["R", "G", "B"] if n_channels == 3 else [f"ch{i}" for i in range(n_channels)]
    names = [str(n) for n in names]
    if len(names) != n_channels:
        raise BioaugError(f"balance.channel_names: {len(names)} names {names} for tiles of {n_channels} channels")
    if len(set(names)) != len(names) or any("|" in n or not n.strip() for n in names):
        raise BioaugError(f"balance.channel_names: {names} must be distinct, non-blank and without '|'")
    return names


def normalisation_text(method: str, percentiles) -> str:
    """What normalisation `method` (per_channel | joint | bit_depth) did, in words."""
    lo, hi = percentiles
    between = f"its {lo:g} and {hi:g} percentiles in the source image map to 0 and 1"
    return {
        "per_channel": f"per_channel: each channel on its own, {between}",
        "joint": f"joint: one low/high for all channels (colour kept), {between}",
        "bit_depth": "bit_depth: the source pixel type's range maps to [0, 1] (0-255, 0-65535; floats as they are)",
    }.get(method, str(method))


def real_path(label: str, tile_id: str, fmt: str = "tiff") -> Path:
    return Path(safe_name(label)) / f"real_{tile_id}{get_format(fmt).ext}"


def synthetic_path(label: str, index: int, seed: int, fmt: str = "tiff") -> Path:
    return Path(safe_name(label)) / f"synthetic_{index:06d}_seed{int(seed)}{get_format(fmt).ext}"


def encode(tile: np.ndarray, fmt: str = "tiff") -> np.ndarray:
    """A normalised (H, W, C) tile as the stored pixel values: round(clip(x, 0, 1) * scale)."""
    f = get_format(fmt)
    x = np.clip(np.nan_to_num(np.asarray(tile, np.float32)), 0.0, 1.0)
    if f.dtype == np.float32:
        return x
    return np.rint(x * np.float32(f.scale)).astype(f.dtype)


def write_tile(
    path: str | Path, tile: np.ndarray, fmt: str = "tiff", channels=None, pixel_size_um: float | None = None
) -> None:
    """Write one normalised (H, W, C) float tile in format `fmt`.

    channels: the channel names (default as `channel_names`); pixel_size_um: microns per pixel,
    written as the TIFF resolution with unit 'um' (PNG: as dpi); None writes none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tile.ndim != 3:
        raise ValueError(f"{path}: a tile is (H, W, C), got shape {tile.shape}")
    c = tile.shape[-1]
    names = channel_names(channels, c, fmt)
    data = encode(tile, fmt)
    if fmt.startswith("png"):
        _write_png(path, data, names, pixel_size_um)
    else:
        _write_tiff(path, data, fmt, names, pixel_size_um)


def _write_tiff(path: Path, data: np.ndarray, fmt: str, names: list[str], pixel_size_um: float | None) -> None:
    f, c = FORMATS[fmt], data.shape[-1]
    info = f"bioaug balanced tile; format {fmt}; pixel = round(normalised * {f.scale}); channels {'|'.join(names)}"
    metadata: dict = {"Info": info}
    kwargs: dict = {}
    if pixel_size_um is not None:
        kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
        metadata["unit"] = "um"
    if c == 3 and fmt == "tiff":  # 8-bit RGB: the one multichannel TIFF that PIL opens whole
        metadata["axes"] = "YXS"
        kwargs.update(photometric="rgb", planarconfig="contig")
    else:  # greyscale page or CYX hyperstack; the display range is the whole scale, the same for every tile
        metadata["axes"] = "YX" if c == 1 else "CYX"
        metadata["Ranges"] = (0.0, float(f.scale)) * c
        metadata["Labels"] = names if c > 1 else names[0]
        if c > 1:
            metadata["mode"] = "composite" if c <= IMAGEJ_COMPOSITE_MAX else "grayscale"
        data = data[..., 0] if c == 1 else np.moveaxis(data, -1, 0)
        kwargs["photometric"] = "minisblack"
    tifffile.imwrite(path, data, imagej=True, metadata=metadata, **kwargs)


def _write_png(path: Path, data: np.ndarray, names: list[str], pixel_size_um: float | None) -> None:
    scale = SCALES[data.dtype]
    if data.shape[-1] == 2:  # R = channel 0, G = channel 1, B = 0
        data = np.concatenate([data, np.zeros_like(data[..., :1])], axis=-1)
    text = {"channels": "|".join(names), "Description": f"bioaug balanced tile; pixel = round(normalised * {scale})"}
    png_files.write(path, data, text, pixel_size_um)


def read_tile(path: str | Path) -> np.ndarray:
    """One tile file as the normalised (H, W, C) float32 it was written from (to within 1/scale)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        arr, text, _ = png_files.read(path)
        names = text.get("channels")
        arr = arr[..., : len(names.split("|"))] if names else arr  # 2 channels: R and G of an RGB file
    else:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
        if axes == "YX":
            arr = arr[..., None]
        elif axes == "CYX":
            arr = np.moveaxis(arr, 0, -1)
        elif axes != "YXS":
            raise BioaugError(f"{path}: a balanced tile is YX, YXS or CYX, not {axes} {arr.shape}")
    scale = SCALES.get(arr.dtype, 1)
    return arr.astype(np.float32) / np.float32(scale)


def manifest_table(rows: list[dict], fmt: str = "tiff", channels=None) -> pd.DataFrame:
    """The manifest of `rows` (path, label, origin, ... normalisation, low, high), with the
    columns of the format (format, dtype, scale, channels) filled in."""
    f = get_format(fmt)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in INT_COLUMNS:
        manifest[col] = pd.array([None if pd.isna(v) else int(v) for v in manifest[col]], dtype="Int64")
    manifest["format"], manifest["dtype"], manifest["scale"] = f.name, f.dtype.name, f.scale
    manifest["channels"] = "|".join(channels) if channels is not None else ""
    manifest["pixel_size_um"] = manifest["pixel_size_um"].astype(np.float64)
    return manifest


def write_manifest(rows: list[dict], folder: str | Path, fmt: str = "tiff", channels=None) -> pd.DataFrame:
    manifest = manifest_table(rows, fmt, channels)
    manifest.to_csv(Path(folder) / MANIFEST, index=False)
    return manifest


def read_manifest(folder: str | Path) -> pd.DataFrame:
    manifest = read_table(Path(folder) / MANIFEST, TEXT_COLUMNS)
    return manifest.astype({c: "Int64" for c in INT_COLUMNS if c in manifest})


def pil_view(fmt: str, c: int) -> str:
    """What PIL (and so torchvision's default loader) makes of a tile, and what to do instead."""
    f = get_format(fmt)
    if fmt == "png" or (fmt == "tiff" and c in (1, 3)):
        if c == 4:
            return (
                "PIL and torchvision's default loader read the file; convert('RGB') drops the 4th channel: "
                "for all 4 pass loader=lambda p: np.asarray(PIL.Image.open(p))."
            )
        return "PIL and torchvision's default loader read the whole tile" + (" (R, G; B = 0)." if c == 2 else ".")
    if fmt == "png16":
        seen = "8 bits per channel (the high byte)" if c in (2, 3) else "16-bit grey clipped at 255 (white)"
        return f"PIL, and so torchvision's default loader, sees {seen}: read the files with pypng, cv2 or imageio."
    seen = {"tiff": "only channel 0, as grey", "tiff16": "channel 0 clipped at 255", "tiff_float": "0 or 1"}[fmt]
    return (
        f"torchvision's default loader (PIL) sees {seen}: pass loader=tifffile.imread (C x H x W for"
        f" several channels, H x W for one){f' and divide by {f.scale}' if f.scale != 1 else ''}."
    )


def write_histogram_match(folder: str | Path, maps: dict[str, dict]) -> None:
    """histogram_match.json: per class, the map generate.match_histograms applied to the
    generator's output (so a synthetic tile is regenerated from checkpoint, seed and map)."""
    doc = {
        "description": (
            "Synthetic tiles of each class were histogram-matched: channel c of the generator's output x "
            "became numpy.interp(x, synthetic_quantiles[c], real_quantiles[c])."
        ),
        "classes": {label: maps[label] for label in sorted(maps)},
    }
    (Path(folder) / HISTOGRAM_MATCH).write_text(json.dumps(doc, indent=1))


def write_readme(
    folder: str | Path, manifest: pd.DataFrame, fmt: str, channels: list[str], percentiles, matched: bool = False
) -> None:
    """README.txt: what the files hold and how to load them (ImageFolder ignores top-level files)."""
    f = get_format(fmt)
    c = len(channels)
    if fmt.startswith("png"):
        layout = {1: "greyscale", 2: "RGB: channel 0 in R, 1 in G, B = 0", 3: "RGB", 4: "RGBA"}[c]
    elif c == 1:
        layout = "one 2-D greyscale page"
    elif c == 3 and fmt == "tiff":
        layout = "RGB"
    else:
        layout = f"an ImageJ hyperstack of {c} channels (axes CYX)"
    methods = [m for m in manifest["normalisation"].dropna().unique() if m]
    normalised = "\n            ".join(normalisation_text(m, percentiles) for m in methods) or "(not recorded)"
    sizes = manifest["pixel_size_um"].dropna()
    pixel = (
        f"{sizes.min():.4g} to {sizes.max():.4g} um per pixel (column pixel_size_um)"
        if len(sizes) and sizes.max() > sizes.min()
        else f"{sizes.iloc[0]:.4g} um per pixel"
        if len(sizes)
        else "not stated by the source images"
    )
    matched_text = (
        f"synthetic   values histogram-matched to the class's real train tiles; the map per class and\n"
        f"            channel is in {HISTOGRAM_MATCH}\n"
        if matched
        else ""
    )
    text = f"""bioaug balanced dataset: real train tiles and synthetic tiles, one folder per class.

files       <class>/real_<tile_id>{f.ext} and <class>/synthetic_<n>_seed<seed>{f.ext}
format      {fmt}: {f.dtype.name}, {layout}
channels    {" | ".join(channels)}
pixel size  {pixel}
values      pixel = round(normalised * {f.scale}); normalised in [0, 1]
normalised  {normalised}
            real tiles: raw ~= low + pixel / {f.scale} * (high - low), low and high per channel in
            manifest.csv; synthetic tiles live in the same normalised space
manifest    manifest.csv: one row per file (label, origin real | synthetic, split, ids, source image;
            for synthetic tiles the generator checkpoint, step and seed)
{matched_text}
{textwrap.fill(pil_view(fmt, c), 96)}
See the README of bioaug, section "The balanced dataset".
"""
    (Path(folder) / README).write_text(text)


def read_tiles(folder: str | Path, paths) -> np.ndarray:
    """Tiles at manifest `paths` as (N, H, W, C) float32 in [0, 1]."""
    return np.stack([read_tile(Path(folder) / p) for p in paths]).astype(np.float32)


def read_balanced(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All tiles of a balanced dataset as (N, H, W, C) float32 in [0, 1], with the manifest rows."""
    manifest = read_manifest(folder)
    return read_tiles(folder, manifest["path"]), manifest
