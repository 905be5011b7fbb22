"""Time values of the key logic: timezone-aware UTC datetimes, stored as unix seconds."""

from datetime import UTC, datetime

from signer.errors import SignerError


def require_utc(value: datetime, name: str) -> datetime:
    """Return ``value`` converted to UTC; refuse naive datetimes, whose meaning is a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise SignerError(
            f"time check failed: {name} is a naive datetime; pass a timezone-aware datetime "
            "(for example datetime.now(UTC))"
        )
    return value.astimezone(UTC)


def to_unix(value: datetime) -> int | float:
    """Unix seconds of an aware datetime: an int when it falls on a whole second, else a float."""
    aware = require_utc(value, "time")
    if aware.microsecond == 0:
        return int(aware.timestamp())
    return aware.timestamp()


def from_unix(seconds: int | float) -> datetime:
    """Aware UTC datetime of unix seconds (inverse of :func:`to_unix`, exact to the microsecond)."""
    return datetime.fromtimestamp(seconds, UTC)
