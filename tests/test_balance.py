"""Balancing targets, per-tile seeds, and the balanced dataset on disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bioaug.balance_policy import class_targets
from bioaug.formats import balanced
from bioaug.formats.balanced import MANIFEST_COLUMNS, encode, normalisation_text, read_balanced, read_manifest
from bioaug.formats.synthetic import write_class
from bioaug.runtime import BioaugError
from bioaug.stages.balance import write_balanced
from bioaug.stages.generate import tile_seeds
from helpers import write_shard


def items_table(counts: dict[str, int], split="train") -> pd.DataFrame:
    labels = [c for c, n in counts.items() for _ in range(n)]
    return pd.DataFrame(
        {
            "item_id": [f"it{i:03d}" for i in range(len(labels))],
            "image": "f.tif",
            "group": "f.tif",
            "label": labels,
            "x": 1.0,
            "y": 1.0,
            "split": split,
        }
    )


def test_class_targets_max_class_and_fixed():
    items = pd.concat([items_table({"a": 10, "b": 3, "c": 1}), items_table({"a": 5, "b": 5, "c": 5}, "test")])
    t = class_targets(items, {"target": "max_class", "count": None}).set_index("label")
    assert t["target"].tolist() == [10, 10, 10] and t["n_synthetic"].tolist() == [0, 7, 9]
    t = class_targets(items, {"target": "fixed", "count": 6}).set_index("label")
    # real tiles are never dropped: a class above the fixed count keeps them all
    assert t["target"].tolist() == [10, 6, 6] and t["n_synthetic"].tolist() == [0, 3, 5]


def test_class_with_no_train_items_is_named():
    items = pd.concat([items_table({"a": 4, "b": 2}), items_table({"c": 2}, "val")])
    with pytest.raises(BioaugError, match="class 'c' has no items in the train split"):
        class_targets(items, {"target": "max_class", "count": None})


def test_tile_seeds_are_stable_and_distinct():
    a = tile_seeds(0, 1, 50)
    assert a.dtype == np.int64 and len(set(a.tolist())) == 50 and 0 <= a.min() and a.max() < 2**31
    np.testing.assert_array_equal(a[:10], tile_seeds(0, 1, 10))  # prefix-stable: more tiles, same first ones
    assert not np.array_equal(a, tile_seeds(0, 2, 50)) and not np.array_equal(a, tile_seeds(1, 1, 50))


def build_balanced_folder(tmp_path, channels: int, fmt: str = "tiff", size=(32, 24), summary=None, **cfg):
    """A balanced folder written by the stage: classes 'a' (3 real train tiles) and 'b w' (1 real
    + 2 synthetic), plus test items that must stay out. Returns (folder, manifest, real tiles of
    items.csv order, synthetic tiles)."""
    items = pd.concat([items_table({"a": 3, "b w": 1}), items_table({"a": 1, "b w": 1}, "test")], ignore_index=True)
    items["item_id"] = [f"it{i}" for i in range(len(items))]
    rng = np.random.default_rng(channels)
    tiles = rng.random((len(items), *size, channels), dtype=np.float32)
    tiles[0, 0, 0], tiles[0, 0, 1] = 0.0, 1.0  # the ends of the scale
    shard = tmp_path / "tiles" / "shard-00000.npy"
    norm = pd.DataFrame(
        {"image": "f.tif", "channel": range(channels), "low": 10.0, "high": [200.0 + i for i in range(channels)]}
    ).assign(method="per_channel")
    write_shard(shard, tiles, items.assign(tile_id=items["item_id"], pixel_size_um=0.5), norm)
    syn_tiles = rng.random((2, *size, channels), dtype=np.float32)
    syn = tmp_path / "syn" / "b_w.npy"
    syn.parent.mkdir(exist_ok=True)
    write_class(
        syn,
        syn_tiles,
        pd.DataFrame(
            {
                "label": "b w",
                "seed": [11, 12],
                "checkpoint": "gen",
                "step": 40,
                "used_for_balance": True,
                "filter_confidence": np.nan,
            }
        ),
        summary or {},
    )
    out = tmp_path / f"balanced-{fmt}-{channels}"
    manifest = write_balanced(items, [shard], [syn], out, {"format": fmt, "channel_names": None, **cfg}, (1.0, 99.8))
    return out, manifest, tiles, syn_tiles


def test_write_balanced(tmp_path):
    out, manifest, tiles, syn_tiles = build_balanced_folder(tmp_path, 2, size=(8, 8))
    assert manifest.groupby("label").size().to_dict() == {"a": 3, "b w": 3}
    assert manifest.groupby("origin").size().to_dict() == {"real": 4, "synthetic": 2}
    assert (manifest["split"] == "train").all()
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "a", "b_w", "manifest.csv"]
    assert sorted(p.name for p in (out / "b_w").iterdir()) == [
        "real_it3.tif", "synthetic_000000_seed11.tif", "synthetic_000001_seed12.tif"
    ]  # fmt: skip
    real_b = manifest[(manifest["label"] == "b w") & (manifest["origin"] == "real")].iloc[0]
    stored = tifffile.imread(out / real_b["path"])  # 8-bit CYX hyperstack
    np.testing.assert_array_equal(stored, encode(tiles[3], "tiff").transpose(2, 0, 1))
    x, m = read_balanced(out)
    assert x.shape == (6, 8, 8, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[m["origin"] == "synthetic"], syn_tiles, atol=0.5 / 255 + 1e-6)
    assert m["seed"].dropna().tolist() == [11, 12] and str(m["seed"].dtype) == "Int64"
    readme = (out / "README.txt").read_text()
    assert "tiff: uint8, an ImageJ hyperstack of 2 channels" in readme and "ch0 | ch1" in readme


def test_histogram_match_travels_with_the_balanced_dataset(tmp_path):
    """With generate.match_histograms, the maps generate stored go into the folder (a synthetic
    tile is regenerated from checkpoint, seed and its class's map) and README.txt says so."""
    import json

    match = {
        "reference_tiles": 512,
        "synthetic_quantiles": [[0.0, 0.5, 1.0]] * 2,
        "real_quantiles": [[0.1, 0.2, 0.9]] * 2,
    }
    out, *_ = build_balanced_folder(tmp_path, 2, size=(8, 8), summary={"histogram_match": match})
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "a", "b_w", "histogram_match.json", "manifest.csv"]
    doc = json.loads((out / "histogram_match.json").read_text())
    assert doc["classes"] == {"b w": match} and "numpy.interp" in doc["description"]
    assert "histogram-matched" in (out / "README.txt").read_text()
    plain, *_ = build_balanced_folder(tmp_path / "plain", 2, size=(8, 8))
    assert "histogram-matched" not in (plain / "README.txt").read_text()


