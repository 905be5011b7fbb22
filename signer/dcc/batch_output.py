"""What batch issuance writes: one JSON line per input line, UVCI lines, QR file names.

Every line of the output file names the input line it answers, so that the file says by
itself how far a batch got::

    {"line": 7, "line_sha256": "9f2c...", "hc1": "HC1:...", "uvci": "URN:UVCI:01:VN:...#Q",
     "kind": "v", "profile": "vaccination", "co": "VN", "kid": "...", "iat": ..., "exp": ...,
     "exp_clipped": false, "issued_at": "...", "expires_at": "..."}
    {"line": 8, "line_sha256": "0b1d...", "field": "v[0].dn",
     "error": "v[0].dn: dose number must be >= 1"}

``line`` is the 1-based line number in the input file (blank lines count but get no output
line); ``line_sha256`` is the first 16 hex digits of the SHA-256 of that input line without
its line break, so that a restart can tell that the output belongs to this input. An issued
line may also carry ``notes`` (e.g. a truncated name) and ``qr`` (the QR image, relative to
the QR folder). An error line carries ``field``: the record field at fault (``v[0].dn``,
``nam.fn``, ``record``), ``json`` for a line that is not JSON, ``line`` for a line that is not
UTF-8 or too long, ``hc1`` for a certificate too large for a QR code.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from pathlib import PurePath
from typing import Any

from signer.dcc.issue import PreparedCertificate

LINE_SHA256_HEX = 16
_to_json = json.JSONEncoder(ensure_ascii=False).encode
QR_FORMATS = ("png", "svg")
QR_FILES_PER_FOLDER = 1000


def line_sha256(body: bytes) -> str:
    """The ``line_sha256`` of an input line (without its line break)."""
    return hashlib.sha256(body).hexdigest()[:LINE_SHA256_HEX]


@functools.lru_cache(maxsize=1024)
def iso_time(unix: int) -> str:
    """``unix`` as ISO 8601 UTC, the form every command prints (cached: a batch has few)."""
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")


def certificate_summary(cert: PreparedCertificate, hc1: str) -> dict[str, Any]:
    """What ``signer dcc issue --json`` prints and a batch output line holds for a certificate."""
    summary: dict[str, Any] = {
        "hc1": hc1,
        "uvci": cert.uvci,
        "kind": cert.kind,
        "profile": cert.profile,
        "co": cert.country,
        "kid": cert.kid.hex(),
        "iat": cert.iat,
        "exp": cert.exp,
        "exp_clipped": cert.exp_clipped,
    }
    if cert.notes:
        summary["notes"] = list(cert.notes)
    summary["issued_at"] = iso_time(cert.iat)
    summary["expires_at"] = iso_time(cert.exp)
    return summary


def issued_line(
    number: int, sha: str, cert: PreparedCertificate, hc1: str, qr: PurePath | None = None
) -> str:
    """The output line of an issued certificate."""
    record = {"line": number, "line_sha256": sha, **certificate_summary(cert, hc1)}
    if qr is not None:
        record["qr"] = qr.as_posix()
    return _to_json(record) + "\n"


def error_line(number: int, sha: str, field: str, message: str) -> str:
    """The output line of a refused input line."""
    record = {"line": number, "line_sha256": sha, "field": field, "error": message}
    return _to_json(record) + "\n"


def uvci_line(uvci: str, co: str, kind: str, kid_hex: str, issued_at: str) -> str:
    """One line of ``--uvci-out``: what revocation by UCI needs of an issued certificate."""
    entry = {"uvci": uvci, "co": co, "kind": kind, "kid": kid_hex, "issued_at": issued_at}
    return _to_json(entry) + "\n"


def uvci_line_of(cert: PreparedCertificate) -> str:
    """The ``--uvci-out`` line of a signed certificate."""
    return uvci_line(cert.uvci, cert.country, cert.kind, cert.kid.hex(), iso_time(cert.iat))


def uvci_line_of_output(record: dict[str, Any]) -> str:
    """The ``--uvci-out`` line of an issued output line (what a restart re-creates)."""
    return uvci_line(
        record["uvci"], record["co"], record["kind"], record["kid"], record["issued_at"]
    )


def qr_name(number: int, fmt: str = "png") -> PurePath:
    """Where the QR image of input line ``number`` goes, relative to the QR folder.

    ``000012/000012345.png`` for line 12,345: the file name is the line number (nine digits or
    more, so names sort in input order) in a folder per thousand lines, so that no folder
    holds more than :data:`QR_FILES_PER_FOLDER` files however long the batch.
    """
    if fmt not in QR_FORMATS:
        raise ValueError(f"QR format {fmt!r} is not one of {', '.join(QR_FORMATS)}")
    return PurePath(f"{number // QR_FILES_PER_FOLDER:06d}", f"{number:09d}.{fmt}")
