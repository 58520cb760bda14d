"""The balanced dataset in the tools users open it with (issue 12): torchvision's ImageFolder
with its default loader and with the README's multichannel loader, napari (builtin reader and
napari-tiff), and ImageJ, on folders written by the balance stage for 1-, 2- and 3-channel
tiles (and 4 channels, tiff16, tiff_float and png where cheap). PIL and tifffile are covered
in tests/test_balance.py.

The readers do not go into bioaug's environment: tests/readers/setup_venv.sh builds
<repo>/.venv-readers once (torch 2.13 CPU, torchvision's datasets/folder.py, napari; about a
minute; conftest starts it at collection, in the background) and later runs reuse it
(BIOAUG_READERS_VENV moves it). ImageJ comes from Debian
(`apt-get install imagej xvfb`, installed here if missing, as root). A test skips, saying why,
only when its reader could not be installed; otherwise what the reader saw is compared with
the tiles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import tifffile
from test_balance import build_balanced_folder

from bioaug.formats import balanced
from conftest import IMAGEJ_APT, READERS_VENV, REPO, apt_lock, imagej_missing, wait_for_background

pytestmark = pytest.mark.slow

READERS = REPO / "tests" / "readers"
VENV = READERS_VENV
NAMES = {1: ["dapi"], 2: ["dapi", "gfp"], 3: None, 4: ["c0", "c1", "c2", "c3"]}  # 3: R, G, B
SIZE = (36, 32)  # H != W; sides > 30, napari's least size for guessing RGB
TORCH_CASES = [("tiff", 1), ("tiff", 2), ("tiff", 3), ("png", 2), ("tiff", 4), ("tiff16", 2), ("tiff_float", 3)]
TORCH_CASES += [("png", 1), ("png", 3), ("png16", 1), ("png16", 3)]
IMAGEJ_CASES = [(f, c) for f in ("tiff", "tiff16", "tiff_float") for c in (1, 2, 3, 4)] + [
    (f, c) for f in ("png", "png16") for c in (1, 2, 3)
]
PIXEL_SIZE = 0.5  # microns per pixel of the source images in test_balance.build_balanced_folder
NAPARI_CASES = [("tiff", 1), ("tiff", 2), ("tiff", 3), ("tiff", 4), ("tiff16", 2), ("tiff_float", 2)]


def case_id(case) -> str:
    return f"{case[0]}-{case[1]}ch"


def run(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)


# ----------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(format, channels) -> (balanced folder, manifest, tiles as read back by bioaug)."""
    out = {}
    for fmt, c in sorted(set(TORCH_CASES + IMAGEJ_CASES + NAPARI_CASES)):
        folder, manifest, _, _ = build_balanced_folder(
            tmp_path_factory.mktemp(f"{fmt}-{c}"), c, fmt, size=SIZE, channel_names=NAMES[c]
        )
        out[fmt, c] = (folder, manifest, balanced.read_balanced(folder)[0])
    return out


def stored(fmt: str, tile: np.ndarray) -> np.ndarray:
    """The pixel values a file of `fmt` holds for the normalised tile (H, W, C)."""
    return balanced.encode(tile, fmt)


