"""The app as an attacker and a careless user would drive it, through the Gradio client (issue 10, items 1-8).

Each case asserts what the user is shown, that no file outside the allowed roots is served, and that the
next normal request still succeeds. It starts `python app.py` on the tiny model; it never skips.
"""

from __future__ import annotations

import io
import json
import re
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.limits import LR_MAX, MAX_FT_IMAGES, MAX_IMAGES, MAX_LABELS, MAX_PIXELS, MAX_UPLOAD_BYTES
from tests.serve_app import running_app

ROOT = Path(__file__).resolve().parents[1]
REPORT = json.loads((ROOT / "assets" / "reports" / "synthetic-bce" / "report.json").read_text())
CLASSES = REPORT["class_names"]
MARKUP = '<img src=x id=pwn onerror="alert(1)">'
LINK = "[click](http://evil.example)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("hostile-home")
    temp = tmp_path_factory.mktemp("server-tmp")
    env = {"TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(home / "gradio")}
    with running_app(home, env) as (url, log, pid):
        yield {"url": url, "log": log, "pid": pid, "tmp": temp}


@pytest.fixture
def client(server):
    return Client(server["url"], verbose=False)


def _plain(markdown: str) -> str:
    """What the user reads in a gr.Markdown: backslash escapes and entities resolved, tags dropped."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"\\(.)", r"\1", markdown)))


def _png(path: Path, colour="orange", size=(64, 48), mode="RGB") -> Path:
    Image.new(mode, size, colour).save(path)
    return path


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height``: enough for a size check, a few bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _normal_prediction_works(client: Client) -> None:
    message, *_ = client.predict([], ["coffee"], "VOC", "", 0.5, False, api_name="/predict")
    assert _plain(message).startswith("1 image(s), 20 labels"), message


def _served(url: str, path: str) -> bool:
    """Whether Gradio's file route hands out ``path``."""
    for route in ("/gradio_api/file=", "/file="):
        try:
            with urllib.request.urlopen(url + route + path, timeout=10) as response:
                if response.status == 200 and response.read(64):
                    return True
        except urllib.error.HTTPError:
            pass
    return False


def _scores_csv(path: Path, paths: list[str], cls: str = "aeroplane", score: str | None = None) -> Path:
    rows = []
    for i, name in enumerate(paths):
        row = {"image_id": f"id{i}", "path": name}
        row.update({f"p:{c}": score if score is not None else 0.01 * i for c in CLASSES})
        row.update({f"y:{c}": int(c == cls) for c in CLASSES})
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _report(path: Path, **changes) -> Path:
    path.write_text(json.dumps({**REPORT, **changes}))
    return path


# ------------------------------------------------------------------ 1. files off the server
def test_1_gallery_never_serves_a_file_outside_the_report(client, server, tmp_path):
    secret = tmp_path / "secret.png"
    _png(secret, "blue")
    link = tmp_path / "link.png"
    link.symlink_to(ROOT / "README.md")
    names = [
        "app.py",
        "README.md",
        str(ROOT / "app.py"),
        "/etc/passwd",
        "../x",
        ".git/config",
        str(secret),
        "link.png",
    ]
    report = _report(tmp_path / "report.json", name="attack")
    csv = _scores_csv(tmp_path / "scores.csv", names)
    client.predict([], [handle_file(str(report)), handle_file(str(csv))], api_name="/reports")
    gallery, note = client.predict("attack", "aeroplane", api_name="/gallery")
    assert gallery == [] or gallery is None
    assert "image not in the report: 6 (app.py, README.md, app.py, passwd…)" in _plain(note)  # the 6 worst
    for path in ("/etc/passwd", str(ROOT / "app.py"), str(ROOT / "README.md"), str(secret)):
        assert not _served(server["url"], path), path
    # the next, normal request: the bundled report's gallery shows its own images
    client.predict(["synthetic-bce"], [], api_name="/reports")
    gallery, note = client.predict("synthetic-bce", "aeroplane", api_name="/gallery")
    assert len(gallery) == 12 and "not in the report" not in _plain(note)


def test_1_a_report_zip_shows_its_own_images(client, tmp_path):
    archive = tmp_path / "my-run.zip"
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), "red").save(buf, format="PNG")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("report.json", json.dumps({**REPORT, "name": "zipped"}))
        zf.writestr("scores.csv", _scores_csv(tmp_path / "s.csv", ["img/a.png", "/etc/passwd"]).read_text())
        zf.writestr("img/a.png", buf.getvalue())
    client.predict([], [handle_file(str(archive))], api_name="/reports")
    gallery, note = client.predict("zipped", "aeroplane", api_name="/gallery")
    assert len(gallery) == 1 and "image not in the report: 1 (passwd)" in _plain(note)
    shown = gallery[0]["image"]
    r, g, b = Image.open(shown if isinstance(shown, str) else shown["path"]).convert("RGB").getpixel((3, 3))
    assert r > 240 and g < 15 and b < 15


