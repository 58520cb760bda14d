"""Reading source images, whole or region by region, with errors that name the file.

`open_image` gives an `ImageSource` whose regions can be read without loading the image:
large uncompressed TIFFs are mapped row block by row block (MappedTiff), large compressed or
tiled TIFFs are read through tifffile's zarr interface (LazyTiff), so tiling a 16k x 16k image
keeps only the tiles in flight in memory. Smaller TIFFs (LAZY_TIFF_PIXELS), PNG and JPEG are
read whole.
Images inside an NPZ file are addressed as `file.npz::{split}_images/{index}`.
All arrays come back as (H, W, C) float32.

A TIFF's pixel size (microns per pixel) is read where the file states it in physical units:
OME-XML PhysicalSizeX, ImageJ's `unit` with the X resolution, or a resolution per centimetre.
A resolution per inch is a print or screen setting (72 dpi), not the specimen's, so it is not
taken; PNG, JPEG and NPZ images have no pixel size.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from ..runtime import BioaugError

TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + RASTER_SUFFIXES
NPZ_SEPARATOR = "::"
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int8, np.int16, np.int32, np.uint32, np.float16, np.float32, np.float64)
# Validation reads strips of this many pixels.
VALIDATE_STRIP_PIXELS = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """How large an image may be before it is refused unread (the index checks every image)."""

    max_pixels: float  # height x width x channels
    max_pages: int

    @classmethod
    def from_config(cls, limits: dict) -> ImageLimits:
        return cls(max_pixels=limits["max_image_megapixels"] * 1e6, max_pages=limits["max_image_pages"])

    def check(self, path, shape, pages: int = 1) -> None:
        if pages > self.max_pages:
            raise BioaugError(f"{path}: has {pages} pages, more than limits.max_image_pages ({self.max_pages})")
        n = float(np.prod([int(d) for d in shape]))
        if n > self.max_pixels:
            raise BioaugError(
                f"{path}: {' x '.join(map(str, shape))} = {n / 1e6:.0f} megapixels, more than "
                f"limits.max_image_megapixels ({self.max_pixels / 1e6:g})"
            )


class ImageSource:
    """An image as (H, W, C), readable by region; `array` is a numpy array or a memmap."""

    def __init__(self, path: str, array: np.ndarray, channels: list[int] | None, pixel_size_um: float | None = None):
        if array.dtype.type not in SUPPORTED_DTYPES:
            raise BioaugError(f"{path}: unsupported pixel type {array.dtype}")
        if channels is not None:
            bad = [c for c in channels if c >= array.shape[-1]]
            if bad:
                raise BioaugError(f"{path}: has {array.shape[-1]} channel(s), tiles.channels asks for {bad}")
        self.path = path
        self.array = array
        self.channels = list(channels) if channels is not None else None
        self.pixel_size_um = pixel_size_um  # microns per pixel, None where the file does not say

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w, c = self.array.shape
        return h, w, len(self.channels) if self.channels is not None else c

    def select_channels(self, arr: np.ndarray, raw: bool = False) -> np.ndarray:
        arr = arr[..., self.channels] if self.channels is not None else arr
        return np.asarray(arr) if raw else np.asarray(arr, dtype=np.float32)

    def region(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Pixels [top, top+height) x [left, left+width); parts outside the image are
        reflect-padded (mirrored at the edge pixel, as numpy's 'reflect')."""
        h, w, _ = self.array.shape
        t, l = max(top, 0), max(left, 0)
        b, r = min(top + height, h), min(left + width, w)
        if b <= t or r <= l:
            raise BioaugError(f"{self.path}: region at ({left}, {top}) lies outside the {w}x{h} image")
        arr = self.select_channels(self.array[t:b, l:r])
        pads = ((t - top, top + height - b), (l - left, left + width - r), (0, 0))
        if any(p for pair in pads for p in pair):
            arr = np.pad(arr, pads, mode="reflect" if min(arr.shape[:2]) > 1 else "edge")
        return arr

    def read(self) -> np.ndarray:
        return self.select_channels(self.array[:, :])

    def sample(self, max_pixels: int | None, raw: bool = False) -> np.ndarray:
        """The whole image, or, when it has more than `max_pixels` pixels per channel, a
        regular grid of every k-th row and column with at most that many (None: always the
        whole image); in the file's own dtype when `raw`, else float32."""
        h, w, _ = self.array.shape
        k = 1 if max_pixels is None else max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
        return self.select_channels(self.array[::k, ::k], raw=raw)


