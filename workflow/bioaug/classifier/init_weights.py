"""classifier.init_weights: start the downstream network from weights the user brings.

Pretrained weights cannot be downloaded where bioaug runs; a user brings them as a file:

- a bioaug model folder (``meta.json`` + ``state.npz``, as TrainedClassifier.save writes, e.g.
  ``results/<ds>/fold-0/feature_classifier`` of another run), matched by bioaug's own names;
- an ``.npz`` of a PyTorch state dict under torchvision's names (``conv1.weight``,
  ``layer1.0.bn1.running_mean``, ``fc.weight`` ...), written from a ``.pth`` by
  ``python workflow/bioaug/classifier/torch_weights.py model.pth model.npz`` (that script
  needs torch; bioaug does not). torchvision's ResNet-18 maps onto ``architecture: resnet,
  width: 64, blocks: [2, 2, 2, 2]``.

Every tensor whose name exists in the network with the same shape is loaded; the others keep
their fresh initialisation and are listed in the log (typically the stem, a 7x7 ImageNet conv
vs bioaug's 3x3 for small tiles or another channel count, and the head, 1000 ImageNet classes
vs the dataset's). A file that matches nothing is an error naming it.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..runtime import BioaugError

log = logging.getLogger("bioaug.classifier")

KEY = "classifier.init_weights"
# bioaug BatchNorm / Linear / Conv leaf -> the torch state-dict suffix
_TORCH_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def weight_state(model):
    """The network's parameters and BatchNorm statistics (what a model folder stores)."""
    return nnx.state(model, (nnx.Param, nnx.BatchStat))


def flat_weights(state) -> dict[str, nnx.Variable]:
    """`weight_state` by dotted path (layers.0.conv1.kernel), in the order of its leaves."""
    return {".".join(str(k) for k in path): var for path, var in nnx.to_flat_state(state)}


def torch_name(path: str, model) -> str | None:
    """torchvision's ResNet name of a bioaug ResNet weight (None where it has none)."""
    parts = path.split(".")
    module, leaf = parts[:-1], parts[-1]
    suffix = "weight" if leaf == "kernel" else _TORCH_LEAF.get(leaf, leaf)
    renames = {"stem": "conv1", "stem_bn": "bn1", "head": "fc"}
    if module[0] in renames and len(module) == 1:
        return f"{renames[module[0]]}.{suffix}"
    if module[0] != "layers" or not hasattr(model, "blocks_per_stage"):
        return None
    k, inner = int(module[1]), module[2]
    stage, j = 0, k
    while j >= model.blocks_per_stage[stage]:
        j -= model.blocks_per_stage[stage]
        stage += 1
    inner = {"project": "downsample.0", "project_bn": "downsample.1"}.get(inner, inner)
    return f"layer{stage + 1}.{j}.{inner}.{suffix}"


def to_bioaug_layout(name: str, array: np.ndarray) -> np.ndarray:
    """A torch tensor in flax's layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2 and name.endswith("weight"):
        return array.T
    return array


def read_source(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of the file by name (a list in leaf order for an old bioaug folder), and which
    naming they use ("bioaug" | "torch")."""
    try:
        if path.is_dir():
            meta = json.loads((path / "meta.json").read_text())
            with np.load(path / "state.npz") as z:
                arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
            # a folder written before weight names were saved: its arrays in leaf order (a list)
            return (dict(zip(meta["weight_names"], arrays)) if "weight_names" in meta else arrays), "bioaug"
        with np.load(path, allow_pickle=False) as z:  # an .npy gives an array: no context manager
            return {k: z[k] for k in z.files if not k.endswith("num_batches_tracked")}, "torch"
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        raise BioaugError(f"{KEY}: {path} is not a bioaug model folder or an .npz of weights ({err})") from None


def load_initial_weights(model, path) -> dict[str, list[str]]:
    """Overwrite `model`'s weights with the matching ones of `path` (see the module docstring);
    returns the names loaded and those left at their initialisation."""
    path = Path(path)
    if not path.exists():
        raise BioaugError(f"{KEY}: {path} does not exist")
    source, naming = read_source(path)
    state = weight_state(model)
    weights = flat_weights(state)
    if isinstance(source, list):  # an old bioaug folder: by leaf order, as load_classifier reads it
        if len(source) != len(weights):
            raise BioaugError(f"{KEY}: {path} holds {len(source)} tensors, the network has {len(weights)}")
        source = dict(zip(weights, source))
    loaded, kept = [], []
    for name, var in weights.items():
        key = name if naming == "bioaug" else torch_name(name, model)
        array = source.get(key) if key is not None else None
        if array is not None and naming == "torch":
            array = to_bioaug_layout(key, array)
        if array is not None and array.shape == var.get_value().shape:
            var.set_value(jnp.asarray(array, var.get_value().dtype))
            loaded.append(name)
        else:
            kept.append(name)
    nnx.update(model, state)
    if not loaded:
        raise BioaugError(
            f"{KEY}: no tensor of {path} matches the network by name and shape "
            f"(it has {len(source)} tensors, e.g. {sorted(source)[:3]}; the network expects e.g. "
            f"{[torch_name(n, model) if naming == 'torch' else n for n in list(weights)[:3]]})"
        )
    log.info(
        "initial weights from %s: %d of %d tensors loaded; left at their initialisation: %s",
        path,
        len(loaded),
        len(weights),
        ", ".join(kept) or "none",
    )
    return {"loaded": loaded, "kept": kept}
