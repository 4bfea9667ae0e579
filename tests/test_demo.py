"""The simulated Magnet API: shape, coverage of every state, determinism, and its HTTP rules."""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from conftest import FIXED_NOW, SECRET_KEY, FakeClock

from magnet_exporter.client import retry_after_seconds
from magnet_exporter.demo import (
    DEFAULT_ORGANIZATION,
    FAULT_KINDS,
    LISTED_SESSIONS,
    DemoApiServer,
    Fault,
    FaultRates,
    Population,
    SimulatedMagnet,
)
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


def last_activity(session: dict[str, Any]) -> float:
    return datetime.fromisoformat(session["updatedAt"] or session["createdAt"]).timestamp()


@pytest.mark.parametrize(("seed", "organization"), [(0, "acme"), (7, "globex")])
def test_stuck_sessions_at_every_moment_differ_in_id_repository_and_author(
    seed: int, organization: str
) -> None:
    clock = FakeClock()
    magnet = SimulatedMagnet(seed, clock)
    # Every 20 minutes over half a day: a stuck session comes every 2 hours, for 7 hours.
    for moment in (FIXED_NOW + step * 1200 for step in range(36)):
        clock.now = moment
        stuck = [
            session
            for session in magnet.sessions_response(organization)["sessions"]
            if session["status"] == "active" and moment - last_activity(session) > 3600
        ]
        assert stuck, f"no session idle for more than an hour at {moment}"
        for field in (
            lambda s: s["id"],
            lambda s: s["metadata"]["repository"],
            lambda s: s["author"]["id"],
        ):
            values = [field(session) for session in stuck]
            assert len(set(values)) == len(values), (moment, values)


def test_answers_parse_with_the_exporters_own_parser() -> None:
    magnet = SimulatedMagnet(0, FakeClock())
    body = json.dumps(magnet.sessions_response("acme")).encode()
    snapshot = parse_snapshot(
        body, ("status", "pr_status", "model", "repository", "author"), magnet.now()
    )
    assert sum(group.count for group in snapshot.sessions.values()) == LISTED_SESSIONS
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


KEYED = {"x-api-key": SECRET_KEY}


@contextlib.contextmanager
def faulty(rates: FaultRates, seed: int = 0) -> Iterator[DemoApiServer]:
    server = DemoApiServer(SimulatedMagnet(seed, FakeClock()), faults=rates).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers=KEYED, timeout=5) as client:
        yield client


def sessions(http: httpx.Client, server: DemoApiServer, timeout: float = 5) -> httpx.Response:
    return http.get(server.url + "/api/sessions", timeout=timeout)


def full_body(server: DemoApiServer) -> bytes:
    return json.dumps(server.magnet.sessions_response("acme")).encode()


MIXED = FaultRates(server_error=0.2, rate_limited=0.2, truncated=0.2, not_json=0.2)


def kinds_served(http: httpx.Client, seed: int, requests: int) -> list[str]:
    with faulty(MIXED, seed) as server:
        for _ in range(requests):
            sessions(http, server)
        return [served.kind for served in server.served]


def test_injected_faults_are_deterministic_for_a_seed(http: httpx.Client) -> None:
    first = kinds_served(http, seed=3, requests=30)
    assert first == kinds_served(http, seed=3, requests=30)
    assert first != kinds_served(http, seed=4, requests=30)
    assert set(first) == {"server_error", "rate_limited", "truncated", "not_json", "ok"}


def test_rates_are_laid_out_in_order() -> None:
    rates = FaultRates(server_error=0.25, reset=0.25)
    assert rates.pick(0.0) == "server_error"
    assert rates.pick(0.2499) == "server_error"
    assert rates.pick(0.25) == "reset"
    assert rates.pick(0.4999) == "reset"
    assert rates.pick(0.5) is None
    assert FaultRates().pick(0.0) is None


def test_rates_are_roughly_the_chances(http: httpx.Client) -> None:
    with faulty(FaultRates(server_error=0.5), seed=1) as server:
        statuses = collections.Counter(sessions(http, server).status_code for _ in range(200))
    errors = sum(count for status, count in statuses.items() if status >= 500)
    assert 70 <= errors <= 130, statuses
    assert set(statuses) <= {200, 500, 502, 503}


