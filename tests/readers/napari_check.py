"""Run in the reader environment by tests/test_readers.py: open files in a napari viewer
model (what napari's File > Open does, without a window) with the builtin reader and with
napari-tiff, and report the layers.

    python napari_check.py OUT.json FILE...
"""

import json
import sys

import napari
from napari.components import ViewerModel
from napari.plugins import _initialize_plugins

_initialize_plugins()  # what napari.Viewer does at start: discover the reader plugins


def layers(path, plugin, **kwargs):
    viewer = ViewerModel()
    try:
        viewer.open(path, plugin=plugin, **kwargs)
    except Exception as err:  # reported, the test decides
        return {"error": f"{type(err).__name__}: {err}"}
    return [
        {
            "name": layer.name,
            "shape": list(layer.data.shape),
            "dtype": str(layer.data.dtype),
            "rgb": bool(layer.rgb),
            "scale": [float(s) for s in layer.scale],
            "contrast_limits": [float(v) for v in layer.contrast_limits],
        }
        for layer in viewer.layers
    ]


out, files = sys.argv[1], sys.argv[2:]
report = {"napari": napari.__version__, "files": {}}
for path in files:
    seen = report["files"][path] = {"builtin": layers(path, "napari"), "napari-tiff": layers(path, "napari-tiff")}
    builtin = seen["builtin"]
    if isinstance(builtin, list) and len(builtin) == 1 and len(builtin[0]["shape"]) == 3 and not builtin[0]["rgb"]:
        seen["builtin_channel_axis_0"] = layers(path, "napari", channel_axis=0)  # a stack: as channel layers
with open(out, "w") as f:
    json.dump(report, f, indent=1)
