"""The newcomer's first minute: health, and an environment over REST."""

from __future__ import annotations

from tests.e2e.conftest import Roz


def test_health_needs_no_key(roz: Roz) -> None:
    with roz.rest() as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_environment_round_trip_over_rest(roz: Roz) -> None:
    with roz.rest(roz.admin_key) as client:
        created = client.post("/api/v1/environments", json={"name": "smoke", "kind": "hybrid"})
        assert created.status_code == 201, created.text
        fetched = client.get(f"/api/v1/environments/{created.json()['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["name"] == "smoke"
    assert fetched.json()["kind"] == "KIND_HYBRID"
