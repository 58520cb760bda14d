"""A small-tile ResNet in PyTorch under torchvision's names (conv1, bn1, layer<i>.<j>.conv1,
downsample.0/1, fc), with bioaug's layout: a 3x3 stem and no max-pool. Used to test
classifier.init_weights against real torch weights:

    python torch_resnet.py OUT_DIR IN_CHANNELS N_CLASSES WIDTH BLOCKS(,-joined)

writes OUT_DIR/model.pth (its state dict, random weights and BatchNorm statistics),
OUT_DIR/x.npy (a batch, NHWC) and OUT_DIR/logits.npy (the model's eval-mode logits).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class SmallTileResNet(nn.Module):
    def __init__(self, in_channels, n_classes, width, blocks):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stage = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            c_in = c_out
        self.n_stages = len(blocks)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


if __name__ == "__main__":
    out, c, k, width = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    blocks = [int(b) for b in sys.argv[5].split(",")]
    torch.manual_seed(0)
    model = SmallTileResNet(c, k, width, blocks)
    for m in model.modules():  # BatchNorm statistics and affine parameters away from 0 / 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = np.random.default_rng(0).random((4, 16, 16, c), dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, out / "model.pth")
    np.save(out / "x.npy", x)
    np.save(out / "logits.npy", logits)
