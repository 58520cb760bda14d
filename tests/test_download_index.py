"""Download (builtin, local, URL, safe extraction) and the index stage."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile

from bioaug.runtime import BioaugError
from bioaug.stages.download import fetch_dataset
from bioaug.stages.index import index_dataset

BUILTIN = {
    "source": "builtin",
    "builtin": {
        "n_images": 4,
        "image_size": 96,
        "cells_per_image": [3, 5],
        "class_fractions": {"interphase": 0.6, "mitotic": 0.4},
        "seed": 1,
    },
}


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def make_points_zip(path):
    with zipfile.ZipFile(path, "w") as zf:
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ones((20, 20), np.uint16))
        zf.writestr("data/a.tif", buf.getvalue())
        zf.writestr("data/ann.csv", "image,label,x,y\na.tif,x,5,5\n")


def test_builtin_download_then_index(tmp_path):
    out = tmp_path / "ds"
    fetch_dataset(BUILTIN, out)
    items, rejected = index_dataset(out, {"format": "points", "annotations": "annotations.csv"})
    ann = pd.read_csv(out / "annotations.csv")
    assert len(items) == len(ann) and rejected.empty
    assert items["item_id"].is_unique and (items["group"] == items["image"]).all()
    assert not list(tmp_path.glob(".ds.*"))  # no temporary left behind


def test_url_download_verifies_sha256(tmp_path, http_server):
    base, root = http_server
    make_points_zip(root / "set.zip")
    sha = hashlib.sha256((root / "set.zip").read_bytes()).hexdigest()
    fetch_dataset({"source": f"{base}/set.zip", "sha256": sha}, tmp_path / "ok", cache_dir=tmp_path / "cache")
    assert (tmp_path / "ok" / "data" / "a.tif").is_file()

    # a verified file is not fetched again (the server no longer has it)
    (root / "set.zip").rename(root / "moved.zip")
    fetch_dataset({"source": f"{base}/set.zip", "sha256": sha}, tmp_path / "again", cache_dir=tmp_path / "cache")
    (root / "moved.zip").rename(root / "set.zip")

    with pytest.raises(BioaugError) as err:
        fetch_dataset(
            {"source": f"{base}/set.zip", "sha256": "0" * 64}, tmp_path / "bad", cache_dir=tmp_path / "c2", retries=1
        )
    assert f"{base}/set.zip" in str(err.value) and "0" * 64 in str(err.value) and sha in str(err.value)
    assert not (tmp_path / "bad").exists()

    with pytest.raises(BioaugError, match="missing.zip.*404"):
        fetch_dataset(
            {"source": f"{base}/missing.zip", "sha256": sha}, tmp_path / "nf", cache_dir=tmp_path / "c3", retries=0
        )
    assert not any((tmp_path / "c2").iterdir())  # the mismatching download left nothing behind


def test_url_timeout_is_named(tmp_path, monkeypatch):
    import socket

    import bioaug.stages.download as download

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts the connection, never answers
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT_S", 0.5)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/slow.zip"
    with pytest.raises(BioaugError, match=r"slow.zip: .*(Timeout|timed out)"):
        fetch_dataset({"source": url, "sha256": "0" * 64}, tmp_path / "t", cache_dir=tmp_path / "c", retries=0)
    sock.close()


def test_local_folder_and_archive(tmp_path):
    make_points_zip(tmp_path / "set.zip")
    fetch_dataset({"source": str(tmp_path / "set.zip")}, tmp_path / "from_zip")
    items, _ = index_dataset(tmp_path / "from_zip" / "data", {"format": "points", "annotations": "ann.csv"})
    assert len(items) == 1
    fetch_dataset({"source": str(tmp_path / "from_zip")}, tmp_path / "from_dir")
    assert (tmp_path / "from_dir" / "data" / "ann.csv").is_file()
    with pytest.raises(BioaugError, match="nowhere: no such file"):
        fetch_dataset({"source": str(tmp_path / "nowhere")}, tmp_path / "x")


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_zip_path_traversal_is_refused(tmp_path, member):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr(member, "x")
    with pytest.raises(BioaugError, match="refused"):
        fetch_dataset({"source": str(tmp_path / "evil.zip")}, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_tar_link_out_is_refused(tmp_path):
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(BioaugError, match="symbolic link to .*etc/passwd"):
        fetch_dataset({"source": str(tmp_path / "evil.tar.gz")}, tmp_path / "out")


def write_points(root, rows, images=("a.tif",)):
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        tifffile.imwrite(root / name, np.ones((20, 30), np.uint16))
    pd.DataFrame(rows, columns=["image", "label", "x", "y"]).to_csv(root / "ann.csv", index=False)
    return {"format": "points", "annotations": "ann.csv"}


def test_index_missing_image_names_the_path(tmp_path):
    cfg = write_points(tmp_path, [("a.tif", "x", 1, 1), ("gone.tif", "x", 1, 1)])
    with pytest.raises(BioaugError, match="gone.tif: image file not found"):
        index_dataset(tmp_path, cfg)


def test_index_point_outside_image(tmp_path):
    cfg = write_points(tmp_path, [("a.tif", "x", 1, 1), ("a.tif", "x", 31, 5)])
    with pytest.raises(BioaugError, match=r"ann.csv:3: point \(31, 5\) lies outside the 30x20 image"):
        index_dataset(tmp_path, cfg)


def test_index_lists_unannotated_images_as_rejected(tmp_path):
    cfg = write_points(tmp_path, [("a.tif", "x", 1, 1)], images=("a.tif", "b.tif"))
    items, rejected = index_dataset(tmp_path, cfg)
    assert len(items) == 1
    assert rejected.to_dict("records") == [{"input": "b.tif", "reason": "image has no annotations"}]


def test_index_bad_annotation_file(tmp_path):
    tmp_path.joinpath("ann.csv").write_text("image,label\na.tif,x\n")
    with pytest.raises(BioaugError, match=r"missing column\(s\) \['x', 'y'\]"):
        index_dataset(tmp_path, {"format": "points", "annotations": "ann.csv"})
    with pytest.raises(BioaugError, match="nope.csv: annotation file not found"):
        index_dataset(tmp_path, {"format": "points", "annotations": "nope.csv"})
