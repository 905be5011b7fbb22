"""The exit codes of the ``signer`` command and how an error becomes one.

Commands raise typed errors (or return a code from :class:`ExitCode` for a finding they
printed themselves); :func:`signer.cli.main` alone turns an error into one bounded line on
stderr, prefixed ``signer: ``, and an exit code. README.md "Exit codes" documents the table.

No gRPC here: ``signer dcc verify`` and ``signer audit`` work without it. A refusal by the
daemon reaches :func:`daemon_failure` as its status name.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from enum import IntEnum

from signer.errors import ConfigError, HsmUnavailable, SignerError, StoreUnavailable

PREFIX = "signer: "
MAX_MESSAGE_CHARS = 500
# The daemon's part of a message, so that the hint after it survives the cut.
_DAEMON_DETAIL_CHARS = 300


class ExitCode(IntEnum):
    """Exit codes of every ``signer`` command (sysexits.h values where one fits)."""

    OK = 0
    # The daemon answered with an error status, a local check refused the operation, or a
    # check found a problem: audit log fault, digest not found, certificate invalid, records
    # of a batch refused.
    REFUSED = 1
    # Bad option or argument, or an input file that cannot be read or parsed.
    USAGE = 2
    # A check passed but found something an operator must look at: `audit verify` on an
    # intact log that records a repair which cut records (log_repaired).
    FINDING = 3
    # EX_UNAVAILABLE: the daemon cannot be reached or answered UNAVAILABLE/DEADLINE_EXCEEDED,
    # or the record store or the HSM cannot be reached (``signer serve`` at start, local tools).
    UNAVAILABLE = 69
    # EX_CONFIG: the configuration file or a file it names is unusable (systemd need not
    # restart a daemon whose configuration is wrong).
    CONFIG = 78
    # 128 + SIGINT: interrupted with Ctrl-C.
    INTERRUPTED = 130


class UsageError(SignerError):
    """A bad option, argument or input file; the command did nothing."""


@dataclass(frozen=True)
class Failure:
    """What the command prints (without the prefix) and the code it exits with."""

    code: ExitCode
    message: str


UNAVAILABLE_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})

LOCAL_ERRORS: tuple[type[BaseException], ...] = (
    SignerError,
    OSError,
    ValueError,
    KeyboardInterrupt,
)
"""Errors a command may raise on bad input or a refusal (gRPC errors aside); anything else
is a bug and keeps its traceback."""


def daemon_failure(status: str, message: str, address: str | None = None) -> Failure:
    """Exit code and message for the daemon's gRPC ``status`` (its name, e.g. ``NOT_FOUND``);
    ``address`` is where the command tried to reach it, if known."""
    if status in UNAVAILABLE_STATUSES:
        where = f" at {address}" if address else ""
        detail = bounded(message, _DAEMON_DETAIL_CHARS)
        return Failure(
            ExitCode.UNAVAILABLE,
            bounded(
                f"the signer daemon{where} is unavailable ({detail}); check that it runs and"
                " accepts this client's certificate (dev: start it with `make serve`)"
            ),
        )
    return Failure(ExitCode.REFUSED, bounded(f"refused by the daemon: {message}"))


def failure(error: BaseException) -> Failure:
    """Exit code and message for one of the :data:`LOCAL_ERRORS`."""
    if isinstance(error, KeyboardInterrupt):
        return Failure(ExitCode.INTERRUPTED, "interrupted")
    if isinstance(error, UsageError):
        return Failure(ExitCode.USAGE, bounded(str(error)))
    if isinstance(error, ConfigError):
        return Failure(ExitCode.CONFIG, bounded(str(error)))
    if isinstance(error, StoreUnavailable | HsmUnavailable):
        # The message names the store's address or what of the HSM is missing; systemd
        # restarts a daemon that exits 69.
        return Failure(ExitCode.UNAVAILABLE, bounded(str(error)))
    if isinstance(error, SignerError):
        return Failure(ExitCode.REFUSED, bounded(str(error)))
    if isinstance(error, OSError):
        return Failure(ExitCode.USAGE, bounded(_os_message(error)))
    return Failure(ExitCode.USAGE, bounded(f"invalid input: {error}"))


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    line = re.sub(r"\s+", " ", text).strip()
    if len(line) <= limit:
        return line
    return line[: limit - 1] + "…"


def report(found: Failure) -> int:
    """Print ``found`` to stderr with the one prefix; return its exit code."""
    print(PREFIX + found.message, file=sys.stderr)
    return int(found.code)


def note(text: str) -> None:
    """Print a warning or note (not an error) to stderr with the same prefix."""
    print(PREFIX + bounded(text), file=sys.stderr)


def _os_message(error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.filename is not None:
        return f"{error.filename}: {reason}"
    return reason
