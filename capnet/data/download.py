"""Checksum-verified downloads of the benchmark data, described by manifests (``capnet/data/manifests``).

A manifest is data: the files (each a ``path`` under the root, ``urls`` tried in order, ``sha256``, ``bytes``,
an optional ``extract`` rule and a license note) and, for COCO-LT, a set of single images named by an
annotation file. Every byte is checked before it is used: a download goes to ``NAME.part`` (resumed with
HTTP Range where the server allows it) and is renamed to its final path only after size and sha256 match,
so nothing half-written ever sits where a verified file belongs. The hosts are known to go down for long
stretches, hence mirrors, retries with back-off and resumption.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import io
import json
import os
import posixpath
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from capnet._version import __version__
from capnet.data.formats import read_id_list
from capnet.data.records import DataError, one_line, summarize

MANIFEST_DIR = Path(__file__).parent / "manifests"
STATE_DIR = ".capnet"  # under the root: extraction records and the staging area
USER_AGENT = f"capnet/{__version__}"
MAX_IMAGE_BYTES = 50 << 20  # a single COCO image is well under 1 MB


class DownloadError(DataError):
    """A fetch that cannot complete (unreachable source, checksum mismatch, full disk, unwritable root)."""


@dataclass
class Extract:
    """Which archive members to keep, and where under the root they go.

    ``keep``: member names or folder prefixes (ending in ``/``). ``keep_ids``: member name patterns with
    ``{id}``, filled from the id file ``ids`` (a path under the root); every such member must be found.
    ``restrict``: id lists in the archive rewritten to hold only those ids, so that a reader of the
    trimmed tree does not look for what was left out.
    """

    kind: str  # "tar" (read as a stream) or "zip"
    to: str = "."
    keep: list[str] = field(default_factory=list)
    ids: str | None = None
    keep_ids: list[str] = field(default_factory=list)
    restrict: list[str] = field(default_factory=list)


@dataclass
class FileEntry:
    path: str
    urls: list[str]
    sha256: str
    bytes: int
    license: str = ""
    md5: str | None = None
    extract: Extract | None = None


@dataclass
class ImageSet:
    """Single images fetched by URL from an annotation file's ``coco_url`` (or a mirror base + file name)."""

    annotations: str
    ids: str
    to: str
    count: int
    approx_bytes: int = 0
    mirrors: list[str] = field(default_factory=list)
    license: str = ""


@dataclass
class Manifest:
    name: str
    files: list[FileEntry]
    images: ImageSet | None = None
    config: str | None = None
    data: dict[str, str] = field(default_factory=dict)  # the config's data paths, under the root
    sizes: dict[str, int] = field(default_factory=dict)  # images in the train and test splits
    notes: str = ""


@dataclass
class Options:
    """How hard to try: ``retries`` rounds over all sources after the first, ``backoff`` seconds doubling."""

    retries: int = 3
    backoff: float = 2.0
    timeout: float = 60.0
    chunk: int = 1 << 20
    progress: bool = True
    workers: int = 8  # single images fetched at once


# ------------------------------------------------------------------------------------------ manifests


def _relative(path: str, where: str) -> str:
    """A manifest path: relative, no ``..``; manifests may come from users (``--manifest FILE``)."""
    clean = posixpath.normpath(str(path))
    if not path or clean.startswith(("/", "..")) or "\\" in path or ":" in path:
        raise DownloadError(f"{where}: '{path}' is not a relative path inside the root")
    return clean


def _manifest_from_dict(data: dict[str, Any], where: str) -> Manifest:
    try:
        files = []
        for i, raw in enumerate(data["files"]):
            extract = Extract(**raw["extract"]) if raw.get("extract") else None
            if extract and extract.kind not in ("tar", "zip"):
                raise ValueError(f"files[{i}]: extract kind must be 'tar' or 'zip', not {extract.kind!r}")
            entry = FileEntry(
                path=_relative(raw["path"], where),
                urls=[str(u) for u in raw["urls"]],
                sha256=str(raw["sha256"]).lower(),
                bytes=int(raw["bytes"]),
                license=str(raw.get("license", "")),
                md5=raw.get("md5"),
                extract=extract,
            )
            if len(entry.sha256) != 64 or not entry.urls:
                raise ValueError(f"files[{i}] ({entry.path}) needs a 64-digit sha256 and at least one url")
            files.append(entry)
        images = ImageSet(**data["images"]) if data.get("images") else None
        for key in ("annotations", "ids", "to"):
            if images is not None:
                setattr(images, key, _relative(getattr(images, key), where))
        return Manifest(
            name=str(data["name"]),
            files=files,
            images=images,
            config=data.get("config"),
            data=dict(data.get("data", {})),
            sizes={k: int(v) for k, v in data.get("sizes", {}).items()},
            notes=str(data.get("notes", "")),
        )
    except DownloadError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise DownloadError(
            f"{where}: not a valid manifest ({exc.__class__.__name__}: {one_line(exc)})"
        ) from None