class MappedTiff:
    """Rows of an uncompressed single-page TIFF, memory-mapped only while a region is read.

    A memmap of the whole file would keep every page it touched resident (and counted in
    RSS) until closed; mapping just the rows of each region keeps memory at the region.
    """

    ROW_BLOCK = 256

    def __init__(self, path: Path, offset: int, shape: tuple, dtype):
        self.path, self.offset, self.dtype = path, offset, np.dtype(dtype)
        self.shape = shape if len(shape) == 3 else (*shape, 1)

    @property
    def ndim(self) -> int:
        return 3

    def _rows(self, start: int, stop: int) -> np.ndarray:
        h, w, c = self.shape
        row_bytes = w * c * self.dtype.itemsize
        mm = np.memmap(
            self.path, dtype=self.dtype, mode="r", offset=self.offset + start * row_bytes, shape=(stop - start, w, c)
        )
        return mm

    def __getitem__(self, key):
        rows, cols = (key + (slice(None),))[:2] if isinstance(key, tuple) else (key, slice(None))
        start, stop, step = rows.indices(self.shape[0])
        blocks = []
        for b0 in range(start, stop, self.ROW_BLOCK * step):
            b1 = min(stop, b0 + self.ROW_BLOCK * step)
            mm = self._rows(b0, b1)
            blocks.append(np.array(mm[::step, cols]))  # copy, then drop the mapping
            del mm
        if not blocks:
            return np.zeros((0, len(range(*cols.indices(self.shape[1]))), self.shape[2]), self.dtype)
        return np.concatenate(blocks)


class LazyTiff:
    """A compressed or tiled TIFF seen as (H, W, C) through tifffile's zarr interface: a
    region read decodes only the TIFF tiles/strips it touches."""

    def __init__(self, path: Path, axes: str, shape: tuple, dtype):
        import zarr

        self._store = __import__("tifffile").imread(path, aszarr=True, series=0)
        self._z = zarr.open(self._store, mode="r")
        self.axes, self.dtype = axes, np.dtype(dtype)
        dims = dict(zip(axes, shape))
        self._chan_axes = [a for a in axes if a in "CS"]
        c = int(np.prod([dims[a] for a in self._chan_axes])) if self._chan_axes else 1
        self.shape = (dims["Y"], dims["X"], c)

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, key):
        rows, cols = (key + (slice(None),))[:2] if isinstance(key, tuple) else (key, slice(None))
        index = tuple(rows if a == "Y" else cols if a == "X" else slice(None) if a in "CS" else 0 for a in self.axes)
        part = np.asarray(self._z[index])
        kept = [a for a in self.axes if a in "YXCS"]
        order = [kept.index("Y"), kept.index("X")] + [kept.index(a) for a in self._chan_axes]
        part = np.transpose(part, order)
        return part.reshape(part.shape[0], part.shape[1], -1)


# TIFFs above this many pixels per plane are read region by region: row blocks of an
# uncompressed one mapped in turn (MappedTiff), a compressed or tiled one through zarr
# (LazyTiff). Smaller ones are read whole (the tile stage then crops all objects at once).
LAZY_TIFF_PIXELS = 16 * 1024 * 1024


