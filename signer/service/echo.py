"""Client-supplied strings as they may appear in an error or a log line: short and escaped.

A caller controls the profile, kid, request id, officer name and its certificate's names. None
of them reaches a status message or a log line whole: each is cut to a short prefix that says
how long it was, and control characters are escaped so that a newline in a common name cannot
write a line of its own. :func:`bounded_message` is the last guard on every status message the
daemon sends, whatever error made it.
"""

from __future__ import annotations

SHOWN_CHARS = 64
"""How much of a client string an error or a log line shows."""
MESSAGE_BYTES = 1000
"""The longest status message, in UTF-8 bytes. gRPC sends the message percent-encoded in a
trailer (up to 3 bytes per byte) and clients accept 8 KiB of metadata by default, so even a
message of escaped or non-ASCII characters stays far below that limit."""
_CUT = " [cut]"


def shown(value: str | bytes, limit: int = SHOWN_CHARS) -> str:
    """``value`` for an error or a log line: quoted, control characters escaped, and when longer
    than ``limit`` characters (bytes: shown as hex) cut to them, followed by its full length."""
    if isinstance(value, bytes):
        text = value[:limit].hex()
        return text if len(value) <= limit else f"{text}... ({len(value)} bytes)"
    text = repr(value[:limit])
    return text if len(value) <= limit else f"{text}... ({len(value)} characters)"


def escaped(text: str) -> str:
    """``text`` with every non-printable character written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def bounded_message(message: str, limit: int = MESSAGE_BYTES) -> str:
    """A status or log message on one line and at most ``limit`` UTF-8 bytes."""
    text = escaped(message)
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    cut = data[: limit - len(_CUT)].decode("utf-8", errors="ignore")
    return cut + _CUT
