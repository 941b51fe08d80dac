"""Device login (RFC 8628) over HTTP as any OAuth client sees it, and the same RPCs over gRPC.

The server's wall clock is a TestClock, so pending, slow_down and expiry are driven by hand
instead of by sleeping.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from roz.v1 import device_auth_pb2 as pb

from tests.e2e.conftest import Roz, RozFactory, TestClock
from tests.e2e.protocols import Rpc, call
from tests.e2e.test_auth import minted

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE = re.compile(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}")


@pytest.fixture
def admin(server: Roz) -> str:
    """A fresh tenant's admin key, so guess limits and keys never leak between tests."""
    return server.new_tenant("device")


@pytest.fixture
def http(server: Roz) -> Iterator[httpx.Client]:
    with server.rest() as client:
        yield client


def request_code(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/api/v1/device/code", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def poll(http: httpx.Client, device_code: str, *, form: bool = True) -> httpx.Response:
    if form:
        return http.post(
            "/api/v1/device/token",
            data={"grant_type": GRANT, "device_code": device_code, "client_id": "test"},
        )
    return http.post("/api/v1/device/token", json={"device_code": device_code})


def oauth_error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) <= {"error", "error_description"}
    return str(body["error"])


def approve(http: httpx.Client, key: str, user_code: str, **body: Any) -> httpx.Response:
    return http.post(
        "/api/v1/device/approve",
        json={"user_code": user_code, **body},
        headers={"authorization": f"Bearer {key}"},
    )


def deny(http: httpx.Client, key: str, user_code: str) -> httpx.Response:
    return http.post(
        "/api/v1/device/deny",
        json={"user_code": user_code},
        headers={"authorization": f"Bearer {key}"},
    )


def caller(http: httpx.Client, key: str) -> httpx.Response:
    return http.get("/api/v1/caller", headers={"authorization": f"Bearer {key}"})


# -- requesting codes ----------------------------------------------------------------------------


def test_a_code_request_answers_every_rfc_8628_field(server: Roz, http: httpx.Client) -> None:
    response = http.post("/api/v1/device/code")  # the seed's bare POST, no body at all
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert len(body["device_code"]) >= 43  # 256 random bits, base64url
    assert USER_CODE.fullmatch(body["user_code"])
    assert body["verification_uri"] == f"{server.url}/device"
    assert body["verification_uri_complete"] == f"{server.url}/device?user_code={body['user_code']}"
    assert body["expires_in"] == 900
    assert body["interval"] == 5


def test_codes_are_unique(http: httpx.Client) -> None:
    codes = [request_code(http) for _ in range(20)]
    assert len({c["device_code"] for c in codes}) == 20
    assert len({c["user_code"] for c in codes}) == 20


def test_a_form_encoded_code_request_works_like_json(http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/device/code", data={"client_id": "cli", "scope": "tasks:read hosts:read"}
    )
    assert response.status_code == 200, response.text
    assert USER_CODE.fullmatch(response.json()["user_code"])


def test_an_unknown_scope_is_invalid_scope(http: httpx.Client) -> None:
    response = http.post("/api/v1/device/code", json={"scope": "tasks:read rockets:launch"})
    assert oauth_error(response) == "invalid_scope"
    assert "rockets:launch" in response.json()["error_description"]
    # A flood of unknown scopes is not echoed back whole.
    flood = http.post("/api/v1/device/code", json={"scope": " ".join(["x"] * 100_000)})
    assert oauth_error(flood) == "invalid_scope"
    assert len(flood.text) < 1000


@pytest.mark.parametrize(
    "body",
    [
        {"client_name": "x" * 101},
        {"client_name": "evil\x1b[2Jname"},
    ],
)
def test_a_bad_client_name_is_invalid_request(http: httpx.Client, body: dict[str, str]) -> None:
    assert oauth_error(http.post("/api/v1/device/code", json=body)) == "invalid_request"


