"""Reading images, normalisation, object-centred crops and the shard format."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bioaug.formats.images import ImageSource
from bioaug.formats.items import class_names
from bioaug.formats.shards import load_tiles, n_shards, shard_files, shard_images
from bioaug.runtime import BioaugError
from bioaug.stages.tile import apply_stats, gather_crops, percentile_stats
from helpers import image_shape, read_image, tile_images, tiles_cfg, write_shard


def test_read_tiff_layouts(tmp_path):
    cyx = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 6, 5)
    tifffile.imwrite(tmp_path / "cyx.tif", cyx, photometric="minisblack", metadata={"axes": "CYX"})
    out = read_image(tmp_path / "cyx.tif")
    assert out.shape == (6, 5, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 1], cyx[1])
    assert image_shape(tmp_path / "cyx.tif") == (6, 5, 2)
    assert read_image(tmp_path / "cyx.tif", channels=[1]).shape == (6, 5, 1)

    tifffile.imwrite(tmp_path / "yx.tif", cyx[0])
    assert read_image(tmp_path / "yx.tif").shape == (6, 5, 1)

    Image.fromarray(np.full((4, 7, 3), 9, np.uint8)).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").shape == (4, 7, 3)
    assert image_shape(tmp_path / "rgb.png") == (4, 7, 3)


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(BioaugError, match="missing.tif: image file not found"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(BioaugError, match="junk.tif: not a readable image"):
        read_image(tmp_path / "junk.tif")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((3, 3), np.uint8))
    with pytest.raises(BioaugError, match=r"one.tif: has 1 channel\(s\), tiles.channels asks for \[2\]"):
        read_image(tmp_path / "one.tif", channels=[2])
    tifffile.imwrite(tmp_path / "nan.tif", np.full((3, 3), np.nan, np.float32))
    with pytest.raises(BioaugError, match="nan.tif: contains NaN"):
        read_image(tmp_path / "nan.tif")


def _normalise(img, low_pct, high_pct):
    low, high = percentile_stats(img, low_pct, high_pct)
    return apply_stats(img, low, high), low, high


def test_normalise_maps_percentiles_per_channel():
    rng = np.random.default_rng(0)
    img = np.stack([rng.uniform(100, 200, (50, 50)), rng.uniform(1000, 5000, (50, 50))], -1).astype(np.float32)
    out, low, high = _normalise(img, 1.0, 99.0)
    assert out.min() == 0.0 and out.max() == 1.0 and out.dtype == np.float32
    np.testing.assert_allclose(low, np.percentile(img.reshape(-1, 2), 1.0, axis=0), rtol=1e-6)
    # about 1% of pixels saturate at each end, per channel
    for c in range(2):
        assert 0.005 < (out[..., c] == 1.0).mean() < 0.02
    flat, *_ = _normalise(np.full((4, 4, 1), 7.0, np.float32), 1, 99)  # constant image: no division by 0
    assert np.isfinite(flat).all()


def test_centred_crops_are_centred_and_reflect_padded():
    img = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    crops = gather_crops(ImageSource("img", img, None), np.array([10.0, 0.0]), np.array([5.0, 19.0]), 8)
    assert crops.shape == (2, 8, 8, 1)
    assert crops[0, 4, 4, 0] == img[5, 10, 0]  # centre pixel at (size//2, size//2)
    np.testing.assert_array_equal(crops[0], img[1:9, 6:14])
    assert crops[1, 4, 4, 0] == img[19, 0, 0]
    assert crops[1, 4, 3, 0] == img[19, 1, 0]  # reflected across the left border


@pytest.mark.parametrize("h, w", [(40, 50), (3, 7), (2, 2), (1, 9), (9, 1), (5, 5)])
def test_gathered_crops_equal_region_reads_everywhere(h, w):
    """The one-gather crop path pads exactly as ImageSource.region (numpy's reflect of the part
    inside, repeated when the crop is larger; edge for a one-pixel part), at any position."""
    rng = np.random.default_rng(h * 100 + w)
    img = rng.integers(0, 4000, (h, w, 3), dtype=np.uint16)
    for channels in (None, [2, 0]):
        src = ImageSource("img", img, channels)
        for size in (1, 4, 8, 17):
            ys = rng.integers(-size // 2 + 1, h + size // 2, 40).astype(float)
            xs = rng.integers(-size // 2 + 1, w + size // 2, 40).astype(float)
            crops = gather_crops(src, xs, ys, size)
            assert crops.dtype == img.dtype and crops.shape == (40, size, size, 3 if channels is None else 2)
            for x, y, crop in zip(xs, ys, crops):
                want = src.region(int(round(y)) - size // 2, int(round(x)) - size // 2, size, size)
                np.testing.assert_array_equal(crop, want, err_msg=f"{h}x{w}, size {size}, at ({x}, {y})")
    with pytest.raises(BioaugError, match="outside"):
        gather_crops(ImageSource("img", img, None), np.array([w + 20.0]), np.array([1.0]), 4)


def test_shards_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        tifffile.imwrite(
            tmp_path / f"f{i}.tif",
            rng.integers(0, 4000, (2, 40, 40), dtype=np.uint16),
            photometric="minisblack",
            metadata={"axes": "CYX"},
        )
    index = pd.DataFrame(
        {
            "item_id": [f"it{i}" for i in range(10)],
            "image": [f"f{i // 2}.tif" for i in range(10)],
            "group": 0,
            "label": ["a", "b"] * 5,
            "kind": "point",
            "x": 20.0,
            "y": 20.0,
        }
    )
    by_two = {"shard_size": 2, "shard_megapixels": 256}
    assert n_shards(index, by_two) == 3 and shard_images(index, by_two, 2) == ["f4.tif"]
    cfg = {"size": 16, "channels": None, "percentiles": [1, 99]}
    tiles, meta, norm = tile_images(tmp_path, index, shard_images(index, by_two, 0), cfg)
    assert tiles.shape == (4, 16, 16, 2) and meta["item_id"].tolist() == ["it0", "it1", "it2", "it3"]
    assert meta["tile_id"].tolist() == meta["item_id"].tolist()  # one tile per point
    assert len(norm) == 4 and (norm["high"] > norm["low"]).all()

    write_shard(tmp_path / "shard-00000.npy", tiles, meta, norm)
    assert all(p.exists() for p in shard_files(tmp_path / "shard-00000.npy"))
    items = index.iloc[:4].assign(split=["train", "test", "train", "val"])
    x, y, rows = load_tiles([tmp_path / "shard-00000.npy"], items, splits=("train",))
    assert rows["item_id"].tolist() == ["it0", "it2"] and y.tolist() == [0, 0]
    np.testing.assert_array_equal(x, tiles[[0, 2]])
    assert class_names(items) == ["a", "b"]
    with pytest.raises(BioaugError, match="no tiles"):
        load_tiles([tmp_path / "shard-00000.npy"], items.assign(split="val").iloc[:0], splits=("val",))


def image_index(pixels: dict[str, int], items_per_image: int = 2) -> pd.DataFrame:
    rows = [
        {"item_id": f"{image}-{k}", "image": image, "label": "a", "image_pixels": n}
        for image, n in pixels.items()
        for k in range(items_per_image)
    ]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # shards do not depend on row order


def check_shards(blocks, pixels, budget_mp, cap=None):
    """Every image in exactly one shard, in sorted order; each shard within the budget unless
    it is one image; within the cap."""
    assert [im for b in blocks for im in b] == sorted(pixels)
    for b in blocks:
        assert len(b) == 1 or sum(pixels[im] for im in b) <= budget_mp * 1e6
        assert cap is None or len(b) <= cap
    # greedy: a shard closes only when the next image would not fit
    for b, nxt in zip(blocks, blocks[1:]):
        full = cap is not None and len(b) == cap
        assert full or sum(pixels[im] for im in b) + pixels[nxt[0]] > budget_mp * 1e6


def test_shards_are_sized_by_pixels_not_file_count():
    small = {f"crop_{i:05d}.tif": 40 * 40 * 3 for i in range(8000)}  # 38.4 MP of single-cell crops
    index = image_index(small)
    one = shard_images(index, {"shard_megapixels": 256, "shard_size": None})
    assert len(one) == 1 and len(one[0]) == 8000  # was 167 jobs at 48 images each
    blocks = shard_images(index, {"shard_megapixels": 10, "shard_size": None})
    assert len(blocks) == 4  # ceil(38.4 / 10)
    check_shards(blocks, small, 10)
    capped = shard_images(index, {"shard_megapixels": 256, "shard_size": 3000})
    assert [len(b) for b in capped] == [3000, 3000, 2000]
    check_shards(capped, small, 256, cap=3000)
    assert n_shards(index, {"shard_megapixels": 10, "shard_size": None}) == 4
    assert shard_images(index, {"shard_megapixels": 10, "shard_size": None}, 3) == blocks[3]


def test_a_slide_larger_than_the_budget_is_a_shard_of_its_own():
    rng = np.random.default_rng(1)
    pixels = {f"img_{i:03d}.tif": int(n) for i, n in enumerate(rng.integers(1e5, 5e7, 60))}
    pixels["img_030.tif"] = 3_000_000_000  # a 3-gigapixel slide
    index = image_index(pixels, items_per_image=3)
    blocks = shard_images(index, {"shard_megapixels": 64, "shard_size": None})
    check_shards(blocks, pixels, 64)
    assert ["img_030.tif"] in blocks
    slides = {f"slide_{i}.tif": 2_000_000_000 for i in range(5)}
    assert len(shard_images(image_index(slides), {"shard_megapixels": 256, "shard_size": None})) == 5


def test_an_index_without_pixel_counts_is_cut_by_image_count():
    index = image_index({f"f{i}.tif": 1 for i in range(7)}).drop(columns="image_pixels")
    assert [len(b) for b in shard_images(index, {"shard_megapixels": 256, "shard_size": 3})] == [3, 3, 1]


def test_histogram_percentiles_equal_numpy():
    rng = np.random.default_rng(3)
    for dtype, hi in ((np.uint8, 255), (np.uint16, 60000)):
        img = rng.integers(0, hi, (37, 41, 2)).astype(dtype)
        # interleaved (YXC), channel-planar (a CYX file seen as YXC) and a strided sample of it
        for view in (img, np.moveaxis(np.ascontiguousarray(np.moveaxis(img, -1, 0)), 0, -1), img[::3, ::2]):
            low, high = percentile_stats(view, 1.0, 99.8)
            ref = np.percentile(view.reshape(-1, 2).astype(np.float64), [1.0, 99.8], axis=0)
            np.testing.assert_allclose(low, ref[0], rtol=1e-6)
            np.testing.assert_allclose(high, ref[1], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_apply_stats_takes_raw_pixels_and_views(dtype):
    """Normalising the file's own pixel type (and a channel-planar view) gives exactly what
    normalising its float32 copy gives: (x - low) / (high - low), clipped, a flat channel 0."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 250, (5, 6, 7, 3)).astype(dtype)
    low, high = np.array([10, 20, 50], np.float32), np.array([200, 120, 50], np.float32)  # channel 2 flat
    want = np.clip((x.astype(np.float32) - low) / np.where(high > low, high - low, 1).astype(np.float32), 0, 1)
    planar = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1, -1)
    for view in (x, planar):
        out = apply_stats(view, low, high)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, want)


