"""The simulated Magnet API: shape, coverage of every state, determinism, and its HTTP rules."""

from __future__ import annotations

import collections
import json
from typing import Any

import httpx
import pytest
from conftest import FIXED_NOW, SECRET_KEY, FakeClock

from magnet_exporter.demo import DemoApiServer, SimulatedMagnet
from magnet_exporter.model import parse_snapshot

MOMENTS = [FIXED_NOW + offset for offset in (0, 3.5, 61, 600, 3_600, 86_400, 604_800)]


def pr_status(session: dict[str, Any]) -> str:
    return (session["metadata"] or {}).get("prStatus") or "none"


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
@pytest.mark.parametrize("organization", ["acme", "globex"])
def test_every_state_is_present_at_every_moment(seed: int, organization: str) -> None:
    clock = FakeClock()
    magnet = SimulatedMagnet(seed, clock)
    for moment in MOMENTS:
        clock.now = moment
        document = magnet.sessions_response(organization)
        statuses = collections.Counter(s["status"] for s in document["sessions"])
        assert set(statuses) == {"active", "completed", "failed"}, moment
        assert {pr_status(s) for s in document["sessions"]} == {
            "none",
            "open",
            "draft",
            "merged",
            "closed",
        }, moment
        assert all(value > 0 for value in document["stats"].values()), moment
        assert document["stats"]["humansPromptingNow"] <= document["stats"]["authorsPastWeek"]


def test_answers_parse_with_the_exporters_own_parser() -> None:
    magnet = SimulatedMagnet(0, FakeClock())
    body = json.dumps(magnet.sessions_response("acme")).encode()
    snapshot = parse_snapshot(body, ("status", "pr_status", "model", "repository", "author"))
    assert sum(group.count for group in snapshot.sessions.values()) == 40
    assert len(snapshot.stats) == 4


def test_same_seed_and_clock_give_the_same_answer() -> None:
    first = SimulatedMagnet(5, FakeClock()).sessions_response("acme")
    again = SimulatedMagnet(5, FakeClock()).sessions_response("acme")
    other_seed = SimulatedMagnet(6, FakeClock()).sessions_response("acme")
    assert first == again
    assert first != other_seed


def test_organizations_get_different_data() -> None:
    magnet = SimulatedMagnet(0, FakeClock())
    assert magnet.sessions_response("acme") != magnet.sessions_response("globex")


def test_data_moves_within_seconds() -> None:
    clock = FakeClock()
    magnet = SimulatedMagnet(0, clock)
    before = magnet.sessions_response("acme")
    clock.advance(15)
    after = magnet.sessions_response("acme")
    assert before["sessions"] != after["sessions"]
    assert max(s["createdAt"] for s in after["sessions"]) > max(
        s["createdAt"] for s in before["sessions"]
    )


def test_http_requires_a_key_and_honours_organization_id(simulator: DemoApiServer) -> None:
    url = simulator.url + "/api/sessions"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"x-api-key": ""}, timeout=5).status_code == 401
    keyed = {"x-api-key": SECRET_KEY}
    default = httpx.get(url, headers=keyed, timeout=5).json()
    globex = httpx.get(url, headers=keyed, params={"organizationId": "globex"}, timeout=5).json()
    assert default == simulator.magnet.sessions_response("acme")
    assert globex == simulator.magnet.sessions_response("globex")
    assert httpx.get(simulator.url + "/api/other", headers=keyed, timeout=5).status_code == 404
