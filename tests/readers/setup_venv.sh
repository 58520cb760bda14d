#!/usr/bin/env bash
# The reader environment of tests/test_readers.py: a virtualenv with what a user would point
# at results/<ds>/balanced/ (PyTorch + torchvision's ImageFolder, napari), kept apart from
# bioaug's own environment. Usage: setup_venv.sh VENV_DIR [PYTHON]
#
# - torch==2.13.0, the CPU wheel.
# - torchvision: the registry's wheel is a CUDA build whose `import torchvision` fails beside
#   the CPU torch (its compiled ops don't load). ImageFolder, DatasetFolder and the default
#   loader are plain Python in torchvision/datasets/{folder,vision}.py: those two files are
#   taken unchanged from the wheel (`pip download --no-deps`) into a package `torchvision`
#   whose __init__.py and utils.py hold the only two names they import from the rest of
#   torchvision (get_image_backend -> "PIL", torchvision's default; _log_api_usage_once,
#   a no-op).
# - napari (and napari-tiff, the napari team's TIFF reader plugin) if they install.
#
# A finished environment has VENV_DIR/.bioaug-readers (what went in); one without it is
# rebuilt. Exit status non-zero only when torch or torchvision's files could not be had.
set -euo pipefail

VENV=${1:?usage: setup_venv.sh VENV_DIR [PYTHON]}
PYTHON=${2:-python3}
TORCH=torch==2.13.0
TORCHVISION=torchvision==0.28.0  # the release paired with torch 2.13
NAPARI="napari==0.9.2 napari-tiff==0.1.6"
MARKER="$VENV/.bioaug-readers"

exec 9<"${BASH_SOURCE[0]}"  # one build at a time (parallel test sessions wait here)
flock 9
if [[ -f "$MARKER" ]]; then
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

t0=$SECONDS
"${PIP[@]}" "$TORCH" pillow numpy tifffile
echo "torch, pillow, numpy, tifffile: $((SECONDS - t0)) s"

t0=$SECONDS
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
"$VENV/bin/python" -m pip download -q --no-deps --disable-pip-version-check -d "$dl" "$TORCHVISION"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" - "$dl"/torchvision-*.whl "$site" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, site = sys.argv[1], Path(sys.argv[2])
pkg = site / "torchvision"
(pkg / "datasets").mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in ("datasets/folder.py", "datasets/vision.py"):
        (pkg / name).write_bytes(z.read(f"torchvision/{name}"))
(pkg / "__init__.py").write_text(
    f'"""Only torchvision.datasets.folder and .vision, unchanged from {Path(wheel).name}\n'
    '(tests/readers/setup_venv.sh); the rest of torchvision is not here."""\n\n\n'
    f"__version__ = {Path(wheel).name.split('-')[1]!r}  # the wheel's\n\n\n"
    "def get_image_backend():\n"
    '    return "PIL"  # torchvision\'s default backend\n'
)
(pkg / "utils.py").write_text("def _log_api_usage_once(obj):\n    pass\n")
(pkg / "datasets" / "__init__.py").write_text(
    "from .folder import DatasetFolder, ImageFolder, default_loader, pil_loader  # noqa: F401\n"
)
PY
"$VENV/bin/python" -c 'from torchvision.datasets import ImageFolder'
echo "torchvision datasets/folder.py: $((SECONDS - t0)) s"

t0=$SECONDS
# shellcheck disable=SC2086
if "${PIP[@]}" $NAPARI; then
  echo "napari: $((SECONDS - t0)) s"
else
  echo "napari did not install ($((SECONDS - t0)) s)" >&2
fi

"$VENV/bin/python" -m pip freeze --disable-pip-version-check > "$dl/freeze.txt"
{ echo "$TORCHVISION (datasets/folder.py, vision.py)"; cat "$dl/freeze.txt"; } > "$MARKER"
