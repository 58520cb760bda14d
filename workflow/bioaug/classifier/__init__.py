"""Downstream classifier: a small CNN (Flax NNX) and its seeded, validation-selected training loop."""

from .model import SmallCNN
from .train import TrainedClassifier, load_classifier, train_classifier

__all__ = ["SmallCNN", "TrainedClassifier", "load_classifier", "train_classifier"]
