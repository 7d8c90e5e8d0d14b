"""The playground (GET /) in a real headless browser against a real `ddpm-serve` on the bundled model.

Debian's chromium, driven by Playwright for Python (Playwright's own browser download is not reachable
here, so the executable is the system's). Each state of the page is saved as a screenshot under
DDPM_TEST_ARTIFACTS (default: test-artifacts/ at the repository root). Without chromium or Playwright the
tests skip with the reason, except in CI (CI=true), where .ci/run installs both and a skip would hide a
failure, so they fail instead.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.live_server import ddpm_serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "model_store" / "fmnist-small"
ARTIFACTS = Path(os.environ.get("DDPM_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "playground"
KEY = "playground-test-key-0123456789"
TIMEOUT_MS = 120_000
# Eager: the page is what is under test, and the default's background compile would spend CI's two cores.
EAGER = {"DDPM_COMPILE": "false"}


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: these machines run tests as root, where chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


# Waits through Playwright's locators, not wait_for_function: that evaluates a string in the page, which
# the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
def ready(page: object) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_text("Ready.", timeout=TIMEOUT_MS)  # type: ignore[attr-defined]


def done(page: object) -> None:
    from playwright.sync_api import expect

    status = page.locator("#status")  # type: ignore[attr-defined]
    expect(status).to_have_text(re.compile(r"^(Done|Failed)"), timeout=TIMEOUT_MS)
    assert status.text_content().startswith("Done"), status.text_content()


def decode_data_url(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    image.load()
    return image


def test_generate_with_previews_then_the_image_and_its_timings(browser: object) -> None:
    with ddpm_serve(BUNDLED, **EAGER) as (_, base):
        page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        page.set_default_timeout(TIMEOUT_MS)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{base}/")
        ready(page)
        shot(page, "1-loaded")

        # The K slider's marks are the calibrated points, each with its FID and latency.
        assert page.input_value("#sampler") == "default"
        page.fill("#steps", "25")
        page.dispatch_event("#steps", "change")
        assert "K=25 · FID" in page.text_content("#k-mark")
        page.select_option("#class-label", "7")  # sneaker
        page.fill("#seed", "3")
        page.fill("#preview-every", "2")
        page.click("#generate")

        page.wait_for_selector("#previews img[src^='data:image/png']")
        shot(page, "2-previews")
        preview = decode_data_url(page.get_attribute("#previews img", "src") or "")
        assert preview.size == (28, 28)

        done(page)
        shot(page, "3-result")
        image = decode_data_url(page.get_attribute("#images img", "src") or "")
        assert image.size == (28, 28) and image.mode == "L"
        timings = page.text_content("#timings")
        for row in ("Queue", "Compute", "Total (server)", "First preview (here)", "Calibrated FID"):
            assert row in timings, row
        assert "25" in page.text_content("#timings tr:nth-child(3) td")  # K as run
        assert page.locator("#chart circle.chosen").count() == 1  # the chosen point on the chart
        page.close()
    origins = {urlsplit(url)._replace(path="", query="", fragment="").geturl() for url in requested}
    assert origins == {base}, origins  # nothing but the server the page came from


def test_the_page_can_be_used_from_the_keyboard_and_every_control_is_labelled(browser: object) -> None:
    with ddpm_serve(BUNDLED, **EAGER) as (_, base):
        page = browser.new_page()  # type: ignore[attr-defined]
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{base}/")
        ready(page)
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input, select, button, progress')]
                .filter((el) => !el.closest('[hidden]'))
                .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                                && !(el.tagName === 'BUTTON' && el.textContent.trim()))
                .map((el) => el.id || el.outerHTML)"""
        )
        assert unlabelled == []
        assert page.evaluate("document.documentElement.lang") == "en"
        assert page.get_attribute("#status", "aria-live") == "polite"

        # Tab from the top of the page to the Generate button, then press Enter: no mouse anywhere.
        page.fill("#steps", "10")
        page.focus("#model")
        for _ in range(30):
            if page.evaluate("document.activeElement.id") == "generate":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "generate"
        page.keyboard.press("Enter")
        done(page)
        alts = page.eval_on_selector_all("#images img, #previews img", "els => els.map((e) => e.alt)")
        assert alts and all(alt.startswith("Image ") for alt in alts)
        shot(page, "4-keyboard")
        (ARTIFACTS / "aria.yaml").write_text(page.locator("main").aria_snapshot())
        page.close()


def test_with_keys_the_page_asks_once_and_sends_the_key_to_its_own_server(browser: object) -> None:
    with ddpm_serve(BUNDLED, DDPM_API_KEYS=KEY, **EAGER) as (_, base):
        page = browser.new_page()  # type: ignore[attr-defined]
        page.set_default_timeout(TIMEOUT_MS)
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((urlsplit(r.url).path, r.headers.get("authorization"))))
        page.goto(f"{base}/")
        page.wait_for_selector("#key-form:not([hidden])")
        shot(page, "5-key")
        page.fill("#api-key", KEY)
        page.click("#key-form button[type=submit]")
        ready(page)
        page.fill("#steps", "10")
        page.click("#generate")
        done(page)
        # Kept in this tab only: sessionStorage, never localStorage or a cookie.
        assert page.evaluate("sessionStorage.getItem('ddpm-serve-api-key')") == KEY
        assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
        page.close()
    assert [auth for path, auth in sent if path == "/generate"] == [f"Bearer {KEY}"]
    models = [auth for path, auth in sent if path == "/v1/models"]
    assert models == [None, f"Bearer {KEY}"]  # refused without a key, then asked for it once
