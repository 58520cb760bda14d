"""What does the two-sample test key on? The C2ST of gan_quality, per class, on transformed tiles.

gan_quality's classifier two-sample test (metrics/two_sample.py) tells a class's real train
tiles from its synthetic ones. Accuracy 1.00 says that they differ, not how. This probe reruns
the same test on the same tiles after transformations that remove one kind of evidence each,
applied alike to real and synthetic tiles:

  raw               the tiles as gan_quality sees them
  extremes_clipped  both clipped to [a, 1 - a] (a = 0.03): no exact 0s or 1s, no saturation
  blur1             Gaussian blur, sigma 1 px: no pixel-level noise or checkerboard texture
  blur1+extremes    both of the above
  sorted_pixels     each channel's pixel values sorted within the tile: the intensity
                    distribution alone, no shape or layout at all
  centre            the central half of the tile (the cell), enlarged 2x by repetition
  border_only       the tile with its central half set to 0: the background frame alone
  quantile_matched  the synthetic tiles only, each channel's values mapped through the class's
                    quantiles so that their distribution over the class is the real tiles'
                    (fitted on another draw of synthetic tiles; generate.match_histograms'
                    map): whether the test keys on the values' distribution over the class or
                    on their arrangement within a tile

and reports, per class, the share of pixels at exactly 0 and 1 and the border frame's
standard deviation (background unevenness) of both sides. With --png, per-class histograms of
the pixel values, real against synthetic (log scale).

    .venv/bin/python tests/benchmarks/probe_two_sample.py results/demo [--fold 0] [--n 400]
        [--steps 150] [--png hist.png]

Synthetic tiles are drawn from the run's exported generator (seeds 10000...), as many as the
class has real train tiles (at most --n). The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

EXTREME = 0.03


def extremes_clipped(t: np.ndarray) -> np.ndarray:
    return np.clip(t, EXTREME, 1 - EXTREME)


def blur(t: np.ndarray) -> np.ndarray:
    return gaussian_filter(t, (0, 1.0, 1.0, 0))


def sorted_pixels(t: np.ndarray) -> np.ndarray:
    n, h, w, c = t.shape
    return np.sort(t.reshape(n, h * w, c), axis=1).reshape(n, h, w, c)


def centre(t: np.ndarray) -> np.ndarray:
    h, w = t.shape[1:3]
    part = t[:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    return np.repeat(np.repeat(part, 2, axis=1), 2, axis=2)


def border_only(t: np.ndarray) -> np.ndarray:
    h, w = t.shape[1:3]
    out = t.copy()
    out[:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 0
    return out


VARIANTS = {
    "raw": lambda t: t,
    "extremes_clipped": extremes_clipped,
    "blur1": blur,
    "blur1+extremes": lambda t: extremes_clipped(blur(t)),
    "sorted_pixels": sorted_pixels,
    "centre": centre,
    "border_only": border_only,
    "quantile_matched": None,  # a map of the synthetic tiles alone (probe)
}


def border_std(t: np.ndarray, width: int = 4) -> list[float]:
    """Mean over tiles of the per-channel standard deviation of the tile's border frame."""
    frame = np.concatenate(
        [t[:, :width].reshape(len(t), -1, t.shape[-1]), t[:, -width:].reshape(len(t), -1, t.shape[-1])], axis=1
    )
    return [round(float(v), 4) for v in frame.std(axis=1).mean(axis=0)]


def probe(run: Path, fold: int, n: int, steps: int, variants: list[str], png: Path | None) -> dict:
    from bioaug.runtime import configure_jax

    configure_jax(None)
    from bioaug import histogram_match
    from bioaug.formats.items import class_names, read_items
    from bioaug.formats.shards import load_tiles
    from bioaug.gan.sample import load_generator, sample_tiles
    from bioaug.metrics.two_sample import classifier_two_sample_test

    items = read_items(run / f"fold-{fold}" / "items.csv")
    names = class_names(items)
    x, y, _ = load_tiles(sorted((run / "tiles").glob("shard-*.npy")), items, splits=("train",))
    gen = load_generator(run / f"fold-{fold}" / "gan" / "generator")
    rng = np.random.default_rng(0)
    out, pairs = {}, {}
    for ci, name in enumerate(names):
        real = x[y == ci]
        real = real[rng.permutation(len(real))[:n]]
        fake = sample_tiles(gen, ci, np.arange(len(real)) + 10_000)
        row = {
            "n": len(real),
            "exact_0": [round(float((real == 0).mean()), 4), round(float((fake == 0).mean()), 4)],
            "exact_1": [round(float((real == 1).mean()), 4), round(float((fake == 1).mean()), 4)],
            "border_std": [border_std(real), border_std(fake)],
        }
        for v in variants:
            if v == "quantile_matched":  # the synthetic side only, fitted on other seeds
                fit = sample_tiles(gen, ci, np.arange(max(len(real), 64)) + 20_000)
                pair = real, histogram_match.apply(fake, histogram_match.fit(real, fit))
            else:
                pair = VARIANTS[v](real), VARIANTS[v](fake)
            res = classifier_two_sample_test(*(t.astype(np.float32) for t in pair), steps=steps)
            row[v] = round(res["c2st_accuracy"], 3)
        out[name] = row
        pairs[name] = (real, fake)
    if png is not None:
        plot_histograms(pairs, png)
    return out


def plot_histograms(pairs: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = next(iter(pairs.values()))[0].shape[-1]
    fig, axes = plt.subplots(channels, len(pairs), figsize=(3.5 * len(pairs), 2.8 * channels), squeeze=False)
    bins = np.linspace(0, 1, 101)
    for j, (name, (real, fake)) in enumerate(pairs.items()):
        for c in range(channels):
            ax = axes[c, j]
            for tiles, label in ((real, "real"), (fake, "synthetic")):
                ax.hist(tiles[..., c].ravel(), bins, histtype="step", density=True, log=True, label=label)
            ax.set_title(f"{name}, channel {c}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run's results/<dataset>")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--n", type=int, default=400, help="tiles per class and side at most")
    ap.add_argument("--steps", type=int, default=150, help="C2ST training steps (gan_quality's default)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--png", type=Path, default=None, help="write per-class pixel-value histograms here")
    a = ap.parse_args(argv)
    out = probe(a.run, a.fold, a.n, a.steps, a.variants, a.png)
    head = f"{'class':12}{'n':>5}" + "".join(f"{v:>18}" for v in a.variants) + "   exact 1 real/syn"
    print(f"C2ST accuracy per class (0.5: indistinguishable), {a.steps} steps; {a.run}, fold {a.fold}")
    print(head)
    for name, row in out.items():
        print(
            f"{name:12}{row['n']:>5}"
            + "".join(f"{row[v]:>18.3f}" for v in a.variants)
            + f"   {row['exact_1'][0]:.4f}/{row['exact_1'][1]:.4f}"
        )
    print(json.dumps({"run": str(a.run), "fold": a.fold, "steps": a.steps, "classes": out}))
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