def test_percentiles_of_a_large_image_come_from_a_grid_sample(tmp_path):
    """tiles.percentile_pixels: an image up to that many pixels per channel is exact; a larger
    one takes every k-th row and column; null takes every pixel. The shard's norm table says
    which values were used."""
    from bioaug.stages.tile import tile_shard

    rng = np.random.default_rng(5)
    img = rng.integers(0, 60000, (2, 300, 200), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "f.tif", img, photometric="minisblack", metadata={"axes": "CYX"})
    index = pd.DataFrame(
        {"item_id": ["a"], "image": ["f.tif"], "group": 0, "label": "a", "kind": "point", "x": 100.0, "y": 150.0}
    )
    for budget, k in ((60_000, 1), (None, 1), (10_000, 3), (1024, 8)):  # k = ceil(sqrt(60000 / budget))
        out = tmp_path / f"s{budget}" / "shard-00000.npy"
        tile_shard(tmp_path, index, ["f.tif"], tiles_cfg(size=16, percentile_pixels=budget), out)
        norm = pd.read_csv(shard_files(out)[2])
        want = np.percentile(img[:, ::k, ::k].reshape(2, -1).astype(np.float64), [1.0, 99.8], axis=1)
        np.testing.assert_allclose(norm["low"], want[0], rtol=1e-6)
        np.testing.assert_allclose(norm["high"], want[1], rtol=1e-6)


