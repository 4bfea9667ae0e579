"""Parsing and aggregation of List Sessions bodies."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from magnet_exporter.client import Outcome, PollError
from magnet_exporter.model import SessionGroup, parse_snapshot

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "api" / "list-sessions.example.json"
LABELS = ("status", "pr_status", "model")
NOW = 1_795_000_000.0
"""2026-11-18: months after the example's sessions, so that no window holds them."""


def body(sessions: list[dict[str, Any]], stats: dict[str, Any] | None = None) -> bytes:
    document: dict[str, Any] = {"sessions": sessions}
    if stats is not None:
        document["stats"] = stats
    return json.dumps(document).encode()


@pytest.fixture
def example() -> bytes:
    if EXAMPLE.exists():
        return EXAMPLE.read_bytes()
    # The reference copy lives beside the repository; this is the same document.
    return body(
        [
            {
                "id": "cm3abc123def",
                "title": "Add input validation to signup form",
                "status": "completed",
                "createdAt": "2026-02-10T14:30:00.000Z",
                "updatedAt": "2026-02-10T14:45:00.000Z",
                "model": "claude-opus-4-6",
                "author": {"id": "user_123", "name": "Alice Chen"},
                "metadata": {"repository": "acme/web-app", "prStatus": "open", "prNumber": 42},
                "messageCount": 12,
            }
        ],
        {"mergesPastWeek": 8, "authorsPastWeek": 3, "humansPastWeek": 5, "humansPromptingNow": 1},
    )


def test_example_body(example: bytes) -> None:
    snapshot = parse_snapshot(example, LABELS, NOW)
    assert dict(snapshot.stats) == {
        "mergesPastWeek": 8,
        "authorsPastWeek": 3,
        "humansPastWeek": 5,
        "humansPromptingNow": 1,
    }
    assert dict(snapshot.sessions) == {
        ("completed", "open", "claude-opus-4-6"): SessionGroup(count=1, messages=12)
    }
    assert snapshot.last_created == 1770733800.0  # 2026-02-10T14:30:00Z
    assert snapshot.last_updated == 1770734700.0  # 2026-02-10T14:45:00Z


def test_aggregates_counts_and_messages_per_label_combination() -> None:
    sessions = [
        {"status": "active", "model": "m1", "messageCount": 3},
        {"status": "active", "model": "m1", "messageCount": 4},
        {"status": "failed", "model": "m1", "messageCount": 10},
        {"status": "active", "model": "m2"},
    ]
    snapshot = parse_snapshot(body(sessions), ("status", "model"), NOW)
    assert dict(snapshot.sessions) == {
        ("active", "m1"): SessionGroup(2, 7),
        ("failed", "m1"): SessionGroup(1, 10),
        ("active", "m2"): SessionGroup(1, 0),
    }


def test_missing_and_null_fields_get_fixed_values() -> None:
    sessions: list[dict[str, Any]] = [
        {},
        {"status": None, "model": None, "author": None, "metadata": None, "messageCount": None},
        {"metadata": {"repository": None, "prStatus": None}, "author": {"id": None}},
        {"metadata": {}, "author": {}, "createdAt": None, "updatedAt": None},
    ]
    labels = ("status", "pr_status", "model", "repository", "author")
    snapshot = parse_snapshot(body(sessions), labels, NOW)
    assert dict(snapshot.sessions) == {
        ("unknown", "none", "unknown", "none", "unknown"): SessionGroup(4, 0)
    }
    assert snapshot.last_created is None
    assert snapshot.last_updated is None


def test_stats_that_are_missing_or_null_are_left_out() -> None:
    snapshot = parse_snapshot(
        body([], {"mergesPastWeek": 2, "humansPromptingNow": None}), LABELS, NOW
    )
    assert dict(snapshot.stats) == {"mergesPastWeek": 2}
    assert dict(parse_snapshot(body([]), LABELS, NOW).stats) == {}
    assert dict(parse_snapshot(b'{"sessions": [], "stats": null}', LABELS, NOW).stats) == {}


