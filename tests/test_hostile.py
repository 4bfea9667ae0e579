"""Hostile input: whatever the API answers, parsing gives a snapshot or a classified failure.

A body that is usable as a whole always gives a snapshot: bad values in it are read as missing.

Property-based (hypothesis): arbitrary bytes, arbitrary JSON shapes and near-valid documents
whose fields hold any JSON value go into `parse_snapshot`; label values with quotes,
backslashes, newlines, non-ASCII and very long text go all the way to the exposition, which
prometheus-client's parser and `promtool check metrics` must accept.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXED_NOW, RunningExporter
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter.client import Outcome, PollError
from magnet_exporter.collector import DataCollector, StatusCollector
from magnet_exporter.demo import DEFAULT_ORGANIZATION, DemoApiServer, Fault, SimulatedMagnet
from magnet_exporter.model import SESSION_LABELS, Snapshot, parse_snapshot
from magnet_exporter.poller import PollState
from magnet_exporter.series import SessionSeries

# Hypothesis caches what it learns about the code (and unicode tables) in `.hypothesis` in the
# working directory, starting at test collection: keep that out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "magnet-exporter-hypothesis")

# Deterministic in CI, no example database, no per-example deadline (a cold first call is slow).
HOSTILE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Each example of the promtool test starts one promtool process.
PROMTOOL_EXAMPLES = 60

# What the issue fixes, written out here rather than imported, so the tests are an oracle.
DEFAULTS = {
    "status": "unknown",
    "pr_status": "none",
    "model": "unknown",
    "repository": "none",
    "author": "unknown",
}
LOWER_CASED = ("status", "pr_status")
MAX_LABEL_LENGTH = 128
STATS_FIELDS = ("mergesPastWeek", "authorsPastWeek", "humansPastWeek", "humansPromptingNow")


# --- strategies -------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them, not every parser takes them
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["id", "prStatus", "sessions"]) | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
timestamps = st.datetimes().map(lambda moment: moment.isoformat()) | st.sampled_from(
    ["2026-02-10T14:30:00.000Z", "2026-02-10T14:30:00+23:59", "0001-01-01T00:00:00", ""]
)
field_values = (
    json_values | st.text(max_size=20) | timestamps | st.integers(min_value=-1, max_value=10**6)
)
"""Anything a session field could hold: the right type often, any JSON value otherwise."""

near_valid_sessions = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "title": json_values,
        "status": field_values,
        "model": field_values,
        "createdAt": field_values,
        "updatedAt": field_values,
        "messageCount": field_values,
        "metadata": st.fixed_dictionaries(
            {}, optional={"prStatus": field_values, "repository": field_values, "x": json_values}
        )
        | json_values,
        "author": st.fixed_dictionaries({}, optional={"id": field_values, "name": json_values})
        | json_values,
        "unknownField": json_values,
    },
)
near_valid_stats = (
    st.fixed_dictionaries(
        {}, optional={field: field_values | st.floats() for field in STATS_FIELDS}
    )
    | json_values
)
near_valid_documents = st.fixed_dictionaries(
    {"sessions": st.lists(near_valid_sessions, max_size=5)},
    optional={"stats": near_valid_stats, "extra": json_values},
)

label_name_lists = st.lists(
    st.sampled_from(SESSION_LABELS), min_size=1, max_size=len(SESSION_LABELS), unique=True
).map(tuple)


def encode(document: object, ascii_only: bool) -> bytes:
    return json.dumps(document, ensure_ascii=ascii_only).encode()


def is_json(body: bytes) -> bool:
    """False for what json.dumps writes for inf and nan (Infinity, NaN): that is not JSON."""
    try:
        json.loads(body, parse_constant=lambda constant: 1 / 0)
    except ZeroDivisionError:
        return False
    return True


def _valid_body() -> bytes:
    """A real answer of the simulated API, to be cut and spliced."""
    magnet = SimulatedMagnet(seed=3, clock=lambda: FIXED_NOW)
    document = magnet.sessions_response(DEFAULT_ORGANIZATION)
    document["sessions"] = document["sessions"][:3]  # short, so that splices hit every part
    return json.dumps(document).encode()


VALID_BODY = _valid_body()


@st.composite
def damaged_bodies(draw: st.DrawFn) -> bytes:
    """A valid body, cut short or with a few bytes replaced by anything."""
    start = draw(st.integers(0, len(VALID_BODY)))
    if draw(st.booleans()):
        return VALID_BODY[:start]
    length = draw(st.integers(0, 8))
    return VALID_BODY[:start] + draw(st.binary(max_size=8)) + VALID_BODY[start + length :]


# Text that needs escaping in the exposition, or is far past the 128-character cut.
specials = st.sampled_from(['"', "\\", "\n", "\\n", '\\"', "}", ",", "=", "#", " ", "\t", "\r"])
hostile_text = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),  # any code point but lone surrogates
    st.lists(
        specials | st.sampled_from(["é", "日本語", "🙂", "Ä", "İ", "\u2028", "\x00", "a", "B"]),
        max_size=20,
    ).map("".join),
    st.text(st.characters(codec="utf-8"), min_size=120, max_size=300),
    st.sampled_from(['"', "\\", "\n", "\\\\\\", 'a"b\\c\nd', "x" * 129, "é" * 200]),
)


@st.composite
def hostile_label_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed document whose label fields hold hostile text (or nothing)."""
    sessions = []
    for _ in range(draw(st.integers(1, 6))):
        value = st.none() | hostile_text
        session: dict[str, Any] = {
            "status": draw(value),
            "model": draw(value),
            "author": {"id": draw(value), "name": draw(hostile_text)},
            "metadata": {"prStatus": draw(value), "repository": draw(value)},
            "messageCount": draw(st.integers(0, 10**6)),
            "createdAt": "2026-02-10T14:30:00.000Z",
        }
        sessions.append(session)
    return {"sessions": sessions, "stats": {"mergesPastWeek": 1}}


