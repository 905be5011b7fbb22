"""QR codes for ``HC1:`` strings: alphanumeric mode, error correction Q, as the DCC requires."""

import io
import re
from pathlib import Path
from typing import Any

import segno

from signer.dcc.errors import DccError

# Capacity of a version-40 QR code in alphanumeric mode at error correction level Q.
MAX_ALPHANUMERIC_Q = 2420
_ALPHANUMERIC = re.compile(r"^[0-9A-Z $%*+\-./:]*$")


def check_qr_payload(hc1: str) -> None:
    """Raise :class:`DccError` unless ``hc1`` fits a QR code in alphanumeric mode at level Q."""
    if not _ALPHANUMERIC.match(hc1):
        raise DccError("HC1 string has characters outside the QR alphanumeric set")
    check_qr_length(hc1)


def check_qr_length(hc1: str) -> None:
    """Raise :class:`DccError` unless ``hc1`` is short enough for a QR code at level Q."""
    if len(hc1) > MAX_ALPHANUMERIC_Q:
        raise DccError(
            f"HC1 string is {len(hc1)} characters; a QR code at level Q holds at most "
            f"{MAX_ALPHANUMERIC_Q} (shorten names or fields)"
        )


def make_qr(hc1: str) -> Any:
    """Return a ``segno.QRCode`` for ``hc1`` (alphanumeric mode, level Q, no error boost)."""
    check_qr_payload(hc1)
    return segno.make(hc1, error="q", mode="alphanumeric", boost_error=False)


def qr_png(hc1: str, *, scale: int = 4, border: int = 4) -> bytes:
    """Return the QR code as PNG bytes."""
    buffer = io.BytesIO()
    make_qr(hc1).save(buffer, kind="png", scale=scale, border=border)
    return buffer.getvalue()


def qr_svg(hc1: str, *, scale: int = 4, border: int = 4) -> bytes:
    """Return the QR code as SVG bytes."""
    buffer = io.BytesIO()
    make_qr(hc1).save(buffer, kind="svg", scale=scale, border=border)
    return buffer.getvalue()


def write_qr(hc1: str, path: Path, *, scale: int = 4) -> None:
    """Write the QR code to ``path``: SVG if it ends in ``.svg``, PNG otherwise."""
    data = qr_svg(hc1, scale=scale) if path.suffix.lower() == ".svg" else qr_png(hc1, scale=scale)
    path.write_bytes(data)
