"""Every input format, image flavours, grouped splits per format, and bad input accounting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bioaug.formats.images import open_image, validate_image
from bioaug.formats.shards import shard_images
from bioaug.runtime import BioaugError
from bioaug.stages.index import index_dataset
from bioaug.stages.split import assign_splits
from helpers import check_group_integrity, read_image, tile_images

TILES = {"size": 16, "channels": None, "percentiles": [1, 99], "shard_size": 50}
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
RNG = np.random.default_rng(0)


def field(h=48, w=64, c=None, dtype=np.uint16):
    shape = (h, w) if c is None else (h, w, c)
    hi = 255 if dtype == np.uint8 else 4000
    return RNG.integers(0, hi, shape).astype(dtype)


def tile_all(root, items, cfg=TILES):
    out = [tile_images(root, items, imgs, cfg) for imgs in shard_images(items, cfg)]
    return np.concatenate([o[0] for o in out]), pd.concat([o[1] for o in out], ignore_index=True)


def split_ok(items):
    out = assign_splits(items, FRACTIONS, seed=0)
    check_group_integrity(out)
    assert (out.groupby("group")["split"].nunique() == 1).all()
    return out


# ----------------------------------------------------------------------------- formats


def test_points_csv_with_group_column(tmp_path):
    rows = []
    for i in range(12):
        tifffile.imwrite(tmp_path / f"w{i}.tif", field())
        rows += [(f"w{i}.tif", "a" if k else "b", 10 + 5 * k, 20, f"well{i // 2}") for k in range(3)]
    pd.DataFrame(rows, columns=["image", "label", "x", "y", "group"]).to_csv(tmp_path / "p.csv", index=False)
    items, rejected = index_dataset(tmp_path, {"format": "points", "annotations": "p.csv"}, TILES)
    assert len(items) == 36 and rejected.empty and set(items["group"]) == {f"well{i}" for i in range(6)}
    assert (items["image_pixels"] == 48 * 64).all()  # what sizes the tiling jobs (formats/shards.py)
    out = split_ok(items)
    assert out.groupby("group")["split"].nunique().max() == 1  # two images of one well stay together
    x, meta = tile_all(tmp_path, items)
    assert x.shape == (36, 16, 16, 1)


def test_boxes_csv_with_column_mapping_and_box_context(tmp_path):
    rows = []
    for i in range(10):
        tifffile.imwrite(tmp_path / f"f{i}.tif", field(c=3, dtype=np.uint8), photometric="rgb")
        rows += [(f"f{i}.tif", "big", 5, 40, 5, 40), (f"f{i}.tif", "small", 50, 60, 30, 40)]
    # BCCD's test.csv order: filename, cell_type, xmin, xmax, ymin, ymax
    pd.DataFrame(rows, columns=["filename", "cell_type", "xmin", "xmax", "ymin", "ymax"]).to_csv(
        tmp_path / "b.csv", index=False
    )
    cfg = {"format": "boxes_csv", "annotations": "b.csv", "columns": {"image": "filename", "label": "cell_type"}}
    items, rejected = index_dataset(tmp_path, cfg, TILES)
    assert len(items) == 20 and rejected.empty
    big = items[items["label"] == "big"].iloc[0]
    assert (big["x"], big["y"]) == (22.5, 22.5)  # box centre
    split_ok(items)
    x, _ = tile_all(tmp_path, items, {**TILES, "context": "box", "box_margin": 0.0})
    assert x.shape == (20, 16, 16, 3)
    # with context=box, a 35 px box is shrunk into the tile: its content matches a resize of the box
    raw = read_image(tmp_path / "f0.tif")[5:40, 5:40]
    lo, hi = np.percentile(read_image(tmp_path / "f0.tif").reshape(-1, 3), [1, 99], axis=0)
    assert abs(x[0].mean() - np.clip((raw - lo) / (hi - lo), 0, 1).mean()) < 0.05


def test_voc_folder(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    for i in range(9):
        Image.fromarray(field(c=3, dtype=np.uint8)).save(tmp_path / "JPEGImages" / f"im{i}.jpg")
        objs = "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>10</ymin>"
            f"<xmax>{x0 + 12}</xmax><ymax>22</ymax></bndbox></object>"
            for name, x0 in (("RBC", 5), ("WBC", 30), ("Platelets", 45))
        )
        (tmp_path / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename>{objs}</annotation>"
        )
    items, rejected = index_dataset(tmp_path, {"format": "voc", "annotations": "Annotations"}, TILES)
    assert len(items) == 27 and rejected.empty
    assert items["image"].str.startswith("JPEGImages/").all()
    split_ok(items)
    x, _ = tile_all(tmp_path, items)
    assert x.shape == (27, 16, 16, 3)


def test_class_folders_sliding_windows_with_foreground_filter(tmp_path):
    for cls in ("pos", "neg"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            img = np.zeros((40, 40), np.uint16)
            img[:16, :16] = 3000  # foreground only in the top-left window
            img[30, 30] = 10  # and a speck
            tifffile.imwrite(tmp_path / cls / f"{cls}{i}.tif", img)
    items, rejected = index_dataset(tmp_path, {"format": "class_folders"}, TILES)
    assert len(items) == 12 and rejected.empty and set(items["kind"]) == {"window"}
    split_ok(items)
    x, meta = tile_all(tmp_path, items, {**TILES, "stride": 8})
    assert len(x) == 12 * 16  # (40-16)/8+1 = 4 windows per axis
    # the windows at (0, 8) and (8, 0) are half foreground, (8, 8) a quarter
    x, meta = tile_all(tmp_path, items, {**TILES, "stride": 8, "min_foreground": 0.5})
    assert len(x) == 12 * 3
    x, meta = tile_all(tmp_path, items, {**TILES, "stride": 8, "min_foreground": 0.6})
    assert len(x) == 12 and meta["tile_id"].str.endswith("_w0").all()  # only the top-left window


def test_npz_medmnist_layout_and_its_split(tmp_path):
    arrays = {}
    for split, n in (("train", 30), ("val", 9), ("test", 9)):
        arrays[f"{split}_images"] = RNG.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    items, rejected = index_dataset(tmp_path, {"format": "npz", "annotations": "pathmnist.npz"}, TILES)
    assert len(items) == 48 and rejected.empty and set(items["label"]) == {"0", "1", "2"}
    assert (items["image_pixels"] == 28 * 28).all()
    kept = assign_splits(items, FRACTIONS, seed=0, use_source_split=True)
    assert kept["split"].value_counts().to_dict() == {"train": 30, "val": 9, "test": 9}
    split_ok(items)  # or our own grouped split
    x, _ = tile_all(tmp_path, items)
    assert x.shape == (48, 16, 16, 1)  # 28 px resized to the 16 px tile
    with pytest.raises(BioaugError, match="use_source_split"):
        assign_splits(items.drop(columns="source_split"), FRACTIONS, seed=0, use_source_split=True)


# ----------------------------------------------------------------------------- image flavours


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_dtypes_and_channel_selection(tmp_path, dtype):
    arr = (RNG.random((3, 20, 24)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "m.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
    out = read_image(tmp_path / "m.tif", channels=[2, 0])
    assert out.shape == (20, 24, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], arr[2].astype(np.float32))


def test_multipage_tiff_pages_are_channels(tmp_path):
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for k in range(3):
            tw.write(np.full((10, 12), k, np.uint16))
    out = read_image(tmp_path / "pages.tif")
    assert out.shape == (10, 12, 3) and out[0, 0].tolist() == [0, 1, 2]


def test_unsupported_dtype_and_stacks(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(BioaugError, match="c.tif: unsupported pixel type complex64"):
        open_image(tmp_path / "c.tif")
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((4, 2, 8, 8), np.uint16), metadata={"axes": "ZCYX"})
    with pytest.raises(BioaugError, match="axis 'Z' has 4 planes"):
        open_image(tmp_path / "z.tif")


@pytest.mark.parametrize("axes", ["YX", "CYX", "YXS"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_small_tiff_is_read_whole_in_either_byte_order(tmp_path, axes, byteorder):
    """Up to LAZY_TIFF_PIXELS a TIFF is an in-memory array (the tile stage crops all objects
    of an image in one gather only from an array), in any axis order and byte order."""
    shape = {"YX": (30, 40), "CYX": (2, 30, 40), "YXS": (30, 40, 3)}[axes]
    arr = RNG.integers(0, 60000, shape).astype(f"{byteorder}u2")
    kw = {"photometric": "rgb"} if axes == "YXS" else {"photometric": "minisblack", "metadata": {"axes": axes}}
    hwc = np.moveaxis(arr, 0, -1) if axes == "CYX" else arr.reshape(30, 40, -1)
    for compression in (None, "zlib"):
        tifffile.imwrite(tmp_path / "m.tif", arr, byteorder=byteorder, compression=compression, **kw)
        src = open_image(tmp_path / "m.tif")
        assert type(src.array) is np.ndarray
        np.testing.assert_array_equal(src.read(), hwc.astype(np.float32))
        np.testing.assert_array_equal(src.sample(max_pixels=300, raw=True), hwc[::2, ::2])  # k = ceil(sqrt(1200 / 300))


def test_large_uncompressed_tiff_is_memory_mapped(tmp_path, monkeypatch):
    import bioaug.formats.images as images

    monkeypatch.setattr(images, "LAZY_TIFF_PIXELS", 1000)
    arr = np.arange(600 * 700, dtype=np.uint16).reshape(600, 700)
    tifffile.imwrite(tmp_path / "big.tif", arr)
    tifffile.imwrite(tmp_path / "big-endian.tif", arr.astype(">u2"), byteorder=">")
    np.testing.assert_array_equal(open_image(tmp_path / "big-endian.tif").read()[..., 0], arr)
    src = open_image(tmp_path / "big.tif")
    assert type(src.array).__name__ == "MappedTiff"  # read region by region, never whole
    np.testing.assert_array_equal(src.region(100, 200, 16, 16)[..., 0], arr[100:116, 200:216])
    edge = src.region(-3, -3, 8, 8)[..., 0]  # reflect-padded at the corner
    np.testing.assert_array_equal(edge, np.pad(arr[:5, :5], ((3, 0), (3, 0)), mode="reflect"))
    np.testing.assert_array_equal(src.sample(max_pixels=10_000)[..., 0], arr[::7, ::7])  # k = ceil(sqrt(42e4 / 1e4))
    np.testing.assert_array_equal(src.read()[..., 0], arr)
    assert validate_image(tmp_path / "big.tif") == (600, 700, 1)


def test_large_compressed_tiled_tiff_is_read_lazily(tmp_path, monkeypatch):
    import bioaug.formats.images as images

    monkeypatch.setattr(images, "LAZY_TIFF_PIXELS", 1000)
    arr = RNG.integers(0, 60000, (2, 300, 260)).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "z.tif", arr, tile=(64, 64), compression="zlib", photometric="minisblack", metadata={"axes": "CYX"}
    )
    src = open_image(tmp_path / "z.tif", channels=[1])
    assert type(src.array).__name__ == "LazyTiff" and src.shape == (300, 260, 1)
    np.testing.assert_array_equal(src.region(50, 70, 32, 32)[..., 0], arr[1, 50:82, 70:102])
    np.testing.assert_array_equal(
        src.region(-4, 250, 8, 16)[..., 0], np.pad(arr[1, :4, 250:], ((4, 0), (0, 6)), mode="reflect")
    )
    np.testing.assert_array_equal(src.read()[..., 0], arr[1])
    assert validate_image(tmp_path / "z.tif") == (300, 260, 2)


# ----------------------------------------------------------------------------- bad inputs


def make_bad_dataset(root):
    """A points dataset with 3 good images and one of every kind of bad input."""
    root.mkdir(exist_ok=True)
    good = [f"good{i}.tif" for i in range(3)]
    for g in good:
        tifffile.imwrite(root / g, field())
    full = root / "truncated.tif"
    tifffile.imwrite(full, field(h=64, w=64))
    full.write_bytes(full.read_bytes()[:3000])  # 1 truncated TIFF
    (root / "empty.tif").write_bytes(b"")  # 2 zero-byte file
    (root / "text.png").write_text("this is not an image")  # 3 not an image
    tifffile.imwrite(root / "complex.tif", np.zeros((32, 32), np.complex64))  # 4 unsupported dtype
    tifffile.imwrite(root / "tiny.tif", np.ones((8, 8), np.uint16))  # 5 smaller than the tile
    nan = np.ones((32, 32), np.float32)
    nan[3, 3] = np.nan
    tifffile.imwrite(root / "nan.tif", nan)  # 9 NaN pixels
    rows = (
        [(g, "a", 20, 20) for g in good]
        + [(g, "b", 30, 30) for g in good]
        + [
            ("truncated.tif", "a", 5, 5),
            ("empty.tif", "a", 5, 5),
            ("text.png", "a", 5, 5),
            ("complex.tif", "a", 5, 5),
            ("tiny.tif", "a", 4, 4),
            ("missing.tif", "a", 5, 5),  # 6 annotation naming a missing image
            ("good0.tif", "a", 500, 5),  # 7 point outside the image
            ("good1.tif", "zebra", 10, 10),  # 8 unknown class
            ("nan.tif", "a", 5, 5),
            ("good2.tif", "", 10, 10),  # 10 no label
        ]
    )
    pd.DataFrame(rows, columns=["image", "label", "x", "y"]).to_csv(root / "p.csv", index=False)
    tifffile.imwrite(root / "orphan.tif", field())  # 11 image nobody annotated
    # inputs: every annotation row, and every file no item uses (the orphan and the 6 images
    # whose only annotations are bad; missing.tif is no file)
    return {"format": "points", "annotations": "p.csv", "classes": ["a", "b"]}, len(rows) + 1 + 6


def test_skip_accounts_for_every_input(tmp_path):
    cfg, n_inputs = make_bad_dataset(tmp_path)
    items, rejected = index_dataset(tmp_path, {**cfg, "on_bad_input": "skip"}, TILES)
    assert len(items) == 6
    assert len(items) + len(rejected) == n_inputs  # nothing lost, nothing counted twice
    reasons = dict(zip(rejected["input"], rejected["reason"]))
    expected = {
        "p.csv:8": "truncated.tif",
        "p.csv:9": "empty.tif",
        "p.csv:10": "text.png",
        "p.csv:11": "complex",
        "p.csv:12": "smaller than the 16 px tile",
        "p.csv:13": "missing.tif: image file not found",
        "p.csv:14": "lies outside the 64x48 image",
        "p.csv:15": "unknown class 'zebra'",
        "p.csv:16": "NaN",
        "p.csv:17": "no class label",
        "orphan.tif": "no annotations",
    }
    for ref, fragment in expected.items():
        assert fragment in reasons[ref], (ref, reasons.get(ref))
    assert "not a readable image" in reasons["p.csv:8"] and "not a readable image" in reasons["p.csv:9"]


def test_error_mode_stops_at_the_first_bad_input_with_its_path(tmp_path):
    cfg, _ = make_bad_dataset(tmp_path)
    with pytest.raises(BioaugError, match=r"p.csv:8: image .*truncated.tif: not a readable image"):
        index_dataset(tmp_path, cfg, TILES)


def test_border_skip_rejects_objects_near_the_edge(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", field())
    pd.DataFrame([("f.tif", "a", 3, 3), ("f.tif", "a", 30, 24)], columns=["image", "label", "x", "y"]).to_csv(
        tmp_path / "p.csv", index=False
    )
    items, rejected = index_dataset(
        tmp_path, {"format": "points", "annotations": "p.csv", "on_bad_input": "skip"}, {**TILES, "border": "skip"}
    )
    assert len(items) == 1 and "crosses the image border" in rejected["reason"].iloc[0]
