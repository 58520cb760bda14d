"""Real data: the public BCCD blood-cell set (Pascal VOC boxes), downloaded from a local URL.

The archive lies in ../shared/data/bccd/ (it is never copied into the repository); a local
HTTP server on 127.0.0.1 serves it so that the real download path (pooch, sha256) runs.
"""

from __future__ import annotations

import collections
import functools
import http.server
import json
import threading
import xml.etree.ElementTree as ET
import zipfile

import pandas as pd
import pytest

from conftest import load_tiny_config, run_snakemake, write_config

pytestmark = pytest.mark.slow
BCCD_SHA256 = "17310e0dd407c8f8fd7c64569eda7f8d936165efb42a1cff1018506ea7343e6c"


@pytest.fixture
def bccd_url(shared_dir):
    archive_dir = shared_dir / "data" / "bccd"
    if not (archive_dir / "BCCD_Dataset-master.zip").is_file():
        pytest.skip(f"BCCD archive not found in {archive_dir}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield (
        f"http://127.0.0.1:{server.server_address[1]}/BCCD_Dataset-master.zip",
        archive_dir / "BCCD_Dataset-master.zip",
    )
    server.shutdown()


def boxes_in_archive(path) -> collections.Counter:
    """Box counts per class, read straight from the archive's XML files."""
    counts = collections.Counter()
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".xml") and "/Annotations/" in name:
                for obj in ET.fromstring(zf.read(name)).iter("object"):
                    counts[obj.findtext("name").strip()] += 1
    return counts


def test_bccd_end_to_end_from_url(tmp_path, bccd_url):
    url, archive = bccd_url
    config = load_tiny_config()
    config["datasets"] = {
        "bccd": {
            "source": url,
            "sha256": BCCD_SHA256,
            "format": "voc",
            "annotations": "BCCD_Dataset-master/BCCD/Annotations",
            "on_bad_input": "skip",
            "tiles": {"size": 32, "context": "box", "shard_size": 128},
            "gan": {"g_channels": [32, 16, 8], "d_channels": [16, 32, 32], "steps": 30},
            # two arms (a baseline and a GAN arm) keep the report's verdict path; the other
            # arms' code is the tiny runs' (this test is about the real archive)
            "classifier": {"channels": [8, 16], "epochs": 1, "arms": ["real", "real+gan"]},
        }
    }
    write_config(tmp_path, config)
    run_snakemake(tmp_path, timeout=1500)
    res = tmp_path / "results" / "bccd"

    items = pd.read_csv(res / "fold-0" / "items.csv")
    rejected = pd.read_csv(res / "rejected.csv")
    in_archive = boxes_in_archive(archive)
    assert sum(in_archive.values()) == 4888 and in_archive["WBC"] == 372 and in_archive["Platelets"] == 361
    # every box is an item or a rejection with its reason; every other file of the archive is listed as unused
    boxes = rejected[rejected["input"].str.contains("#object")]
    assert len(items) + len(boxes) == sum(in_archive.values())
    assert len(boxes) == 2 and boxes["reason"].str.contains("degenerate box").all()
    with zipfile.ZipFile(archive) as zf:
        files = {n for n in zf.namelist() if not n.endswith("/")}
    xmls = {n for n in files if n.startswith("BCCD_Dataset-master/BCCD/Annotations/") and n.endswith(".xml")}
    unused = set(rejected["input"]) - set(boxes["input"])
    assert files == set(items["image"]) | unused | xmls
    rejected_per_class = collections.Counter()
    for ref in boxes["input"]:
        xml, obj = ref.split("#object")
        node = ET.fromstring(zipfile.ZipFile(archive).read(xml.replace("\\", "/")))
        rejected_per_class[node.findall("object")[int(obj)].findtext("name").strip()] += 1
    per_class = items["label"].value_counts().to_dict()
    assert per_class == {c: n - rejected_per_class[c] for c, n in in_archive.items()}

    assert (items.groupby("image")["split"].nunique() == 1).all()  # no smear image in two splits
    tiles = sum(len(pd.read_csv(p)) for p in (res / "tiles").glob("shard-*[0-9].csv"))
    assert tiles == len(items)
    manifest = pd.read_csv(res / "balanced" / "manifest.csv")
    train = items[items["split"] == "train"]["label"].value_counts()
    assert (manifest.groupby("label").size() == train.max()).all()
    m = json.loads((res / "fold-0" / "classify" / "real" / "seed-0.json").read_text())
    assert m["n"] == (items["split"] == "test").sum() and set(m["per_class"]) == {"RBC", "WBC", "Platelets"}