def test_malformed_requests_get_oauth_errors_not_status_bodies(http: httpx.Client) -> None:
    malformed = http.post(
        "/api/v1/device/token", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert oauth_error(malformed) == "invalid_request"
    unsupported = http.post(
        "/api/v1/device/token", content=b"device_code=x", headers={"content-type": "text/plain"}
    )
    assert unsupported.status_code == 415
    assert unsupported.json()["error"] == "invalid_request"


# -- polling -------------------------------------------------------------------------------------


def test_polls_before_approval_are_pending(http: httpx.Client, clock: TestClock) -> None:
    code = request_code(http)
    assert oauth_error(poll(http, code["device_code"], form=False)) == "authorization_pending"
    clock.advance(5)
    assert oauth_error(poll(http, code["device_code"])) == "authorization_pending"


def test_polling_faster_than_the_interval_is_slow_down_and_the_interval_grows(
    http: httpx.Client, clock: TestClock
) -> None:
    device_code = request_code(http)["device_code"]
    assert oauth_error(poll(http, device_code)) == "authorization_pending"
    clock.advance(2)
    slow = poll(http, device_code)
    assert oauth_error(slow) == "slow_down"
    assert "10 seconds" in slow.json()["error_description"]
    # The interval is now 10 s: 6 s later is still too fast, and it grows again.
    clock.advance(6)
    assert oauth_error(poll(http, device_code)) == "slow_down"
    clock.advance(15)
    assert oauth_error(poll(http, device_code)) == "authorization_pending"
    clock.advance(14)
    assert oauth_error(poll(http, device_code)) == "slow_down"  # 15 s are needed now


def test_unknown_and_malformed_device_codes_are_invalid_grant(http: httpx.Client) -> None:
    assert oauth_error(poll(http, "no-such-code")) == "invalid_grant"
    assert oauth_error(poll(http, "x" * 5000)) == "invalid_grant"


def test_a_missing_device_code_is_invalid_request(http: httpx.Client) -> None:
    assert oauth_error(http.post("/api/v1/device/token", data={"grant_type": GRANT})) == (
        "invalid_request"
    )
    assert oauth_error(http.post("/api/v1/device/token", json={})) == "invalid_request"


def test_another_grant_type_is_unsupported(http: httpx.Client) -> None:
    code = request_code(http)
    response = http.post(
        "/api/v1/device/token",
        data={"grant_type": "client_credentials", "device_code": code["device_code"]},
    )
    assert oauth_error(response) == "unsupported_grant_type"


def test_repeated_form_parameters_are_invalid_request(http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/device/token",
        content=b"device_code=a&device_code=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert oauth_error(response) == "invalid_request"


# -- the whole flow ------------------------------------------------------------------------------


def test_approval_mints_one_key_for_the_approver_s_tenant(
    server: Roz, http: httpx.Client, admin: str, clock: TestClock
) -> None:
    code = request_code(http, client_name="roz CLI on lab-3", scope="tasks:write hosts:read")
    assert oauth_error(poll(http, code["device_code"])) == "authorization_pending"
    approved = approve(http, admin, code["user_code"].lower().replace("-", ""))
    assert approved.status_code == 200, approved.text
    assert approved.json() == {}
    clock.advance(5)
    token = poll(http, code["device_code"])
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    assert token.headers["pragma"] == "no-cache"
    body = token.json()
    assert set(body) == {"access_token", "token_type", "scope"}
    assert body["access_token"].startswith("roz_sk_")
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "hosts:read tasks:write"

    me = caller(http, body["access_token"])
    assert me.status_code == 200, me.text
    approver = caller(http, admin).json()
    identity = me.json()
    assert identity["tenant_id"] == approver["tenant_id"]
    assert identity["tenant_name"] == approver["tenant_name"]
    key = identity["api_key"]
    assert sorted(key["scopes"]) == ["hosts:read", "tasks:write"]
    assert key["name"] == f"roz CLI on lab-3 (device login {clock.now.date().isoformat()})"
    assert key["creator_key_id"] == approver["api_key"]["id"]

    # Exactly once: the code is used up, whatever comes next.
    clock.advance(5)
    assert oauth_error(poll(http, code["device_code"])) == "invalid_grant"
    clock.advance(5)
    assert oauth_error(poll(http, code["device_code"], form=False)) == "invalid_grant"
    listed = http.get(
        "/api/v1/auth-keys", headers={"authorization": f"Bearer {admin}"}, params={"page_size": 100}
    ).json()
    assert sum(1 for k in listed["api_keys"] if "device login" in k["name"]) == 1


def test_the_seed_s_json_poll_collects_the_key_too(
    http: httpx.Client, admin: str, clock: TestClock
) -> None:
    code = request_code(http)
    assert approve(http, admin, code["user_code"]).status_code == 200
    token = poll(http, code["device_code"], form=False)
    assert token.status_code == 200, token.text
    # No scope requested: the key carries the approver's own scopes.
    assert token.json()["scope"] == "admin"


def test_concurrent_polls_mint_exactly_one_key(http: httpx.Client, server: Roz, admin: str) -> None:
    code = request_code(http)
    assert approve(http, admin, code["user_code"]).status_code == 200

    def one_poll(_: int) -> httpx.Response:
        with server.rest() as client:
            return poll(client, code["device_code"])

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one_poll, range(8)))
    assert sorted(r.status_code for r in responses) == [200] + [400] * 7
    assert {r.json()["error"] for r in responses if r.status_code == 400} <= {
        "invalid_grant",
        "slow_down",
    }


