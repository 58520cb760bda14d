"""PNG files (8- or 16-bit greyscale, RGB, RGBA) of the balanced dataset's png formats, via pypng.

PIL writes 16-bit greyscale PNGs but no 16-bit RGB ones, and reads a 16-bit RGB PNG as 8-bit,
so both ways go through pypng (pure Python; tiles are small), for 8 bits as for 16. Text entries (the channel names)
are tEXt chunks placed after IHDR, the pixel size a pHYs chunk in pixels per metre.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import png

from ..runtime import BioaugError

CHANNELS = (1, 3, 4)  # greyscale, RGB, RGBA


def write(path: str | Path, data: np.ndarray, text: dict[str, str], pixel_size_um: float | None = None) -> None:
    """Write uint8 or uint16 (H, W, C), C in 1, 3 or 4, as a PNG of that bit depth with tEXt
    entries `text` and, given a pixel size, pHYs."""
    h, w, c = data.shape
    if data.dtype not in (np.uint8, np.uint16) or c not in CHANNELS:
        raise ValueError(f"{path}: a PNG holds uint8 or uint16 with 1, 3 or 4 channels, not {data.dtype} x {c}")
    ppm = int(round(1e6 / pixel_size_um)) if pixel_size_um is not None else None
    writer = png.Writer(
        w, h, greyscale=c == 1, alpha=c == 4, bitdepth=8 * data.itemsize, x_pixels_per_unit=ppm, y_pixels_per_unit=ppm,
        unit_is_meter=ppm is not None,
    )  # fmt: skip
    buf = io.BytesIO()
    writer.write_array(buf, data.reshape(-1))
    chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
    entries = [(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace")) for k, v in text.items()]
    with open(path, "wb") as out:
        png.write_chunks(out, chunks[:1] + entries + chunks[1:])


def read(path: str | Path) -> tuple[np.ndarray, dict[str, str], int]:
    """A PNG as (H, W, C) uint8 or uint16 (palette images expanded), its tEXt entries and bit depth."""
    try:
        blob = Path(path).read_bytes()  # read once: pixels and text chunks both come from it
        w, h, rows, info = png.Reader(bytes=blob).asDirect()
        arr = np.vstack([np.asarray(r, np.uint16 if info["bitdepth"] > 8 else np.uint8) for r in rows])
        text = {}
        for tag, data in png.Reader(bytes=blob).chunks():
            if tag == b"tEXt":
                key, _, value = data.partition(b"\0")
                text[key.decode("latin-1")] = value.decode("latin-1")
    except (png.Error, OSError, ValueError) as err:
        raise BioaugError(f"{path}: not a readable PNG ({type(err).__name__}: {err})") from None
    return arr.reshape(h, w, info["planes"]), text, info["bitdepth"]
