"""Downstream classifier (Flax NNX): one arm, one seed.

model.py      SmallCNN and ResNet, the networks
train.py      the seeded, validation-selected training loop; TrainedClassifier (predict,
              features, save / load_classifier)
external.py   classifier.command: the user's own classifier, run on the arm's tiles
init_weights.py  classifier.init_weights: start from the user's weights (bioaug or torchvision names)
torch_weights.py the .pth -> .npz converter for those weights (run where torch is; standalone)
"""

from .model import SmallCNN
from .train import TrainedClassifier, load_classifier, train_classifier

__all__ = ["SmallCNN", "TrainedClassifier", "load_classifier", "train_classifier"]
