"""Poll states -> metric families: each organization's status, and its data while it is fresh."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.metrics_core import (
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from magnet_exporter import __version__
from magnet_exporter.model import (
    DURATION_BUCKETS,
    DURATION_LABELS,
    IDLE_BUCKETS,
    IDLE_LABELS,
    IDLE_SESSION_LABELS,
    GaugeHistogram,
    Snapshot,
    kept,
)
from magnet_exporter.poller import Clock, PollState

AS_OF = " As of the last successful poll."

STATS_METRICS = (
    ("mergesPastWeek", "magnet_merges_past_week", "Pull requests merged in the past week."),
    (
        "authorsPastWeek",
        "magnet_authors_past_week",
        "People who authored sessions in the past week.",
    ),
    ("humansPastWeek", "magnet_humans_past_week", "People active in the past week."),
    ("humansPromptingNow", "magnet_humans_prompting", "People prompting an agent right now."),
)
"""API stats field, metric name and help text of each organization stat."""

ORGANIZATION_METRICS = (
    (
        "oldest_active_created",
        "magnet_active_session_oldest_created_timestamp_seconds",
        "Unix time at which the oldest active session was created.",
    ),
    (
        "authors_past_day",
        "magnet_session_authors_past_day",
        "Distinct authors of the sessions active in the past 24 hours.",
    ),
    (
        "authors_past_week",
        "magnet_session_authors_past_week",
        "Distinct authors of the sessions active in the past 7 days.",
    ),
    (
        "last_created",
        "magnet_session_last_created_timestamp_seconds",
        "Unix time at which the newest session was created.",
    ),
    (
        "last_updated",
        "magnet_session_last_updated_timestamp_seconds",
        "Unix time of the most recent session update.",
    ),
)
"""Snapshot field, metric name and help text of each per-organization session gauge."""

States = Callable[[], Mapping[str, PollState]]
"""The current poll state of each organization, by the value of its `organization` label."""

DataVersion = tuple[tuple[str, int, Snapshot], ...]
"""Organization, `id` of its fresh snapshot and that snapshot, for each organization served.

