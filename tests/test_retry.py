"""Retries within a poll, its deadline, and Retry-After: against the simulated API over loopback."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from conftest import (
    SECRET_KEY,
    FakeClock,
    exporter_env,
    free_port,
    wait_for_status,
    wait_until,
)
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from magnet_exporter.client import MagnetClient, Outcome
from magnet_exporter.demo import DemoApiServer, Fault
from magnet_exporter.keys import StaticKey
from magnet_exporter.poller import MAX_RETRY_AFTER_SECONDS, Poller, PollMetrics, RetryPolicy
from magnet_exporter.series import SessionSeries
from magnet_exporter.sources import InProcessSource

QUICK_RETRIES = RetryPolicy(base_delay=0.01, max_delay=0.05)
SLOW = Fault(status=200, body=b'{"sessions": []}', delay=30.0)
"""An answer later than any bound here (the simulator ends the wait when it stops)."""
PATIENCE = 0.5
"""The request timeout where a fault must time out: 50 times what an answer takes here."""


class RecordingWaiter:
    """Records the pauses asked for and returns at once (never told to stop)."""

    def __init__(self) -> None:
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        return False


def retry_after(value: object) -> tuple[tuple[str, str], ...]:
    return (("Retry-After", str(value)),)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2) as client:
        yield client


Make = Callable[..., Poller]


@pytest.fixture
def make(http: httpx.Client, simulator: DemoApiServer, registry: CollectorRegistry) -> Make:
    def build(
        interval: float = 60,
        clock: Callable[[], float] | None = None,
        retry: RetryPolicy = QUICK_RETRIES,
        rng: random.Random | None = None,
        client: httpx.Client = http,
        max_response_bytes: int = 2**20,
        monotonic: Callable[[], float] | None = None,
    ) -> Poller:
        """Without `monotonic`, `clock` is both clocks: one that never steps."""
        magnet = MagnetClient(
            client,
            simulator.url,
            StaticKey(SecretStr(SECRET_KEY)),
            max_response_bytes=max_response_bytes,
        )
        series = SessionSeries(("status",), 100)
        return Poller(
            InProcessSource(magnet, series.label_names),
            series,
            PollMetrics(registry),
            "acme",
            interval,
            clock or FakeClock(),
            retry=retry,
            rng=rng or random.Random(0),
            monotonic=monotonic or clock or FakeClock(0.0),
        )

    return build


def requests(registry: CollectorRegistry) -> dict[str, float]:
    """`magnet_exporter_requests_total` by code."""
    return {
        sample.labels["code"]: sample.value
        for metric in registry.collect()
        if metric.name == "magnet_exporter_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def polls(registry: CollectorRegistry) -> dict[str, float]:
    """`magnet_exporter_polls_total` by outcome, outcomes never seen left out."""
    return {
        sample.labels["outcome"]: sample.value
        for metric in registry.collect()
        if metric.name == "magnet_exporter_polls"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }


def test_a_500_then_a_200_is_one_successful_poll_of_two_requests(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    simulator.push(Fault(status=500))
    state = make().poll_once()
    assert state.up
    assert state.last_outcome is Outcome.SUCCESS
    assert simulator.requests == 2
    assert requests(registry) == {"500": 1, "200": 1}
    assert polls(registry) == {"success": 1}


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=502),
        Fault(status=503),
        Fault(status=504),
        Fault(status=429),  # without Retry-After: the backoff alone
        Fault(status=200, body=b"{}", delay=30.0),  # far slower than the timeout
    ],
    ids=["502", "503", "504", "429", "timeout"],
)
def test_each_transient_failure_is_retried(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry, fault: Fault
) -> None:
    simulator.push(fault)
    with httpx.Client(timeout=PATIENCE) as impatient:
        assert make(client=impatient).poll_once().up
    assert simulator.requests == 2
    first = "timeout" if fault.delay else str(fault.status)
    assert requests(registry) == {first: 1, "200": 1}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, "client_error"), (401, "unauthorized"), (403, "forbidden"), (404, "client_error")],
)
def test_client_errors_are_never_retried(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry, status: int, outcome: str
) -> None:
    simulator.fault = Fault(status=status)
    state = make().poll_once()
    assert state.last_outcome == outcome
    assert simulator.requests == 1
    assert requests(registry) == {str(status): 1}
    assert polls(registry) == {outcome: 1}


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (Fault(status=200, body=b"<html>maintenance</html>"), "invalid_response"),
        (Fault(status=200, body=b"x" * (2**20 + 1)), "too_large"),
        (Fault(status=302), "invalid_response"),
    ],
    ids=["not-json", "too-large", "redirect"],
)
def test_bad_answers_are_not_retried(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry, fault: Fault, outcome: str
) -> None:
    simulator.fault = fault
    assert make().poll_once().last_outcome == outcome
    assert simulator.requests == 1
    assert polls(registry) == {outcome: 1}


def test_a_lasting_failure_gets_max_attempts_then_gives_up(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    simulator.fault = Fault(status=500)
    state = make().poll_once()
    assert state.last_outcome is Outcome.SERVER_ERROR
    assert simulator.requests == QUICK_RETRIES.max_attempts == 3
    assert requests(registry) == {"500": 3}
    assert polls(registry) == {"server_error": 1}


def test_backoff_is_exponential_with_full_jitter_from_the_injected_random(
    make: Make, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(status=500)
    policy = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=1.5)
    waiter = RecordingWaiter()
    make(retry=policy, rng=random.Random(42)).poll_once(waiter)
    same = random.Random(42)
    # Uniform in [0, min(max, base * 2^n)): 0.5, 1.0, then capped at 1.5.
    assert waiter.pauses == [same.uniform(0, 0.5), same.uniform(0, 1.0), same.uniform(0, 1.5)]
    assert simulator.requests == 4


def test_backoff_spreads_over_its_whole_range() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=5.0)
    rng = random.Random(1)
    for retries_done, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        draws = [policy.backoff(retries_done, rng) for _ in range(2000)]
        assert 0 <= min(draws) < 0.02 * ceiling
        assert 0.98 * ceiling < max(draws) <= ceiling


def test_the_deadline_cuts_a_request_timeout_longer_than_the_poll(
    make: Make, simulator: DemoApiServer
) -> None:
    simulator.fault = SLOW
    with httpx.Client(timeout=30) as patient:
        poller = make(interval=1.0, client=patient)  # deadline: 0.8 s
        started = time.monotonic()
        state = poller.poll_once()
        took = time.monotonic() - started
    assert state.last_outcome is Outcome.TIMEOUT
    assert 0.75 <= took < 10  # cut at 0.8 s, not at 30 s; the rest is room for a loaded machine
    assert simulator.requests == 1


def test_the_deadline_holds_across_retries(make: Make, simulator: DemoApiServer) -> None:
    simulator.fault = SLOW
    many = RetryPolicy(max_attempts=100, base_delay=0.01, max_delay=0.02)
    with httpx.Client(timeout=0.2) as impatient:
        poller = make(interval=1.0, retry=many, client=impatient)
        started = time.monotonic()
        state = poller.poll_once()
        took = time.monotonic() - started
    assert state.last_outcome is Outcome.TIMEOUT
    assert 0.75 <= took < 10  # cut at 0.8 s, where 100 attempts would take 20 s
    assert 2 <= simulator.requests <= 5  # 0.2 s each and short pauses, cut at 0.8 s


def test_no_retry_whose_pause_would_end_past_the_deadline(
    make: Make, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(status=500)
    slow_backoff = RetryPolicy(base_delay=100, max_delay=100)
    rng = random.Random(7)
    assert random.Random(7).uniform(0, 100) > 8  # the first pause, past the 8 s deadline
    waiter = RecordingWaiter()
    state = make(interval=10, retry=slow_backoff, rng=rng).poll_once(waiter)
    assert state.last_outcome is Outcome.SERVER_ERROR
    assert waiter.pauses == []
    assert simulator.requests == 1


def test_stop_ends_a_pause_between_retries_at_once(make: Make, simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=500)
    stop = threading.Event()
    poller = make(interval=120, retry=RetryPolicy(base_delay=50, max_delay=50))
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    state = poller.poll_once(stop)
    assert time.monotonic() - started < 10  # the pause was 50 s
    assert state.last_outcome is Outcome.SERVER_ERROR
    assert simulator.requests == 1


def test_no_request_during_retry_after_then_polling_resumes(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    """The poll loop runs as in production, every 0.05 s; the 2 s wait runs on the test's clock."""
    clock = FakeClock()
    simulator.push(Fault(status=429, headers=retry_after(2)))
    poller = make(interval=0.05, clock=clock)

    def rate_limited() -> float:
        return polls(registry).get("rate_limited", 0.0)

    stop = threading.Event()
    loop = threading.Thread(target=poller.run, args=(stop,), name="poll-loop")
    loop.start()
    try:
        # The 429 itself, then held-back polls: however many run, none sends a request.
        wait_until(lambda: rate_limited() >= 10, "ten polls held back")
        assert simulator.requests == 1
        clock.advance(1.5)
        held = rate_limited()
        wait_until(lambda: rate_limited() >= held + 5, "five more polls held back")
        assert simulator.requests == 1  # 1.5 s into the 2 s wait: still nothing sent
        clock.advance(0.5)  # the wait is over
        held = rate_limited()
        wait_until(lambda: simulator.requests >= 2 and poller.state.up, "a successful poll")
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    # Polling resumed with the first poll after the wait: only one already under way when the
    # clock moved may still have been held back.
    assert rate_limited() <= held + 1
    first, second, *_ = simulator.served
    assert first.kind == "fault"
    assert second.kind == "ok"
    counted = polls(registry)
    assert sum(counted.values()) == registry.get_sample_value(
        "magnet_exporter_poll_duration_seconds_count", {"organization": "acme"}
    )
    assert requests(registry)["429"] == 1
    assert poller.state.up