# --- helpers ----------------------------------------------------------------------------------


def parse_or_classify(body: bytes, label_names: Sequence[str]) -> Snapshot | None:
    """Parse; a refusal must be a PollError with outcome invalid_response, anything else fails."""
    try:
        snapshot = parse_snapshot(body, label_names, FIXED_NOW)
    except PollError as error:
        refusal = error
    else:
        event("snapshot")
        return snapshot
    event("invalid_response")
    assert refusal.outcome is Outcome.INVALID_RESPONSE, refusal
    assert str(refusal).startswith("invalid response"), refusal
    return None


def check_snapshot(snapshot: Snapshot, label_names: Sequence[str], sessions: int | None) -> None:
    """What any snapshot must look like, whatever came in."""
    assert snapshot.label_names == tuple(label_names)
    for key, group in snapshot.sessions.items():
        assert len(key) == len(label_names)
        for value in key:
            assert isinstance(value, str)
            assert 0 < len(value) <= MAX_LABEL_LENGTH
        assert group.count > 0
    if sessions is not None:
        assert sum(group.count for group in snapshot.sessions.values()) == sessions
    assert set(snapshot.stats) <= set(STATS_FIELDS)
    assert all(isinstance(value, float) for value in snapshot.stats.values())


def expected_label(name: str, raw: str | None) -> str:
    """The label value the issue specifies for a raw field value."""
    value = (raw or "").strip()
    if not value:
        return DEFAULTS[name]
    if name in LOWER_CASED:
        value = value.lower()
    return value[:MAX_LABEL_LENGTH]


def raw_labels(session: Mapping[str, Any]) -> dict[str, str | None]:
    return {
        "status": session["status"],
        "pr_status": session["metadata"]["prStatus"],
        "model": session["model"],
        "repository": session["metadata"]["repository"],
        "author": session["author"]["id"],
    }


def expected_groups(
    document: Mapping[str, Any], label_names: Sequence[str]
) -> dict[tuple[str, ...], tuple[float, float]]:
    """(count, messages) by label values, counted straight from the document."""
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    messages: collections.Counter[tuple[str, ...]] = collections.Counter()
    for session in document["sessions"]:
        raw = raw_labels(session)
        key = tuple(expected_label(name, raw[name]) for name in label_names)
        counts[key] += 1
        messages[key] += session["messageCount"]
    return {key: (float(counts[key]), float(messages[key])) for key in counts}


