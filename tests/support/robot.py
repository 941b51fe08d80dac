"""A robot as a test drives it: one grpcio Connect stream, fed from a queue and read on a thread,
so a test says exactly what the robot sends and sees exactly what it receives."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
from roz.v1 import robot_link_pb2 as pb
from roz.v1 import robot_link_pb2_grpc

_END = object()


class Robot:
    def __init__(
        self,
        target: str,
        key: str,
        *,
        host_id: str = "",
        last_received: int = 0,
        hello: bool = True,
        channel: grpc.Channel | None = None,
        small_window: bool = False,
    ) -> None:
        # small_window: HTTP/2's initial 64 KiB receive window, never grown by grpcio's
        # bandwidth probe, so that a robot that stops reading soon stops the server's sends.
        options = [("grpc.http2.bdp_probe", 0)] if small_window else []
        self._channel = channel or grpc.insecure_channel(target, options=options)
        self._own_channel = channel is None
        self._requests: queue.Queue[Any] = queue.Queue()
        self._responses: queue.Queue[Any] = queue.Queue()
        stub = robot_link_pb2_grpc.RobotLinkServiceStub(self._channel)
        self.call = stub.Connect(self._outgoing(), metadata=(("authorization", f"Bearer {key}"),))
        self._reading = threading.Event()
        self._reading.set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if hello:
            self.send(hello=pb.Hello(host_id=host_id, last_received_sequence=last_received))

    def _outgoing(self) -> Iterator[pb.ConnectRequest]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
                self._reading.wait()
        except grpc.RpcError:
            pass
        self._responses.put(_END)

    def pause(self) -> None:
        """Stops reading from the stream (after at most one more message), as a robot whose
        code hangs would; the server's flow control then holds its sends back."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def send(self, **message: Any) -> None:
        self._requests.put(pb.ConnectRequest(**message))

    def receive(self, *kinds: str, timeout: float = 10) -> pb.ConnectResponse:
        """The next response of one of `kinds` (keepalives skipped unless asked for)."""
        while True:
            response = self._responses.get(timeout=timeout)
            if response is _END:
                raise EOFError(f"the stream ended: {self.code()} {self.details()}")
            which = response.WhichOneof("message")
            if which == "keepalive" and "keepalive" not in kinds:
                continue
            if kinds and which not in kinds:
                raise AssertionError(f"expected {kinds}, got {which}: {response}")
            return response

    def welcome(self) -> pb.Welcome:
        return self.receive("welcome").welcome

    def delivery(self, timeout: float = 10) -> pb.Delivery:
        return self.receive("delivery", timeout=timeout).delivery

    def nothing_for(self, seconds: float) -> None:
        """Asserts that nothing but keepalives arrives for `seconds`."""
        try:
            response = self.receive(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected: {response}")

    def ack(self, sequence: int) -> None:
        self.send(ack=pb.Ack(sequence=sequence))

    def close(self) -> None:
        """Half-closes (the robot leaves) and waits for the stream's end."""
        self._requests.put(_END)

    def cut(self) -> None:
        """Cancels the call, as a dropped connection would."""
        self.call.cancel()
        self._requests.put(_END)

    def ended(self, timeout: float = 10) -> grpc.StatusCode:
        """Waits for the end of the stream and returns its status."""
        while True:
            response = self._responses.get(timeout=timeout)
            if response is _END:
                return self.code()

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self.call.code()
        return code

    def details(self) -> str:
        return str(self.call.details())

    def __enter__(self) -> Robot:
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        if self._own_channel:
            self._channel.close()
