"""`GanConfig`: the `gan` config section as a typed, frozen (hashable) dataclass.

The section is validated once, before it gets here (the JSON schema, with its defaults, and
the cross-key rules of `bioaug.config`), so `from_section` only converts: lists to tuples
and numbers to the field's type. Three fields come from the data, not the config (tile
size, channels, number of classes). Also the values derived from the settings: the EMA
decay and the adaptive augmentation's speed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ADA_MAX_KIMG = 500.0  # StyleGAN2-ADA: p can go 0 -> 1 in 500k real images
ADA_AUTO_FRACTION = 0.1  # ... or, for shorter runs, in a tenth of the run's images
DATA_FIELDS = ("tile_size", "channels", "n_classes", "noise_variance", "feature_dim")

# Numbers written either way in YAML (50 or 50.0): one type, so that equal settings give
# equal configs, run identities and exported metadata.
_FLOATS = (
    "lr_g",
    "lr_d",
    "ema_half_life_steps",
    "augment_p",
    "ada_target",
    "r1_gamma",
    "lecam_weight",
    "mode_seeking_weight",
    "tanh_scale",
)
_INTS = ("steps", "batch_size", "z_dim", "checkpoint_every", "log_every", "seed", "ada_interval", "r1_interval")


@dataclasses.dataclass(frozen=True)
class GanConfig:
    """Everything the GAN stage needs; the first three fields come from the data, not the config."""

    tile_size: int
    channels: int
    n_classes: int
    steps: int
    batch_size: int
    z_dim: int
    g_channels: tuple[int, ...]
    d_channels: tuple[int, ...]
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    loss: str  # hinge | nonsaturating
    spectral_norm: bool
    conditional_bn: bool  # class-dependent BN scale/shift in G (off: the reference net)
    g_output: str  # tanh | linear: G's last activation (linear: clipped only when sampling)
    tanh_scale: float  # G's output is tanh * this (> 1: headroom beyond the data's [-1, 1])
    g_padding: str  # zeros | edge: how G's convs pad (edge: no dark frame at the tile's edge)
    pixel_noise: str  # none | fitted: G's output carries the real tiles' pixel noise (noise_model.py)
    noise_inputs: bool  # per-pixel noise with learned strengths after every G conv (StyleGAN)
    diffaugment: tuple[str, ...]
    real_symmetry: str  # none | dihedral: random rotations/flips of the real tiles D sees
    ema_half_life_steps: float
    checkpoint_every: int
    log_every: int
    seed: int
    # Adaptive augmentation (StyleGAN2-ADA heuristic applied to DiffAugment).
    ada: bool  # false: DiffAugment on every image (p = 1)
    augment_p: float  # initial augmentation probability when ada is on
    ada_target: float  # target of r_t = E[sign(D(real))]
    ada_interval: int  # steps between adjustments of p
    ada_kimg: float | None  # thousands of real images for p to go 0 -> 1 (None: auto)
    # Regularisers of D.
    r1_gamma: float  # R1 penalty gamma/2 E||grad_x D(x_real)||^2; 0 = off
    r1_interval: int  # lazy R1: every this many steps, scaled by it
    lecam_weight: float  # LeCam regulariser weight; 0 = off
    # Regulariser of G.
    mode_seeking_weight: float  # MSGAN diversity term: pairs of z, same class; 0 = off
    # A second D head on the real-trained feature classifier's features (networks.FeatureHead).
    feature_discriminator: bool
    # Unconditional-to-conditional training (steps [start, end]; None: conditional throughout).
    conditional_transition: tuple[int, int] | None
    compute_dtype: str  # matmul/conv operands: float32 | bfloat16
    # From the data, with pixel_noise fitted: ((a per channel), (b per channel)) of the noise
    # variance a * I + b that G adds to its output (noise_model.fit_noise_model).
    noise_variance: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # From the data, with feature_discriminator: the width of the feature classifier's features.
    feature_dim: int = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """Keys of the `gan` config section (the data-derived fields excluded)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in DATA_FIELDS)

    @classmethod
    def from_section(cls, section: dict[str, Any], tile_size: int, channels: int, n_classes: int) -> GanConfig:
        """The GanConfig of a validated `gan` section (every key present, no others).

        No checks here: a missing or unknown key is a TypeError of the constructor.
        """
        kw = dict(section)
        for key in ("g_channels", "d_channels"):
            kw[key] = tuple(int(c) for c in kw[key])
        kw["betas"] = tuple(float(b) for b in kw["betas"])
        kw["diffaugment"] = tuple(kw["diffaugment"])
        for key in _FLOATS:
            kw[key] = float(kw[key])
        for key in _INTS:
            kw[key] = int(kw[key])
        if kw["conditional_transition"] is not None:
            kw["conditional_transition"] = tuple(int(v) for v in kw["conditional_transition"])
        if kw["ada_kimg"] is not None:
            kw["ada_kimg"] = float(kw["ada_kimg"])
        return cls(tile_size=int(tile_size), channels=int(channels), n_classes=int(n_classes), **kw)

    # ------------------------------------------------------------------ derived values
    @property
    def ema_beta(self) -> float:
        return 0.5 ** (1.0 / self.ema_half_life_steps)

    @property
    def ada_images(self) -> float:
        """Real images over which ADA can move p from 0 to 1.

        `ada_kimg` * 1000 when set; otherwise StyleGAN2-ADA's 500k images, shortened to a
        tenth of this run's images (steps * batch_size) for short runs, so that p can
        actually reach the level the data needs within the run.
        """
        if self.ada_kimg is not None:
            return self.ada_kimg * 1000.0
        return max(
            min(ADA_MAX_KIMG * 1000.0, ADA_AUTO_FRACTION * self.steps * self.batch_size),
            float(self.batch_size * self.ada_interval),
        )

    @property
    def ada_adjust(self) -> float:
        """The change of p per adjustment (every `ada_interval` steps)."""
        return self.batch_size * self.ada_interval / self.ada_images

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists instead of tuples), data-derived fields included."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