def test_server_errors_and_the_retry_after_of_a_503(http: httpx.Client) -> None:
    with faulty(FaultRates(server_error=1.0, retry_after_seconds=4)) as server:
        answers = [sessions(http, server) for _ in range(30)]
    assert {answer.status_code for answer in answers} == {500, 502, 503}
    for answer in answers:
        expected = "4" if answer.status_code == 503 else None
        assert answer.headers.get("retry-after") == expected


def test_rate_limits_carry_retry_after_in_seconds_or_as_a_date(http: httpx.Client) -> None:
    with faulty(FaultRates(rate_limited=1.0, retry_after_seconds=7)) as server:
        values = [sessions(http, server).headers["retry-after"] for _ in range(20)]
    assert "7" in values
    dates = [value for value in values if value != "7"]
    assert dates
    for value in dates:
        seconds = retry_after_seconds(value, FIXED_NOW)
        assert seconds is not None
        assert 7 <= seconds < 8  # rounded up to the second, never shorter


def test_slow_answers_come_after_the_delay(http: httpx.Client) -> None:
    with faulty(FaultRates(slow=1.0, slow_seconds=0.3)) as server:
        started = time.monotonic()
        answer = sessions(http, server)
        assert time.monotonic() - started >= 0.3
        assert answer.content == full_body(server)


