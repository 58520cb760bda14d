"""Inputs a careless or hostile user gives: archives, downloads from a faulty server on
127.0.0.1, folder sources, annotations, images and config. Each case asserts its exact outcome:
an error naming the culprit, or a row of rejected.csv with its reason, and nothing written
outside the dataset folder (checked on the file system)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bioaug.config import defaults, validate_config
from bioaug.formats.images import ImageLimits, open_image
from bioaug.runtime import BioaugError
from bioaug.stages import index as index_stage
from bioaug.stages.download import fetch_dataset
from bioaug.stages.index import index_dataset
from conftest import REPO, load_tiny_config

LIMITS = defaults()["limits"]
TILES = {"size": 16, "border": "reflect", "channels": None}


def tif_bytes(shape=(32, 32), dtype=np.uint16, value=1) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full(shape, value, dtype))
    return buf.getvalue()


def add_tar(tf: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if info.size else None)


@pytest.fixture
def sandbox(tmp_path):
    """(archive folder, target parent, a 'victim' folder outside the target whose contents must not change)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("original")
    return tmp_path / "in", tmp_path / "resources", victim


def untouched(victim: Path, resources: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "original"
    assert not (resources / "ds").exists()  # nothing that looks complete
    assert not [p for p in resources.glob(".ds.*")] if resources.exists() else True


def fetch_local(archive: Path, resources: Path, **limits) -> Path:
    out = resources / "ds"
    fetch_dataset({"source": str(archive)}, out, limits={**LIMITS, **limits})
    return out


# ----------------------------------------------------------------------------- archives


def test_tar_chained_symlinks_cannot_escape(sandbox):
    """The CVE-2025-4517 layout: a chain of links that resolves outside, then a write through it."""
    src, res, victim = sandbox
    src.mkdir()
    with tarfile.open(src / "evil.tar", "w") as tf:
        add_tar(tf, "a", type=tarfile.DIRTYPE)
        add_tar(tf, "a/b", type=tarfile.SYMTYPE, linkname="../..")
        add_tar(tf, "a/b/c", type=tarfile.SYMTYPE, linkname=f"../{victim.name}")
        add_tar(tf, "a/b/c/keep.txt", b"overwritten")
        add_tar(tf, "a/b/c/new.txt", b"planted")
    with pytest.raises(BioaugError, match=r"evil.tar: archive entry 'a/b' is a symbolic link to '\.\./\.\.'"):
        fetch_local(src / "evil.tar", res)
    untouched(victim, res)


@pytest.mark.parametrize(
    "member, expected",
    [
        (dict(name="abs", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (dict(name="hard", type=tarfile.LNKTYPE, linkname="../../victim/keep.txt"), "is a hard link"),
        (dict(name="fifo", type=tarfile.FIFOTYPE), "is a FIFO"),
        (dict(name="dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "is a device"),
        (dict(name="blk", type=tarfile.BLKTYPE, devmajor=7, devminor=0), "is a device"),
        (dict(name="../victim/new.txt"), "climbs out of the target folder"),
        (dict(name="/tmp/bioaug-absolute.txt"), "has an absolute path"),
        (dict(name="ok/../../victim/new.txt"), "climbs out of the target folder"),
        (dict(name="C:\\victim\\new.txt"), "has an absolute path"),
    ],
    ids=["symlink-absolute", "hardlink", "fifo", "char-device", "block-device", "dotdot", "absolute",
         "dotdot-inside", "drive"],
)  # fmt: skip
def test_tar_special_and_escaping_members_are_named_errors(sandbox, member, expected):
    src, res, victim = sandbox
    src.mkdir()
    with tarfile.open(src / "bad.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as tf:
        add_tar(tf, "data/fine.txt", b"fine")
        name = member.pop("name")
        add_tar(tf, name, b"planted", **member)
    with pytest.raises(BioaugError, match=expected) as err:
        fetch_local(src / "bad.tar.gz", res)
    assert "bad.tar.gz" in str(err.value)
    untouched(victim, res)
    assert not Path("/tmp/bioaug-absolute.txt").exists()


@pytest.mark.parametrize(
    "name, expected",
    [("..\\victim\\new.txt", "climbs out"), ("/abs.txt", "absolute path"), ("C:/x.txt", "absolute path")],
)
def test_zip_escaping_members_are_named_errors(sandbox, name, expected):
    src, res, victim = sandbox
    src.mkdir()
    with zipfile.ZipFile(src / "bad.zip", "w") as zf:
        zf.writestr(name, "planted")
    with pytest.raises(BioaugError, match=expected):
        fetch_local(src / "bad.zip", res)
    untouched(victim, res)


def test_zip_symlink_member_is_refused(sandbox):
    src, res, victim = sandbox
    src.mkdir()
    with zipfile.ZipFile(src / "link.zip", "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "../../victim")
        zf.writestr("data/link/keep.txt", "overwritten")
    with pytest.raises(BioaugError, match="'data/link' is a symbolic link"):
        fetch_local(src / "link.zip", res)
    untouched(victim, res)


def test_two_members_on_one_path_are_refused(sandbox):
    src, res, victim = sandbox
    src.mkdir()
    with tarfile.open(src / "dup.tar", "w") as tf:
        add_tar(tf, "data/a.txt", b"first")
        add_tar(tf, "./data//a.txt", b"second")
    with pytest.raises(BioaugError, match="two archive entries land on 'data/a.txt'"):
        fetch_local(src / "dup.tar", res)
    with tarfile.open(src / "filedir.tar", "w") as tf:
        add_tar(tf, "data", b"a file")
        add_tar(tf, "data/b.txt", b"under it")
    with pytest.raises(BioaugError, match="needs this to be a folder"):
        fetch_local(src / "filedir.tar", res)
    untouched(victim, res)


def test_zip_bomb_stops_at_the_ratio_limit(sandbox):
    src, res, victim = sandbox
    src.mkdir()
    with zipfile.ZipFile(src / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.bin", "w") as f:
            for _ in range(200):  # 200 MB of zeros in ~200 KB
                f.write(bytes(1 << 20))
    assert (src / "bomb.zip").stat().st_size < 1e6
    with pytest.raises(BioaugError, match=r"expands more than 200-fold .*limits\.max_compression_ratio"):
        fetch_local(src / "bomb.zip", res)
    untouched(victim, res)


def test_member_count_and_size_limits(sandbox):
    src, res, victim = sandbox
    src.mkdir()
    with zipfile.ZipFile(src / "many.zip", "w") as zf:
        for i in range(30):
            zf.writestr(f"f{i}.txt", "x" * 1000)
    with pytest.raises(BioaugError, match=r"more than 10 members \(limit limits\.max_archive_members\)"):
        fetch_local(src / "many.zip", res, max_archive_members=10)
    with pytest.raises(BioaugError, match=r"more than 1e-05 GB .*limit limits\.max_extracted_gb"):
        fetch_local(src / "many.zip", res, max_extracted_gb=1e-5)
    untouched(victim, res)
    assert len(list(fetch_local(src / "many.zip", res).iterdir())) == 30  # within the limits


def points_dataset_files() -> dict[str, bytes]:
    return {"data/a.tif": tif_bytes(), "data/ann.csv": b"image,label,x,y\na.tif,x,5,5\n"}


def write_tar(path: Path, mode: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            add_tar(tf, name, data)


def write_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


@pytest.mark.parametrize(
    "name, writer",
    [
        ("set.tar.bz2", lambda p, f: write_tar(p, "w:bz2", f)),
        ("set.tar.xz", lambda p, f: write_tar(p, "w:xz", f)),
        ("set.tgz", lambda p, f: write_tar(p, "w:gz", f)),
        ("zip-named.tar.gz", write_zip),  # a zip with a tar's name
        ("targz-named.zip", lambda p, f: write_tar(p, "w:gz", f)),  # and the reverse
        ("no-suffix", lambda p, f: write_tar(p, "w", f)),
    ],
)
def test_archives_are_recognised_by_content(sandbox, name, writer):
    src, res, _ = sandbox
    src.mkdir()
    writer(src / name, points_dataset_files())
    out = fetch_local(src / name, res)
    assert (out / "data" / "a.tif").read_bytes() == points_dataset_files()["data/a.tif"]
    items, rejected = index_dataset(out / "data", {"format": "points", "annotations": "ann.csv"})
    assert len(items) == 1 and rejected.empty


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "data.tar.gz",
            gzip.compress(b"image,label\n"),
            "is a gzip-compressed file .one compressed file, not an archive",
        ),
        ("data.zip", b"this is not a zip at all", r"named like an archive \(data.zip\) but not an archive"),
        ("data.zip", b"PK\x03\x04" + b"\x00" * 40, "not a readable zip archive"),
        ("data.7z", b"7z\xbc\xaf\x27\x1c" + b"\x00" * 40, "is a 7z archive; bioaug extracts zip and tar"),
    ],
    ids=["gzip-not-tar", "junk-named-zip", "truncated-zip", "7z"],
)
def test_what_is_no_extractable_archive_is_named(sandbox, name, content, expected):
    src, res, _ = sandbox
    src.mkdir()
    (src / name).write_bytes(content)
    with pytest.raises(BioaugError, match=expected):
        fetch_local(src / name, res)
    assert not (res / "ds").exists()


def test_truncated_tar_gz_is_named(sandbox):
    src, res, _ = sandbox
    src.mkdir()
    write_tar(src / "cut.tar.gz", "w:gz", {"big.bin": os.urandom(200_000)})
    data = (src / "cut.tar.gz").read_bytes()
    (src / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BioaugError, match="cut.tar.gz: not a readable tar archive"):
        fetch_local(src / "cut.tar.gz", res)


def test_npz_is_copied_not_extracted(sandbox):
    src, res, _ = sandbox
    src.mkdir()
    np.savez(src / "pathmnist.npz", train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
    out = fetch_local(src / "pathmnist.npz", res)
    assert sorted(p.name for p in out.iterdir()) == ["pathmnist.npz"]


# ----------------------------------------------------------------------------- downloads


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    """Routes: /files/<name> (no file name in the URL; Content-Disposition gives it),
    /gzipped/<name> (Content-Encoding: gzip on a .tar.gz), /trickle (a byte every 0.5 s),
    /truncated/<name> (half the body), /flaky/<name> (500 the first time)."""

    root: Path
    hits: dict

    def log_message(self, *args):  # keep the test output clean
        pass

    def send_file(self, data: bytes, headers=()):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if kind == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.5)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        path = self.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if kind == "files":
            self.send_file(data, [("Content-Disposition", f'attachment; filename="{name}"')])
        elif kind == "gzipped":
            self.send_file(data, [("Content-Encoding", "gzip"), ("Content-Type", "application/x-tar")])
        elif kind == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
        elif kind == "flaky" and self.hits[self.path] == 1:
            self.send_error(500)
        else:
            self.send_file(data)


@pytest.fixture
def faulty_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (FaultyHandler,), {"root": root, "hits": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.hits
    server.shutdown()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_url(url, digest, tmp_path, out="ds", **kw):
    fetch_dataset({"source": url, "sha256": digest}, tmp_path / out, cache_dir=tmp_path / "cache",
                  limits={**LIMITS, **kw.pop("limits", {})}, **kw)  # fmt: skip
    return tmp_path / out


def test_url_without_file_name(tmp_path, faulty_server):
    base, root, _ = faulty_server
    write_zip(root / "12345", points_dataset_files())
    out = fetch_url(f"{base}/files/12345", sha(root / "12345"), tmp_path)
    assert (out / "data" / "ann.csv").is_file()
    np.savez(root / "pathmnist.npz", train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
    out = fetch_url(f"{base}/files/pathmnist.npz", sha(root / "pathmnist.npz"), tmp_path, out="npz")
    assert sorted(p.name for p in out.iterdir()) == ["pathmnist.npz"]


def test_content_encoding_gzip_keeps_the_served_tar_gz(tmp_path, faulty_server):
    base, root, _ = faulty_server
    write_tar(root / "set.tar.gz", "w:gz", points_dataset_files())
    out = fetch_url(f"{base}/gzipped/set.tar.gz", sha(root / "set.tar.gz"), tmp_path)
    assert (out / "data" / "a.tif").read_bytes() == points_dataset_files()["data/a.tif"]


def test_trickling_server_hits_the_deadline(tmp_path, faulty_server):
    base, _, _ = faulty_server
    t0 = time.monotonic()
    with pytest.raises(BioaugError, match=r"not finished within 2 s \(limits\.download_timeout_s\)"):
        fetch_url(f"{base}/trickle/x.zip", "0" * 64, tmp_path, limits={"download_timeout_s": 2}, retries=2)
    assert time.monotonic() - t0 < 15  # one deadline for all attempts
    assert not (tmp_path / "ds").exists() and not list((tmp_path / "cache").glob("tmp*"))


def test_truncated_body_is_retried_then_named(tmp_path, faulty_server):
    base, root, hits = faulty_server
    write_zip(root / "set.zip", points_dataset_files())
    with pytest.raises(
        BioaugError, match=r"download .*truncated/set.zip: ChunkedEncodingError: connection (broken|closed)"
    ):
        fetch_url(f"{base}/truncated/set.zip", sha(root / "set.zip"), tmp_path, retries=1)
    assert hits["/truncated/set.zip"] == 2 and not (tmp_path / "ds").exists()


def test_server_error_is_retried(tmp_path, faulty_server):
    base, root, hits = faulty_server
    write_zip(root / "set.zip", points_dataset_files())
    out = fetch_url(f"{base}/flaky/set.zip", sha(root / "set.zip"), tmp_path, retries=2)
    assert hits["/flaky/set.zip"] == 2 and (out / "data" / "a.tif").is_file()


def test_killed_download_leaves_nothing_after_the_next_run(tmp_path, faulty_server):
    base, root, _ = faulty_server
    write_zip(root / "set.zip", points_dataset_files())
    (tmp_path / ".ds.abc123" / "ds").mkdir(parents=True)  # what atomic_path leaves when killed
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tmpk1ll3d").write_bytes(b"partial")  # pooch's partial download
    fetch_url(f"{base}/plain/set.zip", sha(root / "set.zip"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not list((tmp_path / "cache").glob("tmp*"))


# ----------------------------------------------------------------------------- local sources


def test_local_sha256_is_checked_or_refused(tmp_path):
    write_zip(tmp_path / "set.zip", points_dataset_files())
    with pytest.raises(BioaugError, match="set.zip: sha256 mismatch"):
        fetch_dataset({"source": str(tmp_path / "set.zip"), "sha256": "0" * 64}, tmp_path / "a")
    fetch_dataset({"source": str(tmp_path / "set.zip"), "sha256": sha(tmp_path / "set.zip")}, tmp_path / "b")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BioaugError, match="sha256: given for the folder source .*cannot be checked"):
        fetch_dataset({"source": str(tmp_path / "folder"), "sha256": "0" * 64}, tmp_path / "c")


def folder_source(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    for name, data in points_dataset_files().items():
        (src / name).write_bytes(data)
    return src


def test_folder_with_symlink_loop_is_named(tmp_path):
    src = folder_source(tmp_path)
    (src / "data" / "loop").symlink_to(src)
    with pytest.raises(BioaugError, match=r"data/loop: a symbolic link to .*a folder it is in \(a loop\)"):
        fetch_dataset({"source": str(src)}, tmp_path / "out")
    (src / "data" / "loop").unlink()
    (src / "data" / "self").symlink_to("self")
    with pytest.raises(BioaugError, match=r"data/self: a symbolic link that loops"):
        fetch_dataset({"source": str(src)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_with_dangling_link_is_named(tmp_path):
    src = folder_source(tmp_path)
    (src / "data" / "gone.tif").symlink_to(tmp_path / "nowhere.tif")
    with pytest.raises(BioaugError, match=r"data/gone.tif: a symbolic link to .*nowhere.tif.*does not exist"):
        fetch_dataset({"source": str(src)}, tmp_path / "out")


def test_folder_links_that_resolve_are_followed(tmp_path):
    src = folder_source(tmp_path)
    shared = tmp_path / "shared_storage"
    shared.mkdir()
    (shared / "b.tif").write_bytes(tif_bytes(value=2))
    (src / "data" / "b.tif").symlink_to(shared / "b.tif")
    fetch_dataset({"source": str(src)}, tmp_path / "out")
    copied = tmp_path / "out" / "data" / "b.tif"
    assert not copied.is_symlink() and copied.read_bytes() == (shared / "b.tif").read_bytes()


def test_folder_with_a_fifo_is_named(tmp_path):
    src = folder_source(tmp_path)
    os.mkfifo(src / "data" / "pipe")
    with pytest.raises(BioaugError, match=r"data/pipe: not a file or folder"):
        fetch_dataset({"source": str(src)}, tmp_path / "out")


def test_source_folder_that_contains_the_working_folder(tmp_path, monkeypatch):
    src = folder_source(tmp_path)
    work = src / "analysis"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(BioaugError, match="contains the working folder"):
        fetch_dataset({"source": str(src)}, work / "resources" / "datasets" / "ds")
    assert not (work / "resources" / "datasets" / "ds").exists()


# ----------------------------------------------------------------------------- annotations


def points_root(tmp_path, csv: str, images=("a.tif",)) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    for name in images:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(tif_bytes((48, 48)))
    (root / "p.csv").write_text(csv)
    return root


def index_skip(root, **cfg):
    return index_dataset(root, {"format": "points", "annotations": "p.csv", "on_bad_input": "skip", **cfg}, TILES)


def test_paths_outside_the_dataset_are_never_read(tmp_path, monkeypatch):
    secret = tmp_path / "secret.tif"
    secret.write_bytes(tif_bytes((48, 48)))
    root = points_root(tmp_path, f"image,label,x,y\na.tif,a,9,9\n../secret.tif,a,9,9\n{secret},a,9,9\n"
                                 "sub/../../secret.tif,a,9,9\n")  # fmt: skip
    opened = []
    real_open = index_stage.validate_image
    monkeypatch.setattr(index_stage, "validate_image", lambda p, *a: opened.append(str(p)) or real_open(p, *a))
    items, rejected = index_skip(root)
    reasons = dict(zip(rejected["input"], rejected["reason"]))
    assert list(items["image"]) == ["a.tif"]
    assert "leaves the dataset folder" in reasons["p.csv:3"] and "is absolute" in reasons["p.csv:4"]
    assert "leaves the dataset folder" in reasons["p.csv:5"]
    assert all("secret" not in p for p in opened)


def test_one_image_under_three_spellings_is_one_group(tmp_path):
    root = points_root(tmp_path, "image,label,x,y\na.tif,a,9,9\n./a.tif,b,20,20\nsub/../a.tif,a,30,30\n"
                                 "sub\\b.tif,b,9,9\n", images=("a.tif", "sub/b.tif"))  # fmt: skip
    items, rejected = index_skip(root)
    assert rejected.empty and sorted(set(items["image"])) == ["a.tif", "sub/b.tif"]
    assert items.groupby("image")["group"].nunique().max() == 1 and items["group"].nunique() == 2


def test_group_filled_on_some_rows_only(tmp_path):
    root = points_root(tmp_path, "image,label,x,y,group\na.tif,a,9,9,p1\na.tif,a,9,9,\na.tif,b,9,9,p2\na.tif,b,9,9, \n")
    with pytest.raises(BioaugError, match=r"p.csv: column 'group' is empty on line\(s\) 3, 5 \(2 of 4\)"):
        index_skip(root)


def test_coordinates_that_are_not_numbers(tmp_path):
    root = points_root(tmp_path, "image,label,x,y\na.tif,a,12px,9\na.tif,a,9,\na.tif,b,9,9\n")
    items, rejected = index_skip(root)
    reasons = dict(zip(rejected["input"], rejected["reason"]))
    assert reasons["p.csv:2"] == "x: '12px' is not a number" and "no numeric x/y" in reasons["p.csv:3"]
    assert len(items) == 1


def test_labels_stay_the_strings_written(tmp_path):
    root = points_root(tmp_path, "image,label,x,y\na.tif,None,9,9\na.tif,NA,9,9\na.tif,0,9,9\na.tif,007,9,9\n"
                                 "a.tif,,9,9\na.tif,null,9,9\n")  # fmt: skip
    items, rejected = index_skip(root)
    assert sorted(items["label"]) == ["0", "007", "NA", "None", "null"]
    assert dict(zip(rejected["input"], rejected["reason"]))["p.csv:6"] == "no class label"


def test_user_columns_named_like_bioaugs_do_not_collide(tmp_path):
    root = points_root(tmp_path, "image,label,x,y,error,unused,source,kind\na.tif,a,9,9,oops,yes,cam1,weird\n"
                                 "a.tif,b,9,9,,,cam2,\n")  # fmt: skip
    items, rejected = index_skip(root)
    assert len(items) == 2 and rejected.empty and set(items["kind"]) == {"point"}


@pytest.mark.parametrize(
    "csv, columns, expected",
    [
        ("item_id,image,label,x,y\n1,a.tif,a,9,9\n", None, "has a column 'item_id', which bioaug writes itself"),
        ("file,cls,x,y\na.tif,a,9,9\n", {"image": "file", "label": "file"},
         "image and label all map to the one column 'file'"),
        ("image,label,cell_type,x,y\na.tif,a,b,9,9\n", {"label": "cell_type"},
         "columns.label: maps 'cell_type' onto 'label', but"),
        ("image,label,x,y\na.tif,a,9,9\n", {"label": "cell_type"}, "columns.label: .* has no column 'cell_type'"),
        ("image,label,x,y,x\na.tif,a,9,9,3\n", None, None),  # pandas renames the second x to x.1: fine
        ("image;label;x;y\na.tif;a;9;9\n", None, r"missing column\(s\) \['image', 'label', 'x', 'y'\]"),
        ("", None, "not a readable CSV"),
        ("image,label,x,y\n", None, "no annotations"),
    ],
    ids=["item_id", "two-onto-one", "onto-existing", "mapped-missing", "dup-x", "semicolons", "empty-file",
         "header-only"],
)  # fmt: skip
def test_csv_structure_errors_name_file_and_key(tmp_path, csv, columns, expected):
    root = points_root(tmp_path, csv)
    if expected is None:
        items, _ = index_skip(root, columns=columns)
        assert len(items) == 1
        return
    with pytest.raises(BioaugError, match=expected):
        index_skip(root, columns=columns)


def voc_root(tmp_path, xmls: dict[str, str]) -> Path:
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(root / "JPEGImages" / "im.jpg")
    for name, text in xmls.items():
        (root / "Annotations" / name).write_text(text)
    return root


def voc(filename: str, *boxes) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in boxes
    )  # fmt: skip
    return f"<annotation><filename>{filename}</filename>{objs}</annotation>"


def test_voc_bad_files(tmp_path):
    root = voc_root(tmp_path, {
        "good.xml": voc("im.jpg", ("RBC", 5, 5, 20, 20), ("WBC", 10, 10, "12px", 30)),
        "empty.xml": voc("im.jpg"),
        "escape.xml": voc("../../secret.jpg", ("RBC", 5, 5, 20, 20)),
        "broken.xml": "<annotation><filename>",
    })  # fmt: skip
    items, rejected = index_dataset(
        root, {"format": "voc", "annotations": "Annotations", "on_bad_input": "skip"}, TILES
    )
    reasons = dict(zip(rejected["input"], rejected["reason"]))
    assert len(items) == 1
    assert reasons["Annotations/empty.xml"] == "VOC file lists no objects"
    assert "leaves the dataset folder" in reasons["Annotations/escape.xml#object0"]
    assert reasons["Annotations/good.xml#object1"] == "bndbox xmax: '12px' is not a number"
    assert "not a readable VOC XML file" in reasons["Annotations/broken.xml"]


# ----------------------------------------------------------------------------- images


def test_channels_first_npz_is_read_as_channels(tmp_path):
    root = tmp_path / "npz"
    root.mkdir()
    images = np.zeros((6, 3, 28, 28), np.uint8)  # (N, C, H, W), as PyTorch writes
    images[:, 0], images[:, 1], images[:, 2] = 10, 20, 30
    np.savez(root / "d.npz", train_images=images, train_labels=np.arange(6).reshape(6, 1) % 2)
    items, _ = index_dataset(root, {"format": "npz", "annotations": "d.npz"})
    src = open_image(root / items["image"][0])
    assert src.shape == (28, 28, 3) and src.read()[5, 5].tolist() == [10, 20, 30]
    assert sorted(set(items["label"])) == ["0", "1"]


def test_palette_png_gives_its_colours(tmp_path):
    im = Image.new("P", (20, 20))
    im.putpalette([0, 0, 0, 200, 40, 90] + [0] * 762)
    im.paste(1, (0, 0, 10, 20))
    im.save(tmp_path / "p.png")
    arr = open_image(tmp_path / "p.png").read()
    assert arr.shape == (20, 20, 3) and arr[5, 5].tolist() == [200, 40, 90] and arr[5, 15].tolist() == [0, 0, 0]


def test_multi_page_and_huge_images_are_refused_unread(tmp_path, monkeypatch):
    pages = np.zeros((100, 64, 64), np.uint8)
    for i, page in enumerate(pages):
        tifffile.imwrite(tmp_path / "pages.tif", page, append=i > 0, compression="zlib")
    limits = ImageLimits.from_config(LIMITS)
    stacked = []
    monkeypatch.setattr(np, "stack", lambda *a, **k: stacked.append(1) or pytest.fail("pages were read"))
    with pytest.raises(BioaugError, match=r"pages.tif: has 100 pages, more than limits\.max_image_pages \(64\)"):
        open_image(tmp_path / "pages.tif", limits=limits)
    monkeypatch.undo()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "big.png")
    small = ImageLimits.from_config({**LIMITS, "max_image_megapixels": 0.1})
    with pytest.raises(
        BioaugError, match=r"big.png: 300 x 400 x 3 = 0 megapixels, more than limits\.max_image_megapixels"
    ):
        open_image(tmp_path / "big.png", limits=small)
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((5, 32, 32), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(BioaugError, match="axis 'Z' has 5 planes"):
        open_image(tmp_path / "z.tif")


def test_mixed_channel_counts_are_caught_at_index(tmp_path):
    root = tmp_path / "cf"
    for cls, shape in (("a", (40, 40)), ("b", (40, 40, 3))):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.zeros(shape, np.uint8)).save(root / cls / "x.png")
    with pytest.raises(
        BioaugError, match=r"different numbers of channels: 1 channel\(s\): a/x.png .*3 channel\(s\): b/x.png"
    ):
        index_dataset(root, {"format": "class_folders"}, TILES)


# ----------------------------------------------------------------------------- accounting


def test_every_file_is_accounted_for(tmp_path):
    root = tmp_path / "cf"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / cls / "x.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "a" / "y.bmp")
    (root / "a" / "z.tif.gz").write_bytes(gzip.compress(tif_bytes()))
    (root / "a" / ".DS_Store").write_bytes(b"mac")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "c.png").write_bytes(b"")
    (root / "README.txt").write_text("about")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "stray.png")
    items, rejected = index_dataset(root, {"format": "class_folders", "on_bad_input": "skip"}, TILES)
    reasons = dict(zip(rejected["input"], rejected["reason"]))
    assert sorted(items["image"]) == ["a/x.png", "b/x.png"]
    assert reasons == {
        "a/y.bmp": "not a supported image type (.bmp; TIFF, PNG or JPEG)",
        "a/z.tif.gz": "not a supported image type (.tif.gz; TIFF, PNG or JPEG)",
        "a/.DS_Store": "hidden file (its name starts with '.')",
        ".hidden/c.png": "in a hidden folder",
        "README.txt": "outside the class folders (class_folders reads <root>/<class>/*)",
        "stray.png": "outside the class folders (class_folders reads <root>/<class>/*)",
    }
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == set(items["image"]) | set(rejected["input"])  # inputs = items + rejected + unused


def test_points_dataset_lists_every_other_file(tmp_path):
    root = points_root(
        tmp_path, "image,label,x,y\na.tif,a,9,9\nb.tif,a,9,9\nb.tif,b,100,9\n", images=("a.tif", "b.tif", "c.tif")
    )
    (root / "notes.docx").write_bytes(b"word")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    items, rejected = index_skip(root)
    reasons = dict(zip(rejected["input"], rejected["reason"]))
    assert reasons["c.tif"] == "image has no annotations"
    assert reasons["notes.docx"] == "not an image or annotation file (.docx)"
    assert reasons[".git/HEAD"] == "in a hidden folder" and "outside" in reasons["p.csv:4"]
    assert len(items) == 2


def test_nothing_usable_still_writes_the_reasons(tmp_path):
    root = points_root(tmp_path, "image,label,x,y\nmissing.tif,a,9,9\na.tif,,9,9\n")
    failed = tmp_path / "logs" / "rejected.csv"
    with pytest.raises(BioaugError, match=rf"no usable items .*3 rejected inputs and their reasons: {failed}"):
        index_stage.run(root, {"format": "points", "annotations": "p.csv", "on_bad_input": "skip"}, TILES, LIMITS,
                        tmp_path / "index.csv", tmp_path / "rejected.csv", failed_rejected_csv=failed)  # fmt: skip
    table = pd.read_csv(failed)
    assert list(table["input"]) == ["p.csv:2", "p.csv:3", "a.tif"] and not (tmp_path / "index.csv").exists()


# ----------------------------------------------------------------------------- config


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    from bioaug.config import check_yaml

    (tmp_path / "config.yaml").write_text("datasets:\n  d:\n    source: builtin\n   format: points\n")
    with pytest.raises(BioaugError, match=r"config.yaml: not valid YAML at line 4, column 4"):
        check_yaml(tmp_path / "config.yaml")


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.setdefault("limits", {}).update(max_extracted_gb="lots"), "limits.max_extracted_gb"),
        (lambda c: c.setdefault("limits", {}).update(download_timeout_s=0), "limits.download_timeout_s"),
        (lambda c: c["datasets"]["tiny"].update(limits={"max_image_pages": 0}), "datasets.tiny.limits.max_image_pages"),
    ],
)  # fmt: skip
def test_limit_keys_are_checked(mutate, key):
    config = load_tiny_config()
    mutate(config)
    with pytest.raises(BioaugError, match="invalid config") as err:
        validate_config(config)
    assert key in str(err.value)


# ----------------------------------------------------------------------------- other Pythons

ESCAPE_SCRIPT = """
import io, sys, tarfile, zipfile
from pathlib import Path
from bioaug import archives
from bioaug.runtime import BioaugError

work, victim = Path(sys.argv[1]), Path(sys.argv[2])
def add(tf, name, data=b"x", **kw):
    info = tarfile.TarInfo(name); info.size = len(data) if kw.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for k, v in kw.items(): setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if info.size else None)
cases = {}
with tarfile.open(work / "chain.tar", "w") as tf:
    add(tf, "a", type=tarfile.DIRTYPE); add(tf, "a/b", type=tarfile.SYMTYPE, linkname="../..")
    add(tf, "a/b/c", type=tarfile.SYMTYPE, linkname="../" + victim.name); add(tf, "a/b/c/keep.txt", b"overwritten")
with tarfile.open(work / "hard.tar", "w") as tf:
    add(tf, "h", type=tarfile.LNKTYPE, linkname=str(victim / "keep.txt")); add(tf, "h", b"overwritten")
with tarfile.open(work / "dotdot.tar", "w") as tf:
    add(tf, "../" + victim.name + "/new.txt", b"planted")
with zipfile.ZipFile(work / "dotdot.zip", "w") as zf:
    zf.writestr("..\\\\" + victim.name + "\\\\new.txt", "planted")
limits = archives.Limits(10**9, 1000, 1000.0)
for name in ("chain.tar", "hard.tar", "dotdot.tar", "dotdot.zip"):
    dest = work / ("out-" + name); dest.mkdir()
    try:
        archives.extract(work / name, dest, limits); print(name, "EXTRACTED")
    except BioaugError as err:
        print(name, "REFUSED", err)
"""


def interpreters() -> list[str]:
    """Every Python >= 3.11 on this machine (PATH, Debian's, pyenv's), the project's floor."""
    candidates = [shutil.which(n) for n in ("python3.11", "python3.12", "python3.13", "python3.14")]
    candidates += ["/usr/bin/python3", *map(str, sorted(Path.home().glob(".pyenv/versions/3.*/bin/python3")))]
    found, seen = [], set()
    for path in filter(None, candidates):
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info >= (3, 11), sys.version)"],
                               capture_output=True, text=True)  # fmt: skip
        ok, _, version = probe.stdout.strip().partition(" ")
        if probe.returncode == 0 and ok == "True" and version not in seen:
            seen.add(version)
            found.append(path)
    return found


@pytest.mark.parametrize("python", interpreters() or [pytest.param(None, marks=pytest.mark.skip("no Python >= 3.11"))])
def test_extraction_policy_holds_on_every_python(tmp_path, python):
    """The policy is bioaug's own code, so it holds whatever tarfile's filters do on that version."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("original")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    proc = subprocess.run(
        [python, "-c", ESCAPE_SCRIPT, str(work), str(victim)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all(" REFUSED " in line for line in lines), lines
    version = subprocess.run([python, "-V"], capture_output=True, text=True).stdout.strip()
    print(f"{python} ({version}): {len(lines)} escapes refused")
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and (victim / "keep.txt").read_text() == "original"
