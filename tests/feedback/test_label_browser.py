"""The labelling page driven in headless Chromium: images shown, a click and a key press label, undo, resume."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from diffalign.data.label_rounds import write_round
from diffalign.feedback.label_server import running

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle on a blue background", "a small green square", "two yellow triangles"]
COLOURS = [(220, 40, 40), (40, 90, 220), (240, 200, 30), (40, 170, 80), (150, 60, 200), (240, 240, 240),
           (30, 30, 30), (255, 140, 0), (0, 200, 200)]


def _browser():
    spec = importlib.util.spec_from_file_location("diffalign_test_browser", REPO_ROOT / "tests/evaluation/browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def browser():
    module = _browser()
    module.require_browser()
    return module


def _pairs(folder: Path) -> list[tuple[str, str]]:
    file = folder / "pairs.jsonl"
    lines = file.read_text().splitlines() if file.exists() else []
    return [(row["chosen"], row["rejected"]) for row in map(json.loads, lines)]


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 10, poll_frequency=0.05).until(lambda _: condition(), message=what)


def _prompt_shown(driver) -> str:
    return driver.find_element("id", "prompt").text


def _loaded_images(driver) -> list:
    """[src, complete, naturalWidth, alt] of the page's images, once each has loaded or failed."""
    return driver.execute_script(
        "return Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)))"
        ".then(() => Array.from(document.images).map("
        "img => [img.getAttribute('src'), img.complete, img.naturalWidth, img.alt]));")


def test_label_a_round_in_headless_chromium(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    images = np.broadcast_to(np.array(COLOURS, np.uint8)[:, None, None, :], (9, 64, 64, 3)).copy()
    folder = write_round(tmp_path / "round", 1, PROMPTS, images)
    with running(folder) as server:
        driver = browser.launch()
        try:
            driver.get(server.url)
            _wait(driver, lambda: _prompt_shown(driver) == PROMPTS[0], "the first prompt shown")
            assert driver.find_element("id", "progress").text == "0 / 3 labelled"
            loaded = _loaded_images(driver)
            assert [src for src, *_ in loaded] == [f"images/p0000-i{i}.png" for i in range(3)]
            assert all(complete and width == 64 and alt.startswith(f"Image {i + 1} of 3 for the prompt: {PROMPTS[0]}")
                       for i, (_, complete, width, alt) in enumerate(loaded)), loaded
            shot = Path(os.environ.get("DIFFALIGN_ARTIFACTS") or REPO_ROOT / ".artifacts") / "label-screenshot.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(shot))

            driver.find_elements("css selector", "#images button.choice")[1].click()  # image 2 of prompt 0
            _wait(driver, lambda: _prompt_shown(driver) == PROMPTS[1], "the second prompt after the click")
            assert _pairs(folder) == [("p0000-i1.png", "p0000-i0.png"), ("p0000-i1.png", "p0000-i2.png")]
            assert driver.find_element("id", "progress").text == "1 / 3 labelled"

            ActionChains(driver).send_keys("3").perform()  # image 3 of prompt 1
            _wait(driver, lambda: _prompt_shown(driver) == PROMPTS[2], "the third prompt after key 3")
            assert _pairs(folder)[2:] == [("p0001-i2.png", "p0001-i0.png"), ("p0001-i2.png", "p0001-i1.png")]

            ActionChains(driver).send_keys("u").perform()
            _wait(driver, lambda: _prompt_shown(driver) == PROMPTS[1], "prompt 2 open again after undo")
            assert len(_pairs(folder)) == 2 and driver.find_element("id", "progress").text == "1 / 3 labelled"

            driver.refresh()  # resumes at the first undecided prompt
            _wait(driver, lambda: _prompt_shown(driver) == PROMPTS[1], "the reloaded page at prompt 2")
            assert "Resumed" in driver.find_element("id", "status").text
            ActionChains(driver).send_keys("t").perform()
            _wait(driver, lambda: _prompt_shown(driver) == PROMPTS[2], "the third prompt after the tie")
            ActionChains(driver).send_keys("s").perform()
            _wait(driver, lambda: driver.find_element("id", "done").is_displayed(), "the done message")
            assert "3 / 3 prompts labelled: 2 preference pair(s)" in driver.find_element("id", "done").text
            assert len(_pairs(folder)) == 2
            driver.save_screenshot(str(shot.with_name("label-done-screenshot.png")))
            errors = [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert not errors, errors
        finally:
            driver.quit()