# ------------------------------------------------------------------ 2. markup shown as typed
def test_2_user_text_is_escaped_everywhere(client, tmp_path):
    labels = f"{MARKUP}, <b>bold</b>, {LINK}"
    message, image, plot, table, *_ = client.predict(
        [], ["coffee"], "Custom", labels, 0.5, False, api_name="/predict"
    )
    assert "<img" not in message and "<b>" not in message
    figure = json.loads(plot["plot"]) if isinstance(plot, dict) and "plot" in plot else plot
    text = json.dumps(figure)
    assert "<img" not in text and "<b>bold" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    stats = client.predict("Custom", labels, "topk", 0, 0.8, 0.2, False, api_name="/graph")[2]
    assert (
        "<img" not in stats
        and "[click](" not in stats
        and _plain(stats).count("[click](http://evil.example)") == 1
    )
    report = _report(tmp_path / "report.json", name=MARKUP, produced_by=LINK)
    message = client.predict([], [handle_file(str(report))], api_name="/reports")[0]
    assert "<img" not in message and "[click](" not in message and LINK in _plain(message)
    _normal_prediction_works(client)


# ------------------------------------------------------------------ 3. named fields, not "Error"
@pytest.mark.parametrize(
    "changes, field",
    [
        ({"per_class": []}, "per_class"),
        ({"class_names": "cat"}, "class_names"),
        ({"results": {"single": {"total": "high"}}}, "results.single.total"),
        ({"per_class": [{"class": "cat", "train_count": -1}]}, "per_class[0].train_count"),
        ({"threshold": 7}, "threshold"),
    ],
)
def test_3_a_wrong_report_names_its_field(client, tmp_path, changes, field):
    report = _report(tmp_path / "report.json", **changes)
    message = client.predict([], [handle_file(str(report))], api_name="/reports")[0]
    assert f"report.json: field '{field}' must be" in _plain(message)


def test_3_numbers_out_of_bounds_get_a_message(client):
    status = _finetune(client, lr=-1)
    assert f"the learning rate must lie between 1e-06 and {LR_MAX:g} (got -1" in _plain(status)
    with pytest.raises(AppError, match="Value 21 is greater than maximum value 20"):
        _finetune(client, epochs=21)  # the slider's own bound, checked by Gradio with its own line
    with pytest.raises(AppError, match="Value 1.5 is greater than maximum value 1"):
        client.predict([], ["coffee"], "VOC", "", 1.5, False, api_name="/predict")
    _normal_prediction_works(client)


# ------------------------------------------------------------------ 4. memory
def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_4_sixteen_large_images_are_answered_and_memory_comes_back(client, server, tmp_path):
    big = _png(tmp_path / "big.png", 90, (6300, 6300), mode="L")  # 39.7 megapixels, a few kB
    _normal_prediction_works(client)
    before = _rss(server["pid"])
    files = [handle_file(str(big))] * MAX_IMAGES
    message = client.predict(files, [], "VOC", "", 0.5, False, api_name="/predict")[0]
    assert _plain(message).startswith(f"{MAX_IMAGES} image(s), 20 labels")
    _normal_prediction_works(client)
    grown = _rss(server["pid"]) - before
    assert grown < 600 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB and stayed"


# ------------------------------------------------------------------ 5. fine-tune class limit
def _zip_dataset(path: Path, classes_per_image: list[list[str]], bad: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        lines = ["path,labels"]
        for i, names in enumerate(classes_per_image):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (10 * i, 0, 0)).save(buf, format="PNG")
            zf.writestr(f"img{i}.png", buf.getvalue())
            lines.append(f"img{i}.png,{';'.join(names)}")
        for name, data in (bad or {}).items():
            zf.writestr(name, data)
            lines.append(f"{name},c0")
        zf.writestr("labels.csv", "\n".join(lines) + "\n")
    return path


def _finetune(client: Client, archive: Path | None = None, sample: bool = True, epochs=1, lr=0.003) -> str:
    upload = handle_file(str(archive)) if archive else None
    result = client.predict(
        upload, [], "", sample and archive is None, ["prompts"], epochs, lr, "bce", api_name="/finetune"
    )
    return result[0]


def test_5_a_fine_tune_with_too_many_classes_is_refused(client, tmp_path):
    classes = [[f"c{j}" for j in range(i * 17, (i + 1) * 17)] for i in range(12)]  # 204 classes
    status = _finetune(client, _zip_dataset(tmp_path / "many.zip", classes))
    assert f"204 classes; the app fine-tunes at most {MAX_LABELS}" in _plain(status)


# ------------------------------------------------------------------ 6. temp folders
def test_6_no_job_leaves_a_folder_behind(client, server, tmp_path):
    assert "done: held-out mAP" in _plain(_finetune(client))
    assert "not a valid zip" in _plain(_finetune(client, _write(tmp_path / "bad.zip", b"PK nope")))
    job = client.submit(None, [], "", True, ["prompts"], 20, 0.003, "bce", api_name="/finetune")
    while not any("epoch" in _plain(out[0]) for out in job.outputs()):
        job.status()
    client.predict(api_name="/cancel")
    assert "Cancelled after" in _plain(job.result()[0])
    assert [p.name for p in server["tmp"].iterdir() if p.name.startswith("capnet")] == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ 7. no server paths
