"""Reading source images into (H, W, C) float32 arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runtime import BioaugError

TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float16, np.float32, np.float64)


def image_shape(path: str | Path) -> tuple[int, int, int]:
    """(H, W, C) of an image without reading its pixels (TIFF); reads PNG/JPEG headers."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return _hwc_shape(series.shape, series.axes, path)
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width, len(im.getbands())
    except BioaugError:
        raise
    except FileNotFoundError:
        raise BioaugError(f"{path}: image file not found") from None
    except Exception as err:
        raise BioaugError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


def read_image(path: str | Path, channels: list[int] | None = None) -> np.ndarray:
    """Read a TIFF/PNG/JPEG as (H, W, C) float32, keeping only `channels` when given."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                arr = series.asarray()
                arr = _to_hwc(arr, series.axes, path)
        elif path.suffix.lower() in RASTER_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
            if arr.ndim == 2:
                arr = arr[..., None]
        else:
            raise BioaugError(f"{path}: unsupported image type {path.suffix!r} (use TIFF, PNG or JPEG)")
    except BioaugError:
        raise
    except FileNotFoundError:
        raise BioaugError(f"{path}: image file not found") from None
    except Exception as err:
        raise BioaugError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if arr.dtype.type not in SUPPORTED_DTYPES:
        raise BioaugError(f"{path}: unsupported pixel type {arr.dtype}")
    if channels is not None:
        bad = [c for c in channels if c >= arr.shape[-1]]
        if bad:
            raise BioaugError(f"{path}: has {arr.shape[-1]} channel(s), tiles.channels asks for {bad}")
        arr = arr[..., channels]
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise BioaugError(f"{path}: contains NaN or infinite pixel values")
    return arr


def _hwc_shape(shape, axes: str, path: Path) -> tuple[int, int, int]:
    dims = dict(zip(axes, shape))
    if "Y" not in dims or "X" not in dims:
        raise BioaugError(f"{path}: no Y/X axes in TIFF (axes {axes!r})")
    c = 1
    for ax in ("C", "S"):
        c *= dims.get(ax, 1)
    return dims["Y"], dims["X"], c


def _to_hwc(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Reorder a tifffile series to (H, W, C); channel-like axes (C, S) become C.

    Other axes (Z, T, ...) must have length 1; multi-plane stacks need an explicit choice
    that the configuration does not offer yet, so they are refused rather than guessed.
    """
    extra = [(i, ax) for i, ax in enumerate(axes) if ax not in "YXCS"]
    for i, ax in extra:
        if arr.shape[i] != 1:
            raise BioaugError(f"{path}: axis {ax!r} has {arr.shape[i]} planes; only single-plane images are supported")
    keep = [ax for ax in axes if ax in "YXCS"]
    arr = arr.reshape([n for n, ax in zip(arr.shape, axes) if ax in "YXCS"])
    if "Y" not in keep or "X" not in keep:
        raise BioaugError(f"{path}: no Y/X axes in TIFF (axes {axes!r})")
    chan = [keep.index(a) for a in keep if a in "CS"]
    order = [keep.index("Y"), keep.index("X")] + chan
    arr = np.transpose(arr, order)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)
