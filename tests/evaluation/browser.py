"""Open an HTML report in headless Chromium: check that every image loaded, no console errors, take a screenshot.

Reusable on a real eval output:
    python tests/evaluation/browser.py EVAL_DIR/report.html shot.png
"""

from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 900


def browser_missing() -> str | None:
    """Why headless Chromium cannot run here (selenium, chromium or chromedriver absent), or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not Path(path).is_file() and not shutil.which(name):
            return f"{name} not found at {path} nor on PATH"
    return None


def require_browser() -> None:
    """Skip the calling test when headless Chromium cannot run here, or fail it where CI requires the browser
    (DIFFALIGN_REQUIRE_BROWSER=1)."""
    import os

    import pytest

    missing = browser_missing()
    if missing:
        if os.environ.get("DIFFALIGN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DIFFALIGN_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


def _binary(path: str, name: str) -> str:
    return path if Path(path).is_file() else (shutil.which(name) or path)


def launch(width: int = WIDTH, height: int = HEIGHT):
    """A headless Chromium driver with a `width` × `height` window that records the browser console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary(CHROMIUM, "chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(_binary(CHROMEDRIVER, "chromedriver")), options=options)


_IMAGES_JS = """
const done = Array.from(document.images).map(img => img.decode().then(() => null, () => null));
return Promise.all(done).then(() => Array.from(document.images).map(
    img => [img.getAttribute('src'), img.complete, img.naturalWidth, img.getAttribute('alt') || '']));
"""


def _screenshot(driver, path: Path) -> None:
    """Whole page as a PNG: the viewport stretched to the document's height, then CDP captureScreenshot."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width, height = max(WIDTH, int(size["width"])), int(size["height"])
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def check_report(html_path, screenshot_path=None) -> list[str]:
    """Problems seen when opening `html_path` from disk; writes a full-page screenshot if a path is given.

    A problem is: an <img> that did not load (not complete or naturalWidth 0), an <img> without alt text,
    a SEVERE browser console entry, or a page wider than the 1280 px window (horizontal scrolling).
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        return [f"{html_path} does not exist"]
    problems: list[str] = []
    driver = launch()
    try:
        driver.get(html_path.as_uri())
        for src, complete, natural_width, alt in driver.execute_script(_IMAGES_JS):
            if not complete or not natural_width:
                problems.append(f"image did not load: {src} (complete={complete}, naturalWidth={natural_width})")
            if not alt.strip():
                problems.append(f"image without alt text: {src}")
        for entry in driver.get_log("browser"):
            if entry.get("level") == "SEVERE":
                problems.append(f"console error: {entry.get('message')}")
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 0:
            problems.append(f"page is {overflow} px wider than the {WIDTH} px window")
        if screenshot_path is not None:
            _screenshot(driver, Path(screenshot_path))
    finally:
        driver.quit()
    return problems


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/evaluation/browser.py REPORT.html [SCREENSHOT.png]")
    found = check_report(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    print("\n".join(found) or "report OK")
    sys.exit(1 if found else 0)
