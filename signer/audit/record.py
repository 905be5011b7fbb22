"""The audit record: its fields, its CBOR encoding and its hash.

A record is a canonical CBOR map with these text keys (``v`` is the format version)::

    v, seq, time_ns, event, identity, profile, kid, request_id, digests, signatures?,
    sig_hashes?, details, prev

Format versions, all readable:

* **1**: ``signatures`` (whole signatures, one per digest) is present only when the daemon
  was configured to keep them; a batch recorded without them cannot be revoked by signature.
* **2** (written now): adds ``sig_hashes``, one byte string holding the 16-byte SIGNATURE
  revocation hash of each signature in digest order (:mod:`signer.audit.sighash`), present
  in every record that was given signatures. ``signatures`` stays optional.

The record hash is SHA-256 over the exact stored CBOR bytes, so records of both versions chain
and verify alike; ``prev`` of record ``n`` is the hash of record ``n - 1`` and
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
from signer.audit.sighash import SIGNATURE_HASH_BYTES, signature_hash, split_hashes
from signer.sigformat import SHA256_DIGEST_BYTES

FORMAT_VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})
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
_OPTIONAL_KEYS = {1: frozenset({"signatures"}), 2: frozenset({"signatures", "sig_hashes"})}


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
    sig_hashes: bytes | None = None
    """SIGNATURE revocation hashes, 16 bytes per digest, concatenated (None before format 2 or
    when the record carries no signatures)."""
    version: int = FORMAT_VERSION
    """Format version the record was stored with; new records are always written as
    :data:`FORMAT_VERSION`."""

    def __post_init__(self) -> None:
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"audit record format version {self.version!r} is not supported")
        if self.version < 2 and self.sig_hashes is not None:
            raise ValueError("format 1 records carry no sig_hashes")

    def revocation_hashes(self) -> list[bytes] | None:
        """One SIGNATURE hash per digest, from ``sig_hashes`` or else computed from whole
        ``signatures`` (format 1); None when the record holds neither."""
        if self.sig_hashes is not None:
            return split_hashes(self.sig_hashes)
        if self.signatures is not None:
            return [signature_hash(signature) for signature in self.signatures]
        return None

    def encode(self) -> bytes:
        """Return the canonical CBOR bytes that are stored and hashed."""
        body: dict[str, Any] = {
            "v": self.version,
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
        if self.sig_hashes is not None:
            body["sig_hashes"] = self.sig_hashes
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
    version = body.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordDecodeError(f"record format version {version!r} is not supported")
    if version not in READABLE_VERSIONS:
        raise RecordDecodeError(f"record format version {version!r} is not supported")
    keys = set(body)
    if not keys >= _REQUIRED_KEYS or not keys <= _REQUIRED_KEYS | _OPTIONAL_KEYS[version]:
        raise RecordDecodeError(f"record has unexpected fields: {sorted(map(str, keys))}")
    try:
        event = EventType(body["event"])
    except ValueError as exc:
        raise RecordDecodeError(f"unknown event type {body['event']!r}") from exc
    digests = _byte_list(body["digests"], "digests", SHA256_DIGEST_BYTES)
    return AuditRecord(
        seq=_int(body, "seq"),
        time_ns=_int(body, "time_ns"),
        event=event,
        identity=_optional(body, "identity", str),
        profile=_optional(body, "profile", str),
        kid=_optional(body, "kid", bytes),
        request_id=_optional(body, "request_id", str),
        digests=digests,
        signatures=(
            _byte_list(body["signatures"], "signatures", None) if "signatures" in body else None
        ),
        details=_details(body["details"]),
        prev=_hash(body["prev"]),
        sig_hashes=_sig_hashes(body["sig_hashes"], len(digests)) if "sig_hashes" in body else None,
        version=version,
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


def _sig_hashes(value: object, count: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != count * SIGNATURE_HASH_BYTES:
        raise RecordDecodeError(
            f"record field 'sig_hashes' must be {SIGNATURE_HASH_BYTES} bytes per digest"
            f" ({count * SIGNATURE_HASH_BYTES} bytes)"
        )
    return value


def _details(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise RecordDecodeError("record field 'details' must be a map with text keys")
    return value


def _hash(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise RecordDecodeError(f"record field 'prev' must be {HASH_BYTES} bytes")
    return value
