"""Snapshot -> metric families: the one custom collector behind `/metrics`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from magnet_exporter import __version__
from magnet_exporter.model import Snapshot
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


class MagnetCollector(Collector):
    """Builds fresh metric families from the current poll state on every collect.

    A scrape only reads the state the poller swapped in last: it never waits on the network.
    Once the last good data is older than `stale_after`, only `magnet_up` and the exporter's
    own metrics are served, so dashboards show a gap instead of old numbers.
    """

    def __init__(
        self,
        state: Callable[[], PollState],
        organization: str,
        stale_after: float,
        clock: Clock,
    ) -> None:
        self._state = state
        self._organization = organization
        self._stale_after = stale_after
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """Nothing: the families depend on the data, so the registry must not pre-collect."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the families of the current state."""
        state = self._state()
        org = self._organization
        yield self._gauge(
            "magnet_up",
            "1 if the last poll of the Magnet API succeeded, else 0.",
            1.0 if state.up else 0.0,
        )
        build = InfoMetricFamily(
            "magnet_exporter_build", "Version of the exporter.", labels=["organization"]
        )
        build.add_metric([org], {"version": __version__})
        yield build
        if state.last_success is not None:
            yield self._gauge(
                "magnet_exporter_last_success_timestamp_seconds",
                "Unix time at which the last successful poll ended.",
                state.last_success,
            )
        if state.snapshot is not None and not self._is_stale(state):
            yield from self._data_families(state.snapshot)

    def _is_stale(self, state: PollState) -> bool:
        return state.last_success is None or (
            self._clock() - state.last_success > self._stale_after
        )

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=["organization"])
        family.add_metric([self._organization], value)
        return family

    def _data_families(self, snapshot: Snapshot) -> Iterator[Metric]:
        for field, name, documentation in STATS_METRICS:
            if field in snapshot.stats:  # a missing stat is not exported, never made up
                yield self._gauge(name, documentation + AS_OF, snapshot.stats[field])
        labels = ["organization", *snapshot.label_names]
        sessions = GaugeMetricFamily(
            "magnet_sessions", "Sessions listed by the API, by labels." + AS_OF, labels=labels
        )
        messages = GaugeMetricFamily(
            "magnet_session_messages",
            "Messages in the listed sessions (sum of messageCount), by labels." + AS_OF,
            labels=labels,
        )
        for key, group in snapshot.sessions.items():
            sessions.add_metric([self._organization, *key], group.count)
            messages.add_metric([self._organization, *key], group.messages)
        yield sessions
        yield messages
        for value, name, documentation in (
            (
                snapshot.last_created,
                "created",
                "Unix time at which the newest session was created.",
            ),
            (snapshot.last_updated, "updated", "Unix time of the most recent session update."),
        ):
            if value is not None:
                yield self._gauge(
                    f"magnet_session_last_{name}_timestamp_seconds", documentation + AS_OF, value
                )
