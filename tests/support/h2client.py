"""A raw HTTP/2 client over a blocking socket: frames as a test means them, nothing retried."""

from __future__ import annotations

import select
import socket

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


class H2Client:
    def __init__(self, sock: socket.socket, *, window: int | None = None) -> None:
        """`window`: the initial stream window the client advertises (None: h2's default, and
        a large connection window)."""
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window},
            )
        self.conn.initiate_connection()
        if window is None:
            self.conn.increment_flow_control_window(2**24)
        self.flush()
        self.responses: dict[int, list[h2.events.Event]] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.goaway: h2.events.ConnectionTerminated | None = None

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            if self.terminated is not None:
                raise ConnectionError(f"GOAWAY: {self.terminated}")
            raise ConnectionError("the server closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ConnectionTerminated):
                if self.goaway is None and event.error_code == h2.errors.ErrorCodes.NO_ERROR:
                    # A graceful GOAWAY: the streams in flight go on (RFC 9113 §6.8). h2 takes
                    # any GOAWAY as the end, so its state machine is put back to open.
                    self.goaway = event
                    self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
                    continue
                self.terminated = event
            stream_id = getattr(event, "stream_id", None)
            if stream_id:
                self.responses.setdefault(stream_id, []).append(event)
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        self.flush()

    def finished(self, stream_id: int) -> bool:
        return any(
            isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
            for e in self.responses.get(stream_id, [])
        )

    def was_reset(self, stream_id: int) -> bool:
        return any(isinstance(e, h2.events.StreamReset) for e in self.responses.get(stream_id, []))

    def wait(self, stream_id: int) -> tuple[int, bytes]:
        while not self.finished(stream_id):
            if self.terminated is not None:
                raise ConnectionError(f"GOAWAY: {self.terminated}")
            self.pump()
        status, body = 0, b""
        for event in self.responses[stream_id]:
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
        return status, body

    def send_data(self, stream_id: int, data: bytes, *, end: bool) -> bool:
        """Sends as flow control allows; False once the server has reset the stream."""
        view = memoryview(data)
        try:
            while view:
                if self.was_reset(stream_id):
                    return False
                window = min(
                    self.conn.local_flow_control_window(stream_id),
                    self.conn.max_outbound_frame_size,
                )
                if window <= 0:
                    self.pump()
                    continue
                self.conn.send_data(stream_id, bytes(view[:window]))
                view = view[window:]
                self.flush()
            if end and not self.was_reset(stream_id):
                self.conn.end_stream(stream_id)
                self.flush()
        except h2.exceptions.StreamClosedError:
            return False
        return True

    def pump_ready(self) -> None:
        """Reads what has already arrived, without waiting."""
        while select.select([self.sock], [], [], 0)[0]:
            self.pump()

    def wait_closed(self) -> None:
        """Reads until the server closes the connection (raises ConnectionError then)."""
        while True:
            if self.terminated is not None:
                raise ConnectionError(f"GOAWAY: {self.terminated}")
            self.pump()

    def reset_code(self, stream_id: int) -> int | None:
        for event in self.responses.get(stream_id, []):
            if isinstance(event, h2.events.StreamReset):
                return int(event.error_code)
        return None

    def trailers(self, stream_id: int) -> dict[bytes, bytes]:
        """The stream's trailers (or, for a trailers-only answer, its headers)."""
        self.wait(stream_id)
        found: dict[bytes, bytes] = {}
        for event in self.responses[stream_id]:
            if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                found.update(dict(event.headers))
        return found
