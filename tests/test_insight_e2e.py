"""End to end: the insight metrics and bad values, from a body served over HTTP to /metrics.

A small loopback API serves a fixed body; a real exporter polls it as of a clock the test
controls. The expected values come from an independent reduction of the same document here
(plain Python over the JSON, `datetime.fromisoformat`), not from the exporter's code.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import shutil
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FIXED_NOW, SECRET_KEY, FakeClock, RunningExporter, make_settings
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter.cli import Exporter, http_client
from magnet_exporter.demo import DemoApiServer, Fault, Population, SimulatedMagnet
from magnet_exporter.logs import JsonFormatter, LogfmtFormatter
from magnet_exporter.model import IDLE_SESSION_LABELS

Factory = Callable[..., RunningExporter]
NOW = FIXED_NOW
DAY, WEEK = 86_400, 604_800
DURATION_EDGES = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
IDLE_EDGES = (60, 300, 900, 1800, 3600, 7200, 14400, 86400)
MODELS = ("m-a", "m-b")


class FixedApi:
    """The simulated API answering every request with one body: a canned answer of 200."""

    def __init__(self, simulator: DemoApiServer) -> None:
        self._simulator = simulator
        self.url = simulator.url
        self.body = b'{"sessions": []}'

    @property
    def body(self) -> bytes:
        fault = self._simulator.fault
        assert fault is not None
        return fault.body

    @body.setter
    def body(self, body: bytes) -> None:
        self._simulator.fault = Fault(200, body)


@pytest.fixture
def api(simulator: DemoApiServer) -> FixedApi:
    return FixedApi(simulator)


def iso(offset: float) -> str:
    """The moment NOW + offset, as Magnet writes it."""
    return datetime.fromtimestamp(NOW + offset, timezone.utc).isoformat().replace("+00:00", "Z")


def session(
    status: str | None,
    created: float | None,
    updated: float | None,
    model: str = "m-a",
    author: str | None = "u1",
    pr_status: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "status": status,
        "model": model,
        "author": {"id": author, "name": "Somebody"},
        "metadata": {"prStatus": pr_status} if pr_status else None,
        "messageCount": 1,
    }
    if created is not None:
        document["createdAt"] = iso(created)
    if updated is not None:
        document["updatedAt"] = iso(updated)
    return document


def edge_sessions() -> list[dict[str, Any]]:
    """Sessions on and around every window and bucket edge."""
    sessions = []
    # Windows: just outside, exactly on (outside: "later than"), just inside, in the future.
    for created in (-WEEK - 1, -WEEK, -WEEK + 1, -DAY - 1, -DAY, -DAY + 1, -1, 0, 3600):
        sessions.append(session("active", created, None, pr_status="draft"))
    sessions.append(session("active", None, None, author="nobody-time"))  # no timestamps
    # Durations of finished sessions, on each bucket edge and one second past it.
    for index, edge in enumerate(DURATION_EDGES):
        for extra in (0, 1):
            status = ("completed", " Completed ", "failed", "FAILED")[(index + extra) % 4]
            model = MODELS[index % 2]
            start = -2 * DAY - edge - extra
            sessions.append(session(status, start, start + edge + extra, model, f"d{index}"))
    sessions += [
        session("completed", -3600, -3601, "m-b", "skew"),  # clock skew: counts as 0 s
        session("completed", -WEEK - 600, -WEEK - 1, "m-a", "old"),  # last activity too old
        session("completed", -WEEK - 600, -WEEK + 1, "m-a", "merged", pr_status="merged"),
        session("failed", -600, None, "m-a", "no-update"),  # no updatedAt: no duration
        session("completed", None, -600, "m-b", "no-create"),  # no createdAt: no duration
    ]
    # Idle times of active sessions, on each bucket edge and one second past it.
    for index, edge in enumerate(IDLE_EDGES):
        for extra in (0, 1):
            model = MODELS[(index + extra) % 2]
            sessions.append(session("active", -WEEK + 10, -edge - extra, model, f"i{index}"))
    sessions += [
        session("active", -7200, None, "m-b", " spaced "),  # idle from createdAt
        session("active", -60, 120, "m-a", ""),  # updated in the future: idle 0; empty author
        session("paused", -60, -30, "m-a", "u1"),  # neither finished nor active
        session(None, -60, -30, "m-b", "u2"),
    ]
    return sessions


def moment(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.timestamp()


def clean(value: Any, missing: str, lower: bool) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return missing
    return text.lower() if lower else text


def reduce(document: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """What every insight metric should be, from the document alone."""
    created_day: collections.Counter[tuple[str, ...]] = collections.Counter()
    created_week: collections.Counter[tuple[str, ...]] = collections.Counter()
    durations: dict[tuple[str, ...], list[float]] = collections.defaultdict(list)
    idle: dict[tuple[str, ...], list[float]] = collections.defaultdict(list)
    authors_day: set[str] = set()
    authors_week: set[str] = set()
    oldest: float | None = None
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    messages: collections.Counter[tuple[str, ...]] = collections.Counter()
    for item in document["sessions"]:
        values = {
            "status": clean(item.get("status"), "unknown", True),
            "pr_status": clean((item.get("metadata") or {}).get("prStatus"), "none", True),
            "model": clean(item.get("model"), "unknown", False),
        }
        key = tuple(values[name] for name in labels)
        counts[key] += 1
        messages[key] += item.get("messageCount") or 0
        created, updated = moment(item.get("createdAt")), moment(item.get("updatedAt"))
        last = updated if updated is not None else created
        if created is not None and created > NOW - WEEK:
            created_week[key] += 1
        if created is not None and created > NOW - DAY:
            created_day[key] += 1
        author = ((item.get("author") or {}).get("id") or "").strip()
        if author and last is not None and last > NOW - WEEK:
            authors_week.add(author)
            if last > NOW - DAY:
                authors_day.add(author)
        status = values["status"]
        finished = status in ("completed", "failed")
        if finished and created is not None and updated is not None and updated > NOW - WEEK:
            kept = tuple(values[n] for n in labels if n in ("status", "model"))
            durations[kept].append(max(0.0, updated - created))
        if status == "active" and last is not None:
            idle[tuple(values[n] for n in labels if n == "model")].append(max(0.0, NOW - last))
            if created is not None:
                oldest = created if oldest is None else min(oldest, created)
    return {
        "sessions": counts,
        "messages": messages,
        "created_day": created_day,
        "created_week": created_week,
        "durations": durations,
        "idle": idle,
        "authors_day": len(authors_day),
        "authors_week": len(authors_week),
        "oldest": oldest,
    }


def buckets(observations: list[float], edges: Sequence[float]) -> dict[str, float]:
    """Cumulative counts by `le`, as Prometheus writes the bounds."""
    counts = {f"{float(edge)}": float(sum(o <= edge for o in observations)) for edge in edges}
    counts["+Inf"] = float(len(observations))
    return counts


def scraped(exporter: RunningExporter, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of `name` (a sample name) on /metrics, by their labels but organization."""
    found = {}
    for family in text_string_to_metric_families(exporter.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                labels = {k: v for k, v in sample.labels.items() if k != "organization"}
                found[tuple(sorted(labels.items()))] = sample.value
    return found


def realistic_sessions() -> list[dict[str, Any]]:
    """An organization shaped like a large one: hundreds of authors, tens of repositories."""
    magnet = SimulatedMagnet(
        seed=5, clock=lambda: NOW, listed_sessions=3_000, population=Population()
    )
    sessions: list[dict[str, Any]] = magnet.sessions_response("acme")["sessions"]
    return sessions


@pytest.mark.parametrize(
    ("labels", "sessions"),
    [
        (("status", "pr_status", "model"), edge_sessions),
        (("pr_status",), edge_sessions),
        (("status", "pr_status", "model"), realistic_sessions),
        (("model",), realistic_sessions),
    ],
    ids=["edges", "edges-pr_status", "realistic", "realistic-model"],
)
def test_insight_metrics_match_an_independent_reduction(
    exporter_factory: Factory,
    api: FixedApi,
    labels: tuple[str, ...],
    sessions: Callable[[], list[dict[str, Any]]],
) -> None:
    document = {"sessions": sessions(), "stats": {"mergesPastWeek": 1}}
    api.body = json.dumps(document).encode()
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url, session_labels=",".join(labels))
    assert exporter.poll().up
    expected = reduce(document, labels)

    for name, kind in (
        ("magnet_sessions", "sessions"),
        ("magnet_session_messages", "messages"),
        ("magnet_sessions_created_past_day", "created_day"),
        ("magnet_sessions_created_past_week", "created_week"),
    ):
        served = scraped(exporter, name)
        counts = expected[kind]
        assert {k: v for k, v in served.items() if v} == {
            tuple(sorted(zip(labels, key, strict=True))): float(n) for key, n in counts.items()
        }
    for name, edges, key_names in (
        (
            "magnet_session_duration_seconds",
            DURATION_EDGES,
            [n for n in labels if n in ("status", "model")],
        ),
        ("magnet_active_session_idle_seconds", IDLE_EDGES, [n for n in labels if n == "model"]),
    ):
        observed = expected["durations" if "duration" in name else "idle"]
        served_buckets = scraped(exporter, f"{name}_bucket")
        served_sums = scraped(exporter, f"{name}_gsum")
        served_counts = scraped(exporter, f"{name}_gcount")
        for key, observations in observed.items():
            label_set = tuple(sorted(zip(key_names, key, strict=True)))
            by_le = {
                dict(k)["le"]: v
                for k, v in served_buckets.items()
                if tuple((n, x) for n, x in k if n != "le") == label_set
            }
            assert by_le == buckets(observations, edges), (name, key)
            # Float sums in another order: equal to the rounding of the last digits.
            assert served_sums[label_set] == pytest.approx(sum(observations), rel=1e-9)
            assert served_counts[label_set] == len(observations)
        # Every served series that the body has no observation for is at 0 (zero series).
        assert sum(served_counts.values()) == sum(len(o) for o in observed.values())
    assert scraped(exporter, "magnet_session_authors_past_day") == {(): expected["authors_day"]}
    assert scraped(exporter, "magnet_session_authors_past_week") == {(): expected["authors_week"]}
    assert scraped(exporter, "magnet_active_session_oldest_created_timestamp_seconds") == {
        (): expected["oldest"]
    }


