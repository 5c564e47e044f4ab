"""The MLflow UI for real: a small search (`python tune/search.py`, real SQLite store), a real
`mlflow server` on loopback, and headless Chromium driven by Selenium finding the study's trial
runs and their learned-window artifacts on the pages a user would open.

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver)
and `selenium` from PyPI; without them the test skips, saying what to install (under CI=true it fails:
`.ci/run` installs them).
`ADASTFT_UPDATE_DOCS=1` also copies the comparison screenshot to docs/mlflow-runs.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import MlflowServer
from system_programs import require
from test_search import ROOT, run_search, space_file, tiny

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = (
    "apt-get install -y chromium chromium-driver (Debian packages: /usr/bin/chromium, /usr/bin/chromedriver) "
    "and pip install selenium"
)
WAIT = 90  # seconds for any one thing to appear in the page: the machine may have 2 slow cores


def _browser_prerequisites():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    require(missing, INSTALL, "MLflow UI test")


def _chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    # an explicit driver: Selenium Manager must not try to download one
    return webdriver.Chrome(
        service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")), options=options
    )


def _wait(driver, timeout: float = WAIT):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the React app re-renders as data arrives: an element found a moment ago may be gone
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.25,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def _text_visible(driver, text: str, timeout: float = WAIT):
    """Wait for an element whose own text is exactly `text` (or, for file names, starts with it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    xpath = f"//*[normalize-space(text())={json.dumps(text)}]"
    try:
        return _wait(driver, timeout).until(EC.visibility_of_element_located((By.XPATH, xpath)))
    except Exception as e:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(
            f"{text!r} not shown at {driver.current_url} after {timeout} s; page text:\n{body[:3000]}"
        ) from e


def _click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    driver.execute_script("arguments[0].click();", element)


def _close_assistant(driver) -> None:
    """The MLflow Assistant side panel takes a third of the window; close it when it is there."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            _click(driver, button)


def test_mlflow_ui_shows_the_study_trials_and_their_window_artifacts(tmp_path):
    _browser_prerequisites()
    from selenium.webdriver.common.by import By

    # 1. a small real study: 2 trials of 1 epoch, no early stopping
    proc = run_search(
        tmp_path,
        "--trials",
        "2",
        "--scheduler",
        "none",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        "ui",
        *tiny(tmp_path, epochs=1),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("search-test")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "ui" and "mlflow.parentRunId" not in r.data.tags]
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id), key=lambda r: r.info.run_name
    )
    assert len(children) == 2 and all(r.info.run_name.startswith("ui-") for r in children), [
        r.info.run_name for r in runs
    ]
    names = [r.info.run_name for r in children]
    child = children[0]
    # the link the search prints to the study's runs, for `mlflow ui` on its default address
    printed = re.search(
        r"MLflow UI: mlflow ui --backend-store-uri (\S+), then open http://127\.0\.0\.1:5000/(\S+)", proc.stdout
    )
    assert printed and printed[1] == f"sqlite:///{tmp_path}/mlflow.db", proc.stdout[-2000:]
    assert printed[2] == f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"

    # 2. a real MLflow server on loopback, and 3. headless Chromium
    server = MlflowServer(tmp_path, store=f"sqlite:///{tmp_path}/mlflow.db")
    url = server.uri
    driver = None
    try:
        server.start(wait=180)
        # the server serves the runs' artifacts (their URIs are file:// paths under tmp_path/mlartifacts)
        with urllib.request.urlopen(
            f"{url}/ajax-api/2.0/mlflow/artifacts/list?run_id={child.info.run_id}&path=tensors", timeout=30
        ) as response:
            listed = {f["path"] for f in json.load(response).get("files", [])}
        assert "tensors/window_last.npy" in listed, listed

        driver = _chromium(tmp_path)
        driver.set_page_load_timeout(WAIT)

        # 4a. the printed link, on this server: the study's parent run, expanded, shows its two trial runs
        driver.get(f"{url}/{printed[2]}")
        _text_visible(driver, "ui")
        _close_assistant(driver)
        expander = _wait(driver).until(
            lambda d: d.find_element(
                By.CSS_SELECTOR, f"[row-id='{parent.info.run_id}'] button[data-component-id*='runnamecellrenderer']"
            )
        )
        _click(driver, expander)
        for name in names:
            _text_visible(driver, name)
        driver.save_screenshot(str(tmp_path / "mlflow-experiment.png"))

        # 4b. one trial's artifacts: the learned window, as a tensor and as a plot
        driver.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/artifacts")
        _text_visible(driver, child.info.run_name)
        _click(driver, _text_visible(driver, "tensors"))
        _text_visible(driver, "window_last.npy")
        _click(driver, _text_visible(driver, "plots"))
        _click(driver, _text_visible(driver, "window.png"))
        _text_visible(driver, "plots/window.png")  # the preview's header
        _wait(driver).until(
            lambda d: any(  # the plot itself, fetched and decoded (a blob: URL)
                i.is_displayed()
                and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 100;", i)
                for i in d.find_elements(By.TAG_NAME, "img")
            )
        )
        driver.save_screenshot(str(tmp_path / "mlflow-window.png"))

        # 5. the trials compared side by side: the screenshot for the docs
        run_ids = json.dumps([r.info.run_id for r in children])
        driver.get(f"{url}/#/compare-runs?runs={run_ids}&experiments={json.dumps([experiment.experiment_id])}")
        _text_visible(driver, "Comparing 2 Runs from 1 Experiment")
        for name in names:
            _text_visible(driver, name)
        _close_assistant(driver)
        _wait(driver).until(  # the parallel coordinates plot is drawn
            lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .parcoords")
        )
        shot = tmp_path / "mlflow-runs.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        server.stop()

    if os.environ.get("ADASTFT_UPDATE_DOCS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "mlflow-runs.png")
