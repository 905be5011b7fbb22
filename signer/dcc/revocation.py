"""DCC revocation: the three hash types, DCC Gateway revocation batches, and lists to check.

A revocation entry is the first 16 bytes of a SHA-256 hash of one of three kinds
(eu-digital-green-certificates/dgc-gateway, ``RevocationHashTypeDto``):

* ``SIGNATURE``: over the COSE signature; for ES256 over its first half ``r`` only, as the EU
  verifier apps compute it (see :mod:`signer.audit.sighash`, which the audit log uses to keep
  these hashes), for PS256 over the whole signature;
* ``UCI``: over the UTF-8 bytes of the certificate identifier (the ``ci`` field, the UVCI as
  it stands in the certificate, ``URN:UVCI:`` prefix and check character included);
* ``COUNTRYCODEUCI``: over the UTF-8 bytes of a country code followed by the UCI. The EU
  reference verifier and wallet apps (dgca-verifier-app-android, dgca-wallet-app-android)
  take the entry's ``co`` in capitals; the German CWA app takes the CWT issuer (``iss``).
  For a national issuer both are its own country; :func:`certificate_hashes` checks both
  when they differ.

A gateway revocation batch (``RevocationBatchDto``, uploaded as the signed content of
``POST /revocation-list``) is one JSON object: ``country`` (ISO 3166 alpha-2), ``expires``
(when the entries may be dropped: no listed certificate may be valid after it), ``kid``
(base64 of the 8-byte kid, 11 or 12 characters, or ``UNKNOWN_KID``), ``hashType`` and
``entries``: 1 to 1000 objects ``{"hash": base64 of 16 bytes}`` (24 characters). All
entries of a batch share the kid and the hash type. Pure code: no I/O beyond parsing.
"""

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from signer.audit.sighash import SIGNATURE_HASH_BYTES, revocation_hash, signature_hash
from signer.dcc.cose import ALG_ES256, ALG_PS256
from signer.dcc.errors import DccError

MAX_BATCH_ENTRIES = 1000
"""The gateway accepts at most 1000 entries per batch (``@Size(min = 1, max = 1000)``)."""
UNKNOWN_KID = "UNKNOWN_KID"
KID_BYTES = 8
_HASH_B64_CHARS = 24


class HashType(StrEnum):
    """What a revocation hash is computed over."""

    SIGNATURE = "SIGNATURE"
    UCI = "UCI"
    COUNTRYCODEUCI = "COUNTRYCODEUCI"


class RevocationListError(DccError):
    """A revocation batch or list that does not follow the gateway's schema."""


def uci_hash(uci: str) -> bytes:
    """The UCI revocation hash of a certificate identifier."""
    return revocation_hash(uci.encode("utf-8"))


def country_uci_hash(country: str, uci: str) -> bytes:
    """The COUNTRYCODEUCI revocation hash: country code (in capitals) followed by the UCI."""
    return revocation_hash((country.upper() + uci).encode("utf-8"))


def cose_signature_hash(alg: int, signature: bytes) -> bytes:
    """The SIGNATURE revocation hash of a COSE signature made with ``alg`` (ES256 or PS256)."""
    if alg == ALG_ES256:
        return signature_hash(signature)
    if alg == ALG_PS256:
        return revocation_hash(signature)
    raise DccError(f"no SIGNATURE revocation hash is defined for COSE algorithm {alg!r}")


def certificate_hashes(
    alg: int | None, signature: bytes, uci: str | None, countries: Iterable[str | None]
) -> list[tuple[HashType, bytes]]:
    """Every revocation hash a certificate can be listed under (see the module docstring);
    ``countries`` are its entry's ``co`` and its CWT ``iss``."""
    found: list[tuple[HashType, bytes]] = []
    if alg in (ALG_ES256, ALG_PS256):
        # A malformed signature has no SIGNATURE hash; the signature check refuses it anyway.
        with suppress(ValueError):
            found.append((HashType.SIGNATURE, cose_signature_hash(alg, signature)))
    if uci:
        found.append((HashType.UCI, uci_hash(uci)))
        for country in dict.fromkeys(c.upper() for c in countries if c):
            found.append((HashType.COUNTRYCODEUCI, country_uci_hash(country, uci)))
    return found