def test_unknown_fields_are_ignored() -> None:
    session = {
        "status": "active",
        "brandNewField": {"nested": [1, 2, 3]},
        "metadata": {"prStatus": "open", "labels": ["x"]},
        "author": {"id": "u1", "email": "a@example.com"},
    }
    snapshot = parse_snapshot(body([session], {"mergesPastWeek": 1, "newStat": 9}), LABELS, NOW)
    assert dict(snapshot.sessions) == {("active", "open", "unknown"): SessionGroup(1, 0)}
    assert dict(snapshot.stats) == {"mergesPastWeek": 1}


def test_statuses_are_trimmed_and_lower_cased_and_unknown_ones_kept() -> None:
    sessions = [
        {"status": " Completed ", "metadata": {"prStatus": "MERGED"}},
        {"status": "completed", "metadata": {"prStatus": "merged "}},
        {"status": "paused", "metadata": {"prStatus": "queued"}},
        {"status": "  ", "metadata": {"prStatus": ""}},
    ]
    snapshot = parse_snapshot(body(sessions), ("status", "pr_status"), NOW)
    assert dict(snapshot.sessions) == {
        ("completed", "merged"): SessionGroup(2, 0),
        ("paused", "queued"): SessionGroup(1, 0),
        ("unknown", "none"): SessionGroup(1, 0),
    }


def test_model_and_repository_keep_their_case_and_long_values_are_cut() -> None:
    long_name = "r" * 300
    sessions = [{"model": " Claude-Opus ", "metadata": {"repository": long_name}}]
    snapshot = parse_snapshot(body(sessions), ("model", "repository"), NOW)
    ((model, repository),) = snapshot.sessions
    assert model == "Claude-Opus"
    assert repository == "r" * 128


def test_author_label_is_the_id_never_the_name() -> None:
    sessions = [{"author": {"id": "user_1", "name": "Alice Chen", "imageUrl": "https://x/a.png"}}]
    snapshot = parse_snapshot(body(sessions), ("author",), NOW)
    assert list(snapshot.sessions) == [("user_1",)]


def test_newest_timestamps_compare_offsets_and_naive_times_as_utc() -> None:
    sessions = [
        {"createdAt": "2026-02-10T14:30:00.000Z", "updatedAt": "2026-02-10T16:00:00+02:00"},
        {"createdAt": "2026-02-10T15:00:00", "updatedAt": "2026-02-10T14:59:00Z"},
    ]
    snapshot = parse_snapshot(body(sessions), LABELS, NOW)
    assert snapshot.last_created == 1770735600.0  # the naive 15:00, read as UTC
    assert snapshot.last_updated == 1770735540.0  # 14:59Z is later than 16:00+02:00


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"<html>Bad gateway</html>", "body"),
        (b"", "body"),
        (b'{"sessions": [', "body"),
        (b"[]", "body"),
        (b'"sessions"', "body"),
        (b'{"stats": {}}', "sessions"),
        (b'{"sessions": null}', "sessions"),
        (b'{"sessions": {"id": 1}}', "sessions"),
        (b'{"sessions": "none"}', "sessions"),
    ],
)
def test_only_a_body_unusable_as_a_whole_is_an_invalid_response(raw: bytes, where: str) -> None:
    with pytest.raises(PollError) as caught:
        parse_snapshot(raw, LABELS, NOW)
    assert caught.value.outcome is Outcome.INVALID_RESPONSE
    assert caught.value.reason.startswith(f"invalid response: {where}:")
    assert "\n" not in caught.value.reason


# --- one bad value loses that value, not the poll --------------------------------------------

