"""`roz audit verify` as a user runs it, against a live roz server whose database is tampered
with behind its back: intact, broken (and which entry), and rewritten (caught with --expect)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from tests.cli.test_login_live import roz
from tests.e2e.conftest import (  # noqa: F401  (the fixtures)
    Roz,
    RozFactory,
    postgres,
    roz_factory,
)
from tests.e2e.test_commands import Cell, rest

HEAD = re.compile(r"Head: (\d+:[0-9a-f]{64})")


@pytest.fixture(scope="module")
def server(roz_factory: RozFactory) -> Roz:  # noqa: F811
    return roz_factory(rate_limit_rps=100_000.0, rate_limit_burst=100_000)


def owner_sql(server: Roz, statement: str) -> None:
    with psycopg.connect(server.app.database.owner_dsn) as conn:
        conn.execute("ALTER TABLE roz.audit_events DISABLE TRIGGER USER")
        conn.execute(statement)
        conn.execute("ALTER TABLE roz.audit_events ENABLE TRIGGER USER")


def test_verify_says_intact_then_names_the_altered_entry(server: Roz, tmp_path: Path) -> None:
    key = server.new_tenant("cli-audit")
    cell = Cell(server, key)
    for _ in range(2):
        body = {"host_id": cell.host_id, "type": "wave", "params": {}}
        rest(server, key, "POST", "/api/v1/commands", json=body)
    config = tmp_path / "config"

    good = roz(config, "audit", "verify", "--server", server.url, ROZ_API_KEY=key)
    assert good.returncode == 0, good.stderr
    assert f"The audit trail on {server.url} is intact: 4 entries." in good.stdout
    as_json = roz(config, "audit", "verify", "--json", "--server", server.url, ROZ_API_KEY=key)
    assert json.loads(as_json.stdout)["verified_entries"] == 4

    tenant = rest(server, key, "GET", "/api/v1/caller")["tenant_id"]
    owner_sql(
        server,
        "UPDATE roz.audit_events SET event_time = event_time - interval '1 hour'"
        f" WHERE tenant_id = '{tenant}' AND sequence = 3",
    )
    bad = roz(config, "audit", "verify", "--server", server.url, ROZ_API_KEY=key)
    assert bad.returncode == 1
    assert f"The audit trail on {server.url} is BROKEN at entry 3 (altered)" in bad.stdout
    assert "Verified good before it: 2 entries." in bad.stdout


def test_expect_catches_a_trail_rewritten_and_rehashed(server: Roz, tmp_path: Path) -> None:
    key = server.new_tenant("cli-rewrite")
    Cell(server, key)
    config = tmp_path / "config"
    first = roz(config, "audit", "verify", "--server", server.url, ROZ_API_KEY=key)
    match = HEAD.search(first.stdout)
    assert match is not None, first.stdout
    head = match.group(1)
    again = roz(
        config, "audit", "verify", "--expect", head, "--server", server.url, ROZ_API_KEY=key
    )
    assert again.returncode == 0, again.stdout + again.stderr

    # Whoever holds the owner's credentials can rewrite an entry and rehash everything after
    # it, head included: the chain verifies again. Only an entry seen before can tell.
    tenant = rest(server, key, "GET", "/api/v1/caller")["tenant_id"]
    owner_sql(
        server,
        f"""DO $$
        DECLARE
            entry record;
            previous bytea;
        BEGIN
            FOR entry IN SELECT * FROM roz.audit_events WHERE tenant_id = '{tenant}'
                          ORDER BY sequence LOOP
                UPDATE roz.audit_events
                   SET detail = CASE WHEN sequence = 1 THEN '{{"name": "forged"}}' ELSE detail END,
                       previous_hash = previous
                 WHERE tenant_id = entry.tenant_id AND sequence = entry.sequence;
                UPDATE roz.audit_events
                   SET hash = roz.audit_hash(tenant_id, sequence, kind, event_time, actor_key_id,
                       actor_host_id, protocol, request_id, host_id, environment_id, subject_id,
                       detail, previous_hash)
                 WHERE tenant_id = entry.tenant_id AND sequence = entry.sequence
                 RETURNING hash INTO previous;
            END LOOP;
            UPDATE roz.audit_chains SET last_hash = previous WHERE tenant_id = '{tenant}';
        END $$""",
    )
    plain = roz(config, "audit", "verify", "--server", server.url, ROZ_API_KEY=key)
    assert plain.returncode == 0  # consistent, though forged
    caught = roz(
        config, "audit", "verify", "--expect", head, "--server", server.url, ROZ_API_KEY=key
    )
    assert caught.returncode == 1
    sequence = head.split(":")[0]
    assert f"was REWRITTEN: entry {sequence} had hash {head.split(':')[1]}" in caught.stdout


def test_a_malformed_expectation_is_a_usage_error(tmp_path: Path) -> None:
    result = roz(tmp_path / "config", "audit", "verify", "--expect", "head", ROZ_API_KEY="roz_sk_x")
    assert result.returncode == 2
    assert "--expect takes SEQUENCE:HASH" in result.stderr


def test_verify_without_a_key_says_how_to_log_in(tmp_path: Path) -> None:
    result = roz(tmp_path / "config", "audit", "verify", "--server", "https://roz.example.com")
    assert result.returncode == 3
    assert "not logged in to https://roz.example.com; run roz login" in result.stderr