def test_streamed_shard_equals_in_memory_tiles(tmp_path):
    from bioaug.stages.tile import tile_shard

    rng = np.random.default_rng(1)
    for i in range(3):
        tifffile.imwrite(
            tmp_path / f"f{i}.tif",
            rng.integers(0, 4000, (2, 40, 40), dtype=np.uint16),
            photometric="minisblack",
            metadata={"axes": "CYX"},
        )
    index = pd.DataFrame(
        {
            "item_id": [f"it{i}" for i in range(6)],
            "image": [f"f{i // 2}.tif" for i in range(6)],
            "group": 0,
            "label": "a",
            "kind": "point",
            "x": [5.0, 30.0] * 3,
            "y": 20.0,
        }
    )
    cfg = tiles_cfg(size=16, channels=None, percentiles=[1, 99])
    tiles, meta, norm = tile_images(tmp_path, index, ["f0.tif", "f1.tif", "f2.tif"], cfg)
    assert tile_shard(tmp_path, index, ["f0.tif", "f1.tif", "f2.tif"], cfg, tmp_path / "out" / "shard-00000.npy") == 6
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "shard-00000.npy"), tiles)
    assert pd.read_csv(tmp_path / "out" / "shard-00000.csv")["tile_id"].tolist() == meta["tile_id"].tolist()
    assert len(pd.read_csv(tmp_path / "out" / "shard-00000.norm.csv")) == len(norm) == 6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "shard-00000.csv",
        "shard-00000.norm.csv",
        "shard-00000.npy",
    ]


