"""The poller: state after each outcome, counting, logging, and the loop's schedule and stop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import SECRET_KEY, FakeClock, run_poller_until
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from magnet_exporter.client import MagnetClient, Outcome
from magnet_exporter.collector import DataCollector
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
    wall: Callable[[], float] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Poller:
    client = MagnetClient(http, simulator.url, key or StaticKey(SecretStr(SECRET_KEY)))
    series = SessionSeries(("status", "model"), max_label_values)
    metrics = PollMetrics(registry)
    source = InProcessSource(client, series.label_names)
    return Poller(
        source,
        series,
        metrics,
        "acme",
        interval,
        wall or FakeClock(),
        retry=QUICK_RETRIES,
        monotonic=monotonic,
    )


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
    # Each poll may take 0.8 of the interval: room for a loaded machine.
    poller = make_poller(http, simulator, registry, interval=1.0)
    run_poller_until(poller, lambda: simulator.requests >= 3, timeout=15)
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


def served_data(collector: DataCollector) -> bool:
    return any(family.name == "magnet_sessions" for family in collector.collect())


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_step_of_the_wall_clock_changes_no_staleness(
    http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry, step: float
) -> None:
    """The last good data goes stale after `stale_after` seconds, whatever the wall clock did."""
    wall, monotonic = FakeClock(), FakeClock(500.0)
    poller = make_poller(http, simulator, registry, wall=wall, monotonic=monotonic)
    data = DataCollector(lambda: {"acme": poller.state}, ("status", "model"), 180, monotonic)
    assert poller.poll_once().up
    simulator.fault = Fault(status=500)
    wall.advance(step)
    monotonic.advance(180)
    assert not poller.poll_once().up
    assert served_data(data)  # 180 s old: still served
    monotonic.advance(1)
    assert not served_data(data)  # 181 s old: gone, an hour early or late by the wall clock
    assert poller.state.last_success == FakeClock().now  # shown as the wall time it was


def received(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value(
        "magnet_exporter_received_bytes_total", {"organization": "acme"}
    )


def response_size(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value(
        "magnet_exporter_response_size_bytes", {"organization": "acme"}
    )


def test_bytes_received_and_the_decoded_size_are_counted(
    http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    poller = make_poller(http, simulator, registry)
    assert received(registry) == 0
    assert response_size(registry) == 0
    assert poller.poll_once().up
    assert simulator.last_headers["Accept-Encoding"] == "gzip"
    body = simulator.sessions_body("acme")
    assert response_size(registry) == len(body)  # decoded
    sent = received(registry)
    assert sent == len(simulator.gzipped(body))  # as sent: compressed
    assert sent is not None
    assert sent < len(body) / 3
    error_body = b'{"error": "Internal Server Error"}'
    simulator.push(Fault(status=200, body=b"<html>" + b"x" * 1000))  # read, then unusable
    assert not poller.poll_once().up
    assert received(registry) == sent + 1006
    assert response_size(registry) == len(body)  # of the last successful answer
    simulator.push(Fault(status=404, body=error_body))
    assert poller.poll_once().last_outcome is Outcome.CLIENT_ERROR
    assert received(registry) == sent + 1006  # an error body is not read: it costs nothing


def test_a_poll_with_no_time_left_counts_no_request(
    http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    client = MagnetClient(http, simulator.url, StaticKey(SecretStr(SECRET_KEY)))

    class Late(InProcessSource):
        """A source whose deadline has passed by the time it is called, as after a long wait."""

        def fetch(self, deadline: float):  # type: ignore[no-untyped-def]
            return super().fetch(time.monotonic() - 1)

    series = SessionSeries(("status",), 100)
    poller = Poller(
        Late(client, series.label_names), series, PollMetrics(registry), "acme", 60, FakeClock()
    )
    state = poller.poll_once()
    assert state.last_outcome is Outcome.TIMEOUT
    assert simulator.requests == 0
    assert polls(registry, "timeout") == 1
    assert requests(registry, "timeout") is None  # nothing was sent, so no request
