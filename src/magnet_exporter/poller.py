"""The polling loop: fetch (retrying what may pass), parse, stabilize, swap in; count and log."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from magnet_exporter.client import Outcome, PollError, retry_after_seconds
from magnet_exporter.model import Snapshot, checked_fields
from magnet_exporter.series import SessionSeries
from magnet_exporter.sources import SnapshotSource

log = logging.getLogger("magnet_exporter.poller")

Clock = Callable[[], float]
"""A clock in seconds: wall-clock time since the epoch (`time.time`) for what is shown as a
time, a monotonic clock (`time.monotonic`) for every duration, which a step of the wall clock
(NTP, a restored VM) must not stretch or shrink."""

POLL_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
MAX_RETRY_AFTER_SECONDS = 600.0
"""The longest wait a `Retry-After` answer can impose: a bad header must not silence us for days."""


class Waiter(Protocol):
    """Sleeps up to `timeout` seconds unless woken; True if woken (a `threading.Event`)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep; return True if told to stop."""
        ...


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How one poll retries transient failures: capped exponential backoff with full jitter."""

    max_attempts: int = 3
    """Requests per poll at most, the first one included."""
    base_delay: float = 0.5
    max_delay: float = 5.0
    deadline_fraction: float = 0.8
    """Share of the poll interval that one poll may take, its retries and pauses included."""

    def backoff(self, retries_done: int, rng: random.Random) -> float:
        """Seconds to sleep before the next retry: uniform in [0, min(max, base * 2^retries))."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**retries_done))


class HeldBackError(PollError):
    """A poll that sent no request because Magnet's `Retry-After` has not expired yet."""


@dataclasses.dataclass(frozen=True)
class PollState:
    """What the exporter knows after its latest poll; replaced whole, never changed."""

    up: bool = False
    snapshot: Snapshot | None = None
    """The last good data (it outlives failed polls until it is stale)."""
    last_success: float | None = None
    """Unix time at which the last good poll ended, as shown."""
    last_poll: float | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None
    success_age_origin: float | None = None
    """The monotonic time at which the last good poll ended, for its age (staleness)."""


