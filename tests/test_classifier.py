"""bioaug.classifier: SmallCNN and the seeded, validation-selected training loop.

A tiny synthetic 3-class problem (16x16x2 tiles) keeps the whole file fast on a CPU.
The classes are invariant to flips, 90-degree rotations and intensity jitter, so the
"classic augmentation" arm can learn them too:
  0: bright 8x8 centre square in channel 0
  1: bright 8x8 centre square in channel 1
  2: bright 2-pixel border ring in both channels
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bioaug.classifier import SmallCNN, TrainedClassifier, train_classifier
from bioaug.classifier.train import balanced_sampling_probs, class_loss_weights
from bioaug.metrics import classification_metrics

NAMES = ["centre0", "centre1", "ring"]
CFG = {"epochs": 4, "batch_size": 32, "lr": 3e-3, "channels": [8, 16], "unknown_key": "ignored"}


def make_tiles(n: int, rng: np.random.Generator, class_p=None):
    y = rng.choice(3, size=n, p=class_p)
    x = rng.uniform(0.0, 0.35, (n, 16, 16, 2)).astype(np.float32)
    for i, c in enumerate(y):
        if c < 2:
            x[i, 4:12, 4:12, c] += 0.5
        else:
            x[i, :2] += 0.5
            x[i, -2:] += 0.5
            x[i, 2:-2, :2] += 0.5
            x[i, 2:-2, -2:] += 0.5
    return np.clip(x, 0.0, 1.0), y.astype(np.int64)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(123)
    tx, ty = make_tiles(300, rng)
    vx, vy = make_tiles(90, rng)
    return tx, ty, vx, vy


@pytest.fixture(scope="module")
def trained(data) -> TrainedClassifier:
    tx, ty, vx, vy = data
    return train_classifier(tx, ty, vx, vy, NAMES, CFG, seed=0)


def _check_proba(p, n):
    assert p.shape == (n, 3) and p.dtype == np.float32
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------- model


def test_small_cnn_shapes_and_modes():
    # nnx.jit keeps this fast: eager init/forward compile every op separately on CPU
    model = nnx.jit(lambda: SmallCNN(2, 5, [4, 8], rngs=nnx.Rngs(0)))()
    forward = nnx.jit(lambda m, x: m(x))
    x = jnp.ones((3, 16, 16, 2))
    model.eval()
    assert model.dropout.deterministic is True
    assert model.blocks[1].bn2.use_running_average is True
    assert forward(model, x).shape == (3, 5)
    np.testing.assert_array_equal(forward(model, x), forward(model, x))  # eval is deterministic
    model.train()
    assert model.dropout.deterministic is False
    assert model.blocks[0].bn1.use_running_average is False
    mean_before = np.asarray(model.blocks[0].bn1.mean[...])
    assert forward(model, x).shape == (3, 5)
    # train mode updates BatchNorm running statistics in place
    assert not np.array_equal(np.asarray(model.blocks[0].bn1.mean[...]), mean_before)


# ---------------------------------------------------------------------------- training


def test_learns_and_selects_by_validation(trained, data):
    _, _, vx, vy = data
    h = trained.history
    assert [e["epoch"] for e in h] == [1, 2, 3, 4]
    assert set(h[0]) == {"epoch", "steps", "train_loss", "val_macro_f1", "val_balanced_accuracy", "seconds"}
    assert [e["steps"] for e in h] == [300 // 32] * 4  # one pass over the train tiles per epoch
    # selection: first argmax of val macro-F1 (ties -> earlier epoch)
    assert trained.best_epoch == int(np.argmax([e["val_macro_f1"] for e in h])) + 1
    best = h[trained.best_epoch - 1]
    assert best["val_balanced_accuracy"] > 0.8

    proba = trained.predict_proba(vx)
    _check_proba(proba, len(vx))
    m = classification_metrics(vy, proba.argmax(1), proba, NAMES)
    # the returned state *is* the selected epoch's model
    assert m["macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert m["balanced_accuracy"] == pytest.approx(best["val_balanced_accuracy"])
    assert m["balanced_accuracy"] > 0.8
    assert trained.class_names == NAMES


def test_predict_proba_batching(trained, data):
    _, _, vx, _ = data
    full = trained.predict_proba(vx)
    np.testing.assert_allclose(trained.predict_proba(vx, batch_size=7), full, atol=1e-5)
    np.testing.assert_allclose(trained.predict_proba(vx[:5]), full[:5], atol=1e-5)
    assert trained.predict_proba(vx[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match="channels"):
        trained.predict_proba(vx[..., :1])


def test_deterministic_per_seed(trained, data):
    tx, ty, vx, vy = data
    again = train_classifier(tx, ty, vx, vy, NAMES, CFG, seed=0)
    assert again.best_epoch == trained.best_epoch
    np.testing.assert_array_equal(again.predict_proba(vx), trained.predict_proba(vx))
    other = train_classifier(tx, ty, vx, vy, NAMES, CFG, seed=1)
    assert not np.array_equal(other.predict_proba(vx), trained.predict_proba(vx))


@pytest.mark.parametrize(
    "opts",
    [
        {"augment": True},
        {"class_weighted": True},
        {"balanced_sampling": True},
        {"augment": True, "class_weighted": True, "balanced_sampling": True},
    ],
    ids=["augment", "class_weighted", "balanced_sampling", "all"],
)
def test_options_run(data, opts):
    tx, ty, vx, vy = data
    rng = np.random.default_rng(7)  # imbalanced train set, so weights/sampling matter
    tx, ty = make_tiles(200, rng, class_p=[0.75, 0.2, 0.05])
    model = train_classifier(tx, ty, vx, vy, NAMES, {**CFG, "epochs": 3}, seed=3, **opts)
    assert len(model.history) == 3 and 1 <= model.best_epoch <= 3
    _check_proba(model.predict_proba(vx), len(vx))


def test_augment_still_learns(data):
    tx, ty, vx, vy = data
    model = train_classifier(tx, ty, vx, vy, NAMES, CFG, seed=0, augment=True)
    assert model.history[model.best_epoch - 1]["val_balanced_accuracy"] > 0.8


def test_train_smaller_than_batch_and_logging(data, caplog):
    tx, ty, vx, vy = data
    log = logging.getLogger("bioaug.test_classifier")
    with caplog.at_level(logging.INFO, logger=log.name):
        model = train_classifier(tx[:10], ty[:10], vx, vy, NAMES, {**CFG, "epochs": 2}, seed=0, log=log)
    _check_proba(model.predict_proba(vx[:4]), 4)
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert "train_loss" in epoch_lines[0] and "val_macro_f1" in epoch_lines[0]


def test_class_weights_and_sampling_probs():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_loss_weights(y, 4)  # class 3 absent
    assert w[y].mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w[:3] * np.array([6, 3, 1]), w[0] * 6)  # inverse frequency
    assert w[3] == 0
    p = balanced_sampling_probs(y, 4)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.bincount(y, weights=p, minlength=3), [1 / 3] * 3)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty_train", "train_x is empty"),
        ("empty_val", "val_x is empty"),
        ("label_range", "out of range"),
        ("len_mismatch", "train_y has"),
        ("tile_mismatch", "H, W, C must match"),
        ("not_4d", r"\(N, H, W, C\)"),
        ("one_class", "at least 2 class"),
    ],
)
def test_value_errors(data, case, match):
    tx, ty, vx, vy = data
    tx, ty, vx, vy = tx[:20], ty[:20], vx[:10], vy[:10]
    names, cfg = NAMES, CFG
    if case == "empty_train":
        tx, ty = tx[:0], ty[:0]
    elif case == "empty_val":
        vx, vy = vx[:0], vy[:0]
    elif case == "label_range":
        ty = ty.copy()
        ty[3] = 3
    elif case == "len_mismatch":
        ty = ty[:-1]
    elif case == "tile_mismatch":
        vx = vx[..., :1]
    elif case == "not_4d":
        tx = tx[..., 0]
    elif case == "one_class":
        names = ["only"]
    with pytest.raises(ValueError, match=match):
        train_classifier(tx, ty, vx, vy, names, cfg, seed=0)


def test_save_load_features_roundtrip(tmp_path):
    from bioaug.classifier import load_classifier

    rng = np.random.default_rng(7)
    x, y = make_tiles(120, rng)
    vx, vy = make_tiles(30, rng)
    model = train_classifier(x, y, vx, vy, NAMES, {**CFG, "epochs": 1}, seed=0)
    model.save(tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    np.testing.assert_allclose(loaded.predict_proba(vx), model.predict_proba(vx), rtol=1e-6, atol=1e-6)
    feats = loaded.features(vx)
    assert feats.shape == (30, CFG["channels"][-1]) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats, model.features(vx), rtol=1e-6, atol=1e-6)
    assert loaded.class_names == NAMES and loaded.best_epoch == model.best_epoch


# --------------------------------------------------------------- each arm's option does what it says


@pytest.fixture
def step_calls(monkeypatch):
    """Every call of the compiled training step, recorded: (augment flag, class weights, the
    epoch's minibatch indices), then run as usual."""
    import bioaug.classifier.train as train_module

    calls, real_step = [], train_module._train_step

    def spy(graphdef, augment, params, rest, opt_state, loss_sum, step, lr, train_x, train_y, class_w, idx, key):
        calls.append({"augment": augment, "class_w": np.asarray(class_w), "idx": np.asarray(idx), "step": int(step),
                      "hyper": np.asarray(lr)})  # fmt: skip
        return real_step(graphdef, augment, params, rest, opt_state, loss_sum, step, lr, train_x, train_y, class_w,
                         idx, key)  # fmt: skip

    monkeypatch.setattr(train_module, "_train_step", spy)
    return calls


@pytest.mark.parametrize("arm", ["real", "real+classic", "oversample", "class_weights"])
def test_each_arm_option_reaches_the_training_step(data, step_calls, arm):
    """The arms' options (arms.py) change what they should, where the training happens:
    class_weights the loss weights, oversample the batch composition, real+classic the
    inputs; the other arms leave them as they are."""
    from bioaug.arms import training_options

    _, _, vx, vy = data
    tx, ty = make_tiles(300, np.random.default_rng(9), class_p=[0.8, 0.15, 0.05])  # the shapes of `trained`
    train_classifier(tx, ty, vx, vy, NAMES, {**CFG, "epochs": 1}, seed=1, **training_options(arm))
    assert step_calls and {c["augment"] for c in step_calls} == {arm == "real+classic"}
    weights = step_calls[0]["class_w"]
    if arm == "class_weights":
        np.testing.assert_allclose(weights, class_loss_weights(ty, 3), rtol=1e-6)
        assert weights[2] > 10 * weights[0]
    else:
        np.testing.assert_array_equal(weights, np.ones(3))
    epochs = [c["idx"].ravel() for c in step_calls if c["step"] == 0]  # one index matrix per epoch
    share_rare = np.mean(ty[np.concatenate(epochs)] == 2)
    if arm == "oversample":
        assert share_rare > 0.25  # about 1/3 of every batch, against 5% of the tiles
    else:
        assert share_rare < 0.1 and all(len(np.unique(e)) == len(e) for e in epochs)  # each tile once an epoch


def test_feature_classifier_trains_on_class_balanced_batches(data, step_calls, monkeypatch, tmp_path):
    """The quality metrics' feature space must separate the rarest class too: the stage draws
    class-uniform batches (here ~1/3 rare tiles against 5% of the train set)."""
    import pandas as pd

    from bioaug.stages import feature_classifier as stage

    _, _, vx, vy = data
    tx, ty = make_tiles(300, np.random.default_rng(9), class_p=[0.8, 0.15, 0.05])
    rows = pd.DataFrame({"tile_id": [], "item_id": [], "label": [], "split": []})
    monkeypatch.setattr(stage, "read_items", lambda path: None)
    monkeypatch.setattr(stage, "class_names", lambda items: NAMES)
    monkeypatch.setattr(
        stage, "load_tiles", lambda npys, items, splits: (tx, ty, rows) if splits == ("train",) else (vx, vy, rows)
    )
    stage.run("items.csv", [], {**CFG, "epochs": 1}, tmp_path / "fc")
    epochs = [c["idx"].ravel() for c in step_calls if c["step"] == 0]
    assert epochs and np.mean(ty[np.concatenate(epochs)] == 2) > 0.25
    assert (tmp_path / "fc" / "tiles.csv").exists()


def test_class_weights_change_the_loss_and_augmentation_the_inputs():
    """The pieces the options switch on: the weighted loss differs from the plain one by the
    weights, and the augmentation returns a flipped / rotated, jittered copy of every tile."""
    import jax

    from bioaug.classifier.train import _augment

    x = np.random.default_rng(0).random((64, 8, 8, 2)).astype(np.float32)
    out = np.asarray(_augment(jax.random.key(0), jnp.asarray(x)))
    assert out.shape == x.shape and not np.allclose(out, x)
    for a, b in zip(x, out):  # each output is one of the 8 dihedral transforms of its input, scaled by 0.9-1.1
        candidates = [np.rot90(f, k, axes=(0, 1)) for f in (a, a[:, ::-1]) for k in range(4)]
        ratios = [np.median(b / np.maximum(c, 1e-6)) for c in candidates]
        errs = [np.abs(np.clip(c * r, 0, 1) - b).max() for c, r in zip(candidates, ratios)]
        assert min(errs) < 1e-4 and 0.89 < ratios[int(np.argmin(errs))] < 1.11


# --------------------------------------------------------------- ResNet, recipe, step budget


RESNET = {**CFG, "architecture": "resnet", "width": 8, "blocks": [1, 1, 1], "schedule": "cosine", "weight_decay": 5e-4}


def test_resnet_shapes_any_channel_count():
    from bioaug.classifier.model import ResNet

    for c in (1, 3, 5):
        model = ResNet(c, 4, 8, [2, 2, 2, 2], rngs=nnx.Rngs(0))
        x = jnp.zeros((2, 32, 32, c))
        assert model(x).shape == (2, 4) and model.features(x).shape == (2, 64)
        assert model.channels == (8, 16, 32, 64)
    # ResNet-18: 4 stages of 2 basic blocks, about 11 M parameters at width 64 (3 channels, 10 classes);
    # counted on abstract shapes (nnx.eval_shape), so nothing is initialised
    r18 = nnx.eval_shape(lambda: ResNet(3, 10, 64, [2, 2, 2, 2], rngs=nnx.Rngs(0)))
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(r18, nnx.Param)))
    assert 11.0e6 < n_params < 11.3e6
    with pytest.raises(ValueError, match="at least one stage"):
        ResNet(3, 2, 8, [], rngs=nnx.Rngs(0))


