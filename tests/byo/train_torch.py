"""Bring your own PyTorch classifier (classifier.command), as a user would write it: a small
CNN trained on {train}, selected on {val}, predicting every file of {predict} into {out}.

    classifier:
      command: python tests/byo/train_torch.py --train {train} --val {val} --predict {predict} --job {job} --out {out}
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

p = argparse.ArgumentParser()
for name in ("train", "val", "predict", "job", "out"):
    p.add_argument(f"--{name}", required=True)
args = p.parse_args()
job = json.loads(Path(args.job).read_text())
names = job["class_names"]
torch.manual_seed(job["seed"])


def load(path):
    """bioaug's tiles: float32, H x W (one channel) or C x H x W."""
    a = tifffile.imread(path)
    return torch.from_numpy(a[None] if a.ndim == 2 else a)


def folder(root):
    xs, ys = [], []
    for i, name in enumerate(names):
        for f in sorted((Path(root) / name).glob("*.tif")):
            xs.append(load(f))
            ys.append(i)
    return torch.stack(xs), torch.tensor(ys)


x, y = folder(args.train)
vx, vy = folder(args.val)
c = x.shape[1]
model = nn.Sequential(
    nn.Conv2d(c, 16, 3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(32, len(names)),
)
weights = None
if job["options"].get("class_weighted"):  # honour the arm's options
    counts = torch.bincount(y, minlength=len(names)).float()
    weights = len(y) / (len(names) * counts.clamp(min=1))
loss_fn = nn.CrossEntropyLoss(weight=weights)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)  # the script's own recipe (job["lr"] is bioaug's)
best, best_state = -1.0, None
for _ in range(job["epochs"]):
    model.train()
    for idx in torch.randperm(len(y)).split(job["batch_size"]):
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(vx).argmax(1) == vy).float().mean().item()
    if acc > best:
        best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
model.load_state_dict(best_state)
model.eval()
files = sorted(Path(args.predict).glob("*.tif"))
with torch.no_grad():
    proba = torch.softmax(model(torch.stack([load(f) for f in files])), dim=1).numpy()
with open(args.out, "w", newline="") as out:
    w = csv.writer(out)
    w.writerow(["file", "label", *(f"p_{n}" for n in names)])
    for f, pr in zip(files, proba):
        w.writerow([f.name, names[int(np.argmax(pr))], *pr])
