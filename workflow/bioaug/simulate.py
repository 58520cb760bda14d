"""The built-in dataset: deterministic simulated 2-channel fluorescence microscopy fields.

Each field is a (2, H, W) uint16 image: channel 0 a nuclear/DNA stain, channel 1 a
cytoplasm stain. Cells of four known phenotypes are drawn so that a person can tell them
apart by eye on ~32x32 px crops:

  interphase  round/oval cell (cytoplasm radius ~7-9 px) with a smooth, round, mildly
              textured nucleus (radius ~4-5 px)
  elongated   cytoplasm ellipse with aspect ratio ~2.5-3.5 at a random orientation and an
              elongated nucleus aligned with it
  mitotic     rounded, slightly smaller and brighter cell with condensed chromatin: a
              bright compact bar (metaphase plate) or two bright separated bars (anaphase)
  apoptotic   shrunken, irregular, dim cytoplasm with a nucleus fragmented into 3-6 small,
              very bright dots

Any other class name gets a generic round cell whose size, shape and brightness vary with
the class's position in ``class_fractions``.

The image formation model is simple but has the usual ingredients: additive fluorophore
patches rendered per cell in a local window, a faint out-of-focus haze, optical blur,
smooth per-field uneven illumination, autofluorescence background plus a camera offset,
Poisson shot noise and Gaussian read noise. Pixel sizes are fixed (a larger field shows a
larger field of view, not bigger cells), so the pipeline's 32 px tiles fit every cell.

Three knobs make the task harder the way real samples are (``Imaging``; their defaults are
the demo, byte for byte): ``separation`` moves the three known phenotypes towards interphase
(aspect ratio and nucleus shape of elongated cells, chromatin brightness and cell size of
mitotic ones, shrinkage, dimming and fragment brightness of apoptotic ones), as in early or
ambiguous stages; ``signal`` scales every fluorophore's photon yield (a dim stain or a short
exposure: shot and read noise stay, so the signal-to-noise ratio falls); ``blur`` is the range
of the optical blur's sigma in px (a defocused or lower-NA acquisition).

Everything is drawn from one ``numpy.random.default_rng(seed)``: the same arguments give
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy.ndimage import gaussian_filter

__all__ = ["simulate_dataset", "class_counts", "KNOWN_CLASSES", "Imaging"]

KNOWN_CLASSES = ("interphase", "elongated", "mitotic", "apoptotic")

# Reference intensities (ADU above background, before illumination) of an average
# interphase nucleus and cytoplasm; the other classes are expressed relative to these.
_NUC0 = 9000.0
_CYT0 = 4200.0
_CAMERA_OFFSET = 400.0
_GAIN = 2.0  # ADU per photo-electron
_READ_NOISE = 25.0  # ADU
_BORDER = 10  # minimum distance of a cell centre from the field edge, px


@dataclasses.dataclass(frozen=True)
class Imaging:
    """How distinct the phenotypes are and how the microscope sees them (defaults: the demo).

    separation: 1 = the phenotypes as described above; towards 0 each known phenotype's
        distinguishing traits move linearly towards those of an interphase cell (0 excluded).
    signal: photon yield of every fluorophore relative to the demo's (background and camera
        noise unchanged).
    blur: (lo, hi) sigma in px of the Gaussian optical blur, drawn per field.
    """

    separation: float = 1.0
    signal: float = 1.0
    blur: tuple[float, float] = (0.7, 1.0)

    def __post_init__(self):
        for name in ("separation", "signal"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.separation > 1:
            raise ValueError(f"separation must be in (0, 1], got {self.separation!r}")
        try:
            lo, hi = (float(b) for b in self.blur)
        except (TypeError, ValueError):
            raise ValueError(f"blur must be a pair [lo, hi] of sigmas in px, got {self.blur!r}") from None
        if not (0 < lo <= hi <= 10):
            raise ValueError(f"blur must satisfy 0 < lo <= hi <= 10 (px), got {self.blur!r}")

    def toward_interphase(self, value, interphase_value):
        """A phenotype's trait at this separation (exactly `value` at 1, so the demo is unchanged)."""
        if self.separation == 1:
            return value
        return interphase_value + self.separation * (np.asarray(value) - interphase_value)