def test_retry_after_as_a_date_holds_back_the_polls_until_then(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    clock = FakeClock()
    poller = make(clock=clock)
    assert poller.poll_once().up
    simulator.push(Fault(status=429, headers=retry_after(formatdate(clock() + 120, usegmt=True))))
    assert poller.poll_once().last_outcome is Outcome.RATE_LIMITED
    assert simulator.requests == 2
    clock.advance(119)
    held = poller.poll_once()
    assert simulator.requests == 2
    assert held.last_outcome is Outcome.RATE_LIMITED
    assert not held.up
    assert held.last_error is not None
    assert held.last_error.startswith("no request sent: Magnet asked to wait (Retry-After)")
    assert held.snapshot is not None  # the last good data is kept, as after any failure
    clock.advance(1)
    assert poller.poll_once().up
    assert simulator.requests == 3
    assert polls(registry) == {"success": 2, "rate_limited": 2}
    assert requests(registry) == {"200": 2, "429": 1}


@pytest.mark.parametrize("value", ["86400", "99999999999", "9" * 400])
def test_retry_after_is_capped_at_ten_minutes(
    make: Make, simulator: DemoApiServer, value: str
) -> None:
    clock = FakeClock()
    poller = make(clock=clock)
    simulator.push(Fault(status=429, headers=retry_after(value)))
    poller.poll_once()
    clock.advance(MAX_RETRY_AFTER_SECONDS - 1)
    assert poller.poll_once().last_outcome is Outcome.RATE_LIMITED
    assert simulator.requests == 1
    clock.advance(1)
    assert poller.poll_once().up
    assert MAX_RETRY_AFTER_SECONDS == 600


def test_a_503_with_retry_after_holds_back_the_next_polls(
    make: Make, simulator: DemoApiServer
) -> None:
    clock = FakeClock()
    poller = make(interval=10, clock=clock)  # the 30 s wait does not fit in the 8 s deadline
    simulator.push(Fault(status=503, headers=retry_after(30)))
    assert poller.poll_once().last_outcome is Outcome.SERVER_ERROR
    clock.advance(20)
    assert poller.poll_once().last_outcome is Outcome.RATE_LIMITED
    assert simulator.requests == 1
    clock.advance(10)
    assert poller.poll_once().up


def test_a_short_retry_after_is_waited_out_within_the_poll(
    make: Make, simulator: DemoApiServer, registry: CollectorRegistry
) -> None:
    clock = FakeClock()
    poller = make(clock=clock)  # 60 s interval: a 3 s wait fits in the 48 s deadline
    simulator.push(Fault(status=429, headers=retry_after(3)))
    waiter = RecordingWaiter()
    assert poller.poll_once(waiter).up
    (pause,) = waiter.pauses
    assert pause == 3
    assert requests(registry) == {"429": 1, "200": 1}
    assert poller.poll_once().up  # the wait was served within the poll: nothing held back
    assert simulator.requests == 3


def test_the_wait_is_logged_once(
    make: Make, simulator: DemoApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    poller = make(interval=10, clock=clock)
    simulator.push(Fault(status=429, headers=retry_after(30)))
    with caplog.at_level(logging.DEBUG, logger="magnet_exporter"):
        for _ in range(5):
            poller.poll_once()
            clock.advance(5)
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in loud] == [
        "Magnet asked to wait (Retry-After); no request to this organization until then",
        "poll failed",
    ]
    assert vars(loud[0])["retry_after_seconds"] == 30
    assert vars(loud[0])["status"] == 429
    held = [r for r in caplog.records if r.getMessage() == "poll held back"]
    assert len(held) == 4
    assert all(vars(r)["requests"] == 0 for r in held)


@pytest.mark.parametrize("value", ["soon", "-3", "", formatdate(0, usegmt=True)])
def test_a_retry_after_that_asks_for_nothing_holds_nothing_back(
    make: Make, simulator: DemoApiServer, value: str
) -> None:
    poller = make()
    simulator.push(Fault(status=429, headers=retry_after(value)))
    assert poller.poll_once().up  # retried after the backoff alone
    assert poller.poll_once().up
    assert simulator.requests == 3


@pytest.mark.parametrize("step", [-300.0, -3600.0, 3600.0])
def test_a_step_of_the_wall_clock_neither_stretches_nor_shortens_the_wait(
    make: Make, simulator: DemoApiServer, step: float
) -> None:
    """NTP or a restored VM moves the wall clock; Retry-After: 60 still means 60 s."""
    wall, monotonic = FakeClock(), FakeClock(1000.0)
    poller = make(clock=wall, monotonic=monotonic)
    simulator.push(Fault(status=429, headers=retry_after(60)))
    assert poller.poll_once().last_outcome is Outcome.RATE_LIMITED
    wall.advance(step)
    monotonic.advance(59)
    assert poller.poll_once().last_outcome is Outcome.RATE_LIMITED
    assert simulator.requests == 1
    monotonic.advance(1)
    assert poller.poll_once().up
    assert simulator.requests == 2


class SteppingClock:
    """A wall clock that steps an hour back, then an hour forward, at every reading."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return FakeClock().now + (-3600.0 if self.readings % 2 else 3600.0)


def test_a_stepping_wall_clock_changes_no_backoff(make: Make, simulator: DemoApiServer) -> None:
    simulator.push(Fault(status=500), Fault(status=503))
    stepping = SteppingClock()
    waiter = RecordingWaiter()
    poller = make(clock=stepping, monotonic=time.monotonic, rng=random.Random(5))
    assert poller.poll_once(waiter).up
    expected = random.Random(5)
    assert waiter.pauses == [QUICK_RETRIES.backoff(n, expected) for n in range(2)]
    assert stepping.readings > 0  # the clock was read, and its steps changed nothing
    assert simulator.requests == 3


def test_sigterm_in_the_middle_of_retries_exits_within_2_seconds(
    tmp_path: Path, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(status=503)
    port = free_port()
    command = [sys.executable, "-m", "magnet_exporter", "--api-url", simulator.url]
    command += ["--listen-address", f"127.0.0.1:{port}"]
    env = exporter_env(MAGNET_API_KEY=SECRET_KEY)
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_status(f"http://127.0.0.1:{port}/-/healthy", 200, timeout=15)
        deadline = time.monotonic() + 10
        while simulator.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert simulator.requests >= 1  # a 503: the poller now pauses before a retry, or retries
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=2)
        assert time.monotonic() - sent < 2
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert process.returncode == 0, stderr
