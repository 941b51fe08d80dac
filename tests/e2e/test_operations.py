"""The server as an operator runs it: `roz-server serve` and `roz-server admin` as processes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import h2.errors
import h2.events
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from roz.v1 import environments_pb2, environments_pb2_grpc

from tests.e2e.conftest import TEST_DATABASE_URL
from tests.support import grpc_web
from tests.support.h2client import H2Client
from tests.support.server import free_port

ROZ_SERVER = str(Path(sys.executable).parent / "roz-server")

pytestmark = pytest.mark.skipif(
    TEST_DATABASE_URL is not None, reason="exercises the embedded default database"
)


def environment(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROZ_") and k != "DATABASE_URL"}
    env.update(
        ROZ_DATA_DIR=str(data_dir),
        PORT=str(port),
        ROZ_DRAIN_SECONDS="0",
        ROZ_SHUTDOWN_GRACE_SECONDS="1",
    )
    env.update(extra)
    return env


@contextmanager
def serving(data_dir: Path, **extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [ROZ_SERVER, "serve"],
        env=environment(data_dir, port, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise AssertionError(process.stdout.read() if process.stdout else "exited")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    return process.stdout.read() if process.stdout else ""


def keys_of(url: str, key: str) -> list[str]:
    response = httpx.get(url + "/api/v1/auth-keys", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return [k["id"] for k in response.json()["api_keys"]]


def test_first_start_mints_one_admin_key_and_restarts_keep_everything(roz_dir: Path) -> None:
    data_dir = roz_dir / "roz"
    with serving(data_dir) as (url, process):
        key_file = data_dir / "admin-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        keys = keys_of(url, key)
        assert len(keys) == 1
        created = httpx.post(
            url + "/api/v1/environments",
            json={"name": "kept"},
            headers={"authorization": f"Bearer {key}"},
        )
        assert created.status_code == 201
        log = stop(process)
    assert log.count(key) == 1  # shown once, on the first start

    with serving(data_dir) as (url, process):
        assert (data_dir / "admin-key").read_text().strip() == key
        assert keys_of(url, key) == keys  # no second key minted
        listed = httpx.get(url + "/api/v1/environments", headers={"authorization": f"Bearer {key}"})
        assert [e["name"] for e in listed.json()["environments"]] == ["kept"]
        log = stop(process)
    assert key not in log


def test_admin_key_from_the_environment(roz_dir: Path) -> None:
    from server.domain.api_keys import mint_secret

    key = mint_secret()
    with serving(roz_dir / "roz", ROZ_ADMIN_KEY=key) as (url, process):
        assert len(keys_of(url, key)) == 1
        assert not (roz_dir / "roz" / "admin-key").exists()
        assert key not in stop(process)


def test_create_tenant_prints_a_working_key_last(roz_dir: Path) -> None:
    data_dir = roz_dir / "roz"
    with serving(data_dir) as (url, _process):
        env = environment(data_dir, 0)
        result = subprocess.run(
            [ROZ_SERVER, "admin", "create-tenant", "acme"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        secret = result.stdout.strip().splitlines()[-1]
        assert secret.startswith("roz_sk_")
        admin = (data_dir / "admin-key").read_text().strip()
        assert set(keys_of(url, secret)).isdisjoint(keys_of(url, admin))  # another tenant

        again = subprocess.run(
            [ROZ_SERVER, "admin", "create-tenant", "acme"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1
        assert "already exists" in again.stderr
        assert "Traceback" not in again.stderr


def test_sigterm_ends_open_streams_with_unavailable(roz_dir: Path) -> None:
    with serving(roz_dir / "roz") as (url, process):
        target = url.removeprefix("http://")
        with grpc.insecure_channel(target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = next(watch)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            statuses = []

            def read_all() -> None:
                statuses.extend(update.status for update in watch)

            with pytest.raises(grpc.RpcError) as ended:
                read_all()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert process.wait(30) == 0


def test_sigterm_keeps_serving_while_draining_then_ends_every_stream_readably(
    roz_dir: Path,
) -> None:
    """Kubernetes' contract: readiness off at once, calls still answered during the drain (a
    new call on the same HTTP/2 connection included), then every open stream ends with a status
    its client reads, over gRPC and gRPC-web, and the process exits 0 well within 30 s."""
    with serving(roz_dir / "roz", ROZ_DRAIN_SECONDS="2", ROZ_SHUTDOWN_GRACE_SECONDS="1") as (
        url,
        process,
    ):
        key = (roz_dir / "roz" / "admin-key").read_text().strip()
        target = url.removeprefix("http://")
        web_watch = threading.Thread(target=_grpc_web_watch, args=(url, web_outcome := {}))
        web_watch.start()
        with grpc.insecure_channel(target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert _wait_for(lambda: web_outcome.get("first") == b"SERVING")
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert httpx.get(url + "/ready", timeout=5).status_code == 503
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            time.sleep(1)  # a client that has not noticed yet, on the same connection
            stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
            listed = stub.ListEnvironments(
                environments_pb2.ListEnvironmentsRequest(),
                metadata=[("authorization", f"Bearer {key}")],
                timeout=5,
            )
            assert listed.next_page_token == ""
            with pytest.raises(grpc.RpcError) as ended:
                next(watch)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ended.value.details() == "server is shutting down"
        assert process.wait(30) == 0
        took = time.monotonic() - signalled
        web_watch.join(10)
        log = process.stdout.read() if process.stdout else ""
    assert 2 <= took < 2 + 1 + 6, f"took {took:.1f} s"
    assert web_outcome["status"] == "14", web_outcome
    assert "Traceback" not in log, log
    assert "KeyError" not in log, log
    watch_lines = [line for line in log.splitlines() if "Health/Watch" in line]
    assert watch_lines, log
    assert all("UNAVAILABLE" in line for line in watch_lines), watch_lines


def test_a_second_signal_cuts_the_drain_short(roz_dir: Path) -> None:
    """An operator pressing Ctrl-C twice does not wait out the drain (here 60 s)."""
    with serving(roz_dir / "roz", ROZ_DRAIN_SECONDS="60") as (url, process):
        process.send_signal(signal.SIGINT)
        assert _wait_for(lambda: httpx.get(url + "/ready", timeout=5).status_code == 503)
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0


def test_at_shutdown_http2_clients_get_goaway_and_late_streams_are_refused(
    roz_dir: Path,
) -> None:
    with serving(roz_dir / "roz", ROZ_SHUTDOWN_GRACE_SECONDS="2") as (url, process):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            client = H2Client(sock)
            headers = [
                (b":method", b"POST"),
                (b":path", b"/grpc.health.v1.Health/Watch"),
                (b":scheme", b"http"),
                (b":authority", url.removeprefix("http://").encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ]
            client.conn.send_headers(1, headers)
            client.send_data(1, b"\x00\x00\x00\x00\x00", end=True)
            while not any(
                isinstance(e, h2.events.DataReceived) for e in client.responses.get(1, [])
            ):
                client.pump()
            process.send_signal(signal.SIGTERM)
            while client.goaway is None:
                client.pump()
            assert client.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
            assert client.goaway.last_stream_id == 1
            # A stream opened after it (as when the two cross in flight) is refused, not dropped.
            client.conn.send_headers(3, headers)
            client.send_data(3, b"\x00\x00\x00\x00\x00", end=True)
            while client.reset_code(3) is None:
                client.pump()
            assert client.reset_code(3) == h2.errors.ErrorCodes.REFUSED_STREAM
            # The stream in flight ends with a status after the grace period.
            trailers = client.trailers(1)
            assert trailers[b"grpc-status"] == b"14"
        assert process.wait(30) == 0


def _wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _grpc_web_watch(url: str, outcome: dict[str, Any]) -> None:
    """Health/Watch over gRPC-web, reading frames until the stream ends."""
    body = b"\x00\x00\x00\x00\x00"  # an empty HealthCheckRequest
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    frames = b""
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("POST", "/grpc.health.v1.Health/Watch", content=body, headers=headers) as r,
    ):
        for chunk in r.iter_bytes():
            frames += chunk
            if "first" not in outcome and len(frames) >= 5:
                length = int.from_bytes(frames[1:5], "big")
                if len(frames) >= 5 + length:
                    reply = health_pb2.HealthCheckResponse.FromString(frames[5 : 5 + length])
                    outcome["first"] = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        reply.status
                    ).encode()
    status = grpc_web.trailers(frames).get("grpc-status")
    if status is not None:
        outcome["status"] = status


def test_bad_settings_are_refused_clearly(roz_dir: Path) -> None:
    result = subprocess.run(
        [ROZ_SERVER, "serve"],
        env=environment(roz_dir, 8080, ROZ_RATE_LIMIT_RPS="fast"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "ROZ_RATE_LIMIT_RPS must be a number" in result.stderr
