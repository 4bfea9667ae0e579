"""The collectors: what a poll state renders to, freshness, help texts and the data version."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from conftest import FIXED_NOW, FakeClock
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from magnet_exporter import __version__
from magnet_exporter.client import Outcome
from magnet_exporter.collector import DataCollector, StatusCollector
from magnet_exporter.model import GaugeHistogram, IdleSession, SessionGroup, Snapshot
from magnet_exporter.poller import PollState

SNAPSHOT = Snapshot(
    stats=MappingProxyType({"mergesPastWeek": 8.0, "humansPromptingNow": 1.0}),
    label_names=("status", "model"),
    sessions=MappingProxyType(
        {("active", "m1"): SessionGroup(2, 30, 1, 2), ("failed", "m2"): SessionGroup(0, 0)}
    ),
    last_created=1_700_000_000.0,
    last_updated=None,
    durations=MappingProxyType(
        # One session of 30 s, one of exactly an hour, one of two days.
        {("failed", "m2"): GaugeHistogram((1, 0, 0, 0, 1, 0, 0, 0, 0, 1), 30 + 3600 + 172_800)}
    ),
    idle=MappingProxyType({("m1",): GaugeHistogram((1, 0, 0, 0, 0, 0, 1, 0, 0), 4_000.5)}),
    oldest_active_created=1_699_990_000.0,
    authors_past_day=2,
    authors_past_week=5,
    idle_sessions=(
        IdleSession("cm1", "acme/api", "m1", "user_1", 1_699_990_000.0),
        IdleSession("cm2", "none", "unknown", "unknown", 1_699_995_000.5),
    ),
    idle_sessions_unlisted=4,
)


STATUS_FAMILIES = {
    "magnet_up",
    "magnet_exporter_build_info",
    "magnet_exporter_last_success_timestamp_seconds",
}


def render(state: PollState, clock: FakeClock, stale_after: float = 180) -> dict[str, Metric]:
    """Both collectors' families, as the exporter serves them."""
    families = {}
    for collector in (
        StatusCollector(lambda: {"acme": state}),
        DataCollector(lambda: {"acme": state}, ("status", "model"), stale_after, clock),
    ):
        families.update(parse(collector))
    return families


def parse(collector: Collector) -> dict[str, Metric]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_fresh_state_renders_every_family() -> None:
    clock = FakeClock()
    state = PollState(
        True,
        SNAPSHOT,
        clock.now - 10,
        clock.now - 10,
        Outcome.SUCCESS,
        success_age_origin=clock.now - 10,
    )
    families = render(state, clock)
    assert set(families) == {
        "magnet_up",
        "magnet_exporter_build_info",
        "magnet_exporter_last_success_timestamp_seconds",
        "magnet_merges_past_week",
        "magnet_humans_prompting",
        "magnet_sessions",
        "magnet_session_messages",
        "magnet_session_last_created_timestamp_seconds",
        "magnet_sessions_created_past_day",
        "magnet_sessions_created_past_week",
        "magnet_session_duration_seconds",
        "magnet_active_session_idle_seconds",
        "magnet_active_session_oldest_created_timestamp_seconds",
        "magnet_session_authors_past_day",
        "magnet_session_authors_past_week",
        "magnet_idle_session_last_activity_timestamp_seconds",
        "magnet_idle_sessions_unlisted",
        # In the text format, prometheus-client writes a gauge histogram's count and sum as
        # gauges of their own.
        "magnet_session_duration_seconds_gcount",
        "magnet_session_duration_seconds_gsum",
        "magnet_active_session_idle_seconds_gcount",
        "magnet_active_session_idle_seconds_gsum",
    }
    sessions = {
        (s.labels["organization"], s.labels["status"], s.labels["model"]): s.value
        for s in families["magnet_sessions"].samples
    }
    assert sessions == {("acme", "active", "m1"): 2, ("acme", "failed", "m2"): 0}
    (build,) = families["magnet_exporter_build_info"].samples
    assert build.labels == {"organization": "acme", "version": __version__}
    assert build.value == 1