# --------------------------------------------------------------------------- validation


def _validate(n_images, image_size, cells_per_image, class_fractions) -> tuple[int, int, dict]:
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 64:
        raise ValueError(f"image_size must be an integer >= 64, got {image_size!r}")
    try:
        lo, hi = cells_per_image
    except (TypeError, ValueError):
        raise ValueError(f"cells_per_image must be a pair [lo, hi], got {cells_per_image!r}") from None
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"cells_per_image must hold integers, got {cells_per_image!r}")
    if lo < 1:
        raise ValueError(f"cells_per_image lower bound must be >= 1, got {cells_per_image!r}")
    if lo > hi:
        raise ValueError(f"cells_per_image must have lo <= hi, got {cells_per_image!r}")
    if not isinstance(class_fractions, dict) or not class_fractions:
        raise ValueError(
            f"class_fractions must be a non-empty mapping of class name to fraction, got {class_fractions!r}"
        )
    fr = {}
    for name, f in class_fractions.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"class_fractions keys must be non-empty strings, got {name!r}")
        try:
            fv = float(f)
        except (TypeError, ValueError):
            raise ValueError(f"class_fractions[{name!r}] must be a number, got {f!r}") from None
        if not math.isfinite(fv) or fv <= 0:
            raise ValueError(f"class_fractions[{name!r}] must be positive, got {f!r}")
        fr[name] = fv
    return int(lo), int(hi), fr


def class_counts(n_total: int, fractions: dict[str, float]) -> dict[str, int]:
    """Exact per-class counts for ``n_total`` cells by largest-remainder rounding.

    Fractions are normalised to sum to 1. When ``n_total >= len(fractions)`` every class
    gets at least one cell (taken from the classes with the most to spare). Ties are broken
    by the order of the classes.
    """
    names = list(fractions)
    f = np.array([fractions[n] for n in names], dtype=np.float64)
    quota = np.round(n_total * f / f.sum(), 9)  # 69.99999999 -> 70.0
    base = np.floor(quota).astype(np.int64)
    rem = quota - base
    short = n_total - int(base.sum())
    order = sorted(range(len(names)), key=lambda i: (-rem[i], i))
    for i in order[:short]:
        base[i] += 1
    if n_total >= len(names):
        for i in range(len(names)):
            while base[i] < 1:
                # take one from the class that is furthest above its own quota floor
                donors = [j for j in range(len(names)) if base[j] > 1]
                j = max(donors, key=lambda j: (base[j] - quota[j], base[j], -j))
                base[j] -= 1
                base[i] += 1
    return {n: int(c) for n, c in zip(names, base)}


# --------------------------------------------------------------------------- cell models


def _angular(rng, n_modes: int, amp: float) -> np.ndarray:
    """Random low-order boundary perturbation: rows of (k, amplitude, phase)."""
    ks = np.arange(2, 2 + n_modes, dtype=np.float64)
    amps = rng.normal(0.0, amp, n_modes) / np.sqrt(ks - 1)
    phases = rng.uniform(0, 2 * np.pi, n_modes)
    return np.stack([ks, amps, phases], axis=1)