def test_manifest_columns_and_integer_step_seed(tmp_path):
    out, manifest, _, _ = build_balanced_folder(tmp_path, 3, fmt="tiff16", size=(4, 4), channel_names=["x", "y", "z"])
    assert manifest.columns.tolist() == MANIFEST_COLUMNS
    text = (out / "manifest.csv").read_text().splitlines()
    header = text[0].split(",")
    syn_row = next(line for line in text if ",synthetic," in line).split(",")
    real_row = next(line for line in text if ",real," in line).split(",")
    assert syn_row[header.index("step")] == "40" and syn_row[header.index("seed")] == "11"  # not 40.0
    assert real_row[header.index("step")] == "" and real_row[header.index("seed")] == ""
    m = read_manifest(out)
    assert str(m["step"].dtype) == "Int64" and str(m["seed"].dtype) == "Int64"
    assert m["step"].isna().sum() == 4 and m.loc[m["origin"] == "synthetic", "step"].tolist() == [40, 40]
    row = m.iloc[0]
    assert (row["format"], row["dtype"], row["scale"], row["channels"]) == ("tiff16", "uint16", 65535, "x|y|z")
    assert (row["image"], row["normalisation"], row["low"], row["high"]) == (
        "f.tif",
        "per_channel",
        "10|10|10",
        "200|201|202",
    )
    assert row["pixel_size_um"] == 0.5
    syn = m[m["origin"] == "synthetic"].iloc[0]  # the real tiles' common pixel size and method; no raw mapping
    assert (syn["pixel_size_um"], syn["normalisation"], syn["low"], syn["image"]) == (0.5, "per_channel", "", "")


@pytest.mark.parametrize(
    "method, text",
    [
        ("per_channel", "per_channel: each channel on its own, its 0.5 and 99 percentiles in the source image map"),
        ("joint", "joint: one low/high for all channels (colour kept), its 0.5 and 99 percentiles"),
        ("bit_depth", "bit_depth: the source pixel type's range maps to [0, 1]"),
    ],
)
def test_normalisation_text(method, text):
    assert normalisation_text(method, [0.5, 99.0]).startswith(text)