def shipped_manifests() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))


def load_manifest(name_or_path: str | Path) -> Manifest:
    """A shipped manifest by dataset name (``voc-lt``) or a manifest file (mirrors, tests)."""
    path = Path(name_or_path)
    if not path.suffix and (MANIFEST_DIR / f"{name_or_path}.json").is_file():
        path = MANIFEST_DIR / f"{name_or_path}.json"
    elif not path.is_file():
        known = ", ".join(shipped_manifests())
        raise DownloadError(f"no manifest '{name_or_path}': give a dataset ({known}) or a manifest file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DownloadError(f"cannot read manifest {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: a manifest is a JSON object")
    return _manifest_from_dict(data, str(path))


# --------------------------------------------------------------------------------------- verification


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(root: str | Path, entry: FileEntry) -> bool:
    """True when the file is at its path with the manifest's size (checked first: cheap) and sha256."""
    path = Path(root) / entry.path
    if not path.is_file() or path.stat().st_size != entry.bytes:
        return False
    return sha256_of(path) == entry.sha256


def _record_path(root: Path, key: str) -> Path:
    return root / STATE_DIR / "done" / (key.replace("/", "__") + ".json")


def _write_record(root: Path, key: str, version: str, sizes: dict[str, int]) -> None:
    """Remember what a finished step wrote (paths under the root and sizes), for the next run to skip it."""
    record = _record_path(root, key)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"version": version, "files": sizes}))


def _record_holds(root: Path, key: str, version: str) -> bool:
    try:
        data = json.loads(_record_path(root, key).read_text())
    except (OSError, ValueError):
        return False
    if data.get("version") != version:
        return False
    return all(
        (root / rel).is_file() and (root / rel).stat().st_size == size for rel, size in data["files"].items()
    )


def extracted(root: str | Path, entry: FileEntry) -> bool:
    """True when this archive (this sha256) was extracted and every file it gave is still there, same size."""
    return entry.extract is not None and _record_holds(Path(root), entry.path, entry.sha256)


# ------------------------------------------------------------------------------------------- download


def _disk_error(exc: OSError, path: Path) -> DownloadError:
    if exc.errno == errno.ENOSPC:
        return DownloadError(
            f"no space left on the device while writing {path}: free some space and run again "
            f"(what was downloaded is kept and resumes)"
        )
    return DownloadError(f"cannot write {path}: {exc.strerror or one_line(exc)}")


def check_writable(root: Path) -> None:
    """Fail at once, in one line, when the root cannot hold files (not a folder, read-only, no permission)."""
    try:
        (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
        probe = root / STATE_DIR / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DownloadError(f"cannot write to {root}: {exc.strerror or one_line(exc)}") from None


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _download(url: str, part: Path, expected: int, options: Options, label: str) -> None:
    """Bring ``part`` to ``expected`` bytes from ``url``, resuming what is there when the server allows it."""
    have = part.stat().st_size if part.is_file() else 0
    if have > expected:
        part.unlink()
        have = 0
    if have == expected:
        return
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=options.timeout
    ) as resp:
        if have and (resp.status != 206 or _content_range_start(resp.headers.get("Content-Range")) != have):
            have = 0  # the server ignored the Range: the file starts again
        bar = tqdm(
            total=expected,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            disable=None if options.progress else True,
            leave=False,
        )
        try:
            with open(part, "ab" if have else "wb") as out:
                while block := resp.read(options.chunk):
                    if have + len(block) > expected:
                        raise http.client.HTTPException(f"sent more than the expected {expected} bytes")
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise _disk_error(exc, part) from None
                    have += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if have < expected:
        raise http.client.IncompleteRead(b"", expected - have)


