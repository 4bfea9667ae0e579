"""Soak: hundreds of polls against a simulated API that fails in every way it can.

The poller runs as in production but for its schedule: a fake wall clock moves one second per
poll, so the simulator's `Retry-After` waits (two seconds, also as HTTP dates) pass without
sleeping, while requests, timeouts and the per-poll deadline run in real time over loopback.
The timeout is a hundred times what a normal answer takes, so that a loaded machine does not
turn a normal answer into a timeout; slow answers are rare, as each costs the whole timeout.
After every poll the outcome, `magnet_up` and the data served are checked against what the
simulator says it did; at the end the counters, memory and threads.
"""

from __future__ import annotations

import gc
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import SECRET_KEY, FakeClock
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from magnet_exporter.client import MagnetClient
from magnet_exporter.collector import DataCollector, StatusCollector
from magnet_exporter.demo import DemoApiServer, FaultRates, SimulatedMagnet
from magnet_exporter.keys import StaticKey
from magnet_exporter.poller import MAX_RETRY_AFTER_SECONDS, Poller, PollMetrics, RetryPolicy
from magnet_exporter.series import SessionSeries
from magnet_exporter.sources import InProcessSource

POLLS = 500
WARM_UP = 100
"""Polls before the first memory and thread reading: caches, pools and arenas fill up first."""
LABELS = ("status", "pr_status", "model")
LIMIT = 128 * 1024
"""The exporter's byte limit: five times a normal answer, a quarter of `oversized`."""
TIMEOUT = 1.0
"""The request timeout, as long as the poll's deadline: a slow first answer ends the poll."""
RATES = FaultRates(
    server_error=0.08,
    rate_limited=0.03,
    slow=0.0015,
    truncated=0.04,
    not_json=0.04,
    oversized=0.03,
    reset=0.08,
    retry_after_seconds=2,
    slow_seconds=2 * TIMEOUT,
    oversized_bytes=4 * LIMIT,
)
RETRIES = RetryPolicy(max_attempts=2, base_delay=0.005, max_delay=0.02)
"""Two attempts, so that a retried failure that happens again is seen too."""
INTERVAL = 1.25
"""Only sets the per-poll deadline (1 s): the test paces the polls itself."""

OUTCOME_OF = {
    "ok": "success",
    "server_error": "server_error",
    "rate_limited": "rate_limited",
    "slow": "timeout",
    "truncated": "invalid_response",
    "not_json": "invalid_response",
    "oversized": "too_large",
    "reset": "connection_error",
}
"""The outcome a poll must report when the last request it sent was met this way."""
RETRIED = frozenset({"server_error", "rate_limited", "slow", "reset"})

RSS_TOLERANCE = 4 * 2**20
"""Growth allowed over 400 polls after warm-up. Allocator arenas and pool pages come and go
by a few hundred kilobytes; a leak of one 25 KB answer, or one snapshot, per poll would grow
by 10 MB and fail."""


def resident_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def os_threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc/self/status")


