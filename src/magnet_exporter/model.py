"""The List Sessions response schema (only the fields we use) and bytes -> Snapshot."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from types import MappingProxyType
from typing import Annotated, Any

import pydantic
from typing_extensions import NotRequired, TypedDict

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


def _field(path: str | None = None, *, le: int | None = None) -> Any:
    """Declare a session field that may be missing or null (then None), maybe at a nested path."""
    alias = pydantic.AliasPath(*path.split(".")) if path else None
    return pydantic.Field(default=None, validation_alias=alias, ge=0 if le else None, le=le)


# Only the fields the exporter reads, flattened, and named after the labels they feed:
# pydantic skips the rest of the body without building anything for it, and nested values
# are picked out without building the `metadata` and `author` objects around them. A label
# that is not configured is not read at all.
_LABEL_FIELDS: Mapping[str, Any] = {
    "status": Annotated[str | None, _field()],
    "pr_status": Annotated[str | None, _field("metadata.prStatus")],
    "model": Annotated[str | None, _field()],
    "repository": Annotated[str | None, _field("metadata.repository")],
    "author": Annotated[str | None, _field("author.id")],
}
_COMMON_FIELDS: Mapping[str, Any] = {
    "createdAt": Annotated[datetime | None, _field()],
    "updatedAt": Annotated[datetime | None, _field()],
    # Bounded so that sums stay exact as floats in the exposition (Python ints are unbounded).
    "messageCount": Annotated[int | None, _field(le=2**40)],
}
_Session = Mapping[str, Any]
"""A validated session: the label fields configured and `_COMMON_FIELDS`, None when absent."""


class _Stats(TypedDict, total=False):
    mergesPastWeek: float | None
    authorsPastWeek: float | None
    humansPastWeek: float | None
    humansPromptingNow: float | None


def _response_adapter(label_names: tuple[str, ...]) -> pydantic.TypeAdapter[Any]:
    fields = {**{name: _LABEL_FIELDS[name] for name in label_names}, **_COMMON_FIELDS}
    # The fields depend on the configuration, so the TypedDicts are made at run time.
    session = TypedDict("Session", fields)  # type: ignore[misc]
    response = TypedDict(  # type: ignore[name-match]  # noqa: UP013
        "Response", {"sessions": list[session], "stats": NotRequired[_Stats | None]}
    )
    return pydantic.TypeAdapter(response)


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


# Statuses are an enumeration in the API: "Completed " and "completed" are one value.
_LOWER_CASED = frozenset({"status", "pr_status"})


def _label_value(name: str, raw: str | None) -> str:
    value = raw.strip() if raw is not None else ""
    if not value:
        return MISSING_VALUES[name]
    return (value.lower() if name in _LOWER_CASED else value)[:MAX_LABEL_LENGTH]


_RawKey = tuple[str | None, ...]
_Timestamps = tuple[list[datetime], list[datetime]]


def _count_raw(
    sessions: list[_Session], label_names: Sequence[str]
) -> tuple[dict[_RawKey, list[int]], _Timestamps]:
    """Count sessions and messages by the raw values of the labels: the one pass, kept lean."""
    raw_key = _key_getter(label_names)
    counts: dict[_RawKey, list[int]] = {}
    created: list[datetime] = []
    updated: list[datetime] = []
    for session in sessions:
        key = raw_key(session)
        group = counts.get(key)
        if group is None:
            group = counts[key] = [0, 0]
        group[0] += 1
        group[1] += session["messageCount"] or 0
        if (moment := session["createdAt"]) is not None:
            created.append(moment)
        if (moment := session["updatedAt"]) is not None:
            updated.append(moment)
    return counts, (created, updated)


def _key_getter(label_names: Sequence[str]) -> Callable[[_Session], _RawKey]:
    if len(label_names) == 1:  # itemgetter with one name returns the value, not a tuple
        (name,) = label_names
        return lambda session: (session[name],)
    return itemgetter(*label_names)


def _label_key(raw: _RawKey, label_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(_label_value(name, value) for name, value in zip(label_names, raw, strict=True))


def _newest(moments: list[datetime]) -> float | None:
    if not moments:
        return None
    try:
        newest = max(moments)
    except TypeError:  # naive and aware timestamps mixed: compare them all as UTC
        newest = max(moments, key=_epoch)
    return _epoch(newest)


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # the API speaks UTC
    return moment.timestamp()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a body is turned into a snapshot.

    Validation allocates about a million acyclic objects in one burst; CPython's collector would
    walk the growing heap several times over for nothing, which costs more than the parsing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class SnapshotParser:
    """Turns List Sessions bodies into snapshots, for one set of session labels."""

    def __init__(self, label_names: Sequence[str]) -> None:
        self.label_names = tuple(label_names)
        self._adapter = _response_adapter(self.label_names)

    def parse(self, body: bytes) -> Snapshot:
        """Validate a body and aggregate it in one pass, or raise `PollError`."""
        with _gc_paused():
            try:
                response = self._adapter.validate_json(body)
            except pydantic.ValidationError as exc:
                raise PollError(Outcome.INVALID_RESPONSE, _describe_invalid(exc)) from None
            raw_counts, (created, updated) = _count_raw(response["sessions"], self.label_names)
            stats: Mapping[str, float | None] = response.get("stats") or {}
            del response  # per-session objects are not kept past this point
        sessions: dict[tuple[str, ...], SessionGroup] = {}
        for raw, (count, messages) in raw_counts.items():
            key = _label_key(raw, self.label_names)  # raw values may clean to the same label
            sessions[key] = sessions.get(key, NO_SESSIONS) + SessionGroup(count, messages)
        return Snapshot(
            stats=MappingProxyType(
                {field: float(v) for field in STATS_FIELDS if (v := stats.get(field)) is not None}
            ),
            label_names=self.label_names,
            sessions=MappingProxyType(sessions),
            last_created=_newest(created),
            last_updated=_newest(updated),
        )


def parse_snapshot(body: bytes, label_names: Sequence[str]) -> Snapshot:
    """Parse one body; a poller keeps a `SnapshotParser` instead, built once."""
    return SnapshotParser(label_names).parse(body)


def _describe_invalid(exc: pydantic.ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid response: {where}: {first['msg']}{more}"
