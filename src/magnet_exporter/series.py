"""Series stability and the cardinality guard for the session metrics."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Generic, TypeVar

from magnet_exporter.model import (
    DURATION_BUCKETS,
    DURATION_LABELS,
    FINISHED_STATUSES,
    IDLE_BUCKETS,
    IDLE_LABELS,
    MISSING_VALUES,
    NO_SESSIONS,
    GaugeHistogram,
    SessionGroup,
    Snapshot,
    kept,
)

OTHER = "other"
"""The label value that stands for every value past the cardinality limit."""

DOCUMENTED_VALUES: Mapping[str, tuple[str, ...]] = {
    "status": ("active", "completed", "failed"),
    "pr_status": ("none", "open", "draft", "merged", "closed"),
}
"""Values that have a series from the first poll on, at 0 when no session has them."""

_Value = TypeVar("_Value", SessionGroup, GaugeHistogram)


class _Family(Generic[_Value]):
    """The series of one family: those exported once stay, with their zero value."""

    def __init__(
        self, positions: Iterable[int], zero: _Value, first: Iterable[tuple[str, ...]]
    ) -> None:
        self.positions = tuple(positions)
        self.zero: _Value = zero
        self.known: dict[tuple[str, ...], None] = dict.fromkeys(first)


class SessionSeries:
    """Remembers which session series exist and keeps each label within its value budget.

    Admitted values and exported label combinations are kept for the life of the process, so a
    series never vanishes between polls (it drops to 0) and values never flap in and out of
    `other`. The duration and idle histograms, whose labels are some of the session labels,
    fold the same values into `other`. The idle sessions pass through as they are: they are a
    list bounded by its own limit, whose entries come and go, and their names must stay whole.
    """

    def __init__(self, label_names: Sequence[str], max_label_values: int) -> None:
        self.label_names = tuple(label_names)
        self._max = max_label_values
        # The values of the zero series are admitted from the start: they are exported too.
        zero_values = [
            (DOCUMENTED_VALUES.get(name) or (MISSING_VALUES[name],))[:max_label_values]
            for name in self.label_names
        ]
        self._admitted: list[dict[str, None]] = [dict.fromkeys(values) for values in zero_values]
        self._overflowing: set[str] = set()
        self._sessions = _Family(
            range(len(self.label_names)), NO_SESSIONS, itertools.product(*self._admitted)
        )
        self._durations = self._family(
            DURATION_LABELS, GaugeHistogram.empty(DURATION_BUCKETS), zero_values
        )
        self._idle = self._family(IDLE_LABELS, GaugeHistogram.empty(IDLE_BUCKETS), zero_values)

    def _family(
        self, labels: Sequence[str], zero: GaugeHistogram, zero_values: Sequence[Sequence[str]]
    ) -> _Family[GaugeHistogram]:
        positions = kept(self.label_names, labels)
        values = [
            # Only finished sessions have a duration: no series for active ones.
            [v for v in zero_values[i] if v in FINISHED_STATUSES] or list(FINISHED_STATUSES)
            if self.label_names[i] == "status"
            else zero_values[i]
            for i in positions
        ]
        return _Family(positions, zero, itertools.product(*values))

    def stabilize(self, snapshot: Snapshot) -> tuple[Snapshot, list[str]]:
        """Fold values past the limit into `other` and add every known series at 0.

        Returns the stable snapshot and the labels that started overflowing in this poll.
        """
        before = set(self._overflowing)
        self._admit(snapshot.sessions)
        stable_snapshot = dataclasses.replace(
            snapshot,
            sessions=self._stable(self._sessions, snapshot.sessions),
            durations=self._stable(self._durations, snapshot.durations),
            idle=self._stable(self._idle, snapshot.idle),
        )
        return stable_snapshot, sorted(self._overflowing - before)

    def _stable(
        self, family: _Family[_Value], values: Mapping[tuple[str, ...], _Value]
    ) -> Mapping[tuple[str, ...], _Value]:
        admitted = [self._admitted[i] for i in family.positions]
        folded: dict[tuple[str, ...], _Value] = {}
        for key, value in values.items():
            stable = tuple(v if v in a else OTHER for v, a in zip(key, admitted, strict=True))
            known = folded.get(stable)
            folded[stable] = value if known is None else known + value
        family.known.update(dict.fromkeys(folded))
        zero: _Value = family.zero
        return MappingProxyType({key: folded.get(key, zero) for key in family.known})

    def _admit(self, sessions: Mapping[tuple[str, ...], SessionGroup]) -> None:
        """Admit new values while there is room, the most frequent first."""
        for position, name in enumerate(self.label_names):
            admitted = self._admitted[position]
            totals: dict[str, int] = {}
            for key, group in sessions.items():
                totals[key[position]] = totals.get(key[position], 0) + group.count
            for value in sorted(totals, key=lambda v: (-totals[v], v)):
                if value in admitted:
                    continue
                if len(admitted) < self._max:
                    admitted[value] = None
                else:
                    self._overflowing.add(name)
