"""Smoke test of the benchmark scripts: each runs with --small and prints sane figures.

No timing thresholds (the figures depend on the machine and its load): only that each
script exits 0 and that its final JSON line holds the expected keys as positive, finite
numbers. About 30 s in all on 2 cores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = pytest.mark.slow

EXPECTED = {
    "bench_tiling.py": [
        "n_files",
        "n_tiles",
        "read_s",
        "tile_s",
        "read_files_per_s",
        "tile_files_per_s",
        "tiles_per_s",
        "ratio",
    ],
    "bench_large_tiff.py": [
        "side",
        "image_mb",
        "baseline_rss_mb",
        "points_rss_mb",
        "points_wall_s",
        "points_n_tiles",
        "window_rss_mb",
        "window_wall_s",
        "window_n_tiles",
        "window_sparse_rss_mb",
        "window_sparse_n_tiles",
    ],
    "bench_small_images.py": [
        "n_images",
        "by_count_tile_jobs",
        "by_count_wall_s",
        "by_work_tile_jobs",
        "by_work_wall_s",
    ],
    "bench_dag.py": ["n_images", "n_items", "setup_s", "dag_s", "startup_s", "jobs_total", "tile_jobs"],
    "bench_classifier.py": ["jax_steps_per_s", "jax_tiles_per_s", "jax_compile_s"],
}
# the others: --small. The PyTorch peer of bench_classifier.py is run by test_byo_classifier.py,
# once the reader venv (torch) is built; here it would race that background build.
ARGS = {"bench_classifier.py": ["--small", "--steps", "5", "--no-torch"]}


def test_gpu_check_runs_on_the_cpu(tmp_path):
    """The prepared GPU run (gpu_check.py) works wherever JAX runs: --small on the CPU."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(HERE / "gpu_check.py"), "--small", "--no-e2e", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["device"]["platform"] == "cpu" and res["device"]["peak_tflops"] is None
    step = res["gan_step"]["tests/configs/tiny.yaml"]  # --small: the tiny GAN, 16 px, batch 16
    assert step["batch"] == 16 and step["tile"] == 16 and step["compute_dtype"] == "float32"
    for key in ("steps_per_s", "images_per_s", "gflop_per_step", "achieved_tflops", "compile_s"):
        assert math.isfinite(step[key]) and step[key] > 0, key
    assert step["images_per_s"] == pytest.approx(16 * step["steps_per_s"])
    assert res["classifier"]["small_cnn"]["steps_per_s"] > 0