def _draw_cell(kind: str, class_index: int, rng: np.random.Generator, look: Imaging = Imaging()) -> dict:
    """Draw the shape/brightness parameters of one cell. ``bound`` is its footprint radius.

    The parameters are drawn the same way whatever ``look`` says; its separation only maps
    them (so the demo's fields are unchanged by the knob's existence)."""
    mix = look.toward_interphase
    p: dict = {"kind": kind, "vn": float(np.exp(rng.normal(0, 0.15))), "vc": float(np.exp(rng.normal(0, 0.18)))}
    if kind == "interphase":
        a = rng.uniform(7.0, 9.0)
        p.update(
            cyto=(a, a * rng.uniform(0.82, 1.0), rng.uniform(0, np.pi)),
            cyto_pert=_angular(rng, 3, 0.05),
            cyto_amp=_CYT0,
            cyto_edge=0.9,
            nuc_off=rng.normal(0, 0.5, 2),
        )
        an = rng.uniform(4.0, 5.0)
        p.update(
            nuc=(an, an * rng.uniform(0.82, 1.0), rng.uniform(0, np.pi)),
            nuc_amp=_NUC0,
            nuc_tex=0.2,
            nucleoli=[(rng.uniform(-1.8, 1.8), rng.uniform(-1.8, 1.8)) for _ in range(int(rng.integers(1, 3)))],
        )
        p["bound"] = a
    elif kind == "elongated":
        b = rng.uniform(3.8, 4.8)
        a = b * mix(rng.uniform(2.5, 3.5), 1.9)  # interphase: radius ~8, so b * 1.9
        th = rng.uniform(0, np.pi)
        p.update(
            cyto=(a, b, th),
            cyto_pert=_angular(rng, 3, 0.04),
            cyto_amp=_CYT0 * 1.05,
            cyto_edge=0.9,
            nuc_off=rng.normal(0, 0.4, 2),
            # slight bend of the long axis and a tapering towards the tips
            bend=rng.normal(0, 0.012),
        )
        p.update(
            nuc=(mix(rng.uniform(5.2, 6.5), 4.5), mix(rng.uniform(2.4, 3.0), 4.1), th + rng.normal(0, 0.06)),
            nuc_amp=_NUC0 * 0.95,
            nuc_tex=0.15,
            nucleoli=[],
        )
        p["bound"] = 0.55 * a + 0.45 * b + 1.0
    elif kind == "mitotic":
        ana = bool(rng.random() < 0.45)
        r = mix(rng.uniform(6.0, 7.0), 8.0)
        asp = rng.uniform(1.2, 1.35) if ana else rng.uniform(1.0, 1.08)
        th = rng.uniform(0, np.pi)  # spindle axis
        p.update(
            cyto=(r * asp, r, th),
            cyto_pert=_angular(rng, 3, 0.02),
            cyto_amp=_CYT0 * mix(rng.uniform(1.6, 1.9), 1.0),
            cyto_edge=0.6,
            anaphase=ana,
            spindle=th,
            nuc_tex=0.25,
        )
        if ana:
            p.update(
                sep=mix(rng.uniform(2.4, 3.0), 0.0),
                bar=(mix(rng.uniform(3.0, 3.8), 4.5), mix(rng.uniform(0.8, 1.05), 2.0)),
                nuc_amp=_NUC0 * mix(rng.uniform(4.0, 4.8), 1.3),
            )
        else:
            bar = (mix(rng.uniform(3.6, 4.6), 4.5), mix(rng.uniform(0.95, 1.3), 4.0))
            # towards prophase: condensed chromatin in a still round nucleus, twice the DNA
            p.update(bar=bar, nuc_amp=_NUC0 * mix(rng.uniform(4.0, 4.8), 1.3))
        p["bound"] = r * asp
    elif kind == "apoptotic":
        r = mix(rng.uniform(4.5, 6.0), 8.0)
        nb = int(rng.integers(2, 5))
        ang = rng.uniform(0, 2 * np.pi, nb)
        rad = r * rng.uniform(0.85, 1.1, nb)
        p.update(
            cyto=(r, r * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi)),
            cyto_pert=_angular(rng, 5, 0.18),
            cyto_amp=_CYT0 * mix(rng.uniform(0.45, 0.65), 1.0),
            cyto_edge=0.7,
            cyto_tex=0.45,
            blebs=np.stack([rad * np.cos(ang), rad * np.sin(ang), rng.uniform(1.2, 2.2, nb)], axis=1),
        )
        nd = int(rng.integers(3, 7))
        # fragments scattered over the old nucleus, kept apart so they read as separate
        # dots after blurring; the first (largest) one sits near the cell centre
        dots = rng.normal(0.0, 0.5, (1, 2))
        min_sep = 3.6
        while len(dots) < nd:
            rr, aa = 4.2 * np.sqrt(rng.uniform(0, 1, 16)), rng.uniform(0, 2 * np.pi, 16)
            for xy in np.stack([rr * np.cos(aa), rr * np.sin(aa)], axis=1):
                if len(dots) < nd and np.hypot(*(dots - xy).T).min() >= min_sep:
                    dots = np.concatenate([dots, xy[None]])
            min_sep *= 0.97  # never loop forever
        sig = rng.uniform(0.45, 0.65, (nd, 1))
        sig[0] = rng.uniform(0.8, 1.0)  # the largest, pyknotic remnant
        amp = _NUC0 * mix(rng.uniform(6.0, 8.0, (nd, 1)), 1.0)
        p.update(dots=np.concatenate([dots, sig, amp], axis=1), nuc_amp=_NUC0 * mix(0.12, 1.0))
        p["bound"] = r + 1.5
    else:  # generic look for classes the simulator does not know
        k = class_index
        a = 5.5 + 1.5 * (k % 4) + rng.uniform(-0.5, 0.5)
        asp = 1.0 + 0.35 * (k % 3)
        an = min(3.0 + 0.8 * (k % 3), 0.6 * a)
        p.update(
            cyto=(a, a / asp, rng.uniform(0, np.pi)),
            cyto_pert=_angular(rng, 3, 0.05),
            cyto_amp=_CYT0 * (0.6 + 0.3 * (k % 5)),
            cyto_edge=0.9,
            nuc_off=rng.normal(0, 0.4, 2),
        )
        p.update(
            nuc=(an, min(an / (1.0 + 0.2 * (k % 3)), 0.7 * a / asp), p["cyto"][2]),
            nuc_amp=_NUC0 * (0.7 + 0.45 * (k % 4)),
            nuc_tex=0.15 + 0.05 * (k % 3),
            nucleoli=[],
        )
        p["kind"] = "generic"
        p["bound"] = a
    return p


