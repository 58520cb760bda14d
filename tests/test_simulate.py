"""Tests for the built-in dataset simulator (bioaug.simulate)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioaug.simulate import Imaging, class_counts, simulate_dataset

DEFAULT_FRACTIONS = {"interphase": 0.70, "elongated": 0.17, "mitotic": 0.10, "apoptotic": 0.03}
# Over-represent the rare classes so the appearance checks have enough cells of each.
LOOK_FRACTIONS = {"interphase": 0.4, "elongated": 0.2, "mitotic": 0.2, "apoptotic": 0.2}


def _hamilton(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Reference largest-remainder apportionment (no minimum per class)."""
    total = sum(fractions.values())
    quotas = {k: n * v / total for k, v in fractions.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    left = n - sum(counts.values())
    names = list(fractions)
    for k in sorted(names, key=lambda k: (-(quotas[k] - counts[k]), names.index(k)))[:left]:
        counts[k] += 1
    return counts


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    df = simulate_dataset(
        out, n_images=24, image_size=256, cells_per_image=[8, 14], class_fractions=DEFAULT_FRACTIONS, seed=0
    )
    return out, df


@pytest.fixture(scope="module")
def look_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("look")
    df = simulate_dataset(
        out, n_images=24, image_size=256, cells_per_image=[8, 14], class_fractions=LOOK_FRACTIONS, seed=3
    )
    return out, df


def _run(out, **kw):
    args = dict(n_images=3, image_size=96, cells_per_image=(2, 5), class_fractions=DEFAULT_FRACTIONS, seed=7)
    args.update(kw)
    return simulate_dataset(out, **args)


# --------------------------------------------------------------------------- outputs


def test_deterministic_bytes_and_table(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    da = _run(a, n_images=4, image_size=128, cells_per_image=[3, 6])
    db = _run(b, n_images=4, image_size=128, cells_per_image=[3, 6])
    pd.testing.assert_frame_equal(da, db)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert len(files_a) == 5  # 4 images + annotations.csv
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_seed_changes_output(tmp_path):
    da = _run(tmp_path / "a", seed=1)
    db = _run(tmp_path / "b", seed=2)
    same_img = (tmp_path / "a/images/field_0000.tif").read_bytes() == (
        tmp_path / "b/images/field_0000.tif"
    ).read_bytes()
    assert not same_img
    assert not (len(da) == len(db) and da.equals(db))


def test_annotation_table(default_ds):
    out, df = default_ds
    assert list(df.columns) == ["image", "label", "x", "y"]
    on_disk = pd.read_csv(out / "annotations.csv")
    assert list(on_disk.columns) == ["image", "label", "x", "y"]
    assert len(on_disk) == len(df)
    assert (on_disk["image"] == df["image"]).all()
    assert (on_disk["label"] == df["label"]).all()
    np.testing.assert_allclose(on_disk[["x", "y"]].to_numpy(), df[["x", "y"]].to_numpy(), atol=0.051)
    images = [f"images/field_{i:04d}.tif" for i in range(24)]
    assert sorted(df["image"].unique()) == images
    # ordered by image, every image with 8..14 cells
    assert df["image"].tolist() == sorted(df["image"].tolist())
    per_image = df.groupby("image").size()
    assert per_image.min() >= 8 and per_image.max() <= 14
    # centres inside the field, away from the border
    for col in ("x", "y"):
        assert df[col].min() >= 8 and df[col].max() <= 256 - 1 - 8


def test_tiff_format(default_ds):
    out, df = default_ds
    for rel in df["image"].unique()[:3]:
        with tifffile.TiffFile(out / rel) as tf:
            assert tf.series[0].axes == "CYX"
            arr = tf.asarray()
        assert arr.dtype == np.uint16
        assert arr.shape == (2, 256, 256)
        # uses a decent part of the range: background around 500-1500, bright structures
        # well above it, nothing pinned at the ceiling
        for c in range(2):
            bg = np.median(arr[c])
            assert 400 <= bg <= 2000, (rel, c, bg)
            assert np.percentile(arr[c], 99.9) > 4 * bg
        assert arr.max() < 65535
        assert arr[0].max() > 8000


def test_exact_class_counts(default_ds):
    _, df = default_ds
    n = len(df)
    got = df["label"].value_counts().to_dict()
    assert got == _hamilton(n, DEFAULT_FRACTIONS)
    assert got == class_counts(n, DEFAULT_FRACTIONS)
    # labels are shuffled over images, not handed out in blocks
    assert df.loc[df["label"] == "apoptotic", "image"].nunique() > 3


def test_default_rarest_at_most_5pct_of_largest(default_ds):
    _, df = default_ds
    counts = df["label"].value_counts()
    assert set(counts.index) == set(DEFAULT_FRACTIONS)
    assert counts.min() <= 0.05 * counts.max()
    assert counts.min() >= 1


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (100, DEFAULT_FRACTIONS, {"interphase": 70, "elongated": 17, "mitotic": 10, "apoptotic": 3}),
        # quotas 4.9, 1.19, 0.7, 0.21 -> 5,1,1,0 -> one taken from the largest for apoptotic
        (7, DEFAULT_FRACTIONS, {"interphase": 4, "elongated": 1, "mitotic": 1, "apoptotic": 1}),
        (10, {"a": 1, "b": 1, "c": 1}, {"a": 4, "b": 3, "c": 3}),
        (5, {"a": 2.0, "b": 3.0}, {"a": 2, "b": 3}),
        (2, {"a": 0.9, "b": 0.05, "c": 0.05}, {"a": 2, "b": 0, "c": 0}),
    ],
)
def test_class_counts_rule(n, fractions, expected):
    got = class_counts(n, fractions)
    assert got == expected
    assert sum(got.values()) == n