def exposition(snapshots: Mapping[str, Snapshot], label_names: tuple[str, ...]) -> str:
    """Render snapshots (by organization) through stabilize, the collector and generate_latest."""
    states = {}
    for organization, snapshot in snapshots.items():
        # A high limit: this is about escaping, not about the cardinality guard.
        stable, _ = SessionSeries(label_names, max_label_values=10_000).stabilize(snapshot)
        states[organization] = PollState(
            up=True, snapshot=stable, last_success=FIXED_NOW, success_age_origin=FIXED_NOW
        )
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: states))
    registry.register(
        DataCollector(lambda: states, label_names, stale_after=60, monotonic=lambda: FIXED_NOW)
    )
    return generate_latest(registry).decode()


def exported_groups(
    text: str, organization: str, label_names: Sequence[str]
) -> dict[tuple[str, ...], tuple[float, float]]:
    """Non-zero (count, messages) by label values, as prometheus-client's parser reads them."""
    values: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("magnet_sessions", "magnet_session_messages"):
            values[family.name] = {
                tuple(sample.labels[name] for name in label_names): sample.value
                for sample in family.samples
                if sample.labels["organization"] == organization
            }
    sessions, messages = values["magnet_sessions"], values["magnet_session_messages"]
    assert sessions.keys() == messages.keys()
    return {key: (count, messages[key]) for key, count in sessions.items() if count}


# --- parsing: every input gives a snapshot, or invalid_response when unusable as a whole ----------


@HOSTILE
@given(body=st.binary(max_size=2000) | damaged_bodies(), label_names=label_name_lists)
@example(body=b"", label_names=SESSION_LABELS)
@example(body=b"\xff\xfe\x00", label_names=SESSION_LABELS)
@example(body=b"[" * 100_000 + b"]" * 100_000, label_names=SESSION_LABELS)
@example(body=b'{"sessions":[{"status":"\\ud800"}]}', label_names=SESSION_LABELS)
@example(body=b'{"sessions":[{"messageCount":' + b"9" * 5000 + b"}]}", label_names=("model",))
def test_arbitrary_bytes(body: bytes, label_names: tuple[str, ...]) -> None:
    snapshot = parse_or_classify(body, label_names)
    if snapshot is not None:
        check_snapshot(snapshot, label_names, sessions=None)


@HOSTILE
@given(
    document=json_values
    | json_values.map(lambda value: {"sessions": value})
    | json_values.map(lambda value: {"sessions": [value], "stats": value}),
    ascii_only=st.booleans(),
    label_names=label_name_lists,
)
@example(document={"sessions": []}, ascii_only=True, label_names=SESSION_LABELS)
@example(document={"sessions": None}, ascii_only=True, label_names=SESSION_LABELS)
@example(document={"sessions": [[]]}, ascii_only=True, label_names=SESSION_LABELS)
def test_arbitrary_json_shapes(
    document: object, ascii_only: bool, label_names: tuple[str, ...]
) -> None:
    body = encode(document, ascii_only)
    snapshot = parse_or_classify(body, label_names)
    sessions = document.get("sessions") if isinstance(document, dict) else None
    # Only a body unusable as a whole is refused; in one that is usable, a bad value in a
    # session loses that value, and an element that is not an object is skipped.
    assert (snapshot is not None) == (isinstance(sessions, list) and is_json(body))
    if snapshot is not None:
        assert isinstance(sessions, list)
        objects = sum(isinstance(session, dict) for session in sessions)
        check_snapshot(snapshot, label_names, sessions=objects)
        assert snapshot.invalid.get("sessions", 0) == len(sessions) - objects