def test_gauge_histograms_render_cumulative_buckets_count_and_sum() -> None:
    clock = FakeClock()
    state = PollState(
        True, SNAPSHOT, clock.now, clock.now, Outcome.SUCCESS, success_age_origin=clock.now
    )
    registry = CollectorRegistry()
    registry.register(DataCollector(lambda: {"acme": state}, ("status", "model"), 180, clock))
    families = {
        family.name: family
        for family in openmetrics_parser.text_string_to_metric_families(
            openmetrics.generate_latest(registry).decode()
        )
    }
    durations = families["magnet_session_duration_seconds"]
    assert durations.type == "gaugehistogram"
    buckets = {s.labels["le"]: s.value for s in durations.samples if s.name.endswith("_bucket")}
    assert buckets == {
        "60.0": 1,
        "300.0": 1,
        "900.0": 1,
        "1800.0": 1,
        "3600.0": 2,
        "7200.0": 2,
        "14400.0": 2,
        "28800.0": 2,
        "86400.0": 2,
        "+Inf": 3,
    }
    values = {s.name: s.value for s in durations.samples if not s.name.endswith("_bucket")}
    assert values == {
        "magnet_session_duration_seconds_gcount": 3,
        "magnet_session_duration_seconds_gsum": 176_430,
    }
    assert {s.labels["status"] for s in durations.samples} == {"failed"}
    idle = families["magnet_active_session_idle_seconds"]
    assert idle.type == "gaugehistogram"
    assert {tuple(sorted(s.labels)) for s in idle.samples} == {
        ("le", "model", "organization"),
        ("model", "organization"),
    }
    idle_buckets = [s.value for s in idle.samples if s.name.endswith("_bucket")]
    assert idle_buckets == [1, 1, 1, 1, 1, 1, 2, 2, 2]
    assert families["magnet_session_authors_past_day"].samples[0].value == 2
    assert families["magnet_session_authors_past_week"].samples[0].value == 5
    oldest = families["magnet_active_session_oldest_created_timestamp_seconds"]
    assert oldest.samples[0].value == 1_699_990_000.0


def test_oldest_active_is_absent_without_an_active_session() -> None:
    clock = FakeClock()
    snapshot = dataclasses.replace(SNAPSHOT, oldest_active_created=None)
    families = render(
        PollState(True, snapshot, clock.now, clock.now, success_age_origin=clock.now), clock
    )
    assert "magnet_active_session_oldest_created_timestamp_seconds" not in families
    assert "magnet_active_session_idle_seconds" in families


def test_idle_sessions_render_one_series_each_named_by_their_labels() -> None:
    clock = FakeClock()
    families = render(
        PollState(True, SNAPSHOT, clock.now, clock.now, success_age_origin=clock.now), clock
    )
    idle = families["magnet_idle_session_last_activity_timestamp_seconds"]
    assert idle.type == "gauge"
    assert [(s.labels, s.value) for s in idle.samples] == [
        (
            {
                "organization": "acme",
                "session": "cm1",
                "repository": "acme/api",
                "model": "m1",
                "author": "user_1",
            },
            1_699_990_000.0,
        ),
        (
            {
                "organization": "acme",
                "session": "cm2",
                "repository": "none",
                "model": "unknown",
                "author": "unknown",
            },
            1_699_995_000.5,
        ),
    ]
    (unlisted,) = families["magnet_idle_sessions_unlisted"].samples
    assert (unlisted.labels, unlisted.value) == ({"organization": "acme"}, 4)


def test_without_idle_sessions_the_list_is_absent_and_unlisted_is_zero() -> None:
    clock = FakeClock()
    snapshot = dataclasses.replace(SNAPSHOT, idle_sessions=(), idle_sessions_unlisted=0)
    families = render(
        PollState(True, snapshot, clock.now, clock.now, success_age_origin=clock.now), clock
    )
    assert "magnet_idle_session_last_activity_timestamp_seconds" not in families
    (unlisted,) = families["magnet_idle_sessions_unlisted"].samples
    assert unlisted.value == 0


def test_stale_data_takes_the_idle_sessions_away_too() -> None:
    clock = FakeClock()
    state = PollState(False, SNAPSHOT, clock.now - 181, clock.now, Outcome.SERVER_ERROR)
    families = render(state, clock, stale_after=180)
    assert "magnet_idle_session_last_activity_timestamp_seconds" not in families
    assert "magnet_idle_sessions_unlisted" not in families


