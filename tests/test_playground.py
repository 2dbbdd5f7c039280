"""The playground page, driven in a real headless Chromium against the real app: submit a
prompt, watch progress reach 100 %, play the video, see the score; a bad size shows the
field's error; a job is cancelled. Screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # Headless as root on a closed network: no sandbox, no background connections.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 180):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders its lists as jobs move: an element read mid-render is read again next poll
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=ignored).until(condition)


def field(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text


def test_prompt_to_playing_video_with_its_score(serve_app, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{serve_app.url}/")
    field(browser, "api-key", serve_app.api_key)  # entered once, kept in the browser
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#template option")) > 1)  # templates loaded

    field(browser, "prompt", "一只橘猫在草地上奔跑")
    field(browser, "seed", "21")
    field(browser, "steps", "6")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda d: d.find_element(By.ID, "job-progress").get_attribute("value") == "100")
    wait(browser, lambda d: d.execute_script("return document.getElementById('job-video').readyState") >= 2)
    playing = browser.execute_async_script(
        "const done = arguments[0], v = document.getElementById('job-video');"
        "v.play().then(() => setTimeout(() => done(!v.paused && v.currentTime > 0), 300), e => done(String(e)));"
    )
    assert playing is True
    assert text(browser, "#job-status") == "completed"
    assert 0 <= float(text(browser, "#job-score")) <= 1
    assert text(browser, "#job-dynamics").startswith("(motion ")  # how much the video moves, next to its score
    job = httpx.get(f"{serve_app.url}/v1/videos/{text(browser, '#job-id')}", headers=serve_app.headers).json()
    shown = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#job-violations li")]
    assert len(shown) == len(job["physics"]["violations"])  # each violation, with its frames
    assert all(
        s.split(":")[0].replace(" ", "_") == v["kind"] for s, v in zip(shown, job["physics"]["violations"], strict=True)
    )
    assert "high_noise" in text(browser, "#job-timings") and "miss" in text(browser, "#job-cache")
    assert browser.find_element(By.ID, "job-download").get_attribute("href").startswith("blob:")
    job_id = text(browser, "#job-id")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#gallery li[data-id="{job_id}"] video'))
    assert "physics" in text(browser, f'#gallery li[data-id="{job_id}"]')
    browser.save_screenshot(str(ARTIFACTS / "playground-completed.png"))

    # "Make final": the final of this preview's shot, shown as the job it starts
    browser.find_element(By.ID, "job-finalize").click()
    wait(browser, lambda d: text(d, "#job-id") != job_id)
    wait(browser, lambda d: text(d, "#job-status") == "completed")
    final = httpx.get(f"{serve_app.url}/v1/videos/{text(browser, '#job-id')}", headers=serve_app.headers).json()
    assert final["request"]["from_video"] == job_id and final["size"] == "128x128"
    assert not browser.find_element(By.ID, "job-finalize").is_displayed()  # a final is not made final again
    browser.save_screenshot(str(ARTIFACTS / "playground-final.png"))


def test_a_bad_size_shows_the_fields_error(serve_app, browser):
    from selenium.webdriver.common.by import By

    field(browser, "prompt", "a dog on a beach")
    field(browser, "size", "100x64")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda d: "multiple of 16" in d.find_element(By.CSS_SELECTOR, '[data-error-for="size"]').text, 30)
    browser.save_screenshot(str(ARTIFACTS / "playground-field-error.png"))
    field(browser, "size", "")


def test_a_job_is_cancelled_from_the_page(serve_app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    field(browser, "prompt", "a long flight over the mountains")
    field(browser, "steps", "40")
    Select(browser.find_element(By.ID, "preset")).select_by_visible_text("final")
    browser.find_element(By.ID, "submit").click()
    wait(
        browser,
        lambda d: (
            text(d, "#job-status") == "in_progress"
            and int(d.find_element(By.ID, "job-progress").get_attribute("value")) > 0
        ),
    )
    browser.find_element(By.ID, "job-cancel").click()
    wait(browser, lambda d: text(d, "#job-status") == "cancelled", 60)
    job_id = text(browser, "#job-id")
    wait(browser, lambda d: "cancelled" in d.find_element(By.CSS_SELECTOR, f'#gallery li[data-id="{job_id}"]').text, 30)
    browser.save_screenshot(str(ARTIFACTS / "playground-cancelled.png"))


def test_an_adapter_is_chosen_from_the_served_ones(serve_app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#adapter option")) > 1, 30)  # GET /v1/adapters
    Select(browser.find_element(By.ID, "preset")).select_by_visible_text("preview")
    field(browser, "prompt", "a red ball rolls to the right on the grass")
    field(browser, "steps", "4")
    Select(browser.find_element(By.ID, "adapter")).select_by_value("studio")
    field(browser, "adapter-scale", "0.5")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda d: text(d, "#job-status") == "completed")
    job = httpx.get(f"{serve_app.url}/v1/videos/{text(browser, '#job-id')}", headers=serve_app.headers).json()
    assert [(a["name"], a["scale"]) for a in job["request"]["lora"]] == [("studio", 0.5)]
    Select(browser.find_element(By.ID, "adapter")).select_by_value("")


def test_a_few_step_adapter_shows_how_it_samples_and_the_job_what_ran(serve_app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#adapter option")) > 2, 30)
    steps = browser.find_element(By.ID, "steps")
    field(browser, "steps", "")
    field(browser, "guidance", "")
    field(browser, "prompt", "a blue box slides to the left")
    Select(browser.find_element(By.ID, "adapter")).select_by_value("few-step")
    assert steps.get_attribute("placeholder") == "4 (few-step)"
    assert browser.find_element(By.ID, "guidance").get_attribute("placeholder") == "1 (few-step)"
    note = text(browser, "#adapter-sampling")
    assert "4 steps" in note and "one forward a step" in note and "flow shift 5" in note
    before = text(browser, "#job-id")  # the last test's job, until this one is shown
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda d: text(d, "#job-id") != before and text(d, "#job-status") == "completed")
    assert text(browser, "#job-sampling") == "4 steps, guidance 1, 1 forward a step (set by few-step)"
    Select(browser.find_element(By.ID, "adapter")).select_by_value("")
    assert steps.get_attribute("placeholder") == "preset" and text(browser, "#adapter-sampling") == ""
