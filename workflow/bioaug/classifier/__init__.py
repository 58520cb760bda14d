"""Downstream classifier (Flax NNX): one arm, one seed.

model.py      SmallCNN and ResNet, the networks
train.py      the seeded, validation-selected training loop; TrainedClassifier (predict,
              features, save / load_classifier)
external.py   classifier.command: the user's own classifier, run on the arm's tiles
"""

from .model import SmallCNN
from .train import TrainedClassifier, load_classifier, train_classifier

__all__ = ["SmallCNN", "TrainedClassifier", "load_classifier", "train_classifier"]
