"""The web page at `/` in headless Chromium (selenium): a chat reply streams in; a text gets label bars.

Skipped when Debian's `chromium` and `chromium-driver` are missing (`.ci/run` installs them as root).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpt_finetune.serving.conversation import render_messages
from gpt_finetune.serving.loading import UsableModel, load_model
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

Serve = Callable[..., Any]  # the `serve` fixture
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_BROWSER = (
    "a headless browser test: needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason=NO_BROWSER,
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,800",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
        )
        try:
            yield driver
        finally:
            driver.quit()


def type_and_send(browser: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def test_the_chat_page_streams_a_reply(
    serve: Serve, random_model: UsableModel, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompt = "What is the capital of France?"
    tokenizer = gpt2_tokenizer()
    rendered = render_messages([{"role": "user", "content": prompt}], random_model.prompt_style)
    tokens = random_model.gpt.generate([tokenizer.encode(rendered)], max_new_tokens=16)[0]
    expected = tokenizer.decode([t for t in tokens if t != END_OF_TEXT])
    with serve(random_model, max_new_tokens=16) as (url, _):
        browser.get(url + "/")
        assert "tiny-random" in browser.find_element(By.ID, "model").text
        type_and_send(browser, prompt)
        WebDriverWait(browser, 120).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".assistant[data-state=done]")
        )
        browser.save_screenshot(str(tmp_path / "chat.png"))
        user = browser.find_element(By.CSS_SELECTOR, ".user").get_attribute("textContent")
        reply = browser.find_element(By.CSS_SELECTOR, ".assistant").get_attribute("textContent")
    assert user == prompt
    assert reply == expected and expected.strip()
    assert (tmp_path / "chat.png").stat().st_size > 0


def test_the_classify_page_shows_label_bars(
    serve: Serve, classify_run: Path, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = load_model(str(classify_run), device="cpu")
    assert model.classifier is not None
    text = "URGENT! You have won a free holiday, call now"
    probs = model.classifier.predict_proba([text])[0].tolist()
    with serve(model) as (url, _):
        browser.get(url + "/")
        type_and_send(browser, text)
        WebDriverWait(browser, 120).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".result .bar"))
        browser.save_screenshot(str(tmp_path / "classify.png"))
        bars = browser.find_elements(By.CSS_SELECTOR, ".result .bar")
        shown = {
            bar.find_element(By.CSS_SELECTOR, ".label").text: bar.find_element(By.CSS_SELECTOR, ".p").text
            for bar in bars
        }
        best = browser.find_element(By.CSS_SELECTOR, ".result .bar.best .label").text
    assert shown == {label: f"{100 * p:.1f}%" for label, p in zip(model.labels, probs, strict=True)}
    assert best == model.labels[max(range(len(probs)), key=probs.__getitem__)]


def replies(browser: Any, state: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, f".assistant[data-state={state}]")


def test_the_chat_page_forgets_its_oldest_turns_past_the_context(
    serve: Serve, random_model: UsableModel, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    long = " ".join(["word"] * 100)  # 100+ tokens: two do not fit a 256-token context with room to answer
    first, second = f"{long} A", f"{long} B"
    tokenizer = gpt2_tokenizer()
    alone = render_messages([{"role": "user", "content": second}], random_model.prompt_style)
    tokens = random_model.gpt.generate([tokenizer.encode(alone)], max_new_tokens=16)[0]
    expected = tokenizer.decode([t for t in tokens if t != END_OF_TEXT])
    with serve(random_model, max_new_tokens=16) as (url, _):
        browser.get(url + "/")
        type_and_send(browser, first)
        WebDriverWait(browser, 120).until(lambda b: len(replies(b, "done")) == 1)
        type_and_send(browser, second)
        WebDriverWait(browser, 120).until(lambda b: len(replies(b, "done")) == 2)
        notes = [n.text for n in browser.find_elements(By.CSS_SELECTOR, ".note")]
        errors = browser.find_elements(By.CSS_SELECTOR, ".error")
        history = browser.execute_script("return history")
        reply = replies(browser, "done")[1].get_attribute("textContent")
    assert not errors and notes == ["(forgot the oldest 1 exchange(s): the conversation outgrew the context)"]
    assert [m["content"] for m in history] == [second, expected]
    assert reply == expected


def test_a_failed_answer_does_not_stay_in_the_conversation(
    serve: Serve, random_model: UsableModel, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from gpt_finetune.serving.rows import Row

    accept = Row.accept

    def third_token_fails(row: Row, token: int, logprob: Any) -> None:
        if len(row.tokens) == 2 and "fail" in gpt2_tokenizer().decode(row.prompt):
            raise RuntimeError("injected")
        accept(row, token, logprob)

    monkeypatch.setattr(Row, "accept", third_token_fails)
    with serve(random_model, max_new_tokens=16) as (url, _):
        browser.get(url + "/")
        type_and_send(browser, "please fail")
        WebDriverWait(browser, 120).until(lambda b: replies(b, "failed"))
        error = browser.find_element(By.CSS_SELECTOR, ".error").text
        assert browser.execute_script("return history") == []
        type_and_send(browser, "Hello")
        WebDriverWait(browser, 120).until(lambda b: replies(b, "done"))
        history = browser.execute_script("return history")
    assert "injected" in error
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "Hello"
