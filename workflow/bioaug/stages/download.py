"""Download stage: put each dataset's raw files under resources/datasets/{dataset}/.

Sources: the built-in simulator, an http(s) URL (verified by sha256; pooch's retries and
cache, bioaug's own downloader for raw bytes, an overall deadline and progress), or a local
file or folder. Archives are recognised by their content and extracted under the policy of
`bioaug.archives` (files and folders only, nothing outside the dataset folder, size limits).
A file that is no archive (e.g. an .npz) is copied as it is.

Everything is written to a temporary sibling folder that becomes the dataset folder only when
complete; leftovers of a killed run (temporary folders, partial downloads) are removed first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import archives
from ..runtime import BioaugError, atomic_path

log = logging.getLogger("bioaug.download")

DOWNLOAD_RETRIES = 3
DOWNLOAD_TIMEOUT_S = 60  # for the connection and for each read (the overall deadline is a config key)
CHUNK = 1 << 20
PROGRESS_EVERY_S = 10.0
NOT_ARCHIVES = (".npz", ".npy")  # zip-based array files: copied, not extracted


def run(source: dict, limits: dict, out_dir) -> None:
    """The download stage: `source` is the dataset's source, sha256 and builtin keys;
    `limits` the validated `limits` section."""
    fetch_dataset(source, out_dir, limits=limits)


def archive_limits(limits: dict) -> archives.Limits:
    return archives.Limits(
        max_bytes=int(limits["max_extracted_gb"] * 1e9),
        max_members=limits["max_archive_members"],
        max_ratio=limits["max_compression_ratio"],
    )


def fetch_dataset(
    dataset_cfg: dict,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    retries: int = DOWNLOAD_RETRIES,
    limits: dict | None = None,
) -> None:
    """Materialise one dataset into `out_dir` (written atomically). `limits` defaults to the
    schema's (for library use); the workflow passes the validated section."""
    if limits is None:
        from ..config import defaults

        limits = defaults()["limits"]
    source = dataset_cfg["source"]
    out_dir = Path(out_dir)
    cache = Path(cache_dir or out_dir.parent / ".cache")
    _remove_leftovers(out_dir, cache)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if source == "builtin":
            _simulate(dataset_cfg["builtin"], tmp)
        elif source.startswith(("http://", "https://")):
            path, name = _download_url(source, dataset_cfg["sha256"], cache, retries, limits["download_timeout_s"])
            _unpack(path, tmp, archive_limits(limits), name=name)
        else:
            src = Path(source).expanduser()
            if not src.exists() and not src.is_symlink():
                raise BioaugError(f"dataset source {src}: no such file or folder")
            if src.is_dir():
                if "sha256" in dataset_cfg:
                    raise BioaugError(
                        f"sha256: given for the folder source {src}, where it cannot be checked; "
                        f"remove it, or give the dataset as an archive"
                    )
                _copy_folder(src, tmp, out_dir)
            else:
                if "sha256" in dataset_cfg:
                    _check_sha256(src, dataset_cfg["sha256"])
                _unpack(src, tmp, archive_limits(limits))


def _simulate(b: dict, dest: Path) -> None:
    from ..simulate import Imaging, simulate_dataset

    look = Imaging(
        separation=float(b.get("separation", 1.0)),
        signal=float(b.get("signal", 1.0)),
        blur=tuple(float(v) for v in b.get("blur", (0.7, 1.0))),
    )
    table = simulate_dataset(
        dest,
        n_images=b["n_images"],
        image_size=b["image_size"],
        cells_per_image=tuple(b["cells_per_image"]),
        class_fractions=dict(b["class_fractions"]),
        seed=b["seed"],
        imaging=look,
    )
    log.info(
        "simulated %d fields with %d cells: %s", b["n_images"], len(table), table["label"].value_counts().to_dict()
    )


