"""End-to-end tests of the app in real headless Chromium (Debian's chromium driven by Playwright).

They start `python app.py` on the tiny model, use every tab as a person would, send each bad input, and
keep a screenshot of each tab in test-artifacts/. Under CI (CI=1, true, yes or on) they never skip.
"""

from __future__ import annotations

import io
import json
import re
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from capnet.checkpoint import read_metadata
from tests.common import CHROMIUM, VOC_CLASSES, require_browser
from tests.serve_app import running_app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
require_browser()

from playwright.sync_api import expect, sync_playwright  # noqa: E402

# The first prediction loads models and calibrates: allow a slow CI machine more than expect's 5 s.
expect.set_options(timeout=60_000)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app's URL and its log file (shown beside a failing test)."""
    with running_app(tmp_path_factory.mktemp("home")) as (url, log, _pid):
        yield url, log


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        instance = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield instance
        instance.close()


@pytest.fixture
def page(browser, app_server, request):
    url, log = app_server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    expect(page.locator("#banner")).to_contain_text("Random weights")
    yield page
    context.close()
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:
        print(f"--- the app's log, last 4000 characters ({log}) ---\n{log.read_text()[-4000:]}")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _write_image(path: Path, colour: str = "orange", size=(64, 48)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_predict_upload_and_read_predictions(page, tmp_path):
    image = _write_image(tmp_path / "photo.jpg")
    page.locator("#upload input[type=file]").set_input_files(str(image))
    page.get_by_label("chelsea").check()
    page.locator("#predict").click()
    expect(page.locator("#message")).to_contain_text("2 image(s), 20 labels")
    table = page.locator("#table")
    expect(table).to_contain_text("zero-shot")
    expect(table).to_contain_text("photo.jpg")
    expect(table).to_contain_text("chelsea")
    # the grid renders only the rows in view: any VOC label with its probability will do
    expect(table).to_contain_text(re.compile(rf"({'|'.join(VOC_CLASSES)})\s*0\.\d{{4}}"))
    expect(page.locator("#predict-plot .plot-container")).to_be_visible()
    _shot(page, "predict")


def test_user_text_shows_as_typed(page):
    page.get_by_label("Custom", exact=True).first.check()
    page.locator("#custom textarea").fill("<img src=x id=pwn>, <b>bold</b>, [click](http://evil.example)")
    page.get_by_label("coffee").check()
    page.locator("#predict").click()
    expect(page.locator("#message")).to_contain_text("1 image(s), 3 labels")
    expect(page.locator("#predict-plot")).to_contain_text("<b>bold</b>")
    expect(page.locator("#predict-plot")).to_contain_text("[click](http://evil.example)")
    expect(page.locator("#predict-image img")).to_be_visible()  # the image beside its ranked labels
    assert page.locator("#pwn").count() == 0
    assert page.locator("a[href='http://evil.example']").count() == 0


def test_graph_slider_recomputes(page):
    _tab(page, "Label graph")
    stats = page.locator("#graph-stats")
    expect(stats).to_contain_text("text-embedding graph")
    before = stats.inner_text()
    number = page.locator("#topk input[type=number]")
    number.fill("1")
    number.press("Enter")
    expect(stats).not_to_have_text(before)
    assert "edges" in stats.inner_text()
    expect(page.locator("#graph-plot .plot-container")).to_be_visible()
    page.wait_for_timeout(500)  # the redrawn figure settles
    _shot(page, "label-graph")


def test_dashboard_shows_bundled_reports_and_gallery(page):
    _tab(page, "Head vs tail")
    page.locator("#show-reports").click()
    expect(page.locator("#dash-message")).to_contain_text("python -m capnet.world.ablation")
    expect(page.locator("#dash-bars .plot-container")).to_be_visible()
    # It opens on the row the ablation shipped (chosen on validation), beside zero-shot.
    table = json.loads((ROOT / "assets" / "reports" / "synth-lt-ablation.json").read_text())
    expect(page.locator("#dash-table")).to_contain_text(table["shipped"]["row"])
    expect(page.locator("#gallery img").first).to_be_visible()
    _shot(page, "dashboard")


def test_report_fields_show_as_typed(page, tmp_path):
    report = json.loads((ROOT / "assets" / "reports" / "synthetic-bce" / "report.json").read_text())
    report["name"] = "<img src=x id=pwn2>"
    report["per_class"][0]["class"] = report["class_names"][0] = "<img src=x id=pwn3> [a](http://e.x)"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    _tab(page, "Head vs tail")
    # the bundled reports show on load; then only the uploaded one
    expect(page.locator("#dash-message")).to_contain_text("capnet.world.ablation")
    ticked = page.locator("#bundled input[type=checkbox]:checked")
    expect(ticked).not_to_have_count(0)
    while ticked.count():
        ticked.first.uncheck()
    page.locator("#report-upload input[type=file]").set_input_files(str(path))
    page.locator("#show-reports").click()
    message = page.locator("#dash-message")
    expect(message).to_contain_text("<img src=x id=pwn2>: tools/make_example_reports.py")
    expect(page.locator("#dash-table")).to_contain_text("<img src=x id=pwn3> [a](http://e.x)")
    expect(page.locator("#dash-scatter")).to_contain_text("<img src=x id=pwn2>")
    assert page.locator("#pwn2, #pwn3, a[href='http://e.x']").count() == 0


def _set_epochs(page, epochs: int) -> None:
    field = page.locator("#ft-epochs input[type=number]")
    field.fill(str(epochs))
    field.press("Enter")


def _start_sample_fine_tune(page, epochs: int) -> None:
    _tab(page, "Fine-tune")
    page.locator("#ft-sample input[type=checkbox]").check()
    _set_epochs(page, epochs)
    page.locator("#ft-start").click()


def test_one_epoch_fine_tune_runs_to_completion(page, tmp_path):
    _start_sample_fine_tune(page, epochs=1)
    expect(page.locator("#ft-status")).to_contain_text("done: held-out mAP", timeout=240_000)
    link = page.locator("#ft-download a").first
    expect(link).to_have_attribute("href", re.compile(r"finetuned\.safetensors$"))
    downloaded = tmp_path / "tuned.safetensors"
    downloaded.write_bytes(urllib.request.urlopen(link.get_attribute("href"), timeout=30).read())
    meta = read_metadata(downloaded)
    assert meta["class_names"] == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    _shot(page, "fine-tune")


def test_cancel_stops_a_fine_tune_and_frees_the_server_for_the_next(page):
    _start_sample_fine_tune(page, epochs=20)
    status = page.locator("#ft-status")
    expect(status).to_contain_text(re.compile(r"epoch \d+/20"))  # training is under way
    page.locator("#ft-cancel").click()
    expect(status).to_contain_text(re.compile(r"Cancelled after ([1-9]|1[0-9]) of 20 epochs"))
    _set_epochs(page, 1)
    page.locator("#ft-start").click()
    expect(status).not_to_contain_text("Cancelled")
    expect(status).to_contain_text("done: held-out mAP", timeout=240_000)  # the server's slot was freed


def _bad_uploads(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(buf, format="JPEG")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(huge)
    return {
        "non-image": (text, "not an image"),
        "corrupt": (corrupt, "corrupt or truncated"),
        "huge": (huge, "megapixels"),
    }


def test_bad_inputs_show_a_message_and_the_app_stays_up(page, tmp_path):
    for name, (path, expected) in _bad_uploads(tmp_path).items():
        page.locator("#upload input[type=file]").set_input_files(str(path))
        page.locator("#predict").click()
        expect(page.locator("#message")).to_contain_text(expected)
        if name == "corrupt":
            _shot(page, "bad-input")
    page.locator("#upload input[type=file]").set_input_files([])
    page.get_by_label("Custom", exact=True).first.check()
    for labels, expected in (("", "empty"), ("cat, Cat", "duplicated")):
        page.locator("#custom textarea").fill(labels)
        page.get_by_label("coffee").check()
        page.locator("#predict").click()
        expect(page.locator("#message")).to_contain_text(expected)

    _tab(page, "Fine-tune")
    not_zip = tmp_path / "data.zip"
    not_zip.write_bytes(b"PK\x03\x04 this is not really a zip")
    page.locator("#ft-zip input[type=file]").set_input_files(str(not_zip))
    page.locator("#ft-start").click()
    expect(page.locator("#ft-status")).to_contain_text("not a valid zip")

    bad_csv = tmp_path / "badcsv.zip"
    with zipfile.ZipFile(bad_csv, "w") as zf:
        zf.writestr("labels.csv", "filename;tags\nx.jpg;cat\n")
        zf.writestr("x.jpg", b"nope")
    page.reload()  # a File component holding a file shows no upload input until cleared
    _tab(page, "Fine-tune")
    page.locator("#ft-zip input[type=file]").set_input_files(str(bad_csv))
    page.locator("#ft-start").click()
    expect(page.locator("#ft-status")).to_have_text(
        "⚠ labels.csv: the header must name the columns 'path' and 'labels', found ['filename;tags']"
    )

    # Still serving: a normal prediction works afterwards.
    _tab(page, "Predict")
    page.get_by_label("VOC", exact=True).first.check()
    page.get_by_label("coffee").check()
    page.locator("#predict").click()
    expect(page.locator("#message")).to_contain_text("1 image(s), 20 labels")


def test_clicking_the_predicted_image_shows_its_evidence_map(page):
    page.get_by_label("chelsea").check()
    page.locator("#predict").click()
    expect(page.locator("#message")).to_contain_text("1 image(s), 20 labels")
    expect(page.locator("#explain-map img")).to_have_count(0)
    page.locator("#predict-image img").click()
    expect(page.locator("#explain-map img")).to_be_visible()
    expect(page.locator("#explain-view img")).to_be_visible()
    top = page.locator("#explain-class input").input_value()
    # the top class of the ranked labels: the first label of the table, which lists them most probable first
    listed = page.locator("#table").inner_text()
    assert top == min((n for n in VOC_CLASSES if n in listed), key=listed.index)
    expect(page.locator("#explain-summary")).to_contain_text(re.compile(rf"{top}: p = 0\.\d{{3}}"))
    expect(page.locator("#explain-graph")).to_contain_text("needs a trained CAPNET model")
    other = next(name for name in ("horse", "dog") if name != top)
    page.locator("#explain-class input").click()
    page.get_by_role("option", name=other, exact=True).click()
    expect(page.locator("#explain-summary")).to_contain_text(f"{other}: p = ")
    _shot(page, "explain-predict")


def test_clicking_a_gallery_image_shows_its_map_and_patterns_filter_to_the_tail(page):
    _tab(page, "Head vs tail")
    expect(page.locator("#gallery img").first).to_be_visible()
    failing = page.locator("#gallery-class input").input_value()
    page.locator("#gallery img").first.click()
    expect(page.locator("#gallery-explain-map img")).to_be_visible()
    expect(page.locator("#gallery-explain-summary")).to_contain_text(f"{failing}: p = ")
    expect(page.locator("#gallery-explain-class input")).to_have_value(failing)
    expect(page.locator("#pattern-pr .plot-container")).to_be_visible()
    expect(page.locator("#pattern-reliability")).to_contain_text("tail (ECE")
    run = page.locator("#gallery-run input").input_value()  # the bundled report the tab opened on
    reports = [json.loads(p.read_text()) for p in (ROOT / "assets" / "reports").glob("*/report.json")]
    report = next(r for r in reports if r.get("name") == run)
    tail = [row["class"] for row in report["per_class"] if row["group"] == "tail"]
    page.locator("#pattern-group").get_by_label("tail", exact=True).check()
    expect(page.locator("#pattern-note")).to_contain_text(f"{len(tail)} classes (tail)")
    table = page.locator("#pattern-confusions")
    expect(table).to_contain_text(tail[0])
    assert re.search(r"\b(head|medium)\b", table.inner_text()) is None  # the group column: tail only
    expect(page.locator("#pattern-reliability")).not_to_contain_text("head (ECE")
    _shot(page, "explain-gallery")


@pytest.fixture
def capnet_checkpoint(tmp_path):
    """A CAPNET checkpoint of the tiny architecture whose GCN is far from zero, as training leaves it."""
    import torch

    from capnet.backbone import load_backbone
    from capnet.checkpoint import save_checkpoint
    from capnet.model import CapNet

    backbone = load_backbone(name="capnet-tiny", pretrained=None, device="cpu", init_seed=0)
    model = CapNet(backbone, ["cat", "dog", "horse", "person", "car", "bicycle"]).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.gcn.layers:
            layer.linear.weight.copy_(torch.randn(layer.linear.weight.shape, generator=generator) * 0.3)
    return save_checkpoint(model, tmp_path / "capnet.safetensors", {"class_freq": [90, 60, 40, 20, 9, 4]})


def test_a_capnet_checkpoint_shows_its_graph_attribution_beside_the_map(browser, capnet_checkpoint, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with running_app(home, args=["--checkpoint", str(capnet_checkpoint)]) as (url, log, _pid):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            expect(page.locator("#banner")).to_contain_text("capnet.safetensors")
            page.get_by_label("astronaut").check()
            page.locator("#predict").click()
            expect(page.locator("#message")).to_contain_text("models: CAPNET, zero-shot")
            page.locator("#predict-image img").click()
            expect(page.locator("#explain-map img")).to_be_visible()
            expect(page.locator("#explain-model input")).to_have_value("CAPNET")
            graph = page.locator("#explain-graph")
            expect(graph).to_contain_text("with the full graph")
            expect(graph).to_contain_text(re.compile(r"(rose|fell) by [\d.e-]+ because of `\w+`"))
            page.wait_for_timeout(300)
            _shot(page, "explain-capnet")
        except Exception:
            print(f"--- the app's log ---\n{log.read_text()[-4000:]}")
            raise
        finally:
            context.close()