def _rot(X, Y, th):
    c, s = math.cos(th), math.sin(th)
    return X * c + Y * s, -X * s + Y * c


def _soft_ellipse(X, Y, a, b, th, edge, pert=None):
    """Soft-edged filled ellipse (1 inside, 0 outside, tanh edge of width ~edge px)."""
    u, v = _rot(X, Y, th)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    if pert is not None:
        phi = np.arctan2(v / b, u / a)
        m = 1.0
        for k, amp, ph in pert:
            m = m + amp * np.cos(k * phi + ph)
        r = r / m
    d = (1.0 - r) * math.sqrt(a * b)
    return 0.5 * (1.0 + np.tanh(d / edge)), r


def _gauss(X, Y, x0, y0, sigma):
    return np.exp(-((X - x0) ** 2 + (Y - y0) ** 2) / (2.0 * sigma * sigma))


def _render_cell(p: dict, X: np.ndarray, Y: np.ndarray, tn: np.ndarray, tc: np.ndarray):
    """Nucleus and cytoplasm patches of one cell; X/Y are offsets from the cell centre."""
    kind = p["kind"]
    a, b, th = p["cyto"]
    if kind == "elongated":
        u, v = _rot(X, Y, th)
        v = v - p["bend"] * u * u  # gentle curvature of the long axis
        Xc, Yc = u, v
        cmask, r = _soft_ellipse(Xc, Yc, a, b, 0.0, p["cyto_edge"], p["cyto_pert"])
    else:
        cmask, r = _soft_ellipse(X, Y, a, b, th, p["cyto_edge"], p["cyto_pert"])
    dome = 0.7 + 0.3 * np.clip(1.0 - r * r, 0.0, 1.0)
    cyto = p["cyto_amp"] * p["vc"] * cmask * dome

    if kind in ("interphase", "elongated", "generic"):
        ox, oy = p["nuc_off"]
        an, bn, thn = p["nuc"]
        nmask, rn = _soft_ellipse(X - ox, Y - oy, an, bn, thn, 0.6)
        prof = (0.85 + 0.15 * np.clip(1.0 - rn * rn, 0.0, 1.0)) * (1.0 + p["nuc_tex"] * tn)
        for nx, ny in p["nucleoli"]:
            prof = prof * (1.0 - 0.3 * _gauss(X, Y, ox + nx, oy + ny, 0.9))
        nuc = p["nuc_amp"] * p["vn"] * nmask * prof
        cyto = cyto * (1.0 - 0.3 * nmask) * (1.0 + 0.2 * tc)
    elif kind == "mitotic":
        th = p["spindle"]
        u, v = _rot(X, Y, th)
        L, w = p["bar"]
        if p["anaphase"]:
            s = p["sep"]
            # two chromatin bars perpendicular to the spindle, slightly bowed towards the poles
            m1, _ = _soft_ellipse(u - s - 0.06 * v * v, v, w, L, 0.0, 0.45)
            m2, _ = _soft_ellipse(u + s + 0.06 * v * v, v, w, L, 0.0, 0.45)
            nmask = m1 + m2
        else:
            nmask, _ = _soft_ellipse(u, v, w, L, 0.0, 0.45)
        nuc = p["nuc_amp"] * p["vn"] * nmask * (1.0 + p["nuc_tex"] * tn)
        cyto = cyto * (1.0 - 0.2 * np.clip(nmask, 0, 1)) * (1.0 + 0.12 * tc)
    else:  # apoptotic
        for bx, by, br in p["blebs"]:
            bm, _ = _soft_ellipse(X - bx, Y - by, br, br, 0.0, 0.5)
            cmask = np.maximum(cmask, bm)
        cyto = p["cyto_amp"] * p["vc"] * cmask * np.clip(1.0 + p["cyto_tex"] * tc, 0.1, None)
        nuc = p["nuc_amp"] * p["vn"] * _gauss(X, Y, 0.0, 0.0, 2.2)
        for dx, dy, sg, amp in p["dots"]:
            nuc = nuc + amp * p["vn"] * _gauss(X, Y, dx, dy, sg)
    return nuc, cyto