ALL_LABELS = ("status", "pr_status", "model", "repository", "author")
RECENT = "2026-11-18T10:00:00Z"
"""A little over an hour before NOW (11:06:40): inside every window."""
GOOD = {
    "status": "completed",
    "model": "m1",
    "metadata": {"prStatus": "merged", "repository": "r1"},
    "author": {"id": "u1"},
    "createdAt": RECENT,
    "updatedAt": RECENT,
    "messageCount": 5,
}
BAD_BASE = {
    **GOOD,
    "status": "failed",
    "model": "m2",
    "metadata": {"prStatus": "open", "repository": "r2"},
    "author": {"id": "u2"},
    "messageCount": 7,
}
BAD_LABELS = ("failed", "open", "m2", "r2", "u2")
NOT_TEXT: list[Any] = [5, 1.5, True, [], ["a"], {}, {"a": 1}]
NOT_OBJECT: list[Any] = [5, "n/a", True, [], ["x"]]
NOT_COUNT: list[Any] = ["abc", -1, 1.5, True, [], {}, "-3", 2**41]
NOT_MOMENT: list[Any] = ["", "yesterday", "2026-13-45T00:00:00Z", True, [], {}, 1e20]


def with_value(path: str, value: Any) -> dict[str, Any]:
    """The bad session with `value` at `path` (a field, or field.inner)."""
    session = json.loads(json.dumps(BAD_BASE))
    field, _, inner = path.partition(".")
    if inner:
        session[field][inner] = value
    else:
        session[field] = value
    return session


LABEL_CASES = [
    (path, value, position, missing)
    for path, position, missing in [
        ("status", 0, "unknown"),
        ("metadata.prStatus", 1, "none"),
        ("model", 2, "unknown"),
        ("metadata.repository", 3, "none"),
        ("author.id", 4, "unknown"),
    ]
    for value in NOT_TEXT
]


@pytest.mark.parametrize(("path", "value", "position", "missing"), LABEL_CASES)
def test_a_label_field_that_is_not_text_reads_as_missing(
    path: str, value: Any, position: int, missing: str
) -> None:
    sessions = [GOOD, GOOD, with_value(path, value), GOOD]
    snapshot = parse_snapshot(body(sessions), ALL_LABELS, NOW)
    bad = tuple(missing if i == position else v for i, v in enumerate(BAD_LABELS))
    assert snapshot.sessions[("completed", "merged", "m1", "r1", "u1")].count == 3
    assert snapshot.sessions[bad] == SessionGroup(1, 7, 1, 1)
    assert sum(group.count for group in snapshot.sessions.values()) == 4
    assert dict(snapshot.invalid) == {f"sessions.{path}": 1}


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f in ("metadata", "author") for v in NOT_OBJECT]
)
def test_an_object_field_that_is_not_an_object_reads_as_missing(field: str, value: Any) -> None:
    snapshot = parse_snapshot(body([GOOD, with_value(field, value)]), ALL_LABELS, NOW)
    if field == "metadata":
        bad = ("failed", "none", "m2", "none", "u2")
    else:
        bad = ("failed", "open", "m2", "r2", "unknown")
    assert snapshot.sessions[bad] == SessionGroup(1, 7, 1, 1)
    assert snapshot.sessions[("completed", "merged", "m1", "r1", "u1")] == SessionGroup(1, 5, 1, 1)
    assert dict(snapshot.invalid) == {f"sessions.{field}": 1}


@pytest.mark.parametrize("value", NOT_COUNT)
def test_a_message_count_that_is_not_a_non_negative_integer_adds_nothing(value: Any) -> None:
    snapshot = parse_snapshot(body([GOOD, with_value("messageCount", value)]), ALL_LABELS, NOW)
    assert snapshot.sessions[BAD_LABELS] == SessionGroup(1, 0, 1, 1)
    assert snapshot.sessions[("completed", "merged", "m1", "r1", "u1")].messages == 5
    assert dict(snapshot.invalid) == {"sessions.messageCount": 1}


def test_a_message_count_given_as_digits_is_still_read() -> None:
    snapshot = parse_snapshot(body([with_value("messageCount", "12")]), ALL_LABELS, NOW)
    assert snapshot.sessions[BAD_LABELS].messages == 12
    assert dict(snapshot.invalid) == {}


