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
from tests.test_project import CLASSES, make_images

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    make_images(tmp_path / "pool", 40)
    make_images(tmp_path / "test", 9, seed=1, folders=True)
    project = tmp_path / "project"
    settings = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}
    workflow.init(project, tmp_path / "pool", CLASSES, test=tmp_path / "test", settings=settings)
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


def test_label_by_keyboard_undo_reload_and_train(server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    project, url = server
    browser.get(url)
    wait_for(browser, lambda d: "This batch: 0 of 12 labeled" in progress(d))
    keys = ActionChains(browser)
    for number in range(10):
        keys.send_keys(str(1 + number % 3)).perform()
        wait_for(browser, lambda d, n=number: f"This batch: {n + 1} of 12 labeled" in progress(d))
    keys.send_keys("u").perform()
    wait_for(browser, lambda d: "This batch: 9 of 12 labeled" in progress(d))

    browser.refresh()  # nothing lost: every answer is in the database already
    wait_for(browser, lambda d: "This batch: 9 of 12 labeled" in progress(d))
    conn = db.connect(project)
    assert conn.execute("SELECT COUNT(*) FROM labels WHERE source = 'web'").fetchone()[0] == 9
    conn.close()
    screenshots = Path(os.environ.get("LPLGRAD_SCREENSHOTS", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)

    browser.find_element("id", "train").click()
    # the 6 new images after the 3 left unlabeled from round 1
    wait_for(browser, lambda d: "This batch: 0 of 9 labeled" in progress(d), timeout=120)
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#accuracy circle")) == 1)
    assert "round 2 ready" in browser.find_element("id", "training").text
    browser.save_screenshot(str(screenshots / "label-1280x800.png"))
    browser.set_window_size(390, 844)
    browser.save_screenshot(str(screenshots / "label-390x844.png"))
