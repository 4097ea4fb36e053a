"""The web page in headless Chromium: upload an image, see its caption; ask a question, see the
answer. Skips, saying why, without Chromium + chromedriver + Selenium (`make test-browser`
installs them). `POLYMODAL_SCREENSHOT=docs/images/serve-page.png` keeps the page's picture."""
import os
import shutil

import numpy as np
import pytest

import polymodal
from polymodal.serve import ServeSettings

from _serving import Server
from _synthetic import image

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium / chromedriver installed: "
                                "`make test-browser` installs them (apt-get install chromium chromium-driver)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1100,640"]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed: "
                                    "pip install 'polymodal[browser]' (or `make test-browser`)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _upload_and_wait(driver, url, path, ready_id, timeout=30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    wait.until(lambda d: d.find_element(By.ID, "status").text == "ready")
    wait.until(ec.visibility_of_element_located((By.ID, ready_id)))
    driver.find_element(By.ID, "file").send_keys(str(path))
    return wait


def test_upload_an_image_and_see_its_caption(browser, trained, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    arr = image("green", np.random.default_rng(4), size=96)
    path = tmp_path / "green.png"
    Image.fromarray(arr).save(path)
    want = polymodal.load(trained["caption"]).caption([arr])[0]
    s = Server(ServeSettings(model=trained["caption"]))
    try:
        wait = _upload_and_wait(browser, s.url, path, "caption")
        wait.until(lambda d: d.find_element(By.ID, "caption").text not in ("—", "…", ""))
        assert browser.find_element(By.ID, "caption").text == want
        assert browser.find_element(By.ID, "preview").get_attribute("naturalWidth") == "96"
        assert not browser.find_element(By.ID, "error").is_displayed()
        assert not browser.find_element(By.CSS_SELECTOR, '[data-task="answer"]').is_displayed()  # a captioner only
        shot = os.environ.get("POLYMODAL_SCREENSHOT")
        browser.save_screenshot(shot or str(tmp_path / "page.png"))
    finally:
        s.stop()


def test_ask_a_question_on_the_page(browser, trained, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    arr = image("blue", np.random.default_rng(5), size=64)
    path = tmp_path / "blue.png"
    Image.fromarray(arr).save(path)
    want = polymodal.load(trained["vqa"]).answer([arr], ["what colour is it?"])[0]
    s = Server(ServeSettings(model=trained["vqa"]))
    try:
        wait = _upload_and_wait(browser, s.url, path, "question")
        browser.find_element(By.ID, "question").send_keys("what colour is it?")
        browser.find_element(By.CSS_SELECTOR, "#ask-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "answer").text not in ("—", ""))
        assert browser.find_element(By.ID, "answer").text == want
        # a bad request shows the server's message on the page
        browser.find_element(By.ID, "question").clear()
        browser.find_element(By.CSS_SELECTOR, "#ask-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "question is empty" in browser.find_element(By.ID, "error").text
    finally:
        s.stop()
