"""Safe extraction of dataset archives, recognised by their content, not their name.

Archives come from anywhere (a URL, a colleague's disk), so bioaug checks every member itself
and never hands an archive to `tarfile.extractall` / `zipfile.extractall`, whose protection
depends on the Python version (the tar data filter of 3.11.7 still let chained symbolic links
write outside the target, CVE-2025-4517). The policy:

- Only regular files and folders are extracted. A symbolic link, hard link, FIFO, device or
  any other special member is refused with an error naming it: image datasets do not need
  them, and links are how archives reach outside their folder.
- A member name must be relative, without `..`, a drive letter or a NUL byte (backslashes
  count as separators); two members may not land on one path.
- Files are created with O_CREAT | O_EXCL | O_NOFOLLOW inside a fresh folder, so nothing
  that already exists is followed or overwritten.
- Limits, checked while extracting (a bomb stops at the limit, not after filling the disk):
  extracted bytes, member count, and the ratio of extracted to archive bytes.

Formats: zip; tar, plain or compressed with gzip, bzip2 or xz. `kind` tells them apart by
their first bytes; a file of another kind is not an archive (the caller copies it).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .runtime import BioaugError

CHUNK = 1 << 20
RATIO_FLOOR_BYTES = 64 << 20  # below this much output the ratio is not judged (tiny archives)

MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"(\xb5/\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
)
OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
SUFFIXES = {
    "zip": (".zip",),
    "tar": (".tar",),
    "gzip": (".tar.gz", ".tgz", ".gz"),
    "bzip2": (".tar.bz2", ".tbz2", ".bz2"),
    "xz": (".tar.xz", ".txz", ".xz"),
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one archive may expand to; `key` names each in errors (the config key)."""

    max_bytes: int
    max_members: int
    max_ratio: float
    keys: tuple[str, str, str] = (
        "limits.max_extracted_gb",
        "limits.max_archive_members",
        "limits.max_compression_ratio",
    )


def kind(path: Path) -> str | None:
    """What a file really is, by its first bytes: zip, tar, gzip, bzip2, xz, zstd, 7z, rar, or
    None (not an archive or compressed stream)."""
    with open(path, "rb") as f:
        head = f.read(512)
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def describe(path: Path) -> str:
    """'a zip archive', 'a gzip-compressed tar archive', ... for messages."""
    k = kind(path)
    if k in OPENERS:
        return f"a {k}-compressed {'tar archive' if _is_compressed_tar(path, k) else 'file'}"
    return {None: "not an archive", "tar": "a tar archive", "zip": "a zip archive"}.get(k, f"a {k} archive")


def _is_compressed_tar(path: Path, k: str) -> bool:
    try:
        with OPENERS[k](path, "rb") as f:
            head = f.read(512)
    except (OSError, EOFError, lzma.LZMAError):
        return False
    return len(head) >= 262 and head[257:262] == b"ustar"


def misnamed(path: Path, name: str | None = None) -> bool:
    """Whether the file's name (or `name`) suggests another kind than its content."""
    k, name = kind(path), (name or path.name).lower()
    claimed = [c for c, sfx in SUFFIXES.items() if name.endswith(sfx)]
    return bool(claimed) and (k not in claimed)


def extract(archive: Path, dest: Path, limits: Limits) -> int:
    """Extract `archive` into the (new, empty) folder `dest` under the policy above; returns
    the number of files written. Raises BioaugError naming the archive and the member."""
    archive, dest = Path(archive), Path(dest).resolve()
    k = kind(archive)
    budget = _Budget(archive, limits)
    if k == "zip":
        return _extract_zip(archive, dest, budget)
    if k == "tar" or (k in OPENERS and _is_compressed_tar(archive, k)):
        return _extract_tar(archive, dest, budget)
    if k in OPENERS:
        raise BioaugError(
            f"{archive}: is {describe(archive)} (one compressed file, not an archive); "
            f"decompress it, or give the folder or archive that holds the dataset"
        )
    raise BioaugError(f"{archive}: is {describe(archive)}; bioaug extracts zip and tar (plain, .gz, .bz2, .xz)")


class _Budget:
    def __init__(self, archive: Path, limits: Limits):
        self.archive, self.limits = archive, limits
        self.size = max(archive.stat().st_size, 1)
        self.bytes = self.members = 0
        self.paths: set[str] = set()

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise BioaugError(
                f"{self.archive}: more than {self.limits.max_members} members (limit {self.limits.keys[1]}); refused"
            )

    def add(self, n: int, name: str) -> None:
        self.bytes += n
        lim = self.limits
        if self.bytes > lim.max_bytes:
            raise BioaugError(
                f"{self.archive}: extracts to more than {lim.max_bytes / 1e9:g} GB (at {name!r}; "
                f"limit {lim.keys[0]}); refused"
            )
        if self.bytes > RATIO_FLOOR_BYTES and self.bytes > lim.max_ratio * self.size:
            raise BioaugError(
                f"{self.archive}: expands more than {lim.max_ratio:g}-fold ({self.size} bytes to over "
                f"{self.bytes} at {name!r}; limit {lim.keys[2]}), as a decompression bomb does; refused"
            )