def with_ids(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sessions with an id each, as Magnet lists them, but a few without a usable one."""
    for index, item in enumerate(sessions):
        item["id"] = f"cm{index:04d}"
        item["metadata"] = {**(item["metadata"] or {}), "repository": f"acme/r{index % 3}"}
    sessions[-5]["id"] = "  "
    sessions[-6].pop("id")
    return sessions


def idle_list(document: dict[str, Any], after: float, limit: int) -> tuple[list[Any], int]:
    """The idle sessions to list, longest idle first, and how many the limit leaves out."""
    found = []
    for index, item in enumerate(document["sessions"]):
        created, updated = moment(item.get("createdAt")), moment(item.get("updatedAt"))
        last = updated if updated is not None else created
        session_id = clean(item.get("id"), "", False)
        active = clean(item.get("status"), "unknown", True) == "active"
        if not active or last is None or NOW - last < after or not session_id:
            continue
        labels = {
            "session": session_id,
            "repository": clean((item.get("metadata") or {}).get("repository"), "none", False),
            "model": clean(item.get("model"), "unknown", False),
            "author": clean((item.get("author") or {}).get("id"), "unknown", False),
        }
        found.append((last, index, tuple(sorted(labels.items()))))
    found.sort()
    return [(labels, last) for last, _, labels in found[:limit]], max(0, len(found) - limit)


@pytest.mark.parametrize(("after", "limit"), [(900, 10), (3600, 3), (0, 1000), (900, 0)])
def test_idle_sessions_match_an_independent_reduction(
    exporter_factory: Factory, api: FixedApi, after: float, limit: int
) -> None:
    document = {"sessions": with_ids(edge_sessions())}
    api.body = json.dumps(document).encode()
    exporter = exporter_factory(
        FakeClock(NOW),
        api_url=api.url,
        idle_session_seconds=after,
        idle_sessions_max=limit,
    )
    assert exporter.poll().up
    expected, unlisted = idle_list(document, after, limit)
    # The body is worth testing against: sessions listed (unless none may be), and sessions
    # left out by the smaller limits.
    assert expected or limit == 0
    assert unlisted or limit == 1000
    body = exporter.get("/metrics").text
    served = [
        (tuple(sorted((k, v) for k, v in s.labels.items() if k != "organization")), s.value)
        for f in text_string_to_metric_families(body)
        if f.name == "magnet_idle_session_last_activity_timestamp_seconds"
        for s in f.samples
    ]
    # In the order served: the longest idle first.
    assert served == expected
    assert scraped(exporter, "magnet_idle_sessions_unlisted") == {(): unlisted}
    assert "Somebody" not in body


def test_idle_sessions_come_back_from_a_poll_worker(api: FixedApi) -> None:
    document = {"sessions": with_ids(edge_sessions())}
    api.body = json.dumps(document).encode()
    settings = make_settings(
        api_url=api.url,
        api_key=SECRET_KEY,
        worker_threshold_bytes=0,  # every poll in a worker process, the first one too
        idle_session_seconds=3600,
        idle_sessions_max=3,
    )
    with http_client(settings) as http:
        exporter = Exporter(settings, http, CollectorRegistry(), FakeClock(NOW), workers=True)
        try:
            (poller,) = exporter.pollers.values()
            state = poller.poll_once()
        finally:
            exporter.close()
    assert state.up
    assert state.snapshot is not None
    expected, unlisted = idle_list(document, 3600, 3)
    assert unlisted
    assert [
        (tuple(sorted(zip(IDLE_SESSION_LABELS, idle.labels, strict=True))), idle.last_activity)
        for idle in state.snapshot.idle_sessions
    ] == expected
    assert state.snapshot.idle_sessions_unlisted == unlisted


def test_the_edges_reach_every_bucket_and_window() -> None:
    """The body above is worth testing against: each bucket and window holds something."""
    expected = reduce({"sessions": edge_sessions()}, ("status", "model"))
    durations = [o for observations in expected["durations"].values() for o in observations]
    idle = [o for observations in expected["idle"].values() for o in observations]
    for observations, edges in ((durations, DURATION_EDGES), (idle, IDLE_EDGES)):
        bounds = (0.0, *edges, math.inf)
        for low, high in itertools.pairwise(bounds):
            assert any(low < o <= high for o in observations) or low == 0.0, (low, high)
        assert 0.0 in observations
    assert 0 < sum(expected["created_day"].values()) < sum(expected["created_week"].values())
    assert 0 < expected["authors_day"] < expected["authors_week"]


def test_openmetrics_serves_the_histograms_as_gauge_histograms(
    exporter_factory: Factory, api: FixedApi
) -> None:
    api.body = json.dumps({"sessions": edge_sessions()}).encode()
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url)
    exporter.poll()
    response = httpx.get(
        exporter.url + "/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    types = {family.name: family.type for family in openmetrics_families(response.text)}
    assert types["magnet_session_duration_seconds"] == "gaugehistogram"
    assert types["magnet_active_session_idle_seconds"] == "gaugehistogram"
    assert types["magnet_sessions_created_past_week"] == "gauge"


def test_zero_series_from_the_first_poll_and_they_stay(
    exporter_factory: Factory, api: FixedApi
) -> None:
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url)  # no session at all
    exporter.poll()
    durations = scraped(exporter, "magnet_session_duration_seconds_gcount")
    assert durations == {
        (("model", "unknown"), ("status", "completed")): 0.0,
        (("model", "unknown"), ("status", "failed")): 0.0,
    }
    assert scraped(exporter, "magnet_active_session_idle_seconds_gcount") == {
        (("model", "unknown"),): 0.0
    }
    assert scraped(exporter, "magnet_active_session_oldest_created_timestamp_seconds") == {}
    week = scraped(exporter, "magnet_sessions_created_past_week")
    assert len(week) == 3 * 5
    assert set(week.values()) == {0.0}
    api.body = json.dumps({"sessions": [session("completed", -600, -60, "m-z")]}).encode()
    exporter.poll()
    api.body = b'{"sessions": []}'
    exporter.poll()
    assert (
        scraped(exporter, "magnet_session_duration_seconds_gcount")[
            (("model", "m-z"), ("status", "completed"))
        ]
        == 0.0
    )


def test_a_folded_value_is_folded_in_the_histograms_too(
    exporter_factory: Factory, api: FixedApi
) -> None:
    sessions = [session("completed", -600, -60, f"m{i}") for i in range(4)] * 2
    sessions.append(session("completed", -600, -60, "rare"))
    api.body = json.dumps({"sessions": sessions}).encode()
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url, max_label_values=5)
    exporter.poll()
    counts = scraped(exporter, "magnet_session_duration_seconds_gcount")
    models = {dict(key)["model"] for key, value in counts.items() if value}
    assert models == {"m0", "m1", "m2", "m3", "other"}
    assert counts[(("model", "other"), ("status", "completed"))] == 1.0


# --- bad values ----------------------------------------------------------------------------


BAD = [
    {"status": 5, "createdAt": "", "updatedAt": "yesterday"},
    {"messageCount": "abc", "metadata": "n/a", "author": {"id": 7}, "model": ["x"]},
    None,
]


def test_bad_values_are_counted_logged_without_values_and_the_poll_succeeds(
    exporter_factory: Factory, api: FixedApi, caplog: pytest.LogCaptureFixture
) -> None:
    good = [session("completed", -600, -60, "m-a", "u1", "merged") for _ in range(5)]
    document = {
        "sessions": [*good, *BAD],
        "stats": {"mergesPastWeek": "SECRET-ISH", "humansPastWeek": 3},
    }
    api.body = json.dumps(document).encode()
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url)
    with caplog.at_level(logging.DEBUG):
        state = exporter.poll()
        exporter.poll()
    assert state.up
    assert exporter.value("magnet_up") == 1
    assert (
        exporter.value("magnet_sessions", status="completed", pr_status="merged", model="m-a") == 5
    )
    assert (
        exporter.value("magnet_sessions", status="unknown", pr_status="none", model="unknown") == 2
    )
    # Neither bad session has a readable messageCount: they add none.
    assert exporter.value("magnet_session_messages", status="unknown", model="unknown") == 0
    assert exporter.value("magnet_merges_past_week") is None
    assert exporter.value("magnet_humans_past_week") == 3
    invalid = scraped(exporter, "magnet_exporter_invalid_values_total")
    assert {dict(k)["field"]: v for k, v in invalid.items() if v} == {
        "sessions.status": 2,
        "sessions.createdAt": 2,
        "sessions.updatedAt": 2,
        "sessions.messageCount": 2,
        "sessions.metadata": 2,
        "sessions.author.id": 2,
        "sessions.model": 2,
        "sessions": 2,
        "stats.mergesPastWeek": 2,
    }
    lines = [r for r in caplog.records if "read as missing" in r.getMessage()]
    assert len(lines) == 2  # one per poll
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        line = formatter.format(lines[0])
        assert "\n" not in line
        assert "sessions.createdAt" in line
        assert "stats.mergesPastWeek" in line
        for value in ("SECRET-ISH", "yesterday", "n/a", "abc"):
            assert value not in line
    fields = json.loads(JsonFormatter().format(lines[0]))
    assert fields["sessions.createdAt"] == 1
    assert fields["sessions"] == 1
    assert fields["organization"] == "default"


def test_a_clean_poll_logs_no_such_line_and_every_field_starts_at_zero(
    exporter_factory: Factory, api: FixedApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.body = json.dumps({"sessions": [session("active", -60, -30)]}).encode()
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url)
    with caplog.at_level(logging.DEBUG):
        assert exporter.poll().up
    assert not [r for r in caplog.records if "read as missing" in r.getMessage()]
    invalid = scraped(exporter, "magnet_exporter_invalid_values_total")
    assert {dict(k)["field"] for k in invalid} == {
        "sessions",
        "sessions.id",
        "sessions.status",
        "sessions.model",
        "sessions.metadata",
        "sessions.metadata.prStatus",
        "sessions.metadata.repository",
        "sessions.author",
        "sessions.author.id",
        "sessions.createdAt",
        "sessions.updatedAt",
        "sessions.messageCount",
        "stats",
        "stats.mergesPastWeek",
        "stats.authorsPastWeek",
        "stats.humansPastWeek",
        "stats.humansPromptingNow",
    }
    assert set(invalid.values()) == {0.0}


def test_promtool_accepts_the_exposition_with_insight_metrics(
    exporter_factory: Factory, api: FixedApi, tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    api.body = json.dumps({"sessions": edge_sessions()}).encode()
    exporter = exporter_factory(FakeClock(NOW), api_url=api.url)
    exporter.poll()
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exporter.get("/metrics").content,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