@pytest.mark.parametrize("value", NOT_MOMENT)
def test_an_unreadable_created_at_leaves_the_session_out_of_the_windows_only(value: Any) -> None:
    snapshot = parse_snapshot(body([GOOD, with_value("createdAt", value)]), ALL_LABELS, NOW)
    assert snapshot.sessions[BAD_LABELS] == SessionGroup(1, 7, 0, 0)
    assert snapshot.sessions[("completed", "merged", "m1", "r1", "u1")] == SessionGroup(1, 5, 1, 1)
    # A failed session without createdAt has no duration; the good one has one.
    assert sum(sum(h.counts) for h in snapshot.durations.values()) == 1
    assert dict(snapshot.invalid) == {"sessions.createdAt": 1}


@pytest.mark.parametrize("value", NOT_MOMENT)
def test_an_unreadable_updated_at_falls_back_to_created_at(value: Any) -> None:
    session = with_value("updatedAt", value)
    session["status"] = "active"
    snapshot = parse_snapshot(body([GOOD, session]), ALL_LABELS, NOW)
    assert snapshot.sessions[("active", "open", "m2", "r2", "u2")].count == 1
    assert snapshot.last_updated == parse_snapshot(body([GOOD]), ALL_LABELS, NOW).last_updated
    # Its idle time counts from createdAt: 4,000 s, in the bucket up to 7200 s.
    assert snapshot.idle[("m2",)].counts[5] == 1
    assert dict(snapshot.invalid) == {"sessions.updatedAt": 1}


@pytest.mark.parametrize("element", [None, "x", 5, 2.5, True, [], [GOOD]])
def test_an_element_of_sessions_that_is_not_an_object_is_skipped(element: Any) -> None:
    snapshot = parse_snapshot(body([GOOD, element, GOOD]), ALL_LABELS, NOW)
    assert dict(snapshot.sessions) == {
        ("completed", "merged", "m1", "r1", "u1"): SessionGroup(2, 10, 2, 2)
    }
    assert dict(snapshot.invalid) == {"sessions": 1}


STATS = {"mergesPastWeek": 8, "authorsPastWeek": 3, "humansPastWeek": 5, "humansPromptingNow": 1}


@pytest.mark.parametrize("field", list(STATS))
@pytest.mark.parametrize(
    "value", ["many", True, [], {}, [1], "nan", "NaN", "inf", "-inf", "Infinity", "1e999"]
)
def test_a_stat_that_is_not_a_number_is_left_out(field: str, value: Any) -> None:
    snapshot = parse_snapshot(body([GOOD], {**STATS, field: value}), ALL_LABELS, NOW)
    assert dict(snapshot.stats) == {k: v for k, v in STATS.items() if k != field}
    assert sum(group.count for group in snapshot.sessions.values()) == 1
    assert dict(snapshot.invalid) == {f"stats.{field}": 1}


def test_a_stat_given_as_a_numeric_string_is_still_read() -> None:
    snapshot = parse_snapshot(body([GOOD], {**STATS, "mergesPastWeek": "8.5"}), ALL_LABELS, NOW)
    assert snapshot.stats["mergesPastWeek"] == 8.5
    assert dict(snapshot.invalid) == {}


@pytest.mark.parametrize("value", [5, "n/a", True, [], [STATS]])
def test_stats_that_are_not_an_object_export_no_stats(value: Any) -> None:
    snapshot = parse_snapshot(body([GOOD], value), ALL_LABELS, NOW)
    assert dict(snapshot.stats) == {}
    assert snapshot.sessions[("completed", "merged", "m1", "r1", "u1")].count == 1
    assert dict(snapshot.invalid) == {"stats": 1}


