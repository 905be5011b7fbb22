"""Refused callers in the audit log: one record per identity, reason and window, with a count.

Every authentication or authorisation refusal used to be an fsynced record of its own, so a
caller without a role could grow the log as fast as it could send. Refusals are now tallied in
memory and written when their window (``[limits] refusal_window_seconds``, aligned to the
clock: by default each wall-clock minute) ends, and at shutdown. So refused traffic adds at
most ``MAX_TALLIES + 1`` records per window however fast it comes; the metrics still count
every refusal as it happens. Runs on the event loop: no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_TALLIES = 1000
"""Identity and reason pairs tallied separately per window; the rest share one record."""
OVERFLOW_IDENTITY = "(other identities)"


@dataclass
class _Tally:
    count: int = 0
    methods: set[str] = field(default_factory=set)
    subject: str = ""
    first: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class RefusalRecord:
    """What one audit record of refusals says."""

    identity: str
    reason: str
    window_start: float
    window_seconds: float
    count: int
    methods: tuple[str, ...]
    subject: str = ""
    first: float = 0.0
    last: float = 0.0

    def details(self) -> dict[str, Any]:
        """The record's details (its identity goes into the record's identity field)."""
        details: dict[str, Any] = {
            "reason": self.reason,
            "count": self.count,
            "methods": list(self.methods),
            "window_start": _iso(self.window_start),
            "window_seconds": self.window_seconds,
            "first": _iso(self.first),
            "last": _iso(self.last),
        }
        if self.subject:
            details["subject"] = self.subject
        return details


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")


class RefusalTally:
    """Counts refusals per window; :meth:`due` and :meth:`drain` hand out what to record."""

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.window = window_seconds
        self._clock = clock
        self._windows: dict[int, dict[tuple[str, str], _Tally]] = {}

    def note(self, reason: str, identity: str, method: str, subject: str = "") -> bool:
        """Count one refusal of ``identity`` for ``reason`` on ``method`` (now); True when it is
        the first of its identity and reason in the window."""
        now = self._clock()
        tallies = self._windows.setdefault(math.floor(now / self.window), {})
        key = (identity, reason)
        tally = tallies.get(key)
        if tally is None:
            if len(tallies) >= MAX_TALLIES:
                key, subject = (OVERFLOW_IDENTITY, reason), ""
                tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = _Tally(subject=subject, first=now)
        tally.count += 1
        tally.methods.add(method)
        tally.last = now
        return tally.count == 1

    @property
    def pending(self) -> int:
        """Refusals counted and not yet handed out."""
        return sum(t.count for tallies in self._windows.values() for t in tallies.values())

    def next_boundary(self) -> float:
        """Unix time at which the current window ends."""
        return (math.floor(self._clock() / self.window) + 1) * self.window

    def due(self) -> list[RefusalRecord]:
        """The records of every window that has ended, removed from the tally."""
        current = math.floor(self._clock() / self.window)
        return self._take([w for w in self._windows if w < current])

    def drain(self) -> list[RefusalRecord]:
        """Every record, the current window's too (at shutdown)."""
        return self._take(list(self._windows))

    def _take(self, windows: list[int]) -> list[RefusalRecord]:
        records = []
        for window in sorted(windows):
            for (identity, reason), tally in self._windows.pop(window).items():
                records.append(
                    RefusalRecord(
                        identity,
                        reason,
                        window * self.window,
                        self.window,
                        tally.count,
                        tuple(sorted(tally.methods)),
                        tally.subject,
                        tally.first,
                        tally.last,
                    )
                )
        return records
