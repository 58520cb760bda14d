"""Convert a PyTorch checkpoint (.pth / .pt) to the .npz that classifier.init_weights reads.

    python workflow/bioaug/classifier/torch_weights.py resnet18.pth resnet18.npz

Run it where torch is installed (bioaug itself never imports torch): it loads the file on the
CPU with ``weights_only=True`` (no code in the checkpoint runs), takes the state dict (the
file itself, or its "state_dict" / "model" entry), drops a DataParallel "module." prefix and
the BatchNorm step counters, and writes every tensor as a float32 / int array under its
state-dict name. Standalone on purpose: it imports neither bioaug nor JAX.
"""

from __future__ import annotations

import sys

import numpy as np


def state_dict_of(checkpoint) -> dict:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise SystemExit("not a state dict (a mapping of names to tensors)")
    return checkpoint


def convert(src: str, dst: str) -> int:
    import torch

    state = state_dict_of(torch.load(src, map_location="cpu", weights_only=True))
    arrays = {}
    for name, tensor in state.items():
        if not hasattr(tensor, "detach") or name.endswith("num_batches_tracked"):
            continue
        name = name.removeprefix("module.")
        value = tensor.detach().cpu()
        arrays[name] = value.float().numpy() if value.is_floating_point() else value.numpy()
    if not arrays:
        raise SystemExit(f"{src}: no tensors")
    np.savez(dst, **arrays)
    return len(arrays)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    n = convert(sys.argv[1], sys.argv[2])
    print(f"{sys.argv[2]}: {n} tensors")
