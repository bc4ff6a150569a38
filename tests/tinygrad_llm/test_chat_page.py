"""The chat page in a real headless browser: Debian's Chromium, driven by Selenium through Debian's chromedriver.

Skipped, with the reason, where Chromium or its driver is not installed (`.ci/run` installs both from Debian's
packages; nothing is ever downloaded by the test).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from serve_helpers import NAME, start

from tinygrad_llm.serve.app import create_app

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def turns(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#log .turn")


def replied(driver) -> bool:
    """Two turns on the page, and the Send button enabled again: the streamed reply is complete."""
    from selenium.webdriver.common.by import By

    return len(turns(driver)) == 2 and not driver.find_element(By.ID, "send").get_attribute("disabled")


def test_type_a_message_and_see_the_streamed_reply(browser, chat_model, tmp_path):
    import openai
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    for port in start(create_app(*chat_model, NAME)):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        # The first seed whose sampled reply is not empty, so that the test can tell a reply from none.
        seed, expected = next((seed, text) for seed in range(100) if (text := client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "the quick brown fox"}], temperature=1.0,
            seed=seed).choices[0].message.content).strip())

        browser.get(f"http://127.0.0.1:{port}/")
        assert NAME in browser.find_element(By.ID, "model").text
        browser.find_element(By.TAG_NAME, "summary").click()  # open the settings
        for field, value in (("temperature", "1"), ("seed", str(seed))):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        box = browser.find_element(By.ID, "message")
        box.send_keys("the quick brown fox", Keys.ENTER)
        WebDriverWait(browser, 60).until(replied)
        user, assistant = turns(browser)
        assert user.text == "user: the quick brown fox"
        assert assistant.find_element(By.TAG_NAME, "span").get_attribute("textContent") == expected
        shot = tmp_path / "chat.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
