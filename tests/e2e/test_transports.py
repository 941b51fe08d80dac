"""The one port's transports: TLS (h2, HTTP/1.1) when configured, else h2c and HTTP/1.1."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from roz.v1 import environments_pb2, environments_pb2_grpc

from tests.e2e.conftest import Roz, RozFactory


@pytest.fixture(scope="module")
def tls_roz(roz_factory: RozFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[Roz, bytes]:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    certificate.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    roz = roz_factory(tls_cert=Path(cert_file), tls_key=Path(key_file))
    return roz, ca.cert_pem.bytes()


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


@pytest.mark.parametrize("http2", [False, True])
def test_rest_over_tls(tls_roz: tuple[Roz, bytes], http2: bool) -> None:
    roz, ca_pem = tls_roz
    url = f"https://{roz.listener.target}"
    with httpx.Client(verify=client_context(ca_pem), http2=http2) as client:
        response = client.get(url + "/health")
    with pytest.raises(httpx.TransportError):  # no plaintext beside TLS on the port
        httpx.get(f"http://{roz.listener.target}/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")


def test_grpc_over_tls(tls_roz: tuple[Roz, bytes]) -> None:
    roz, ca_pem = tls_roz
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(roz.listener.target, credentials) as channel:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        response = stub.ListEnvironments(
            environments_pb2.ListEnvironmentsRequest(),
            metadata=[("authorization", f"Bearer {roz.admin_key}")],
            timeout=30,
        )
    assert response.next_page_token == ""


def test_rest_over_h2c_with_prior_knowledge(roz: Roz) -> None:
    with httpx.Client(http1=False, http2=True, base_url=roz.url) as client:
        response = client.get("/health")
    assert response.http_version == "HTTP/2"
    assert response.json() == {"status": "ok"}
