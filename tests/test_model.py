"""Parsing and aggregation of List Sessions bodies."""

from __future__ import annotations

import copy
import json
import math
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from magnet_exporter.client import Outcome, PollError
from magnet_exporter.demo import Population, SimulatedMagnet
from magnet_exporter.model import (
    MAX_LABEL_LENGTH,
    IdleListing,
    IdleSession,
    SessionGroup,
    Snapshot,
    SnapshotParser,
    parse_snapshot,
)

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
    metadata = {**GOOD["metadata"], "branch": 5, "prNumber": "x", "prUrl": ["u"]}
    session = {**GOOD, "metadata": metadata, "title": 7, "imageUrl": 3}
    snapshot = parse_snapshot(body([session]), ("status",), NOW)
    assert dict(snapshot.sessions) == {("completed",): SessionGroup(1, 5, 1, 1)}
    assert dict(snapshot.invalid) == {}


def test_the_fields_that_name_idle_sessions_are_read_and_checked_whatever_the_labels() -> None:
    session = {**GOOD, "id": 12, "metadata": "n/a", "model": 5}
    snapshot = parse_snapshot(body([session]), ("status",), NOW)
    assert dict(snapshot.sessions) == {("completed",): SessionGroup(1, 5, 1, 1)}
    assert dict(snapshot.invalid) == {
        "sessions.id": 1,
        "sessions.metadata": 1,
        "sessions.model": 1,
    }


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


# --- Idle sessions by name -------------------------------------------------------------


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def idle_session(
    session_id: Any, idle_seconds: float, status: str = "active", **fields: Any
) -> dict[str, Any]:
    """An active session whose last activity (updatedAt) is `idle_seconds` before NOW."""
    return {
        "id": session_id,
        "status": status,
        "createdAt": iso(NOW - idle_seconds - 600),
        "updatedAt": iso(NOW - idle_seconds),
        "model": "claude-opus-4-6",
        "author": {"id": "user_1", "name": "Alice Chen"},
        "metadata": {"repository": "acme/api"},
        **fields,
    }


def listed(snapshot: Snapshot) -> list[tuple[str, float]]:
    return [(idle.session, NOW - idle.last_activity) for idle in snapshot.idle_sessions]


def test_idle_sessions_are_listed_by_name_longest_idle_first() -> None:
    sessions = [
        idle_session("s-fresh", 60),
        idle_session("s-900", 900),  # at least the threshold: listed
        idle_session("s-day", 86_400),
        idle_session("s-899", 899),
        idle_session("s-hour", 3_700, model=" gpt-5-codex ", author={"id": "user_2"}),
    ]
    parser = SnapshotParser(("status",), IdleListing(after_seconds=900, limit=10))
    snapshot = parser.parse(body(sessions), NOW)
    assert listed(snapshot) == [("s-day", 86_400), ("s-hour", 3_700), ("s-900", 900)]
    assert snapshot.idle_sessions[1] == IdleSession(
        "s-hour", "acme/api", "gpt-5-codex", "user_2", NOW - 3_700
    )
    assert snapshot.idle_sessions_unlisted == 0


def test_idle_session_labels_follow_the_label_rules_and_never_carry_names() -> None:
    long_repository = "acme/" + "r" * 300
    sessions = [
        idle_session("  s1  ", 2_000, metadata={"repository": long_repository}),
        idle_session("s2", 3_000, model=None, author=None, metadata=None),
        idle_session("s3", 4_000, model="  ", author={"name": "Bo"}, metadata={}),
    ]
    snapshot = SnapshotParser(("status",)).parse(body(sessions), NOW)
    assert [idle.labels for idle in snapshot.idle_sessions] == [
        ("s3", "none", "unknown", "unknown"),
        ("s2", "none", "unknown", "unknown"),
        ("s1", long_repository[:MAX_LABEL_LENGTH], "claude-opus-4-6", "user_1"),
    ]
    assert "Alice" not in repr(snapshot)
    assert "Bo" not in repr(snapshot.idle_sessions)