def test_7_messages_name_the_upload_never_a_server_path(client, server, tmp_path):
    archive = _zip_dataset(tmp_path / "mine.zip", [["a", "b"]] * 12, bad={"broken.png": b"not a png"})
    status = _finetune(client, archive)
    assert "Skipped 1 unusable file(s): broken.png" in _plain(status)
    assert str(server["tmp"]) not in status and "/tmp" not in status and "capnet-ft" not in status
    missing = tmp_path / "missing.zip"
    with zipfile.ZipFile(missing, "w") as zf:
        zf.writestr("labels.csv", "path,labels\n" + "".join(f"gone{i}.png,a\n" for i in range(12)))
    status = _finetune(client, missing)
    assert "gone0.png" in _plain(status) and "/tmp" not in status and str(server["tmp"]) not in status


# ------------------------------------------------------------------ 8. messages that help
def test_8_messages_say_what_is_wrong(client, tmp_path):
    report = _report(tmp_path / "report.json", name="no-cols")
    csv = _write(tmp_path / "scores.csv", b"image_id,path\nx,y.png\n")
    message = client.predict([], [handle_file(str(report)), handle_file(str(csv))], api_name="/reports")[0]
    assert "⚠" not in message  # the report itself is fine
    note = client.predict("no-cols", "aeroplane", api_name="/gallery")[1]
    assert "scores.csv has no column p:aeroplane or y:aeroplane" in _plain(note)
    empty = _write(tmp_path / "empty.csv", b"")
    message = client.predict([], [handle_file(str(report)), handle_file(str(empty))], api_name="/reports")[0]
    assert "⚠" not in message
    assert "scores.csv is empty, so no gallery" in _plain(
        client.predict("no-cols", "aeroplane", api_name="/gallery")[1]
    )
    nan = _scores_csv(
        tmp_path / "nan.csv", ["assets/reports/synth-lt-test-scenes/images/00000.png"], score="nan"
    )
    client.predict([], [handle_file(str(report)), handle_file(str(nan))], api_name="/reports")
    gallery, note = client.predict("no-cols", "aeroplane", api_name="/gallery")
    assert "p=nan" not in json.dumps(gallery) and "1 row(s) without a usable score" in _plain(note)
    status = _finetune(client, lr=1e9)
    assert "the learning rate must lie between" in _plain(status)
    huge = _header_only_png(tmp_path / "huge.png", 30_000, 30_000)
    message = client.predict([handle_file(str(huge))], [], "VOC", "", 0.5, False, api_name="/predict")[0]
    assert "huge.png: too large (900 megapixels; at most 40 are allowed)" in _plain(message)
    assert "corrupt" not in message
    _normal_prediction_works(client)


# ------------------------------------------------------------------ limits through the app
def test_limits_through_the_app(client, server, tmp_path):
    files = [handle_file(str(_png(tmp_path / f"img{i:02d}.png"))) for i in range(MAX_IMAGES + 1)]
    message = client.predict(files, [], "VOC", "", 0.5, False, api_name="/predict")[0]
    assert f"Skipped: at most {MAX_IMAGES} images per prediction: img16.png left out" in _plain(message)
    assert f"{MAX_IMAGES} image(s), 20 labels" in _plain(message)
    width = 8000
    at_limit = _png(tmp_path / "at-limit.png", 60, (width, MAX_PIXELS // width), mode="L")
    one_row_more = _png(tmp_path / "one-row-more.png", 60, (width, MAX_PIXELS // width + 1), mode="L")
    message = client.predict(
        [handle_file(str(at_limit)), handle_file(str(one_row_more))],
        [],
        "VOC",
        "",
        0.5,
        False,
        api_name="/predict",
    )[0]
    assert "one-row-more.png: too large (8000x5001 is 40.008 megapixels" in _plain(message)
    assert "1 image(s), 20 labels" in _plain(message)
    one = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(one, format="PNG")
    for n, ok in ((MAX_FT_IMAGES, True), (MAX_FT_IMAGES + 1, False)):
        archive = tmp_path / f"ft{n}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for k in range(n):
                zf.writestr(f"i{k}.png", one.getvalue())
            rows = "".join(f"i{k}.png,{'a' if k % 2 else 'b'}\n" for k in range(n))
            zf.writestr("labels.csv", "path,labels\n" + rows)
        status = _plain(_finetune(client, archive))
        assert ("301 images; the app fine-tunes on at most 300" in status) != ok, status
    exact = _write(tmp_path / "exact.bin", b"\0" * MAX_UPLOAD_BYTES)
    over = _write(tmp_path / "over.bin", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert _upload(server["url"], exact) == 200
    assert _upload(server["url"], over) == 413
    _normal_prediction_works(client)


def _upload(url: str, path: Path) -> int:
    boundary = "capnetboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url + "/gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
