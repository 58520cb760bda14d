"""Training loop for the downstream classifier (one arm, one seed).

The training step is a pure jitted function over explicit NNX state (``nnx.split`` /
``nnx.merge``). Per epoch the host uploads one index matrix, dispatches the steps
asynchronously (no host sync per step) and reads back one summed loss and one set of
validation predictions. All randomness comes from ``jax.random`` keys derived
from ``seed`` (init, dropout, augmentation) and a ``numpy`` Generator seeded from ``seed``
(shuffling / balanced sampling), so a run is reproducible on one device.

Model selection uses only the validation split: the returned state is the one with the
best validation macro-F1 (ties -> earlier epoch). This module never sees test data.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.metrics import f1_score, recall_score

from .model import COMPUTE_DTYPES, ResNet, SmallCNN, min_tile_size

_LOG = logging.getLogger("bioaug.classifier")

# Adam's moment estimates; the learning rate is applied separately as a traced scalar so
# the compiled step function is shared by every call with the same architecture/shapes.
_ADAM = optax.scale_by_adam()

JITTER = 0.10  # multiplicative intensity jitter of the classic augmentation (+-10%)


# ----------------------------------------------------------------------------- result


@dataclass
class TrainedClassifier:
    """The selected (best-on-validation) model, in eval mode, as an NNX split."""

    graphdef: Any
    state: Any
    class_names: list[str]
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_module(self) -> SmallCNN | ResNet:
        """The stateful network (eval mode) holding the selected weights."""
        return nnx.merge(self.graphdef, self.state)

    def predict_proba(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Softmax class probabilities, shape (N, n_classes), float32.

        Runs in fixed-size jitted batches (the last one padded), so repeated calls with
        different N reuse the same compiled function.
        """
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"predict_proba expects tiles shaped (N, H, W, C), got shape {x.shape}")
        in_channels = self.to_module().in_channels
        if x.shape[-1] != in_channels:
            raise ValueError(f"predict_proba: tiles have {x.shape[-1]} channels, the model expects {in_channels}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        proba = _predict(self.graphdef, (self.state,), jnp.asarray(x, jnp.float32), batch_size)
        return np.asarray(proba)

    def features(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features of the selected model, shape (N, channels[-1])."""
        x = np.asarray(x, np.float32)
        out = [
            np.asarray(_features_batch(self.graphdef, self.state, jnp.asarray(x[i : i + batch_size])))
            for i in range(0, len(x), batch_size)
        ]
        width = self.to_module().channels[-1]
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def save(self, directory) -> None:
        """Write the selected model to `directory` (meta.json + state.npz), atomically."""
        import json
        from pathlib import Path

        from ..runtime import atomic_path
        from .init_weights import flat_weights, weight_state

        module = self.to_module()
        weights = flat_weights(weight_state(module))  # weights, not RNG keys; in leaf order
        with atomic_path(directory) as tmp:
            Path(tmp).mkdir()
            np.savez(Path(tmp) / "state.npz", *[np.asarray(v.get_value()) for v in weights.values()])
            meta = {
                "in_channels": module.in_channels,
                "n_classes": module.n_classes,
                "architecture": list(network_key(module)),
                "compute_dtype": module.compute_dtype,
                "channels": list(module.channels),
                "weight_names": list(weights),  # of state.npz's arrays, in order
                "class_names": self.class_names,
                "best_epoch": self.best_epoch,
                "history": self.history,
            }
            (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2))


def load_classifier(directory) -> TrainedClassifier:
    """Read a model written by TrainedClassifier.save."""
    import json
    from pathlib import Path

    meta = json.loads((Path(directory) / "meta.json").read_text())
    arch = meta.get("architecture", ["small_cnn", meta["channels"]])  # folders written before ResNet
    arch = (arch[0], *(tuple(a) if isinstance(a, list) else a for a in arch[1:]))
    dtype = meta.get("compute_dtype", "float32")  # folders written before mixed precision: float32
    model = _init_model(meta["in_channels"], meta["n_classes"], arch, dtype, jax.random.key(0))
    model.eval()
    weights = nnx.state(model, (nnx.Param, nnx.BatchStat))
    with np.load(Path(directory) / "state.npz") as z:
        leaves = [jnp.asarray(z[f"arr_{i}"]) for i in range(len(z.files))]
    nnx.update(model, jax.tree.unflatten(jax.tree.structure(weights), leaves))
    graphdef, state = nnx.split(model)
    return TrainedClassifier(
        graphdef=graphdef,
        state=state,
        class_names=meta["class_names"],
        best_epoch=meta["best_epoch"],
        history=meta.get("history", []),
    )


# ------------------------------------------------------------------------ jitted pieces


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _features_batch(graphdef, state, x):
    return nnx.merge(graphdef, state, copy=True).features(x)


def architecture(cfg: dict) -> tuple:
    """The network a validated classifier section asks for, as a hashable key:
    ("small_cnn", channels) or ("resnet", width, blocks)."""
    if cfg.get("architecture", "small_cnn") == "resnet":
        return ("resnet", int(cfg["width"]), tuple(int(b) for b in cfg["blocks"]))
    return ("small_cnn", tuple(int(c) for c in cfg["channels"]))


def network_key(module) -> tuple:
    if isinstance(module, ResNet):
        return ("resnet", module.width, module.blocks_per_stage)
    return ("small_cnn", module.channels)


@functools.partial(nnx.jit, static_argnums=(0, 1, 2, 3))
def _init_model(in_channels: int, n_classes: int, arch: tuple, dtype: str, key: jax.Array) -> SmallCNN | ResNet:
    # Initialising under jit compiles once (and hits the persistent compilation cache);
    # eager init dispatches and compiles every initialiser op separately (seconds on CPU).
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {dtype!r}")
    if arch[0] == "resnet":
        return ResNet(in_channels, n_classes, arch[1], list(arch[2]), rngs=nnx.Rngs(key), dtype=COMPUTE_DTYPES[dtype])
    return SmallCNN(in_channels, n_classes, list(arch[1]), rngs=nnx.Rngs(key), dtype=COMPUTE_DTYPES[dtype])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _proba_batch(graphdef, states, x):
    model = nnx.merge(graphdef, *states, copy=True)
    return jax.nn.softmax(model(x).astype(jnp.float32), axis=-1)


def _eval_batch_size(n: int, batch_size: int) -> int:
    """min(batch_size, next power of two >= n): few distinct shapes, at most 2x padding."""
    return max(1, min(int(batch_size), 1 << max(0, math.ceil(math.log2(max(n, 1))))))


def _predict(graphdef, states, x: jax.Array, batch_size: int) -> jax.Array:
    """Softmax over x in fixed-size batches (last one zero-padded); stays on device."""
    n = x.shape[0]
    bs = _eval_batch_size(n, batch_size)
    n_pad = (-n) % bs
    if n_pad:
        x = jnp.concatenate([x, jnp.zeros((n_pad, *x.shape[1:]), x.dtype)])
    outs = [_proba_batch(graphdef, states, x[i : i + bs]) for i in range(0, x.shape[0], bs)]
    return jnp.concatenate(outs)[:n]


def _augment(key: jax.Array, x: jax.Array) -> jax.Array:
    """Classic augmentation per sample: flips, 90-degree rotations, intensity jitter."""
    n, h, w = x.shape[0], x.shape[1], x.shape[2]
    k_h, k_v, k_rot, k_int = jax.random.split(key, 4)

    def bcast(mask):
        return mask[:, None, None, None]

    x = jnp.where(bcast(jax.random.bernoulli(k_h, 0.5, (n,))), x[:, :, ::-1, :], x)
    x = jnp.where(bcast(jax.random.bernoulli(k_v, 0.5, (n,))), x[:, ::-1, :, :], x)
    rot = jax.random.randint(k_rot, (n,), 0, 4)
    if h != w:
        rot = 2 * (rot % 2)  # non-square tiles: only 0 and 180 degrees keep the shape
    for k in (1, 2, 3) if h == w else (2,):
        x = jnp.where(bcast(rot == k), jnp.rot90(x, k, axes=(1, 2)), x)
    scale = jax.random.uniform(k_int, (n, 1, 1, 1), x.dtype, 1.0 - JITTER, 1.0 + JITTER)
    return jnp.clip(x * scale, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "augment"))
def _train_step(graphdef, augment, params, rest, opt_state, loss_sum, step, lr, train_x, train_y, class_w, idx, key):
    """One Adam step on minibatch ``idx[step]``; returns the new state and ``loss_sum + loss``.

    ``lr`` is (learning rate, weight decay) of this step: traced, so a schedule does not
    recompile. Weight decay is decoupled (AdamW) and applies to kernels, not BN or biases.

    Everything stays on device: the epoch's index matrix is uploaded once and indexed
    here with the traced ``step``, the step's key is ``fold_in(key, step)``, and the loss
    is accumulated on device so the host syncs once per epoch. (A whole-epoch
    ``lax.scan`` would save the per-step dispatch, but XLA:CPU runs convolutions inside a
    loop body ~30x slower -- jax-ml/jax#12868 -- so the loop stays in Python.)
    """

    def loss_fn(params, rest, x, y, dropout_key):
        # copy=True: the Variables must belong to this trace level so BatchNorm can
        # update its running statistics inside the traced function.
        model = nnx.merge(graphdef, params, rest, copy=True)
        logits = model(x, dropout_key=dropout_key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        loss = jnp.mean(class_w[y] * ce)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, new_rest

    k_aug, k_drop = jax.random.split(jax.random.fold_in(key, step))
    batch_idx = jax.lax.dynamic_index_in_dim(idx, step, keepdims=False)
    x = jnp.take(train_x, batch_idx, axis=0)
    y = jnp.take(train_y, batch_idx, axis=0)
    if augment:
        x = _augment(k_aug, x)
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y, k_drop)
    updates, opt_state = _ADAM.update(grads, opt_state, params)
    rate, decay = lr[0], lr[1]
    params = jax.tree.map(lambda p, u: p - rate * (u + decay * p if p.ndim > 1 else u), params, updates)
    return params, rest, opt_state, loss_sum + loss


# ---------------------------------------------------------------------------- checks


def _check_split(name: str, x, y, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"{name}_x must be shaped (N, H, W, C), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}_x is empty: the {name} split has no items")
    if y.ndim != 1:
        raise ValueError(f"{name}_y must be 1-D, got shape {y.shape}")
    if len(y) != len(x):
        raise ValueError(f"{name}_x has {len(x)} items but {name}_y has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"{name}_y must hold integer class indices, got dtype {y.dtype}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(
            f"{name}_y has label {y[bad][0]!r} out of range [0, {n_classes}) ({int(bad.sum())} labels out of range)"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}_x contains non-finite values")
    return x.astype(np.float32, copy=False), y.astype(np.int32)


def _val_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Macro-F1 (sklearn's default label set: classes in y_true or y_pred) and balanced
    accuracy (mean recall over classes present in y_true) -- as in bioaug.metrics."""
    macro_f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
    bal_acc = recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
    return float(macro_f1), float(bal_acc)


def class_loss_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class loss weights inversely proportional to class frequency in ``y``.

    ``w_c = N / (K_present * n_c)`` (0 for classes absent from ``y``), so the mean of
    ``w[y]`` over the samples is exactly 1.
    """
    counts = np.bincount(np.asarray(y), minlength=n_classes)
    present = counts > 0
    return np.where(present, len(y) / (present.sum() * np.maximum(counts, 1)), 0.0)


def balanced_sampling_probs(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample draw probabilities giving every class present in ``y`` equal total mass."""
    counts = np.bincount(np.asarray(y), minlength=n_classes)
    p = 1.0 / ((counts > 0).sum() * counts[np.asarray(y)])
    return p / p.sum()


# ------------------------------------------------------------------------------ train


def train_classifier(
    train_x,
    train_y,
    val_x,
    val_y,
    class_names: list[str],
    cfg: dict,
    seed: int,
    *,
    augment: bool = False,
    class_weighted: bool = False,
    balanced_sampling: bool = False,
    total_steps: int | None = None,
    log: logging.Logger | None = None,
) -> TrainedClassifier:
    """Train the network of ``cfg`` on the train split, select the epoch by validation macro-F1.

    Args:
      train_x, val_x: float tiles (N, H, W, C) in [0, 1].
      train_y, val_y: integer labels in [0, len(class_names)).
      class_names: class index -> name.
      cfg: the validated ``classifier`` (or ``feature_classifier``) section: epochs,
        batch_size, lr, architecture (small_cnn: channels; resnet: width, blocks),
        schedule (constant | cosine), weight_decay, init_weights, compute_dtype (float32 |
        bfloat16: mixed precision, parameters stay float32) (other keys ignored).
      seed: drives init, dropout, augmentation and sampling.
      augment: random flips / 90-degree rotations / +-10% intensity jitter, on device.
      class_weighted: per-class loss weights inversely proportional to train frequency,
        normalised to mean 1 over the training samples.
      balanced_sampling: each epoch draws len(train) indices with class-uniform
        probability (with replacement), oversampling rare classes.
      total_steps: optimiser steps in all (a budget shared by arms with different numbers of
        tiles); the ``epochs`` rounds then split them evenly, each ending with a validation.
        None: ``epochs`` passes over the train tiles.
      log: logger for one line per epoch (default ``bioaug.classifier``).
    """
    log = log or _LOG
    class_names = [str(c) for c in class_names]
    n_classes = len(class_names)
    if n_classes < 2:
        raise ValueError(f"need at least 2 class names, got {class_names}")
    if len(set(class_names)) != n_classes:
        raise ValueError(f"class_names has duplicates: {class_names}")
    epochs, batch_size, lr = cfg["epochs"], cfg["batch_size"], cfg["lr"]
    arch = architecture(cfg)
    train_x, train_y = _check_split("train", train_x, train_y, n_classes)
    val_x, val_y = _check_split("val", val_x, val_y, n_classes)
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ValueError(
            f"train tiles are {train_x.shape[1:]} but val tiles are {val_x.shape[1:]} (H, W, C must match)"
        )
    n_train, h, w, c = train_x.shape
    min_side = min_tile_size(arch[0], cfg.get("channels", ()), cfg.get("blocks", ()))
    if min(h, w) < min_side:
        raise ValueError(f"tiles of {h}x{w} are too small for the {arch[0]} network {arch[1:]} (need >= {min_side})")

    # --- randomness: everything from `seed`
    root = jax.random.key(seed)
    k_init, k_train = jax.random.split(root)
    np_rng = np.random.default_rng(seed)

    # --- model and its functional state (train- and eval-mode graphdefs, one state)
    model = _init_model(c, n_classes, arch, cfg.get("compute_dtype", "float32"), k_init)
    if cfg.get("init_weights"):  # the user's pretrained weights, where names and shapes match
        from .init_weights import load_initial_weights

        load_initial_weights(model, cfg["init_weights"])
    model.eval()
    gd_eval, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    gd_train, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = _ADAM.init(params)

    # --- class loss weights and per-sample sampling probabilities
    class_w = class_loss_weights(train_y, n_classes) if class_weighted else np.ones(n_classes)
    sample_p = balanced_sampling_probs(train_y, n_classes) if balanced_sampling else None

    bs = min(batch_size, n_train)  # a train set smaller than one batch trains on one full-set batch
    n_steps = n_train // bs  # partial last batch dropped (always leaves >= 1 batch)
    total = int(total_steps) if total_steps else epochs * n_steps
    round_steps = [total // epochs + (r < total % epochs) for r in range(epochs)]  # steps before each validation
    if min(round_steps) < 1:
        raise ValueError(f"total_steps {total} is fewer than the {epochs} epochs (validation rounds)")
    # the learning rate of every step (cosine: from lr to 0 over the run), and the weight decay
    rates = np.full(total, lr, np.float32)
    if cfg.get("schedule", "constant") == "cosine":
        rates = (lr * 0.5 * (1 + np.cos(np.pi * np.arange(total) / total))).astype(np.float32)
    hyper_d = jnp.asarray(np.stack([rates, np.full(total, cfg.get("weight_decay", 0.0), np.float32)], axis=1))

    # --- arrays live on device for the whole run
    train_x_d = jnp.asarray(train_x)
    train_y_d = jnp.asarray(train_y)
    class_w_d = jnp.asarray(class_w, jnp.float32)
    val_x_d = jnp.asarray(val_x)
    steps_d = [jnp.asarray(i, jnp.int32) for i in range(max(round_steps))]  # uploaded once

    log.info(
        "training %s%s (%s) on %d tiles %dx%dx%d (%d classes), val %d; %d steps of %d in %d rounds (%.1f passes); "
        "augment=%s class_weighted=%s balanced_sampling=%s seed=%d",
        arch[0],
        list(arch[1:]),
        cfg.get("compute_dtype", "float32"),
        n_train,
        h,
        w,
        c,
        n_classes,
        len(val_x),
        total,
        bs,
        epochs,
        total * bs / n_train,
        augment,
        class_weighted,
        balanced_sampling,
        seed,
    )

    history: list[dict] = []
    best_f1 = -math.inf
    best_epoch = 0
    best_states = (params, rest)
    done = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        steps = round_steps[epoch - 1]
        need = steps * bs
        if sample_p is not None:
            order = np_rng.choice(n_train, size=max(n_train, need), replace=True, p=sample_p)
        else:  # passes over the train tiles, each a fresh permutation
            order = np.concatenate([np_rng.permutation(n_train) for _ in range(-(-need // n_train))])
        idx = jnp.asarray(order[:need].reshape(steps, bs).astype(np.int32))
        ekey = jax.random.fold_in(k_train, epoch)
        loss_sum = jnp.zeros((), jnp.float32)
        hyper_round = hyper_d[done : done + steps]
        for step in range(steps):
            params, rest, opt_state, loss_sum = _train_step(
                gd_train,
                bool(augment),
                params,
                rest,
                opt_state,
                loss_sum,
                steps_d[step],
                hyper_round[step],
                train_x_d,
                train_y_d,
                class_w_d,
                idx,
                ekey,
            )
        val_pred = np.asarray(jnp.argmax(_predict(gd_eval, (params, rest), val_x_d, 512), axis=-1))
        val_f1, val_bal = _val_scores(val_y, val_pred)
        train_loss = float(loss_sum) / steps
        done += steps
        seconds = time.perf_counter() - t0
        history.append(
            {
                "epoch": epoch,
                "steps": steps,
                "train_loss": train_loss,
                "val_macro_f1": val_f1,
                "val_balanced_accuracy": val_bal,
                "seconds": seconds,
            }
        )
        log.info(
            "epoch %d/%d train_loss %.4f val_macro_f1 %.4f val_balanced_accuracy %.4f (%.1fs, ETA %.0f s)",
            epoch,
            epochs,
            train_loss,
            val_f1,
            val_bal,
            seconds,
            seconds * (epochs - epoch),
        )
        if not math.isfinite(train_loss):
            log.warning("epoch %d: training loss is not finite (%s)", epoch, train_loss)
        if val_f1 > best_f1:  # strict: ties keep the earlier epoch
            best_f1, best_epoch, best_states = val_f1, epoch, (params, rest)

    log.info("selected epoch %d (val macro-F1 %.4f)", best_epoch, best_f1)
    best_model = nnx.merge(gd_eval, *best_states, copy=True)
    graphdef, state = nnx.split(best_model)
    return TrainedClassifier(
        graphdef=graphdef, state=state, class_names=class_names, best_epoch=best_epoch, history=history
    )
