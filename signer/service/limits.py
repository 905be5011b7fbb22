"""Caps on the calls and streams callers hold open, per identity and for the whole appliance.

The asyncio server costs no thread per call, but every open call still holds memory and, past
grpc's own ``maximum_concurrent_rpcs``, would make the server refuse everyone (health too). So
each identity may hold at most ``max_calls_per_identity`` calls, of which at most
``max_streams_per_identity`` streams, and the appliance at most ``max_calls`` and
``max_streams``: one identity that opens streams and sends nothing stops only itself. Health
checks are never counted or refused. All of this runs on the event loop, so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from signer.config import LimitSettings
from signer.errors import QuotaExceeded

RETRY_AFTER_SECONDS = 1.0


class LimitExceeded(QuotaExceeded):
    """A call refused (RESOURCE_EXHAUSTED) by one of the ``[limits]``, which it names."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message, RETRY_AFTER_SECONDS)
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.limit, str(self)))


@dataclass
class _Held:
    calls: int = 0
    streams: int = 0


def _nothing() -> None:
    pass


class CallLimits:
    """Admission of calls by the caller's identity; :meth:`admit` returns the release."""

    def __init__(
        self, settings: LimitSettings, on_refusal: Callable[[str], None] = lambda limit: None
    ) -> None:
        self._settings = settings
        self._on_refusal = on_refusal
        self._held: dict[str, _Held] = {}
        self._total = _Held()

    @property
    def calls(self) -> int:
        """Calls open now (all identities)."""
        return self._total.calls

    @property
    def streams(self) -> int:
        """Streams open now (all identities)."""
        return self._total.streams

    def admit(self, identity: str, stream: bool) -> Callable[[], None]:
        """Count a call (a stream when ``stream``) of ``identity``, or raise LimitExceeded;
        call the function returned (once) when the call is over."""
        s = self._settings
        held = self._held.get(identity) or _Held()
        total = self._total
        if held.calls >= s.max_calls_per_identity:
            self._refuse(
                "max_calls_per_identity",
                f"{identity} already has {held.calls} calls open, the most [limits]"
                " max_calls_per_identity allows; wait for one to finish",
            )
        if stream and held.streams >= s.max_streams_per_identity:
            self._refuse(
                "max_streams_per_identity",
                f"{identity} already has {held.streams} streams open, the most [limits]"
                " max_streams_per_identity allows; close idle streams or send on one you have",
            )
        if total.calls >= s.max_calls:
            self._refuse(
                "max_calls",
                f"the appliance has {total.calls} calls open, the most [limits] max_calls"
                " allows; retry shortly",
            )
        if stream and total.streams >= s.max_streams:
            self._refuse(
                "max_streams",
                f"the appliance has {total.streams} streams open, the most [limits] max_streams"
                " allows; retry shortly or use SignBatch",
            )
        self._held[identity] = held
        held.calls += 1
        total.calls += 1
        if stream:
            held.streams += 1
            total.streams += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            held.calls -= 1
            total.calls -= 1
            if stream:
                held.streams -= 1
                total.streams -= 1
            if not held.calls and self._held.get(identity) is held:
                del self._held[identity]

        return release

    def _refuse(self, limit: str, message: str) -> None:
        self._on_refusal(limit)
        raise LimitExceeded(limit, message)

    def idle(self, method: str) -> LimitExceeded:
        """The error that ends a bidirectional stream idle for ``stream_idle_seconds``."""
        self._on_refusal("stream_idle_seconds")
        return LimitExceeded(
            "stream_idle_seconds",
            f"{method} sent no request for {self._settings.stream_idle_seconds:g} s, the"
            " longest [limits] stream_idle_seconds allows; open a new stream when there is work",
        )


UNLIMITED = _nothing
"""The release of a call no limit counts."""
