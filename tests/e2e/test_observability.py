"""Observability end to end: one access-log line for every request (refused ones and streams
included, no secret in any), /metrics over real scrapes, and OpenTelemetry spans received by a
real OTLP/HTTP endpoint, parented on the caller's traceparent over REST and native gRPC."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import sonora.client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families
from roz.v1 import environments_pb2 as env_pb
from roz.v1 import environments_pb2_grpc as env_grpc

from server.logs import JsonFormatter, TextFormatter
from server.settings import Settings, SettingsError
from tests.e2e.conftest import Roz, RozFactory
from tests.e2e.test_readme import run_as_user, shell_blocks
from tests.e2e.test_robot_link import Fleet, eventually
from tests.e2e.test_triggers import deliver, signed, webhook_trigger

ENVIRONMENTS = "/roz.v1.EnvironmentService"
FIELDS = ("request_id", "protocol", "http_method", "path", "status", "peer", "duration_ms")


# -- the access log -------------------------------------------------------------------------


class AccessLog:
    """Every gateway.access record, from whichever thread the server logs in."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self._lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def lines(self, request_id: str, timeout: float = 10) -> list[logging.LogRecord]:
        """The records of one request, once its line (the middleware's, with a status) is out;
        the chain, which would write a second one, is done by then."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [r for r in self.records if getattr(r, "request_id", None) == request_id]
            if any(hasattr(r, "status") for r in found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {request_id}: {found}")
            time.sleep(0.01)

    def line(self, request_id: str) -> dict[str, Any]:
        records = self.lines(request_id)
        assert len(records) == 1, [vars(r) for r in records]
        fields = vars(records[0])
        for name in FIELDS:
            assert name in fields, (name, fields)
        return fields

    def formatted(self) -> str:
        text, json_lines = TextFormatter("%(name)s: %(message)s"), JsonFormatter()
        with self._lock:
            return "\n".join(f.format(r) for r in self.records for f in (text, json_lines))


class _Capture(logging.Handler):
    def __init__(self, log: AccessLog) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.handle(record)


@pytest.fixture(scope="module")
def access_log() -> Iterator[AccessLog]:
    log = AccessLog()
    logger = logging.getLogger("gateway.access")
    handler = _Capture(log)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield log
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def fleet(server: Roz) -> Fleet:
    return Fleet(server, "observed")


def rid() -> str:
    return f"obs-{uuid.uuid4().hex[:12]}"


def test_rest_call_logs_one_line_with_every_field(
    server: Roz, fleet: Fleet, access_log: AccessLog
) -> None:
    request_id = rid()
    with server.rest(fleet.key) as client:
        response = client.get("/api/v1/environments", headers={"x-request-id": request_id})
    assert response.status_code == 200
    line = access_log.line(request_id)
    assert line["protocol"] == "rest"
    assert line["rpc"] == f"{ENVIRONMENTS}/ListEnvironments"
    assert (line["http_method"], line["path"], line["status"]) == (
        "GET",
        "/api/v1/environments",
        200,
    )
    assert line["code"] == "OK"
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert isinstance(line["duration_ms"], float)
    assert line["tenant"]  # what the interceptors add, merged into the same line
    assert line["api_key"]
    message = access_log.lines(request_id)[0].getMessage()
    # The line's own rounding of the duration, to a tenth (the field keeps hundredths).
    shown = re.fullmatch(r"rest GET /api/v1/environments 200 OK (\d+\.\d)ms", message)
    assert shown is not None, message
    assert abs(float(shown.group(1)) - line["duration_ms"]) <= 0.051


def test_unknown_route_logs_its_path_without_the_query(server: Roz, access_log: AccessLog) -> None:
    request_id = rid()
    response = httpx.get(
        server.url + "/api/v1/no-such-thing?token=hunter2", headers={"x-request-id": request_id}
    )
    assert response.status_code == 404
    line = access_log.line(request_id)
    assert (line["protocol"], line["status"], line["path"]) == (
        "rest",
        404,
        "/api/v1/no-such-thing",
    )
    assert "rpc" not in line
    assert line["code"] == "NOT_FOUND"  # the code of the google.rpc.Status in its body
    assert "hunter2" not in access_log.formatted()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"name": "x", "no_such_field": 1}', "application/json", 400, "INVALID_ARGUMENT"),
        (b'{"name": 5}', "application/json", 400, "INVALID_ARGUMENT"),
        (b"name=x", "text/plain", 415, "INVALID_ARGUMENT"),
        (b" " * (4 * 1024 * 1024 + 1), "application/json", 413, "RESOURCE_EXHAUSTED"),
    ],
    ids=["unknown-field", "wrong-type", "unsupported-media-type", "too-large"],
)
def test_refused_rest_bodies_log_their_status(
    server: Roz,
    fleet: Fleet,
    access_log: AccessLog,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    request_id = rid()
    response = httpx.post(
        server.url + "/api/v1/environments",
        content=body,
        headers={
            "x-request-id": request_id,
            "content-type": content_type,
            "authorization": f"Bearer {fleet.key}",
        },
    )
    assert response.status_code == status
    line = access_log.line(request_id)
    assert (line["protocol"], line["http_method"], line["status"]) == ("rest", "POST", status)
    # Refused by the transcoder, before any call, but after it had found the RPC.
    assert line["rpc"] == f"{ENVIRONMENTS}/CreateEnvironment"
    assert line["code"] == code


def test_a_preflight_and_a_page_are_plain_http(server: Roz, access_log: AccessLog) -> None:
    preflight = rid()
    response = httpx.options(
        server.url + "/api/v1/environments",
        headers={
            "x-request-id": preflight,
            "origin": "https://elsewhere.example",
            "access-control-request-method": "POST",
        },
    )
    line = access_log.line(preflight)
    assert (line["protocol"], line["http_method"], line["status"]) == (
        "http",
        "OPTIONS",
        response.status_code,
    )
    page = rid()
    assert httpx.get(server.url + "/device", headers={"x-request-id": page}).status_code == 200
    line = access_log.line(page)
    assert (line["protocol"], line["path"], line["status"]) == ("http", "/device", 200)


def test_native_grpc_ok_and_error(server: Roz, fleet: Fleet, access_log: AccessLog) -> None:
    auth = ("authorization", f"Bearer {fleet.key}")
    ok, missing = rid(), rid()
    with server.channel() as channel:
        stub = env_grpc.EnvironmentServiceStub(channel)
        stub.ListEnvironments(
            env_pb.ListEnvironmentsRequest(), metadata=[auth, ("x-request-id", ok)]
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.GetEnvironment(
                env_pb.GetEnvironmentRequest(id=str(uuid.uuid4())),
                metadata=[auth, ("x-request-id", missing)],
            )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    line = access_log.line(ok)
    assert (line["protocol"], line["rpc"], line["http_method"], line["status"], line["code"]) == (
        "grpc",
        f"{ENVIRONMENTS}/ListEnvironments",
        "POST",
        200,
        "OK",
    )
    assert line["path"] == f"{ENVIRONMENTS}/ListEnvironments"
    line = access_log.line(missing)
    # Native gRPC's HTTP status is 200 whatever the outcome; the code is the trailers'.
    assert (line["status"], line["code"], line["rpc"]) == (
        200,
        "NOT_FOUND",
        f"{ENVIRONMENTS}/GetEnvironment",
    )
    assert line["tenant"]


def test_native_grpc_unknown_method_is_logged_without_an_rpc(
    server: Roz, access_log: AccessLog
) -> None:
    request_id = rid()
    with server.channel() as channel:
        method = channel.unary_unary("/roz.v1.NoSuchService/Nothing")
        with pytest.raises(grpc.RpcError) as error:
            method(b"", metadata=[("x-request-id", request_id)])
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    line = access_log.line(request_id)
    assert (line["protocol"], line["code"]) == ("grpc", "UNIMPLEMENTED")
    assert "rpc" not in line


def test_grpc_web_call(server: Roz, fleet: Fleet, access_log: AccessLog) -> None:
    request_id = rid()
    with sonora.client.insecure_web_channel(server.url) as channel:
        method = channel.unary_unary(
            f"{ENVIRONMENTS}/ListEnvironments",
            env_pb.ListEnvironmentsRequest.SerializeToString,
            env_pb.ListEnvironmentsResponse.FromString,
        )
        method(
            env_pb.ListEnvironmentsRequest(),
            metadata=[("authorization", f"Bearer {fleet.key}"), ("x-request-id", request_id)],
        )
    line = access_log.line(request_id)
    assert (line["protocol"], line["rpc"], line["status"], line["code"]) == (
        "grpc-web",
        f"{ENVIRONMENTS}/ListEnvironments",
        200,
        "OK",
    )


def test_connect_calls_and_refusals(server: Roz, fleet: Fleet, access_log: AccessLog) -> None:
    ok, refused = rid(), rid()
    url = f"{server.url}{ENVIRONMENTS}/ListEnvironments"
    headers = {
        "content-type": "application/json",
        "connect-protocol-version": "1",
        "authorization": f"Bearer {fleet.key}",
    }
    response = httpx.post(url, content=b"{}", headers={**headers, "x-request-id": ok})
    assert response.status_code == 200, response.text
    line = access_log.line(ok)
    assert (line["protocol"], line["rpc"], line["status"], line["code"]) == (
        "connect",
        f"{ENVIRONMENTS}/ListEnvironments",
        200,
        "OK",
    )
    # Refused by the Connect adapter before any call: still Connect's, and still this RPC's.
    response = httpx.post(url, content=b"{not json", headers={**headers, "x-request-id": refused})
    assert response.status_code >= 400
    line = access_log.line(refused)
    assert (line["protocol"], line["rpc"], line["status"]) == (
        "connect",
        f"{ENVIRONMENTS}/ListEnvironments",
        response.status_code,
    )


def test_a_stream_logs_once_at_its_end(server: Roz, fleet: Fleet, access_log: AccessLog) -> None:
    host_id, secret = fleet.robot()
    request_id = rid()
    channel = grpc.insecure_channel(
        server.listener.target,
        options=[("grpc.primary_user_agent", "obs")],
    )
    intercepted = grpc.intercept_channel(channel, _RequestId(request_id))
    with fleet.connect(secret, channel=intercepted) as robot:
        robot.welcome()
        # The stream is open: no line yet.
        assert not [r for r in access_log.records if getattr(r, "request_id", "") == request_id]
        robot.close()
        robot.ended()
    channel.close()
    line = access_log.line(request_id)
    assert (line["protocol"], line["rpc"]) == ("grpc", "/roz.v1.RobotLinkService/Connect")
    assert line["host"] == host_id
    assert secret not in access_log.formatted()


class _RequestId(grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, request_id: str) -> None:
        self._request_id = request_id

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        metadata = [*(details.metadata or ()), ("x-request-id", self._request_id)]
        return continuation(details._replace(metadata=metadata), requests)


def test_no_secret_in_any_line(server: Roz, fleet: Fleet, access_log: AccessLog) -> None:
    """Keys in headers and in a form, a device code in a query: none reaches the log."""
    device = httpx.post(server.url + "/api/v1/device/code", data={"client_id": "roz-cli"})
    assert device.status_code == 200, device.text
    code = device.json()["device_code"]
    user_code = device.json()["user_code"]
    httpx.get(server.url + f"/device?user_code={user_code}")
    httpx.post(
        server.url + "/api/v1/device/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": code},
    )
    with server.rest(server.admin_key) as client:
        client.get("/api/v1/environments")
    written = access_log.formatted()
    assert written
    for secret in (fleet.key, server.admin_key, code, user_code):
        assert secret not in written


# -- /metrics -------------------------------------------------------------------------------


def scrape(roz: Roz) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(roz.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_a_call_by_method_protocol_and_code(server: Roz, fleet: Fleet) -> None:
    labels = {
        "protocol": "grpc",
        "method": "roz.v1.EnvironmentService/GetEnvironment",
        "code": "NOT_FOUND",
        "status": "200",
    }
    before = value(scrape(server), "roz_requests_total", **labels)
    with server.channel() as channel:
        stub = env_grpc.EnvironmentServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.GetEnvironment(
                env_pb.GetEnvironmentRequest(id=str(uuid.uuid4())),
                metadata=[("authorization", f"Bearer {fleet.key}")],
            )
    eventually(lambda: value(scrape(server), "roz_requests_total", **labels) == before + 1)
    samples = scrape(server)
    histogram = {"protocol": "grpc", "method": "roz.v1.EnvironmentService/GetEnvironment"}
    assert value(samples, "roz_request_duration_seconds_count", **histogram) >= 1
    assert value(samples, "roz_request_duration_seconds_bucket", le="+Inf", **histogram) >= 1
    buckets = {
        dict(labels_)["le"]
        for (name, labels_) in samples
        if name == "roz_request_duration_seconds_bucket"
    }
    assert {"0.001", "0.1", "1.0", "10.0", "+Inf"} <= buckets


def test_unknown_routes_count_under_one_label(server: Roz) -> None:
    path = f"/api/v1/{uuid.uuid4().hex}"
    httpx.get(server.url + path)
    text = httpx.get(server.url + "/metrics").text
    assert path not in text
    assert path.strip("/") not in text
    samples = scrape(server)
    assert (
        value(
            samples,
            "roz_requests_total",
            protocol="rest",
            method="unknown",
            code="NOT_FOUND",
            status="404",
        )
        >= 1
    )


def test_in_flight_streams_and_connected_robots(server: Roz, fleet: Fleet) -> None:
    connect = "roz.v1.RobotLinkService/Connect"
    # The scrape itself is a request in flight.
    assert value(scrape(server), "roz_requests_in_flight") >= 1
    _, secret = fleet.robot()
    with fleet.connect(secret) as robot:
        robot.welcome()
        eventually(lambda: value(scrape(server), "roz_robots_connected") == 1)
        samples = scrape(server)
        assert value(samples, "roz_calls_in_flight", method=connect) == 1
        assert value(samples, "roz_streams_open", method=connect) == 1
        robot.close()
        robot.ended()
    eventually(lambda: value(scrape(server), "roz_robots_connected") == 0)
    eventually(lambda: value(scrape(server), "roz_streams_open", method=connect) == 0)


def test_pool_and_sweeps(roz_factory: RozFactory) -> None:
    roz = roz_factory(db_pool_max=7, sweep_interval_seconds=0.1)
    samples = scrape(roz)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)
    assert value(samples, "roz_db_pool_max") == 7
    assert value(samples, "roz_db_pool_size") >= 1
    assert value(samples, "roz_db_pool_requests_total") >= 1

    def swept_twice() -> bool:
        return value(scrape(roz), "roz_sweep_runs_total", sweep="task timeouts") >= 2

    eventually(swept_twice)
    samples = scrape(roz)
    assert value(samples, "roz_sweep_failures_total", sweep="task timeouts") == 0
    assert value(samples, "roz_sweep_duration_seconds_total", sweep="task timeouts") > 0


def test_a_webhook_fire_is_counted_and_its_secret_never_logged(
    server: Roz, fleet: Fleet, access_log: AccessLog
) -> None:
    fired = {"source": "webhook", "outcome": "created"}
    before = value(scrape(server), "roz_trigger_fires_total", **fired)
    made = webhook_trigger(server, fleet.key)
    secret = made["webhook"]["secret"]
    body = b'{"ref": "main"}'
    headers = signed(secret, body)
    assert deliver(server, made["id"], body, headers).status_code == 200
    assert value(scrape(server), "roz_trigger_fires_total", **fired) == before + 1
    # A replay answers the first fire and records nothing, so nothing more is counted.
    replay = deliver(server, made["id"], body, headers)
    assert replay.status_code == 200
    assert replay.json()["duplicate"] is True
    assert value(scrape(server), "roz_trigger_fires_total", **fired) == before + 1
    written = access_log.formatted()
    assert f"/api/v1/triggers/{made['id']}/webhook" in written
    assert secret not in written
    assert headers["webhook-signature"] not in written


def test_openmetrics_when_asked(server: Roz) -> None:
    response = httpx.get(
        server.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert httpx.post(server.url + "/metrics").status_code == 405


def test_readme_scrape_example(server: Roz, tmp_path: Path) -> None:
    script = "set -euo pipefail\n" + "\n".join(shell_blocks("Observability"))
    result = run_as_user(script.replace("localhost:8080", server.listener.target), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "roz_requests_total" in result.stdout
    assert "roz_robots_connected" in result.stdout


# -- tracing --------------------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces, ExportTraceServiceRequest in protobuf."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.path == "/v1/traces", self.path
                request = ExportTraceServiceRequest.FromString(body)
                with received.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            received.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def span(self, trace_id: bytes, timeout: float = 15) -> Span:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.05)
        raise AssertionError("no span received")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    received = Collector()
    yield received
    received.close()


@pytest.fixture(scope="module")
def traced(
    roz_factory: RozFactory, collector: Collector, monkeypatch_module: pytest.MonkeyPatch
) -> Roz:
    # Spans leave in batches every 100 ms instead of every 5 s.
    monkeypatch_module.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    return roz_factory(otel_traces_endpoint=collector.endpoint, otel_service_name="roz-test")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def traceparent() -> tuple[str, bytes, bytes]:
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return f"00-{trace_id.hex()}-{span_id.hex()}-01", trace_id, span_id


def attributes(span: Span) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        found[attribute.key] = getattr(attribute.value, kind) if kind else None
    return found


def test_a_rest_call_continues_the_callers_trace(
    traced: Roz, collector: Collector, access_log: AccessLog
) -> None:
    key = traced.new_tenant("traced")
    header, trace_id, parent = traceparent()
    request_id = rid()
    with traced.rest(key) as client:
        response = client.get(
            "/api/v1/environments",
            headers={"traceparent": header, "tracestate": "roz=1", "x-request-id": request_id},
        )
    assert response.status_code == 200
    assert access_log.line(request_id)["trace_id"] == trace_id.hex()
    span = collector.span(trace_id)
    assert span.parent_span_id == parent
    assert span.name == "roz.v1.EnvironmentService/ListEnvironments"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.trace_state == "roz=1"
    found = attributes(span)
    assert found["rpc.system"] == "grpc"
    assert found["rpc.service"] == "roz.v1.EnvironmentService"
    assert found["rpc.method"] == "ListEnvironments"
    assert found["rpc.grpc.status_code"] == 0
    assert found["http.request.method"] == "GET"
    assert found["url.path"] == "/api/v1/environments"
    assert found["client.address"] == "127.0.0.1"
    assert span.status.code != span.status.STATUS_CODE_ERROR


def test_a_native_grpc_call_continues_the_callers_trace(traced: Roz, collector: Collector) -> None:
    key = traced.new_tenant("traced")
    header, trace_id, parent = traceparent()
    with traced.channel() as channel:
        stub = env_grpc.EnvironmentServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.GetEnvironment(
                env_pb.GetEnvironmentRequest(id=str(uuid.uuid4())),
                metadata=[("authorization", f"Bearer {key}"), ("traceparent", header)],
            )
    span = collector.span(trace_id)
    assert span.parent_span_id == parent
    assert span.name == "roz.v1.EnvironmentService/GetEnvironment"
    assert attributes(span)["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # A client's mistake is not the server's error (semantic conventions for gRPC servers).
    assert span.status.code != span.status.STATUS_CODE_ERROR


def test_refused_requests_get_spans_too(traced: Roz, collector: Collector) -> None:
    header, trace_id, parent = traceparent()
    httpx.get(traced.url + "/api/v1/nowhere", headers={"traceparent": header})
    span = collector.span(trace_id)
    assert (span.name, span.parent_span_id) == ("GET", parent)
    assert attributes(span)["http.response.status_code"] == 404

    header, trace_id, _ = traceparent()
    with traced.channel() as channel, pytest.raises(grpc.RpcError):
        channel.unary_unary("/roz.v1.NoSuchService/Nothing")(
            b"", metadata=[("traceparent", header)]
        )
    span = collector.span(trace_id)
    assert attributes(span)["rpc.grpc.status_code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert span.status.code == span.status.STATUS_CODE_ERROR


def test_tracing_is_off_unless_configured(server: Roz) -> None:
    assert server.app.settings.otel_traces_endpoint is None
    assert server.app.observability.tracing is None
    assert Settings.from_env({}).otel_traces_endpoint is None
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "none"}).otel_traces_endpoint is None
    on = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert on.otel_traces_endpoint == "http://collector:4318/v1/traces"
    own = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces",
            "OTEL_SERVICE_NAME": "roz-eu",
        }
    )
    assert (own.otel_traces_endpoint, own.otel_service_name) == (
        "http://traces:4318/v1/traces",
        "roz-eu",
    )
    assert (
        Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}).otel_traces_endpoint
        == "http://localhost:4318/v1/traces"
    )
    assert (
        Settings.from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
        ).otel_traces_endpoint
        is None
    )


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_tracing_settings_the_server_cannot_honour_stop_it(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="OTEL_"):
        Settings.from_env(env)