def kid_text(kid: bytes | None) -> str:
    """The gateway's spelling of a kid: base64, or ``UNKNOWN_KID``."""
    return base64.b64encode(kid).decode("ascii") if kid is not None else UNKNOWN_KID


def iso_utc(moment: dt.datetime) -> str:
    """``moment`` as ISO 8601 in UTC, seconds precision."""
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RevocationBatch:
    """One gateway revocation batch: one country, kid (None: unknown) and hash type."""

    country: str
    expires: dt.datetime
    kid: bytes | None
    hash_type: HashType
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.country) != 2 or not self.country.isascii() or not self.country.isupper():
            raise RevocationListError(f"country {self.country!r} is not an ISO 3166 alpha-2 code")
        if self.expires.tzinfo is None:
            raise RevocationListError("expires needs a time zone")
        if self.kid is not None and len(self.kid) != KID_BYTES:
            raise RevocationListError(f"kid must be {KID_BYTES} bytes, got {len(self.kid)}")
        if not 1 <= len(self.hashes) <= MAX_BATCH_ENTRIES:
            raise RevocationListError(
                f"a batch holds 1 to {MAX_BATCH_ENTRIES} entries, not {len(self.hashes)}"
            )
        if any(len(h) != SIGNATURE_HASH_BYTES for h in self.hashes):
            raise RevocationListError(f"every entry must be a {SIGNATURE_HASH_BYTES}-byte hash")

    def to_json(self) -> dict[str, Any]:
        """The batch exactly as the gateway's ``RevocationBatchDto`` reads it."""
        return {
            "country": self.country,
            "expires": iso_utc(self.expires),
            "kid": kid_text(self.kid),
            "hashType": self.hash_type.value,
            "entries": [{"hash": base64.b64encode(h).decode("ascii")} for h in self.hashes],
        }

    @classmethod
    def from_json(cls, obj: object) -> "RevocationBatch":
        """Parse one batch, checking it against the gateway's schema."""
        if not isinstance(obj, dict):
            raise RevocationListError("a revocation batch is a JSON object")
        missing = {"country", "expires", "kid", "hashType", "entries"} - set(obj)
        if missing:
            raise RevocationListError(f"revocation batch lacks {', '.join(sorted(missing))}")
        try:
            hash_type = HashType(obj["hashType"])
        except ValueError:
            raise RevocationListError(
                f"hashType {obj['hashType']!r} is not one of {', '.join(HashType)}"
            ) from None
        entries = obj["entries"]
        if not isinstance(entries, list):
            raise RevocationListError('entries must be a list of {"hash": base64} objects')
        return cls(
            country=_text(obj["country"], "country"),
            expires=_time(obj["expires"]),
            kid=_kid(obj["kid"]),
            hash_type=hash_type,
            hashes=tuple(_entry(entry, number) for number, entry in enumerate(entries)),
        )


