"""train_gan stage: the class-conditional GAN on the train split's tiles (`bioaug.gan`).

The GAN never sees validation or test tiles. The tiles stay in the memory-mapped shards
(streamed per batch), so a training set larger than memory trains. Checkpoints live under
`checkpoint_root`, one folder per run identity (`bioaug.gan.state`), outside the declared
outputs, so a failed, killed or preempted job resumes, and so does raising `gan.steps`.
"""

from __future__ import annotations

from ..classifier import load_classifier
from ..formats.items import class_names, read_items
from ..gan import train_gan
from ..gan.input_pipeline import sharded_tiles
from ..runtime import atomic_path

PROVENANCE_COLUMNS = ["tile_id", "item_id", "label", "split"]


def run(
    items_csv,
    shard_npys,
    cfg: dict,
    *,
    checkpoint_root,
    generator_dir,
    log_csv,
    samples_png,
    training_tiles_csv,
    feature_classifier=None,
) -> dict:
    """The train_gan stage; `cfg` is the validated `gan` section; `feature_classifier` the
    feature classifier's folder (with gan.feature_discriminator)."""
    items = read_items(items_csv)
    x, y, rows = sharded_tiles(shard_npys, items, splits=("train",))
    with atomic_path(training_tiles_csv) as tmp:  # provenance: exactly what the GAN saw
        rows[PROVENANCE_COLUMNS].to_csv(tmp, index=False)
    return train_gan(
        x,
        y,
        class_names(items),
        cfg,
        checkpoint_root=checkpoint_root,
        data_key="\n".join(sorted(rows["tile_id"].astype(str))),
        generator_dir=generator_dir,
        log_csv=log_csv,
        samples_png=samples_png,
        feature_net=load_classifier(feature_classifier) if feature_classifier else None,
    )
