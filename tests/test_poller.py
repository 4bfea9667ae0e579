"""The poller: state after each outcome, counting, logging, and the loop's schedule and stop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import SECRET_KEY, FakeClock, run_poller_until
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from magnet_exporter.client import MagnetClient, Outcome
from magnet_exporter.demo import DemoApiServer, Fault
from magnet_exporter.keys import StaticKey
from magnet_exporter.poller import Poller, PollMetrics, RetryPolicy
from magnet_exporter.series import SessionSeries
from magnet_exporter.sources import InProcessSource

# Short pauses between retries: these tests are about the loop, test_retry about the policy.
QUICK_RETRIES = RetryPolicy(base_delay=0.01, max_delay=0.05)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2) as client:
        yield client


def make_poller(
    http: httpx.Client,
    simulator: DemoApiServer,
    registry: CollectorRegistry,
    interval: float = 60,
    max_label_values: int = 100,
    key: Callable[[], SecretStr] | None = None,
) -> Poller:
    client = MagnetClient(http, simulator.url, key or StaticKey(SecretStr(SECRET_KEY)))
    series = SessionSeries(("status", "model"), max_label_values)
    metrics = PollMetrics(registry)
    source = InProcessSource(client, series.label_names)
    return Poller(source, series, metrics, "acme", interval, FakeClock(), retry=QUICK_RETRIES)


def polls(registry: CollectorRegistry, outcome: str) -> float | None:
    labels = {"organization": "acme", "outcome": outcome}
    return registry.get_sample_value("magnet_exporter_polls_total", labels)


def requests(registry: CollectorRegistry, code: str) -> float | None:
    labels = {"organization": "acme", "code": code}
    return registry.get_sample_value("magnet_exporter_requests_total", labels)


def test_every_outcome_starts_at_zero(
    http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    make_poller(http, simulator, registry)
    assert {outcome.value: polls(registry, outcome.value) for outcome in Outcome} == {
        outcome.value: 0 for outcome in Outcome
    }


def test_success_then_failure_keeps_the_last_good_snapshot(
    http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    poller = make_poller(http, simulator, registry)
    good = poller.poll_once()
    assert good.up
    assert good.last_outcome is Outcome.SUCCESS
    assert good.snapshot is not None
    simulator.fault = Fault(status=503)
    bad = poller.poll_once()
    assert not bad.up
    assert bad.last_outcome is Outcome.SERVER_ERROR
    assert bad.last_error is not None
    assert bad.last_error.startswith("503 Service Unavailable")
    assert bad.snapshot is good.snapshot
    assert bad.last_success == good.last_success
    assert (polls(registry, "success"), polls(registry, "server_error")) == (1, 1)
    duration = {"organization": "acme"}
    assert registry.get_sample_value("magnet_exporter_poll_duration_seconds_count", duration) == 2
    # The 503 was retried within the poll: every request is counted, the poll once.
    assert (requests(registry, "200"), requests(registry, "503")) == (1, 3)
    assert simulator.requests == 4


def test_failure_is_one_log_line_with_status_and_reason(
    http: httpx.Client,
    simulator: DemoApiServer,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller = make_poller(http, simulator, registry)
    simulator.fault = Fault(status=403)
    with caplog.at_level(logging.WARNING):
        poller.poll_once()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert vars(record)["outcome"] == "forbidden"
    assert vars(record)["status"] == 403
    assert vars(record)["reason"].startswith("403 Forbidden")


def test_overflowing_label_is_logged_once(
    http: httpx.Client,
    simulator: DemoApiServer,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Three values each: the three statuses fit; "unknown" and two models, and the rest is other.
    poller = make_poller(http, simulator, registry, max_label_values=3)
    with caplog.at_level(logging.WARNING):
        poller.poll_once()
        poller.poll_once()
    overflow = [r for r in caplog.records if "MAGNET_MAX_LABEL_VALUES" in r.getMessage()]
    assert len(overflow) == 1
    assert vars(overflow[0])["label"] == "model"
    state = poller.state
    assert state.snapshot is not None
    models = {key[1] for key in state.snapshot.sessions}
    assert "other" in models
    assert len(models - {"other"}) == 3


def test_loop_polls_at_once_then_every_interval_and_stops(
    http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    poller = make_poller(http, simulator, registry, interval=0.2)
    run_poller_until(poller, lambda: simulator.requests >= 3, timeout=5)
    assert simulator.requests >= 3
    assert polls(registry, "success") == simulator.requests
    assert requests(registry, "200") == simulator.requests


def test_a_poll_that_crashes_does_not_end_the_loop(
    http: httpx.Client,
    simulator: DemoApiServer,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_key() -> SecretStr:
        raise RuntimeError("a bug")

    poller = make_poller(http, simulator, registry, interval=0.05, key=broken_key)
    with caplog.at_level(logging.ERROR):
        run_poller_until(poller, lambda: len(caplog.records) >= 3, timeout=5)
    assert len(caplog.records) >= 3  # it went on polling after the first crash
    assert {record.getMessage() for record in caplog.records} == {"poll crashed; polling goes on"}
    assert all(record.exc_info for record in caplog.records)