@dataclass
class BatchBuilder:
    """Cuts a stream of entries into batches: one open batch per (kid, hash type), handed out
    as soon as it holds ``max_entries``; :meth:`flush` hands out the rest. Memory holds at
    most ``max_entries`` hashes per open batch, however long the stream.

    ``expires_for(kid)`` gives each batch's ``expires`` (called once per batch).
    """

    country: str
    expires_for: Callable[[bytes | None], dt.datetime]
    max_entries: int = MAX_BATCH_ENTRIES
    _open: dict[tuple[bytes | None, HashType], list[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.max_entries <= MAX_BATCH_ENTRIES:
            raise ValueError(f"max_entries must be 1 to {MAX_BATCH_ENTRIES}")

    def add(self, kid: bytes | None, hash_type: HashType, value: bytes) -> RevocationBatch | None:
        """Add one entry; return the batch it completed, if any."""
        key = (kid, hash_type)
        pending = self._open.setdefault(key, [])
        pending.append(value)
        if len(pending) < self.max_entries:
            return None
        del self._open[key]
        return self._batch(key, pending)

    def flush(self) -> Iterator[RevocationBatch]:
        """The partly filled batches, in the order their first entry arrived."""
        pending, self._open = self._open, {}
        for key, hashes in pending.items():
            yield self._batch(key, hashes)

    def _batch(self, key: tuple[bytes | None, HashType], hashes: list[bytes]) -> RevocationBatch:
        kid, hash_type = key
        return RevocationBatch(self.country, self.expires_for(kid), kid, hash_type, tuple(hashes))


@dataclass(frozen=True)
class Revoked:
    """Why a certificate is refused: the hash type and value found, and where it was listed."""

    hash_type: HashType
    value: bytes
    source: str


class RevocationList:
    """Revocation entries to check certificates against, per hash type and kid.

    An entry listed under a kid applies to certificates with that kid; one listed under
    ``UNKNOWN_KID`` applies to every certificate.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[HashType, bytes | None], dict[bytes, str]] = {}
        self.batches = 0

    def __len__(self) -> int:
        return sum(len(values) for values in self._entries.values())

    def add(self, batch: RevocationBatch, source: str) -> None:
        """Add every entry of ``batch``; ``source`` names where it came from (for messages)."""
        values = self._entries.setdefault((batch.hash_type, batch.kid), {})
        for value in batch.hashes:
            values.setdefault(value, source)
        self.batches += 1

    def add_document(self, text: str, name: str) -> None:
        """Add the batches of one file: a JSON batch, a JSON array of batches, or JSON lines
        (one batch per line, as ``signer revocation build`` writes)."""
        stripped = text.strip()
        if not stripped:
            raise RevocationListError(f"{name} is empty")
        try:
            document = json.loads(stripped)
        except ValueError:
            document = None
        if isinstance(document, dict):
            self._add_json(document, name)
            return
        if isinstance(document, list):
            for number, item in enumerate(document, start=1):
                self._add_json(item, f"{name} batch {number}")
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise RevocationListError(f"{name} line {number}: not JSON ({exc})") from exc
            self._add_json(item, f"{name} line {number}")

    def _add_json(self, obj: object, where: str) -> None:
        try:
            self.add(RevocationBatch.from_json(obj), where)
        except RevocationListError as exc:
            raise RevocationListError(f"{where}: {exc}") from exc

    def find(self, kid: bytes | None, hashes: Iterable[tuple[HashType, bytes]]) -> list[Revoked]:
        """The entries among ``hashes`` that are listed for ``kid`` or for an unknown kid."""
        found = []
        for hash_type, value in hashes:
            for listed_kid in dict.fromkeys((kid, None)):
                source = self._entries.get((hash_type, listed_kid), {}).get(value)
                if source is not None:
                    found.append(Revoked(hash_type, value, source))
                    break
        return found


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RevocationListError(f"{name} must be a string")
    return value


def _time(value: object) -> dt.datetime:
    text = _text(value, "expires")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RevocationListError(f"expires {text[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise RevocationListError(f"expires {text[:40]!r} has no offset")
    return moment


def _kid(value: object) -> bytes | None:
    text = _text(value, "kid")
    if text == UNKNOWN_KID:
        return None
    if len(text) not in (11, 12):
        raise RevocationListError(f"kid {text[:20]!r} is not the base64 of an 8-byte kid")
    try:
        kid = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RevocationListError(f"kid {text[:20]!r} is not base64") from None
    if len(kid) != KID_BYTES:
        raise RevocationListError(f"kid {text[:20]!r} is not the base64 of an 8-byte kid")
    return kid


def _entry(entry: object, number: int) -> bytes:
    value = entry.get("hash") if isinstance(entry, dict) else None
    if not isinstance(value, str) or len(value) != _HASH_B64_CHARS:
        raise RevocationListError(
            f'entry {number} must be {{"hash": base64 of {SIGNATURE_HASH_BYTES} bytes}}'
        )
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RevocationListError(f"entry {number}: hash is not base64") from None
    if len(decoded) != SIGNATURE_HASH_BYTES:
        raise RevocationListError(f"entry {number}: hash is not {SIGNATURE_HASH_BYTES} bytes")
    return decoded
