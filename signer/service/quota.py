"""Per-identity signing quotas: a token bucket for signatures/s and a cap on concurrent requests.

Each identity has its own bucket, so one client that floods the appliance exhausts only its
own allowance; the others keep theirs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from signer.config import QuotaSettings
from signer.errors import QuotaExceeded


def _nothing() -> None:
    pass


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class Quotas:
    """Admission control for signing requests."""

    def __init__(
        self,
        settings: QuotaSettings,
        on_reject: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = settings.signatures_per_second
        self._burst = float(max(settings.burst, 1)) if self._rate else 0.0
        self._max_concurrent = settings.max_concurrent
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._on_reject = on_reject or (lambda reason: None)
        self._clock = clock

    @contextmanager
    def admit(self, identity: str, signatures: int) -> Iterator[None]:
        """Hold a request slot and take ``signatures`` tokens, or raise QuotaExceeded."""
        release = self.acquire(identity, signatures)
        try:
            yield
        finally:
            release()

    def acquire(self, identity: str, signatures: int) -> Callable[[], None]:
        """Take a request slot and ``signatures`` tokens, or raise QuotaExceeded; call the
        function returned (once) when the request is over."""
        self._take(identity, signatures)
        if not self._max_concurrent:
            return _nothing
        bucket = self._buckets[identity]
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                with self._lock:
                    bucket.in_flight -= 1

        return release

    def _take(self, identity: str, signatures: int) -> None:
        if not self._rate and not self._max_concurrent:
            return
        now = self._clock()
        with self._lock:
            bucket = self._buckets.setdefault(identity, _Bucket(self._burst, now))
            if self._max_concurrent and bucket.in_flight >= self._max_concurrent:
                self._on_reject("concurrency")
                raise QuotaExceeded(
                    f"{identity} already has {bucket.in_flight} requests in flight, the most its"
                    " quota allows; wait for one to finish",
                    retry_after=0.05,
                )
            if self._rate:
                bucket.tokens = min(
                    self._burst, bucket.tokens + (now - bucket.updated) * self._rate
                )
                bucket.updated = now
                if signatures > self._burst:
                    self._on_reject("batch_over_burst")
                    raise QuotaExceeded(
                        f"a batch of {signatures} exceeds the burst of {self._burst:.0f}"
                        f" signatures allowed to {identity}; send smaller batches",
                        retry_after=0.0,
                    )
                if bucket.tokens < signatures:
                    wait = (signatures - bucket.tokens) / self._rate
                    self._on_reject("rate")
                    raise QuotaExceeded(
                        f"{identity} exceeded its signing rate of {self._rate:g} signatures/s;"
                        f" retry in {wait:.2f} s",
                        retry_after=wait,
                    )
                bucket.tokens -= signatures
            if self._max_concurrent:
                bucket.in_flight += 1