FORMATS_CHANNELS = [(f, c) for f in balanced.FORMATS for c in (1, 2, 3, 4)]
TIFF_CHANNELS = [(f, c) for f, c in FORMATS_CHANNELS if not f.startswith("png")]


@pytest.mark.parametrize("fmt, c", FORMATS_CHANNELS, ids=[f"{f}-{c}ch" for f, c in FORMATS_CHANNELS])
def test_tile_round_trip(tmp_path, fmt, c):
    """Every format and channel count reads back to the normalised tile within half a step of its scale."""
    tile = np.random.default_rng(c).random((6, 5, c), dtype=np.float32)
    tile[0, 0, 0], tile[0, 1, 0] = 0.0, 1.0
    path = tmp_path / balanced.real_path("a", "t0", fmt)
    balanced.write_tile(path, tile, fmt)
    back = balanced.read_tile(path)
    scale = balanced.FORMATS[fmt].scale
    assert back.shape == (6, 5, c) and back.dtype == np.float32
    if fmt == "tiff_float":
        np.testing.assert_array_equal(back, tile)
    else:
        np.testing.assert_allclose(back, tile, atol=0.5 / scale + 1e-6)
        assert back.min() == 0.0 and back.max() == 1.0


@pytest.mark.parametrize("fmt, c", TIFF_CHANNELS, ids=[f"{f}-{c}ch" for f, c in TIFF_CHANNELS])
def test_tifffile_sees_the_layout(tmp_path, fmt, c):
    tile = np.random.default_rng(c).random((6, 5, c), dtype=np.float32)
    path = tmp_path / "t.tif"
    names = [f"n{i}" for i in range(c)]
    balanced.write_tile(path, tile, fmt, names)
    with tifffile.TiffFile(path) as tif:
        series, ij = tif.series[0], tif.imagej_metadata
        page = tif.pages[0]
        arr = series.asarray()
    assert ij is not None and "round(normalised *" in ij["Info"]  # an ImageJ TIFF
    assert arr.dtype == balanced.FORMATS[fmt].dtype
    if c == 1:
        assert series.axes == "YX" and arr.shape == (6, 5) and ij["Labels"] == "n0"
    elif c == 3 and fmt == "tiff":
        assert series.axes == "YXS" and page.photometric == tifffile.PHOTOMETRIC.RGB and page.planarconfig == 1
        np.testing.assert_array_equal(arr, encode(tile, fmt))
    else:
        assert series.axes == "CYX" and arr.shape == (c, 6, 5) and ij["channels"] == c
        assert ij["Labels"] == names and ij["mode"] == "composite"
        assert ij["Ranges"] == (0.0, float(balanced.FORMATS[fmt].scale)) * c


def test_pixel_size_is_written(tmp_path):
    tile = np.zeros((4, 4, 2), np.float32)
    balanced.write_tile(tmp_path / "t.tif", tile, "tiff", pixel_size_um=0.25)
    with tifffile.TiffFile(tmp_path / "t.tif") as tif:
        assert tif.pages[0].tags["XResolution"].value == (4, 1) and tif.imagej_metadata["unit"] == "um"
    balanced.write_tile(tmp_path / "t.png", tile, "png", pixel_size_um=0.25)
    with Image.open(tmp_path / "t.png") as img:
        assert img.info["dpi"] == pytest.approx((101600, 101600), rel=1e-3)
    balanced.write_tile(tmp_path / "none.tif", tile, "tiff")
    with tifffile.TiffFile(tmp_path / "none.tif") as tif:
        assert "unit" not in tif.imagej_metadata


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_pil_opens_the_default_format(tmp_path, c):
    """PIL (and so torchvision's default loader) opens every default-format tile: greyscale,
    RGB with the tile's values, or a hyperstack whose first page is channel 0."""
    out, manifest, _, _ = build_balanced_folder(tmp_path, c, size=(12, 10))
    x, _ = read_balanced(out)
    for i, rel in enumerate(manifest["path"]):
        want = encode(x[i], "tiff")
        with Image.open(out / rel) as img:
            assert img.size == (10, 12)  # PIL: (width, height)
            if c == 3:
                assert img.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(img), want)
            else:
                assert img.mode == "L" and getattr(img, "n_frames", 1) == c
                np.testing.assert_array_equal(np.asarray(img), want[..., 0])
                rgb = np.asarray(img.convert("RGB"))  # what torchvision's pil_loader returns: channel 0 as grey
                np.testing.assert_array_equal(rgb, np.repeat(want[..., :1], 3, axis=-1))