def test_small_dataset_every_class_present(tmp_path):
    df = _run(tmp_path, n_images=1, cells_per_image=(4, 4), image_size=64)
    assert df["label"].value_counts().to_dict() == class_counts(4, DEFAULT_FRACTIONS)
    assert set(df["label"]) == set(DEFAULT_FRACTIONS)


def test_unknown_classes_and_crowded_field(tmp_path):
    fr = {"interphase": 1.0, "foo": 1.0, "bar baz": 2.0, "qux": 0.5}
    df = simulate_dataset(tmp_path, n_images=2, image_size=64, cells_per_image=[20, 25], class_fractions=fr, seed=0)
    assert df["label"].value_counts().to_dict() == class_counts(len(df), fr)
    assert df["x"].between(0, 63).all() and df["y"].between(0, 63).all()
    arr = tifffile.imread(tmp_path / "images/field_0001.tif")
    assert arr.shape == (2, 64, 64) and arr.dtype == np.uint16


# --------------------------------------------------------------------------- appearance


def _load(out, df):
    return {rel: tifffile.imread(out / rel).astype(np.float64) for rel in df["image"].unique()}


def _centre_mean(img, x, y, half=2):
    r, c = int(round(y)), int(round(x))
    return img[0, r - half : r + half + 1, c - half : c + half + 1].mean()


def _eccentricity(img, x, y, half=15):
    """Second-moment eccentricity of the background-subtracted cytoplasm around (x, y)."""
    ch = img[1]
    bg = np.median(ch)
    r, c = int(round(y)), int(round(x))
    r0, r1 = max(0, r - half), min(ch.shape[0], r + half + 1)
    c0, c1 = max(0, c - half), min(ch.shape[1], c + half + 1)
    w = np.clip(ch[r0:r1, c0:c1] - bg, 0, None)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    dy, dx = yy - y, xx - x
    w = w * (dx**2 + dy**2 <= half**2)  # circular window
    w = w / w.sum()
    my, mx = (w * dy).sum(), (w * dx).sum()
    cyy = (w * (dy - my) ** 2).sum()
    cxx = (w * (dx - mx) ** 2).sum()
    cxy = (w * (dx - mx) * (dy - my)).sum()
    ev = np.linalg.eigvalsh(np.array([[cxx, cxy], [cxy, cyy]]))
    return math.sqrt(max(0.0, 1.0 - ev[0] / ev[1]))


def test_classes_differ_quantitatively(look_ds):
    out, df = look_ds
    imgs = _load(out, df)
    nuc, ecc = {}, {}
    for label, grp in df.groupby("label"):
        nuc[label] = np.mean([_centre_mean(imgs[r.image], r.x, r.y) for r in grp.itertuples()])
        ecc[label] = np.mean([_eccentricity(imgs[r.image], r.x, r.y) for r in grp.itertuples()])
    # condensed / fragmented chromatin is much brighter than an interphase nucleus
    assert nuc["mitotic"] > 1.5 * nuc["interphase"], nuc
    assert nuc["apoptotic"] > 1.2 * nuc["interphase"], nuc
    # elongated cells are clearly more eccentric than interphase ones
    assert ecc["elongated"] > ecc["interphase"] + 0.25, ecc
    assert ecc["elongated"] > 0.8, ecc


