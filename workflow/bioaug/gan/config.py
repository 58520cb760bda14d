"""The `gan` section of the config, validated into a typed `GanConfig`."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from bioaug.runtime import BioaugError

AUGMENT_POLICIES = ("color", "translation", "cutout")
LOSSES = ("hinge", "nonsaturating")
COMPUTE_DTYPES = ("float32", "bfloat16")
ADA_MAX_KIMG = 500.0      # StyleGAN2-ADA: p can go 0 -> 1 in 500k real images
ADA_AUTO_FRACTION = 0.1   # ... or, for shorter runs, in a tenth of the run's images

# Keys whose change makes an existing checkpoint unusable (the parameter shapes differ).
ARCHITECTURE_KEYS = ("z_dim", "g_channels", "d_channels", "spectral_norm", "conditional_bn",
                     "tile_size", "channels", "n_classes")


@dataclasses.dataclass(frozen=True)
class GanConfig:
    """Everything the GAN stage needs; the first three fields come from the data, not the config."""

    tile_size: int
    channels: int
    n_classes: int
    steps: int = 1500
    batch_size: int = 32
    z_dim: int = 64
    g_channels: tuple[int, ...] = (128, 64, 32)
    d_channels: tuple[int, ...] = (32, 64, 128)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    loss: str = "hinge"
    spectral_norm: bool = True
    conditional_bn: bool = False      # class-dependent BN scale/shift in G (off: the reference net)
    diffaugment: tuple[str, ...] = ("color", "translation", "cutout")
    ema_half_life_steps: float = 50.0
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0
    # Adaptive augmentation (StyleGAN2-ADA heuristic applied to DiffAugment).
    ada: bool = False                 # false: DiffAugment on every image (p = 1)
    augment_p: float = 0.0            # initial augmentation probability when ada is on
    ada_target: float = 0.6           # target of r_t = E[sign(D(real))]
    ada_interval: int = 4             # steps between adjustments of p
    ada_kimg: float | None = None     # thousands of real images for p to go 0 -> 1 (None: auto)
    # Regularisers of D.
    r1_gamma: float = 0.0             # R1 penalty gamma/2 E||grad_x D(x_real)||^2; 0 = off
    r1_interval: int = 16             # lazy R1: every this many steps, scaled by it
    lecam_weight: float = 0.0         # LeCam regulariser weight; 0 = off
    # Regulariser of G.
    mode_seeking_weight: float = 0.0  # MSGAN diversity term: pairs of z, same class; 0 = off
    compute_dtype: str = "float32"    # matmul/conv operands: float32 | bfloat16

    # ------------------------------------------------------------------ construction
    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """Keys of the `gan` config section (the data-derived fields excluded)."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name not in ("tile_size", "channels", "n_classes"))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, tile_size: int, channels: int,
                  n_classes: int) -> "GanConfig":
        """Validate the `gan` config section; errors name the offending key."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.config_keys()))
        if unknown:
            raise BioaugError(
                f"gan: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys are {', '.join(cls.config_keys())}")
        tile_size = _int("tiles.size", tile_size, 4)
        channels = _int("tiles.channels", channels, 1)
        n_classes = _int("number of classes", n_classes, 1)
        kw: dict[str, Any] = {}
        for key in ("steps", "batch_size", "z_dim", "checkpoint_every", "log_every",
                    "ada_interval", "r1_interval"):
            if key in d:
                kw[key] = _int(f"gan.{key}", d[key], 2 if key == "batch_size" else 1)
        if "seed" in d:
            kw["seed"] = _int("gan.seed", d["seed"], 0)
        for key in ("g_channels", "d_channels"):
            if key in d:
                v = d[key]
                if not isinstance(v, (list, tuple)) or not v:
                    raise BioaugError(f"gan.{key}: expected a non-empty list of channel counts, got {v!r}")
                kw[key] = tuple(_int(f"gan.{key}[{i}]", c, 1) for i, c in enumerate(v))
        for key in ("lr_g", "lr_d"):
            if key in d:
                kw[key] = _float(f"gan.{key}", d[key])
                if not kw[key] > 0:
                    raise BioaugError(f"gan.{key}: learning rate must be > 0, got {d[key]!r}")
        if "ema_half_life_steps" in d:
            kw["ema_half_life_steps"] = _float("gan.ema_half_life_steps", d["ema_half_life_steps"])
            if not kw["ema_half_life_steps"] > 0:
                raise BioaugError(f"gan.ema_half_life_steps: must be > 0, got {d['ema_half_life_steps']!r}")
        if "ada" in d:
            if not isinstance(d["ada"], bool):
                raise BioaugError(f"gan.ada: expected true or false, got {d['ada']!r}")
            kw["ada"] = d["ada"]
        for key, lo, hi in (("augment_p", 0.0, 1.0), ("ada_target", 0.0, 1.0)):
            if key in d:
                kw[key] = _float(f"gan.{key}", d[key])
                if not lo <= kw[key] <= hi:
                    raise BioaugError(f"gan.{key}: must be in [{lo:g}, {hi:g}], got {d[key]!r}")
        if d.get("ada_kimg") is not None:
            kw["ada_kimg"] = _float("gan.ada_kimg", d["ada_kimg"])
            if not kw["ada_kimg"] > 0:
                raise BioaugError(f"gan.ada_kimg: must be > 0 (or null: automatic), "
                                  f"got {d['ada_kimg']!r}")
        for key in ("r1_gamma", "lecam_weight", "mode_seeking_weight"):
            if key in d:
                kw[key] = _float(f"gan.{key}", d[key])
                if kw[key] < 0:
                    raise BioaugError(f"gan.{key}: must be >= 0 (0 turns it off), got {d[key]!r}")
        if "compute_dtype" in d:
            if d["compute_dtype"] not in COMPUTE_DTYPES:
                raise BioaugError(f"gan.compute_dtype: expected one of {', '.join(COMPUTE_DTYPES)}, "
                                  f"got {d['compute_dtype']!r}")
            kw["compute_dtype"] = d["compute_dtype"]
        if "betas" in d:
            v = d["betas"]
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise BioaugError(f"gan.betas: expected [b1, b2], got {v!r}")
            betas = tuple(_float(f"gan.betas[{i}]", b) for i, b in enumerate(v))
            if not all(0.0 <= b < 1.0 for b in betas):
                raise BioaugError(f"gan.betas: each beta must be in [0, 1), got {list(v)!r}")
            kw["betas"] = betas
        if "loss" in d:
            if d["loss"] not in LOSSES:
                raise BioaugError(f"gan.loss: expected one of {', '.join(LOSSES)}, got {d['loss']!r}")
            kw["loss"] = d["loss"]
        for key in ("spectral_norm", "conditional_bn"):
            if key in d:
                if not isinstance(d[key], bool):
                    raise BioaugError(f"gan.{key}: expected true or false, got {d[key]!r}")
                kw[key] = d[key]
        if "diffaugment" in d:
            v = d["diffaugment"]
            if v is None:
                v = []
            if not isinstance(v, (list, tuple)):
                raise BioaugError(f"gan.diffaugment: expected a list from {list(AUGMENT_POLICIES)}, got {v!r}")
            bad = [p for p in v if p not in AUGMENT_POLICIES]
            if bad:
                raise BioaugError(f"gan.diffaugment: unknown augmentation(s) {bad!r}; "
                                  f"choose from {list(AUGMENT_POLICIES)}")
            if len(set(v)) != len(v):
                raise BioaugError(f"gan.diffaugment: repeated entries in {list(v)!r}")
            kw["diffaugment"] = tuple(v)

        cfg = cls(tile_size=tile_size, channels=channels, n_classes=n_classes, **kw)
        cfg._check_shapes()
        if cfg.mode_seeking_weight > 0 and cfg.batch_size % 2:
            raise BioaugError(f"gan.batch_size: {cfg.batch_size} must be even with "
                              f"gan.mode_seeking_weight > 0 (the term compares pairs of samples)")
        return cfg

    def _check_shapes(self) -> None:
        n_up = len(self.g_channels)
        if 4 * 2 ** n_up != self.tile_size:
            need = math.log2(self.tile_size / 4) if self.tile_size >= 4 else float("nan")
            hint = (f"; use {int(need)} entries" if need == int(need) and need >= 1
                    else "; tiles.size must be 4 * 2**k")
            raise BioaugError(
                f"gan.g_channels: {n_up} block{'s' if n_up != 1 else ''} give "
                f"{4 * 2 ** n_up} px tiles but tiles.size is {self.tile_size}{hint}")
        n_down = len(self.d_channels)
        if self.tile_size % 2 ** n_down:
            raise BioaugError(
                f"gan.d_channels: {n_down} stride-2 blocks need tiles.size divisible by "
                f"{2 ** n_down}, but it is {self.tile_size}")

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
        return max(min(ADA_MAX_KIMG * 1000.0, ADA_AUTO_FRACTION * self.steps * self.batch_size),
                   float(self.batch_size * self.ada_interval))

    @property
    def ada_adjust(self) -> float:
        """The change of p per adjustment (every `ada_interval` steps)."""
        return self.batch_size * self.ada_interval / self.ada_images

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists instead of tuples), data-derived fields included."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _int(key: str, v: Any, minimum: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise BioaugError(f"{key}: expected an integer, got {v!r}")
    v = int(v)
    if v < minimum:
        raise BioaugError(f"{key}: must be >= {minimum}, got {v}")
    return v


def _float(key: str, v: Any) -> float:
    if isinstance(v, bool):
        raise BioaugError(f"{key}: expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BioaugError(f"{key}: expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise BioaugError(f"{key}: expected a finite number, got {v!r}")
    return f
