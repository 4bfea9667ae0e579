"""Series stability (zero-fill, sticky series) and the cardinality guard."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from magnet_exporter.model import (
    DURATION_BUCKETS,
    IDLE_BUCKETS,
    GaugeHistogram,
    IdleSession,
    SessionGroup,
    Snapshot,
)
from magnet_exporter.series import OTHER, SessionSeries


def snapshot(labels: tuple[str, ...], groups: dict[tuple[str, ...], SessionGroup]) -> Snapshot:
    return Snapshot(
        stats=MappingProxyType({}),
        label_names=labels,
        sessions=MappingProxyType(groups),
        last_created=None,
        last_updated=None,
    )


def test_every_documented_status_and_pr_status_has_a_series_from_the_first_poll() -> None:
    series = SessionSeries(("status", "pr_status", "model"), 100)
    stable, _ = series.stabilize(snapshot(("status", "pr_status", "model"), {}))
    statuses = {key[0] for key in stable.sessions}
    pr_statuses = {key[1] for key in stable.sessions}
    assert statuses == {"active", "completed", "failed"}
    assert pr_statuses == {"none", "open", "draft", "merged", "closed"}
    assert all(group == SessionGroup(0, 0) for group in stable.sessions.values())
    # Labels without documented values take their missing-field value in the zero series.
    assert {key[2] for key in stable.sessions} == {"unknown"}


def test_real_counts_sit_beside_the_zero_series() -> None:
    series = SessionSeries(("status",), 100)
    stable, _ = series.stabilize(snapshot(("status",), {("active",): SessionGroup(3, 9)}))
    assert dict(stable.sessions) == {
        ("active",): SessionGroup(3, 9),
        ("completed",): SessionGroup(0, 0),
        ("failed",): SessionGroup(0, 0),
    }


def test_a_series_once_exported_stays_at_zero() -> None:
    series = SessionSeries(("status", "model"), 100)
    series.stabilize(snapshot(("status", "model"), {("active", "m1"): SessionGroup(1, 1)}))
    stable, _ = series.stabilize(
        snapshot(("status", "model"), {("failed", "m2"): SessionGroup(2, 5)})
    )
    assert stable.sessions[("active", "m1")] == SessionGroup(0, 0)
    assert stable.sessions[("failed", "m2")] == SessionGroup(2, 5)


def test_values_past_the_limit_count_as_other_and_admitted_ones_stay() -> None:
    series = SessionSeries(("model",), 3)  # "unknown" (no model) is one of the three
    first = {("m1",): SessionGroup(5, 0), ("m2",): SessionGroup(3, 0), ("m3",): SessionGroup(1, 7)}
    stable, overflowing = series.stabilize(snapshot(("model",), first))
    assert overflowing == ["model"]
    assert dict(stable.sessions) == {
        ("unknown",): SessionGroup(0, 0),
        ("m1",): SessionGroup(5, 0),
        ("m2",): SessionGroup(3, 0),
        (OTHER,): SessionGroup(1, 7),
    }
    # Later, a newcomer that is now the most frequent still cannot push out an admitted value.
    later = {("m9",): SessionGroup(50, 0), ("m2",): SessionGroup(1, 0), ("m4",): SessionGroup(2, 0)}
    stable, overflowing = series.stabilize(snapshot(("model",), later))
    assert overflowing == []  # reported once, when it starts
    assert stable.sessions[(OTHER,)] == SessionGroup(52, 0)
    assert stable.sessions[("m1",)] == SessionGroup(0, 0)
    assert stable.sessions[("m2",)] == SessionGroup(1, 0)
    assert ("m9",) not in stable.sessions


def test_the_most_frequent_values_are_admitted_first() -> None:
    series = SessionSeries(("repository",), 3)  # "none" (no repository) is one of the three
    groups = {(f"r{i}",): SessionGroup(i, 0) for i in range(1, 6)}
    stable, _ = series.stabilize(snapshot(("repository",), groups))
    assert set(stable.sessions) == {("none",), ("r5",), ("r4",), (OTHER,)}
    assert stable.sessions[(OTHER,)] == SessionGroup(1 + 2 + 3, 0)


def test_the_guard_counts_values_per_label() -> None:
    series = SessionSeries(("status", "author"), 4)
    groups = {("active", f"u{i}"): SessionGroup(1, 0) for i in range(10)}
    stable, overflowing = series.stabilize(snapshot(("status", "author"), groups))
    assert overflowing == ["author"]
    authors = {key[1] for key in stable.sessions}
    assert len(authors - {OTHER}) == 4  # "unknown" and three ids
    assert sum(g.count for g in stable.sessions.values()) == 10  # nothing is lost


def histograms(
    labels: tuple[str, ...],
    groups: dict[tuple[str, ...], SessionGroup],
    durations: dict[tuple[str, ...], GaugeHistogram],
    idle: dict[tuple[str, ...], GaugeHistogram],
) -> Snapshot:
    return dataclasses.replace(
        snapshot(labels, groups),
        durations=MappingProxyType(durations),
        idle=MappingProxyType(idle),
    )


def observed(bucket: int, bounds: tuple[float, ...], total: float) -> GaugeHistogram:
    counts = [0] * (len(bounds) + 1)
    counts[bucket] = 1
    return GaugeHistogram(tuple(counts), total)


def test_histograms_have_zero_series_for_finished_statuses_and_the_idle_one_at_zero() -> None:
    series = SessionSeries(("status", "pr_status", "model"), 100)
    stable, _ = series.stabilize(snapshot(("status", "pr_status", "model"), {}))
    empty_durations = GaugeHistogram.empty(DURATION_BUCKETS)
    assert dict(stable.durations) == {
        ("completed", "unknown"): empty_durations,
        ("failed", "unknown"): empty_durations,
    }
    assert dict(stable.idle) == {("unknown",): GaugeHistogram.empty(IDLE_BUCKETS)}


def test_histograms_without_their_labels_have_one_series() -> None:
    series = SessionSeries(("pr_status",), 100)
    stable, _ = series.stabilize(snapshot(("pr_status",), {}))
    assert list(stable.durations) == [()]
    assert list(stable.idle) == [()]


def test_histogram_series_stay_once_exported_and_fold_like_the_sessions() -> None:
    labels = ("status", "model")
    series = SessionSeries(labels, 5)
    # "unknown" is admitted from the start: four more values fit.
    groups = {("completed", f"m{i}"): SessionGroup(10 - i, 0) for i in range(6)}
    durations = {("completed", f"m{i}"): observed(2, DURATION_BUCKETS, 600.0) for i in range(6)}
    idle = {("m5",): observed(4, IDLE_BUCKETS, 3000.0)}
    stable, overflowing = series.stabilize(histograms(labels, groups, durations, idle))
    assert overflowing == ["model"]
    assert stable.durations[("completed", OTHER)].counts[2] == 2  # m4 and m5
    assert stable.durations[("completed", "m0")].total == 600.0
    assert stable.idle[(OTHER,)].counts[4] == 1  # m5 is folded here too
    later, _ = series.stabilize(histograms(labels, {}, {}, {}))
    assert later.durations[("completed", "m0")] == GaugeHistogram.empty(DURATION_BUCKETS)
    assert later.idle[(OTHER,)] == GaugeHistogram.empty(IDLE_BUCKETS)
    assert set(later.durations) == set(stable.durations)


def test_idle_sessions_are_a_list_neither_kept_nor_folded_into_other() -> None:
    # Two values per label at most: the session metrics fold the third into `other`, the
    # idle sessions keep their names (they are bounded by their own limit instead).
    series = SessionSeries(("model",), 5)
    names = [f"m{i}" for i in range(8)]
    idle = tuple(
        IdleSession(f"cm{i}", "acme/api", m, "user_1", 100.0 + i) for i, m in enumerate(names)
    )
    first = dataclasses.replace(
        snapshot(("model",), {(m,): SessionGroup(1, 1) for m in names}),
        idle_sessions=idle,
        idle_sessions_unlisted=3,
    )
    stable, overflowing = series.stabilize(first)
    assert overflowing == ["model"]
    assert (OTHER,) in stable.sessions
    assert stable.idle_sessions == idle
    assert stable.idle_sessions_unlisted == 3
    # The next poll lists one session: the others are gone, not kept at 0.
    later = dataclasses.replace(first, idle_sessions=idle[:1], idle_sessions_unlisted=0)
    stable, _ = series.stabilize(later)
    assert stable.idle_sessions == idle[:1]
    assert stable.idle_sessions_unlisted == 0
