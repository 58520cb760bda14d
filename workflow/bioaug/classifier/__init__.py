"""Downstream classifier: a small CNN (Flax NNX) and its seeded, validation-selected training loop."""

from .model import SmallCNN
from .train import TrainedClassifier, train_classifier

__all__ = ["SmallCNN", "TrainedClassifier", "train_classifier"]
