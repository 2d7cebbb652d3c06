"""Where the failure gallery may read images from: a report's own zip, or the bundled assets/ folder.

A path from a user's scores.csv is only ever looked up among these: it is never joined onto another
folder of the server and opened. Anything else is "image not in the report".
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from app.limits import MAX_REPORT_BYTES, MAX_ZIP_BYTES, MAX_ZIP_FILES

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"


class ReportFileError(ValueError):
    """An uploaded report archive that is refused as a whole."""


def relative_parts(raw: str) -> tuple[str, ...] | None:
    """The parts of a safe relative path, or None for absolute paths, ``..``, drive letters and the empty."""
    text = str(raw).strip().replace("\\", "/")
    if not text or text.startswith("/") or ":" in text.split("/")[0]:
        return None
    parts = tuple(p for p in PurePosixPath(text).parts if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


class AssetFiles:
    """Files under the bundled ``assets/`` folder, named relative to the repository or to ``base``."""

    def __init__(self, base: Path | None = None) -> None:
        self.bases = [ROOT] + ([base] if base is not None else [])

    def read(self, raw: str) -> bytes | None:
        parts = relative_parts(raw)
        if parts is None:
            return None
        assets = ASSETS.resolve()
        for base in self.bases:
            path = base.joinpath(*parts)
            if not _plain_file_under(path, assets):
                continue
            if path.stat().st_size > MAX_REPORT_BYTES:
                return None
            return path.read_bytes()
        return None


def _plain_file_under(path: Path, root: Path) -> bool:
    """A regular file inside ``root`` reached without following any symlink."""
    try:
        if not path.resolve().is_relative_to(root):
            return False
        current = path
        while current != current.parent and current.is_relative_to(root.parent):
            if current.is_symlink():
                return False
            current = current.parent
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


class ZipFiles:
    """An uploaded report zip's members, held in memory: nothing of it is written to the server's disk."""

    def __init__(self, members: dict[str, bytes], prefix: tuple[str, ...] = ()) -> None:
        self.members = members
        self.prefix = prefix  # the folder of report.json inside the zip: paths may be relative to it

    def read(self, raw: str) -> bytes | None:
        parts = relative_parts(raw)
        if parts is None:
            return None
        for candidate in ((*self.prefix, *parts), parts):
            found = self.members.get("/".join(candidate))
            if found is not None:
                return found
        return None

    def folder(self, prefix: tuple[str, ...]) -> ZipFiles:
        return ZipFiles(self.members, prefix)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def read_zip(path: Path, upload_name: str) -> ZipFiles:
    """An uploaded zip's regular files by their relative path; refuse unsafe or oversized archives."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ReportFileError(f"{upload_name} is not a valid zip archive") from None
    members: dict[str, bytes] = {}
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_FILES:
            raise ReportFileError(f"{upload_name} holds {len(infos)} files; at most {MAX_ZIP_FILES}")
        if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise ReportFileError(f"{upload_name} unpacks to more than {MAX_ZIP_BYTES // 1_000_000} MB")
        for info in infos:
            if info.is_dir():
                continue
            parts = relative_parts(info.filename)
            if parts is None or _is_symlink(info):
                raise ReportFileError(f"{upload_name} holds an unsafe entry (absolute, '..' or a symlink)")
            try:
                members["/".join(parts)] = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError):
                raise ReportFileError(f"{upload_name} is corrupt") from None
    return ZipFiles(members)