# --------------------------------------------------------------------------- placement


def _place(bounds: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rejection-sample centres so footprints overlap little; relaxes if the field is full."""
    lo_c, hi_c = float(_BORDER), float(size - 1 - _BORDER)
    pts = np.zeros((len(bounds), 2))
    for i, bi in enumerate(bounds):
        factor = 1.0
        while True:
            cand = rng.uniform(lo_c, hi_c, size=(64, 2))
            if i == 0:
                pts[i] = cand[0]
                break
            d = np.sqrt(((cand[:, None, :] - pts[None, :i, :]) ** 2).sum(-1))
            ok = np.all(d >= factor * (bi + bounds[:i]) + 1.0, axis=1)
            hit = np.flatnonzero(ok)
            if hit.size:
                pts[i] = cand[hit[0]]
                break
            factor *= 0.85  # crowded field: accept more overlap rather than loop forever
    return np.round(pts, 1)


# --------------------------------------------------------------------------- fields


def _illumination(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative illumination: off-centre vignette times a linear gradient."""
    c = np.linspace(-1.0, 1.0, size)
    X, Y = c[None, :], c[:, None]
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    vig = 1.0 - rng.uniform(0.15, 0.35) * ((X - cx) ** 2 + (Y - cy) ** 2) / 2.0
    gx, gy = rng.uniform(-0.12, 0.12, 2)
    return (vig * (1.0 + gx * X + gy * Y)).astype(np.float32)


def _smooth_noise(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _render_field(
    cells: list[dict], centres: np.ndarray, size: int, rng: np.random.Generator, look: Imaging = Imaging()
) -> np.ndarray:
    tn = _smooth_noise(size, 1.0, rng)
    tc = _smooth_noise(size, 2.0, rng)
    field = np.zeros((2, size, size), np.float32)
    ax = np.arange(size, dtype=np.float32)
    for p, (cx, cy) in zip(cells, centres):
        h = int(math.ceil(p["bound"])) + 6
        x0, x1 = max(0, int(cx) - h), min(size, int(cx) + h + 1)
        y0, y1 = max(0, int(cy) - h), min(size, int(cy) + h + 1)
        X = (ax[x0:x1] - np.float32(cx))[None, :]
        Y = (ax[y0:y1] - np.float32(cy))[:, None]
        nuc, cyto = _render_cell(p, X, Y, tn[y0:y1, x0:x1], tc[y0:y1, x0:x1])
        field[0, y0:y1, x0:x1] += nuc
        field[1, y0:y1, x0:x1] += cyto

    # a few faint, large out-of-focus blobs (debris / cells in another plane)
    yy, xx = np.ogrid[0:size, 0:size]
    for _ in range(int(rng.integers(0, 3))):
        bx, by = rng.uniform(0, size, 2)
        s = rng.uniform(6, 12)
        g = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * s * s)).astype(np.float32)
        field[1] += rng.uniform(200, 600) * g
        field[0] += rng.uniform(0, 300) * g

    # out-of-focus haze and optical blur
    field += 0.08 * gaussian_filter(field, (0, 5.0, 5.0))
    field = gaussian_filter(field, (0, *([rng.uniform(*look.blur)] * 2)))
    if look.signal != 1:
        field = field * np.float32(look.signal)

    illum = _illumination(size, rng)
    bg = np.array([rng.uniform(250, 550), rng.uniform(400, 800)], np.float32)[:, None, None]
    signal = (field + bg) * illum[None]
    electrons = rng.poisson(np.maximum(signal, 0.0) / _GAIN).astype(np.float32)
    img = electrons * _GAIN + _CAMERA_OFFSET + rng.normal(0, _READ_NOISE, field.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- public


def simulate_dataset(
    out_dir: Path,
    *,
    n_images: int,
    image_size: int,
    cells_per_image: tuple[int, int] | list[int],
    class_fractions: dict[str, float],
    seed: int,
    imaging: Imaging | None = None,
) -> pd.DataFrame:
    """Write a simulated 2-channel fluorescence dataset and return its annotation table.

    Writes ``out_dir/images/field_{i:04d}.tif`` (uint16, (2, H, W), axes CYX; channel 0
    nucleus, channel 1 cytoplasm) and ``out_dir/annotations.csv`` with columns
    ``image,label,x,y`` (image path relative to ``out_dir``; x column and y row of the cell
    centre in pixels), rows ordered by image then cell.

    The number of cells per image is uniform in ``cells_per_image`` (inclusive); the class
    counts over the whole dataset are exact: largest-remainder rounding of
    ``class_fractions`` (see :func:`class_counts`), every class at least once when there
    are enough cells, labels shuffled over all cells.

    ``imaging`` (default: the demo's) sets how distinct the phenotypes are and how the
    microscope sees them (see ``Imaging``).

    Raises ValueError naming the argument when an argument is invalid.
    """
    lo, hi, fractions = _validate(n_images, image_size, cells_per_image, class_fractions)
    look = Imaging() if imaging is None else imaging
    n_images, size = int(n_images), int(image_size)
    rng = np.random.default_rng(seed)

    per_image = rng.integers(lo, hi + 1, size=n_images)
    counts = class_counts(int(per_image.sum()), fractions)
    names = list(fractions)
    labels = np.repeat(np.arange(len(names)), [counts[n] for n in names])
    labels = rng.permutation(labels)

    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    start = 0
    for i, n in enumerate(per_image):
        lab = labels[start : start + n]
        start += n
        cells = [_draw_cell(names[k], int(k), rng, look) for k in lab]
        centres = _place(np.array([c["bound"] for c in cells]), size, rng)
        img = _render_field(cells, centres, size, rng, look)
        rel = f"images/field_{i:04d}.tif"
        tifffile.imwrite(out_dir / rel, img, photometric="minisblack", metadata={"axes": "CYX"})
        rows.extend((rel, names[k], float(x), float(y)) for k, (x, y) in zip(lab, centres))

    df = pd.DataFrame(rows, columns=["image", "label", "x", "y"])
    df.to_csv(out_dir / "annotations.csv", index=False, float_format="%.1f")
    return df
