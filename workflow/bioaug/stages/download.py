"""Download stage: put each dataset's raw files under resources/datasets/{dataset}/.

Sources: the built-in simulator, an http(s) URL (verified by sha256, fetched with pooch's
retries), or a local file/folder. Archives (zip, tar, tar.gz) are extracted safely.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..runtime import BioaugError, atomic_path

log = logging.getLogger("bioaug.download")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


DOWNLOAD_RETRIES = 3
DOWNLOAD_TIMEOUT_S = 60


def run(source: dict, out_dir) -> None:
    """The download stage: `source` is the dataset's source, sha256 and builtin keys."""
    fetch_dataset(source, out_dir)


def fetch_dataset(
    dataset_cfg: dict, out_dir: str | Path, cache_dir: str | Path | None = None, retries: int = DOWNLOAD_RETRIES
) -> None:
    """Materialise one dataset into `out_dir` (written atomically)."""
    source = dataset_cfg["source"]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if source == "builtin":
            from ..simulate import simulate_dataset

            b = dataset_cfg["builtin"]
            table = simulate_dataset(
                tmp,
                n_images=b["n_images"],
                image_size=b["image_size"],
                cells_per_image=tuple(b["cells_per_image"]),
                class_fractions=dict(b["class_fractions"]),
                seed=b["seed"],
            )
            log.info(
                "simulated %d fields with %d cells: %s",
                b["n_images"],
                len(table),
                table["label"].value_counts().to_dict(),
            )
        elif source.startswith(("http://", "https://")):
            path = _download_url(
                source, dataset_cfg["sha256"], Path(cache_dir or Path(out_dir).parent / ".cache"), retries
            )
            _unpack(path, tmp)
        else:
            src = Path(source).expanduser()
            if not src.exists():
                raise BioaugError(f"dataset source {src}: no such file or folder")
            if src.is_dir():
                shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False)
            else:
                if "sha256" in dataset_cfg:
                    _check_sha256(src, dataset_cfg["sha256"])
                _unpack(src, tmp)


def _download_url(url: str, sha256: str, cache_dir: Path, retries: int = DOWNLOAD_RETRIES) -> Path:
    import pooch

    cache_dir.mkdir(parents=True, exist_ok=True)
    base, _, name = url.split("?")[0].rpartition("/")
    name = name or "download"
    # pooch streams to a temporary file and moves it into place only after the hash
    # matches, so a partial file never passes as complete; a verified file is not fetched
    # again; failed attempts (connection errors, HTTP errors, hash mismatch) are retried
    # with a growing pause (1 s, 2 s, ...).
    fetcher = pooch.create(
        path=cache_dir,
        base_url=base + "/",
        registry={name: f"sha256:{sha256.lower()}"},
        urls={name: url},
        retry_if_failed=retries,
    )
    try:
        path = fetcher.fetch(name, downloader=pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S))
    except ValueError as err:  # pooch reports a hash mismatch as ValueError
        raise BioaugError(f"download {url}: {err}") from err
    except Exception as err:  # requests' HTTP/connection errors
        raise BioaugError(f"download {url}: {type(err).__name__}: {err}") from err
    return Path(path)


def _check_sha256(path: Path, expected: str) -> None:
    import pooch

    got = pooch.file_hash(str(path), alg="sha256")
    if got.lower() != expected.lower():
        raise BioaugError(f"{path}: sha256 mismatch, expected {expected.lower()}, got {got}")


def _unpack(path: Path, dest: Path) -> None:
    """Extract an archive into dest, refusing entries that would land outside it."""
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _check_member(path, info.filename, dest)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BioaugError(f"{path}: archive entry {info.filename!r} is a symbolic link; refused")
            zf.extractall(dest)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                _check_member(path, member.name, dest)
                if member.issym() or member.islnk():
                    _check_member(
                        path,
                        str(PurePosixPath(member.name).parent / member.linkname),
                        dest,
                        what=f"link {member.name!r} -> {member.linkname!r}",
                    )
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise BioaugError(f"{path}: archive entry {member.name!r} is not a file or folder; refused")
            tf.extractall(dest, filter="data")
    else:
        shutil.copy2(path, dest / path.name)


def _check_member(archive: Path, member: str, dest: Path, what: str | None = None) -> None:
    what = what or f"entry {member!r}"
    p = PurePosixPath(member.replace("\\", "/"))
    if p.is_absolute() or member.startswith(("/", "\\")) or (len(member) > 1 and member[1] == ":"):
        raise BioaugError(f"{archive}: archive {what} has an absolute path; refused")
    target = (dest / p).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise BioaugError(f"{archive}: archive {what} points outside the target folder; refused")
