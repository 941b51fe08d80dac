"""The fallback load generator, for machines without h2load: asyncio in the bench process.

gRPC goes through grpcio's aio client (one channel per connection, each with its own subchannel,
so connections are really separate); HTTP/1.1 through a raw keep-alive client. Unlike h2load it
spends a lot of Python CPU per request, on the same cores as the servers, so its figures are
lower and its ratios less sharp; the report says which generator ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from bench.load import LoadResult, percentile_ms
from bench.scenarios import Side, Wire
from bench.servers import HOST

CALL_TIMEOUT_SECONDS = 30.0
_GRPC_ONLY_HEADERS = frozenset({"content-type", "te"})


@dataclass
class Tally:
    measure_from: float
    stop_at: float
    succeeded: int = 0
    failed: int = 0
    latencies_us: list[int] = field(default_factory=list)

    def record(self, started: float, ok: bool) -> None:
        if started < self.measure_from:
            return  # warm-up
        if ok:
            self.succeeded += 1
            self.latencies_us.append(int((time.perf_counter() - started) * 1e6))
        else:
            self.failed += 1


class AsyncioLoad:
    name = "asyncio load generator (Python, in the bench process)"
    short = "asyncio (Python)"

    def run(self, side: Side, seconds: int, warmup_seconds: int) -> LoadResult:
        return asyncio.run(self._run(side, seconds, warmup_seconds))

    async def _run(self, side: Side, seconds: int, warmup_seconds: int) -> LoadResult:
        now = time.perf_counter()
        tally = Tally(measure_from=now + warmup_seconds, stop_at=now + warmup_seconds + seconds)
        if side.wire is Wire.H2C:
            await _grpc_load(side, tally)
        else:
            await asyncio.gather(
                *(_http1_worker(side, tally) for _ in range(side.load.connections))
            )
        return LoadResult(
            requests_per_second=tally.succeeded / seconds,
            succeeded=tally.succeeded,
            failed=tally.failed,
            p50_ms=percentile_ms(tally.latencies_us, 0.50),
            p99_ms=percentile_ms(tally.latencies_us, 0.99),
        )


async def _grpc_load(side: Side, tally: Tally) -> None:
    assert side.body is not None
    request = side.body[5:]  # grpcio frames the message itself
    metadata = tuple(
        (name, value) for name, value in side.headers if name not in _GRPC_ONLY_HEADERS
    )
    channels = [
        grpc.aio.insecure_channel(
            f"{HOST}:{side.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(side.load.connections)
    ]
    try:

        async def worker(channel: grpc.aio.Channel) -> None:
            call = channel.unary_unary(side.path)  # bytes in, bytes out
            while (started := time.perf_counter()) < tally.stop_at:
                try:
                    await call(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.RpcError:
                    tally.record(started, ok=False)
                else:
                    tally.record(started, ok=True)

        await asyncio.gather(
            *(worker(channel) for channel in channels for _ in range(side.load.streams))
        )
    finally:
        for channel in channels:
            await channel.close()


def http1_request(
    method: str, path: str, port: int, headers: Sequence[tuple[str, str]], body: bytes | None
) -> bytes:
    """One HTTP/1.1 request as bytes on the wire."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def _http1_worker(side: Side, tally: Tally) -> None:
    request = http1_request(side.method, side.path, side.port, side.headers, side.body)
    reader, writer = await asyncio.open_connection(HOST, side.port)
    try:
        while (started := time.perf_counter()) < tally.stop_at:
            writer.write(request)
            status, keep_alive = await read_response(reader)
            tally.record(started, ok=200 <= status < 300)
            if not keep_alive:
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, side.port)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one whole response; returns its status and whether the connection stays open."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break  # no trailers on HTTP/1.1 here: the last chunk's CRLF ended it
    return status, headers.get("connection") != "close"