class PollMetrics:
    """The exporter's own poll counter and duration histogram, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.polls = Counter(
            "magnet_exporter_polls",
            "Polls of the Magnet API by outcome.",
            ["organization", "outcome"],
            registry=registry,
        )
        self.requests = Counter(
            "magnet_exporter_requests",
            "HTTP requests to the Magnet API, retries included, by HTTP status code "
            "(or timeout, connection_error).",
            ["organization", "code"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "magnet_exporter_received_bytes",
            "Body bytes received from the Magnet API as sent (compressed or not), every "
            "request included.",
            ["organization"],
            registry=registry,
        )
        self.response_size = Gauge(
            "magnet_exporter_response_size_bytes",
            "Decoded size of the body of the last successful answer.",
            ["organization"],
            registry=registry,
        )
        self.invalid_values = Counter(
            "magnet_exporter_invalid_values",
            "Values in the API's answers read as missing because their type or format was "
            "wrong, by field.",
            ["organization", "field"],
            registry=registry,
        )
        self.duration = Histogram(
            "magnet_exporter_poll_duration_seconds",
            "Duration of each poll of the Magnet API, parsing included.",
            ["organization"],
            buckets=POLL_DURATION_BUCKETS,
            registry=registry,
        )

    def start(self, organization: str, fields: tuple[str, ...]) -> None:
        """Give every outcome and checked field a series at 0, for `rate()` and `increase()`."""
        for outcome in Outcome:
            self.polls.labels(organization, outcome.value)
        for field in fields:
            self.invalid_values.labels(organization, field)
        self.duration.labels(organization)
        self.received_bytes.labels(organization)
        self.response_size.labels(organization)


class Poller:
    """Polls one organization; `state` is always a complete `PollState`.

    Within a poll, transient failures (connection errors, timeouts, 5xx, 429) are retried
    after a jittered backoff, inside a deadline shorter than the interval. After a 429 or 503
    with `Retry-After`, no request is sent until it expires; a poll in that time is counted as
    `rate_limited` without calling the API.

    `clock` (wall) stamps what is shown as a time; `monotonic` measures the waits that span
    polls (Retry-After, the age of the last good data). Deadlines within a poll are on
    `time.monotonic()`, which the client and the poll workers read too.
    """

    def __init__(
        self,
        source: SnapshotSource,
        series: SessionSeries,
        metrics: PollMetrics,
        organization: str,
        interval: float,
        clock: Clock = time.time,
        *,
        retry: RetryPolicy = RetryPolicy(),  # frozen, so one default is safe to share
        rng: random.Random | None = None,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self._source = source
        self._series = series
        self._metrics = metrics
        self._organization = organization
        self._interval = interval
        self._clock = clock
        self._monotonic = monotonic
        self._retry = retry
        # Jitter only spreads retries out; it need not be unpredictable.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._quiet_until: float | None = None
        """The time (of `monotonic`) before which Magnet asked for no request."""
        self._requests = 0
        """Requests sent in the current poll."""
        self._attempts = 0
        """Requests tried in the current poll, sent or not."""
        self.state = PollState()
        metrics.start(organization, checked_fields(series.label_names))

    def poll_once(self, stop: Waiter | None = None) -> PollState:
        """Poll now, publish the new state and return it; never raises for upstream trouble.

        Pauses between retries end early when `stop` is set.
        """
        started = time.monotonic()
        self._requests = self._attempts = 0
        try:
            snapshot = self._fetch_snapshot(stop if stop is not None else threading.Event())
        except PollError as error:
            outcome = error.outcome
            state = self._failed(error, started)
        else:
            outcome = Outcome.SUCCESS
            state = PollState(True, snapshot, self._clock(), None, outcome, None, self._monotonic())
            fields = {"outcome": outcome.value, "sessions": self._session_total(snapshot)}
            log.debug("poll succeeded", extra=self._log_fields(started, fields))
            self._count_invalid(snapshot)
        self._metrics.duration.labels(self._organization).observe(time.monotonic() - started)
        self._metrics.polls.labels(self._organization, outcome.value).inc()
        self.state = dataclasses.replace(state, last_poll=self._clock())
        return self.state

    def _count_invalid(self, snapshot: Snapshot) -> None:
        """Count the values read as missing, and say how many per field (never the values)."""
        if not snapshot.invalid:
            return
        for field, count in snapshot.invalid.items():
            self._metrics.invalid_values.labels(self._organization, field).inc(count)
        log.warning(
            "values of the wrong type or format were read as missing",
            extra={"organization": self._organization, **dict(sorted(snapshot.invalid.items()))},
        )

    def _failed(self, error: PollError, started: float) -> PollState:
        outcome, status, reason = error.outcome.value, error.status_code, error.reason
        fields = {"outcome": outcome, "status": status, "reason": reason}
        if isinstance(error, HeldBackError):
            # The wait was logged when it began: one line, not one per poll.
            log.debug("poll held back", extra=self._log_fields(started, fields))
        else:
            log.warning("poll failed", extra=self._log_fields(started, fields))
        return dataclasses.replace(
            self.state, up=False, last_outcome=error.outcome, last_error=error.reason
        )

    def _fetch_snapshot(self, stop: Waiter) -> Snapshot:
        snapshot, overflowing = self._series.stabilize(self._fetch(stop))
        for label in overflowing:
            log.warning(
                "label has more values than MAGNET_MAX_LABEL_VALUES; the rest count as other",
                extra={"organization": self._organization, "label": label},
            )
        return snapshot

    def _fetch(self, stop: Waiter) -> Snapshot:
        """Return the snapshot of the first good answer in time, or raise the last error."""
        waiting = self._retry_after_left()
        if waiting > 0:
            raise HeldBackError(
                Outcome.RATE_LIMITED,
                f"no request sent: Magnet asked to wait (Retry-After), {waiting:.0f} s left",
            )
        deadline = time.monotonic() + self._interval * self._retry.deadline_fraction
        while True:
            try:
                return self._request(deadline)
            except PollError as error:
                pause = self._pause_before_retry(error, deadline)
                # A pause can oversleep a little: past the deadline, no request goes out.
                if pause is None or stop.wait(pause) or time.monotonic() >= deadline:
                    raise
            self._quiet_until = None  # the pause covered what Retry-After asked for

    def _request(self, deadline: float) -> Snapshot:
        """Send one request and count it by its status code (or its failure) and its bytes."""
        self._attempts += 1
        requests, organization = self._metrics.requests, self._organization
        try:
            answer = self._source.fetch(deadline)
        except PollError as error:
            self._metrics.received_bytes.labels(organization).inc(error.received_bytes)
            if error.sent:  # a poll that sent nothing is counted in polls_total only
                self._requests += 1
                requests.labels(organization, error.code).inc()
            self._note_retry_after(error)
            raise
        self._requests += 1
        requests.labels(organization, str(answer.status_code)).inc()
        self._metrics.received_bytes.labels(organization).inc(answer.received_bytes)
        self._metrics.response_size.labels(organization).set(answer.body_bytes)
        return answer.snapshot

    def _pause_before_retry(self, error: PollError, deadline: float) -> float | None:
        """Seconds to sleep before retrying, or None when this poll must give up."""
        if not error.transient or self._attempts >= self._retry.max_attempts:
            return None
        backoff = self._retry.backoff(self._attempts - 1, self._rng)
        pause = max(backoff, self._retry_after_left())
        if time.monotonic() + pause >= deadline:
            return None
        return pause

    def _note_retry_after(self, error: PollError) -> None:
        """Start the wait a `Retry-After` header asks for, and say so once."""
        if error.retry_after is None:
            return
        # A date is read against the wall clock; the wait itself runs on the monotonic one.
        asked = retry_after_seconds(error.retry_after, self._clock())
        if asked is None or asked <= 0:
            return  # an unreadable or past value: the backoff alone applies
        seconds = min(asked, MAX_RETRY_AFTER_SECONDS)
        self._quiet_until = self._monotonic() + seconds
        until = datetime.fromtimestamp(self._clock() + seconds, timezone.utc)
        log.warning(
            "Magnet asked to wait (Retry-After); no request to this organization until then",
            extra={
                "organization": self._organization,
                "status": error.status_code,
                "retry_after_seconds": round(seconds, 3),
                "until": until.isoformat(timespec="seconds"),
            },
        )

    def _retry_after_left(self) -> float:
        if self._quiet_until is None:
            return 0.0
        left = self._quiet_until - self._monotonic()
        if left <= 0:
            self._quiet_until = None
            return 0.0
        return left

    def _log_fields(self, started: float, fields: Mapping[str, object]) -> dict[str, object]:
        duration = round(time.monotonic() - started, 3)
        present = {k: v for k, v in fields.items() if v is not None}
        return {
            "organization": self._organization,
            **present,
            "requests": self._requests,
            "duration_seconds": duration,
        }

    @staticmethod
    def _session_total(snapshot: Snapshot) -> int:
        return sum(group.count for group in snapshot.sessions.values())

    def run(self, stop: threading.Event, delay: float = 0.0) -> None:
        """Poll after `delay`, then every interval (start to start) until `stop` is set."""
        stop.wait(delay)
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once(stop)
            except Exception:  # a bug of ours must not end polling for good
                log.exception("poll crashed; polling goes on", extra=self._log_fields(started, {}))
            stop.wait(max(0.0, self._interval - (time.monotonic() - started)))
