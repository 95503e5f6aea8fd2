"""The comparison page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromedriver``, driven
by Selenium) against a real server on loopback.

With the shipped checkpoints on CPU, the page's two rankings, item names, reasoning and pass replay must show
what the API answers for the same request. Against the tiny test models: invalid pasted JSON, a 429 on one
decoder, a 503, a server that went away, and item ids that look like HTML each show a readable message or
the literal text, never a blank panel and never markup.

``DGR2_PAGE_SCREENSHOT=docs/comparison-page.png`` also saves the page after the shipped comparison (a full-page
PNG, both replays stopped half-way), as in docs/api.md.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dgr2.service.settings import Settings

pytestmark = pytest.mark.timeout(300)
INSTALL = "bash scripts/install_chromium.sh (the Debian packages chromium and chromium-driver)"
DECODERS = ("ar", "diffusion")
RAW_TOKEN = re.compile(r"<(?:c\d+|h\d+|v\d|co\d|r:\w+)>")
SEEDED = {"seed": 2026, "history": 20}  # the request the shipped comparison (and the screenshot) ranks


@pytest.fixture(scope="module")
def browser(need) -> Iterator:
    need.module("selenium")
    chromium = need.binary("chromium", INSTALL)
    chromedriver = need.binary("chromedriver", INSTALL)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.TemporaryDirectory(prefix="dgr2-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--window-size=1600,1200", f"--user-data-dir={profile.name}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager (which would look for drivers online) is never run
    driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


@pytest.fixture(scope="module")
def shipped(h) -> Iterator:
    """The shipped checkpoints, as `make serve` runs them (admin token unset)."""
    with h.running(Settings(max_wait_ms=5), ready=False) as srv:
        srv.wait_ready(timeout=240)
        yield srv


@pytest.fixture(scope="module")
def tiny(shared_store, h) -> Iterator:
    with h.running(h.settings_for(shared_store, max_candidates=20)) as srv:
        yield srv


# ----------------------------------------------------------------------------- driving the page
def wait(driver, predicate, what: str, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d), f"waiting for {what}")


def by_css(driver, css: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def text(element) -> str:
    return element.get_property("textContent")


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait(driver, lambda d: text(by_css(d, "#status")[0]).startswith("Example:"), "the example request", 30)


def paste(driver, body: str) -> None:
    area = by_css(driver, "#request-json")[0]
    driver.execute_script("arguments[0].value = arguments[1];", area, body)


def compare(driver) -> dict[str, str]:
    """Click the one button and wait for both panels to settle; their states by decoder."""
    by_css(driver, "#compare")[0].click()
    states = lambda d: {x: by_css(d, f"#panel-{x}")[0].get_attribute("data-state") for x in DECODERS}  # noqa: E731
    wait(driver, lambda d: all(s in ("done", "error") for s in states(d).values()), "both panels", 180)
    return states(driver)


def panel_text(driver, decoder: str) -> str:
    return text(by_css(driver, f"#panel-{decoder}")[0])


def shown_rows(driver, decoder: str) -> list[dict]:
    rows = by_css(driver, f"#panel-{decoder} .ranking-table tbody tr")
    return [{"item_id": text(r.find_elements("css selector", "td.item-id")[0]),
             "cells": [text(td) for td in r.find_elements("css selector", "td")],
             "differs": "differs" in (r.get_attribute("class") or "").split()} for r in rows]


def move_slider(driver, decoder: str, to: int) -> None:
    slider = by_css(driver, f"#panel-{decoder} .replay-slider")[0]
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
                          slider, str(to))


def no_console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# ----------------------------------------------------------------------------- the shipped comparison
def test_the_page_shows_what_the_api_answers(shipped, browser):
    url = shipped.url
    open_page(browser, url)
    drawn = json.loads(by_css(browser, "#request-json")[0].get_property("value"))
    assert len(drawn["candidates"]) == 100 and len(drawn["history"]) == 20  # drawn from the shipped catalog
    by_css(browser, "#draw")[0].click()
    wait(browser, lambda d: json.loads(by_css(d, "#request-json")[0].get_property("value")) != drawn, "a new draw")

    request = httpx.get(f"{url}/v1/example-request", params=SEEDED, timeout=30).json()
    paste(browser, json.dumps(request))
    assert compare(browser) == {"ar": "done", "diffusion": "done"}

    api = {d: httpx.post(f"{url}/v1/rerank", json={**request, "decoder": d, "return_reasoning": True,
                                                   "return_passes": True}, timeout=120).json() for d in DECODERS}
    names = {i["id"]: i for i in httpx.post(f"{url}/v1/items", timeout=30, json={"ids": sorted(
        {r["item_id"] for d in DECODERS for r in api[d]["results"][:10]})}).json()["items"]}
    differ = [a["item_id"] != b["item_id"] for a, b in zip(api["ar"]["results"][:10], api["diffusion"]["results"][:10],
                                                           strict=True)]
    for d in DECODERS:
        got, want = shown_rows(browser, d), api[d]["results"][:10]
        assert [r["item_id"] for r in got] == [r["item_id"] for r in want], d
        assert [r["cells"][4] for r in got] == [f"{r['relevance_score']:.3f}" for r in want], d
        assert [r["cells"][2:4] for r in got] == [[names[r["item_id"]]["brand"] or "—",
                                                   names[r["item_id"]]["category"] or "—"] for r in want], d
        assert [r["differs"] for r in got] == differ, d  # highlighted exactly where the two disagree

        usage = api[d]["usage"]
        stat = {e.get_attribute("data-stat"): text(e) for e in by_css(browser, f"#panel-{d} td[data-stat]")}
        assert stat["forward-passes"] == str(usage["forward_passes"])
        assert stat["tokens"] == f"{usage['prompt_tokens']} prompt · {usage['generated_tokens']} generated"
        assert stat["tokens-per-forward"] == f"{usage['generated_tokens'] / usage['forward_passes']:.2f}"
        assert stat["validity"] == ("yes" if api[d]["validity"]["valid_as_decoded"] else "no")
        assert re.fullmatch(r"queue [\d.]+ ms · decode [\d.]+ ms · total [\d.]+ ms", stat["latency"])

        # the reasoning, for people: one line per top item, history items by id, no raw trace tokens
        lines = [text(li) for li in by_css(browser, f"#panel-{d} .reasoning-top li")]
        assert len(lines) == 10 and not any(RAW_TOKEN.search(t) for t in lines), lines
        steps = {}
        for s in api[d]["reasoning_steps"]:
            steps.setdefault(s["index"], s)
        for line, r in zip(lines, want, strict=True):
            step = steps.get(r["index"])
            assert line.startswith(r["item_id"])
            if step is None:
                assert "not assessed" in line
                continue
            assert f"strength {step['strength']} of 9" in line if step["strength"] is not None else True
            for ev in step["evidence"]:
                assert (ev["history_item_id"] or f"h{ev['history_recency']}") in line
                field = {"brand": "brand", "category": "category"}.get(ev["relation"])
                if field and names[r["item_id"]][field]:
                    assert f"same {field} ({names[r['item_id']][field]})" in line
        assert len(by_css(browser, f"#panel-{d} .reasoning-all li")) == len(api[d]["reasoning_steps"])

        # the replay: as many passes as the answer reports, and each pass shows what it decided
        passes = api[d]["passes"]["positions"]
        assert len(passes) == usage["forward_passes"]
        slider = by_css(browser, f"#panel-{d} .replay-slider")[0]
        assert int(slider.get_attribute("max")) + 1 == usage["forward_passes"]
        assert len(by_css(browser, f"#panel-{d} .cell")) == usage["generated_tokens"]
        for at in (0, usage["forward_passes"] // 3, usage["forward_passes"] - 1):
            move_slider(browser, d, at)
            assert len(by_css(browser, f"#panel-{d} .cell.decided")) == sum(len(p) for p in passes[: at + 1])
            assert len(by_css(browser, f"#panel-{d} .cell.current")) == len(passes[at])
            assert text(by_css(browser, f"#panel-{d} .replay-counter")[0]).startswith(
                f"pass {at + 1} of {usage['forward_passes']}")
    assert no_console_errors(browser) == []

    shot = os.environ.get("DGR2_PAGE_SCREENSHOT")
    if shot:  # both replays after the same number of passes: diffusion has decided far more positions
        for d in DECODERS:
            move_slider(browser, d, min(40, api[d]["usage"]["forward_passes"] - 1))
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1600, height + 140)  # the window's frame, beyond the page
        Path(shot).write_bytes(browser.get_screenshot_as_png())
        browser.set_window_size(1600, 1200)


# ----------------------------------------------------------------------------- errors and hostile strings
def test_invalid_json_is_a_message_and_nothing_is_sent(tiny, browser, h):
    open_page(browser, tiny.url)
    before = h.metric(tiny.metrics(), "dgr2_requests_total")
    paste(browser, '{"candidates": ["S0001", ')
    by_css(browser, "#compare")[0].click()
    error = by_css(browser, "#request-error")[0]
    wait(browser, lambda d: error.is_displayed(), "the error message", 10)
    assert text(error).startswith("The request is not valid JSON: ")
    for d in DECODERS:  # the panels keep what they showed: nothing was sent
        assert by_css(browser, f"#panel-{d}")[0].get_attribute("data-state") is None
        assert "No comparison yet." in panel_text(browser, d)
    paste(browser, '["S0001"]')
    by_css(browser, "#compare")[0].click()
    wait(browser, lambda d: "must be a JSON object" in text(error), "the shape message", 10)
    assert h.metric(tiny.metrics(), "dgr2_requests_total") == before


def test_html_looking_ids_are_shown_as_text(tiny, browser):
    hostile = ['<img src=x onerror="window.pwned=1">', '<script>window.pwned=2</script>', "S0002"]
    obj = {"id": hostile[1], "brand": "<b>bold</b>", "category": "<i onmouseover=\"window.pwned=3\">c</i>"}
    request = {"history": ["S0001", "<svg onload=window.pwned=4>"], "candidates": [hostile[0], obj, "S0002"]}
    open_page(browser, tiny.url)
    paste(browser, json.dumps(request))
    assert compare(browser) == {"ar": "done", "diffusion": "done"}
    for d in DECODERS:
        rows = shown_rows(browser, d)
        assert sorted(r["item_id"] for r in rows) == sorted(hostile)
        row = next(r for r in rows if r["item_id"] == hostile[1])
        assert row["cells"][2:4] == [obj["brand"], obj["category"]]  # the request's own names, verbatim
    assert browser.execute_script(
        "return document.querySelectorAll('#comparison img, #comparison script, #comparison svg, "
        "#comparison b, #comparison i').length") == 0
    assert browser.execute_script("return window.pwned === undefined")


def test_a_full_queue_fails_one_panel_with_a_message(tiny, browser, monkeypatch):
    open_page(browser, tiny.url)
    monkeypatch.setattr(tiny.rt.batchers["ar"], "queue_limit", 0)  # every AR request gets 429 queue_full
    assert compare(browser) == {"ar": "error", "diffusion": "done"}
    message = panel_text(browser, "ar")
    assert "HTTP 429" in message and "queue is full" in message and re.search(r"Retry after \d+ s", message)
    assert len(shown_rows(browser, "diffusion")) == 10  # the other decoder's answer is still shown
    assert "failed" in text(by_css(browser, "#status")[0])


def test_not_ready_is_a_message_in_both_panels(tiny, browser, monkeypatch):
    open_page(browser, tiny.url)
    monkeypatch.setattr(tiny.rt, "ready", False)  # as while the models warm up: 503 not_ready
    assert compare(browser) == {"ar": "error", "diffusion": "error"}
    for d in DECODERS:
        message = panel_text(browser, d)
        assert "HTTP 503" in message and "not ready" in message and "Retry after 1 s" in message


def test_a_server_that_went_away_is_a_message(shared_store, browser, h):
    with h.running(h.settings_for(shared_store, max_candidates=20)) as srv:
        open_page(browser, srv.url)
    assert compare(browser) == {"ar": "error", "diffusion": "error"}  # the server stopped with the block
    for d in DECODERS:
        assert "Could not reach the service" in panel_text(browser, d)
    by_css(browser, "#draw")[0].click()
    error = by_css(browser, "#request-error")[0]
    wait(browser, lambda d: error.is_displayed(), "the draw's error", 30)
    assert text(error).startswith("Could not draw an example request. Could not reach the service")


# ----------------------------------------------------------------------------- several models
def test_the_page_picks_the_model_from_v1_models(tiny, two_models_store, browser, h):
    from selenium.webdriver.support.ui import Select

    browser.get_log("browser")  # read (and so drop) what earlier tests left in the console log
    open_page(browser, tiny.url)
    wait(browser, lambda d: by_css(d, "#model option"), "the model picker's options", 30)
    assert not by_css(browser, "#model-picker")[0].is_displayed()  # one model: nothing to pick

    def drawn(driver) -> dict:
        return json.loads(by_css(driver, "#request-json")[0].get_property("value"))

    settings = h.settings_for(two_models_store, models=[h.MODEL, h.OTHER_MODEL], max_candidates=20)
    with h.running(settings) as srv:
        open_page(browser, srv.url)
        wait(browser, lambda d: by_css(d, "#model option"), "the model picker's options", 30)
        picker = by_css(browser, "#model")[0]
        assert [text(o) for o in by_css(browser, "#model option")] == [h.MODEL, h.OTHER_MODEL]
        assert picker.get_property("value") == h.MODEL and by_css(browser, "#model-picker")[0].is_displayed()
        assert drawn(browser)["model"] == h.MODEL  # the first draw: the default model's catalog

        Select(picker).select_by_value(h.OTHER_MODEL)
        wait(browser, lambda d: drawn(d)["model"] == h.OTHER_MODEL, "an example from the other catalog", 30)
        assert text(by_css(browser, "#models")[0]).startswith(f"Model {h.OTHER_MODEL} (one of 2 served). AR: toys-")
        assert compare(browser) == {"ar": "done", "diffusion": "done"}
        for d in DECODERS:
            assert text(by_css(browser, f"#panel-{d} h2 .version")[0]) == f" toys-tiny-s1-{d}"

        request = drawn(browser)
        del request["model"]  # a pasted request without the field: the picked model ranks it
        paste(browser, json.dumps(request))
        assert compare(browser) == {"ar": "done", "diffusion": "done"}
        assert text(by_css(browser, "#panel-ar h2 .version")[0]) == " toys-tiny-s1-ar"
        assert no_console_errors(browser) == []
