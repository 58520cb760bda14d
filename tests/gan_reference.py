"""The reference `gan` section of the GAN tests and the benchmark.

`REFERENCE_GAN` holds the values GanConfig's own defaults had before the config was
validated (with defaults) by the schema alone; the tests and the benchmark build their
configs from it, so their numbers are those they always were. It is not the pipeline's
config.yaml (whose learning rates, conditional BN and mode seeking differ).
"""

from __future__ import annotations

from bioaug.gan import GanConfig

REFERENCE_GAN: dict = {
    "steps": 1500,
    "batch_size": 32,
    "z_dim": 64,
    "g_channels": [128, 64, 32],
    "d_channels": [32, 64, 128],
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": [0.0, 0.9],
    "loss": "hinge",
    "spectral_norm": True,
    "conditional_bn": False,
    "g_output": "tanh",
    "tanh_scale": 1.0,
    "g_padding": "zeros",
    "pixel_noise": "none",
    "noise_inputs": False,
    "diffaugment": ["color", "translation", "cutout"],
    "real_symmetry": "none",
    "ema_half_life_steps": 50.0,
    "checkpoint_every": 250,
    "log_every": 50,
    "seed": 0,
    "ada": False,
    "augment_p": 0.0,
    "ada_target": 0.6,
    "ada_interval": 4,
    "ada_kimg": None,
    "r1_gamma": 0.0,
    "r1_interval": 16,
    "lecam_weight": 0.0,
    "mode_seeking_weight": 0.0,
    "feature_discriminator": False,
    "conditional_transition": None,
    "compute_dtype": "float32",
}


def gan_section(**overrides) -> dict:
    """A complete `gan` section: REFERENCE_GAN with `overrides` (keys must exist)."""
    unknown = set(overrides) - set(REFERENCE_GAN)
    if unknown:
        raise KeyError(f"not gan keys: {sorted(unknown)}")
    return {**REFERENCE_GAN, **overrides}


def gan_config(tile_size: int, channels: int, n_classes: int, **overrides) -> GanConfig:
    """GanConfig.from_section of `gan_section(**overrides)` for data of that shape."""
    return GanConfig.from_section(gan_section(**overrides), tile_size, channels, n_classes)