# ----------------------------------------------------------------------------- the reader venv
def venv_run(venv: dict, *args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # the reader environment sees no bioaug
    proc = run([venv["python"], *args], timeout=timeout, env=env)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


# ----------------------------------------------------------------------------- torchvision
def readme_loader_snippet() -> str:
    """The README's multichannel ImageFolder code (section "The balanced dataset"), run as written."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The balanced dataset") :]
    section = section[: section.index("\n### ", 1)]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "loader=" in b]
    assert len(blocks) == 1, "README, The balanced dataset: one python block with an ImageFolder loader= expected"
    return blocks[0]


@pytest.fixture(scope="module")
def torchvision_seen(readers_venv, folders, tmp_path_factory):
    """(format, channels) -> (report, arrays) of tests/readers/torchvision_check.py."""
    snippet = tmp_path_factory.mktemp("snippet") / "loader.py"
    snippet.write_text(readme_loader_snippet())
    seen = {}
    for case in TORCH_CASES:
        out = tmp_path_factory.mktemp(f"torch-{case_id(case)}")
        t0 = time.perf_counter()
        loader = [snippet] if not case[0].startswith("png") else []  # the README's loader is for TIFFs
        venv_run(readers_venv, READERS / "torchvision_check.py", folders[case][0], out, *loader)
        report = json.loads((out / "report.json").read_text())
        report["seconds"] = time.perf_counter() - t0
        seen[case] = (report, dict(np.load(out / "arrays.npz")))
    return seen


@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_torchvision_imagefolder_default_loader(torchvision_seen, folders, case):
    """ImageFolder(folder) as it comes: classes, every sample, and what PIL's convert('RGB') gives:
    the tile for greyscale and RGB (PNG: R, G = channels 0, 1), channel 0 for an 8-bit hyperstack."""
    fmt, c = case
    folder, manifest, x = folders[case]
    report, arrays = torchvision_seen[case]
    assert report["torch"].startswith("2.13.0") and report["classes"] == ["a", "b_w"]
    by_path = {p: i for i, p in enumerate(manifest["path"])}
    assert sorted(p for p, _ in report["samples"]) == sorted(by_path)  # README.txt, manifest.csv: not samples
    for k, (rel, target) in enumerate(report["samples"]):
        row = manifest.iloc[by_path[rel]]
        assert report["classes"][target] == balanced.safe_name(row["label"])
        img, want = report["default"][k], stored(fmt, x[by_path[rel]])
        got = arrays[f"default_{k}"]
        assert img["mode"] == "RGB" and img["size"] == [SIZE[1], SIZE[0]] and got.shape == (*SIZE, 3)
        if fmt == "tiff16" or (fmt, c) == ("png16", 1):  # PIL's convert('RGB') of 16-bit grey: clipped at 255
            np.testing.assert_array_equal(got, np.repeat(np.minimum(want[..., :1], 255), 3, axis=-1))
        elif fmt == "png16":  # PIL reads 16-bit RGB as 8-bit: the high byte (the README says so)
            np.testing.assert_array_equal(got, want >> 8)
        elif fmt == "tiff_float":  # ... of float: channel 0 truncated to 0 or 1 (black)
            np.testing.assert_array_equal(got, np.repeat(np.floor(want[..., :1]), 3, axis=-1))
        elif c == 3:
            np.testing.assert_array_equal(got, want)
        elif fmt == "png" and c == 2:
            np.testing.assert_array_equal(got[..., :2], want)
            assert (got[..., 2] == 0).all()
        else:  # greyscale, or channel 0 of a hyperstack, as grey
            np.testing.assert_array_equal(got, np.repeat(want[..., :1], 3, axis=-1))


@pytest.mark.parametrize("case", [c for c in TORCH_CASES if not c[0].startswith("png")], ids=case_id)
def test_torchvision_readme_loader(torchvision_seen, folders, case):
    """The README's loader gives every TIFF tile whole: C x H x W float32 in [0, 1], in batches."""
    fmt, c = case
    folder, manifest, x = folders[case]
    report, arrays = torchvision_seen[case]
    by_path = {p: i for i, p in enumerate(manifest["path"])}
    for k, (rel, _) in enumerate(report["samples"]):
        got = arrays[f"loader_{k}"]
        assert got.shape == (c, *SIZE) and got.dtype == np.float32
        np.testing.assert_allclose(got, np.moveaxis(x[by_path[rel]], -1, 0), atol=1e-6)
    assert report["loader_batch"]["shape"] == [len(manifest), c, *SIZE]
    assert report["loader_batch"]["dtype"] == "torch.float32"


# ----------------------------------------------------------------------------- napari
@pytest.fixture(scope="module")
def napari_seen(readers_venv, folders, tmp_path_factory):
    if not readers_venv["napari"]:
        pytest.skip(f"napari did not install in {VENV} (tests/readers/setup_venv.sh): nothing to test it with")
    files = {case: folders[case][0] / folders[case][1]["path"].iloc[0] for case in NAPARI_CASES}
    out = tmp_path_factory.mktemp("napari") / "napari.json"
    venv_run(readers_venv, READERS / "napari_check.py", out, *files.values())
    report = json.loads(out.read_text())
    return {case: report["files"][str(path)] for case, path in files.items()}, report["napari"], files


@pytest.mark.parametrize("case", NAPARI_CASES, ids=case_id)
def test_napari_opens_channels(napari_seen, case):
    """napari-tiff: one layer per channel, named (RGB: one RGB layer), scaled to microns.
    Builtin reader: the image, or a C x H x W stack that channel_axis=0 splits into C layers."""
    fmt, c = case
    seen, version, _ = napari_seen
    seen = seen[case]
    assert version.startswith("0.9")
    tiff_layers, builtin = seen["napari-tiff"], seen["builtin"]
    assert isinstance(tiff_layers, list) and isinstance(builtin, list), seen
    dtype = balanced.FORMATS[fmt].dtype.name
    # napari-tiff takes the pixel size from the TIFF's resolution (the builtin reader does not)
    assert [la["scale"] for la in tiff_layers] == [[PIXEL_SIZE, PIXEL_SIZE]] * len(tiff_layers)
    if c == 3 and fmt == "tiff":
        for layers in (tiff_layers, builtin):
            assert [(la["shape"], la["rgb"]) for la in layers] == [([*SIZE, 3], True)]
        return
    if c == 1:
        assert [(la["shape"], la["dtype"]) for la in builtin] == [(list(SIZE), dtype)]
        assert [la["shape"] for la in tiff_layers] == [list(SIZE)]
        return
    names = NAMES[c] or ["R", "G", "B"]
    assert [(la["name"], la["shape"], la["dtype"]) for la in tiff_layers] == [(n, list(SIZE), dtype) for n in names]
    assert [(la["shape"], la["rgb"]) for la in builtin] == [([c, *SIZE], False)]
    assert [la["shape"] for la in seen["builtin_channel_axis_0"]] == [list(SIZE)] * c


# ----------------------------------------------------------------------------- ImageJ
@pytest.fixture(scope="module")
def imagej_seen(folders, tmp_path_factory):
    """(format, channels) -> (the file, ImageJ's DIMS fields) from one headless ImageJ run."""
    t0 = time.perf_counter()
    apt_log = wait_for_background("imagej")  # the apt-get started at collection (conftest), if any
    if imagej_missing():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("ImageJ is not installed and apt-get (as root) is not there to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = run([*apt_lock(), "bash", "-c", IMAGEJ_APT], timeout=1200, env=env)  # after another worker's
        apt_log += apt.stdout + apt.stderr
    if imagej_missing():
        pytest.skip(f"apt-get could not install imagej and xvfb:\n{apt_log[-3000:]}")
    if apt_log:
        print(f"\nimagej + xvfb installed (waited {time.perf_counter() - t0:.0f} s here)")
    files = {case: folders[case][0] / folders[case][1]["path"].iloc[0] for case in IMAGEJ_CASES}
    listing = tmp_path_factory.mktemp("imagej") / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in files.values()))
    proc = run(["xvfb-run", "-a", "imagej", "-b", READERS / "dims.ijm", listing], timeout=300)
    lines = {f[1]: f[2:] for f in (line.split("\t") for line in proc.stdout.splitlines()) if f[0] == "DIMS"}
    return {case: (path, lines.get(str(path))) for case, path in files.items()}, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", IMAGEJ_CASES, ids=case_id)