def test_cytoplasm_size_and_brightness(look_ds):
    """Mitotic cells are brighter in the cytoplasm; apoptotic cells smaller and dimmer."""
    out, df = look_ds
    imgs = _load(out, df)
    stats = {}
    for label, grp in df.groupby("label"):
        mean7, mean15 = [], []
        for r in grp.itertuples():
            ch = imgs[r.image][1]
            bg = np.median(ch)
            y, x = int(round(r.y)), int(round(r.x))
            mean7.append((ch[y - 3 : y + 4, x - 3 : x + 4] - bg).mean())
            mean15.append((ch[y - 7 : y + 8, x - 7 : x + 8] - bg).mean())
        stats[label] = (np.mean(mean7), np.mean(mean15))
    assert stats["mitotic"][0] > 1.3 * stats["interphase"][0], stats
    assert stats["apoptotic"][0] < 0.8 * stats["interphase"][0], stats
    # total cytoplasm signal in a 15x15 window: the shrunken apoptotic cell has far less
    assert stats["apoptotic"][1] < 0.5 * stats["interphase"][1], stats


# --------------------------------------------------------------------------- the harder look


def _class_stats(out, df):
    """Per class, above background: mean centre nucleus signal, brightest nucleus pixel near
    the centre, cytoplasm aspect ratio (second moments), cytoplasm signal in a 15 x 15 window."""
    imgs = _load(out, df)
    stats = {}
    for label, grp in df.groupby("label"):
        nuc, aspect, cyt, peak = [], [], [], []
        for r in grp.itertuples():
            img = imgs[r.image]
            y, x = int(round(r.y)), int(round(r.x))
            nuc.append(_centre_mean(img, r.x, r.y) - np.median(img[0]))
            aspect.append(1.0 / math.sqrt(1.0 - _eccentricity(img, r.x, r.y) ** 2))  # aspect ratio
            cyt.append((img[1][y - 7 : y + 8, x - 7 : x + 8] - np.median(img[1])).mean())
            peak.append(img[0][y - 4 : y + 5, x - 4 : x + 5].max() - np.median(img[0]))
        stats[label] = {"nuc": np.mean(nuc), "aspect": np.mean(aspect), "cyt": np.mean(cyt), "peak": np.mean(peak)}
    return stats


@pytest.fixture(scope="module")
def subtle_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("subtle")
    df = simulate_dataset(
        out, n_images=24, image_size=256, cells_per_image=[8, 14], class_fractions=LOOK_FRACTIONS, seed=3,
        imaging=Imaging(separation=0.4),
    )  # fmt: skip
    return out, df


def test_default_imaging_is_the_demo_byte_for_byte(tmp_path):
    """Imaging() given or not, and an explicit copy of its defaults: the same files."""
    runs = {
        "none": None,
        "default": Imaging(),
        "explicit": Imaging(separation=1.0, signal=1.0, blur=(0.7, 1.0)),
        "other": Imaging(signal=0.99),
    }
    blobs = {}
    for name, look in runs.items():
        _run(tmp_path / name, n_images=2, image_size=96, cells_per_image=(3, 5), imaging=look)
        blobs[name] = [(tmp_path / name / f"images/field_{i:04d}.tif").read_bytes() for i in range(2)]
    assert blobs["none"] == blobs["default"] == blobs["explicit"]
    assert blobs["other"] != blobs["none"]  # the comparison can fail


def test_separation_moves_every_phenotype_towards_interphase(look_ds, subtle_ds):
    """The same seed at separation 1 and 0.4 (same labels; placement follows the sizes): the
    traits that tell a class from interphase shrink, while interphase cells do not change."""
    full, subtle = _class_stats(*look_ds), _class_stats(*subtle_ds)
    assert look_ds[1]["label"].tolist() == subtle_ds[1]["label"].tolist()
    gap = {
        ("elongated", "aspect"): lambda s: s["elongated"]["aspect"] - s["interphase"]["aspect"],
        ("apoptotic", "peak"): lambda s: s["apoptotic"]["peak"] / s["interphase"]["peak"],
        ("mitotic", "cyt"): lambda s: s["mitotic"]["cyt"] / s["interphase"]["cyt"],
        ("apoptotic", "cyt"): lambda s: s["interphase"]["cyt"] / s["apoptotic"]["cyt"],
    }
    for key, f in gap.items():
        assert f(subtle) < f(full), (key, f(subtle), f(full))
    assert 0.3 < gap[("elongated", "aspect")](subtle) < 0.7 * gap[("elongated", "aspect")](full)
    # fragments of condensed chromatin: still brighter than an interphase nucleus, much less so
    assert 1.2 < gap[("apoptotic", "peak")](subtle) < 0.8 * gap[("apoptotic", "peak")](full)
    # still the phenotypes, only less so: each class keeps its direction from interphase
    assert subtle["apoptotic"]["cyt"] < subtle["interphase"]["cyt"] < subtle["mitotic"]["cyt"]
    np.testing.assert_allclose(subtle["interphase"]["nuc"], full["interphase"]["nuc"], rtol=0.02)


