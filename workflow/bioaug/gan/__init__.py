"""Class-conditional GAN (JAX/Flax NNX/Optax/Orbax) that learns rare classes' tiles.

  config.py          GanConfig: the validated `gan` config section
  networks.py        Generator, projection Discriminator, functional spectral norm
  augment.py         DiffAugment (color, translation, cutout), pure JAX
  losses.py          hinge and non-saturating losses
  input_pipeline.py  class-balanced, restartable index batches
  train.py           train_gan: jitted step, EMA generator, checkpoints/resume, logs, export
  sample.py          load_generator / sample_tiles from an exported EMA generator
"""

from .config import GanConfig
from .sample import GeneratorHandle, load_generator, sample_tiles
from .train import train_gan

__all__ = ["GanConfig", "GeneratorHandle", "load_generator", "sample_tiles", "train_gan"]