def test_only_fields_the_exporter_reads_are_checked() -> None:
    session = {**GOOD, "metadata": "n/a", "model": 5, "title": 7, "prNumber": "x"}
    snapshot = parse_snapshot(body([session]), ("status",), NOW)
    assert dict(snapshot.sessions) == {("completed",): SessionGroup(1, 5, 1, 1)}
    assert dict(snapshot.invalid) == {}


def test_several_bad_values_are_counted_by_field() -> None:
    sessions = [
        with_value("createdAt", "yesterday"),
        with_value("createdAt", ""),
        with_value("status", 5),
        None,
        {**BAD_BASE, "metadata": "n/a", "author": {"id": 7}},
    ]
    snapshot = parse_snapshot(body(sessions, {**STATS, "humansPastWeek": "x"}), ALL_LABELS, NOW)
    assert sum(group.count for group in snapshot.sessions.values()) == 4
    assert dict(snapshot.invalid) == {
        "sessions.createdAt": 2,
        "sessions.status": 1,
        "sessions": 1,
        "sessions.metadata": 1,
        "sessions.author.id": 1,
        "stats.humansPastWeek": 1,
    }


ONE_MOMENT = 1_794_991_200.0  # 2026-11-18T08:40:00Z


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-18T08:40:00Z",
        "2026-11-18T08:40:00.000Z",
        "2026-11-18T08:40:00.000000Z",
        "2026-11-18T10:40:00+02:00",
        "2026-11-18T03:40:00-05:00",
        "2026-11-18 08:40:00Z",
        "2026-11-18T08:40:00",
        "2026-11-18 08:40:00",
        ONE_MOMENT,
        int(ONE_MOMENT),
        int(ONE_MOMENT * 1000),
        ONE_MOMENT * 1000,
    ],
)
def test_timestamps_in_every_accepted_form_read_alike(value: Any) -> None:
    session = {**GOOD, "status": "active", "createdAt": value, "updatedAt": value}
    snapshot = parse_snapshot(body([session, GOOD]), ALL_LABELS, NOW)
    assert snapshot.oldest_active_created == ONE_MOMENT
    assert snapshot.idle[("m1",)].total == NOW - ONE_MOMENT
    assert dict(snapshot.invalid) == {}


def test_nulls_beside_a_bad_value_are_missing_values_not_bad_ones() -> None:
    session = {"status": 5, "metadata": None, "author": None, "model": None, "createdAt": None}
    snapshot = parse_snapshot(body([session], None), ALL_LABELS, NOW)
    assert dict(snapshot.sessions) == {
        ("unknown", "none", "unknown", "none", "unknown"): SessionGroup(1, 0)
    }
    assert dict(snapshot.invalid) == {"sessions.status": 1}
    nested_nulls = {"status": 5, "metadata": {"prStatus": None}, "author": {"id": None}}
    snapshot = parse_snapshot(body([nested_nulls], {"mergesPastWeek": None}), ALL_LABELS, NOW)
    assert dict(snapshot.invalid) == {"sessions.status": 1}


def test_a_number_past_what_a_float_holds_is_not_a_number() -> None:
    raw = body([GOOD], {**STATS, "humansPastWeek": 5}).replace(
        b'"humansPastWeek": 5', b'"humansPastWeek": 1e999'
    )
    snapshot = parse_snapshot(raw, ALL_LABELS, NOW)
    assert dict(snapshot.stats) == {k: v for k, v in STATS.items() if k != "humansPastWeek"}
    assert dict(snapshot.invalid) == {"stats.humansPastWeek": 1}


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
@pytest.mark.parametrize("field", ["createdAt", "updatedAt"])
def test_a_timestamp_that_is_not_finite_is_not_a_timestamp(field: str, value: Any) -> None:
    snapshot = parse_snapshot(body([GOOD, with_value(field, value)]), ALL_LABELS, NOW)
    assert dict(snapshot.invalid) == {f"sessions.{field}": 1}
    assert snapshot.last_created is not None
    assert math.isfinite(snapshot.last_created)
