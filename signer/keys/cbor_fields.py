"""Strict CBOR encoding of the key records kept on the token (canonical maps, versioned)."""

import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import cbor2

from signer.errors import SignerError
from signer.keys.utc import from_unix, to_unix


class RecordFormatError(SignerError):
    """A stored record does not decode; it is damaged or written by an incompatible version."""


def encode(fields: Mapping[str, Any]) -> bytes:
    """Canonical CBOR (RFC 8949 §4.2.1 core deterministic encoding) of a record map."""
    return bytes(cbor2.dumps(dict(fields), canonical=True))


def optional_time(value: datetime | None) -> int | float | None:
    """Unix seconds of ``value`` (see :func:`signer.keys.utc.to_unix`), ``None`` stays ``None``."""
    return None if value is None else to_unix(value)


class FieldReader:
    """Reads typed fields out of a decoded record map; every mistake is a RecordFormatError."""

    def __init__(self, data: bytes, what: str, version: int | tuple[int, ...]) -> None:
        self._what = what
        stream = io.BytesIO(data)
        try:
            fields = cbor2.CBORDecoder(stream).decode()
        except (cbor2.CBORError, ValueError, TypeError, EOFError, OverflowError) as exc:
            raise self.error(f"it is not CBOR ({exc})") from exc
        if stream.tell() != len(data):
            raise self.error(f"{len(data) - stream.tell()} bytes follow the CBOR item")
        if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
            raise self.error("it is not a CBOR map with text keys")
        self._fields: dict[str, Any] = fields
        self._read: set[str] = set()
        found = self.integer("v")
        readable = (version,) if isinstance(version, int) else version
        if found not in readable:
            raise self.error(
                f"its format version is {found}, this signer reads version"
                f" {' and '.join(map(str, readable))}; "
                "upgrade signer on every appliance that shares the token"
            )
        self.version = found
        """The record's format version (one of those this reader takes)."""

    def error(self, problem: str) -> RecordFormatError:
        """The error for a record that fails a format check."""
        return RecordFormatError(
            f"{self._what} format check failed: {problem}; restore the record from a backup "
            "or re-create it, and check the token for tampering"
        )

    def _get(self, name: str) -> Any:
        if name not in self._fields:
            raise self.error(f"field {name!r} is missing")
        self._read.add(name)
        return self._fields[name]

    def _typed(self, name: str, kind: type | tuple[type, ...], optional: bool) -> Any:
        value = self._get(name)
        if value is None and optional:
            return None
        if isinstance(value, bool) and kind is not bool:
            raise self.error(f"field {name!r} has type bool")
        if not isinstance(value, kind):
            raise self.error(f"field {name!r} has type {type(value).__name__}")
        return value

    def integer(self, name: str) -> int:
        """A required integer field."""
        value: int = self._typed(name, int, optional=False)
        return value

    def text(self, name: str) -> str:
        """A required text field."""
        value: str = self._typed(name, str, optional=False)
        return value

    def boolean(self, name: str) -> bool:
        """A required boolean field."""
        value: bool = self._typed(name, bool, optional=False)
        return value

    def optional_bytes(self, name: str) -> bytes | None:
        """A byte string field that may be null."""
        value: bytes | None = self._typed(name, bytes, optional=True)
        return value

    def to_time(self, name: str, seconds: object) -> datetime:
        """Convert a decoded value to a time (unix seconds), refusing anything else."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise self.error(f"field {name!r} is not a time in unix seconds")
        try:
            return from_unix(seconds)
        except (ValueError, OverflowError, OSError) as exc:
            raise self.error(f"field {name!r} is not a usable time ({exc})") from exc

    def time(self, name: str) -> datetime:
        """A required time field (unix seconds)."""
        return self.to_time(name, self._typed(name, (int, float), optional=False))

    def optional_time(self, name: str) -> datetime | None:
        """A time field (unix seconds) that may be null."""
        value = self._typed(name, (int, float), optional=True)
        return None if value is None else self.to_time(name, value)

    def array(self, name: str) -> list[Any]:
        """A required array field."""
        value: list[Any] = self._typed(name, list, optional=False)
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        """A required map field with text keys."""
        value: dict[str, Any] = self._typed(name, dict, optional=False)
        if not all(isinstance(key, str) for key in value):
            raise self.error(f"field {name!r} has non-text keys")
        return value

    def finish(self) -> None:
        """Refuse fields this version does not know (they would be silently dropped)."""
        unknown = sorted(set(self._fields) - self._read)
        if unknown:
            raise self.error(f"unknown fields {unknown}")