@HOSTILE
@given(document=near_valid_documents, ascii_only=st.booleans(), label_names=label_name_lists)
@example(
    document={"sessions": [{"metadata": "x", "author": [1, 2]}, {"metadata": None}]},
    ascii_only=True,
    label_names=SESSION_LABELS,
)
@example(
    document={
        "sessions": [
            {"createdAt": "9999-12-31T23:59:59-23:59"},
            {"createdAt": "0001-01-01T00:00:00+23:59"},
            {"createdAt": "2026-01-01T00:00:00"},
        ]
    },
    ascii_only=True,
    label_names=SESSION_LABELS,
)
@example(
    document={"sessions": [], "stats": {"mergesPastWeek": "NaN", "humansPastWeek": 1e400}},
    ascii_only=True,
    label_names=("status",),
)
@example(  # an integer too large for a float: pydantic takes it, the exposition cannot
    document={"sessions": [{"messageCount": 10**400}]}, ascii_only=True, label_names=("model",)
)
def test_near_valid_documents(
    document: dict[str, Any], ascii_only: bool, label_names: tuple[str, ...]
) -> None:
    body = encode(document, ascii_only)
    snapshot = parse_or_classify(body, label_names)
    if not is_json(body):
        return
    assert snapshot is not None, "a body with a sessions array is never refused"
    objects = sum(isinstance(session, dict) for session in document["sessions"])
    check_snapshot(snapshot, label_names, sessions=objects)
    if snapshot is not None:
        # A body that parses is served: its snapshot renders, and the exposition parses.
        text = exposition({"acme": snapshot}, label_names)
        families = {family.name for family in text_string_to_metric_families(text)}
        assert {"magnet_up", "magnet_sessions", "magnet_session_messages"} <= families


# --- label values: through the whole pipeline and back ------------------------------------------


@HOSTILE
@given(document=hostile_label_documents(), ascii_only=st.booleans(), label_names=label_name_lists)
def test_hostile_label_values_round_trip_through_the_exposition(
    document: dict[str, Any], ascii_only: bool, label_names: tuple[str, ...]
) -> None:
    snapshot = parse_snapshot(encode(document, ascii_only), label_names, FIXED_NOW)
    text = exposition({"acme": snapshot}, label_names)
    assert exported_groups(text, "acme", label_names) == expected_groups(document, label_names)


def test_the_hostile_label_strategy_reaches_what_it_is_for() -> None:
    """The round trip above only means something if such values get past parsing unchanged."""
    value = 'Ünïcode "quoted" back\\slash\nnew line ' + "x" * 200
    session = {
        "status": value,
        "model": value,
        "author": {"id": value, "name": "n"},
        "metadata": {"prStatus": value, "repository": value},
        "messageCount": 3,
    }
    document = {"sessions": [session]}
    text = exposition(
        {"acme": parse_snapshot(encode(document, False), SESSION_LABELS, FIXED_NOW)}, SESSION_LABELS
    )
    (key,) = exported_groups(text, "acme", SESSION_LABELS)
    assert key[SESSION_LABELS.index("model")] == value[:128]
    assert key[SESSION_LABELS.index("status")] == value.lower()[:128]
    assert '\\"quoted\\" back\\\\slash\\nnew line' in text  # escaped, on one line


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@settings(HOSTILE, max_examples=PROMTOOL_EXAMPLES)
@given(
    documents=st.lists(hostile_label_documents(), min_size=4, max_size=4),
    label_names=label_name_lists,
)
def test_promtool_accepts_hostile_label_values(
    documents: list[dict[str, Any]], label_names: tuple[str, ...]
) -> None:
    # Four documents in one exposition, one organization each: one promtool run per example.
    snapshots = {
        f"org-{index}": parse_snapshot(encode(document, index % 2 == 0), label_names, FIXED_NOW)
        for index, document in enumerate(documents)
    }
    text = exposition(snapshots, label_names)
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""
    assert checked.stderr.strip() == ""
    for organization, document in zip(snapshots, documents, strict=True):
        assert exported_groups(text, organization, label_names) == expected_groups(
            document, label_names
        )


def test_a_huge_message_count_does_not_break_the_metrics_endpoint(
    exporter_factory: Callable[..., RunningExporter], simulator: DemoApiServer
) -> None:
    exporter = exporter_factory()
    body = json.dumps({"sessions": [{"status": "active", "messageCount": 10**400}]}).encode()
    simulator.fault = Fault(status=200, body=body)
    state = exporter.poll()
    response = exporter.get("/metrics")
    # Refused as invalid_response, or served: either way /metrics answers.
    assert response.status_code == 200, (state.last_outcome, response.text[:200])
    if not state.up:
        assert state.last_outcome is Outcome.INVALID_RESPONSE
