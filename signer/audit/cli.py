"""``signer audit ...`` subcommands: verify, find, tail.

Exit codes: ``verify`` 0 only for an intact log without findings, 1 for a fault, 2 when it
could not run, 3 when the chain is intact but carries a finding (a ``log_repaired`` record that
cut bytes); ``find`` 0 when the digest was found, 1 when not, 2 on bad input; ``tail`` 0, or 2
on error.
"""

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from signer.audit.query import DigestMatch, find_by_digest, tail
from signer.audit.record import DIGEST_BYTES, AuditRecord
from signer.audit.verify import VerifyReport, verify_log
from signer.errors import AuditError

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_ERROR = 2
EXIT_FINDING = 3


def add_subcommands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``verify``, ``find`` and ``tail`` on ``subparsers``; each sets ``func``."""
    verify = subparsers.add_parser("verify", help="verify the audit log end to end")
    verify.add_argument("--dir", required=True, type=Path, help="audit log directory")
    verify.add_argument(
        "--pubkey", required=True, type=Path, help="audit public key (SPKI DER or PEM)"
    )
    verify.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=Path,
        help="checkpoint file kept outside the log (repeatable); the log must reach it",
    )
    verify.add_argument("--origin", help="log name every checkpoint must carry")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_run_verify)

    find = subparsers.add_parser("find", help="find who signed a digest and when")
    find.add_argument("digest", metavar="DIGEST_HEX", help="SHA-256 digest, 64 hex characters")
    find.add_argument("--dir", required=True, type=Path, help="audit log directory")
    find.add_argument("--json", action="store_true", help="print matches as JSON")
    find.set_defaults(func=_run_find)

    show = subparsers.add_parser("tail", help="show the newest audit records")
    show.add_argument("--dir", required=True, type=Path, help="audit log directory")
    show.add_argument("-n", type=int, default=10, help="number of records (default 10)")
    show.add_argument("--json", action="store_true", help="print records as JSON lines")
    show.set_defaults(func=_run_tail)


def _run_verify(args: argparse.Namespace) -> int:
    try:
        key = args.pubkey.read_bytes()
        report = verify_log(args.dir, key, extra_checkpoints=args.checkpoint, origin=args.origin)
    except (AuditError, OSError) as exc:
        print(f"audit verify could not run: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(_report_json(report)) if args.json else report.message)
    if not report.ok:
        return EXIT_FAULT
    return EXIT_FINDING if report.findings else EXIT_OK


def _run_find(args: argparse.Namespace) -> int:
    try:
        digest = bytes.fromhex(args.digest)
        if len(digest) != DIGEST_BYTES:
            raise ValueError
    except ValueError:
        print(f"digest must be {2 * DIGEST_BYTES} hex characters", file=sys.stderr)
        return EXIT_ERROR
    try:
        matches = find_by_digest(args.dir, digest)
    except (AuditError, OSError) as exc:
        print(f"audit find failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for match in matches:
        print(json.dumps(_match_json(match)) if args.json else _match_line(match))
    if not matches and not args.json:
        print(f"digest {digest.hex()} not found in {args.dir}")
    return EXIT_OK if matches else EXIT_FAULT


def _run_tail(args: argparse.Namespace) -> int:
    try:
        records = tail(args.dir, args.n)
    except (AuditError, OSError) as exc:
        print(f"audit tail failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for record in records:
        print(json.dumps(record_json(record)) if args.json else _record_line(record))
    return EXIT_OK


def record_json(record: AuditRecord) -> dict[str, Any]:
    """A JSON-ready view of a record: bytes as hex, time as ISO 8601 UTC."""
    return {
        "seq": record.seq,
        "time": _iso(record.time_ns),
        "time_ns": record.time_ns,
        "event": record.event.value,
        "identity": record.identity,
        "profile": record.profile,
        "kid": record.kid.hex() if record.kid is not None else None,
        "request_id": record.request_id,
        "digests": [d.hex() for d in record.digests],
        "signatures": (
            [s.hex() for s in record.signatures] if record.signatures is not None else None
        ),
        "details": _jsonable(record.details),
        "prev": record.prev.hex(),
    }


def _report_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "records_checked": report.records_checked,
        "checkpoints_checked": report.checkpoints_checked,
        "fault": report.fault.value if report.fault else None,
        "first_bad_seq": report.first_bad_seq,
        "position": report.position,
        "message": report.message,
        "head": report.head.hex(),
        "findings": [
            {"kind": f.kind.value, "seq": f.seq, "position": f.position, "message": f.message}
            for f in report.findings
        ],
    }


def _match_json(match: DigestMatch) -> dict[str, Any]:
    return {
        "seq": match.seq,
        "time": _iso(match.time_ns),
        "event": match.event,
        "identity": match.identity,
        "profile": match.profile,
        "kid": match.kid.hex() if match.kid is not None else None,
        "request_id": match.request_id,
        "index": match.index,
    }


def _match_line(match: DigestMatch) -> str:
    kid = match.kid.hex() if match.kid is not None else "-"
    return (
        f"seq {match.seq} {_iso(match.time_ns)} {match.event} identity={match.identity} "
        f"profile={match.profile} kid={kid} request={match.request_id} index={match.index}"
    )


def _record_line(record: AuditRecord) -> str:
    kid = record.kid.hex() if record.kid is not None else "-"
    return (
        f"{record.seq} {_iso(record.time_ns)} {record.event.value} identity={record.identity} "
        f"profile={record.profile} kid={kid} request={record.request_id} "
        f"digests={len(record.digests)} details={json.dumps(_jsonable(record.details))}"
    )


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).isoformat(timespec="microseconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
