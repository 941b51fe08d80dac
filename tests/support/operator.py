"""An operator as a test drives it: one grpcio StreamSession stream, fed from a queue and read on a
thread, so a test says exactly what the operator sends and sees every event it receives."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from roz.v1 import sessions_pb2 as pb
from roz.v1 import sessions_pb2_grpc

_END = object()


class Operator:
    def __init__(
        self,
        target: str,
        key: str,
        *,
        channel: grpc.Channel | None = None,
        small_window: bool = False,
    ) -> None:
        # small_window: HTTP/2's initial 64 KiB receive window, never grown by grpcio's
        # bandwidth probe, so that an operator that stops reading soon stops the server's sends.
        options = [("grpc.http2.bdp_probe", 0)] if small_window else []
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._own_channel = channel is None
        self._requests: queue.Queue[Any] = queue.Queue()
        self._events: queue.Queue[Any] = queue.Queue()
        stub = sessions_pb2_grpc.SessionServiceStub(self._channel)
        self.call = stub.StreamSession(
            self._outgoing(), metadata=(("authorization", f"Bearer {key}"),)
        )
        self._reading = threading.Event()
        self._reading.set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _outgoing(self) -> Iterator[pb.StreamSessionRequest]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _read(self) -> None:
        try:
            for event in self.call:
                self._events.put(event)
                self._reading.wait()
        except grpc.RpcError:
            pass
        self._events.put(_END)

    def pause(self) -> None:
        """Stops reading the stream (after at most one more event), as a stuck client would."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def send(self, request_id: str = "", **message: Any) -> None:
        self._requests.put(pb.StreamSessionRequest(request_id=request_id, **message))

    def start(self, host_id: str, **fields: Any) -> None:
        self.send(start=pb.StartSession(host_id=host_id, **fields))

    def say(self, content: str, message_id: str = "") -> None:
        self.send(user_message=pb.UserMessage(content=content, message_id=message_id))

    def decide(self, approval_id: str, approved: bool, reason: str = "") -> None:
        self.send(
            permission_decision=pb.PermissionDecision(
                approval_id=approval_id, approved=approved, reason=reason
            )
        )

    def event(self, timeout: float = 10) -> pb.SessionEvent:
        """The next event (checkpoints skipped), within `timeout` seconds (queue.Empty)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self._events.get(timeout=max(deadline - time.monotonic(), 0.001))
            if item is _END:
                raise EOFError(f"the stream ended: {self.call.code()} {self.call.details()}")
            if item.type:
                return item  # type: ignore[no-any-return]

    def until(self, kind: str, timeout: float = 10) -> list[pb.SessionEvent]:
        """Every event up to and including the next one of `kind`."""
        seen: list[pb.SessionEvent] = []
        while True:
            seen.append(self.event(timeout))
            if seen[-1].type == kind:
                return seen

    def nothing_for(self, seconds: float) -> None:
        try:
            item = self._events.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected: {item}")

    def close(self) -> None:
        """Half-closes: the operator is done sending."""
        self._requests.put(_END)

    def cut(self) -> None:
        self.call.cancel()
        self._requests.put(_END)

    def ended(self, timeout: float = 10) -> grpc.StatusCode:
        while True:
            item = self._events.get(timeout=timeout)
            if item is _END:
                code: grpc.StatusCode = self.call.code()
                return code

    def __enter__(self) -> Operator:
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        if self._own_channel:
            self._channel.close()