PNG_CASES = [(fmt, c) for fmt in ("png", "png16") for c in (1, 2, 3, 4)]


@pytest.mark.parametrize("fmt, c", PNG_CASES, ids=[f"{f}-{c}ch" for f, c in PNG_CASES])
def test_png_in_pil(tmp_path, fmt, c):
    """PIL on the PNG formats: the mode, size, channel names and values it gives. 8-bit: the
    tile; 16-bit greyscale: 'I;16' with the 16-bit values; 16-bit RGB(A): PIL's 8-bit view,
    the high byte (what the README warns about)."""
    tile = np.random.default_rng(c).random((6, 5, c), dtype=np.float32)
    tile[0, 0, 0] = 1.0
    balanced.write_tile(tmp_path / "t.png", tile, fmt, [f"n{i}" for i in range(c)], pixel_size_um=0.25)
    with Image.open(tmp_path / "t.png") as img:
        img.load()
        arr = np.asarray(img)
        assert img.size == (5, 6) and img.text["channels"] == "|".join(f"n{i}" for i in range(c))
        assert img.info["dpi"] == pytest.approx((101600, 101600), rel=1e-3)
    want = encode(tile, fmt)
    if c == 2:  # R = channel 0, G = channel 1, B = 0
        want = np.concatenate([want, np.zeros_like(want[..., :1])], axis=-1)
    if fmt == "png16" and c > 1:
        assert img.mode == ("RGB" if c < 4 else "RGBA")
        want = want >> 8
    else:
        assert img.mode == {1: "L" if fmt == "png" else "I;16", 2: "RGB", 3: "RGB", 4: "RGBA"}[c]
    np.testing.assert_array_equal(arr.reshape(want.shape), want)
    assert balanced.read_tile(tmp_path / "t.png").shape == (6, 5, c)  # bioaug reads the 16 bits back


def test_png_with_five_channels_is_named(tmp_path):
    with pytest.raises(BioaugError, match=r"balance.format: png holds at most 4 channels .* the tiles have 5"):
        balanced.write_tile(tmp_path / "t.png", np.zeros((4, 4, 5), np.float32), "png")
    with pytest.raises(BioaugError, match="balance.format: png holds at most 4"):  # before any tile is written
        build_balanced_folder(tmp_path, 5, fmt="png", size=(4, 4))
    assert not (tmp_path / "balanced-png-5").exists()
    # five channels in a TIFF: an ImageJ hyperstack
    balanced.write_tile(tmp_path / "t.tif", np.zeros((4, 4, 5), np.float32), "tiff")
    assert balanced.read_tile(tmp_path / "t.tif").shape == (4, 4, 5)


def test_channel_names_are_checked():
    assert balanced.channel_names(None, 3) == ["R", "G", "B"]
    assert balanced.channel_names(None, 2) == ["ch0", "ch1"]
    with pytest.raises(BioaugError, match=r"balance.channel_names: 1 names \['dapi'\] for tiles of 2 channels"):
        balanced.channel_names(["dapi"], 2)
    with pytest.raises(BioaugError, match="balance.channel_names"):
        balanced.channel_names(["a|b", "c"], 2)


def test_old_float_tiles_still_read(tmp_path):
    """Folders written before issue 12 (float32 H x W x C pages, axes YXS) read back as they were."""
    tile = np.random.default_rng(0).random((4, 4, 2), dtype=np.float32)
    tifffile.imwrite(
        tmp_path / "t.tif", tile, photometric="minisblack", planarconfig="contig", metadata={"axes": "YXS"}
    )
    np.testing.assert_array_equal(balanced.read_tile(tmp_path / "t.tif"), tile)


class FakeGenerator:
    """Stands in for a trained generator: class c, seed s -> a tile filled with (s % 100) / 100."""

    class_names, tile_size, channels, meta = ["a", "b"], 4, 1, {"step": 7}


