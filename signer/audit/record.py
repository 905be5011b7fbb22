"""The audit record: its fields, its CBOR encoding and its hash.

A record is a canonical CBOR map with these text keys (``v`` is the format version, 1)::

    v, seq, time_ns, event, identity, profile, kid, request_id, digests, signatures?,
    details, prev

``signatures`` is omitted when no signatures are recorded. The record hash is SHA-256 over the
exact stored CBOR bytes; ``prev`` of record ``n`` is the hash of record ``n - 1`` and
:data:`GENESIS_PREV` (32 zero bytes) for record 1. Sequence numbers start at 1, so a log of
``n`` records ends with ``seq == n`` and a checkpoint's size is the sequence number of its head.
"""

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import cbor2

from signer.audit.events import EventType
from signer.sigformat import SHA256_DIGEST_BYTES

FORMAT_VERSION = 1
HASH_BYTES = 32
GENESIS_PREV = bytes(HASH_BYTES)
FIRST_SEQ = 1

_T = TypeVar("_T")

_REQUIRED_KEYS = frozenset(
    {
        "v",
        "seq",
        "time_ns",
        "event",
        "identity",
        "profile",
        "kid",
        "request_id",
        "digests",
        "details",
        "prev",
    }
)
_ALL_KEYS = _REQUIRED_KEYS | {"signatures"}


class RecordDecodeError(ValueError):
    """A payload is not a well-formed audit record; the message says which rule it breaks."""


@dataclass(frozen=True)
class AuditRecord:
    """One audit event as stored in the log."""

    seq: int
    time_ns: int
    event: EventType
    identity: str | None
    profile: str | None
    kid: bytes | None
    request_id: str | None
    digests: tuple[bytes, ...]
    signatures: tuple[bytes, ...] | None
    details: Mapping[str, Any] = field(default_factory=dict)
    prev: bytes = GENESIS_PREV

    def encode(self) -> bytes:
        """Return the canonical CBOR bytes that are stored and hashed."""
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "seq": self.seq,
            "time_ns": self.time_ns,
            "event": self.event.value,
            "identity": self.identity,
            "profile": self.profile,
            "kid": self.kid,
            "request_id": self.request_id,
            "digests": list(self.digests),
            "details": dict(self.details),
            "prev": self.prev,
        }
        if self.signatures is not None:
            body["signatures"] = list(self.signatures)
        return bytes(cbor2.dumps(body, canonical=True))


def record_hash(payload: bytes) -> bytes:
    """Hash of a stored record: SHA-256 over its CBOR bytes."""
    return hashlib.sha256(payload).digest()


def check_record_digests(digests: Sequence[bytes]) -> None:
    """The log's own invariant: a record names only 32-byte SHA-256 digests (the signing path
    refuses other requests long before; this guards the record format itself)."""
    for index, digest in enumerate(digests):
        if not isinstance(digest, bytes) or len(digest) != SHA256_DIGEST_BYTES:
            raise ValueError(
                f"digest {index} must be {SHA256_DIGEST_BYTES} bytes (a SHA-256 hash), "
                f"got {len(digest) if isinstance(digest, bytes) else type(digest).__name__}"
            )


def decode_record(payload: bytes) -> AuditRecord:
    """Parse and validate one stored record; raise :class:`RecordDecodeError` if malformed."""
    stream = io.BytesIO(payload)
    try:
        body = cbor2.CBORDecoder(stream, allow_duplicate_keys=False).decode()
    except (cbor2.CBORError, ValueError, TypeError, RecursionError) as exc:
        raise RecordDecodeError(f"record is not valid CBOR: {exc}") from exc
    if stream.tell() != len(payload):
        raise RecordDecodeError("record has bytes after its CBOR value")
    if not isinstance(body, dict):
        raise RecordDecodeError("record is not a CBOR map")
    keys = set(body)
    if not keys >= _REQUIRED_KEYS or not keys <= _ALL_KEYS:
        raise RecordDecodeError(f"record has unexpected fields: {sorted(map(str, keys))}")
    if body["v"] != FORMAT_VERSION:
        raise RecordDecodeError(f"record format version {body['v']!r} is not supported")
    try:
        event = EventType(body["event"])
    except ValueError as exc:
        raise RecordDecodeError(f"unknown event type {body['event']!r}") from exc
    return AuditRecord(
        seq=_int(body, "seq"),
        time_ns=_int(body, "time_ns"),
        event=event,
        identity=_optional(body, "identity", str),
        profile=_optional(body, "profile", str),
        kid=_optional(body, "kid", bytes),
        request_id=_optional(body, "request_id", str),
        digests=_byte_list(body["digests"], "digests", SHA256_DIGEST_BYTES),
        signatures=(
            _byte_list(body["signatures"], "signatures", None) if "signatures" in body else None
        ),
        details=_details(body["details"]),
        prev=_hash(body["prev"]),
    )


def _int(body: dict[Any, Any], key: str) -> int:
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordDecodeError(f"record field {key!r} must be a non-negative integer")
    return value


def _optional(body: dict[Any, Any], key: str, kind: type[_T]) -> _T | None:
    value = body[key]
    if value is not None and not isinstance(value, kind):
        raise RecordDecodeError(f"record field {key!r} must be {kind.__name__} or null")
    return value


def _byte_list(value: object, key: str, size: int | None) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(isinstance(item, bytes) for item in value):
        raise RecordDecodeError(f"record field {key!r} must be a list of byte strings")
    if size is not None and any(len(item) != size for item in value):
        raise RecordDecodeError(f"record field {key!r} must hold {size}-byte values")
    return tuple(value)


def _details(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise RecordDecodeError("record field 'details' must be a map with text keys")
    return value


def _hash(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise RecordDecodeError(f"record field 'prev' must be {HASH_BYTES} bytes")
    return value
