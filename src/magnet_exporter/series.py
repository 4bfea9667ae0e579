"""Series stability and the cardinality guard for the session metrics."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from magnet_exporter.model import MISSING_VALUES, NO_SESSIONS, SessionGroup, Snapshot

OTHER = "other"
"""The label value that stands for every value past the cardinality limit."""

DOCUMENTED_VALUES: Mapping[str, tuple[str, ...]] = {
    "status": ("active", "completed", "failed"),
    "pr_status": ("none", "open", "draft", "merged", "closed"),
}
"""Values that have a series from the first poll on, at 0 when no session has them."""


class SessionSeries:
    """Remembers which session series exist and keeps each label within its value budget.

    Admitted values and exported label combinations are kept for the life of the process, so a
    series never vanishes between polls (it drops to 0) and values never flap in and out of
    `other`.
    """

    def __init__(self, label_names: Sequence[str], max_label_values: int) -> None:
        self.label_names = tuple(label_names)
        self._max = max_label_values
        # The values of the zero series are admitted from the start: they are exported too.
        self._admitted: list[dict[str, None]] = [
            dict.fromkeys(
                (DOCUMENTED_VALUES.get(name) or (MISSING_VALUES[name],))[:max_label_values]
            )
            for name in self.label_names
        ]
        self._overflowing: set[str] = set()
        self._known: dict[tuple[str, ...], None] = dict.fromkeys(itertools.product(*self._admitted))

    def stabilize(self, snapshot: Snapshot) -> tuple[Snapshot, list[str]]:
        """Fold values past the limit into `other` and add every known series at 0.

        Returns the stable snapshot and the labels that started overflowing in this poll.
        """
        before = set(self._overflowing)
        self._admit(snapshot.sessions)
        folded: dict[tuple[str, ...], SessionGroup] = {}
        for key, group in snapshot.sessions.items():
            stable = self._fold(key)
            known = folded.get(stable, SessionGroup(0, 0))
            folded[stable] = SessionGroup(
                known.count + group.count, known.messages + group.messages
            )
        self._known.update(dict.fromkeys(folded))
        sessions = {key: folded.get(key, NO_SESSIONS) for key in self._known}
        stable_snapshot = Snapshot(
            stats=snapshot.stats,
            label_names=snapshot.label_names,
            sessions=MappingProxyType(sessions),
            last_created=snapshot.last_created,
            last_updated=snapshot.last_updated,
        )
        return stable_snapshot, sorted(self._overflowing - before)

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

    def _fold(self, key: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            value if value in admitted else OTHER
            for value, admitted in zip(key, self._admitted, strict=True)
        )
