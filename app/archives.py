"""Uploaded zips, checked the same way wherever the app accepts one (reports, fine-tune data).

An archive is refused before anything is read from it when it is not a zip, holds too many files or
unpacks to too much; an entry is unsafe when its path is absolute, climbs out with ``..``, names a drive,
or is a symlink.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from app.limits import MAX_ZIP_BYTES, MAX_ZIP_FILES


def relative_parts(raw: str) -> tuple[str, ...] | None:
    """The parts of a safe relative path, or None for absolute paths, ``..``, drive letters and the empty."""
    text = str(raw).strip().replace("\\", "/")
    if not text or text.startswith("/") or ":" in text.split("/")[0]:
        return None
    parts = tuple(p for p in PurePosixPath(text).parts if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def is_unsafe(info: zipfile.ZipInfo) -> bool:
    return relative_parts(info.filename) is None or stat.S_ISLNK(info.external_attr >> 16)


def open_bounded_zip(
    path: Path, upload_name: str, error: type[Exception]
) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The open archive and its entries, or ``error`` with one line naming the upload."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise error(f"{upload_name} is not a valid zip archive") from None
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_FILES:
        archive.close()
        raise error(f"{upload_name} holds {len(infos)} files; at most {MAX_ZIP_FILES}")
    if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
        archive.close()
        raise error(f"{upload_name} unpacks to more than {MAX_ZIP_BYTES // 1_000_000} MB")
    return archive, infos