def open_image(path: str | Path, channels: list[int] | None = None, limits: ImageLimits | None = None) -> ImageSource:
    """Open an image for reading; raises BioaugError naming the file on any problem. With
    `limits`, an image above them is refused before its pixels are read."""
    path_s = str(path)
    pixel_size = None
    try:
        if NPZ_SEPARATOR in path_s:
            arr = _npz_member(path_s)
        else:
            path = Path(path)
            suffix = path.suffix.lower()
            if suffix in TIFF_SUFFIXES:
                arr, pixel_size = _read_tiff(path, limits)
            elif suffix in RASTER_SUFFIXES:
                arr = _read_raster(path, limits)
            else:
                raise BioaugError(f"{path}: unsupported image type {path.suffix!r} (use TIFF, PNG or JPEG)")
        if arr.ndim == 2:
            arr = arr[..., None]
    except BioaugError:
        raise
    except FileNotFoundError:
        raise BioaugError(f"{path_s}: image file not found") from None
    except Exception as err:
        raise BioaugError(f"{path_s}: not a readable image ({type(err).__name__}: {err})") from err
    return ImageSource(path_s, arr, channels, pixel_size)


def validate_image(
    path: str | Path, channels: list[int] | None = None, limits: ImageLimits | None = None
) -> tuple[int, int, int]:
    """Check that an image reads completely and is finite; return its (H, W, C).

    Large images are checked strip by strip, so validation never holds the whole image.
    """
    src = open_image(path, channels, limits)
    h, w, c = src.shape
    rows = max(1, VALIDATE_STRIP_PIXELS // max(w, 1))
    floating = np.issubdtype(src.array.dtype, np.floating)
    try:
        for top in range(0, h, rows):
            strip = src.select_channels(src.array[top : top + rows], raw=True)  # reading it finds truncation
            if floating and not np.isfinite(strip).all():
                raise BioaugError(f"{path}: contains NaN or infinite pixel values")
    except BioaugError:
        raise
    except Exception as err:  # truncated files fail here, when the pixels are read
        raise BioaugError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    return h, w, c


def _read_raster(path: Path, limits: ImageLimits | None) -> np.ndarray:
    """PNG / JPEG through PIL; palette images give their colours, not their indices."""
    from PIL import Image

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise BioaugError(
            f"{path}: too large for PIL's decompression-bomb guard ({err}); convert it to a TIFF"
        ) from None
    with im:
        bands = len(im.getbands()) if im.mode not in ("P", "PA") else (4 if "transparency" in im.info else 3)
        if limits is not None:
            limits.check(path, (im.height, im.width, bands), getattr(im, "n_frames", 1))
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if bands == 4 else "RGB")
        elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L" if im.mode == "1" else "RGB")
        return np.asarray(im)


