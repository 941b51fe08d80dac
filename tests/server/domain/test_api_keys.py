"""API-key format, hashing and the rules for a new key."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from server.domain import api_keys
from server.domain.errors import InvalidArgument, PermissionDenied

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_minted_secrets_have_the_documented_format() -> None:
    secrets = {api_keys.mint_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert secret.startswith("roz_sk_")
        assert len(secret) == 50
        assert api_keys.looks_like_key(secret)
        raw = base64.urlsafe_b64decode(secret[7:] + "=")
        assert len(raw) == 32


def test_prefix_and_hash() -> None:
    secret = api_keys.mint_secret()
    assert api_keys.key_prefix(secret) == secret[:16]
    assert api_keys.hash_secret(secret) == hashlib.sha256(secret.encode()).digest()
    assert api_keys.hash_secret(secret) != api_keys.hash_secret(api_keys.mint_secret())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "roz_sk_",
        "roz_pk_" + "A" * 43,
        "ROZ_SK_" + "A" * 43,
        "roz_sk_" + "A" * 42,
        "roz_sk_" + "A" * 44,
        "roz_sk_" + "A" * 42 + "+",
        "roz_sk_" + "A" * 42 + "/",
        " roz_sk_" + "A" * 43,
        "roz_sk_" + "A" * 43 + "\n",
    ],
)
def test_looks_like_key_is_exact(text: str) -> None:
    assert not api_keys.looks_like_key(text)


def test_a_valid_new_key() -> None:
    new = api_keys.validate_new_key(
        "ci", ["environments:read", "environments:read"], NOW + timedelta(days=1), now=NOW
    )
    assert new == api_keys.NewApiKey(
        "ci", frozenset({"environments:read"}), NOW + timedelta(days=1)
    )


def test_every_problem_of_a_new_key_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        api_keys.validate_new_key("bad\tname", ["admin", "root"], NOW, now=NOW)
    assert [v.field for v in raised.value.violations] == [
        "api_key.name",
        "api_key.scopes[1]",
        "api_key.expire_time",
    ]


@pytest.mark.parametrize("name", ["", " ", "x" * 129, "a\x00b", "line\nbreak"])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        api_keys.validate_new_key(name, [], None, now=NOW)
    assert [v.field for v in raised.value.violations] == ["api_key.name"]


def test_a_naive_expiry_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        api_keys.validate_new_key("n", [], datetime(2030, 1, 1), now=NOW)


def test_usable_means_neither_revoked_nor_expired() -> None:
    key = api_keys.ApiKey(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        name="k",
        key_prefix="roz_sk_abcdefghi",
        scopes=frozenset(),
        create_time=NOW,
        expire_time=None,
        last_used_time=None,
        revoke_time=None,
        created_by_key_id=None,
    )
    assert key.is_usable(NOW)
    expiring = replace(key, expire_time=NOW + timedelta(seconds=1))
    assert expiring.is_usable(NOW)
    assert not expiring.is_usable(NOW + timedelta(seconds=1))
    assert not replace(key, revoke_time=NOW).is_usable(NOW)


def test_check_mintable() -> None:
    api_keys.check_mintable(frozenset({"admin"}), frozenset({"admin"}))
    with pytest.raises(PermissionDenied, match="hosts:write"):
        api_keys.check_mintable(frozenset({"api-keys:admin"}), frozenset({"hosts:write"}))


def test_a_key_bound_to_a_host_asks_for_no_scopes() -> None:
    host = uuid.uuid4()
    new = api_keys.validate_new_key("arm", [], None, now=NOW, host_id=str(host))
    assert (new.host_id, new.scopes) == (host, frozenset())
    with pytest.raises(InvalidArgument) as raised:
        api_keys.validate_new_key("arm", ["hosts:read"], None, now=NOW, host_id=str(host))
    assert [v.field for v in raised.value.violations] == ["api_key.scopes"]
    with pytest.raises(InvalidArgument) as raised:
        api_keys.validate_new_key("arm", [], None, now=NOW, host_id="arm-1")
    assert [v.field for v in raised.value.violations] == ["api_key.host_id"]


def test_minting_a_robot_key_needs_what_a_robot_does() -> None:
    robot = api_keys.validate_new_key("arm", [], None, now=NOW, host_id=str(uuid.uuid4()))
    api_keys.check_new_key_mintable(frozenset({"admin"}), robot)
    api_keys.check_new_key_mintable(
        frozenset({"hosts:admin", "commands:write", "tasks:write"}), robot
    )
    with pytest.raises(PermissionDenied) as raised:
        api_keys.check_new_key_mintable(frozenset({"api-keys:admin", "hosts:write"}), robot)
    assert raised.value.required_scope == "commands:write"
    # An ordinary key without scopes needs nothing.
    api_keys.check_new_key_mintable(frozenset(), replace(robot, host_id=None))
