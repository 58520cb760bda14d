"""Class-conditional GAN (JAX/Flax NNX/Optax/Orbax) that learns rare classes' tiles.

config.py          GanConfig: the (already validated) `gan` section as a frozen dataclass
networks.py        layers and networks: Generator, projection Discriminator, spectral norm
ops.py             fast conv kernels: fused upsample+conv, im2col, custom-VJP matmul / conv
losses.py          the objective: D/G losses, LeCam, lazy R1, mode seeking, D's and G's objectives
augment.py         DiffAugment (color, translation, cutout), optional per-image probability p
noise_model.py     the real tiles' pixel noise (variance a * I + b per channel), fitted for G's output
input_pipeline.py  class-balanced restartable batches, tile sources, background batch loader
devices.py         multi-process start-up, data-parallel mesh, shardings, host reads
step.py            the jitted train step, its runtime hyperparameters, the Adam optimiser
state.py           train state init, checkpoint restore, run identity (the checkpoint folder)
train.py           train_gan: the loop, the CSV log, resume, export of the EMA generator
sample.py          BatchNorm recalibration, writing / loading the generator, sample_tiles
"""

from .config import GanConfig
from .sample import GeneratorHandle, load_generator, sample_tiles
from .train import train_gan

__all__ = ["GanConfig", "GeneratorHandle", "load_generator", "sample_tiles", "train_gan"]
