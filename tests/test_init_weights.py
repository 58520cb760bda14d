"""classifier.init_weights: a network starts from the user's weights (a bioaug model folder, or
a PyTorch state dict converted to .npz under torchvision's names)."""

from __future__ import annotations

import json
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

from bioaug.classifier.init_weights import flat_weights, load_initial_weights, torch_name, weight_state
from bioaug.classifier.model import ResNet
from bioaug.classifier.train import _init_model, load_classifier, train_classifier
from bioaug.config import validate_config
from bioaug.runtime import BioaugError
from conftest import REPO, load_tiny_config

RESNET = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "architecture": "resnet", "width": 8, "blocks": [1, 2]}


def resnet(in_channels=2, n_classes=3, width=8, blocks=(1, 2), seed=0):
    return _init_model(in_channels, n_classes, ("resnet", width, tuple(blocks)), "float32", jax.random.key(seed))


def weights_of(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.get_value()) for k, v in flat_weights(weight_state(model)).items()}


def logits(model, x):
    model.eval()
    return np.asarray(model(x))


def toy_data(n=24, c=2, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, c), dtype=np.float32), (np.arange(n) % k).astype(np.int32)


def test_a_bioaug_model_folder_initialises_every_matching_tensor(tmp_path):
    x, y = toy_data()
    names = ["a", "b", "c"]
    trained = train_classifier(x, y, x, y, names, RESNET, seed=0, total_steps=3)
    trained.save(tmp_path / "model")
    source = load_classifier(tmp_path / "model").to_module()
    fresh = resnet(seed=5)
    report = load_initial_weights(fresh, tmp_path / "model")
    assert report["kept"] == [] and len(report["loaded"]) == len(weights_of(fresh))
    np.testing.assert_allclose(logits(fresh, x), logits(source, x), rtol=1e-5, atol=1e-5)

    meta_path = tmp_path / "model" / "meta.json"  # a folder from before weight names were saved
    meta_path.write_text(
        json.dumps({k: v for k, v in json.loads(meta_path.read_text()).items() if k != "weight_names"})
    )
    by_order = resnet(seed=6)
    assert load_initial_weights(by_order, tmp_path / "model")["kept"] == []
    np.testing.assert_allclose(logits(by_order, x), logits(source, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(BioaugError, match=r"holds \d+ tensors, the network has \d+"):
        load_initial_weights(resnet(blocks=(1, 1, 1)), tmp_path / "model")

    other_head = resnet(n_classes=5, seed=5)  # another dataset's classes: the head stays fresh
    before = weights_of(other_head)
    report = load_initial_weights(other_head, tmp_path / "model")
    assert sorted(report["kept"]) == ["head.bias", "head.kernel"]
    after = weights_of(other_head)
    np.testing.assert_array_equal(after["head.kernel"], before["head.kernel"])
    np.testing.assert_array_equal(after["layers.0.conv1.kernel"], weights_of(source)["layers.0.conv1.kernel"])


def test_train_classifier_starts_from_the_weights(tmp_path):
    """With init_weights and a learning rate of ~0, the trained parameters are the file's (the
    BatchNorm statistics move with the one train-mode step, so they are not compared)."""
    x, y = toy_data()
    names = ["a", "b", "c"]
    train_classifier(x, y, x, y, names, RESNET, seed=0, total_steps=3).save(tmp_path / "model")
    source = load_classifier(tmp_path / "model")
    cfg = {**RESNET, "lr": 1e-12, "init_weights": str(tmp_path / "model")}
    started = weights_of(train_classifier(x, y, x, y, names, cfg, seed=1, total_steps=1).to_module())
    scratch = weights_of(
        train_classifier(x, y, x, y, names, {**RESNET, "lr": 1e-12}, seed=1, total_steps=1).to_module()
    )
    want = weights_of(source.to_module())
    params = [k for k in want if k.endswith(("kernel", "scale", "bias"))]
    assert len(params) > 10
    for k in params:
        np.testing.assert_allclose(started[k], want[k], atol=1e-6, err_msg=k)
    assert max(np.abs(scratch[k] - want[k]).max() for k in params) > 0.1


def torchvision_resnet18_state(n_classes=1000, in_channels=3) -> dict[str, np.ndarray]:
    """torchvision's resnet18 state-dict names and shapes (7x7 stem, fc of 1000), random values."""
    rng = np.random.default_rng(0)
    shapes = {"conv1.weight": (64, in_channels, 7, 7), "fc.weight": (n_classes, 512), "fc.bias": (n_classes,)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"bn1.{name}"] = (64,)
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{stage}.{j}"
            shapes[f"{p}.conv1.weight"] = (c, c_in if j == 0 else c, 3, 3)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            for bn in ("bn1", "bn2"):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{p}.{bn}.{name}"] = (c,)
            if j == 0 and stage > 1:
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{p}.downsample.1.{name}"] = (c,)
        c_in = c
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    state["bn1.num_batches_tracked"] = np.array(7)
    return state


def test_torchvision_resnet18_loads_all_but_the_stem_and_the_head(tmp_path):
    state = torchvision_resnet18_state()
    np.savez(tmp_path / "resnet18.npz", **state)
    model = resnet(in_channels=2, n_classes=4, width=64, blocks=(2, 2, 2, 2))
    report = load_initial_weights(model, tmp_path / "resnet18.npz")
    assert sorted(report["kept"]) == ["head.bias", "head.kernel", "stem.kernel"]  # 7x7 x 3 vs 3x3 x 2; 1000 vs 4
    assert len(report["loaded"]) == len(state) - 1 - 3 + 0  # every tensor but the counter, conv1 and fc
    w = weights_of(model)
    # layouts: conv OIHW -> HWIO, BatchNorm names, the downsample shortcut of stage 2
    np.testing.assert_array_equal(w["layers.0.conv1.kernel"], state["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        w["layers.2.project.kernel"], state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(w["layers.7.bn2.var"], state["layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(w["stem_bn.mean"], state["bn1.running_mean"])
    assert torch_name("layers.3.bn1.scale", model) == "layer2.1.bn1.weight"


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty", "npy", "unrelated", "folder without state"])
def test_bad_weight_files_name_the_file_and_the_key(tmp_path, case):
    path = tmp_path / "w.npz"
    if case == "corrupt":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "npy":
        path = tmp_path / "w.npy"
        np.save(path, np.zeros(3))
    elif case == "unrelated":
        np.savez(path, **{"encoder.0.weight": np.zeros((3, 3), np.float32)})
    elif case == "folder without state":
        path = tmp_path / "model"
        path.mkdir()
        (path / "meta.json").write_text("{}")
    with pytest.raises(BioaugError, match="classifier.init_weights") as err:
        load_initial_weights(resnet(), path)
    assert str(path) in str(err.value)


def test_config_checks_the_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_tiny_config()
    config["classifier"]["init_weights"] = "pretrained/none.npz"
    with pytest.raises(BioaugError, match=r"classifier.init_weights: pretrained/none.npz does not exist"):
        validate_config(config)
    (tmp_path / "w.npz").write_bytes(b"")
    config = load_tiny_config()
    config["classifier"].update(init_weights="w.npz", command="python train.py {train} {val} {predict} {out}")
    with pytest.raises(BioaugError, match="init_weights: has no effect with classifier.command"):
        validate_config(config)


@pytest.mark.slow
def test_real_torch_weights_give_the_same_logits(tmp_path, readers_venv):
    """A PyTorch ResNet (torchvision's names, bioaug's small-tile layout), its .pth converted by
    torch_weights.py in a torch environment: bioaug's network computes the same logits."""
    py = str(readers_venv["python"])
    subprocess.run([py, str(REPO / "tests" / "byo" / "torch_resnet.py"), str(tmp_path), "2", "3", "8", "1,2,1"],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    convert = REPO / "workflow" / "bioaug" / "classifier" / "torch_weights.py"
    proc = subprocess.run([py, str(convert), str(tmp_path / "model.pth"), str(tmp_path / "model.npz")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = resnet(in_channels=2, n_classes=3, width=8, blocks=(1, 2, 1))
    report = load_initial_weights(model, tmp_path / "model.npz")
    assert report["kept"] == []
    x = np.load(tmp_path / "x.npy")
    np.testing.assert_allclose(logits(model, x), np.load(tmp_path / "logits.npy"), rtol=1e-4, atol=1e-4)
    assert isinstance(model, ResNet) and nnx.graphdef(model) is not None
