"""Where the failure gallery may read images from: a report's own zip, or the bundled assets/ folder.

A path from a user's scores.csv is only ever looked up among these: it is never joined onto another
folder of the server and opened. Anything else is "image not in the report".
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from app.archives import is_unsafe, open_bounded_zip, relative_parts
from app.limits import MAX_REPORT_BYTES

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"


class ReportFileError(ValueError):
    """An uploaded report archive that is refused as a whole."""


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


def read_zip(path: Path, upload_name: str) -> ZipFiles:
    """An uploaded zip's regular files by their relative path; refuse unsafe or oversized archives."""
    archive, infos = open_bounded_zip(path, upload_name, ReportFileError)
    members: dict[str, bytes] = {}
    with archive:
        for info in infos:
            if info.is_dir():
                continue
            if is_unsafe(info):
                raise ReportFileError(f"{upload_name} holds an unsafe entry (absolute, '..' or a symlink)")
            try:
                members["/".join(relative_parts(info.filename))] = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError):
                raise ReportFileError(f"{upload_name} is corrupt") from None
    return ZipFiles(members)
