"""Argument parsing shared by every ``signer`` command: the parser class and value types.

Times on the command line are ISO 8601 (``2026-12-01T08:00:00+07:00``, ``...Z``); a time
without an offset means UTC. Digests are SHA-256 values as 64 hex characters.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import NoReturn

from signer.cli_exit import UsageError

ISO_TIME_HELP = "ISO 8601, e.g. 2026-12-01T08:00:00+07:00 or ...Z; without an offset: UTC"
SHA256_HEX_CHARS = 64


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`UsageError`, not a printed exit.

    Subcommand parsers inherit the class, so every usage error of the command tree reaches
    :func:`signer.cli.main` and is reported like any other error (exit code 2).
    """

    def error(self, message: str) -> NoReturn:
        """Raise the usage error instead of printing usage and exiting."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def iso_time(value: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; a naive time is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value[:40]!r} is not an ISO 8601 time such as 2026-12-01T08:00:00+07:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def utc_iso(moment: datetime, timespec: str = "seconds") -> str:
    """``moment`` as ISO 8601 in UTC, the form every command prints."""
    return moment.astimezone(UTC).isoformat(timespec=timespec)


def sha256_hex(value: str) -> bytes:
    """A SHA-256 digest given as 64 hexadecimal characters."""
    try:
        digest = bytes.fromhex(value)
    except ValueError:
        digest = b""
    if len(digest) * 2 != SHA256_HEX_CHARS:
        raise argparse.ArgumentTypeError(
            f"{value[:80]!r} is not a SHA-256 digest ({SHA256_HEX_CHARS} hex characters)"
        )
    return digest


def positive_int(value: str) -> int:
    """An integer >= 1."""
    return _int_at_least(value, 1)


def count(value: str) -> int:
    """An integer >= 0."""
    return _int_at_least(value, 0)


def _int_at_least(value: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not an integer >= {least}")
    return number
