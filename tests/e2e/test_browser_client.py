"""roz's generated TypeScript client in a real browser, from another origin: tests/browser/page.ts,
bundled with esbuild, served by a second HTTP server on another port, run in headless Chromium.
Through connect-web it creates an environment, gets it back, reads the field violations of an
invalid create, is turned away without its key, and watches a task the test then cancels.

What the page says is not taken on trust: Chromium's network log shows each call carrying the key
as a Bearer header and roz's CORS answers allowing the page's origin, and the environment is
read back over REST. The client, the page and the READMEs' samples also type-check (tsc).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.e2e.conftest import Roz, RozFactory
from tests.e2e.test_commands import rest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "typescript"
PAGE = REPO / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_SECONDS = 20

# connect-web's transports by the page's names for them: the content types of their POSTs
# (unary, server stream), and how many calls went as GET (the page's Connect JSON transport
# gets an environment with Connect's GET, with and without a key).
TRANSPORTS = {
    "grpc-web": ({"application/grpc-web+proto"}, 0),
    "grpc-web+json": ({"application/grpc-web+json"}, 0),
    "connect": ({"application/json", "application/connect+json"}, 2),
    "connect+proto": ({"application/proto", "application/connect+proto"}, 0),
}


def missing(reason: str) -> None:
    """Fails in CI (never a silent skip there), skips on a laptop."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def installed_client() -> Path:
    """clients/typescript's node_modules/.bin, with node to run it."""
    bin_dir = CLIENT / "node_modules" / ".bin"
    if shutil.which("node") is None or not (bin_dir / "esbuild").exists():
        missing("clients/typescript is not installed (npm): run `make install`")
    return bin_dir


