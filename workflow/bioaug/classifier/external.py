"""Bring your own classifier: `classifier.command` trains and predicts, bioaug judges.

For one (arm, seed) the classify stage writes, in a scratch folder:

  train/<class>/<n>.tif    the arm's training tiles (real, or real + GAN, or GAN only)
  val/<class>/<n>.tif      the real validation tiles, for the script's model selection
  predict/<n>.tif          the tiles to predict, without labels: every val tile, then every test tile
  job.json                 arm, seed, class_names, the arm's options (augment, class_weighted,
                           balanced_sampling: the script should honour them), and the budget
                           (epochs, batch_size, lr, total_steps)

Tiles are float32 TIFFs of the normalised values in [0, 1] (`tifffile.imread`: H x W for one
channel, C x H x W for several, as the balanced dataset's tiff_float format). The command, run
through the shell, gets the paths as {train}, {val}, {predict}, {job} and {out} (and {seed},
{arm}); it writes {out}, a CSV with one row per predict file: `file` (its name) and `label`
(the predicted class name), optionally `p_<class>` columns with probabilities. bioaug then
scores the test rows and keeps the val rows for the report's baseline choice, so folds, seeds,
bootstrap and verdicts judge the user's model exactly as they judge the built-in one.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..formats import balanced
from ..formats.items import safe_name
from ..runtime import BioaugError

log = logging.getLogger("bioaug.classifier.external")
PLACEHOLDERS = ("train", "val", "predict", "job", "out", "seed", "arm")


def check_command(command: str) -> None:
    """A command needs {predict} and {out}; other {names} must be bioaug's placeholders."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(command) if f is not None}
    except ValueError as err:
        raise BioaugError(f"classifier.command: {err} in {command!r} (write {{{{ and }}}} for braces)") from None
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise BioaugError(f"classifier.command: unknown placeholder(s) {unknown}; known: {list(PLACEHOLDERS)}")
    missing = [f for f in ("predict", "out") if f not in fields]
    if missing:
        raise BioaugError(f"classifier.command: needs {{predict}} and {{out}}, {missing} missing in {command!r}")


def _write_class_folder(folder: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    for i, (tile, label) in enumerate(zip(x, y)):
        balanced.write_tile(folder / safe_name(names[label]) / f"{i:06d}.tif", tile, "tiff_float")


def run_external(
    command: str,
    workdir: str | Path,
    *,
    arm: str,
    seed: int,
    names: list[str],
    options: dict,
    budget: dict,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    predict_x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Run the user's command on one arm's data; returns (predicted class index per predict
    tile, probabilities (N, C) or None, seconds)."""
    check_command(command)
    work = Path(workdir)
    paths = {k: work / k for k in ("train", "val", "predict")}
    paths.update(job=work / "job.json", out=work / "predictions.csv")
    _write_class_folder(paths["train"], *train, names)
    _write_class_folder(paths["val"], *val, names)
    files = [f"{i:06d}.tif" for i in range(len(predict_x))]
    for name, tile in zip(files, predict_x):
        balanced.write_tile(paths["predict"] / name, tile, "tiff_float")
    paths["job"].write_text(
        json.dumps({"arm": arm, "seed": seed, "class_names": names, "options": options, **budget}, indent=2)
    )
    values = {k: shlex.quote(str(v)) for k, v in paths.items()} | {"seed": str(seed), "arm": shlex.quote(arm)}
    line = command.format(**values)
    log.info("arm %s, seed %d: running classifier.command: %s", arm, seed, line)
    t0 = time.time()
    proc = subprocess.run(line, shell=True, cwd=work, capture_output=True, text=True)
    seconds = time.time() - t0
    for stream in (proc.stdout, proc.stderr):
        for text in stream.splitlines()[-50:]:
            log.info("command: %s", text)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise BioaugError(f"classifier.command failed (exit {proc.returncode}) for arm {arm}, seed {seed}:\n{tail}")
    return (*read_predictions(paths["out"], files, names), seconds)


def read_predictions(path: Path, files: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The command's predictions CSV, checked: every predict file once, known class names."""
    if not path.exists():
        raise BioaugError(f"classifier.command wrote no {path.name} (expected at {{out}} = {path})")
    try:
        table = pd.read_csv(path, dtype={"file": str, "label": str}, keep_default_na=False)
    except Exception as err:
        raise BioaugError(f"classifier.command: {path.name} is not a readable CSV ({err})") from None
    if not {"file", "label"} <= set(table.columns):
        raise BioaugError(f"classifier.command: {path.name} needs columns file, label; it has {list(table.columns)}")
    twice = table["file"][table["file"].duplicated()]
    if len(twice):
        raise BioaugError(f"classifier.command: {path.name} predicts {twice.iloc[0]} twice")
    missing = sorted(set(files) - set(table["file"]))
    extra = sorted(set(table["file"]) - set(files))
    if missing or extra:
        raise BioaugError(
            f"classifier.command: {path.name} must predict every predict/ file once: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
        )
    unknown = sorted(set(table["label"]) - set(names))
    if unknown:
        raise BioaugError(
            f"classifier.command: {path.name} predicts unknown class(es) {unknown[:5]} (classes: {names})"
        )
    table = table.set_index("file").loc[files]
    y_pred = table["label"].map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    cols = [f"p_{n}" for n in names]
    proba = table[cols].to_numpy(np.float32) if set(cols) <= set(table.columns) else None
    return y_pred, proba
