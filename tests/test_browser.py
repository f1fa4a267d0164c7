"""What a person sees, in a real browser: the Serve app's page classifies an uploaded photo, and every
picture of report.html loads. Headless Chromium (Debian's `chromium`) driven by Playwright; nothing is
downloaded. Without Chromium these tests are skipped, saying how to install it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.test_serve import deploy, free_port, serve_config

pytestmark = pytest.mark.timeout(600)

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("Chromium is not installed: `apt-get install -y chromium` (or set CHROMIUM to its path)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: `make install`")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_url(ray_session, artifacts):
    from ray import serve

    port = free_port()
    deploy(serve_config(port, artifacts["custom_cnn"]))  # trained on the demo photos
    yield f"http://127.0.0.1:{port}/"
    serve.shutdown()


def test_the_page_shows_the_top_three_classes_of_an_uploaded_photo_and_a_bad_files_error(
    browser, page_url, demo_tree, tmp_path
):
    import httpx

    photo = sorted((demo_tree / "gatto").glob("*.jpg"))[-1]  # a cat of the demo photos
    (tmp_path / "notes.jpg").write_bytes(b"these are notes, not a photo")
    expected = httpx.post(
        page_url + "predict", content=photo.read_bytes(), headers={"content-type": "image/jpeg"}
    ).json()["predictions"][0]

    page = browser.new_page(viewport={"width": 900, "height": 620})
    external = []
    page.on("request", lambda request: external.append(request.url) if not request.url.startswith(page_url) else None)
    page.goto(page_url)
    page.wait_for_selector("#model:not(:has-text('loading'))")
    assert expected["label"] and page.locator("#model").inner_text().startswith("custom_cnn (")

    page.set_input_files("#files", str(photo))
    card = page.locator(".card").first
    card.locator(".row").nth(2).wait_for()
    shown = [row.locator(".label").inner_text() for row in card.locator(".row").all()]
    assert shown == [entry["label"] for entry in expected["top_k"][:3]]  # the endpoint's own answer, in order
    first = card.locator(".prob").first.inner_text()
    assert first == f"{100 * expected['top_k'][0]['prob']:.1f}%"
    assert card.locator(".unknown").count() == int(expected["unknown"])  # the flag shown as the endpoint says

    page.set_input_files("#files", str(tmp_path / "notes.jpg"))
    error = page.locator(".card").first.locator(".error")
    error.wait_for()
    assert "cannot be used" in error.inner_text()
    page.screenshot(path=str(tmp_path / "page.png"))
    if os.environ.get("ANIMALS10_SCREENSHOT"):  # how docs/serve_page.png was taken
        shutil.copy(tmp_path / "page.png", os.environ["ANIMALS10_SCREENSHOT"])
    assert not [url for url in external if not url.startswith(("blob:", "data:"))]  # self-contained
    page.close()


def test_every_picture_of_the_report_loads(browser, artifacts, tmp_path):
    from animals10.report import write_report

    report = write_report([artifacts["custom_cnn"], artifacts["barely_trained"]], str(tmp_path / "report"))
    page = browser.new_page()
    page.goto(Path(report.html_uri).resolve().as_uri())
    images = page.eval_on_selector_all(
        "img", "images => images.map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt}))"
    )
    assert len(images) >= 5  # F1 per class, two curves, two confusion matrices (and the sample grids)
    assert all(image["complete"] and image["width"] > 100 for image in images), images
    assert "Model comparison" in page.title()
    page.close()
