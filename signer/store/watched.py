"""Whether the record store answers, learned from the calls the daemon makes anyway.

The key refresher reads the store every ``[keys] refresh_seconds`` and every ceremony reads and
writes it, so :class:`WatchedStore` needs no probe of its own to follow the store: each call
that fails with :class:`StoreUnavailable` marks it unreachable, each call that reaches it (a
write conflict reached it too) marks it reachable again. Health reads :attr:`problem` and turns
KeyAdmin NOT_SERVING while the store is away; signing goes on with the last verified snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from signer.errors import StoreConflict, StoreUnavailable
from signer.store.api import RecordKind, RecordStore, StoredRecord

log = logging.getLogger(__name__)


class WatchedStore:
    """A :class:`~signer.store.api.RecordStore` that remembers whether its last call reached
    the store; ``on_change`` is called (from the calling thread) when that flips."""

    def __init__(self, store: RecordStore, on_change: Callable[[], None] | None = None) -> None:
        self.inner = store
        self._on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._problem: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the store was unreachable at its last call, or None when it answered."""
        return self._problem

    def require_reachable(self) -> None:
        """Refuse (:class:`StoreUnavailable`, naming the store) before a change is started
        while the store is known to be away; looks again first, so a store that is back is
        used at once."""
        if self._problem is not None:
            self.load_all(RecordKind.KEY)

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        """See :meth:`signer.store.api.RecordStore.load_all`."""
        with self._watch():
            return self.inner.load_all(kind)

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        """See :meth:`signer.store.api.RecordStore.put`."""
        with self._watch():
            return self.inner.put(kind, name, expected_generation, value)

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        """See :meth:`signer.store.api.RecordStore.delete`."""
        with self._watch():
            self.inner.delete(kind, name, expected_generation)

    def store_id(self) -> str:
        """See :meth:`signer.store.api.RecordStore.store_id`."""
        with self._watch():
            return self.inner.store_id()

    @contextmanager
    def _watch(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as exc:
            self._note(str(exc))
            raise
        except StoreConflict:
            self._note(None)
            raise
        self._note(None)

    def _note(self, problem: str | None) -> None:
        with self._lock:
            changed = (problem is None) != (self._problem is None)
            self._problem = problem
        if not changed:
            return
        if problem is None:
            log.info("record store reachable again: key changes are accepted")
        else:
            log.error(
                "record store unreachable (%s): key changes are refused, signing goes on with"
                " the key records last verified",
                problem,
            )
        self._on_change()
