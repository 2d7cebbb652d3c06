"""Uploaded reports: the failure gallery reads only the report's own zip or the bundled assets/."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from app import dashboard as dash
from app.archives import relative_parts
from app.report_files import ROOT, AssetFiles

BUNDLED_REPORT = dash.BUNDLED / "synthetic-bce" / "report.json"
CLASSES = json.loads(BUNDLED_REPORT.read_text())["class_names"]


def _png(colour="red", size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _scores(paths: list[str], cls: str = "aeroplane") -> str:
    """Every listed path a positive of ``cls`` with a low score: the worst misses the gallery shows first."""
    rows = []
    for i, path in enumerate(paths):
        row = {"image_id": f"id{i}", "path": path}
        row.update({f"p:{c}": 0.01 * i for c in CLASSES})
        row.update({f"y:{c}": int(c == cls) for c in CLASSES})
        rows.append(row)
    return pd.DataFrame(rows).to_csv(index=False)


def _zip(path: Path, members: dict[str, bytes | str], symlinks: dict[str, str] | None = None) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            zf.writestr(info, target)
    return str(path)


SERVER_FILES = [
    "app.py",
    "README.md",
    str(ROOT / "app.py"),
    "/etc/passwd",
    "../x.png",
    "assets/../app.py",
    "checkpoints/capnet-synth.safetensors",
    ".git/config",
]


def test_paths_outside_the_report_are_never_opened(tmp_path, monkeypatch):
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png("blue"))
    (tmp_path / "link.png").symlink_to(outside)
    report = tmp_path / "report.json"
    report.write_text(BUNDLED_REPORT.read_text())
    csv = tmp_path / "scores.csv"
    paths = [*SERVER_FILES, str(outside), "link.png", str(tmp_path / "link.png")]
    csv.write_text(_scores(paths))
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    runs, problems = dash.runs_from_uploads([str(report), str(csv)])
    assert problems == [] and len(runs) == 1
    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"opened {self}"))
    items, note = dash.failures(runs[0], "aeroplane", k=len(paths))
    assert items == []
    assert f"{dash.NOT_IN_REPORT}: {len(paths)} (" in note.replace("\\", "")
    assert not [f for f in opened if "passwd" in f or "secret" in f or f.endswith(("app.py", "README.md"))]


def test_a_symlink_inside_assets_is_refused(tmp_path, monkeypatch):
    fake_assets = tmp_path / "assets"
    fake_assets.mkdir()
    (fake_assets / "real.png").write_bytes(_png())
    (fake_assets / "link.png").symlink_to(ROOT / "README.md")
    (fake_assets / "inner.png").symlink_to(fake_assets / "real.png")
    monkeypatch.setattr("app.report_files.ASSETS", fake_assets)
    files = AssetFiles(fake_assets)
    assert files.read("real.png") == _png()
    assert files.read("link.png") is None and files.read("inner.png") is None


def test_a_zip_report_shows_its_own_images_and_nothing_else(tmp_path):
    inside = ["images/a.png", "./images/b.png"]
    archive = _zip(
        tmp_path / "my-run.zip",
        {
            "run/report.json": BUNDLED_REPORT.read_text(),
            "run/scores.csv": _scores([*inside, *SERVER_FILES, "images/link.png"]),
            "run/images/a.png": _png("red"),
            "run/images/b.png": _png("green"),
        },
    )
    runs, problems = dash.runs_from_uploads([archive])
    assert problems == [] and len(runs) == 1
    items, note = dash.failures(runs[0], "aeroplane", k=20)
    colours = [image.getpixel((5, 5)) for image, _ in items]
    assert colours == [(255, 0, 0), (0, 128, 0)]
    assert f"{dash.NOT_IN_REPORT}: {len(SERVER_FILES) + 1} (" in note.replace("\\", "")


@pytest.mark.parametrize(
    "member, symlink", [("../evil.png", False), ("/abs.png", False), ("images/l.png", True)]
)
def test_unsafe_zip_entries_refuse_the_zip_with_its_upload_name(tmp_path, member, symlink):
    members = {"report.json": BUNDLED_REPORT.read_text()}
    links = {member: "/etc/passwd"} if symlink else {}
    if not symlink:
        members[member] = _png()
    runs, problems = dash.runs_from_uploads([_zip(tmp_path / "bad-run.zip", members, links)])
    assert runs == [] and problems == ["bad-run.zip holds an unsafe entry (absolute, '..' or a symlink)"]


def test_relative_parts():
    assert relative_parts("a/./b.png") == ("a", "b.png")
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "C:/x", "c:x", "a\\..\\..\\x"):
        assert relative_parts(bad) is None, bad


def test_bundled_gallery_still_reads_assets():
    run = next(r for r in dash.bundled_runs() if r.name == "synthetic-bce")
    items, note = dash.failures(run, "aeroplane", k=3)
    assert len(items) == 6 and dash.NOT_IN_REPORT not in note
    assert all(isinstance(image, Image.Image) for image, _ in items)
    assert os.sep not in "".join(caption for _, caption in items)