def _sources(entry: FileEntry, mirrors: list[str]) -> list[str]:
    name = posixpath.basename(entry.path)
    return [f"{m.rstrip('/')}/{name}" for m in mirrors] + list(entry.urls)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return one_line(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"transfer cut short ({exc.expected} bytes missing)"
    return one_line(exc) or exc.__class__.__name__


def _permanent(exc: BaseException) -> bool:
    """A 4xx answer (other than a timeout or rate limit) will not change on a retry."""
    transient = (408, 416, 429)  # 416: our partial file is off; it is dropped and fetched again
    return isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in transient


def fetch_file(
    entry: FileEntry, root: str | Path, mirrors: list[str] | None = None, options: Options | None = None
) -> bool:
    """Make ``root/entry.path`` a verified copy; returns True when bytes were downloaded."""
    options = options or Options()
    root = Path(root)
    final = root / entry.path
    if verify(root, entry):
        return False
    part = final.with_name(final.name + ".part")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, final.parent) from None
    sources = _sources(entry, list(mirrors or []))
    failures: dict[str, str] = {}
    mismatches: list[str] = []
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(options.backoff * 2 ** (attempt - 1))
        for url in list(sources):
            try:
                _download(url, part, entry.bytes, options, posixpath.basename(entry.path))
            except DownloadError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise _disk_error(exc, part) from None
                failures[url] = _describe(exc)
                if isinstance(exc, urllib.error.HTTPError) and exc.code == 416:
                    part.unlink(missing_ok=True)
                if _permanent(exc):
                    sources.remove(url)
                continue
            got = sha256_of(part)
            if got == entry.sha256:
                os.replace(part, final)
                return True
            part.unlink()  # bad bytes: start over, preferably from another source
            mismatches.append(f"{url} gave sha256 {got[:12]}…")
            failures[url] = "checksum mismatch"
        if not sources:
            break
    if part.is_file() and part.stat().st_size == 0:
        part.unlink()
    if mismatches and len(mismatches) >= len(failures):
        raise DownloadError(
            f"checksum mismatch for {entry.path}: {summarize(mismatches, 3)}, expected {entry.sha256[:12]}…; "
            f"nothing was kept"
        )
    tried = [f"{url} ({why})" for url, why in failures.items()]
    raise DownloadError(f"could not download {entry.path} from any source: {summarize(tried, 4)}")


# ------------------------------------------------------------------------------------------ extraction


def _member_name(name: str) -> str | None:
    """A safe relative member name, or None (absolute paths and ``..`` are never extracted)."""
    clean = posixpath.normpath(name.replace("\\", "/")) if name else "."
    if clean in (".", "") or clean.startswith("/") or ".." in clean.split("/"):
        return None
    return clean


def _members(archive: Path, kind: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, readable) of every regular file, streamed: a tar is read once front to back."""
    if kind == "tar":
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield member.name, handle
    else:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if not info.is_dir():
                    with zipped.open(info) as handle:
                        yield info.filename, handle


def extract(entry: FileEntry, root: str | Path) -> list[str]:
    """Keep what the benchmark uses from a verified archive; returns the files written (under the root).

    Files are written into a staging folder, then moved into place one by one once every required member
    was found, and the extraction is recorded so that a rerun skips it.
    """
    rule = entry.extract
    if rule is None:
        return []
    root = Path(root)
    wanted_ids: dict[str, str] = {}
    id_order: list[str] = []
    if rule.ids:
        id_order = read_id_list(root / rule.ids)
        wanted_ids = {pattern.format(id=i): i for i in id_order for pattern in rule.keep_ids}
    prefixes = [k for k in rule.keep if k.endswith("/")]
    exact = {k for k in rule.keep if not k.endswith("/")}
    staging = root / STATE_DIR / "staging" / posixpath.basename(entry.path)
    shutil.rmtree(staging, ignore_errors=True)
    found: set[str] = set()
    lists: dict[str, bytes] = {}
    written: list[str] = []
    try:
        for raw_name, handle in _members(root / entry.path, rule.kind):
            name = _member_name(raw_name)
            if name is None:
                continue
            if name in rule.restrict:
                lists[name] = handle.read()
                continue
            if not (name in wanted_ids or name in exact or any(name.startswith(p) for p in prefixes)):
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(handle, out, 1 << 20)
            found.add(name)
            written.append(name)
        missing = sorted(set(wanted_ids) - found) + sorted(exact - found)
        absent_lists = sorted(set(rule.restrict) - set(lists))
        if missing or absent_lists:
            raise DownloadError(
                f"{entry.path} lacks {len(missing) + len(absent_lists)} members the benchmark needs: "
                f"{summarize(missing + absent_lists, 5)}"
            )
        kept = set(id_order)
        for name, content in lists.items():
            ids = [line.strip() for line in content.decode("utf-8").splitlines() if line.strip()]
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(f"{i}\n" for i in ids if i in kept))
            written.append(name)
        sizes = {}
        for name in written:
            relative = posixpath.join(rule.to, name) if rule.to not in ("", ".") else name
            final = root / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            sizes[relative] = (staging / name).stat().st_size
            os.replace(staging / name, final)
        _write_record(root, entry.path, entry.sha256, sizes)
        return sorted(sizes)
    except OSError as exc:
        raise _disk_error(exc, staging) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(f"{entry.path} is not a readable {rule.kind} archive: {one_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only when empty


# ------------------------------------------------------------------------------------- single images


def _checked_image(data: bytes, width: int, height: int) -> str | None:
    """Why ``data`` is not the annotated image (does not decode, other size), or None when it is."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
    except Exception as exc:  # PIL raises many kinds for broken files
        return f"does not decode ({exc.__class__.__name__})"
    if size != (width, height):
        return f"is {size[0]}x{size[1]}, the annotation says {width}x{height}"
    return None