def test_selective_synthesis_keeps_confident_tiles_until_target(tmp_path, monkeypatch):
    import json

    import bioaug.gan as gan
    from bioaug.stages.generate import generate_class

    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    (gen_dir / "generator.json").write_text(
        json.dumps({"class_names": ["a", "b"], "tile_size": 4, "out_channels": 1, "step": 7})
    )
    monkeypatch.setattr(gan, "load_generator", lambda d: FakeGenerator())
    monkeypatch.setattr(
        gan,
        "sample_tiles",
        lambda g, c, seeds, batch_size: np.stack([np.full((4, 4, 1), (s % 100) / 100, np.float32) for s in seeds]),
    )

    class Filter:  # confident about its class only for bright tiles
        def predict_proba(self, x):
            p = x.reshape(len(x), -1).mean(1)
            return np.stack([1 - p, p], axis=1)

    items = items_table({"a": 20, "b": 5})
    cfg = {"batch_size": 8, "seed": 0, "min_confidence": 0.5, "max_draws_factor": 4}
    summary = generate_class(
        gen_dir, items, "b", {"target": "max_class", "count": None}, cfg, tmp_path / "b.npy", filter_classifier=Filter()
    )
    tiles, meta = np.load(tmp_path / "b.npy"), pd.read_csv(tmp_path / "b.csv")
    assert summary["target"] == 20 and summary["generated"] == len(tiles) == len(meta) == 20
    assert (tiles.reshape(20, -1).mean(1) >= 0.5).all() and (meta["filter_confidence"] >= 0.5).all()
    assert 0.3 < summary["acceptance_rate"] < 0.7 and summary["drawn"] > 20
    assert meta["used_for_balance"].sum() == 15  # 20 target - 5 real
    # an impossible threshold stops at the cap and records the shortfall
    summary = generate_class(
        gen_dir,
        items,
        "b",
        {"target": "max_class", "count": None},
        {**cfg, "min_confidence": 1.01},
        tmp_path / "b2.npy",
        filter_classifier=Filter(),
    )
    assert summary["generated"] == 0 and summary["drawn"] == 80 and summary["short_by"] == 20


@pytest.mark.parametrize("fmt", ["tiff", "tiff16", "png16"])
def test_manifest_maps_stored_pixels_back_to_the_source(tmp_path, fmt):
    """From a real 16-bit two-channel source through the tile stage to the balanced files: the
    manifest's low/high and scale turn every stored pixel back into the source's raw value
    (to within one quantisation step, where the source lies inside [low, high]), and the
    source's pixel size reaches the file."""
    from bioaug.formats.shards import shard_files
    from bioaug.stages.tile import tile_shard
    from helpers import tiles_cfg

    rng = np.random.default_rng(3)
    src = np.stack([rng.integers(100, 4000, (64, 64)), rng.integers(0, 60000, (64, 64))]).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "img.tif", src, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um", "axes": "CYX"}
    )
    xs, ys = [16.0, 40.0, 30.0], [20.0, 44.0, 30.0]
    items = pd.DataFrame({"item_id": ["p0", "p1", "p2"], "image": "img.tif", "group": "img.tif",
                          "label": ["a", "a", "b"], "kind": "point", "x": xs, "y": ys, "split": "train"})  # fmt: skip
    shard = tmp_path / "tiles" / "shard-00000.npy"
    tile_shard(tmp_path, items, ["img.tif"], tiles_cfg(size=16, normalise="per_channel"), shard)
    assert shard_files(shard)[2].exists()
    out = tmp_path / "balanced"
    manifest = write_balanced(items, [shard], [], out, {"format": fmt, "channel_names": ["dna", "actin"]})
    scale = balanced.FORMATS[fmt].scale
    for row, x, y in zip(manifest.itertuples(), xs, ys):
        assert (row.image, row.normalisation, row.pixel_size_um) == ("img.tif", "per_channel", 0.25)
        low, high = (np.array(v.split("|"), float) for v in (row.low, row.high))
        stored = balanced.read_tile(out / row.path) * scale  # the file's integers, (H, W, C)
        raw = src[:, int(y) - 8 : int(y) + 8, int(x) - 8 : int(x) + 8].transpose(1, 2, 0).astype(float)
        back = low + stored / scale * (high - low)
        inside = (raw >= low) & (raw <= high)
        assert inside.mean() > 0.9
        assert np.abs(back - raw)[inside].max() <= ((high - low) / scale / 2 + 1e-3 * (high - low)).max()
    if fmt.startswith("tiff"):
        with tifffile.TiffFile(out / manifest["path"].iloc[0]) as tif:
            assert tif.pages[0].tags["XResolution"].value == (4, 1) and tif.imagej_metadata["unit"] == "um"
            assert tif.imagej_metadata["Labels"] == ["dna", "actin"]
    readme = (out / "README.txt").read_text()
    assert "0.25 um per pixel" in readme and "per_channel: each channel on its own" in readme
