"""How a server address becomes a gRPC target, a transport and a REST base."""

from __future__ import annotations

import pytest

from roz_robot.endpoint import Endpoint, InvalidServer, parse_server


@pytest.mark.parametrize(
    ("server", "endpoint", "rest_url"),
    [
        ("localhost:8080", Endpoint("localhost:8080", tls=False), "http://localhost:8080"),
        ("10.0.0.7:9000", Endpoint("10.0.0.7:9000", tls=False), "http://10.0.0.7:9000"),
        ("robot-gw", Endpoint("robot-gw:80", tls=False), "http://robot-gw:80"),
        ("http://Roz.Local:8080/", Endpoint("roz.local:8080", tls=False), "http://roz.local:8080"),
        ("https://roz.example.com", Endpoint("roz.example.com:443", tls=True), None),
        ("HTTPS://roz.example.com:8443", Endpoint("roz.example.com:8443", tls=True), None),
        ("http://[::1]:8080", Endpoint("[::1]:8080", tls=False), "http://[::1]:8080"),
        ("  localhost:8080\n", Endpoint("localhost:8080", tls=False), None),
    ],
)
def test_servers_as_people_write_them(
    server: str, endpoint: Endpoint, rest_url: str | None
) -> None:
    assert parse_server(server) == endpoint
    if rest_url is not None:
        assert endpoint.rest_url == rest_url


def test_a_tls_server_has_an_https_rest_base() -> None:
    assert parse_server("https://roz.example.com").rest_url == "https://roz.example.com:443"


@pytest.mark.parametrize(
    ("server", "complaint"),
    [
        ("", "empty"),
        ("ftp://roz.example.com", r"host:port or an http\(s\) URL"),
        ("http://:8080", "names no host"),
        ("https://user:secret@roz.example.com", "user name or password"),
        ("https://roz.example.com/api", "path or query"),
        ("localhost:8080?x=1", "path or query"),
        ("localhost:http", "invalid port"),
        ("localhost:99999", "invalid port"),
    ],
)
def test_addresses_that_cannot_be_meant_are_refused(server: str, complaint: str) -> None:
    with pytest.raises(InvalidServer, match=complaint):
        parse_server(server)
