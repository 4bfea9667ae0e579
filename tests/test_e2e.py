"""End to end: the exporter polls the simulated API over loopback and serves /metrics over HTTP."""

from __future__ import annotations

import collections
import logging
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET_KEY, FakeClock, RunningExporter, free_port

from magnet_exporter.demo import DEFAULT_ORGANIZATION, DemoApiServer, Fault

Factory = Callable[..., RunningExporter]

FAILURES = [
    pytest.param(Fault(status=401, body=b'{"error":"Unauthorized"}'), "unauthorized", id="401"),
    pytest.param(Fault(status=403, body=b'{"error":"Forbidden"}'), "forbidden", id="403"),
    pytest.param(Fault(status=429, headers=(("Retry-After", "60"),)), "rate_limited", id="429"),
    pytest.param(Fault(status=400), "client_error", id="400"),
    pytest.param(Fault(status=500), "server_error", id="500"),
    pytest.param(Fault(status=502, body=b"<html>Bad Gateway</html>"), "server_error", id="502"),
    pytest.param(
        Fault(status=200, body=b"<html>maintenance</html>"), "invalid_response", id="not-json"
    ),
    pytest.param(
        Fault(status=200, body=b'{"sessions": {"oops": 1}}'), "invalid_response", id="wrong-shape"
    ),
    pytest.param(
        Fault(status=200, body=b'{"sessions": [{"status": 1}]'), "invalid_response", id="truncated"
    ),
    pytest.param(Fault(status=200, body=b"{}", delay=1.5), "timeout", id="timeout"),
]


def expected_sessions(document: dict[str, Any]) -> collections.Counter[tuple[str, str, str]]:
    """Count sessions by (status, pr_status, model) straight from the simulator's document."""
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for session in document["sessions"]:
        pr_status = (session["metadata"] or {}).get("prStatus") or "none"
        counts[(session["status"], pr_status, session["model"])] += 1
    return counts


def test_metrics_match_what_the_api_served(
    exporter: RunningExporter, simulator: DemoApiServer
) -> None:
    assert exporter.poll().up
    document = simulator.magnet.sessions_response(DEFAULT_ORGANIZATION)
    metrics = exporter.metrics()

    assert exporter.value("magnet_up") == 1
    stats = document["stats"]
    assert exporter.value("magnet_merges_past_week") == stats["mergesPastWeek"]
    assert exporter.value("magnet_authors_past_week") == stats["authorsPastWeek"]
    assert exporter.value("magnet_humans_past_week") == stats["humansPastWeek"]
    assert exporter.value("magnet_humans_prompting") == stats["humansPromptingNow"]

    served = {
        (s.labels["status"], s.labels["pr_status"], s.labels["model"]): s.value
        for s in metrics["magnet_sessions"]
        if s.value
    }
    assert served == expected_sessions(document)
    messages = sum(s.value for s in metrics["magnet_session_messages"])
    assert messages == sum(session["messageCount"] for session in document["sessions"])
    magnet = [s for name, samples in metrics.items() if name.startswith("magnet_") for s in samples]
    assert {s.labels["organization"] for s in magnet} == {"default"}


def test_newest_session_timestamps(exporter: RunningExporter, simulator: DemoApiServer) -> None:
    exporter.poll()
    document = simulator.magnet.sessions_response(DEFAULT_ORGANIZATION)
    created = max(s["createdAt"] for s in document["sessions"])
    expected = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    assert exporter.value("magnet_session_last_created_timestamp_seconds") == expected
    assert exporter.value("magnet_session_last_updated_timestamp_seconds") is not None


def test_every_documented_status_is_exported_even_at_zero(exporter_factory: Factory) -> None:
    exporter = exporter_factory(session_labels="status,pr_status")
    exporter.poll()
    samples = exporter.metrics()["magnet_sessions"]
    assert {s.labels["status"] for s in samples} >= {"active", "completed", "failed"}
    assert {s.labels["pr_status"] for s in samples} >= {"none", "open", "draft", "merged", "closed"}


def test_organization_id_is_sent_and_labels_the_metrics(
    exporter_factory: Factory, simulator: DemoApiServer
) -> None:
    exporter = exporter_factory(organization_id="globex")
    exporter.poll()
    assert simulator.last_query == {"organizationId": ["globex"]}
    globex = simulator.magnet.sessions_response("globex")["stats"]["mergesPastWeek"]
    assert exporter.value("magnet_merges_past_week", organization="globex") == globex