def test_only_active_sessions_with_a_usable_id_are_listed() -> None:
    sessions = [
        idle_session("done", 9_000, status="completed"),
        idle_session("failed", 9_000, status="failed"),
        idle_session("shouting", 8_000, status=" Active "),  # cleaned: active
        idle_session(None, 7_000),
        idle_session("   ", 7_000),
        idle_session(12_345, 7_000),  # not a string: unreadable, counted as invalid
        {"id": "no-times", "status": "active"},
        {"id": "created-only", "status": "active", "createdAt": iso(NOW - 5_000)},
    ]
    snapshot = SnapshotParser(("status",)).parse(body(sessions), NOW)
    assert listed(snapshot) == [("shouting", 8_000), ("created-only", 5_000)]
    assert snapshot.idle_sessions_unlisted == 0
    assert snapshot.invalid == {"sessions.id": 1}


def test_the_limit_keeps_the_longest_idle_and_counts_the_rest() -> None:
    sessions = [idle_session(f"s{i}", 1_000 + 100 * i) for i in range(7)]
    two = SnapshotParser(("status",), IdleListing(900, 2)).parse(body(sessions), NOW)
    assert listed(two) == [("s6", 1_600), ("s5", 1_500)]
    assert two.idle_sessions_unlisted == 5
    none = SnapshotParser(("status",), IdleListing(900, 0)).parse(body(sessions), NOW)
    assert none.idle_sessions == ()
    assert none.idle_sessions_unlisted == 7


def test_equally_idle_sessions_are_listed_in_the_order_of_the_answer() -> None:
    sessions = [idle_session(f"s{i}", 2_000) for i in range(5)]
    snapshot = SnapshotParser(("status",), IdleListing(900, 3)).parse(body(sessions), NOW)
    assert [idle.session for idle in snapshot.idle_sessions] == ["s0", "s1", "s2"]
    assert snapshot.idle_sessions_unlisted == 2


def test_the_fields_read_for_the_list_do_not_split_the_session_groups() -> None:
    sessions = [
        idle_session("a", 2_000, model="m1", author={"id": "u1"}, metadata={"repository": "r1"}),
        idle_session("b", 3_000, model="m1", author={"id": "u2"}, metadata={"repository": "r2"}),
        idle_session("c", 10, model="m1", author={"id": "u3"}, metadata=None),
    ]
    snapshot = SnapshotParser(("status", "model")).parse(body(sessions), NOW)
    assert dict(snapshot.sessions) == {("active", "m1"): SessionGroup(3, 0, 3, 3)}
    assert [idle.session for idle in snapshot.idle_sessions] == ["b", "a"]


def test_idle_sessions_travel_from_a_worker() -> None:
    sessions = [idle_session("s1", 2_000), idle_session("s2", 1_000)]
    snapshot = SnapshotParser(("status",), IdleListing(900, 1)).parse(body(sessions), NOW)
    travelled = pickle.loads(pickle.dumps(snapshot))  # noqa: S301 (our own bytes)
    assert travelled.idle_sessions == snapshot.idle_sessions
    assert travelled.idle_sessions_unlisted == 1


def realistic(sessions: int = 2_000) -> dict[str, Any]:
    magnet = SimulatedMagnet(
        seed=2, clock=lambda: NOW, listed_sessions=sessions, population=Population()
    )
    return magnet.sessions_response("acme")


def test_fields_that_are_not_labels_do_not_change_the_sessions_or_histograms() -> None:
    document = realistic()
    uniform = copy.deepcopy(document)
    for item in uniform["sessions"]:
        item["author"] = {"id": "user_1", "name": "One Person"}
        item["title"] = "the same title"
        if item["metadata"]:
            item["metadata"].update(branch="main", prUrl="https://example.com/pr", prNumber=1)
    many = parse_snapshot(json.dumps(document).encode(), LABELS, NOW)
    one = parse_snapshot(json.dumps(uniform).encode(), LABELS, NOW)
    assert many.authors_past_week > 100
    assert one.authors_past_week == 1
    assert many.sessions == one.sessions
    assert many.durations == one.durations
    assert many.idle == one.idle
    assert sum(group.count for group in many.sessions.values()) == len(document["sessions"])


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


@pytest.mark.parametrize("bad", [False, True], ids=["clean", "a bad value"])
def test_the_decoded_sessions_can_be_left_to_the_caller_to_free(bad: bool) -> None:
    document = realistic(300)
    if bad:  # the tolerant reader decodes session by session
        document["sessions"][7]["createdAt"] = "yesterday"
    raw = json.dumps(document).encode()
    parser = SnapshotParser(LABELS)
    discard: list[object] = []
    kept = parser.parse(raw, NOW, discard)
    assert kept == parser.parse(raw, NOW)
    (sessions,) = discard
    assert isinstance(sessions, list)
    assert len(sessions) == len(document["sessions"])
