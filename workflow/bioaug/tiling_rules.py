"""The choices of how an image becomes tiles that both the index (which rejects what cannot
be tiled) and the tile stage make, so they agree.

  image_mode  image-level labels: sliding `windows`, the `whole` image resized, or a `center`
              crop; `auto` takes `whole` for images up to twice the tile size (pre-cropped
              single cells, e.g. 40 px cells and 32 px tiles), `windows` for larger ones
  normalise   per-image intensity mapping to [0, 1]: `per_channel` percentiles
              (fluorescence), `joint` percentiles over all channels (stained RGB keeps its
              hue), `bit_depth` (the pixel type's range); `auto` = joint for 8-bit RGB
"""

from __future__ import annotations

import numpy as np

WHOLE_UP_TO = 2.0  # auto: images at most this many tile sizes on their longer side are cells


def image_mode(mode: str, height: int, width: int, size: int) -> str:
    """windows | whole | center for an image of height x width and tiles of `size`."""
    if mode != "auto":
        return mode
    return "whole" if max(height, width) <= WHOLE_UP_TO * size else "windows"


def normalise_method(method: str, dtype, channels: int) -> str:
    """per_channel | joint | bit_depth for an image of pixel type `dtype` with `channels`."""
    if method != "auto":
        return method
    return "joint" if np.dtype(dtype) == np.uint8 and channels == 3 else "per_channel"
