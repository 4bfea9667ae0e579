"""Parsing and aggregation of List Sessions bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from magnet_exporter.client import Outcome, PollError
from magnet_exporter.model import SessionGroup, parse_snapshot

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "api" / "list-sessions.example.json"
LABELS = ("status", "pr_status", "model")


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
    snapshot = parse_snapshot(example, LABELS)
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
    snapshot = parse_snapshot(body(sessions), ("status", "model"))
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
    snapshot = parse_snapshot(body(sessions), labels)
    assert dict(snapshot.sessions) == {
        ("unknown", "none", "unknown", "none", "unknown"): SessionGroup(4, 0)
    }
    assert snapshot.last_created is None
    assert snapshot.last_updated is None


def test_stats_that_are_missing_or_null_are_left_out() -> None:
    snapshot = parse_snapshot(body([], {"mergesPastWeek": 2, "humansPromptingNow": None}), LABELS)
    assert dict(snapshot.stats) == {"mergesPastWeek": 2}
    assert dict(parse_snapshot(body([]), LABELS).stats) == {}
    assert dict(parse_snapshot(b'{"sessions": [], "stats": null}', LABELS).stats) == {}


def test_unknown_fields_are_ignored() -> None:
    session = {
        "status": "active",
        "brandNewField": {"nested": [1, 2, 3]},
        "metadata": {"prStatus": "open", "labels": ["x"]},
        "author": {"id": "u1", "email": "a@example.com"},
    }
    snapshot = parse_snapshot(body([session], {"mergesPastWeek": 1, "newStat": 9}), LABELS)
    assert dict(snapshot.sessions) == {("active", "open", "unknown"): SessionGroup(1, 0)}
    assert dict(snapshot.stats) == {"mergesPastWeek": 1}


def test_statuses_are_trimmed_and_lower_cased_and_unknown_ones_kept() -> None:
    sessions = [
        {"status": " Completed ", "metadata": {"prStatus": "MERGED"}},
        {"status": "completed", "metadata": {"prStatus": "merged "}},
        {"status": "paused", "metadata": {"prStatus": "queued"}},
        {"status": "  ", "metadata": {"prStatus": ""}},
    ]
    snapshot = parse_snapshot(body(sessions), ("status", "pr_status"))
    assert dict(snapshot.sessions) == {
        ("completed", "merged"): SessionGroup(2, 0),
        ("paused", "queued"): SessionGroup(1, 0),
        ("unknown", "none"): SessionGroup(1, 0),
    }


def test_model_and_repository_keep_their_case_and_long_values_are_cut() -> None:
    long_name = "r" * 300
    sessions = [{"model": " Claude-Opus ", "metadata": {"repository": long_name}}]
    snapshot = parse_snapshot(body(sessions), ("model", "repository"))
    ((model, repository),) = snapshot.sessions
    assert model == "Claude-Opus"
    assert repository == "r" * 128


def test_author_label_is_the_id_never_the_name() -> None:
    sessions = [{"author": {"id": "user_1", "name": "Alice Chen", "imageUrl": "https://x/a.png"}}]
    snapshot = parse_snapshot(body(sessions), ("author",))
    assert list(snapshot.sessions) == [("user_1",)]


def test_newest_timestamps_compare_offsets_and_naive_times_as_utc() -> None:
    sessions = [
        {"createdAt": "2026-02-10T14:30:00.000Z", "updatedAt": "2026-02-10T16:00:00+02:00"},
        {"createdAt": "2026-02-10T15:00:00", "updatedAt": "2026-02-10T14:59:00Z"},
    ]
    snapshot = parse_snapshot(body(sessions), LABELS)
    assert snapshot.last_created == 1770735600.0  # the naive 15:00, read as UTC
    assert snapshot.last_updated == 1770735540.0  # 14:59Z is later than 16:00+02:00


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"<html>Bad gateway</html>", "body"),
        (b"", "body"),
        (b'{"sessions": [', "body"),
        (b"[]", "body"),
        (b'{"stats": {}}', "sessions"),
        (b'{"sessions": null}', "sessions"),
        (b'{"sessions": {"id": 1}}', "sessions"),
        (b'{"sessions": ["x"]}', "sessions.0"),
        (b'{"sessions": [{"status": 5}]}', "sessions.0.status"),
        (b'{"sessions": [{"createdAt": "yesterday"}]}', "sessions.0.createdAt"),
        (b'{"sessions": [], "stats": {"mergesPastWeek": "many"}}', "stats.mergesPastWeek"),
    ],
)
def test_bodies_of_the_wrong_shape_are_invalid_responses(raw: bytes, where: str) -> None:
    with pytest.raises(PollError) as caught:
        parse_snapshot(raw, LABELS)
    assert caught.value.outcome is Outcome.INVALID_RESPONSE
    assert caught.value.reason.startswith(f"invalid response: {where}:")
    assert "\n" not in caught.value.reason