def test_data_help_texts_say_as_of_the_last_poll() -> None:
    clock = FakeClock()
    families = render(
        PollState(True, SNAPSHOT, clock.now, clock.now, success_age_origin=clock.now), clock
    )
    for name in ("magnet_merges_past_week", "magnet_sessions", "magnet_session_messages"):
        assert "As of the last successful poll." in families[name].documentation


def test_before_the_first_success_only_up_and_build_info() -> None:
    clock = FakeClock()
    state = PollState(False, None, None, clock.now, Outcome.TIMEOUT, "timed out")
    families = render(state, clock)
    assert set(families) == {"magnet_up", "magnet_exporter_build_info"}
    assert families["magnet_up"].samples[0].value == 0


def test_data_is_served_up_to_stale_after_and_not_a_second_later() -> None:
    clock = FakeClock()
    state = PollState(
        False,
        SNAPSHOT,
        clock.now - 180,
        clock.now,
        Outcome.SERVER_ERROR,
        success_age_origin=clock.now - 180,
    )
    assert "magnet_sessions" in render(state, clock, stale_after=180)
    clock.advance(1)
    families = render(state, clock, stale_after=180)
    assert "magnet_sessions" not in families
    assert "magnet_merges_past_week" not in families
    assert "magnet_exporter_last_success_timestamp_seconds" in families


def test_each_collect_reads_the_current_state() -> None:
    states = [
        PollState(False),
        PollState(True, SNAPSHOT, FIXED_NOW, FIXED_NOW, success_age_origin=FIXED_NOW),
    ]
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: {"acme": states[0]}))
    assert registry.get_sample_value("magnet_up", {"organization": "acme"}) == 0
    states.reverse()
    assert registry.get_sample_value("magnet_up", {"organization": "acme"}) == 1


def test_status_and_data_are_split() -> None:
    clock = FakeClock()
    state = PollState(
        True, SNAPSHOT, clock.now, clock.now, Outcome.SUCCESS, success_age_origin=clock.now
    )
    status = parse(StatusCollector(lambda: {"acme": state}))
    data = parse(DataCollector(lambda: {"acme": state}, ("status", "model"), 180, clock))
    assert set(status) == STATUS_FAMILIES
    assert set(data) == set(render(state, clock)) - STATUS_FAMILIES


def test_the_status_families_are_described_for_the_registry() -> None:
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: {"acme": PollState(True, None, FIXED_NOW)}))
    restricted = registry.restricted_registry(["magnet_exporter_last_success_timestamp_seconds"])
    (family,) = restricted.collect()
    assert [s.value for s in family.samples] == [FIXED_NOW]


class TestDataVersion:
    """The version of the data tells whether the data families would render the same."""

    def test_it_stays_while_nothing_changes(self) -> None:
        clock = FakeClock()
        states = {
            "acme": PollState(True, SNAPSHOT, clock.now, clock.now, success_age_origin=clock.now)
        }
        data = DataCollector(lambda: states, ("status", "model"), 180, clock)
        before = data.version()
        # A failed poll keeps the snapshot and replaces the rest of the state.
        states["acme"] = dataclasses.replace(states["acme"], up=False, last_poll=clock.now + 60)
        clock.advance(60)
        assert data.version() == before

    def test_it_moves_with_each_new_snapshot_even_of_equal_data(self) -> None:
        clock = FakeClock()
        states = {
            "acme": PollState(True, SNAPSHOT, clock.now, clock.now, success_age_origin=clock.now)
        }
        data = DataCollector(lambda: states, ("status", "model"), 180, clock)
        before = data.version()
        states["acme"] = PollState(
            True, dataclasses.replace(SNAPSHOT), clock.now, clock.now, success_age_origin=clock.now
        )
        assert data.version() != before

    def test_it_moves_when_data_turns_stale_and_with_a_new_organization(self) -> None:
        clock = FakeClock()
        states = {
            "acme": PollState(True, SNAPSHOT, clock.now, clock.now, success_age_origin=clock.now)
        }
        data = DataCollector(lambda: states, ("status", "model"), 180, clock)
        before = data.version()
        states["globex"] = PollState(
            True, SNAPSHOT, clock.now, clock.now, success_age_origin=clock.now
        )
        assert data.version() != before
        with_globex = data.version()
        clock.advance(181)
        assert data.version() not in (before, with_globex)
        assert list(data.collect()) == []