def test_resnet_learns_and_round_trips(data, tmp_path):
    from bioaug.classifier import load_classifier

    tx, ty, vx, vy = data
    model = train_classifier(tx, ty, vx, vy, NAMES, RESNET, seed=0)
    assert model.history[model.best_epoch - 1]["val_balanced_accuracy"] > 0.8
    model.save(tmp_path / "m")
    back = load_classifier(tmp_path / "m")
    np.testing.assert_allclose(back.predict_proba(vx), model.predict_proba(vx), atol=1e-6)
    assert back.features(vx[:3]).shape == (3, 32)


def test_schedule_and_weight_decay_reach_every_step(data, step_calls):
    """cosine: the rate falls from lr to near 0 over the run; constant: lr throughout; the
    weight decay rides along with every step."""
    tx, ty, vx, vy = data
    train_classifier(tx, ty, vx, vy, NAMES, {**RESNET, "epochs": 2}, seed=0)
    rates = [float(c["hyper"][0]) for c in step_calls]
    assert rates[0] == pytest.approx(CFG["lr"]) and rates[-1] < 0.01 * CFG["lr"]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and len(rates) == 2 * (300 // 32)
    assert [float(c["hyper"][1]) for c in step_calls] == pytest.approx([5e-4] * len(step_calls))
    step_calls.clear()
    train_classifier(tx, ty, vx, vy, NAMES, {**CFG, "epochs": 1}, seed=0)
    assert [float(c["hyper"][0]) for c in step_calls] == pytest.approx([CFG["lr"]] * len(step_calls))
    assert {float(c["hyper"][1]) for c in step_calls} == {0.0}


def test_step_budget_is_the_same_for_a_larger_train_set(data, step_calls):
    """total_steps: an arm with 3x the tiles trains for the same number of steps (in the same
    number of validation rounds), not 3x as many."""
    tx, ty, vx, vy = data
    big_x, big_y = np.concatenate([tx] * 3), np.concatenate([ty] * 3)
    budget = 3 * (300 // 32)
    model = train_classifier(big_x, big_y, vx, vy, NAMES, {**CFG, "epochs": 3}, seed=0, total_steps=budget)
    assert [e["steps"] for e in model.history] == [budget // 3] * 3 and len(step_calls) == budget
    step_calls.clear()
    model = train_classifier(big_x, big_y, vx, vy, NAMES, {**CFG, "epochs": 3}, seed=0)  # epochs: 3 passes
    assert sum(e["steps"] for e in model.history) == 3 * (900 // 32) == len(step_calls)
    step_calls.clear()  # more steps than one pass: the rounds draw fresh permutations
    model = train_classifier(tx, ty, vx, vy, NAMES, {**CFG, "epochs": 2}, seed=0, total_steps=25)
    assert [e["steps"] for e in model.history] == [13, 12]
    first = np.concatenate([c["idx"].ravel() for c in step_calls[:1]])
    assert np.bincount(first, minlength=300).max() <= 2  # each tile at most twice in 13 x 32 draws


@pytest.mark.parametrize("arch", ["small_cnn", "resnet"])
def test_bfloat16_compute_learns_and_round_trips(data, tmp_path, arch):
    """compute_dtype bfloat16: the convolutions run in bfloat16 (it changes the logits), the
    parameters and BatchNorm statistics stay float32, the model still learns, and a saved
    model loads back in bfloat16 with the same predictions."""
    from bioaug.classifier import load_classifier

    tx, ty, vx, vy = data
    base = RESNET if arch == "resnet" else CFG
    model = train_classifier(tx, ty, vx, vy, NAMES, {**base, "compute_dtype": "bfloat16"}, seed=0)
    assert model.history[model.best_epoch - 1]["val_balanced_accuracy"] > 0.8
    module = model.to_module()
    assert module.compute_dtype == "bfloat16"
    leaves = jax.tree.leaves(nnx.state(module, (nnx.Param, nnx.BatchStat)))
    assert leaves and {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    proba = model.predict_proba(vx)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert model.features(vx[:4]).dtype == np.float32
    # the same weights computed in float32 give different (not just re-rounded) outputs
    from bioaug.classifier.train import _init_model, network_key

    f32 = _init_model(module.in_channels, module.n_classes, network_key(module), "float32", jax.random.key(1))
    f32.eval()
    nnx.update(f32, nnx.state(module, (nnx.Param, nnx.BatchStat)))
    logits_bf16 = np.asarray(module(jnp.asarray(vx[:16])))
    logits_f32 = np.asarray(f32(jnp.asarray(vx[:16])))
    assert not np.array_equal(logits_bf16, logits_f32)
    np.testing.assert_allclose(logits_bf16, logits_f32, atol=0.25 * np.abs(logits_f32).max())
    model.save(tmp_path / "m")
    back = load_classifier(tmp_path / "m")
    assert back.to_module().compute_dtype == "bfloat16"
    np.testing.assert_allclose(back.predict_proba(vx), proba, atol=1e-6)


def test_unknown_compute_dtype_is_an_error(data):
    tx, ty, vx, vy = data
    with pytest.raises(ValueError, match="compute_dtype"):
        train_classifier(tx, ty, vx, vy, NAMES, {**CFG, "compute_dtype": "float16"}, seed=0)