def settled(threads: int, timeout: float = 10.0) -> int:
    """Wait for the simulator's answer threads (a slow one sleeps 2 s) to end; count threads."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.02)
    return os_threads()


def reading(threads: int) -> tuple[int, int]:
    settled_threads = settled(threads)
    gc.collect()
    return resident_bytes(), settled_threads


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def faulty_api(clock: FakeClock) -> Iterator[DemoApiServer]:
    server = DemoApiServer(SimulatedMagnet(seed=11, clock=clock), faults=RATES).start()
    try:
        yield server
    finally:
        server.stop()


class Soak:
    """A poller against the faulty simulator, with the checks after each poll."""

    def __init__(self, http: httpx.Client, api: DemoApiServer, clock: FakeClock) -> None:
        self.api = api
        self.clock = clock
        self.registry = CollectorRegistry()
        key = StaticKey(SecretStr(SECRET_KEY))
        client = MagnetClient(http, api.url, key, max_response_bytes=LIMIT)
        self.poller = Poller(
            InProcessSource(client, LABELS),
            SessionSeries(LABELS, 100),
            PollMetrics(self.registry),
            "acme",
            INTERVAL,
            clock,
            retry=RETRIES,
            rng=random.Random(3),
            monotonic=clock,  # Retry-After waits run on the test's clock too
        )
        states = lambda: {"acme": self.poller.state}  # noqa: E731
        self.registry.register(StatusCollector(states))
        self.registry.register(DataCollector(states, LABELS, 1e9))
        self.outcomes: list[str] = []

    def poll(self) -> None:
        """Poll once and check the result against what the simulator did."""
        before, previous = self.api.requests, self.poller.state
        state = self.poller.poll_once()
        sent = self.api.requests - before
        kinds = [served.kind for served in self.api.served][-sent:] if sent else []
        assert state.last_outcome is not None
        outcome = state.last_outcome.value
        self.outcomes.append(outcome)
        assert sent <= RETRIES.max_attempts
        assert set(kinds[:-1]) <= RETRIED, kinds  # only what may pass is retried
        # No request at all: the poll fell inside a Retry-After wait.
        assert outcome == (OUTCOME_OF[kinds[-1]] if kinds else "rate_limited"), kinds
        assert state.up is (outcome == "success")
        served = self.values()
        assert served.get("magnet_up") == (1.0 if state.up else 0.0)
        if state.up:
            self.check_data(served)
        else:
            assert state.snapshot is previous.snapshot  # the last good data, kept

    def check_data(self, served: dict[str, float]) -> None:
        """The stats served are those of the simulator's answer at this moment."""
        stats = json.loads(self.api.sessions_body("acme"))["stats"]
        assert served.get("magnet_merges_past_week") == stats["mergesPastWeek"]
        assert served.get("magnet_humans_prompting") == stats["humansPromptingNow"]

    def values(self) -> dict[str, float]:
        """Every sample of the organization without other labels, from one collection."""
        return {
            sample.name: sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.labels == {"organization": "acme"}
        }

    def totals(self, family: str, label: str) -> dict[str, float]:
        return {
            sample.labels[label]: sample.value
            for metric in self.registry.collect()
            if metric.name == family
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.value
        }


def test_hundreds_of_polls_against_a_faulty_api(
    faulty_api: DemoApiServer, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    with httpx.Client(timeout=TIMEOUT) as http:
        soak = Soak(http, faulty_api, clock)
        python_threads = threading.active_count()
        for number in range(POLLS):
            if number == WARM_UP:
                rss_before, threads_before = reading(python_threads)
            soak.poll()
            clock.advance(1)
        rss_after, threads_after = reading(python_threads)

        # Every kind of failure happened, and each poll was counted once, each request too.
        assert set(soak.outcomes) == set(OUTCOME_OF.values())
        polls = soak.totals("magnet_exporter_polls", "outcome")
        assert sum(polls.values()) == POLLS
        assert polls == {outcome: soak.outcomes.count(outcome) for outcome in set(soak.outcomes)}
        requests = soak.totals("magnet_exporter_requests", "code")
        assert sum(requests.values()) == faulty_api.requests
        assert {"200", "429", "500", "502", "503", "timeout", "connection_error"} <= set(requests)

        # The faults stop: the next poll after the last wait brings fresh data back.
        faulty_api.faults = None
        clock.advance(MAX_RETRY_AFTER_SECONDS)
        soak.poll()
        assert soak.poller.state.up
        soak.check_data(soak.values())
    took = time.monotonic() - started
    polling = soak.registry.get_sample_value(
        "magnet_exporter_poll_duration_seconds_sum", {"organization": "acme"}
    )

    assert threads_after == threads_before
    assert rss_after - rss_before < RSS_TOLERANCE
    with capsys.disabled():
        print(
            f"\nsoak: {POLLS} polls, {faulty_api.requests} requests in {took:.1f} s "
            f"({polling:.1f} s polling); "
            f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB; "
            f"threads {threads_before} -> {threads_after}; "
            + ", ".join(f"{k}={int(v)}" for k, v in sorted(polls.items()))
        )
