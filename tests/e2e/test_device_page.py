"""The device-login approval page (/device) through real clients: httpx posting its forms as a
browser would, and headless Chromium clicking through it.

The server's wall clock is a TestClock, so a device's second poll comes after its interval
without sleeping.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.domain.api_keys import mint_secret
from tests.e2e.conftest import Roz, RozFactory, TestClock
from tests.e2e.test_auth import minted

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def admin(server: Roz) -> str:
    """A fresh tenant's admin key, so keys and guess counts never leak between tests."""
    return server.new_tenant("page")


@pytest.fixture
def browser(server: Roz) -> Iterator[httpx.Client]:
    """A client that keeps cookies and does not follow redirects, so each answer is seen."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def api(server: Roz) -> Iterator[httpx.Client]:
    """The device's side: no cookies shared with the page."""
    with server.rest() as client:
        yield client


# -- helpers -------------------------------------------------------------------------------------


def request_code(api: httpx.Client, **body: str) -> dict[str, Any]:
    response = api.post("/api/v1/device/code", data=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def poll(api: httpx.Client, clock: TestClock, device_code: str) -> httpx.Response:
    """One poll as RFC 8628 §3.4 has it, after the interval has passed on the server's clock."""
    clock.advance(6)
    return api.post("/api/v1/device/token", data={"grant_type": GRANT, "device_code": device_code})


def poll_error(api: httpx.Client, clock: TestClock, device_code: str) -> str:
    response = poll(api, clock, device_code)
    assert response.status_code == 400, response.text
    return str(response.json()["error"])


def hidden(page: httpx.Response, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page.text)
    assert found is not None, f"no hidden field {name} in {page.text}"
    return found.group(1)


def set_cookies(response: httpx.Response) -> dict[str, dict[str, str]]:
    """Each Set-Cookie as {name: {"value": …, attribute (lower case): value or ""}}."""
    cookies: dict[str, dict[str, str]] = {}
    for header in response.headers.get_list("set-cookie"):
        pair, *attributes = (part.strip() for part in header.split(";"))
        name, _, value = pair.partition("=")
        parsed = {"value": value}
        for attribute in attributes:
            key, _, setting = attribute.partition("=")
            parsed[key.lower()] = setting
        cookies[name] = parsed
    return cookies


def sign_in(browser: httpx.Client, key: str, user_code: str = "") -> httpx.Response:
    form = browser.get("/device")
    assert form.status_code == 200, form.text
    data = {"api_key": key, "csrf": hidden(form, "csrf")}
    if user_code:
        data["user_code"] = user_code
    return browser.post("/device/session", data=data)


def signed_in(browser: httpx.Client, key: str) -> None:
    response = sign_in(browser, key)
    assert response.status_code == 303, response.text


def decide(
    browser: httpx.Client,
    user_code: str,
    decision: str,
    *,
    scopes: list[str] | None = None,
    csrf: str | None = None,
    **headers: str,
) -> httpx.Response:
    """Posts the confirmation form of `user_code` as shown, with the boxes it ticks by default
    unless `scopes` says which."""
    page = browser.get("/device", params={"user_code": user_code})
    assert page.status_code == 200, page.text
    ticked = re.findall(r'name="scopes" value="([^"]+)" checked', page.text)
    data: dict[str, Any] = {
        "csrf": hidden(page, "csrf") if csrf is None else csrf,
        "user_code": hidden(page, "user_code"),
        "decision": decision,
        "scopes": ticked if scopes is None else scopes,
    }
    return browser.post("/device/decision", data=data, headers=headers)


def decide_posted(browser: httpx.Client, page: httpx.Response, user_code: str) -> httpx.Response:
    """An approval posted from an older page (the session's token is on every page)."""
    return browser.post(
        "/device/decision",
        data={"csrf": hidden(page, "csrf"), "user_code": user_code, "decision": "approve"},
    )


def caller(api: httpx.Client, key: str) -> httpx.Response:
    return api.get("/api/v1/caller", headers={"authorization": f"Bearer {key}"})


def assert_security_headers(response: httpx.Response, *, cached: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name)
    if not cached:
        assert response.headers["cache-control"] == "no-store", response.url


# -- signing in ----------------------------------------------------------------------------------


def test_sign_in_sets_cookies_with_their_attributes(
    browser: httpx.Client, api: httpx.Client, admin: str
) -> None:
    code = request_code(api, client_name="roz CLI on lab-3", scope="environments:read")
    form = browser.get("/device", params={"user_code": code["user_code"]})
    assert form.status_code == 200
    assert "A device is asking to log in to roz as you" in form.text
    assert re.search(
        r'<input id="api_key" name="api_key" type="password"[^>]*autocomplete="off"', form.text
    )
    assert f'value="{code["user_code"]}"' in form.text  # the code, prefilled
    csrf = set_cookies(form)["roz_device_csrf"]
    assert csrf["value"] == hidden(form, "csrf")
    assert {"httponly", "samesite", "path"} <= csrf.keys()
    assert csrf["samesite"] == "Strict"
    assert csrf["path"] == "/device"

    signed = browser.post(
        "/device/session",
        data={"api_key": admin, "user_code": code["user_code"], "csrf": csrf["value"]},
    )
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == f"/device?user_code={code['user_code']}"
    session = set_cookies(signed)["roz_device_session"]
    assert "httponly" in session
    assert session["samesite"] == "Strict"
    assert session["path"] == "/device"
    assert session["max-age"] == "600"
    assert "secure" not in session  # the base URL is http here
    assert len(session["value"]) >= 43

    page = browser.get(signed.headers["location"])
    assert page.status_code == 200
    assert "roz CLI on lab-3" in page.text
    assert "environments:read" in page.text
    assert code["user_code"] in page.text
    whoami = caller(api, admin).json()
    assert whoami["tenant_name"] in page.text
    assert "Sign out" in page.text
    for response in (form, signed, page):
        shown = response.text + "".join(
            value for name, value in response.headers.items() if name != "set-cookie"
        )
        assert admin not in shown
        assert session["value"] not in shown


def test_a_wrong_key_is_401_and_never_echoed(browser: httpx.Client) -> None:
    for key in (mint_secret(), "not a key <b>bold</b>"):
        response = sign_in(browser, key)
        assert response.status_code == 401
        assert "invalid, expired or revoked" in response.text
        assert key not in response.text
        assert "<b>bold" not in response.text
        assert "roz_device_session" not in set_cookies(response)
        assert 'type="password"' in response.text  # the form again, to retry


def test_a_key_without_api_keys_admin_is_refused(
    server: Roz, browser: httpx.Client, admin: str
) -> None:
    reader = minted(server, ["environments:read", "tasks:write"], admin)
    response = sign_in(browser, reader)
    assert response.status_code == 403
    assert "api-keys:admin" in response.text
    assert "roz_device_session" not in set_cookies(response)
    assert reader not in response.text


def test_a_sign_in_without_the_csrf_cookie_is_refused(server: Roz, admin: str) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/device/session", data={"api_key": admin, "csrf": "x" * 43})
    assert response.status_code == 403
    assert "roz_device_session" not in set_cookies(response)
    assert "roz_device_csrf" in set_cookies(response)  # a fresh form to retry with


# -- deciding ------------------------------------------------------------------------------------


def test_approve_via_the_page_gives_the_device_its_token(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, client_name="laptop", scope="environments:read tasks:read")
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"
    signed_in(browser, admin)
    done = decide(browser, code["user_code"], "approve")
    assert done.status_code == 200, done.text
    assert "Approved: the device now has access. You can close this window." in done.text
    token = poll(api, clock, code["device_code"])
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "environments:read tasks:read"
    assert caller(api, body["access_token"]).status_code == 200


def test_unticked_scopes_are_not_granted(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read tasks:read")
    signed_in(browser, admin)
    done = decide(browser, code["user_code"], "approve", scopes=["tasks:read"])
    assert done.status_code == 200, done.text
    token = poll(api, clock, code["device_code"]).json()
    assert token["scope"] == "tasks:read"


def test_a_device_asking_nothing_is_offered_the_approvers_own_scopes(
    server: Roz, browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    approver = minted(server, ["api-keys:admin", "environments:read", "hosts:write"], admin)
    code = request_code(api)
    signed_in(browser, approver)
    page = browser.get("/device", params={"user_code": code["user_code"]})
    assert "an unnamed device" in page.text
    assert "gets those of your key" in page.text
    offered = re.findall(r'name="scopes" value="([^"]+)" checked', page.text)
    assert offered == ["api-keys:admin", "environments:read", "hosts:write"]
    done = decide(browser, code["user_code"], "approve", scopes=["hosts:write"])
    assert done.status_code == 200, done.text
    assert poll(api, clock, code["device_code"]).json()["scope"] == "hosts:write"


def test_scopes_the_approver_lacks_cannot_be_ticked(
    server: Roz, browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    approver = minted(server, ["api-keys:admin", "environments:read"], admin)
    code = request_code(api, scope="environments:read tasks:write")
    signed_in(browser, approver)
    page = browser.get("/device", params={"user_code": code["user_code"]})
    assert re.search(r'value="tasks:write" disabled', page.text)
    forced = decide(browser, code["user_code"], "approve", scopes=["tasks:write"])
    assert forced.status_code == 403
    assert "tasks:write" in forced.text
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"
    done = decide(browser, code["user_code"], "approve")  # what the page ticks by itself
    assert done.status_code == 200, done.text
    assert poll(api, clock, code["device_code"]).json()["scope"] == "environments:read"


def test_unticking_every_scope_approves_nothing(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    signed_in(browser, admin)
    response = decide(browser, code["user_code"], "approve", scopes=[])
    assert response.status_code == 400
    assert "at least one scope" in response.text
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"


def test_a_scope_the_device_did_not_ask_for_is_refused(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    signed_in(browser, admin)
    response = decide(browser, code["user_code"], "approve", scopes=["admin", "nonsense"])
    assert response.status_code == 400
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"


def test_deny_via_the_page_is_access_denied(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    signed_in(browser, admin)
    done = decide(browser, code["user_code"], "deny")
    assert done.status_code == 200, done.text
    assert "Denied" in done.text
    assert poll_error(api, clock, code["device_code"]) == "access_denied"
    again = decide_posted(browser, done, code["user_code"])
    assert again.status_code == 404  # decided already: nothing left to approve


def test_a_lower_case_code_without_dash_finds_the_login(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, client_name="robot-7")
    typed = code["user_code"].replace("-", "").lower()
    signed_in(browser, admin)
    page = browser.get("/device", params={"user_code": typed})
    assert page.status_code == 200
    assert "robot-7" in page.text
    done = decide(browser, typed, "approve")
    assert done.status_code == 200, done.text
    assert poll(api, clock, code["device_code"]).status_code == 200


def test_without_a_code_the_page_asks_for_one(browser: httpx.Client, admin: str) -> None:
    signed_in(browser, admin)
    page = browser.get("/device")
    assert page.status_code == 200
    assert 'placeholder="XXXX-XXXX"' in page.text
    assert 'autocapitalize="characters"' in page.text
    unknown = browser.get("/device", params={"user_code": "BCDF-BCDF"})
    assert unknown.status_code == 404
    assert "No login is waiting for that code" in unknown.text


# -- what the page refuses -----------------------------------------------------------------------


def test_a_decision_with_a_wrong_csrf_token_is_403_and_decides_nothing(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    signed_in(browser, admin)
    for token in ("wrong", "", "é" * 43, browser.cookies["roz_device_csrf"]):
        response = decide(browser, code["user_code"], "approve", csrf=token)
        assert response.status_code == 403, token
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"


def test_a_decision_without_a_session_is_401_and_decides_nothing(
    server: Roz, browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    signed_in(browser, admin)
    page = browser.get("/device", params={"user_code": code["user_code"]})
    form = {"csrf": hidden(page, "csrf"), "user_code": code["user_code"], "decision": "approve"}
    with httpx.Client(base_url=server.url) as stranger:
        response = stranger.post("/device/decision", data=form)
        assert response.status_code == 401
        assert 'type="password"' in response.text  # the sign-in form, code kept
        assert f'value="{code["user_code"]}"' in response.text
        stranger.cookies.set("roz_device_session", "made-up", path="/device")
        forged = stranger.post("/device/decision", data=form)
        assert forged.status_code == 401
        assert set_cookies(forged)["roz_device_session"]["max-age"] == "0"
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"


def test_a_cross_origin_post_is_refused(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    evil = {"origin": "https://evil.example"}
    form = browser.get("/device")
    refused = browser.post(
        "/device/session", data={"api_key": admin, "csrf": hidden(form, "csrf")}, headers=evil
    )
    assert refused.status_code == 403
    assert "roz_device_session" not in set_cookies(refused)

    signed_in(browser, admin)
    for origin in ("https://evil.example", "null", f"http://localhost:{browser.base_url.port}"):
        response = decide(browser, code["user_code"], "approve", origin=origin)
        assert response.status_code == 403, origin
        assert "another site" in response.text
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"
    own = str(browser.base_url).rstrip("/")
    done = decide(browser, code["user_code"], "approve", origin=own)
    assert done.status_code == 200, done.text


def test_wrong_codes_hit_the_guess_limit(roz_factory: RozFactory) -> None:
    """On a server of its own: the limit counts this test's address, which every test shares."""
    server = roz_factory(device_guesses_per_minute=3)
    admin = server.new_tenant("guesses")
    with httpx.Client(base_url=server.url) as browser, server.rest() as api:
        real = request_code(api)["user_code"]
        signed_in(browser, admin)
        for _ in range(3):
            assert browser.get("/device", params={"user_code": "BBBB-BBBB"}).status_code == 404
        limited = browser.get("/device", params={"user_code": "BBBB-BBBB"})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "Too many wrong codes" in limited.text
        # While limited, even the right code is not looked up, nor can it be decided.
        assert browser.get("/device", params={"user_code": real}).status_code == 429
        page = browser.get("/device")
        post = browser.post(
            "/device/decision",
            data={"csrf": hidden(page, "csrf"), "user_code": real, "decision": "approve"},
        )
        assert post.status_code == 429


def test_sign_out_ends_the_session(
    browser: httpx.Client, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, scope="environments:read")
    signed_in(browser, admin)
    session_id = browser.cookies["roz_device_session"]
    page = browser.get("/device", params={"user_code": code["user_code"]})
    csrf = hidden(page, "csrf")
    assert browser.post("/device/signout", data={"csrf": "wrong"}).status_code == 403
    out = browser.post("/device/signout", data={"csrf": csrf})
    assert out.status_code == 303
    assert out.headers["location"] == "/device"
    assert set_cookies(out)["roz_device_session"]["max-age"] == "0"
    assert 'type="password"' in browser.get("/device").text

    browser.cookies.set("roz_device_session", session_id, path="/device")  # replayed
    form = {"csrf": csrf, "user_code": code["user_code"], "decision": "approve"}
    assert browser.post("/device/decision", data=form).status_code == 401
    assert poll_error(api, clock, code["device_code"]) == "authorization_pending"


def test_a_revoked_key_ends_its_session(
    server: Roz, browser: httpx.Client, api: httpx.Client, admin: str
) -> None:
    approver = minted(server, ["api-keys:admin"], admin)
    signed_in(browser, approver)
    assert "Sign out" in browser.get("/device").text
    revoked = api.delete("/api/v1/caller/api-key", headers={"authorization": f"Bearer {approver}"})
    assert revoked.status_code == 204
    assert 'type="password"' in browser.get("/device").text


# -- HTTP ----------------------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(browser: httpx.Client, admin: str) -> None:
    page = browser.get("/device")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<meta name="viewport"' in page.text
    assert_security_headers(page)

    style = re.search(r'<link rel="stylesheet" href="([^"]+)"', page.text)
    assert style is not None
    sheet = browser.get(style.group(1))
    assert sheet.status_code == 200
    assert sheet.headers["content-type"] == "text/css; charset=utf-8"
    assert "max-age" in sheet.headers["cache-control"]
    assert_security_headers(sheet, cached=True)

    head = browser.head("/device")
    assert head.status_code == 200
    assert head.content == b""
    assert_security_headers(head)

    missing = browser.get("/device/nothing-here")
    assert missing.status_code == 404
    assert "Page not found" in missing.text
    assert_security_headers(missing)

    put = browser.put("/device", content=b"")
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, HEAD"
    assert_security_headers(put)
    get = browser.get("/device/decision")
    assert get.status_code == 405
    assert get.headers["allow"] == "POST"

    huge = browser.post("/device/session", data={"api_key": "x" * 70_000})
    assert huge.status_code == 413
    assert_security_headers(huge)

    signed_in(browser, admin)
    signed = browser.get("/device")
    assert_security_headers(signed)


@pytest.mark.parametrize(
    ("path", "content", "content_type", "status"),
    [
        ("/device?user_code=%ff", None, None, 400),
        ("/device/session", b"api_key=%ff%fe", "application/x-www-form-urlencoded", 400),
        ("/device/session", b"&".join([b"a=b"] * 500), "application/x-www-form-urlencoded", 400),
        ("/device/session", b'{"api_key": "x"}', "application/json", 415),
        ("/device/decision", b"\xff\xfe=\x00", "application/x-www-form-urlencoded", 400),
    ],
)
def test_malformed_input_is_a_client_error(
    browser: httpx.Client, path: str, content: bytes | None, content_type: str | None, status: int
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    if content is None:
        response = browser.get(path)
    else:
        response = browser.post(path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert_security_headers(response)
    assert "Traceback" not in response.text


def test_odd_cookies_are_ignored(server: Roz) -> None:
    cookie = 'junk; =empty; roz_device_session=""; roz_device_csrf=<x>; other="a;b'
    with httpx.Client(base_url=server.url, headers={"cookie": cookie}) as client:
        page = client.get("/device")
    assert page.status_code == 200
    assert set_cookies(page)["roz_device_csrf"]["value"] != "<x>"


# -- in a real browser ---------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        missing = f"the browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; .ci/run installs them")  # never a silent skip in CI
        pytest.skip(missing)
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


def on_page(driver: Any, text: str) -> None:
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: Any) -> str:
        # Read through script, holding no element: the page before a click is replaced
        # mid-read, which chromedriver reports as stale or as a detached node.
        return str(d.execute_script("return document.body ? document.body.innerText : ''"))

    wait = WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,))
    try:
        wait.until(lambda d: text in shown(d))
    except TimeoutException:
        raise AssertionError(f"{text!r} not on {driver.current_url}:\n{shown(driver)}") from None


def no_console_errors(driver: Any) -> None:
    """A CSP violation (an inline style, a blocked stylesheet) shows up here, nowhere else."""
    errors = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "/favicon.ico" not in entry["message"]
    ]
    assert errors == []


def test_a_browser_approves_a_device_login(
    chromium: Any, server: Roz, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    name = f"roz CLI on lab-{uuid.uuid4().hex[:4]}"
    code = request_code(api, client_name=name, scope="environments:read tasks:read")
    assert code["verification_uri"] == f"{server.url}/device"
    chromium.get(code["verification_uri_complete"])

    on_page(chromium, "A device is asking to log in to roz as you")
    assert chromium.find_element("id", "user_code").get_attribute("value") == code["user_code"]
    chromium.find_element("id", "api_key").send_keys(admin)
    chromium.find_element("css selector", "form[action='/device/session'] button").click()

    on_page(chromium, name)
    body = chromium.find_element("tag name", "body").text
    assert "environments:read" in body
    assert "tasks:read" in body
    assert admin not in chromium.page_source
    boxes = chromium.find_elements("css selector", "input[name='scopes']")
    assert [box.is_selected() for box in boxes] == [True, True]
    # The stylesheet loaded despite the strict CSP: the column is narrow.
    main = chromium.find_element("tag name", "main")
    assert main.value_of_css_property("max-width") == "512px"
    chromium.find_element("css selector", "button[value='approve']").click()

    on_page(chromium, "Approved: the device now has access. You can close this window.")
    no_console_errors(chromium)
    token = poll(api, clock, code["device_code"])
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "environments:read tasks:read"
    assert caller(api, token.json()["access_token"]).status_code == 200


def test_a_browser_enters_the_code_by_hand(
    chromium: Any, server: Roz, api: httpx.Client, clock: TestClock, admin: str
) -> None:
    code = request_code(api, client_name="robot-9", scope="hosts:read")
    chromium.get(f"{server.url}/device")
    chromium.find_element("id", "api_key").send_keys(admin)
    chromium.find_element("css selector", "form[action='/device/session'] button").click()

    on_page(chromium, "Enter the code your device shows")
    field = chromium.find_element("id", "user_code")
    field.send_keys(code["user_code"].replace("-", "").lower())
    chromium.find_element("css selector", "form[action='/device'] button").click()

    on_page(chromium, "robot-9")
    chromium.find_element("css selector", "button[value='approve']").click()
    on_page(chromium, "Approved: the device now has access.")
    no_console_errors(chromium)
    token = poll(api, clock, code["device_code"])
    assert token.status_code == 200, token.text
    assert caller(api, token.json()["access_token"]).status_code == 200

    chromium.find_element("css selector", "form[action='/device/signout'] button").click()
    on_page(chromium, "A device is asking to log in to roz as you")