Snapshots are replaced whole on each poll, never changed, so the `id` makes comparing two
versions an identity check (no deep comparison of thousands of groups), while holding the
snapshot itself keeps that `id` from being reused by a later snapshot.
"""


class StatusCollector(Collector):
    """`magnet_up`, build info and last success time of every organization: small, so per scrape.

    A scrape only reads the states the pollers swapped in last: it never waits on the network.
    """

    def __init__(self, states: States) -> None:
        self._states = states

    def describe(self) -> Iterable[Metric]:
        """Return the status families, empty: their names are fixed, whatever the states."""
        return list(_status_families())

    def collect(self) -> Iterator[Metric]:
        """Yield the status families of the current states."""
        up, build, last_success = _status_families()
        for organization, state in self._states().items():
            up.add_metric([organization], 1.0 if state.up else 0.0)
            build.add_metric([organization], {"version": __version__})
            if state.last_success is not None:
                last_success.add_metric([organization], state.last_success)
        yield up
        yield build
        if last_success.samples:
            yield last_success


def _status_families() -> tuple[GaugeMetricFamily, InfoMetricFamily, GaugeMetricFamily]:
    return (
        _gauge("magnet_up", "1 if the last poll of the Magnet API succeeded, else 0."),
        InfoMetricFamily(
            "magnet_exporter_build", "Version of the exporter.", labels=["organization"]
        ),
        _gauge(
            "magnet_exporter_last_success_timestamp_seconds",
            "Unix time at which the last successful poll ended.",
        ),
    )


class DataCollector(Collector):
    """The data families (stats and sessions) of every organization whose data is fresh.

    Once an organization's last good data is older than `stale_after`, it is left out, so
    dashboards show a gap instead of old numbers. Its age is measured on `monotonic`, the
    clock of the pollers' `monotonic` (a step of the wall clock changes no age). `version`
    tells when the output changes.
    """

    def __init__(
        self,
        states: States,
        label_names: tuple[str, ...],
        stale_after: float,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self._states = states
        self._label_names = label_names
        self._stale_after = stale_after
        self._monotonic = monotonic

    def describe(self) -> Iterable[Metric]:
        """Nothing: which families there are depends on the data."""
        return []

    def version(self) -> DataVersion:
        """Return what `collect` would render now: equal versions mean the same output."""
        now = self._monotonic()
        return tuple(
            (organization, id(state.snapshot), state.snapshot)
            for organization, state in self._states().items()
            if state.snapshot is not None and not self._is_stale(state.success_age_origin, now)
        )

    def _is_stale(self, succeeded: float | None, now: float) -> bool:
        return succeeded is None or now - succeeded > self._stale_after

    def collect(self) -> Iterator[Metric]:
        """Yield the non-empty data families of the organizations with fresh data."""
        data = _DataFamilies(self._label_names)
        for organization, _, snapshot in self.version():
            data.add(organization, snapshot)
        yield from (family for family in data.families() if family.samples)


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["organization", *labels])


class _DataFamilies:
    """The data metrics of every organization with fresh data."""

    def __init__(self, label_names: tuple[str, ...]) -> None:
        self._stats = {
            field: _gauge(name, documentation + AS_OF)
            for field, name, documentation in STATS_METRICS
        }
        self._sessions = _gauge(
            "magnet_sessions", "Sessions listed by the API, by labels." + AS_OF, label_names
        )
        self._messages = _gauge(
            "magnet_session_messages",
            "Messages in the listed sessions (sum of messageCount), by labels." + AS_OF,
            label_names,
        )
        self._created_day = _gauge(
            "magnet_sessions_created_past_day",
            "Listed sessions created in the past 24 hours, by labels." + AS_OF,
            label_names,
        )
        self._created_week = _gauge(
            "magnet_sessions_created_past_week",
            "Listed sessions created in the past 7 days, by labels." + AS_OF,
            label_names,
        )
        self._durations = GaugeHistogramMetricFamily(
            "magnet_session_duration_seconds",
            "Duration (updatedAt - createdAt) of the completed and failed sessions whose last "
            "activity is in the past 7 days." + AS_OF,
            labels=["organization", *(label_names[i] for i in kept(label_names, DURATION_LABELS))],
        )
        self._idle = GaugeHistogramMetricFamily(
            "magnet_active_session_idle_seconds",
            "Time since the last activity of each active session." + AS_OF,
            labels=["organization", *(label_names[i] for i in kept(label_names, IDLE_LABELS))],
        )
        self._organization = {
            field: _gauge(name, documentation + AS_OF)
            for field, name, documentation in ORGANIZATION_METRICS
        }
        self._idle_sessions = _gauge(
            "magnet_idle_session_last_activity_timestamp_seconds",
            "Unix time of the last activity of each active session idle for at least "
            "MAGNET_IDLE_SESSION_SECONDS, the longest idle first, at most "
            "MAGNET_IDLE_SESSIONS_MAX per organization." + AS_OF,
            IDLE_SESSION_LABELS,
        )
        self._idle_unlisted = _gauge(
            "magnet_idle_sessions_unlisted",
            "Active sessions idle for at least MAGNET_IDLE_SESSION_SECONDS that "
            "MAGNET_IDLE_SESSIONS_MAX left out." + AS_OF,
        )

    def add(self, organization: str, snapshot: Snapshot) -> None:
        """Add one organization's samples."""
        for field, value in snapshot.stats.items():  # a missing stat is left out, never made up
            self._stats[field].add_metric([organization], value)
        for key, group in snapshot.sessions.items():
            labels = [organization, *key]
            self._sessions.add_metric(labels, group.count)
            self._messages.add_metric(labels, group.messages)
            self._created_day.add_metric(labels, group.created_past_day)
            self._created_week.add_metric(labels, group.created_past_week)
        for key, histogram in snapshot.durations.items():
            _add_histogram(self._durations, [organization, *key], histogram, DURATION_BUCKETS)
        for key, histogram in snapshot.idle.items():
            _add_histogram(self._idle, [organization, *key], histogram, IDLE_BUCKETS)
        for field, family in self._organization.items():
            value = getattr(snapshot, field)
            if value is not None:  # no active session: no oldest one, rather than a made-up 0
                family.add_metric([organization], value)
        # A list, not a set of states: a session's series goes when it is no longer listed.
        for idle in snapshot.idle_sessions:
            self._idle_sessions.add_metric([organization, *idle.labels], idle.last_activity)
        self._idle_unlisted.add_metric([organization], snapshot.idle_sessions_unlisted)

    def families(self) -> Iterator[Metric]:
        """Every family, empty ones included (the caller drops those)."""
        yield from self._stats.values()
        yield from (
            self._sessions,
            self._messages,
            self._created_day,
            self._created_week,
            self._durations,
            self._idle,
        )
        yield from self._organization.values()
        yield self._idle_sessions
        yield self._idle_unlisted


def _add_histogram(
    family: GaugeHistogramMetricFamily,
    labels: list[str],
    histogram: GaugeHistogram,
    bounds: tuple[float, ...],
) -> None:
    """Add one gauge histogram: cumulative buckets with `le` as Prometheus writes it (60.0)."""
    cumulative = itertools.accumulate(histogram.counts)
    edges = [*map(floatToGoString, bounds), "+Inf"]
    family.add_metric(labels, list(zip(edges, cumulative, strict=True)), histogram.total)
