"""The List Sessions response schema (only the fields we use) and bytes -> Snapshot."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from operator import attrgetter
from types import MappingProxyType
from typing import Annotated, Any

import msgspec

from magnet_exporter.client import Outcome, PollError

SESSION_LABELS = ("status", "pr_status", "model", "repository", "author")
MISSING_VALUES: Mapping[str, str] = {
    "status": "unknown",
    "pr_status": "none",
    "model": "unknown",
    "repository": "none",
    "author": "unknown",
}
"""The value each session label takes when its field is missing or null."""
STATS_FIELDS = ("mergesPastWeek", "authorsPastWeek", "humansPastWeek", "humansPromptingNow")
MAX_LABEL_LENGTH = 128

# Where each label's value sits in a session: a top-level field, maybe a field inside it.
_LABEL_PATHS: Mapping[str, tuple[str, str | None]] = {
    "status": ("status", None),
    "pr_status": ("metadata", "prStatus"),
    "model": ("model", None),
    "repository": ("metadata", "repository"),
    "author": ("author", "id"),
}
_OPTIONAL_TEXT: Any = str | None
# Bounded so that sums stay exact as floats in the exposition (Python ints are unbounded).
_MESSAGE_COUNT: Any = Annotated[int, msgspec.Meta(ge=0, le=2**40)] | None


def _struct(name: str, fields: Iterable[tuple[str, Any]]) -> Any:
    """Make a struct type whose fields are all optional (missing or null -> None).

    Frozen, so that equal nested values hash alike and can group sessions; untracked by the
    cyclic garbage collector, which would otherwise walk every decoded session for nothing.
    """
    return msgspec.defstruct(
        name, [(field, kind, None) for field, kind in fields], frozen=True, gc=False
    )


_Stats: Any = _struct("Stats", ((field, float | None) for field in STATS_FIELDS))


def _response_decoder(label_names: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """Make a decoder of only the fields the exporter reads; msgspec skips the rest unbuilt.

    The types depend on the configured labels, so they are made at run time: a label that is
    not configured is not read at all.
    """
    nested: dict[str, list[str]] = {}
    for name in label_names:
        field, inner = _LABEL_PATHS[name]
        nested.setdefault(field, [])
        if inner is not None:
            nested[field].append(inner)
    fields: list[tuple[str, Any]] = [
        (field, _struct(field.title(), ((i, _OPTIONAL_TEXT) for i in inner)) | None)
        if inner
        else (field, _OPTIONAL_TEXT)
        for field, inner in nested.items()
    ]
    fields += [
        ("createdAt", datetime | None),
        ("updatedAt", datetime | None),
        ("messageCount", _MESSAGE_COUNT),
    ]
    sessions: Any = list[_struct("Session", fields)]  # type: ignore[misc]
    response = msgspec.defstruct(
        "Response", [("sessions", sessions), ("stats", _Stats | None, None)], gc=False
    )
    # Not strict: numbers given as strings, and timestamps given as Unix seconds, are accepted.
    return msgspec.json.Decoder(response, strict=False)


@dataclasses.dataclass(frozen=True)
class SessionGroup:
    """Sessions that share one combination of label values."""

    count: int
    messages: int

    def __add__(self, other: SessionGroup) -> SessionGroup:
        """Sessions of both groups together."""
        return SessionGroup(self.count + other.count, self.messages + other.messages)


NO_SESSIONS = SessionGroup(0, 0)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One successful poll, reduced to what the metrics need."""

    stats: Mapping[str, float]
    """The `stats` fields present in the response, by API field name."""
    label_names: tuple[str, ...]
    sessions: Mapping[tuple[str, ...], SessionGroup]
    """Session count and message sum by label values, in the order of `label_names`."""
    last_created: float | None
    last_updated: float | None

    def __reduce__(self) -> tuple[Callable[..., Snapshot], tuple[Any, ...]]:
        """Pickle as plain dicts: snapshots come back from poll workers."""
        fields = (self.label_names, self.last_created, self.last_updated)
        return _snapshot, (dict(self.stats), dict(self.sessions), *fields)


def _snapshot(
    stats: dict[str, float],
    sessions: dict[tuple[str, ...], SessionGroup],
    label_names: tuple[str, ...],
    last_created: float | None,
    last_updated: float | None,
) -> Snapshot:
    return Snapshot(
        MappingProxyType(stats),
        label_names,
        MappingProxyType(sessions),
        last_created,
        last_updated,
    )


# Statuses are an enumeration in the API: "Completed " and "completed" are one value.
_LOWER_CASED = frozenset({"status", "pr_status"})