def run_small(script: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *ARGS.get(script, ["--small"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"{script} --small failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"{script} printed nothing"
    return json.loads(lines[-1])


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_small(script):
    res = run_small(script)
    for key in EXPECTED[script]:
        assert key in res, f"{script}: key {key!r} missing from {sorted(res)}"
        value = res[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{script}: {key}={value!r}"
        assert math.isfinite(value) and value > 0, f"{script}: {key}={value!r} is not a positive finite number"
    if script == "bench_dag.py":  # the property the benchmark is about: one tile job per shard
        assert res["tile_jobs"] == math.ceil(res["n_images"] / res["shard_size"]), res["jobs"]
    if script == "bench_classifier.py" and "torch_steps_per_s" in res:  # where a torch environment exists
        assert res["ratio"] == pytest.approx(res["jax_steps_per_s"] / res["torch_steps_per_s"])
    if script == "bench_small_images.py":  # shards by work: the small crops make one job
        assert res["by_work_tile_jobs"] == 1, res
        assert res["by_count_tile_jobs"] == math.ceil(res["n_images"] / 48), res


def test_bench_tiling_compressed_fields(tmp_path):
    """--compression zlib: the fields are Deflate-compressed TIFFs (what the plain read then
    decompresses), and the benchmark reports on them."""
    import tifffile

    sys.path.insert(0, str(HERE))
    try:
        from bench_tiling import make_dataset
    finally:
        sys.path.remove(str(HERE))
    make_dataset(tmp_path / "z", 2, size=64, cells=4, compression="zlib")
    make_dataset(tmp_path / "raw", 2, size=64, cells=4)
    for field in sorted((tmp_path / "z" / "images").glob("*.tif")):
        with tifffile.TiffFile(field) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        raw = tmp_path / "raw" / "images" / field.name
        assert (tifffile.imread(field) == tifffile.imread(raw)).all()  # same pixels, only stored otherwise
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench_tiling.py"), "--small", "--n-files", "4", "--reps", "1",
         "--compression", "zlib"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["compression"] == "zlib" and res["n_files"] == 4 and math.isfinite(res["ratio"]) and res["ratio"] > 0


def test_bench_judges_on_a_finished_run(tiny_run):
    """bench_judges.py trains `real` with the run's small CNN and a ResNet on the run's own
    tiles; its small-CNN model of seed 0 is the classify stage's model (same tiles, budget and
    seed), so it scores what the pipeline scored."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench_judges.py"), str(tiny_run / "results" / "tiny"),
         "--configfile", str(tiny_run / "config.yaml"), "--resnet-width", "4", "--resnet-blocks", "1", "1",
         "--seeds", "0", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(res["judges"]) == ["small_cnn [8, 16]", "resnet width 4 blocks [1, 1]"]
    pipeline = json.loads((tiny_run / "results" / "tiny" / "fold-0" / "classify" / "real" / "seed-0.json").read_text())
    assert res["n_test"] == pipeline["n"]
    for name, judge in res["judges"].items():
        assert judge["models"] == 2 and judge["train_steps"] == pipeline["train_steps"], name
        assert 0 <= judge["accuracy"]["mean"] <= 1 and 0 <= judge["macro_f1"]["mean"] <= 1, name
        assert set(judge["per_class_f1"]) == set(pipeline["class_names"])
        assert judge["seconds_per_model"] > 0 and judge["first_model_s"] > 0
    assert "small_cnn [8, 16] seed 0: accuracy " + f"{pipeline['accuracy']:.3f}" in proc.stdout
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())["classifier"]
    assert res["arm"] == "real" and res["recipe"]["epochs"] == config["epochs"]
    # only arms on real tiles: a GAN arm's tiles are not the run's tiles
    bad = subprocess.run(
        [sys.executable, str(HERE / "bench_judges.py"), str(tiny_run / "results" / "tiny"), "--arm", "real+gan"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "--arm real+gan: not an arm on real tiles" in bad.stderr


def test_probe_two_sample_on_a_finished_run(tiny_run, tmp_path):
    """probe_two_sample.py reruns the C2ST per class on transformed tiles of a finished run and
    reports the saturation shares (real tiles carry exact 0s and 1s from normalisation)."""
    png = tmp_path / "hist.png"
    proc = subprocess.run(
        [sys.executable, str(HERE / "probe_two_sample.py"), str(tiny_run / "results" / "tiny"),
         "--n", "16", "--steps", "3", "--variants", "raw", "sorted_pixels", "quantile_matched", "--png", str(png)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    classes = res["classes"]
    pipeline = json.loads((tiny_run / "results" / "tiny" / "fold-0" / "classify" / "real" / "seed-0.json").read_text())
    assert sorted(classes) == sorted(pipeline["class_names"])
    for name, row in classes.items():
        assert 0 < row["n"] <= 16, name
        assert all(0 <= row[v] <= 1 for v in ("raw", "sorted_pixels", "quantile_matched")), name
        assert all(0 <= v <= 1 for v in row["exact_0"] + row["exact_1"]), name
    assert sum(row["exact_0"][0] + row["exact_1"][0] for row in classes.values()) > 0  # clipped by normalisation
    from PIL import Image

    with Image.open(png) as im:
        assert im.width > 300 and im.height > 200
