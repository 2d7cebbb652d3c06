"""In headless Chromium: the app serving a CAPNET trained on Synth-LT (a stand-in) puts it beside zero-shot.

Same pattern as test_browser.py (Debian's chromium driven by Playwright; never skipped under CI).
"""

from __future__ import annotations

from app.models import SYNTH_LT_NAME
from tests.common import CHROMIUM, require_browser
from tests.serve_app import running_app
from tests.synth_lt_standin import build_standin

require_browser()

from playwright.sync_api import expect, sync_playwright  # noqa: E402

expect.set_options(timeout=60_000)


def test_predict_shows_capnet_beside_zero_shot_on_a_scene(tmp_path):
    folder, _, _ = build_standin(tmp_path)
    args = ["--checkpoint", str(folder / SYNTH_LT_NAME)]
    with running_app(tmp_path, args=args) as (url, log, _pid), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            expect(page.locator("#banner")).to_contain_text("Serving a trained CAPNET")
            expect(page.locator("#banner")).to_contain_text("total 81.2")
            page.get_by_label("scene 1", exact=True).check()
            page.get_by_label("Scenes (synthetic)", exact=True).check()  # the checkpoint's classes by name
            page.locator("#predict").click()
            expect(page.locator("#message")).to_contain_text(
                "1 image(s), 20 labels, models: CAPNET, zero-shot"
            )
            plot = page.locator("#predict-plot")
            expect(plot.locator(".legend")).to_contain_text("CAPNET")
            expect(plot.locator(".legend")).to_contain_text("zero-shot")
            expect(page.locator("#table")).to_contain_text("CAPNET")
        except Exception:
            print(f"--- the app's log ({log}) ---\n{log.read_text()[-4000:]}")
            raise
        finally:
            browser.close()