def test_denial_is_access_denied(http: httpx.Client, admin: str, clock: TestClock) -> None:
    code = request_code(http)
    assert deny(http, admin, code["user_code"]).status_code == 200
    assert oauth_error(poll(http, code["device_code"])) == "access_denied"
    clock.advance(5)
    assert oauth_error(poll(http, code["device_code"])) == "access_denied"
    # A decided login cannot be decided again.
    assert approve(http, admin, code["user_code"]).status_code == 404


def test_an_expired_code_is_expired_token_and_cannot_be_approved(
    http: httpx.Client, admin: str, clock: TestClock
) -> None:
    code = request_code(http)
    clock.advance(900)
    assert oauth_error(poll(http, code["device_code"])) == "expired_token"
    refused = approve(http, admin, code["user_code"])
    assert refused.status_code == 404, refused.text


def test_approving_then_expiring_never_mints(
    http: httpx.Client, admin: str, clock: TestClock
) -> None:
    code = request_code(http)
    assert approve(http, admin, code["user_code"]).status_code == 200
    clock.advance(901)
    assert oauth_error(poll(http, code["device_code"])) == "expired_token"


def test_revoking_the_approver_s_key_before_collection_denies_the_login(
    http: httpx.Client, server: Roz, admin: str
) -> None:
    approver = minted(server, ["api-keys:admin"], admin)
    code = request_code(http)
    assert approve(http, approver, code["user_code"]).status_code == 200
    approver_id = caller(http, approver).json()["api_key"]["id"]
    revoked = http.delete(
        f"/api/v1/auth-keys/{approver_id}", headers={"authorization": f"Bearer {admin}"}
    )
    assert revoked.status_code == 204
    assert oauth_error(poll(http, code["device_code"])) == "access_denied"


# -- what an approval may grant -------------------------------------------------------------------


def test_approving_needs_the_api_keys_admin_scope(
    http: httpx.Client, server: Roz, admin: str
) -> None:
    weak = minted(server, ["tasks:admin"], admin)
    code = request_code(http)
    refused = approve(http, weak, code["user_code"])
    assert refused.status_code == 403
    assert refused.json()["message"] == "this API key lacks the scope 'api-keys:admin'"
    assert oauth_error(poll(http, code["device_code"])) == "authorization_pending"
    anonymous = http.post("/api/v1/device/approve", json={"user_code": code["user_code"]})
    assert anonymous.status_code == 401


def test_an_approver_cannot_grant_more_than_they_hold(
    http: httpx.Client, server: Roz, admin: str, clock: TestClock
) -> None:
    approver = minted(server, ["api-keys:admin", "tasks:read"], admin)
    code = request_code(http, scope="tasks:write")
    refused = approve(http, approver, code["user_code"])
    assert refused.status_code == 403, refused.text
    assert "tasks:write" in refused.json()["message"]
    # With no scope requested, the default is exactly what the approver holds.
    open_code = request_code(http)
    assert approve(http, approver, open_code["user_code"]).status_code == 200
    assert poll(http, open_code["device_code"]).json()["scope"] == "api-keys:admin tasks:read"


def test_an_approver_may_narrow_but_not_widen_the_request(http: httpx.Client, admin: str) -> None:
    code = request_code(http, scope="tasks:write hosts:read")
    widened = approve(http, admin, code["user_code"], scopes=["tasks:write", "commands:write"])
    assert widened.status_code == 400
    violation = widened.json()["details"][0]["field_violations"][0]
    assert violation["field"] == "scopes"
    assert "commands:write" in violation["description"]
    unknown = approve(http, admin, code["user_code"], scopes=["bogus"])
    assert unknown.status_code == 400
    narrowed = approve(http, admin, code["user_code"], scopes=["hosts:read"])
    assert narrowed.status_code == 200, narrowed.text
    assert poll(http, code["device_code"]).json()["scope"] == "hosts:read"


def test_the_minted_key_sees_only_the_approver_s_tenant(
    http: httpx.Client, server: Roz, admin: str
) -> None:
    other = server.new_tenant("other")
    created = http.post(
        "/api/v1/environments",
        json={"name": f"other-{uuid.uuid4().hex[:6]}", "kind": "simulation"},
        headers={"authorization": f"Bearer {other}"},
    )
    assert created.status_code == 201, created.text
    code = request_code(http, scope="environments:read")
    assert approve(http, admin, code["user_code"]).status_code == 200
    key = poll(http, code["device_code"]).json()["access_token"]
    seen = http.get(
        f"/api/v1/environments/{created.json()['id']}", headers={"authorization": f"Bearer {key}"}
    )
    assert seen.status_code == 404


