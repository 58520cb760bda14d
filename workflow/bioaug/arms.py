"""The arms: ways of handling class imbalance, compared with one classifier, budget and seeds.

  real              the real train tiles as they are
  real+classic      real tiles with classic augmentation (flips, 90° rotations, intensity jitter)
  oversample        real tiles, minibatches drawn class-balanced (rare tiles repeated)
  class_weights     real tiles, loss weighted by inverse class frequency
  real+gan          the balanced dataset: real train tiles + synthetic tiles
  real+gan+classic  the balanced dataset with classic augmentation
  gan_only          synthetic tiles only (every generated tile), tested on real data
`data` says where an arm's training tiles come from; the other keys are options of
`bioaug.classifier.train_classifier`.
"""

from __future__ import annotations

ARMS = {
    "real": {"data": "real"},
    "real+classic": {"data": "real", "augment": True},
    "oversample": {"data": "real", "balanced_sampling": True},
    "class_weights": {"data": "real", "class_weighted": True},
    "real+gan": {"data": "balanced"},
    "real+gan+classic": {"data": "balanced", "augment": True},
    "gan_only": {"data": "synthetic"},
}


def uses_gan(arm: str) -> bool:
    """Whether the arm trains on synthetic tiles (and so reruns when the GAN changes)."""
    return ARMS[arm]["data"] != "real"


def training_options(arm: str) -> dict:
    """The train_classifier options of an arm (everything but `data`)."""
    return {k: v for k, v in ARMS[arm].items() if k != "data"}