@pytest.mark.parametrize(("fault", "outcome"), FAILURES)
def test_each_upstream_failure_is_counted_survived_and_recovered(
    exporter_factory: Factory,
    simulator: DemoApiServer,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    outcome: str,
) -> None:
    exporter = exporter_factory(request_timeout_seconds=0.5)
    assert exporter.poll().up
    merges = exporter.value("magnet_merges_past_week")

    simulator.fault = fault
    with caplog.at_level(logging.INFO):
        state = exporter.poll()
    assert not state.up
    assert exporter.value("magnet_up") == 0
    assert exporter.value("magnet_exporter_polls_total", outcome=outcome) == 1
    assert exporter.value("magnet_exporter_polls_total", outcome="success") == 1
    # The last good data is still served while it is fresh.
    assert exporter.value("magnet_merges_past_week") == merges
    failures = [r for r in caplog.records if r.getMessage() == "poll failed"]
    assert len(failures) == 1
    assert failures[0].outcome == outcome  # type: ignore[attr-defined]
    if fault.status >= 400:
        assert failures[0].status == fault.status  # type: ignore[attr-defined]
        assert str(fault.status) in failures[0].reason  # type: ignore[attr-defined]

    simulator.fault = None
    exporter.clock.advance(61)  # past the 429's Retry-After: 60, until which nothing is sent
    assert exporter.poll().up
    assert exporter.value("magnet_up") == 1
    assert exporter.value("magnet_exporter_polls_total", outcome="success") == 2


def test_refused_connection_is_survived(exporter_factory: Factory) -> None:
    exporter = exporter_factory(api_url=f"http://127.0.0.1:{free_port()}")
    state = exporter.poll()
    assert not state.up
    assert exporter.value("magnet_up") == 0
    assert exporter.value("magnet_exporter_polls_total", outcome="connection_error") == 1
    assert exporter.get("/-/healthy").status_code == 200
    assert exporter.get("/-/ready").status_code == 503


def test_stale_data_is_dropped_but_health_metrics_stay(
    exporter_factory: Factory, simulator: DemoApiServer
) -> None:
    clock = FakeClock()
    exporter = exporter_factory(clock=clock, poll_interval_seconds=60)  # stale after 180 s
    exporter.poll()
    simulator.fault = Fault(status=500)
    clock.advance(100)
    exporter.poll()
    assert (
        exporter.value("magnet_sessions", status="active", pr_status="none", model="unknown") == 0
    )  # still served, 100 s old
    clock.advance(81)
    exporter.poll()
    names = set(exporter.metrics())
    assert "process_resident_memory_bytes" in names
    assert {name for name in names if name.startswith("magnet_")} == {
        "magnet_up",
        "magnet_exporter_build_info",
        "magnet_exporter_last_success_timestamp_seconds",
        "magnet_exporter_polls",
        "magnet_exporter_requests",
        "magnet_exporter_invalid_values",
        "magnet_exporter_received_bytes",
        "magnet_exporter_response_size_bytes",
        "magnet_exporter_poll_duration_seconds",
    }
    assert exporter.value("magnet_up") == 0
    simulator.fault = None
    exporter.poll()
    assert "magnet_sessions" in exporter.metrics()


def test_missing_stats_are_not_exported(
    exporter: RunningExporter, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(status=200, body=b'{"sessions": [], "stats": {"mergesPastWeek": 3}}')
    assert exporter.poll().up
    names = set(exporter.metrics())
    assert "magnet_merges_past_week" in names
    assert "magnet_humans_prompting" not in names
    assert "magnet_session_last_created_timestamp_seconds" not in names


def test_the_key_never_shows(
    exporter_factory: Factory, simulator: DemoApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = exporter_factory(request_timeout_seconds=0.5)
    seen = []
    with caplog.at_level(logging.DEBUG):
        for fault in [None, *(param.values[0] for param in FAILURES)]:
            simulator.fault = fault
            exporter.clock.advance(601)  # past any Retry-After wait, so every fault is met
            exporter.poll()
            seen += [exporter.get(path).text for path in ("/", "/metrics", "/-/ready", "/nope")]
    seen += [record.getMessage() + str(vars(record)) for record in caplog.records]
    assert len(seen) > 40
    assert not [text for text in seen if SECRET_KEY in text]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_exposition(exporter: RunningExporter) -> None:
    exporter.poll()
    exposition = exporter.get("/metrics").text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""
    assert checked.stderr.strip() == ""


def test_one_organization_failing_leaves_the_others_alone(
    exporter_factory: Factory, simulator: DemoApiServer, tmp_path: Path
) -> None:
    config = tmp_path / "magnet.yml"
    config.write_text(
        "organizations:\n"
        "  - name: acme\n    api_key: acme-key\n"
        "  - name: globex\n    api_key: globex-key\n    organization_id: globex\n"
    )
    exporter = exporter_factory(config_file=config, api_key=None)
    simulator.revoked_keys.add("globex-key")
    states = {name: poller.poll_once() for name, poller in exporter.exporter.pollers.items()}
    assert {name: state.up for name, state in states.items()} == {"acme": True, "globex": False}
    assert exporter.value("magnet_up", organization="acme") == 1
    assert exporter.value("magnet_up", organization="globex") == 0
    assert (
        exporter.value("magnet_exporter_polls_total", organization="globex", outcome="unauthorized")
        == 1
    )
    acme = simulator.magnet.sessions_response("acme")["stats"]["mergesPastWeek"]
    assert exporter.value("magnet_merges_past_week", organization="acme") == acme
    assert exporter.value("magnet_merges_past_week", organization="globex") is None
    assert exporter.get("/-/ready").status_code == 200
    page = exporter.get("/").text
    assert "acme" in page
    assert "unauthorized" in page
