"""The List Sessions response schema (only the fields we use) and bytes -> Snapshot.

Reading is tolerant, as a client of a third-party API must be: a value of the wrong type in
one session is read as missing, for that session and field only, and counted by field. Only
a body that cannot be used as a whole (not JSON, not an object, no `sessions` array) fails.
"""

from __future__ import annotations

import dataclasses
import heapq
import re
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
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
"""The value each session label takes when its field is missing, null or unreadable."""
STATS_FIELDS = ("mergesPastWeek", "authorsPastWeek", "humansPastWeek", "humansPromptingNow")
MAX_LABEL_LENGTH = 128

DAY_SECONDS = 86_400.0
WEEK_SECONDS = 604_800.0
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)
"""Upper bounds (seconds) of the session duration histogram; +Inf follows."""
IDLE_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)
"""Upper bounds (seconds) of the active session idle histogram; +Inf follows."""
DURATION_LABELS = ("status", "model")
"""The session labels that the duration histogram keeps, when they are configured."""
IDLE_LABELS = ("model",)
"""The session labels that the idle histogram keeps, when they are configured."""
FINISHED_STATUSES = ("completed", "failed")
ACTIVE_STATUS = "active"
MILLISECONDS_ABOVE = 1_000_000_000_000
"""A numeric timestamp above this is in milliseconds (it would be past the year 33,000 in s)."""

# Where each label's value sits in a session: a top-level field, maybe a field inside it.
_LABEL_PATHS: Mapping[str, tuple[str, str | None]] = {
    "status": ("status", None),
    "pr_status": ("metadata", "prStatus"),
    "model": ("model", None),
    "repository": ("metadata", "repository"),
    "author": ("author", "id"),
    "session": ("id", None),  # not a session label: the label of the idle sessions only
}
# Read whatever the labels: status splits finished from active sessions, author.id counts
# the authors of the past day and week, and the idle sessions are named by all four others.
# Only the labels and the status group sessions: the rest never split a group.
_ALWAYS_READ = ("status", "author", "session", "repository", "model")
_OPTIONAL_TEXT: Any = str | None
# Bounded so that sums stay exact as floats in the exposition (Python ints are unbounded).
_COUNT: Any = Annotated[int, msgspec.Meta(ge=0, le=2**40)]
# A finite number: msgspec reads "nan", "inf" and "Infinity" (strings, as numbers may be given)
# as floats, which are no count or time anyone can use.
_FINITE: Any = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
# A number is a Unix time, which msgspec would read as seconds: numbers stay numbers here, and
# are read as seconds or milliseconds in Python.
_MOMENT: Any = datetime | float | None

# What kind of session a (cleaned) status makes, for the duration and idle histograms.
_OTHER_KIND, _FINISHED_KIND, _ACTIVE_KIND = 0, 1, 2


def _struct(name: str, fields: Iterable[tuple[str, Any]]) -> Any:
    """Make a struct type whose fields are all optional (missing or null -> None).

    Frozen, so that equal nested values hash alike and can group sessions; untracked by the
    cyclic garbage collector, which would otherwise walk every decoded session for nothing.
    """
    return msgspec.defstruct(
        name, [(field, kind, None) for field, kind in fields], frozen=True, gc=False
    )


_Stats: Any = _struct("Stats", ((field, _FINITE | None) for field in STATS_FIELDS))
_STATS_DECODER = msgspec.json.Decoder(_Stats | None, strict=False)