def test_truncated_body_is_a_complete_answer_with_half_the_json(http: httpx.Client) -> None:
    with faulty(FaultRates(truncated=1.0)) as server:
        answer = sessions(http, server)
        body = full_body(server)
    assert answer.status_code == 200
    assert answer.content == body[: len(body) // 2]
    with pytest.raises(json.JSONDecodeError):
        answer.json()


def test_not_json_is_an_html_page(http: httpx.Client) -> None:
    with faulty(FaultRates(not_json=1.0)) as server:
        answer = sessions(http, server)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html"
    assert answer.text.startswith("<html>")


def test_oversized_body_has_no_length_and_the_size_asked_for(http: httpx.Client) -> None:
    with faulty(FaultRates(oversized=1.0, oversized_bytes=300_000)) as server:
        answer = sessions(http, server)
    assert "content-length" not in answer.headers
    assert len(answer.content) == 300_000
    assert answer.json()["sessions"] == []


def test_reset_breaks_the_connection_in_the_middle_of_the_body(http: httpx.Client) -> None:
    with faulty(FaultRates(reset=1.0)) as server, pytest.raises(httpx.TransportError):
        sessions(http, server)


def test_injected_faults_still_need_no_key_to_be_refused() -> None:
    with faulty(FaultRates(server_error=1.0)) as server:
        assert httpx.get(server.url + "/api/sessions", timeout=5).status_code == 401
        assert [served.kind for served in server.served] == ["unauthorized"]


def test_pushed_faults_answer_the_next_requests_in_turn(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    simulator.push(Fault(status=500), Fault(status=429))
    assert [sessions(http, simulator).status_code for _ in range(3)] == [500, 429, 200]
    assert [served.kind for served in simulator.served] == ["fault", "fault", "ok"]
    assert simulator.requests == 3


def test_a_set_fault_answers_every_request_after_the_pushed_ones(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    simulator.push(Fault(status=502))
    simulator.fault = Fault(status=503)
    assert [sessions(http, simulator).status_code for _ in range(3)] == [502, 503, 503]


def test_request_log_is_bounded_and_in_arrival_order(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    for _ in range(3):
        sessions(http, simulator)
    arrivals = [served.arrived for served in simulator.served]
    assert arrivals == sorted(arrivals)
    assert simulator.served.maxlen is not None


def test_stop_cuts_a_slow_answer_short(http: httpx.Client) -> None:
    with faulty(FaultRates(slow=1.0, slow_seconds=30)) as server:
        waiting = threading.Thread(target=lambda: sessions(http, server, timeout=60), daemon=True)
        waiting.start()
        while server.requests == 0:
            time.sleep(0.01)
        started = time.monotonic()
    waiting.join(timeout=5)
    assert not waiting.is_alive()
    assert time.monotonic() - started < 2


def test_rates_from_text() -> None:
    rates = FaultRates.parse(" server_error=0.1, slow=0.05,slow_seconds=12, oversized_bytes=99,")
    assert rates == FaultRates(server_error=0.1, slow=0.05, slow_seconds=12, oversized_bytes=99)
    assert FaultRates.parse("") == FaultRates()
    assert set(FAULT_KINDS) < {field for field in FaultRates.__dataclass_fields__}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("teapot=0.1", "unknown fault setting 'teapot'"),
        ("slow", "slow: not a number"),
        ("slow=often", "slow: not a number"),
        ("oversized_bytes=1.5", "oversized_bytes: not a number"),
        ("slow=1.5", "between 0 and 1"),
        ("slow=0.6,reset=0.6", "add up to at most 1"),
        ("slow_seconds=-1", "must be >= 0"),
    ],
)
def test_bad_rates_from_text(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultRates.parse(spec)


def test_a_population_is_shaped_like_a_large_organization() -> None:
    population = Population()
    magnet = SimulatedMagnet(
        seed=3, clock=lambda: FIXED_NOW, listed_sessions=20_000, population=population
    )
    sessions = magnet.sessions_response("acme")["sessions"]
    assert len(sessions) == 20_000
    by_author = collections.Counter(item["author"]["id"] for item in sessions)
    ranked = [count for _, count in by_author.most_common()]
    # Hundreds of authors; the busiest few have a large share, most have a handful.
    assert len(by_author) >= population.authors * 0.8
    assert sum(ranked[:10]) > 0.3 * len(sessions)
    assert sorted(ranked)[len(ranked) // 2] < 0.002 * len(sessions)
    repositories = {(item["metadata"] or {}).get("repository") for item in sessions}
    assert len(repositories) >= population.repositories * 0.8
    statuses = collections.Counter(item["status"] for item in sessions)
    assert statuses["completed"] > statuses["failed"] > statuses["active"] > 0
    pull_requests = [item["metadata"] for item in sessions if (item["metadata"] or {}).get("prUrl")]
    assert len(pull_requests) > 0.5 * len(sessions)
    # Each pull request is a session's own: its number, URL and branch.
    assert len({pr["prUrl"] for pr in pull_requests}) == len(pull_requests)
    assert len({pr["branch"] for pr in pull_requests}) == len(pull_requests)
    assert {pr["prStatus"] for pr in pull_requests} == {"draft", "open", "merged", "closed"}
    lengths = [len(item["title"]) for item in sessions]
    assert min(lengths) < 40
    assert max(lengths) > 150


def test_a_population_spreads_its_sessions_over_its_span() -> None:
    population = Population()
    for listed in (1_000, 10_000):
        magnet = SimulatedMagnet(
            seed=3, clock=lambda: FIXED_NOW, listed_sessions=listed, population=population
        )
        created = [
            datetime.fromisoformat(item["createdAt"].replace("Z", "+00:00")).timestamp()
            for item in magnet.sessions_response("acme")["sessions"]
        ]
        assert FIXED_NOW - min(created) == pytest.approx(population.span, rel=0.05)


def test_the_sessions_are_gzipped_when_asked_and_only_then(simulator: DemoApiServer) -> None:
    url = simulator.url + "/api/sessions"
    key = {"x-api-key": SECRET_KEY}
    body = simulator.sessions_body(DEFAULT_ORGANIZATION)
    with httpx.Client(timeout=5) as client:
        for asked in ("gzip", "deflate, gzip;q=0.5", "*"):
            with client.stream("GET", url, headers={**key, "accept-encoding": asked}) as answer:
                raw = b"".join(answer.iter_raw())
            assert answer.headers["content-encoding"] == "gzip"
            assert "accept-encoding" in answer.headers["vary"].lower()
            assert gzip.decompress(raw) == body
        for asked in ("identity", "gzip;q=0", "br"):
            with client.stream("GET", url, headers={**key, "accept-encoding": asked}) as answer:
                raw = b"".join(answer.iter_raw())
            assert "content-encoding" not in answer.headers
            assert raw == body
