"""A real browser opens a built chapter and the plotly figures render (headless Chromium)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import pytest

pytestmark = pytest.mark.book

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("headless Chromium not installed (Debian packages chromium and "
                    "chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path),
                              options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served_book(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    handler.log_message = lambda *args, **kwargs: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("chapter", ["chapters/data", "chapters/scaling"])
def test_plotly_figures_render_in_a_browser(browser, served_book, chapter, tmp_path_factory):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{served_book}/{chapter}.html")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
    n_divs = len(browser.find_elements(By.CSS_SELECTOR, ".plotly-graph-div"))
    n_svg = len(browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
    assert n_divs >= 1 and n_svg >= n_divs, f"{n_svg} rendered SVGs for {n_divs} figures"
    assert browser.execute_script("return typeof Plotly") == "object"
    # Not ours: the theme logs a console error when no light/dark preference is stored yet,
    # and jupyter-book 1.x emits sphinx-thebe's inline config twice (the second `const
    # THEBE_JS_URL` is a SyntaxError that only disables thebe, which the book does not use).
    benign = ("favicon", "invalid theme mode", "THEBE_JS_URL")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and not any(text in entry["message"] for text in benign)]
    assert not errors, errors
    shot = tmp_path_factory.mktemp("screens") / f"{chapter.replace('/', '_')}.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