def _label_value(name: str, raw: str | None) -> str:
    value = raw.strip() if raw is not None else ""
    if not value:
        return MISSING_VALUES[name]
    return (value.lower() if name in _LOWER_CASED else value)[:MAX_LABEL_LENGTH]


_RawKey = tuple[Any, ...]
"""The top-level fields a session's labels come from (nested ones still wrapped)."""


class _Grouping:
    """Groups decoded sessions by the raw fields of their labels, then turns those into labels."""

    def __init__(self, label_names: tuple[str, ...]) -> None:
        self._label_names = label_names
        self._fields = list(dict.fromkeys(_LABEL_PATHS[name][0] for name in label_names))
        # itemgetter-like access in C: the per-session loop stays lean.
        fields_of: Callable[[Any], Any] = attrgetter(*self._fields)
        self.raw_key: Callable[[Any], _RawKey] = (
            (lambda session: (fields_of(session),)) if len(self._fields) == 1 else fields_of
        )
        self._positions = [
            (self._fields.index(_LABEL_PATHS[name][0]), _LABEL_PATHS[name][1])
            for name in label_names
        ]

    def count(self, sessions: list[Any]) -> dict[_RawKey, list[int]]:
        """Session count and message sum by raw key: the one pass over every session."""
        raw_key = self.raw_key
        counts: dict[_RawKey, list[int]] = {}
        for session in sessions:
            key = raw_key(session)
            group = counts.get(key)
            if group is None:
                group = counts[key] = [0, 0]
            group[0] += 1
            group[1] += session.messageCount or 0
        return counts

    def labels(self, raw: _RawKey) -> tuple[str, ...]:
        """Return the label values of one raw key, cleaned."""
        values = []
        for name, (position, inner) in zip(self._label_names, self._positions, strict=True):
            value = raw[position]
            if inner is not None:
                value = getattr(value, inner) if value is not None else None
            values.append(_label_value(name, value))
        return tuple(values)


def _newest(moments: Iterable[datetime | None]) -> float | None:
    present = [moment for moment in moments if moment is not None]
    if not present:
        return None
    try:
        newest = max(present)
    except TypeError:  # naive and aware timestamps mixed: compare them all as UTC
        newest = max(present, key=_epoch)
    return _epoch(newest)


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # the API speaks UTC
    return moment.timestamp()


class SnapshotParser:
    """Turns List Sessions bodies into snapshots, for one set of session labels."""

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = tuple(label_names)
        self._decoder = _response_decoder(self.label_names)
        self._grouping = _Grouping(self.label_names)

    def parse(self, body: bytes | bytearray) -> Snapshot:
        """Validate a body and aggregate it in one pass, or raise `PollError`."""
        try:
            response = self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise PollError(Outcome.INVALID_RESPONSE, _describe_invalid(exc)) from None
        sessions = response.sessions
        raw_counts = self._grouping.count(sessions)
        last_created = _newest(map(attrgetter("createdAt"), sessions))
        last_updated = _newest(map(attrgetter("updatedAt"), sessions))
        stats = response.stats
        del response, sessions  # per-session objects are not kept past this point
        groups: dict[tuple[str, ...], SessionGroup] = {}
        for raw, (count, messages) in raw_counts.items():
            key = self._grouping.labels(raw)  # raw values may clean to the same label
            groups[key] = groups.get(key, NO_SESSIONS) + SessionGroup(count, messages)
        return Snapshot(
            stats=MappingProxyType(_present_stats(stats)),
            label_names=self.label_names,
            sessions=MappingProxyType(groups),
            last_created=last_created,
            last_updated=last_updated,
        )


def _present_stats(stats: Any) -> dict[str, float]:
    if stats is None:
        return {}
    return {field: value for field in STATS_FIELDS if (value := getattr(stats, field)) is not None}


def parse_snapshot(body: bytes | bytearray, label_names: Sequence[str]) -> Snapshot:
    """Parse one body; a poller keeps a `SnapshotParser` instead, built once."""
    return SnapshotParser(label_names).parse(body)


_ERROR_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")


def _describe_invalid(exc: msgspec.DecodeError) -> str:
    """One line: where in the body (`sessions.0.status`, or `body`) and what is wrong."""
    match = _ERROR_PATH.match(str(exc))
    message, path = (match["message"], match["path"] or "") if match else (str(exc), "")
    parts = [part for part in re.split(r"[.\[\]]+", path) if part]
    if missing := _MISSING_FIELD.match(message):
        parts.append(missing["field"])
    where = ".".join(parts) or "body"
    first_line = " ".join(message.split())  # a message quoting the body must stay one line
    return f"invalid response: {where}: {first_line}"[:300]
