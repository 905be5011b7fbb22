"""``signer audit ...`` subcommands: verify, find, tail.

Exit codes (:class:`signer.cli_exit.ExitCode`): ``verify`` OK only for an intact log without
findings, REFUSED for a fault, FINDING when the chain is intact but carries a finding (a
``log_repaired`` record that cut bytes); ``find`` OK when the digest was found, REFUSED when
not; any command USAGE when it could not run (bad digest, unreadable key, directory or segment).
"""

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from signer.audit.query import DigestMatch, find_by_digest, tail
from signer.audit.record import AuditRecord
from signer.audit.sighash import split_hashes
from signer.audit.verify import VerifyReport, verify_log
from signer.cli_args import count, sha256_hex, utc_iso
from signer.cli_exit import ExitCode, UsageError
from signer.errors import AuditError


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
    find.add_argument(
        "digest", metavar="DIGEST_HEX", type=sha256_hex, help="SHA-256 digest, 64 hex characters"
    )
    find.add_argument("--dir", required=True, type=Path, help="audit log directory")
    find.add_argument("--json", action="store_true", help="print matches as JSON")
    find.set_defaults(func=_run_find)

    show = subparsers.add_parser("tail", help="show the newest audit records")
    show.add_argument("--dir", required=True, type=Path, help="audit log directory")
    show.add_argument("-n", type=count, default=10, help="number of records (default 10)")
    show.add_argument("--json", action="store_true", help="print records as JSON lines")
    show.set_defaults(func=_run_tail)


@contextmanager
def _could_not_run(command: str) -> Iterator[None]:
    """A damaged segment or unusable key is the auditor's input problem (USAGE), not a fault
    finding; unreadable files raise OSError, which is USAGE too."""
    try:
        yield
    except AuditError as exc:
        raise UsageError(f"audit {command} could not run: {exc}") from exc


def _run_verify(args: argparse.Namespace) -> int:
    with _could_not_run("verify"):
        key = args.pubkey.read_bytes()
        report = verify_log(args.dir, key, extra_checkpoints=args.checkpoint, origin=args.origin)
    print(json.dumps(_report_json(report)) if args.json else report.message)
    if not report.ok:
        return ExitCode.REFUSED
    return ExitCode.FINDING if report.findings else ExitCode.OK


def _run_find(args: argparse.Namespace) -> int:
    with _could_not_run("find"):
        matches = find_by_digest(args.dir, args.digest)
    for match in matches:
        print(json.dumps(_match_json(match)) if args.json else _match_line(match))
    if not matches and not args.json:
        print(f"digest {args.digest.hex()} not found in {args.dir}")
    return ExitCode.OK if matches else ExitCode.REFUSED


def _run_tail(args: argparse.Namespace) -> int:
    with _could_not_run("tail"):
        records = tail(args.dir, args.n)
    for record in records:
        print(json.dumps(record_json(record)) if args.json else _record_line(record))
    return ExitCode.OK


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
        "sig_hashes": (
            [h.hex() for h in split_hashes(record.sig_hashes)]
            if record.sig_hashes is not None
            else None
        ),
        "version": record.version,
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
    return utc_iso(datetime.fromtimestamp(time_ns / 1e9, UTC), "microseconds")


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