def test_a_user_code_of_the_wrong_shape_is_not_found(http: httpx.Client, admin: str) -> None:
    for text in ("AAAA-AAAA", "BCDF", "", "BCDF-GHJK-LMNP"):
        response = approve(http, admin, text)
        assert response.status_code in (400, 404), (text, response.text)


# -- brute force -------------------------------------------------------------------------------


def test_wrong_user_codes_are_limited_per_client(roz_factory: RozFactory, clock: TestClock) -> None:
    server = roz_factory(clock=clock, device_guesses_per_minute=3)
    admin = server.new_tenant("guesser")
    with server.rest() as http:
        code = request_code(http)
        for _ in range(3):
            assert approve(http, admin, "BCDF-GHJK").status_code == 404
        limited = approve(http, admin, code["user_code"])  # even the right code, now
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["retry-after"]) >= 1
        assert oauth_error(poll(http, code["device_code"])) == "authorization_pending"


def test_wrong_user_codes_are_limited_for_everyone_together(
    roz_factory: RozFactory, clock: TestClock
) -> None:
    server = roz_factory(
        clock=clock, device_guesses_per_minute=100, device_guesses_per_minute_total=4
    )
    first, second = server.new_tenant("a"), server.new_tenant("b")
    with server.rest() as http:
        for key in (first, second, first, second):
            assert approve(http, key, "BCDF-GHJK").status_code == 404
        third = server.new_tenant("c")
        assert approve(http, third, "BCDF-GHJK").status_code == 429


def test_code_requests_are_rate_limited_per_address(
    roz_factory: RozFactory, clock: TestClock
) -> None:
    server = roz_factory(clock=clock, rate_limit_rps=0.01, rate_limit_burst=2)
    with server.rest() as http:
        assert http.post("/api/v1/device/code").status_code == 200
        assert http.post("/api/v1/device/code").status_code == 200
        limited = http.post("/api/v1/device/code")
    assert limited.status_code == 429
    assert limited.json()["error"] == "slow_down"
    assert int(limited.headers["retry-after"]) >= 1


# -- the same service over gRPC ----------------------------------------------------------------


def _exchange(device_code: str) -> Rpc:
    return Rpc(
        "/roz.v1.DeviceAuthService/ExchangeDeviceCode",
        pb.ExchangeDeviceCodeRequest(device_code=device_code, grant_type=GRANT),
        pb.ExchangeDeviceCodeResponse,
        "POST",
        "/api/v1/device/token",
    )


def test_over_grpc_each_answer_is_a_status_with_the_oauth_reason(
    server: Roz, http: httpx.Client, admin: str, clock: TestClock
) -> None:
    with server.channel() as channel:
        stub = channel.unary_unary(
            "/roz.v1.DeviceAuthService/RequestDeviceCode",
            request_serializer=pb.RequestDeviceCodeRequest.SerializeToString,
            response_deserializer=pb.RequestDeviceCodeResponse.FromString,
        )
        code = stub(pb.RequestDeviceCodeRequest(client_name="grpc client"), timeout=30)
    assert USER_CODE.fullmatch(code.user_code)

    pending = call("grpc", server, _exchange(code.device_code), None)
    assert pending.code == grpc.StatusCode.FAILED_PRECONDITION
    assert pending.detail(error_details_pb2.ErrorInfo).reason == "AUTHORIZATION_PENDING"

    slow = call("grpc", server, _exchange(code.device_code), None)
    assert slow.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert slow.detail(error_details_pb2.ErrorInfo).reason == "SLOW_DOWN"
    assert slow.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 10

    assert approve(http, admin, code.user_code).status_code == 200
    token = call("grpc", server, _exchange(code.device_code), None)
    assert token.code == grpc.StatusCode.OK, token.message
    assert token.response.access_token.startswith("roz_sk_")  # type: ignore[union-attr]

    used = call("grpc", server, _exchange(code.device_code), None)
    assert used.code == grpc.StatusCode.NOT_FOUND
    assert used.detail(error_details_pb2.ErrorInfo).reason == "INVALID_GRANT"


# -- the caller's own key --------------------------------------------------------------------------


def test_any_key_can_see_and_revoke_itself(http: httpx.Client, server: Roz, admin: str) -> None:
    key = minted(server, ["tasks:read"], admin)
    me = caller(http, key)
    assert me.status_code == 200, me.text
    assert me.json()["api_key"]["scopes"] == ["tasks:read"]
    assert me.json()["tenant_name"].startswith("device-")
    revoked = http.delete("/api/v1/caller/api-key", headers={"authorization": f"Bearer {key}"})
    assert revoked.status_code == 204
    assert caller(http, key).status_code == 401
    assert caller(http, admin).status_code == 200
    assert http.get("/api/v1/caller").status_code == 401
