"""gan_quality stage: how good and how novel are the synthetic tiles, per class?

Feature space: the penultimate layer of a classifier trained on the real train split (the
feature classifier), so distances reflect what matters in this domain. Reported overall and
per class: FID and KID (synthetic vs real train), improved precision/recall (k=3),
density/coverage (k=5), and the memorisation audit (feature and pixel space). In pixel space,
per class: the classifier two-sample test (can a small CNN tell the class's real tiles from its
synthetic ones? accuracy 0.5 = no; gan_quality.two_sample_steps, 0 = off).

Each class also gets the same precision and two-sample test for its held-out real tiles (val and
test) in place of the synthetic ones: what a perfect generator would score at this class's sample
size, so a synthetic figure can be read against it (`heldout_precision`, `heldout_c2st_*`). Only
the metrics read the held-out tiles; nothing is trained or selected with them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..formats.items import class_names, read_items
from ..formats.shards import load_tiles
from ..formats.synthetic import read_synthetic
from ..metrics import get_metric
from ..runtime import atomic_path

log = logging.getLogger("bioaug.gan_quality")


def run(
    feature_classifier_dir, items_csv, shard_npys, synthetic_npys, cfg: dict, quality_csv, memorisation_csv, pairs_png
) -> None:
    """The gan_quality stage: the quality table, the memorisation audit and its figure."""
    from ..classifier import load_classifier

    quality, audit, (x_train, x_syn) = assess(
        load_classifier(feature_classifier_dir),
        read_items(items_csv),
        shard_npys,
        synthetic_npys,
        max_per_class=cfg["max_per_class"],
        two_sample_steps=cfg["two_sample_steps"],
    )
    with atomic_path(memorisation_csv) as tmp:
        audit.to_csv(tmp, index=False)
    with atomic_path(pairs_png) as tmp:
        plot_closest_pairs(audit, x_train, x_syn, tmp)
    with atomic_path(quality_csv) as tmp:
        quality.to_csv(tmp, index=False)


def assess(
    feature_clf,
    items: pd.DataFrame,
    shard_npys,
    synthetic_npys,
    max_per_class: int,
    seed: int = 0,
    two_sample_steps: int = 0,
):
    """Quality table (one row per class plus 'all') and the per-tile memorisation table."""
    names = class_names(items)
    x_train, y_train, train_rows = load_tiles(shard_npys, items, splits=("train",))
    # Held-out real tiles (val + test) only score the reference; the test ones also calibrate the
    # near-copy threshold. No model is trained or selected with them.
    x_held, y_held, held_rows = load_tiles(shard_npys, items, splits=("val", "test"))
    x_syn, y_syn, syn_meta = read_synthetic(synthetic_npys, names)
    f_train, f_held, f_syn = (feature_clf.features(x) for x in (x_train, x_held, x_syn))
    is_test = held_rows["split"].eq("test").to_numpy()
    x_test, f_test = x_held[is_test], f_held[is_test]
    rng = np.random.default_rng(seed)

    def cap(idx):
        return idx if len(idx) <= max_per_class else np.sort(rng.choice(idx, max_per_class, replace=False))

    rows = []
    for c, name in [(None, "all")] + list(enumerate(names)):
        tr = cap(np.arange(len(y_train)) if c is None else np.flatnonzero(y_train == c))
        sy = cap(np.arange(len(y_syn)) if c is None else np.flatnonzero(y_syn == c))
        row = {
            "class": name,
            "n_real_train": len(tr),
            "n_synthetic": len(sy),
            "fid": get_metric("fid")(f_train[tr], f_syn[sy]),
            "kid": get_metric("kid")(f_train[tr], f_syn[sy]),
        }
        row.update(get_metric("precision_recall")(f_train[tr], f_syn[sy], k=3))
        row.update(get_metric("density_coverage")(f_train[tr], f_syn[sy], k=5))
        if c is not None:  # per class only: the class mix of 'all' would decide it
            row.update(get_metric("two_sample")(x_train[tr], x_syn[sy], steps=two_sample_steps, seed=seed))
        row.update(heldout_reference(f_train[tr], x_train[tr], f_held, x_held, y_held, c, cap, two_sample_steps, seed))
        rows.append(row)
    quality = pd.DataFrame(rows)

    audit_rows = []
    for space, (tr, te, sy) in {"feature": (f_train, f_test, f_syn), "pixel": (x_train, x_test, x_syn)}.items():
        audit = get_metric("memorisation")(tr, te, sy)
        quality.loc[quality["class"] == "all", f"near_copy_share_{space}"] = audit["near_copy_share"]
        for c, name in enumerate(names):
            sel = y_syn == c
            quality.loc[quality["class"] == name, f"near_copy_share_{space}"] = (
                float((audit["distances"][sel] < audit["threshold"]).mean()) if sel.any() else np.nan
            )
        audit_rows.append(
            pd.DataFrame(
                {
                    "space": space,
                    "label": syn_meta["label"],
                    "seed": syn_meta["seed"],
                    "synthetic_index": np.arange(len(y_syn)),
                    "nearest_train_tile": train_rows["tile_id"].to_numpy()[audit["nearest_train"]],
                    "nearest_train_row": audit["nearest_train"],
                    "distance": audit["distances"],
                    "threshold": audit["threshold"],
                    "near_copy": audit["distances"] < audit["threshold"],
                }
            )
        )
    log.info("GAN quality:\n%s", quality.to_string(index=False))
    return quality, pd.concat(audit_rows, ignore_index=True), (x_train, x_syn)


def heldout_reference(f_train, x_train, f_held, x_held, y_held, c, cap, two_sample_steps: int, seed: int) -> dict:
    """Precision and two-sample test of the class's held-out real tiles against its train tiles
    (class `c`; None: all classes, precision only): the scores of a perfect generator here."""
    held = cap(np.arange(len(y_held)) if c is None else np.flatnonzero(y_held == c))
    out = {
        "n_real_heldout": len(held),
        "heldout_precision": get_metric("precision_recall")(f_train, f_held[held], k=3)["precision"],
    }
    if c is not None:
        c2st = get_metric("two_sample")(x_train, x_held[held], steps=two_sample_steps, seed=seed)
        out.update({f"heldout_{k}": v for k, v in c2st.items()})
    return out


def plot_closest_pairs(audit: pd.DataFrame, x_train: np.ndarray, x_syn: np.ndarray, path, n: int = 8) -> None:
    """The synthetic tiles closest to a training tile (pixel space), each beside that tile."""
    from ..viz import save_class_grid

    pix = audit[audit["space"] == "pixel"].nsmallest(n, "distance")
    rows = [x_syn[pix["synthetic_index"].to_numpy()], x_train[pix["nearest_train_row"].to_numpy()]]
    h, w, c = x_syn.shape[1:]
    dists = ", ".join(f"{d:.2f}" for d in pix["distance"])
    save_class_grid(
        path,
        ["synthetic", "nearest real train tile"],
        rows,
        title=(
            f"Closest synthetic/real pairs in pixel space (Euclidean distance over the {h}×{w}×{c} "
            "normalised intensities, each 0–1)\n"
            f"distance per pair, left to right: {dists}; near-copy threshold {pix['threshold'].iloc[0]:.2f} "
            "(1st percentile of the real test tiles' distance to the train set)"
        ),
    )
