"""The server as an operator runs it: `roz-server serve` and `roz-server admin` as processes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import TEST_DATABASE_URL
from tests.support.server import free_port

ROZ_SERVER = str(Path(sys.executable).parent / "roz-server")

pytestmark = pytest.mark.skipif(
    TEST_DATABASE_URL is not None, reason="exercises the embedded default database"
)


def environment(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROZ_") and k != "DATABASE_URL"}
    env.update(ROZ_DATA_DIR=str(data_dir), PORT=str(port), ROZ_SHUTDOWN_GRACE_SECONDS="1", **extra)
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