# Microns per unit of the length units TIFF writers put in ImageJ's `unit` and OME's PhysicalSizeXUnit.
UNIT_MICRONS = {"um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}
UNIT_MICRONS.update({"cm": 1e4, "m": 1e6, "å": 1e-4, "angstrom": 1e-4})


def tiff_pixel_size(tif) -> float | None:
    """Microns per pixel (X) stated by an open tifffile.TiffFile, or None."""
    size = None
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        try:
            pixels = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
            if "PhysicalSizeX" in pixels.attrib:
                unit = pixels.attrib.get("PhysicalSizeXUnit", "µm").lower()
                size = float(pixels.attrib["PhysicalSizeX"]) * UNIT_MICRONS.get(unit, float("nan"))
        except (ET.ParseError, StopIteration, ValueError):
            size = None
    if size is None and len(tif.pages):
        page = tif.pages.first
        xres = page.resolution[0] if page.resolution else 0.0
        unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        if xres and unit:
            size = UNIT_MICRONS.get(str(unit).strip().lower(), float("nan")) / xres
        elif xres and int(page.resolutionunit) == 3:  # RESUNIT.CENTIMETER
            size = 1e4 / xres
    return size if size is not None and np.isfinite(size) and size > 0 else None


def _read_tiff(path: Path, limits: ImageLimits | None = None) -> tuple[np.ndarray, float | None]:
    """The pixels (an array, or a lazily read MappedTiff / LazyTiff) and the pixel size."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return _tiff_pixels(tif, path, limits), tiff_pixel_size(tif)


def _tiff_pixels(tif, path: Path, limits: ImageLimits | None):
    shapes = {s.shape for s in tif.series}
    if len(tif.series) > 1 and len(shapes) == 1 and len(next(iter(shapes))) == 2:
        # Plain multi-page TIFF of equal 2-D pages without axis metadata: pages are channels.
        if limits is not None:
            limits.check(path, (*next(iter(shapes)), len(tif.series)), pages=len(tif.series))
        return np.stack([s.asarray() for s in tif.series], axis=-1)
    series = tif.series[0]
    axes, shape = series.axes.replace("I", "C").replace("Q", "C"), series.shape
    if limits is not None:
        limits.check(path, shape, pages=len(series.pages))
    for ax, n in zip(axes, shape):
        if ax not in "YXCS" and n != 1:  # refused before anything is read
            raise BioaugError(f"{path}: axis {ax!r} has {n} planes; only single-plane images are supported")
    page = series.pages[0] if len(series.pages) else None
    dims = dict(zip(axes, shape))
    if "Y" in dims and "X" in dims and dims["Y"] * dims["X"] > LAZY_TIFF_PIXELS:
        contiguous = page is not None and len(series.pages) == 1 and page.is_contiguous and page.is_memmappable
        if contiguous and axes in ("YX", "YXS"):
            dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)  # tifffile reports the native order
            return MappedTiff(path, page.dataoffsets[0], tuple(shape), dtype)  # nothing read yet
        if all(n == 1 for a, n in dims.items() if a not in "YXCS"):
            return LazyTiff(path, axes, tuple(shape), series.dtype)
    arr = series.asarray()
    return _to_hwc(arr, axes, shape, path)


def _to_hwc(arr: np.ndarray, axes: str, shape, path: Path) -> np.ndarray:
    """Reorder a tifffile series to (H, W, C); channel-like axes (C, S) become C.

    Other axes (Z, T, ...) must have length 1: a multi-plane stack needs a choice the
    configuration does not offer yet, so it is refused rather than guessed.
    """
    arr = arr.reshape(shape)
    for i, ax in enumerate(axes):
        if ax not in "YXCS" and shape[i] != 1:
            raise BioaugError(f"{path}: axis {ax!r} has {shape[i]} planes; only single-plane images are supported")
    keep = [ax for ax in axes if ax in "YXCS"]
    if "Y" not in keep or "X" not in keep:
        raise BioaugError(f"{path}: no Y/X axes in TIFF (axes {axes!r})")
    arr = arr.reshape([n for n, ax in zip(shape, axes) if ax in "YXCS"])
    order = [keep.index("Y"), keep.index("X")] + [i for i, a in enumerate(keep) if a in "CS"]
    if order != list(range(len(order))):
        arr = np.transpose(arr, order)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


@functools.lru_cache(maxsize=4)
def _npz_arrays(npz_path: str):
    with np.load(npz_path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.endswith("_images")}


def _npz_member(ref: str) -> np.ndarray:
    npz_path, member = ref.split(NPZ_SEPARATOR, 1)
    name, index = member.rsplit("/", 1)
    arrays = _npz_arrays(npz_path)
    if name not in arrays:
        raise BioaugError(f"{npz_path}: no array {name!r}")
    return npz_hwc(arrays[name])[int(index)]


def npz_hwc(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) images; a channels-first (N, C, H, W) array (C <= 4 ahead of
    two larger axes, as PyTorch writes them) is read as what it is, not as C-pixel-high images."""
    if images.ndim == 4 and images.shape[1] <= 4 < min(images.shape[2], images.shape[3]) and images.shape[3] > 4:
        return np.moveaxis(images, 1, -1)
    return images
