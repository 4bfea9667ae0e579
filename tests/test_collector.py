"""The collector: what a poll state renders to, freshness, and help texts."""

from __future__ import annotations

from types import MappingProxyType

from conftest import FakeClock
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter import __version__
from magnet_exporter.client import Outcome
from magnet_exporter.collector import MagnetCollector
from magnet_exporter.model import SessionGroup, Snapshot
from magnet_exporter.poller import PollState

SNAPSHOT = Snapshot(
    stats=MappingProxyType({"mergesPastWeek": 8.0, "humansPromptingNow": 1.0}),
    label_names=("status", "model"),
    sessions=MappingProxyType(
        {("active", "m1"): SessionGroup(2, 30), ("failed", "m2"): SessionGroup(0, 0)}
    ),
    last_created=1_700_000_000.0,
    last_updated=None,
)


def render(state: PollState, clock: FakeClock, stale_after: float = 180) -> dict[str, Metric]:
    registry = CollectorRegistry()
    registry.register(
        MagnetCollector(lambda: {"acme": state}, ("status", "model"), stale_after, clock)
    )
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_fresh_state_renders_every_family() -> None:
    clock = FakeClock()
    state = PollState(True, SNAPSHOT, clock.now - 10, clock.now - 10, Outcome.SUCCESS)
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
    }
    sessions = {
        (s.labels["organization"], s.labels["status"], s.labels["model"]): s.value
        for s in families["magnet_sessions"].samples
    }
    assert sessions == {("acme", "active", "m1"): 2, ("acme", "failed", "m2"): 0}
    (build,) = families["magnet_exporter_build_info"].samples
    assert build.labels == {"organization": "acme", "version": __version__}
    assert build.value == 1


def test_data_help_texts_say_as_of_the_last_poll() -> None:
    clock = FakeClock()
    families = render(PollState(True, SNAPSHOT, clock.now, clock.now), clock)
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
    state = PollState(False, SNAPSHOT, clock.now - 180, clock.now, Outcome.SERVER_ERROR)
    assert "magnet_sessions" in render(state, clock, stale_after=180)
    clock.advance(1)
    families = render(state, clock, stale_after=180)
    assert "magnet_sessions" not in families
    assert "magnet_merges_past_week" not in families
    assert "magnet_exporter_last_success_timestamp_seconds" in families


def test_each_collect_reads_the_current_state() -> None:
    clock = FakeClock()
    states = [PollState(False), PollState(True, SNAPSHOT, clock.now, clock.now)]
    registry = CollectorRegistry()
    registry.register(MagnetCollector(lambda: {"acme": states[0]}, ("status", "model"), 180, clock))
    assert registry.get_sample_value("magnet_up", {"organization": "acme"}) == 0
    states.reverse()
    assert registry.get_sample_value("magnet_up", {"organization": "acme"}) == 1
