"""The soak: the server's memory before and after many mixed calls and abandoned streams.

After a warm-up (imports, caches, the pool at its size), the server's RSS is read from /proc; then
`calls` mixed calls (gRPC, REST and gRPC-web reads, refusals on each, reflection) run with a few
in flight on each protocol, and `abandoned` streams are opened on raw HTTP/2 connections whose
clients advertise a one-byte window, send reflection requests, never read and close the socket.
RSS is read after each phase, once the server has had a moment to let go. Goal: back within 10%
of the start.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import uuid
from dataclasses import dataclass

import grpc
import h2.config
import h2.connection
import h2.settings
import httpx
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from roz.v1 import environments_pb2, environments_pb2_grpc

from bench.servers import HOST, Endpoints

WARMUP_CALLS = 2_000
IN_FLIGHT = 8  # per protocol
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
STREAMS_PER_CONNECTION = 10


@dataclass(frozen=True)
class SoakResult:
    calls: int
    abandoned: int
    failed: int  # calls whose outcome was not the expected one
    seconds: float
    rss_start: int
    rss_after_calls: int
    rss_end: int

    @property
    def end_ratio(self) -> float:
        return self.rss_end / self.rss_start


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _framed(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


class _Mix:
    """One protocol's share of the mixed calls, each checked for the outcome it must have."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        target = f"{HOST}:{endpoints.roz_port}"
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = environments_pb2_grpc.EnvironmentServiceStub(self.channel)
        self.reflection = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        self.http = httpx.AsyncClient(base_url=f"http://{target}", timeout=30)
        self.auth = [("authorization", f"Bearer {endpoints.api_key}")]
        request = environments_pb2.GetEnvironmentRequest(id=endpoints.environment_id)
        self.grpc_web_body = _framed(request.SerializeToString())
        self.failed = 0

    async def close(self) -> None:
        await self.channel.close()
        await self.http.aclose()

    async def call(self, number: int) -> None:
        kind = number % 10
        ok = await [
            self._grpc_get,
            self._grpc_get,
            self._rest_get,
            self._rest_get,
            self._grpc_web_get,
            self._grpc_get,
            self._rest_missing,
            self._grpc_unauthenticated,
            self._reflection_list,
            self._grpc_web_get,
        ][kind]()
        if not ok:
            self.failed += 1

    async def _grpc_get(self) -> bool:
        request = environments_pb2.GetEnvironmentRequest(id=self.endpoints.environment_id)
        reply = await self.stub.GetEnvironment(request, metadata=self.auth, timeout=30)
        return bool(reply.id == self.endpoints.environment_id)

    async def _grpc_unauthenticated(self) -> bool:
        request = environments_pb2.GetEnvironmentRequest(id=self.endpoints.environment_id)
        try:
            await self.stub.GetEnvironment(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    async def _reflection_list(self) -> bool:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in self.reflection.ServerReflectionInfo(iter([request]), timeout=30):
            return bool(reply.list_services_response.service)
        return False

    async def _rest_get(self) -> bool:
        path = f"/api/v1/environments/{self.endpoints.environment_id}"
        answer = await self.http.get(path, headers=dict(self.auth))
        return answer.status_code == 200

    async def _rest_missing(self) -> bool:
        answer = await self.http.get(
            f"/api/v1/environments/{uuid.uuid4()}", headers=dict(self.auth)
        )
        return answer.status_code == 404

    async def _grpc_web_get(self) -> bool:
        answer = await self.http.post(
            "/roz.v1.EnvironmentService/GetEnvironment",
            content=self.grpc_web_body,
            headers={
                **dict(self.auth),
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
            },
        )
        return answer.status_code == 200 and b"grpc-status:0" in answer.content.replace(b" ", b"")


async def _mixed_calls(endpoints: Endpoints, calls: int) -> int:
    mix = _Mix(endpoints)
    counter = iter(range(calls))

    async def worker() -> None:
        for number in counter:
            try:
                await mix.call(number)
            except (grpc.aio.AioRpcError, httpx.HTTPError):
                mix.failed += 1

    try:
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT * 3)))
    finally:
        await mix.close()
    return mix.failed


def _abandon_streams(port: int, streams: int) -> None:
    """Opens `streams` reflection streams on connections that never read, then drops them."""
    request = _framed(
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="roz.v1.EnvironmentService"
        ).SerializeToString()
    )
    for _ in range(0, streams, STREAMS_PER_CONNECTION):
        with socket.create_connection((HOST, port), timeout=10) as sock:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1}
            )
            conn.initiate_connection()
            for index in range(STREAMS_PER_CONNECTION):
                stream_id = 1 + 2 * index
                conn.send_headers(
                    stream_id,
                    [
                        (":method", "POST"),
                        (":path", REFLECTION),
                        (":scheme", "http"),
                        (":authority", f"{HOST}:{port}"),
                        ("content-type", "application/grpc"),
                        ("te", "trailers"),
                    ],
                )
                conn.send_data(stream_id, request * 20)
            sock.sendall(conn.data_to_send())
            time.sleep(0.005)  # the server starts answering into the one-byte window


def _settled_rss(pid: int) -> int:
    """RSS once the server has had a moment to finish what the clients left behind."""
    time.sleep(2)
    return rss_of(pid)


def soak(endpoints: Endpoints, calls: int, abandoned: int) -> SoakResult:
    pid = endpoints.server_pid
    asyncio.run(_mixed_calls(endpoints, WARMUP_CALLS))
    rss_start = _settled_rss(pid)
    started = time.monotonic()
    failed = asyncio.run(_mixed_calls(endpoints, calls))
    rss_after_calls = _settled_rss(pid)
    _abandon_streams(endpoints.roz_port, abandoned)
    seconds = time.monotonic() - started
    return SoakResult(
        calls=calls,
        abandoned=abandoned,
        failed=failed,
        seconds=seconds,
        rss_start=rss_start,
        rss_after_calls=rss_after_calls,
        rss_end=_settled_rss(pid),
    )


def render(result: SoakResult) -> str:
    mib = 1024 * 1024
    verdict = "PASS" if result.end_ratio <= 1.10 else "BELOW GOAL"
    return "\n".join(
        [
            "",
            "## Soak: server memory (RSS) before and after",
            "",
            "| phase | RSS | vs. start |",
            "|---|---|---|",
            f"| start (after {WARMUP_CALLS:,} warm-up calls) | "
            f"{result.rss_start / mib:.1f} MiB | |",
            f"| after {result.calls:,} mixed calls | {result.rss_after_calls / mib:.1f} MiB | "
            f"{result.rss_after_calls / result.rss_start:.2f}x |",
            f"| after {result.abandoned:,} abandoned streams | {result.rss_end / mib:.1f} MiB | "
            f"{result.end_ratio:.2f}x (goal <= 1.10x: {verdict}) |",
            "",
            f"{result.calls:,} calls in {result.seconds:.0f} s with {IN_FLIGHT * 3} in flight "
            "(gRPC, REST and gRPC-web reads; a 404, an UNAUTHENTICATED, reflection), "
            f"{result.failed} with an unexpected outcome; streams abandoned on connections of "
            f"{STREAMS_PER_CONNECTION} with a one-byte window, never read.",
        ]
    )