def test_imagej_opens_a_hyperstack(imagej_seen, folders, case):
    """ImageJ 1.53 (Debian), headless: C channels (slices = frames = 1) named by the channel
    names, the bit depth of the format (RGB: 24), display range the whole scale, and the
    pixels where tifffile has them (x = 2, y = 1 and x = 0, y = 3, per channel)."""
    fmt, c = case
    seen, output = imagej_seen
    path, fields = seen[case]
    assert fields is not None, f"ImageJ did not open {path}:\n{output[-3000:]}"
    w, h, n_c, z, t, depth, composite, lo, hi, unit, pixel_width, *channels = fields
    f = balanced.FORMATS[fmt]
    png = fmt.startswith("png")
    rgb = c == 3 and fmt in ("tiff", "png") or png and c in (2, 3)  # ImageJ reads 16-bit RGB PNGs as 8-bit RGB
    if png:  # ImageJ does not read a PNG's pHYs
        assert (unit, float(pixel_width)) == ("pixels", 1.0)
    else:  # the TIFF's resolution and unit
        assert (unit, float(pixel_width)) == ("µm", PIXEL_SIZE)
    assert (int(w), int(h), int(z), int(t)) == (SIZE[1], SIZE[0], 1, 1)
    assert int(n_c) == (1 if rgb else c)
    assert int(depth) == (24 if rgb else {"uint8": 8, "uint16": 16, "float32": 32}[f.dtype.name])
    tile = folders[case][2][0]
    want = stored(fmt, tile)
    if rgb:
        rgb_want = want if c == 3 else np.concatenate([want, np.zeros_like(want[..., :1])], -1)
        _, a, b = channels[0].split("|")
        got = [[int(v) for v in p.split("/")] for p in (a, b)]
        # a 16-bit PNG comes in as 8 bits a channel (ImageJ: v / 257, to within rounding)
        exact = [rgb_want[y, x] / (257 if fmt == "png16" else 1) for y, x in ((1, 2), (3, 0))]
        np.testing.assert_allclose(got, exact, atol=1 if fmt == "png16" else 0)
        return
    assert (float(lo), float(hi)) == (0.0, float(f.scale))
    assert composite == ("1" if c > 1 else "0")
    names = NAMES[c] or ["R", "G", "B"]
    for ch, field in enumerate(channels):
        label, a, b = field.split("|")
        if not png:  # a PNG's channel names are in its text chunk, which ImageJ does not show
            assert label == names[ch]
        np.testing.assert_allclose([float(a), float(b)], [want[1, 2, ch], want[3, 0, ch]], atol=1e-6)


def test_tifffile_reads_every_case(folders):
    """tifffile (bioaug's own reader) on the same files: the axes the other readers relied on."""
    for (fmt, c), (folder, manifest, _) in folders.items():
        if fmt.startswith("png"):
            continue
        with tifffile.TiffFile(folder / manifest["path"].iloc[0]) as tif:
            axes = tif.series[0].axes
        assert axes == ("YX" if c == 1 else "YXS" if (fmt, c) == ("tiff", 3) else "CYX"), (fmt, c)