def _image_sources(info: dict[str, Any], images: ImageSet) -> list[str]:
    name = str(info["file_name"])
    urls = [f"{m.rstrip('/')}/{name}" for m in images.mirrors]
    if info.get("coco_url"):
        urls.append(str(info["coco_url"]))
    return urls


def _wanted_images(images: ImageSet, root: Path) -> list[dict[str, Any]]:
    annotations = root / images.annotations
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        by_id = {int(info["id"]): info for info in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"cannot read the image list from {annotations}: {one_line(exc)}") from None
    ids = read_id_list(root / images.ids)
    unknown = [i for i in ids if not i.isdigit() or int(i) not in by_id]
    if unknown:
        raise DownloadError(
            f"{images.ids}: {len(unknown)} ids are not in {images.annotations}: {summarize(unknown)}"
        )
    for i in ids:
        name = _member_name(str(by_id[int(i)]["file_name"]))
        if name is None or "/" in name:
            raise DownloadError(f"{images.annotations}: image {i} has an unsafe file name")
    return [by_id[int(i)] for i in ids]


def _fetch_image(info: dict[str, Any], images: ImageSet, folder: Path, options: Options) -> None:
    """One image, tried at each source in turn (then again after a back-off), checked, then renamed."""
    name = str(info["file_name"])
    failures: dict[str, str] = {}
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(options.backoff * 2 ** (attempt - 1))
        for url in _image_sources(info, images):
            try:
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(request, timeout=options.timeout) as resp:
                    body = resp.read(MAX_IMAGE_BYTES + 1)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failures[url] = _describe(exc)
                continue
            problem = (
                f"is over {MAX_IMAGE_BYTES >> 20} MB"
                if len(body) > MAX_IMAGE_BYTES
                else _checked_image(body, int(info["width"]), int(info["height"]))
            )
            if problem is not None:
                failures[url] = f"the image {problem}"
                continue
            part = folder / f"{name}.part"
            try:
                part.write_bytes(body)
                os.replace(part, folder / name)
            except OSError as exc:
                part.unlink(missing_ok=True)
                raise _disk_error(exc, folder / name) from None
            return
    tried = [f"{url} ({why})" for url, why in failures.items()]
    raise DownloadError(f"could not download the image {name}: {summarize(tried, 3)}")


def fetch_images(images: ImageSet, root: str | Path, options: Options | None = None) -> int:
    """Download each listed image not yet in place, a few at a time; returns how many were downloaded.

    No checksum exists for single COCO images: each must decode and have the annotated width and height.
    A file at its final path was checked before it was renamed there, so a rerun skips it; once all are
    in place a record spares the next run from reading the (large) annotation file.
    """
    options = options or Options()
    root = Path(root)
    folder = root / images.to
    ids_file = root / images.ids
    version = sha256_of(ids_file) if ids_file.is_file() else ""
    if version and _record_holds(root, images.to, version):
        return 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, folder) from None
    wanted = _wanted_images(images, root)
    todo = [info for info in wanted if not (folder / str(info["file_name"])).is_file()]
    bar = tqdm(total=len(todo), desc=images.to, unit="img", disable=None if options.progress else True)
    with bar, ThreadPoolExecutor(max_workers=options.workers) as pool:
        jobs = [pool.submit(_fetch_image, info, images, folder, options) for info in todo]
        try:
            for job in as_completed(jobs):
                job.result()
                bar.update(1)
        except BaseException:
            for job in jobs:
                job.cancel()  # those not started; running ones finish their one image
            raise
    names = [posixpath.join(images.to, str(info["file_name"])) for info in wanted]
    _write_record(root, images.to, version, {name: (root / name).stat().st_size for name in names})
    return len(todo)


