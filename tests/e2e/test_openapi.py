"""/openapi.json and /docs on a live server: the committed document, served; the docs page works
in a real browser, offline, under its Content-Security-Policy, and "Try it out" calls the server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.e2e.conftest import Roz

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 20


def test_the_served_document_is_the_committed_file(server: Roz) -> None:
    response = httpx.get(server.url + "/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == (ROOT / "gen" / "openapi.json").read_bytes(), "run `make gen`"
    validate(response.json())


def test_the_document_is_cacheable_by_etag_and_answers_head(server: Roz) -> None:
    first = httpx.get(server.url + "/openapi.json")
    etag = first.headers["etag"]
    again = httpx.get(server.url + "/openapi.json", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    changed = httpx.get(server.url + "/openapi.json", headers={"if-none-match": '"other"'})
    assert changed.status_code == 200
    head = httpx.head(server.url + "/openapi.json")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(first.content))
    assert head.headers["etag"] == etag
    assert httpx.post(server.url + "/openapi.json").status_code == 405


def test_the_docs_page_and_its_assets_come_from_this_server(server: Roz) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-eval" not in policy
    assert "unsafe-inline" not in policy
    assert "http" not in page.text  # nothing from elsewhere
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "init.js"):
        response = httpx.get(f"{server.url}/docs/{asset}")
        assert response.status_code == 200, asset
        assert f'/docs/{asset}"' in page.text or asset == "swagger-ui.css"
    init = httpx.get(server.url + "/docs/init.js").text
    assert 'url: "/openapi.json"' in init
    assert "validatorUrl: null" in init
    assert httpx.get(server.url + "/docs/nothing.js").status_code == 404


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"the docs page test needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {script}; console: {driver.get_log('browser')}")
        time.sleep(0.1)


def test_try_it_out_calls_this_server_with_a_bearer_key(server: Roz, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with server.rest(server.admin_key) as rest:
        assert rest.post("/api/v1/environments", json={"name": "from-docs"}).status_code == 201
    browser.get(server.url + "/docs#/EnvironmentService/EnvironmentService_ListEnvironments")
    title = wait_for(browser, "return document.querySelector('.info .title')?.textContent")
    assert "roz API" in title
    browser.execute_script(f"window.ui.preauthorizeApiKey('apiKey', '{server.admin_key}')")
    operation = "#operations-EnvironmentService-EnvironmentService_ListEnvironments"
    block = wait_for(browser, f"return document.querySelector('{operation}')")
    wait_for(browser, f"return !!document.querySelector('{operation} .try-out__btn')")
    wait_for(browser, "return arguments.length === 0 && !!document.querySelector('.try-out__btn')")
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    wait_for(browser, "return !!document.querySelector('.execute')")
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    cell = ".live-responses-table tr.response .response-col_status"
    status = wait_for(browser, f"return document.querySelector('{cell}')?.textContent")
    assert status.strip() == "200"
    body = wait_for(
        browser, "return document.querySelector('.live-responses-table .microlight')?.textContent"
    )
    assert "from-docs" in body
    refused = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert not refused
    listed = json.loads(body)
    assert listed["environments"][0]["name"] == "from-docs"


def test_a_watch_streams_what_the_document_says_in_both_framings(server: Roz) -> None:
    document = json.loads((ROOT / "gen" / "openapi.json").read_text())
    content = document["paths"]["/api/v1/hosts/{host_id}/watch"]["get"]["responses"]["200"][
        "content"
    ]
    line = content["application/x-ndjson"]["schema"]

    def validator(schema: dict[str, Any]) -> Draft202012Validator:
        # With the document's components beside it, "#/components/..." refs resolve.
        return Draft202012Validator({**schema, "components": document["components"]})

    with server.rest(server.admin_key) as rest:
        host = rest.post("/api/v1/hosts", json={"name": "watched"}).json()
        path = f"/api/v1/hosts/{host['id']}/watch"
        # A deadline ends the endless stream, as an error in the stream's own framing.
        deadline = {"grpc-timeout": "500m"}
        ndjson = rest.get(path, headers=deadline)
        sse = rest.get(path, headers=deadline | {"accept": "text/event-stream"})
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert "result" in lines[0]
    assert "error" in lines[-1]
    for each in lines:
        validator(line).validate(each)
    assert sse.headers["content-type"] == "text/event-stream"
    events = [block for block in sse.text.split("\n\n") if block]
    first = dict(field.split(": ", 1) for field in events[0].splitlines())
    validator(line["properties"]["result"]).validate(json.loads(first["data"]))
    last = dict(field.split(": ", 1) for field in events[-1].splitlines())
    assert last["event"] == "error"
    validator(line["properties"]["error"]).validate(json.loads(last["data"]))