def _safe_relpath(archive: Path, name: str) -> PurePosixPath:
    """The member's path below the target, or an error naming why it cannot be one."""
    if "\x00" in name:
        raise BioaugError(f"{archive}: archive entry {name!r} has a NUL byte in its name; refused")
    unified = name.replace("\\", "/")
    p = PurePosixPath(unified)
    if unified.startswith("/") or p.is_absolute() or (len(unified) > 1 and unified[1] == ":"):
        raise BioaugError(f"{archive}: archive entry {name!r} has an absolute path; refused")
    parts = [part for part in p.parts if part not in ("", ".")]
    if ".." in parts:
        raise BioaugError(f"{archive}: archive entry {name!r} climbs out of the target folder ('..'); refused")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _claim(budget: _Budget, rel: PurePosixPath, is_dir: bool, name: str) -> None:
    key = str(rel)
    if key in budget.paths and not is_dir:
        raise BioaugError(f"{budget.archive}: two archive entries land on {key!r} (the second is {name!r}); refused")
    budget.paths.add(key)


def _make_dirs(dest: Path, rel: PurePosixPath) -> Path:
    """Create dest/rel folder by folder, refusing to pass through anything but a real folder."""
    here = dest
    for part in rel.parts:
        here = here / part
        try:
            os.mkdir(here)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                raise BioaugError(f"{here}: an archive entry needs this to be a folder, but it is a file") from None
    return here


def _write_file(dest: Path, rel: PurePosixPath, stream, budget: _Budget, name: str) -> None:
    parent = _make_dirs(dest, rel.parent) if rel.parent != PurePosixPath(".") else dest
    target = parent / rel.name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise BioaugError(f"{budget.archive}: archive entry {name!r} would overwrite {target}; refused") from None
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(CHUNK):
            budget.add(len(chunk), name)
            out.write(chunk)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> int:
    n = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                budget.member(info.filename)
                rel = _safe_relpath(archive, info.filename)
                mode = (info.external_attr >> 16) & 0o170000
                if mode == stat.S_IFLNK:
                    raise BioaugError(
                        f"{archive}: archive entry {info.filename!r} is a symbolic link; "
                        f"bioaug extracts only files and folders"
                    )
                if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise BioaugError(
                        f"{archive}: archive entry {info.filename!r} is a special file "
                        f"(mode {oct(mode)}); bioaug extracts only files and folders"
                    )
                if info.flag_bits & 0x1:
                    raise BioaugError(f"{archive}: archive entry {info.filename!r} is encrypted; refused")
                is_dir = info.is_dir() or mode == stat.S_IFDIR
                _claim(budget, rel, is_dir, info.filename)
                if is_dir:
                    _make_dirs(dest, rel)
                    continue
                with zf.open(info) as stream:
                    _write_file(dest, rel, stream, budget, info.filename)
                n += 1
    except BioaugError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise BioaugError(f"{archive}: not a readable zip archive ({type(err).__name__}: {err})") from err
    return n


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> int:
    n = 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:  # streamed: members are read one after the other
                budget.member(member.name)
                rel = _safe_relpath(archive, member.name)
                if member.issym() or member.islnk():
                    kind_ = "symbolic" if member.issym() else "hard"
                    raise BioaugError(
                        f"{archive}: archive entry {member.name!r} is a {kind_} link to "
                        f"{member.linkname!r}; bioaug extracts only files and folders"
                    )
                if not (member.isreg() or member.isdir()):
                    what = "a FIFO" if member.isfifo() else "a device" if member.isdev() else "a special entry"
                    raise BioaugError(
                        f"{archive}: archive entry {member.name!r} is {what}; bioaug extracts only files and folders"
                    )
                _claim(budget, rel, member.isdir(), member.name)
                if member.isdir():
                    _make_dirs(dest, rel)
                    continue
                stream = tf.extractfile(member)
                _write_file(dest, rel, stream, budget, member.name)
                n += 1
    except BioaugError:
        raise
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zipfile.BadZipFile) as err:
        raise BioaugError(f"{archive}: not a readable tar archive ({type(err).__name__}: {err})") from err
    return n
