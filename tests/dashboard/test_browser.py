"""The dashboard in a real headless browser (Debian's chromium, through Selenium).

Loads the page against the emulators, sees the quality plot, clicks "Retrain
now", runs a launcher (with the control-plane tests' stand-in trainer) and
sees the new run appear on the page as succeeded.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.dashboard.conftest import fake_registry
from tests.trainer.control_helpers import TRAFFIC, run_until

pytestmark = [pytest.mark.emulators, pytest.mark.browser]


def _binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser():
    """A headless chromium driven by Selenium; skipped (failed in CI) when not installed."""
    chromium = _binary("chromium", "chromium-browser", "google-chrome")
    driver_path = _binary("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        chromium = None
        missing = f"selenium: {e}"
    else:
        missing = "chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if not chromium or not driver_path:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test needs {missing}", pytrace=False)
        pytest.skip(f"browser test needs {missing}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard_url(world, bigquery_client, gcp_project):
    """The dashboard app on a free localhost port, over the world's tables and registry."""
    import uvicorn

    from dashboard import data
    from dashboard.app import Dashboard, create_app

    registry, versions = fake_registry(Path(world.registry))
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    rows = [
        {
            "window_start": (t0 + dt.timedelta(minutes=i)).isoformat(),
            "window_end": (t0 + dt.timedelta(minutes=i + 1)).isoformat(),
            "model_version": versions[i % 2],
            "examples": 50,
            "accuracy": 0.8 + i / 100,
            "pane_index": 0,
            "computed_at": t0.isoformat(),
        }
        for i in range(6)
    ]
    table = f"{gcp_project}.{world.dataset}.{TRAFFIC.tables.prediction_quality}"
    assert bigquery_client.insert_rows_json(table, rows) == []
    source = data.Source(bigquery_client, gcp_project, world.dataset, TRAFFIC)
    dash = Dashboard(source, registry, world.topic, world.publisher, refresh_seconds=0)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(dash), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_page_shows_a_plot_and_retrain_now_starts_a_run(browser, dashboard_url, world):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(dashboard_url)
    lines = browser.find_elements(By.CSS_SELECTOR, "svg.plot polyline.series")
    assert len(lines) == 2  # one line per model version
    assert "no data yet" not in browser.find_element(By.CSS_SELECTOR, "svg.plot").text

    browser.find_element(By.ID, "retrain-button").click()
    message = WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.ID, "message") and d.find_element(By.ID, "message").text
    )
    assert "retrain requested" in message, message
    trigger_id = message.split("trigger ")[1].split()[0]
    triggers = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "code.trigger-id")]
    assert trigger_id in triggers

    # The launcher consumes the same topic the pipeline publishes to.
    launcher = world.make_launcher()
    run_until(launcher, lambda s: s["runs_succeeded"] == 1)
    launcher.shutdown()

    def run_row(driver):
        driver.refresh()
        for row in driver.find_elements(By.CSS_SELECTOR, "table.runs tr"):
            cells = row.find_elements(By.TAG_NAME, "td")
            if cells and cells[0].text == f"run-{trigger_id}":
                return [c.text for c in cells]
        return None

    cells = WebDriverWait(browser, 20, poll_frequency=0.5).until(run_row)
    assert cells[1] == "succeeded" and cells[2] == "manual"
