"""Run in the reader environment (tests/readers/setup_venv.sh) by tests/test_readers.py:
torchvision's ImageFolder on a balanced folder, as a user would.

    python torchvision_check.py FOLDER OUT_DIR [SNIPPET]

Writes OUT_DIR/report.json (classes, samples, what the default loader returned) and
OUT_DIR/arrays.npz (default_<i>: the default loader's image as an array; loader_<i>: the
tensor of the README's multichannel loader, when SNIPPET, the README's code block, is given,
with "results/<ds>/balanced" standing for FOLDER). The test compares them with the tiles.
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.datasets import ImageFolder

folder, out_dir = sys.argv[1], sys.argv[2]
snippet = open(sys.argv[3]).read() if len(sys.argv) > 3 else None

ds = ImageFolder(folder)  # the default loader: PIL, convert("RGB")
report = {
    "torch": torch.__version__,
    "torchvision": torchvision.__version__,
    "classes": ds.classes,
    "class_to_idx": ds.class_to_idx,
    "samples": [[os.path.relpath(p, folder), t] for p, t in ds.samples],
    "default": [],
}
arrays = {}
for i in range(len(ds)):
    img, target = ds[i]
    report["default"].append({"mode": img.mode, "size": list(img.size), "target": target})
    arrays[f"default_{i}"] = np.asarray(img)

if snippet is not None:
    namespace: dict = {}
    exec(snippet.replace("results/<ds>/balanced", folder), namespace)
    user_ds = namespace["ds"]
    for i in range(len(user_ds)):
        x, _ = user_ds[i]
        arrays[f"loader_{i}"] = x.numpy()
    batch, labels = next(iter(torch.utils.data.DataLoader(user_ds, batch_size=len(user_ds))))
    report["loader_batch"] = {"shape": list(batch.shape), "dtype": str(batch.dtype), "labels": labels.tolist()}

np.savez(os.path.join(out_dir, "arrays.npz"), **arrays)
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
