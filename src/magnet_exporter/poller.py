"""The polling loop: fetch, parse, stabilize, swap in; count and log every outcome."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram

from magnet_exporter.client import MagnetClient, Outcome, PollError
from magnet_exporter.model import Snapshot, parse_snapshot
from magnet_exporter.series import SessionSeries

log = logging.getLogger("magnet_exporter.poller")

Clock = Callable[[], float]
"""Wall-clock time in seconds since the epoch (`time.time` outside tests)."""

POLL_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


@dataclasses.dataclass(frozen=True)
class PollState:
    """What the exporter knows after its latest poll; replaced whole, never changed."""

    up: bool = False
    snapshot: Snapshot | None = None
    """The last good data (it outlives failed polls until it is stale)."""
    last_success: float | None = None
    last_poll: float | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None


class PollMetrics:
    """The exporter's own poll counter and duration histogram, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.polls = Counter(
            "magnet_exporter_polls",
            "Polls of the Magnet API by outcome.",
            ["organization", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "magnet_exporter_poll_duration_seconds",
            "Duration of each poll of the Magnet API, parsing included.",
            ["organization"],
            buckets=POLL_DURATION_BUCKETS,
            registry=registry,
        )

    def start(self, organization: str) -> None:
        """Give every outcome a series at 0, so `rate()` and `increase()` see the first failure."""
        for outcome in Outcome:
            self.polls.labels(organization, outcome.value)
        self.duration.labels(organization)


class Poller:
    """Polls one organization; `state` is always a complete `PollState`."""

    def __init__(
        self,
        client: MagnetClient,
        series: SessionSeries,
        metrics: PollMetrics,
        organization: str,
        interval: float,
        clock: Clock = time.time,
    ) -> None:
        self._client = client
        self._series = series
        self._metrics = metrics
        self._organization = organization
        self._interval = interval
        self._clock = clock
        self.state = PollState()
        metrics.start(organization)

    def poll_once(self) -> PollState:
        """Poll now, publish the new state and return it; never raises for upstream trouble."""
        started = time.monotonic()
        try:
            snapshot = self._fetch_snapshot()
        except PollError as error:
            outcome, message = error.outcome, error.reason
            fields = {"outcome": outcome.value, "status": error.status_code, "reason": message}
            log.warning("poll failed", extra=self._log_fields(started, fields))
            state = dataclasses.replace(
                self.state, up=False, last_outcome=outcome, last_error=message
            )
        else:
            outcome = Outcome.SUCCESS
            state = PollState(True, snapshot, self._clock(), None, outcome, None)
            fields = {"outcome": outcome.value, "sessions": self._session_total(snapshot)}
            log.debug("poll succeeded", extra=self._log_fields(started, fields))
        self._metrics.duration.labels(self._organization).observe(time.monotonic() - started)
        self._metrics.polls.labels(self._organization, outcome.value).inc()
        self.state = dataclasses.replace(state, last_poll=self._clock())
        return self.state

    def _fetch_snapshot(self) -> Snapshot:
        body = self._client.fetch_sessions()
        try:
            parsed = parse_snapshot(body, self._series.label_names)
        except PollError:
            raise
        except Exception as exc:  # a body we did not foresee must not stop the exporter
            log.exception("unexpected error while parsing the response")
            raise PollError(Outcome.INVALID_RESPONSE, f"invalid response: {exc!r}"[:300]) from None
        snapshot, overflowing = self._series.stabilize(parsed)
        for label in overflowing:
            log.warning(
                "label has more values than MAGNET_MAX_LABEL_VALUES; the rest count as other",
                extra={"organization": self._organization, "label": label},
            )
        return snapshot

    def _log_fields(self, started: float, fields: Mapping[str, object]) -> dict[str, object]:
        duration = round(time.monotonic() - started, 3)
        present = {k: v for k, v in fields.items() if v is not None}
        return {"organization": self._organization, **present, "duration_seconds": duration}

    @staticmethod
    def _session_total(snapshot: Snapshot) -> int:
        return sum(group.count for group in snapshot.sessions.values())

    def run(self, stop: threading.Event, delay: float = 0.0) -> None:
        """Poll after `delay`, then every interval (start to start) until `stop` is set."""
        stop.wait(delay)
        while not stop.is_set():
            started = time.monotonic()
            self.poll_once()
            stop.wait(max(0.0, self._interval - (time.monotonic() - started)))