def test_signal_scales_the_stain_not_the_noise_floor(tmp_path):
    """A quarter of the photons: a quarter of the signal above background, the background
    level and its noise about as before, so the signal-to-noise ratio falls."""
    out = {}
    for name, look in {"bright": Imaging(), "dim": Imaging(signal=0.25)}.items():
        df = _run(tmp_path / name, n_images=4, image_size=128, cells_per_image=(4, 6), imaging=look)
        imgs = _load(tmp_path / name, df)
        nuc = np.mean([_centre_mean(imgs[r.image], r.x, r.y) - np.median(imgs[r.image][0]) for r in df.itertuples()])
        corner = np.concatenate([img[:, :6, :6].ravel() for img in imgs.values()])  # cells stay 10 px in
        out[name] = (nuc, np.median([np.median(img) for img in imgs.values()]), corner)
    (nb, bgb, cb), (nd, bgd, cd) = out["bright"], out["dim"]
    assert 0.2 < nd / nb < 0.3, (nd, nb)
    assert abs(bgd - bgb) < 0.25 * bgb, (bgd, bgb)
    assert nd / cd.std() < 0.4 * nb / cb.std()


def test_blur_softens_the_field(tmp_path):
    """A wider PSF: lower peaks, less pixel-to-pixel contrast in the cells (same cells)."""
    peaks, grad = {}, {}
    for name, look in {"sharp": Imaging(blur=(0.7, 0.7)), "soft": Imaging(blur=(2.0, 2.0))}.items():
        _run(tmp_path / name, n_images=2, image_size=128, cells_per_image=(5, 5), imaging=look)
        img = tifffile.imread(tmp_path / name / "images/field_0000.tif").astype(np.float64)
        peaks[name] = np.percentile(img[0], 99.9)
        grad[name] = np.abs(np.diff(img[1], axis=1))[img[1][:, 1:] > np.percentile(img[1], 90)].mean()
    assert peaks["soft"] < 0.8 * peaks["sharp"], peaks
    assert grad["soft"] < 0.8 * grad["sharp"], grad


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"separation": 0}, "separation"),
        ({"separation": 1.5}, "separation"),
        ({"separation": float("nan")}, "separation"),
        ({"signal": 0}, "signal"),
        ({"signal": -1}, "signal"),
        ({"signal": True}, "signal"),
        ({"blur": (1.0, 0.5)}, "blur"),
        ({"blur": (0, 1.0)}, "blur"),
        ({"blur": (1.0, 20)}, "blur"),
        ({"blur": 1.0}, "blur"),
        ({"blur": ("a", "b")}, "blur"),
    ],
)
def test_invalid_imaging(kw, word):
    with pytest.raises(ValueError, match=word):
        Imaging(**kw)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"n_images": 0}, "n_images"),
        ({"n_images": -3}, "n_images"),
        ({"image_size": 32}, "image_size"),
        ({"cells_per_image": (5, 2)}, "cells_per_image"),
        ({"cells_per_image": (0, 3)}, "cells_per_image"),
        ({"cells_per_image": (3,)}, "cells_per_image"),
        ({"class_fractions": {"interphase": 0.9, "mitotic": 0.0}}, "class_fractions"),
        ({"class_fractions": {"interphase": 0.9, "mitotic": -0.1}}, "class_fractions"),
        ({"class_fractions": {"interphase": float("nan")}}, "class_fractions"),
        ({"class_fractions": {}}, "class_fractions"),
    ],
)
def test_invalid_arguments(tmp_path, kw, word):
    with pytest.raises(ValueError, match=word):
        _run(tmp_path, **kw)
    assert not (tmp_path / "annotations.csv").exists()
