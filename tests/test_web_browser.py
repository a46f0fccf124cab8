"""The labeling page in a real headless Chromium (Debian's chromium and chromium-driver, via Selenium).

.ci/run installs the browser when it is missing; elsewhere the test is skipped without it.
Screenshots at 1280x800 and 390x844 go to the test's temporary folder (LPLGRAD_SCREENSHOTS=DIR
keeps them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lplgrad.project import db, workflow
from lplgrad.project.query import query
from tests.helpers import CLASSES, make_images

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Class-coloured noise all looks alike to an ImageNet backbone: near duplicates are off here (exact
# copies only), so each batch keeps its size (tests/test_review.py tests them on distinct pictures).
HEAD = {
    "model.backbone": "efficientnet-lite0",
    "train.finetune": "head",
    "train.min_steps": 20,
    "device": "cpu",
    "active.duplicate_threshold": 1.0,
}


@pytest.fixture(params=["scratch"])
def server(tmp_path: Path, request):  # type: ignore[no-untyped-def]
    make_images(tmp_path / "pool", 40)
    make_images(tmp_path / "test", 9, seed=1, folders=True)
    project = tmp_path / "project"
    settings = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}
    workflow.init(
        project,
        tmp_path / "pool",
        CLASSES,
        test=tmp_path / "test",
        settings=HEAD if request.param == "head" else settings,
    )
    query(project, "random", k=12)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lplgrad",
        "label",
        str(project),
        "--port",
        str(port),
        "--k",
        "6",
        "--strategy",
        "entropy",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    try:
        yield project, url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read by the test
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER or "/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def progress(driver) -> str:  # type: ignore[no-untyped-def]
    return driver.find_element("id", "progress").text


def current_image(driver) -> str:  # type: ignore[no-untyped-def]
    return driver.find_element("id", "current-image").get_attribute("src")


def test_label_by_keyboard_undo_reload_and_train(server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    project, url = server
    browser.get(url)
    wait_for(browser, lambda d: "Round 1: 0 of 12 new images labeled" in progress(d))
    keys = ActionChains(browser)
    for number in range(10):
        keys.send_keys(str(1 + number % 3)).perform()
        wait_for(browser, lambda d, n=number: f"Round 1: {n + 1} of 12 new images labeled" in progress(d))
    keys.send_keys("u").perform()
    wait_for(browser, lambda d: "Round 1: 9 of 12 new images labeled" in progress(d))
    shown = current_image(browser)
    keys.send_keys("s").perform()  # skipped: it goes last, and stays last after a reload
    wait_for(browser, lambda d: current_image(d) != shown)
    after_skip = current_image(browser)

    browser.refresh()  # nothing lost: every answer and the skip are in the database already
    wait_for(browser, lambda d: "Round 1: 9 of 12 new images labeled" in progress(d))
    assert current_image(browser) == after_skip
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # no 404, no script error
    conn = db.connect(project)
    assert conn.execute("SELECT COUNT(*) FROM labels WHERE source = 'web'").fetchone()[0] == 9
    conn.close()
    screenshots = Path(os.environ.get("LPLGRAD_SCREENSHOTS", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)

    browser.find_element("id", "train").click()
    # the 6 new images, then the 3 left unlabeled from round 1
    wait_for(
        browser, lambda d: "Round 2: 0 of 6 new images labeled · then 3 left from earlier rounds" in progress(d), 120
    )
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#accuracy circle")) == 1)
    assert "round 2 ready" in browser.find_element("id", "training").text
    accuracy_cells = [
        row.find_elements("tag name", "td")[-1].text
        for row in browser.find_elements("css selector", "#per-class tr")[1:]
    ]
    assert len(accuracy_cells) == 3 and all(cell.endswith("%") for cell in accuracy_cells)
    browser.save_screenshot(str(screenshots / "label-1280x800.png"))
    browser.set_window_size(390, 844)
    browser.save_screenshot(str(screenshots / "label-390x844.png"))


@pytest.mark.parametrize("server", ["head"], indirect=True)
def test_in_head_mode_the_page_learns_while_a_person_labels(server, browser) -> None:
    """Continuous learning: five answers by keyboard start a round in the background (seconds with a
    head on cached features); the page shows its batch first, and labeling never waited for it."""
    from selenium.webdriver.common.action_chains import ActionChains

    _, url = server
    browser.get(url)
    wait_for(browser, lambda d: "Round 1: 0 of 12 new images labeled" in progress(d))
    keys = ActionChains(browser)
    for number in range(5):
        keys.send_keys(str(1 + number % 3)).perform()
        wait_for(browser, lambda d, n=number: "Round 2" in progress(d) or f"Round 1: {n + 1} of 12" in progress(d))
    wait_for(browser, lambda d: "Round 2: 0 of 6 new images labeled" in progress(d), timeout=120)
    assert "round 2 ready" in browser.find_element("id", "training").text


@pytest.mark.parametrize("server", ["head"], indirect=True)
def test_review_mode_changes_only_a_doubtful_answer_and_shows_when_to_stop(server, browser, tmp_path: Path) -> None:
    """``lplgrad review`` flags the flipped answers; the page's review mode shows them with the
    model's suggestion, a click on the suggestion relabels (the old label kept), and the dashboard
    says which stopping criteria are met."""
    from lplgrad.project.review import review

    project, url = server
    truth = dict(sorted(make_images(tmp_path / "unused", 40).items()))  # the pool's true classes, by path
    flipped = {path for path in list(truth)[:30:10]}
    lines = [f"{p},{CLASSES[(CLASSES.index(c) + 1) % 3] if p in flipped else c}\n" for p, c in list(truth.items())[:30]]
    (tmp_path / "answers.csv").write_text("path,label\n" + "".join(lines))
    workflow.import_labels(project, [tmp_path / "answers.csv"])
    query(project, "margin", k=3)  # a trained round: the dashboard's stopping criteria
    assert review(project, k=5, folds=3).listed >= len(flipped)
    browser.get(url)
    wait_for(browser, lambda d: "doubtful labels" in d.find_element("id", "review-toggle").text)
    assert browser.find_element("id", "stop-summary").text.endswith(("keep labeling", "you may stop"))
    assert "stable predictions" in browser.find_element("id", "criteria").text
    browser.find_element("id", "review-toggle").click()
    wait_for(browser, lambda d: d.find_element("id", "suggestion").text.startswith("labeled "))
    caption = browser.find_element("id", "suggestion").text
    left = int(caption.rsplit(", ", 1)[1].split()[0])
    screenshots = Path(os.environ.get("LPLGRAD_SCREENSHOTS", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshots / "review-1280x800.png"))
    browser.find_element("css selector", "button.class.suggested").click()
    wait_for(browser, lambda d: f", {left - 1} left" in d.find_element("id", "suggestion").text or left == 1)
    browser.set_window_size(390, 844)
    browser.save_screenshot(str(screenshots / "review-390x844.png"))
    conn = db.connect(project)
    assert conn.execute("SELECT COUNT(*) FROM review WHERE decision = 'relabeled'").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM relabeled").fetchone()[0] == 1
    conn.close()
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
