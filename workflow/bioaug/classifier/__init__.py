"""Downstream classifier (Flax NNX): one arm, one seed.

model.py   SmallCNN, the network
train.py   the seeded, validation-selected training loop; TrainedClassifier (predict,
           features, save / load_classifier)
"""

from .model import SmallCNN
from .train import TrainedClassifier, load_classifier, train_classifier

__all__ = ["SmallCNN", "TrainedClassifier", "load_classifier", "train_classifier"]