def _remove_leftovers(out_dir: Path, cache: Path) -> None:
    """What a killed earlier run left: atomic_path's temporary siblings, pooch's partial files."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
        log.info("removed %s, left by an interrupted run", stale)
    if cache.is_dir():
        for stale in cache.glob("tmp*"):
            stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- URLs


def _url_name(url: str) -> str:
    name = unquote(urlsplit(url).path).rstrip("/").rpartition("/")[2]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return name or "download"


def _download_url(url: str, sha256: str, cache_dir: Path, retries: int, deadline_s: float) -> tuple[Path, str]:
    """The verified file in the cache (fetched unless already there) and its file name (the
    server's Content-Disposition name, else the URL's)."""
    import pooch

    cache_dir.mkdir(parents=True, exist_ok=True)
    name = _url_name(url)
    downloader = RawDownloader(deadline_s)
    # pooch moves the file into place only after the hash matches, so a partial file never
    # passes as complete; a verified file is not fetched again; failed attempts (connection
    # errors, HTTP errors, hash mismatch) are retried with a growing pause (1 s, 2 s, ...).
    fetcher = pooch.create(
        path=cache_dir, base_url="", registry={name: f"sha256:{sha256.lower()}"}, urls={name: url},
        retry_if_failed=retries,
    )  # fmt: skip
    info = cache_dir / f".{name}.json"
    try:
        path = Path(fetcher.fetch(name, downloader=downloader))
    except BioaugError:
        raise
    except ValueError as err:  # pooch reports a hash mismatch as ValueError
        raise BioaugError(f"download {url}: {err}") from err
    except Exception as err:  # requests' HTTP/connection errors
        raise BioaugError(f"download {url}: {type(err).__name__}: {err}") from err
    if downloader.filename:
        info.write_text(json.dumps({"filename": downloader.filename}))
    served = json.loads(info.read_text())["filename"] if info.exists() else name
    return path, served


class RawDownloader:
    """A pooch downloader that saves the bytes exactly as served (a `Content-Encoding: gzip`
    .tar.gz stays the .tar.gz whose sha256 the user gave), ends after `deadline_s` in all
    (however slowly the server trickles), and logs progress with an ETA."""

    def __init__(self, deadline_s: float):
        self.deadline_s = float(deadline_s)
        self.started = time.monotonic()  # one deadline for all attempts
        self.filename: str | None = None

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        import requests

        left = self.deadline_s - (time.monotonic() - self.started)
        if left <= 0:
            raise self._late(url)
        resp = requests.get(url, stream=True, timeout=min(DOWNLOAD_TIMEOUT_S, left))
        expired = threading.Event()

        def expire():
            expired.set()
            resp.close()  # unblocks a read waiting on a trickling server

        timer = threading.Timer(left, expire)
        timer.start()
        try:
            resp.raise_for_status()
            self.filename = _disposition_name(resp.headers.get("Content-Disposition", "")) or self.filename
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, time.monotonic()
            with open(output_file, "wb") as out:
                while True:
                    try:
                        chunk = resp.raw.read1(CHUNK, decode_content=False)
                    except Exception as err:
                        if expired.is_set():
                            raise self._late(url) from None
                        # urllib3's errors (a broken or stalled connection) as requests' own,
                        # which pooch retries
                        raise requests.exceptions.ChunkedEncodingError(f"connection broken: {err}") from err
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if time.monotonic() - last > PROGRESS_EVERY_S:
                        last = time.monotonic()
                        self._progress(url, done, total)
            if expired.is_set():
                raise self._late(url)
            if total and done < total:
                raise requests.exceptions.ChunkedEncodingError(f"connection closed after {done} of {total} bytes")
            log.info("downloaded %s: %.1f MB in %.0f s", url, done / 1e6, time.monotonic() - self.started)
        finally:
            timer.cancel()
            resp.close()

    def _progress(self, url: str, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.started
        if total:
            eta = elapsed * (total - done) / max(done, 1)
            log.info("download %s: %.1f of %.1f MB (%.0f%%), ETA %.0f s", url, done / 1e6, total / 1e6,
                     100 * done / total, eta)  # fmt: skip
        else:
            log.info("download %s: %.1f MB so far (%.0f s)", url, done / 1e6, elapsed)

    def _late(self, url: str) -> BioaugError:
        return BioaugError(
            f"download {url}: not finished within {self.deadline_s:g} s (limits.download_timeout_s); "
            f"the server is too slow or stalled"
        )


def _disposition_name(header: str) -> str | None:
    m = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", header, re.I)
    if not m:
        return None
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", unquote(m.group(1)).rpartition("/")[2]).strip("._")
    return name or None


def _check_sha256(path: Path, expected: str) -> None:
    import pooch

    got = pooch.file_hash(str(path), alg="sha256")
    if got.lower() != expected.lower():
        raise BioaugError(f"{path}: sha256 mismatch, expected {expected.lower()}, got {got}")


# ----------------------------------------------------------------------------- files


def _unpack(path: Path, dest: Path, limits: archives.Limits, name: str | None = None) -> None:
    """Extract an archive (by content) into dest; copy anything else as it is."""
    name = name or path.name
    kind = archives.kind(path)
    if kind is None or (kind == "zip" and name.lower().endswith(NOT_ARCHIVES)):
        if name.lower().endswith((".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz")):
            raise BioaugError(f"{path}: named like an archive ({name}) but {archives.describe(path)}")
        shutil.copyfile(path, dest / name)
        return
    if archives.misnamed(path, name):
        log.warning("%s: is %s, although its name says otherwise; extracting it as what it is", name,
                    archives.describe(path))  # fmt: skip
    n = archives.extract(path, dest, limits)
    log.info("extracted %d files from %s", n, name)


def _copy_folder(src: Path, dest: Path, out_dir: Path) -> None:
    """Copy a local folder: files and folders; a symbolic link is followed when it resolves
    (a user's own data often links to shared storage), and named when it dangles or loops."""
    root = src.resolve()
    if out_dir.resolve().is_relative_to(root) or Path.cwd().resolve().is_relative_to(root):
        raise BioaugError(
            f"dataset source {src}: contains the working folder ({Path.cwd()}), so copying it would copy "
            f"bioaug's own outputs into the dataset; give a folder outside it"
        )
    stack = [(src, dest, root)]  # (path, copy, real path of the folder)
    while stack:
        here, there, real_here = stack.pop()
        there.mkdir(exist_ok=True)
        for entry in sorted(os.scandir(here), key=lambda e: e.name):
            path = Path(entry.path)
            try:
                real = path.resolve(strict=True)
            except FileNotFoundError:
                raise BioaugError(f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist") from None
            except (RuntimeError, OSError) as err:
                raise BioaugError(f"{path}: a symbolic link that loops ({err})") from None
            mode = os.stat(real).st_mode
            if stat.S_ISDIR(mode):
                if real_here.is_relative_to(real):
                    raise BioaugError(f"{path}: a symbolic link to {real}, a folder it is in (a loop)")
                stack.append((path, there / entry.name, real))
            elif stat.S_ISREG(mode):
                shutil.copyfile(real, there / entry.name)
            else:
                raise BioaugError(f"{path}: not a file or folder (a FIFO, socket or device); remove it from the source")
