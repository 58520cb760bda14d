"""A minimal bring-your-own classifier for tests/test_byo_classifier.py: nearest class mean
on the pixels (numpy + tifffile only). Shows the contract of classifier.command."""

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import tifffile

p = argparse.ArgumentParser()
for name in ("train", "val", "predict", "job", "out"):
    p.add_argument(f"--{name}", required=True)
args = p.parse_args()

job = json.loads(Path(args.job).read_text())
names = job["class_names"]
means = []
for name in names:
    files = sorted((Path(args.train) / name).glob("*.tif"))
    means.append(np.mean([tifffile.imread(f).ravel() for f in files], axis=0))
means = np.stack(means)
with open(args.out, "w", newline="") as out:
    w = csv.writer(out)
    w.writerow(["file", "label", *(f"p_{n}" for n in names)])
    for f in sorted(Path(args.predict).glob("*.tif")):
        d = ((means - tifffile.imread(f).ravel()) ** 2).sum(1)
        p = np.exp(-(d - d.min()))
        w.writerow([f.name, names[int(d.argmin())], *(p / p.sum())])
# what the arm asked for, so the test can check it arrived
Path(args.out).with_name("seen_job.json").write_text(json.dumps(job))
