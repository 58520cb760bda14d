"""Class-conditional GAN (JAX/Flax NNX/Optax/Orbax) that learns rare classes' tiles.

  config.py          GanConfig: the validated `gan` config section
  networks.py        Generator, projection Discriminator, functional spectral norm,
                     fast upsample+conv and im2col forms, float32 / bfloat16 compute
  augment.py         DiffAugment (color, translation, cutout), pure JAX, optional
                     per-image probability p (adaptive augmentation)
  losses.py          hinge and non-saturating losses, LeCam regulariser
  input_pipeline.py  class-balanced, restartable index batches; in-memory, memory-mapped
                     and sharded tile sources; background (prefetching) batch loader
  train.py           train_gan: jitted data-parallel step (all devices), ADA, R1, LeCam,
                     EMA generator, checkpoints/resume, logs, export
  sample.py          load_generator / sample_tiles from an exported EMA generator
"""

from .config import GanConfig
from .sample import GeneratorHandle, load_generator, sample_tiles
from .train import train_gan

__all__ = ["GanConfig", "GeneratorHandle", "load_generator", "sample_tiles", "train_gan"]