# ------------------------------------------------------------------------------------------ the plan


def plan(manifest: Manifest, root: str | Path, mirrors: list[str] | None = None) -> dict[str, Any]:
    """What a fetch would do, read from the local files only: no connection is opened, no file hashed."""
    root = Path(root)
    rows = []
    for entry in manifest.files:
        final = root / entry.path
        part = final.with_name(final.name + ".part")
        if extracted(root, entry):
            state = "extracted"
        elif final.is_file() and final.stat().st_size == entry.bytes:
            state = "present (sha256 checked when fetching)"
        elif part.is_file():
            state = f"partial ({part.stat().st_size} bytes, resumes)"
        else:
            state = "missing"
        rows.append(
            {
                "path": entry.path,
                "bytes": entry.bytes,
                "sha256": entry.sha256,
                "sources": _sources(entry, list(mirrors or [])),
                "state": state,
                "license": entry.license,
                "extract": None if entry.extract is None else entry.extract.kind,
            }
        )
    todo = [r for r in rows if r["state"] not in ("extracted",) and not r["state"].startswith("present")]
    result: dict[str, Any] = {
        "dataset": manifest.name,
        "root": str(root),
        "files": rows,
        "download_bytes": sum(r["bytes"] for r in todo),
        "images": None,
    }
    if manifest.images is not None:
        result["images"] = {
            "count": manifest.images.count,
            "approx_bytes": manifest.images.approx_bytes,
            "to": manifest.images.to,
            "from": "each annotation's coco_url" + (" (after mirrors)" if manifest.images.mirrors else ""),
            "license": manifest.images.license,
        }
    return result


def human_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_plan(summary: dict[str, Any], fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(summary, indent=1)
    lines = [f"{summary['dataset']} into {summary['root']}:"]
    for row in summary["files"]:
        lines.append(f"  {row['path']}  {human_bytes(row['bytes'])}  {row['state']}")
        lines.append(
            f"    from {row['sources'][0]}"
            + (f" (+{len(row['sources']) - 1} more)" if len(row["sources"]) > 1 else "")
        )
    if summary["images"]:
        img = summary["images"]
        lines.append(
            f"  {img['to']}/  {img['count']} single images, about {human_bytes(img['approx_bytes'])}, "
            f"from {img['from']}"
        )
    lines.append(f"to download: {human_bytes(summary['download_bytes'])} in archives and files")
    return "\n".join(lines)


def _missing_bytes(root: Path, entry: FileEntry) -> int:
    final = root / entry.path
    if final.is_file() and final.stat().st_size == entry.bytes:
        return 0
    part = final.with_name(final.name + ".part")
    return entry.bytes - (min(part.stat().st_size, entry.bytes) if part.is_file() else 0)


def fetch(
    manifest: Manifest, root: str | Path, mirrors: list[str] | None = None, options: Options | None = None
) -> dict[str, Any]:
    """Fetch, verify and extract everything a manifest lists; a rerun that finds it all done does nothing."""
    options = options or Options()
    root = Path(root)
    check_writable(root)
    need = sum(_missing_bytes(root, e) for e in manifest.files if not extracted(root, e))
    free = shutil.disk_usage(root).free
    if need > free:
        raise DownloadError(
            f"not enough free space in {root}: the downloads need {human_bytes(need)}, "
            f"{human_bytes(free)} are free"
        )
    downloaded, unpacked = [], []
    for entry in manifest.files:
        if extracted(root, entry):
            continue
        if fetch_file(entry, root, mirrors, options):
            downloaded.append(entry.path)
        if entry.extract is not None:
            extract(entry, root)
            unpacked.append(entry.path)
    images = fetch_images(manifest.images, root, options) if manifest.images else 0
    return {
        "dataset": manifest.name,
        "root": str(root),
        "downloaded": downloaded,
        "extracted": unpacked,
        "images": images,
    }
