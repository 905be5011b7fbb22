"""Which digests a free worker signs next: fair between sizes, coalescing small requests.

Pure bookkeeping, no I/O: :class:`signer.hsm.pool.WorkerPool` puts each caller's digests in a
:class:`SignQueue` as a :class:`SignRequest`, takes jobs of at most ``chunk`` digests from it
whenever a worker has room, and hands each job's signatures back with :meth:`SignRequest.fill`.

* A request of at most ``chunk`` digests is *small* and is signed in one job. With coalescing
  on, small requests for the same key that wait next to each other share a job (one pipe round
  trip, one wake-up) as long as their digests fit in ``chunk``; each keeps its own answer.
* A *large* request is cut into chunks. Large requests are served in arrival order.
* When both kinds wait, jobs alternate between them, so a lone digest waits for at most one
  chunk per worker however many large batches are queued, and large batches still progress
  while small requests keep arriving.

The pool gives an idle worker any job (:meth:`SignQueue.take`), and a busy one only the next
chunk of a large batch, and only while no small request waits
(:meth:`SignQueue.take_chunk`): large batches keep every worker's pipe full, while small
requests gather (and share a job) until a worker is free instead of queueing in its pipe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from signer.sigformat import P256_SIGNATURE_BYTES, SHA256_DIGEST_BYTES

Done = Callable[[bytes | None, BaseException | None], None]
"""Called once per request: ``(packed raw signatures, None)`` or ``(None, error)``."""


@dataclass(eq=False, slots=True)
class SignRequest:
    """One caller's packed digests and where its packed raw signatures go."""

    key_id: str
    digests: bytes
    done: Done
    count: int = 0
    taken: int = 0
    signed: int = 0
    finished: bool = False
    _parts: bytearray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.count = len(self.digests) // SHA256_DIGEST_BYTES

    @property
    def remaining(self) -> int:
        """Digests not handed to a worker yet."""
        return self.count - self.taken

    def fill(self, start: int, signatures: bytes) -> None:
        """Signatures of the digests from index ``start`` on have arrived."""
        if self.finished:
            return
        n = len(signatures) // P256_SIGNATURE_BYTES
        if start == 0 and n == self.count:
            self.finish(signatures)
            return
        if self._parts is None:
            self._parts = bytearray(self.count * P256_SIGNATURE_BYTES)
        offset = start * P256_SIGNATURE_BYTES
        self._parts[offset : offset + len(signatures)] = signatures
        self.signed += n
        if self.signed == self.count:
            self.finish(bytes(self._parts))

    def finish(self, signatures: bytes) -> None:
        """Hand the whole answer to the caller (once)."""
        if not self.finished:
            self.finished = True
            self._parts = None
            self.done(signatures, None)

    def fail(self, error: BaseException) -> None:
        """Refuse the request (once); chunks still queued are dropped."""
        if not self.finished:
            self.finished = True
            self._parts = None
            self.done(None, error)


@dataclass(frozen=True, slots=True)
class Part:
    """A run of one request's digests inside a job."""

    request: SignRequest
    start: int
    end: int


def job_digests(parts: list[Part]) -> bytes:
    """The packed digests a job sends to the worker, in the order of its parts."""
    step = SHA256_DIGEST_BYTES
    if len(parts) == 1:
        part = parts[0]
        whole = part.start == 0 and part.end == part.request.count
        return (
            part.request.digests
            if whole
            else part.request.digests[part.start * step : part.end * step]
        )
    return b"".join(p.request.digests[p.start * step : p.end * step] for p in parts)


def deliver(parts: list[Part], signatures: bytes) -> None:
    """Hand a job's packed signatures to the requests its parts belong to."""
    step = P256_SIGNATURE_BYTES
    offset = 0
    for part in parts:
        size = (part.end - part.start) * step
        part.request.fill(part.start, signatures[offset : offset + size])
        offset += size


class SignQueue:
    """Requests waiting for a worker, in two lanes: small (coalesced) and large (chunked)."""

    def __init__(self, chunk: int, coalesce: bool = True) -> None:
        if chunk < 1:
            raise ValueError("chunk must be at least one digest")
        self.chunk = chunk
        self.coalesce = coalesce
        self._small: deque[SignRequest] = deque()
        self._large: deque[SignRequest] = deque()
        self._large_next = False
        self.waiting_digests = 0
        """Digests not handed to a worker yet (a plain int: safe to read from any thread)."""

    def __bool__(self) -> bool:
        self._drop_finished()
        return bool(self._small or self._large)

    def put(self, request: SignRequest) -> None:
        """Queue a request behind the others of its lane."""
        if request.count == 0:
            request.finish(b"")
            return
        (self._small if request.count <= self.chunk else self._large).append(request)
        self.waiting_digests += request.count

    def take(self) -> list[Part] | None:
        """The next job's parts, or None when nothing waits."""
        self._drop_finished()
        if not self._small and not self._large:
            return None
        large = bool(self._large) and (self._large_next or not self._small)
        self._large_next = not large
        return self._take_large() if large else self._take_small()

    def take_chunk(self) -> list[Part] | None:
        """The next chunk of a large batch for a worker that is still busy, or None (nothing
        large waits, or a small request does: it goes to the next idle worker instead)."""
        self._drop_finished()
        if self._small or not self._large:
            return None
        return self._take_large()

    def _take_large(self) -> list[Part]:
        request = self._large[0]
        start = request.taken
        request.taken = min(request.count, start + self.chunk)
        self.waiting_digests -= request.taken - start
        if request.taken == request.count:
            self._large.popleft()
        return [Part(request, start, request.taken)]

    def _take_small(self) -> list[Part]:
        first = self._small.popleft()
        first.taken = first.count
        self.waiting_digests -= first.count
        parts = [Part(first, 0, first.count)]
        room = self.chunk - first.count
        while self.coalesce and self._small:
            following = self._small[0]
            if following.finished:
                self.waiting_digests -= self._small.popleft().remaining
                continue
            if following.key_id != first.key_id or following.count > room:
                break
            self._small.popleft()
            following.taken = following.count
            self.waiting_digests -= following.count
            parts.append(Part(following, 0, following.count))
            room -= following.count
        return parts

    def _drop_finished(self) -> None:
        for lane in (self._small, self._large):
            while lane and lane[0].finished:
                self.waiting_digests -= lane.popleft().remaining

    def fail_all(self, error: BaseException) -> None:
        """Refuse everything still waiting (the pool is closing)."""
        for lane in (self._small, self._large):
            while lane:
                request = lane.popleft()
                self.waiting_digests -= request.remaining
                request.fail(error)