def _nested_fields(label_names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Return the top-level session fields read, each with the fields read inside it."""
    nested: dict[str, list[str]] = {}
    for name in (*label_names, *_ALWAYS_READ):
        field, inner = _LABEL_PATHS[name]
        known = nested.setdefault(field, [])
        if inner is not None and inner not in known:
            known.append(inner)
    return {field: tuple(inner) for field, inner in nested.items()}


def kept(label_names: Sequence[str], histogram_labels: Sequence[str]) -> tuple[int, ...]:
    """Return the positions of the session labels that a histogram keeps, in their order."""
    return tuple(i for i, name in enumerate(label_names) if name in histogram_labels)


def checked_fields(label_names: Sequence[str]) -> tuple[str, ...]:
    """Every field path whose unreadable values are counted, for the configured labels."""
    paths = ["sessions"]
    for field, inner in _nested_fields(label_names).items():
        paths.append(f"sessions.{field}")
        paths.extend(f"sessions.{field}.{name}" for name in inner)
    paths += ["sessions.createdAt", "sessions.updatedAt", "sessions.messageCount", "stats"]
    paths.extend(f"stats.{field}" for field in STATS_FIELDS)
    return tuple(paths)


@dataclasses.dataclass(frozen=True)
class SessionGroup:
    """Sessions that share one combination of label values."""

    count: int
    messages: int
    created_past_day: int = 0
    created_past_week: int = 0

    def __add__(self, other: SessionGroup) -> SessionGroup:
        """Sessions of both groups together."""
        return SessionGroup(
            self.count + other.count,
            self.messages + other.messages,
            self.created_past_day + other.created_past_day,
            self.created_past_week + other.created_past_week,
        )


NO_SESSIONS = SessionGroup(0, 0)


@dataclasses.dataclass(frozen=True)
class GaugeHistogram:
    """Observations by bucket (not cumulative; the last one is +Inf) and their sum."""

    counts: tuple[int, ...]
    total: float

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> GaugeHistogram:
        """No observation, over `bounds` and +Inf."""
        return cls((0,) * (len(bounds) + 1), 0.0)

    def __add__(self, other: GaugeHistogram) -> GaugeHistogram:
        """Observations of both together."""
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return GaugeHistogram(counts, self.total + other.total)


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


IDLE_SESSION_LABELS = ("session", "repository", "model", "author")
"""The labels of an idle session, after `organization`."""


@dataclasses.dataclass(frozen=True)
class IdleSession:
    """An active session idle past the listing threshold, named by its labels."""

    session: str
    """The session's `id`."""
    repository: str
    model: str
    author: str
    """The author's id, never the name."""
    last_activity: float
    """`updatedAt`, else `createdAt`, as Unix seconds."""

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """The label values, in the order of `IDLE_SESSION_LABELS`."""
        return (self.session, self.repository, self.model, self.author)


@dataclasses.dataclass(frozen=True)
class IdleListing:
    """Which idle sessions a snapshot lists by name."""

    after_seconds: float = 900.0
    """Active sessions idle at least this long are listed."""
    limit: int = 10
    """At most this many, the longest idle first; 0 lists none (all count as unlisted)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One successful poll, reduced to what the metrics need."""

    stats: Mapping[str, float]
    """The `stats` fields present in the response, by API field name."""
    label_names: tuple[str, ...]
    sessions: Mapping[tuple[str, ...], SessionGroup]
    """Session counts and message sum by label values, in the order of `label_names`."""
    last_created: float | None
    last_updated: float | None
    durations: Mapping[tuple[str, ...], GaugeHistogram] = dataclasses.field(default_factory=_empty)
    """Durations of the sessions finished in the past week, by `kept(DURATION_LABELS)` values."""
    idle: Mapping[tuple[str, ...], GaugeHistogram] = dataclasses.field(default_factory=_empty)
    """Time since the last activity of active sessions, by `kept(IDLE_LABELS)` values."""
    oldest_active_created: float | None = None
    authors_past_day: int = 0
    authors_past_week: int = 0
    invalid: Mapping[str, int] = dataclasses.field(default_factory=_empty)
    """Values read as missing because they were unreadable, by field path."""
    idle_sessions: tuple[IdleSession, ...] = ()
    """The active sessions idle past the listing threshold, the longest idle first, bounded."""
    idle_sessions_unlisted: int = 0
    """The active sessions idle past the threshold that the bound left out."""

    def __reduce__(self) -> tuple[Callable[..., Snapshot], tuple[Any, ...]]:
        """Pickle as plain dicts: snapshots come back from poll workers."""
        return _snapshot, (
            *(
                dict(getattr(self, field.name))
                if isinstance(getattr(self, field.name), Mapping)
                else getattr(self, field.name)
                for field in dataclasses.fields(self)
            ),
        )


def _snapshot(*values: Any) -> Snapshot:
    fields: list[Any] = [
        MappingProxyType(value) if isinstance(value, dict) else value for value in values
    ]
    return Snapshot(*fields)


# Statuses are an enumeration in the API: "Completed " and "completed" are one value.
_LOWER_CASED = frozenset({"status", "pr_status"})


def _label_value(name: str, raw: str | None) -> str:
    value = raw.strip() if raw is not None else ""
    if not value:
        return MISSING_VALUES[name]
    return (value.lower() if name in _LOWER_CASED else value)[:MAX_LABEL_LENGTH]


def _kind(status: str) -> int:
    if status in FINISHED_STATUSES:
        return _FINISHED_KIND
    return _ACTIVE_KIND if status == ACTIVE_STATUS else _OTHER_KIND


_RawKey = tuple[Any, ...]
"""A session's label fields as decoded (not yet cleaned), plus its status."""


class _Group:
    """What the one pass accumulates for the sessions of one raw key."""

    __slots__ = ("count", "created_day", "created_week", "durations", "idle", "kind", "messages")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.count = self.messages = self.created_day = self.created_week = 0
        self.durations: list[float] = [0] * (len(DURATION_BUCKETS) + 2)  # buckets, then sum
        self.idle: list[float] = [0] * (len(IDLE_BUCKETS) + 2)


@dataclasses.dataclass
class _Pass:
    """The one pass over every session, before raw values become labels."""

    groups: dict[_RawKey, _Group]
    authors_day: set[str]
    authors_week: set[str]
    oldest_active: datetime | None
    idle_sessions: tuple[IdleSession, ...] = ()
    idle_unlisted: int = 0


class _Grouping:
    """Groups decoded sessions by the raw values of their labels, then turns those into labels.

    The key holds the label fields and the status (it decides which histogram a session
    feeds; the API's statuses are few), nothing else: fields read for other metrics (author
    ids, timestamps) never split a group, so the per-group work follows the label values,
    not the number of sessions or authors.
    """

    def __init__(self, label_names: tuple[str, ...], inner_types: Mapping[str, Any]) -> None:
        self._label_names = label_names
        # The status first, then the other label fields in a fixed order.
        paths = sorted({_LABEL_PATHS[name] for name in label_names} - {_LABEL_PATHS["status"]})
        paths.insert(0, _LABEL_PATHS["status"])
        self.raw_key = _key_function(paths, inner_types)
        self._positions = [paths.index(_LABEL_PATHS[name]) for name in label_names]

    def new_group(self, raw: _RawKey) -> _Group:
        """Start the group of a raw key, knowing from its status what kind of sessions it has."""
        return _Group(_kind(_label_value("status", raw[0])))

    def labels(self, raw: _RawKey) -> tuple[str, ...]:
        """Return the label values of one raw key, cleaned."""
        return tuple(
            _label_value(name, raw[position])
            for name, position in zip(self._label_names, self._positions, strict=True)
        )


def _key_function(
    paths: Sequence[tuple[str, str | None]], inner_types: Mapping[str, Any]
) -> Callable[[Any], _RawKey]:
    """Make the function that returns a session's values at `paths`, as a tuple.

    Written out as attribute reads (`session.status`, `(session.metadata or empty).prStatus`)
    and compiled once per parser, as `collections.namedtuple` writes its methods: three times
    faster than `operator.attrgetter` calls (16 ms against 50 ms for 100,000 sessions), the
    largest cost of the loop over every session. The names come from `_LABEL_PATHS`, never
    from input; a struct of Nones stands in for a missing nested object.
    """
    empties = {f"_empty_{field}": inner_types[field]() for field, inner in paths if inner}
    reads = [
        f"session.{field}" if inner is None else f"(session.{field} or _empty_{field}).{inner}"
        for field, inner in paths
    ]
    key: Callable[[Any], _RawKey] = eval(  # noqa: S307 (fixed names, see above)
        f"lambda session: ({', '.join(reads)},)", empties
    )
    return key


class _IdleSelection:
    """The longest idle of the active sessions offered, at most `limit`, in a bounded heap.

    A session is offered only when it is active and idle past the threshold; keeping the
    `limit` longest idle costs O(log limit) per such session, never a sort of them all.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # A min-heap of (-last activity, -arrival, session): its root is the least idle
        # session kept, the first to go; of equally idle ones, the later in the answer goes.
        self._heap: list[tuple[float, int, Any]] = []
        # The root's last activity once the heap is full: a session at least as recent is
        # left out with one comparison.
        self._least_idle: datetime | None = None
        self.offered = 0

    def offer(self, session: Any, last: datetime) -> None:
        """Consider one active session idle past the threshold; one without an id is not."""
        if not session.id or not session.id.strip():
            return
        self.offered += 1
        if self._least_idle is not None and last >= self._least_idle:
            return
        if len(self._heap) < self._limit:
            heapq.heappush(self._heap, (-last.timestamp(), -self.offered, session))
        elif self._limit:
            heapq.heapreplace(self._heap, (-last.timestamp(), -self.offered, session))
        else:
            return
        if len(self._heap) == self._limit:
            root = self._heap[0][2]
            self._least_idle = root.updatedAt or root.createdAt

    def sessions(self) -> tuple[IdleSession, ...]:
        """Return the kept sessions, the longest idle first, named by their cleaned labels."""
        return tuple(
            _idle_session(session, -negative_last)
            for negative_last, _, session in sorted(self._heap, reverse=True)
        )


def _idle_session(session: Any, last_activity: float) -> IdleSession:
    metadata, author = session.metadata, session.author
    return IdleSession(
        session=session.id.strip()[:MAX_LABEL_LENGTH],
        repository=_label_value("repository", metadata.repository if metadata else None),
        model=_label_value("model", session.model),
        author=_label_value("author", author.id if author else None),
        last_activity=last_activity,
    )


def _one_pass(
    grouping: _Grouping, sessions: list[Any], now: datetime, listing: IdleListing
) -> _Pass:
    """Count, window and time every session; raises TypeError on a naive or numeric time.

    The loop over every session does only what every session needs; sessions active now or
    active in the past week (few, in a large organization's long history) are handled after.
    """
    day_ago = now - timedelta(seconds=DAY_SECONDS)
    week_ago = now - timedelta(seconds=WEEK_SECONDS)
    groups: dict[_RawKey, _Group] = {}
    raw_key, new_group = grouping.raw_key, grouping.new_group
    # Parallel lists of the sessions to see again and their groups: no tuple per session,
    # which the cyclic garbage collector would walk (a twentieth of the pass).
    recent: list[Any] = []
    recent_groups: list[_Group] = []
    active: list[Any] = []
    active_groups: list[_Group] = []
    for session in sessions:
        key = raw_key(session)
        group = groups.get(key)
        if group is None:
            group = groups[key] = new_group(key)
        group.count += 1
        group.messages += session.messageCount or 0
        created = session.createdAt
        if created is not None and created > week_ago:  # a future one is in every window
            group.created_week += 1
            if created > day_ago:
                group.created_day += 1
        last = session.updatedAt or created
        if last is None:
            continue
        if last > week_ago:
            recent.append(session)
            recent_groups.append(group)
        elif group.kind == _ACTIVE_KIND:
            active.append(session)
            active_groups.append(group)
    authors_day: set[str] = set()
    authors_week: set[str] = set()
    duration_sum = len(DURATION_BUCKETS) + 1
    for session, group in zip(recent, recent_groups, strict=True):
        author = session.author
        if author is not None and author.id:
            authors_week.add(author.id)
            if (session.updatedAt or session.createdAt) > day_ago:
                authors_day.add(author.id)
        if group.kind == _ACTIVE_KIND:
            active.append(session)
            active_groups.append(group)
        elif group.kind == _FINISHED_KIND:
            created, updated = session.createdAt, session.updatedAt
            if created is not None and updated is not None:
                seconds = max(0.0, (updated - created).total_seconds())
                group.durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
                group.durations[duration_sum] += seconds
    oldest_active: datetime | None = None
    idle_sum = len(IDLE_BUCKETS) + 1
    idle_from = now - timedelta(seconds=listing.after_seconds)
    selection = _IdleSelection(listing.limit)
    for session, group in zip(active, active_groups, strict=True):
        last = session.updatedAt or session.createdAt
        seconds = max(0.0, (now - last).total_seconds())
        group.idle[bisect_left(IDLE_BUCKETS, seconds)] += 1
        group.idle[idle_sum] += seconds
        created = session.createdAt
        if created is not None and (oldest_active is None or created < oldest_active):
            oldest_active = created
        if last <= idle_from:
            selection.offer(session, last)
    listed = selection.sessions()
    return _Pass(
        groups,
        authors_day,
        authors_week,
        oldest_active,
        listed,
        selection.offered - len(listed),
    )


def _histogram(accumulated: list[float]) -> GaugeHistogram:
    return GaugeHistogram(tuple(int(n) for n in accumulated[:-1]), accumulated[-1])


def _newest(moments: Iterable[datetime | None]) -> float | None:
    newest = max(filter(None, moments), default=None)
    return newest.timestamp() if newest is not None else None


def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind, strict=False)  # numbers given as strings are accepted


def _fields_as_raw(name: str, fields: Iterable[str]) -> msgspec.json.Decoder[Any]:
    """Decode an object (or null) into a struct holding each of `fields` undecoded."""
    struct: Any = msgspec.defstruct(
        name, [(field, msgspec.Raw, None) for field in fields], gc=False
    )
    return msgspec.json.Decoder(struct | None)


_TEXT = _decoder(_OPTIONAL_TEXT)
_NUMBER = _decoder(_FINITE | None)
_MESSAGE_COUNT = _decoder(_COUNT | None)
_TIMESTAMP = _decoder(_MOMENT)
_RAW_STATS = _fields_as_raw("RawStats", STATS_FIELDS)


class _Invalid:
    """Reads single values that did not fit, and counts those read as missing by field path."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, path: str) -> None:
        """Count one value read as missing."""
        self.counts[path] = self.counts.get(path, 0) + 1

    def read(self, decoder: msgspec.json.Decoder[Any], raw: msgspec.Raw | None, path: str) -> Any:
        """Return the decoded value, or None (counted unless the field was absent or null)."""
        if raw is None:
            return None
        try:
            return decoder.decode(raw)
        except msgspec.DecodeError:
            self.add(path)
            return None

    def moment(self, value: Any, path: str) -> datetime | None:
        """Return a timestamp as an aware datetime: no zone means UTC; a number is s or ms."""
        if value is None or isinstance(value, datetime):
            moment = value
        else:
            seconds = value / 1000 if value > MILLISECONDS_ABOVE else value
            try:
                moment = datetime.fromtimestamp(seconds, timezone.utc)
            except (OverflowError, OSError, ValueError):
                self.add(path)
                return None
        if moment is None or moment.tzinfo is not None:
            return moment
        return moment.replace(tzinfo=timezone.utc)


class SnapshotParser:
    """Turns List Sessions bodies into snapshots, for one set of session labels."""

    def __init__(self, label_names: Sequence[str], idle_listing: IdleListing | None = None) -> None:
        self.label_names = tuple(label_names)
        self.idle_listing = idle_listing or IdleListing()
        self._nested = _nested_fields(self.label_names)
        self._inner_types: dict[str, Any] = {
            field: _struct(field.title(), ((name, _OPTIONAL_TEXT) for name in inner))
            for field, inner in self._nested.items()
            if inner
        }
        fields: list[tuple[str, Any]] = [
            (field, self._inner_types[field] | None if inner else _OPTIONAL_TEXT)
            for field, inner in self._nested.items()
        ]
        fields += [
            ("createdAt", _MOMENT),
            ("updatedAt", _MOMENT),
            ("messageCount", _COUNT | None),
        ]
        self._session_type: Any = _struct("Session", fields)
        # Not strict: numbers given as strings are accepted.
        self._decoder = msgspec.json.Decoder(
            msgspec.defstruct(
                "Response",
                [("sessions", list[self._session_type]), ("stats", _Stats | None, None)],  # type: ignore[name-defined]
                gc=False,
            ),
            strict=False,
        )
        # For a body some of whose values do not fit: each session on its own.
        self._raw_decoder = msgspec.json.Decoder(
            msgspec.defstruct(
                "RawResponse",
                [("sessions", list[msgspec.Raw]), ("stats", msgspec.Raw, None)],
                gc=False,
            )
        )
        self._session_decoder = _decoder(self._session_type)
        self._raw_session = _fields_as_raw(
            "RawSession", [*self._nested, "createdAt", "updatedAt", "messageCount"]
        )
        self._raw_inner = {
            field: _fields_as_raw(f"Raw{field.title()}", inner)
            for field, inner in self._nested.items()
            if inner
        }
        self._grouping = _Grouping(self.label_names, self._inner_types)
        self._duration_at = kept(self.label_names, DURATION_LABELS)
        self._idle_at = kept(self.label_names, IDLE_LABELS)

    def parse(
        self, body: bytes | bytearray, now: float, discard: list[object] | None = None
    ) -> Snapshot:
        """Read a body and aggregate it as of `now` (Unix time) in one pass.

        Raises `PollError` only when the body cannot be used as a whole. With `discard`, the
        decoded sessions go there instead of being freed here, for the caller to free once
        the snapshot is on its way: freeing 100,000 sessions takes 30 ms.
        """
        invalid = _Invalid()
        try:
            response: Any = self._decoder.decode(body)
        except msgspec.DecodeError:
            sessions, stats = self._read_tolerantly(body, invalid)
        else:
            sessions, stats = response.sessions, response.stats
            del response
        moment = datetime.fromtimestamp(now, timezone.utc)
        try:
            reduced = _one_pass(self._grouping, sessions, moment, self.idle_listing)
        except TypeError:  # naive or numeric timestamps: make them all aware, then again
            sessions = [self._aware(session, invalid) for session in sessions]
            reduced = _one_pass(self._grouping, sessions, moment, self.idle_listing)
        last_created = _newest(map(attrgetter("createdAt"), sessions))
        last_updated = _newest(map(attrgetter("updatedAt"), sessions))
        if discard is not None:
            discard.append(sessions)
        del sessions  # per-session objects are not kept past this point
        return self._snapshot(reduced, stats, last_created, last_updated, invalid)

    def _snapshot(
        self,
        reduced: _Pass,
        stats: Any,
        last_created: float | None,
        last_updated: float | None,
        invalid: _Invalid,
    ) -> Snapshot:
        groups: dict[tuple[str, ...], SessionGroup] = {}
        durations: dict[tuple[str, ...], GaugeHistogram] = {}
        idle: dict[tuple[str, ...], GaugeHistogram] = {}
        for raw, group in reduced.groups.items():
            key = self._grouping.labels(raw)  # raw values may clean to the same label
            counts = SessionGroup(
                group.count, group.messages, group.created_day, group.created_week
            )
            groups[key] = groups.get(key, NO_SESSIONS) + counts
            if group.kind == _FINISHED_KIND:
                _merge(durations, tuple(key[i] for i in self._duration_at), group.durations)
            elif group.kind == _ACTIVE_KIND:
                _merge(idle, tuple(key[i] for i in self._idle_at), group.idle)
        oldest = reduced.oldest_active
        return Snapshot(
            stats=MappingProxyType(_present_stats(stats)),
            label_names=self.label_names,
            sessions=MappingProxyType(groups),
            last_created=last_created,
            last_updated=last_updated,
            durations=MappingProxyType(durations),
            idle=MappingProxyType(idle),
            oldest_active_created=oldest.timestamp() if oldest is not None else None,
            authors_past_day=_distinct(reduced.authors_day),
            authors_past_week=_distinct(reduced.authors_week),
            invalid=MappingProxyType(invalid.counts),
            idle_sessions=reduced.idle_sessions,
            idle_sessions_unlisted=reduced.idle_unlisted,
        )

    def _read_tolerantly(self, body: bytes | bytearray, invalid: _Invalid) -> tuple[list[Any], Any]:
        """Decode session by session; what does not fit is read as missing and counted."""
        try:
            response: Any = self._raw_decoder.decode(body)
        except msgspec.DecodeError as exc:  # not JSON, not an object, no `sessions` array
            raise PollError(Outcome.INVALID_RESPONSE, _describe_invalid(exc)) from None
        sessions = []
        decode = self._session_decoder.decode
        for raw in response.sessions:
            try:
                sessions.append(decode(raw))
            except msgspec.DecodeError:
                session = self._repair(raw, invalid)
                if session is not None:
                    sessions.append(session)
        return sessions, self._stats(response.stats, invalid)

    def _repair(self, raw: msgspec.Raw, invalid: _Invalid) -> Any:
        """Read one session field by field, or None if it is not an object."""
        try:
            fields = self._raw_session.decode(raw)
        except msgspec.DecodeError:
            fields = None
        if fields is None:
            invalid.add("sessions")
            return None
        values: dict[str, Any] = {}
        for field, inner in self._nested.items():
            path = f"sessions.{field}"
            value = getattr(fields, field)
            if not inner:
                values[field] = invalid.read(_TEXT, value, path)
                continue
            nested = invalid.read(self._raw_inner[field], value, path)
            if nested is not None:
                values[field] = self._inner_types[field](
                    **{
                        name: invalid.read(_TEXT, getattr(nested, name), f"{path}.{name}")
                        for name in inner
                    }
                )
        for field in ("createdAt", "updatedAt"):
            moment = invalid.read(_TIMESTAMP, getattr(fields, field), f"sessions.{field}")
            values[field] = invalid.moment(moment, f"sessions.{field}")
        values["messageCount"] = invalid.read(
            _MESSAGE_COUNT, fields.messageCount, "sessions.messageCount"
        )
        return self._session_type(**values)

    def _aware(self, session: Any, invalid: _Invalid) -> Any:
        """Return the session with its timestamps timezone-aware (or missing)."""
        created, updated = session.createdAt, session.updatedAt
        if _is_aware(created) and _is_aware(updated):
            return session
        return msgspec.structs.replace(
            session,
            createdAt=invalid.moment(created, "sessions.createdAt"),
            updatedAt=invalid.moment(updated, "sessions.updatedAt"),
        )

    @staticmethod
    def _stats(raw: msgspec.Raw | None, invalid: _Invalid) -> Any:
        if raw is None:
            return None
        try:
            return _STATS_DECODER.decode(raw)
        except msgspec.DecodeError:
            pass
        fields = invalid.read(_RAW_STATS, raw, "stats")
        if fields is None:
            return None
        return _Stats(
            **{
                field: invalid.read(_NUMBER, getattr(fields, field), f"stats.{field}")
                for field in STATS_FIELDS
            }
        )


def _present_stats(stats: Any) -> dict[str, float]:
    if stats is None:
        return {}
    return {field: value for field in STATS_FIELDS if (value := getattr(stats, field)) is not None}


def _is_aware(moment: Any) -> bool:
    return moment is None or (isinstance(moment, datetime) and moment.tzinfo is not None)


def _merge(
    into: dict[tuple[str, ...], GaugeHistogram], key: tuple[str, ...], accumulated: list[float]
) -> None:
    histogram = _histogram(accumulated)
    known = into.get(key)
    into[key] = histogram if known is None else known + histogram


def _distinct(ids: set[str]) -> int:
    return len({value.strip() for value in ids} - {""})


def parse_snapshot(body: bytes | bytearray, label_names: Sequence[str], now: float) -> Snapshot:
    """Parse one body as of `now`; a poller keeps a `SnapshotParser` instead, built once."""
    return SnapshotParser(label_names).parse(body, now)


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