def readme_samples(tmp: Path) -> Path:
    """A TypeScript project of the READMEs' samples, importing the client as "@roz/client"."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## TypeScript and browser clients\n", 1)[1].split("\n## ", 1)[0]
    samples = [section, (CLIENT / "README.md").read_text()]
    for number, text in enumerate(samples):
        (block,) = re.findall(r"```ts\n(.*?)```", text, flags=re.DOTALL)
        free = "declare const apiKey: string;\ndeclare const taskId: string;\nexport {};\n"
        (tmp / f"sample{number}.ts").write_text(free + block)
    modules = CLIENT / "node_modules"
    config = {
        "extends": str(CLIENT / "tsconfig.json"),
        "compilerOptions": {
            "paths": {
                "@roz/client": [str(CLIENT / "src" / "index.ts")],
                "@bufbuild/*": [f"{modules}/@bufbuild/*"],
                "@connectrpc/*": [f"{modules}/@connectrpc/*"],
            },
        },
        "include": ["*.ts"],
    }
    (tmp / "tsconfig.json").write_text(json.dumps(config))
    return tmp


def test_the_client_the_page_and_the_readme_samples_type_check(tmp_path: Path) -> None:
    tsc = installed_client() / "tsc"
    for project in (CLIENT, PAGE, readme_samples(tmp_path)):
        checked = subprocess.run(
            [str(tsc), "-p", str(project)], capture_output=True, text=True, timeout=120, check=False
        )
        assert checked.returncode == 0, f"{project}: {checked.stdout}{checked.stderr}"


def test_index_exports_every_roz_and_google_rpc_file() -> None:
    index = (CLIENT / "src" / "index.ts").read_text()
    generated = sorted((CLIENT / "src" / "gen").rglob("*_pb.ts"))
    wanted = [p for p in generated if p.parts[-3:-1] in (("roz", "v1"), ("google", "rpc"))]
    assert len(wanted) > 16
    for path in wanted:
        module = path.relative_to(CLIENT / "src").with_suffix("").as_posix()
        assert f'export * from "./{module}";' in index, module


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html and page.js, the page bundled as a web developer would bundle it."""
    esbuild = installed_client() / "esbuild"
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        missing(f"the browser tests need {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium)")
    out = tmp_path_factory.mktemp("page")
    shutil.copy(PAGE / "index.html", out / "index.html")
    # The page imports connect-web and protobuf-es from the client package's node_modules.
    env = {**os.environ, "NODE_PATH": str(CLIENT / "node_modules")}
    subprocess.run(
        [
            str(esbuild),
            str(PAGE / "page.ts"),
            "--bundle",
            "--platform=browser",
            "--target=es2020",
            f"--outfile={out / 'page.js'}",
            "--log-level=warning",
        ],
        env=env,
        check=True,
        timeout=60,
    )
    return out


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin(page_dir: Path) -> Iterator[str]:
    """The page's own origin: a static file server on a port of its own."""
    files = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(page_dir)))
    thread = threading.Thread(target=files.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{files.server_address[1]}"
    finally:
        files.shutdown()
        files.server_close()
        thread.join(WAIT_SECONDS)


@pytest.fixture(scope="module")
def cors_roz(roz_factory: RozFactory, page_origin: str) -> Roz:
    """A server that lets the page's origin call it (ROZ_CORS_ORIGINS)."""
    return roz_factory(
        cors_origins=(page_origin,), rate_limit_rps=100_000.0, rate_limit_burst=100_000
    )


@pytest.fixture
def chromium(page_dir: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    # The network log: every request's headers as sent and every response's as received.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def report(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return window.roz || {}")  # type: ignore[no-any-return]


def wait_for(driver: Any, step: str, until: Any = bool) -> Any:
    """The page's report of `step`, once `until` holds for it (polled; the page is async)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        seen = report(driver)
        if seen.get("failed"):
            raise AssertionError(f"the page failed: {seen['failed']}")
        if step in seen and until(seen[step]):
            return seen[step]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {step!r} from the page: {json.dumps(seen, indent=2)}")
        time.sleep(0.05)


@dataclass
class Exchange:
    """One request to roz as Chromium made it: headers as sent on the wire, and as answered."""

    method: str = ""
    url: str = ""
    sent: dict[str, str] = field(default_factory=dict)
    answered: dict[str, str] = field(default_factory=dict)


def exchanges(driver: Any, server_url: str) -> list[Exchange]:
    """From Chromium's network log, every request to `server_url`, preflights included."""
    seen: dict[str, Exchange] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if not message["method"].startswith("Network.") or "requestId" not in params:
            continue
        exchange = seen.setdefault(params["requestId"], Exchange())
        if message["method"] == "Network.requestWillBeSent":
            exchange.method = params["request"]["method"]
            exchange.url = params["request"]["url"]
            exchange.sent.update(lowered(params["request"]["headers"]))
        elif message["method"] == "Network.requestWillBeSentExtraInfo":
            exchange.sent.update(lowered(params["headers"]))
        elif message["method"] == "Network.responseReceived":
            exchange.answered.update(lowered(params["response"]["headers"]))
    return [x for x in seen.values() if x.url.startswith(server_url + "/")]


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_page_on_another_origin_uses_the_generated_client(
    chromium: Any, cors_roz: Roz, page_origin: str, transport: str
) -> None:
    key = cors_roz.new_tenant("browser")
    where = urlencode({"server": cors_roz.url, "key": key, "transport": transport})
    chromium.get(f"{page_origin}/index.html#{where}")

    # The page makes a task and watches it; once the watch has its first message, the test
    # cancels the task, and the stream brings the change and ends by itself.
    task_id = wait_for(chromium, "task")
    wait_for(chromium, "watch")
    rest(
        cors_roz,
        key,
        "POST",
        f"/api/v1/tasks/{task_id}/transition",
        json={"state": "STATE_CANCELLED", "reason": "seen from a browser"},
    )
    wait_for(chromium, "done")
    seen = report(chromium)

    created = seen["created"]
    assert created["name"].startswith(f"browser-{transport}-")
    assert (created["kind"], created["allowedTools"]) == ("SIMULATION", ["camera", "gripper"])
    assert int(created["createTime"]) > 0
    assert seen["got"] == {
        "ok": {"id": created["id"], "name": created["name"], "kind": "SIMULATION"}
    }
    stored = rest(cors_roz, key, "GET", f"/api/v1/environments/{created['id']}")
    assert (stored["name"], stored["kind"]) == (created["name"], "KIND_SIMULATION")

    # Error details decoded with the generated google.rpc types.
    invalid = seen["invalid"]["error"]
    assert invalid["code"] == "InvalidArgument"
    fields = {v["field"] for v in invalid["violations"]}
    assert {"environment.name", "environment.allowed_tools[0]"} <= fields
    assert all(v["description"] for v in invalid["violations"])
    assert seen["anonymous"]["error"]["code"] == "Unauthenticated"

    assert seen["watch"][0] == {"task": "PENDING"}
    assert seen["watch"][-2]["change"] == "task.ended"
    assert seen["watch"][-1] == {"task": "CANCELLED"}
    assert seen["watchEnd"] == "ended"

    # Cross-origin, with an Authorization header: Chromium asked roz first, and roz said yes.
    made = exchanges(chromium, cors_roz.url)
    preflights = [x for x in made if x.method == "OPTIONS"]
    calls = [x for x in made if x.method in ("GET", "POST")]
    assert preflights
    for preflight in preflights:
        assert preflight.answered["access-control-allow-origin"] == page_origin
        assert "authorization" in preflight.answered["access-control-allow-headers"].split(",")
    assert len(calls) >= 6  # create, get, invalid, anonymous, create task, watch
    for call in calls:
        assert call.sent["origin"] == page_origin
        assert call.answered["access-control-allow-origin"] == page_origin
    keys = [call.sent.get("authorization") for call in calls]
    assert keys.count(f"Bearer {key}") == len(calls) - 1  # all but the anonymous call
    assert keys.count(None) == 1
    content_types, gets = TRANSPORTS[transport]
    assert {call.sent["content-type"] for call in calls if call.method == "POST"} == content_types
    assert [call.url.split("?")[0] for call in calls if call.method == "GET"] == [
        f"{cors_roz.url}/roz.v1.EnvironmentService/GetEnvironment"
    ] * gets
