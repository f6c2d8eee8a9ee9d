"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium): every page renders with non-empty charts, a filter narrows the ARC list, a click on a
segment opens its ARCs, and the browser's console has no error. The screenshots of docs/images/ are
made here: ``MONA_DASHBOARD_SCREENSHOTS=docs/images python3 -m pytest tests/collector/web/test_browser.py``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, List

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from mona_collector.web.server import DashboardServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None, reason="needs Chromium and its driver: apt-get install chromium chromium-driver"
)
#: Where the screenshots go: a temporary folder, or (to refresh the documentation's) the folder named
#: by $MONA_DASHBOARD_SCREENSHOTS, e.g. docs/images.
SCREENSHOTS = os.environ.get("MONA_DASHBOARD_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def wait_for(driver: WebDriver, selector: str) -> List[WebElement]:
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))
    return driver.find_elements(By.CSS_SELECTOR, selector)


def console_errors(driver: WebDriver) -> List[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def assert_charts_drawn(elements: List[WebElement]) -> None:
    """Each chart is a uPlot canvas of some size that has painted pixels (not a blank canvas)."""
    assert elements
    for canvas in elements:
        assert canvas.size["width"] > 50 and canvas.size["height"] > 10
        painted = canvas.parent.execute_script(
            "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
            canvas,
        )
        assert painted > 50


def test_every_page_renders_with_charts_and_no_console_error(
    browser: WebDriver, dashboard: DashboardServer, tmp_path: Path
) -> None:
    images = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    browser.get(dashboard.url)
    assert_charts_drawn(wait_for(browser, "table.overview canvas"))
    assert {row.get_attribute("data-class") for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-class]")} == {
        "FRAUD_SCORER",
        "CHECKOUT",
    }
    images.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(images / "dashboard-overview.png"))

    browser.find_element(By.LINK_TEXT, "FRAUD_SCORER").click()
    assert_charts_drawn(wait_for(browser, ".series-chart canvas"))
    assert_charts_drawn(wait_for(browser, ".histogram-chart canvas"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "section.kapi")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, "table.drift .status-alert")
    assert "/class/FRAUD_SCORER" in browser.current_url
    assert browser.save_screenshot(str(images / "dashboard-class.png"))

    browser.get(dashboard.url + "arc/demo-1")
    tree = wait_for(browser, ".tree li")
    assert any("CALIBRATION" in item.text for item in tree)
    browser.get(dashboard.url + "alerts?state=all")
    assert wait_for(browser, "main h1")[0].text == "Alerts"
    assert console_errors(browser) == []


def test_a_filter_narrows_the_arc_list(browser: WebDriver, dashboard: DashboardServer) -> None:
    browser.get(dashboard.url + "arcs?arc_class=FRAUD_SCORER&since=30d&limit=500")
    everything = len(wait_for(browser, "tr.arc-row"))
    field = browser.find_element(By.CSS_SELECTOR, "input[name=filters]")
    field.send_keys("country = BR; MODEL.fraud_score < 0.3")
    browser.find_element(By.CSS_SELECTOR, "#arc-search button").click()
    WebDriverWait(browser, 30).until(lambda d: "filter=" in d.current_url)
    WebDriverWait(browser, 30).until(lambda d: 0 < len(d.find_elements(By.CSS_SELECTOR, "tr.arc-row")) < everything)
    assert console_errors(browser) == []


def test_a_click_on_a_segment_opens_its_arcs(browser: WebDriver, dashboard: DashboardServer) -> None:
    browser.get(dashboard.url + "class/FRAUD_SCORER?since=24h&baseline=7d")
    rows = wait_for(browser, "table.segments tr.segment")
    brazil = next(row for row in rows if "country = BR" in row.text)
    brazil.find_elements(By.TAG_NAME, "td")[1].click()  # the row, not its link
    arcs = wait_for(browser, "tr.arc-row")
    assert "/arcs?" in browser.current_url and "filter=country+%3D+BR" in browser.current_url
    assert all("BR" in row.text for row in arcs)
    assert console_errors(browser) == []


def test_the_period_picker_keeps_its_state_in_the_url(browser: WebDriver, dashboard: DashboardServer) -> None:
    browser.get(dashboard.url)
    wait_for(browser, "table.overview canvas")
    browser.find_element(By.CSS_SELECTOR, "select[name=range] option[value='7d']").click()
    WebDriverWait(browser, 30).until(lambda d: "since=7d" in d.current_url)
    browser.refresh()
    wait_for(browser, "table.overview canvas")
    assert browser.find_element(By.CSS_SELECTOR, "select[name=range]").get_attribute("value") == "7d"
    assert console_errors(browser) == []