def cell_folders(root, size=40, n=2):
    """Class folders of pre-cropped single-cell RGB images (a bright disc on dark)."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = np.full((size, size, 3), 20, np.uint8)
            img[disc] = [200, 120, 60] if cls == "a" else [60, 120, 200]
            Image.fromarray(img).save(root / cls / f"c{i}.png")


@pytest.mark.parametrize("mode, n_tiles", [("auto", 4), ("whole", 4), ("center", 4), ("windows", 4)])
def test_single_cell_folders_give_one_tile_per_cell(tmp_path, mode, n_tiles):
    from bioaug.stages.index import index_dataset

    cell_folders(tmp_path)
    tiles_cfg_ = tiles_cfg(size=32, image_mode=mode, normalise="bit_depth")
    items, _ = index_dataset(tmp_path, {"format": "class_folders"}, tiles_cfg_)
    tiles, meta, _ = tile_images(tmp_path, items, sorted(items["image"]), tiles_cfg_)
    assert len(tiles) == n_tiles and meta["tile_id"].is_unique
    img = np.asarray(Image.open(tmp_path / "a" / "c0.png"), np.float32) / 255
    if mode in ("auto", "whole"):  # the whole cell, resized: its centre and its dark corners
        assert tiles[0].shape == (32, 32, 3)
        np.testing.assert_allclose(tiles[0][16, 16], [200 / 255, 120 / 255, 60 / 255], atol=1e-6)
        np.testing.assert_allclose(tiles[0][0, 0], [20 / 255] * 3, atol=1e-6)
    elif mode == "center":
        np.testing.assert_allclose(tiles[0], img[4:36, 4:36], atol=1e-6)
    else:  # a single 32 px window at the top-left corner: the cell is cut
        np.testing.assert_allclose(tiles[0], img[:32, :32], atol=1e-6)


def test_images_smaller_than_the_tile_are_fine_whole_but_not_as_windows(tmp_path):
    from bioaug.stages.index import index_dataset

    cell_folders(tmp_path, size=20)
    items, _ = index_dataset(tmp_path, {"format": "class_folders"}, tiles_cfg(size=32))  # auto: whole
    assert len(items) == 4
    with pytest.raises(BioaugError, match="smaller than the 32 px tile"):
        index_dataset(tmp_path, {"format": "class_folders"}, tiles_cfg(size=32, image_mode="windows"))


def test_normalisation_methods(tmp_path):
    from bioaug.stages.tile import normalisation_stats

    rng = np.random.default_rng(0)
    rgb = np.stack([rng.integers(100, 200, (64, 64)), rng.integers(50, 150, (64, 64)), rng.integers(0, 100, (64, 64))],
                   axis=-1).astype(np.uint8)  # fmt: skip
    low, high, method = normalisation_stats(rgb, tiles_cfg(normalise="auto", percentiles=[0, 100]))
    assert method == "joint" and low.tolist() == [0.0] * 3 and high.tolist() == [199.0] * 3  # one range: hue kept
    low, high, method = normalisation_stats(rgb, tiles_cfg(normalise="per_channel", percentiles=[0, 100]))
    assert method == "per_channel" and low.tolist() == [100, 50, 0] and high.tolist() == [199, 149, 99]
    low, high, method = normalisation_stats(rgb.astype(np.uint16), tiles_cfg(normalise="bit_depth"))
    assert method == "bit_depth" and high.tolist() == [65535.0] * 3
    fluo = rng.integers(0, 4000, (32, 32, 2)).astype(np.uint16)
    assert normalisation_stats(fluo, tiles_cfg(normalise="auto"))[2] == "per_channel"
    # the tiles of a joint-normalised RGB image keep the channels' order of brightness
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    index = pd.DataFrame({"item_id": ["it0"], "image": ["rgb.png"], "group": "g", "label": "a", "kind": "point",
                          "x": [32.0], "y": [32.0]})  # fmt: skip
    tiles, _, norm = tile_images(tmp_path, index, ["rgb.png"], {"size": 16})
    means = tiles[0].reshape(-1, 3).mean(0)
    assert means[0] > means[1] > means[2] and set(norm["method"]) == {"joint"}


def write_sized_tiffs(root) -> dict[str, float | None]:
    """TIFFs stating their pixel size in the ways writers do (and ways that state none), with
    the microns per pixel bioaug should read from each."""
    img = np.zeros((40, 40), np.uint16)
    img[10:30, 10:30] = 1000
    cases = {
        "imagej_um.tif": (dict(imagej=True, resolution=(1 / 0.325,) * 2, metadata={"unit": "um"}), 0.325),
        "imagej_micron.tif": (dict(imagej=True, resolution=(2.0, 2.0), metadata={"unit": "micron"}), 0.5),
        "imagej_nm.tif": (dict(imagej=True, resolution=(1 / 65.0,) * 2, metadata={"unit": "nm"}), 0.065),
        "imagej_pixel.tif": (dict(imagej=True, resolution=(1.0, 1.0), metadata={"unit": "pixel"}), None),
        "ome.ome.tif": (dict(metadata={"PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm"}), 0.2),
        "ome_nm.ome.tif": (dict(metadata={"PhysicalSizeX": 108.0, "PhysicalSizeXUnit": "nm"}), 0.108),
        "per_cm.tif": (dict(resolution=(10000.0, 10000.0), resolutionunit="CENTIMETER"), 1.0),
        "per_inch.tif": (dict(resolution=(72.0, 72.0), resolutionunit="INCH"), None),  # a screen setting
        "plain.tif": ({}, None),
    }
    for name, (kwargs, _) in cases.items():
        tifffile.imwrite(root / name, img, **kwargs)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "dpi.png", dpi=(300, 300))  # PNG: never
    return {**{name: want for name, (_, want) in cases.items()}, "dpi.png": None}


def test_pixel_size_is_read_where_the_file_states_it(tmp_path):
    from bioaug.formats.images import open_image

    for name, want in write_sized_tiffs(tmp_path).items():
        got = open_image(tmp_path / name).pixel_size_um
        assert got == (pytest.approx(want, rel=1e-6) if want is not None else None), name


@pytest.mark.parametrize("mode, zoom", [("whole", 40 / 32), ("center", 1.0)])
def test_tiles_carry_their_pixel_size(tmp_path, mode, zoom):
    """The tile table's pixel_size_um: the source's, times source pixels per tile pixel where
    the image was resized (whole), as it is for crops; empty where the source has none."""
    from bioaug.formats.shards import read_shard_table
    from bioaug.stages.tile import tile_shard

    wants = write_sized_tiffs(tmp_path)
    images = sorted(wants)
    index = pd.DataFrame({"item_id": [f"it{i}" for i in range(len(images))], "image": images, "group": images,
                          "label": "a", "kind": "window", "x": np.nan, "y": np.nan})  # fmt: skip
    cfg = tiles_cfg(size=32, image_mode=mode)
    tile_shard(tmp_path, index, images, cfg, tmp_path / "out" / "shard-00000.npy")
    table = read_shard_table(tmp_path / "out" / "shard-00000.csv").set_index("image")
    assert table["pixel_size_um"].dtype == np.float64
    for image, want in wants.items():
        got = table.loc[image, "pixel_size_um"]
        if want is None:
            assert np.isnan(got), image
        else:
            assert got == pytest.approx(want * zoom, rel=1e-6), image


def test_shard_writer_writes_the_npy_once_and_leaves_nothing_on_failure(tmp_path):
    """The .npy is written in place behind a fixed-length header (no scratch copy): numpy and
    its memory map read it, an empty shard included; a failure leaves neither the .npy nor
    its partial file, so nothing looks complete to Snakemake."""
    from bioaug.formats.shards import NORM_COLUMNS, ShardWriter

    norm = pd.DataFrame(columns=NORM_COLUMNS)
    tiles = np.random.default_rng(6).random((7, 5, 5, 3), dtype=np.float32)
    meta = [{"tile_id": f"t{i}", "item_id": f"t{i}", "label": "a", "image": "f.tif"} for i in range(7)]
    out = tmp_path / "ok" / "shard-00000.npy"
    with ShardWriter(out, (5, 5)) as writer:
        writer.add(tiles[:3], meta[:3])
        writer.add(tiles[3:], meta[3:])
        writer.finish(norm)
    np.testing.assert_array_equal(np.load(out), tiles)
    assert np.load(out, mmap_mode="r").shape == (7, 5, 5, 3)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "shard-00000.csv",
        "shard-00000.norm.csv",
        "shard-00000.npy",
    ]

    empty = tmp_path / "empty" / "shard-00000.npy"
    with ShardWriter(empty, (5, 5)) as writer:
        writer.finish(norm)
    assert np.load(empty).shape == (0, 5, 5, 1)

    failed = tmp_path / "failed" / "shard-00000.npy"
    with pytest.raises(RuntimeError, match="killed"), ShardWriter(failed, (5, 5)) as writer:
        writer.add(tiles, meta)
        raise RuntimeError("killed mid-shard")
    assert list(failed.parent.iterdir()) == []
