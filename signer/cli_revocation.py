"""``signer revocation build``: DCC Gateway revocation batches from the audit log or UVCIs.

Two sources, one output format (JSON lines, one gateway ``RevocationBatchDto`` per line, at
most 1000 entries each, one kid and hash type per batch; see :mod:`signer.dcc.revocation`):

* ``--identity ID --since T --until T [--kid KID] --dir AUDIT_DIR --pubkey KEY``: the
  SIGNATURE hash of everything that backend identity had signed in ``[since, until)``, read
  from the audit log (:func:`signer.audit.signed.verified_signatures`). The log is verified
  first and nothing is built from a log with a fault (exit 1). A log whose only findings are
  ``log_repaired`` cuts is used, with a warning per cut: a cut removed, at most, records
  written between the last record kept and the restart, so when that gap overlaps the window
  the batches may miss signatures and the command exits 3 (finding) after writing them;
  otherwise the cut cannot touch the window and the exit code stays 0. Exit 3 also when
  signatures of the window are recorded by digest only (format 1 logs written without
  ``store_signatures``): they cannot be revoked by SIGNATURE; the summary names their records.
* ``--uci-file FILE``: the lines ``signer dcc issue --uvci-out`` wrote (``uvci``, ``co``,
  ``kind``, ``kid``, ``issued_at``), optionally filtered by ``--since/--until`` (on
  ``issued_at``) and ``--kid``, as UCI and COUNTRYCODEUCI batches. COUNTRYCODEUCI uses the
  entry's ``co`` (the EU reference apps); when the batch country differs, an entry for it
  (the CWT issuer, which the German app uses) is added as well.

``expires`` of a batch is when its entries may be dropped, so it must not come before any
listed certificate stops being valid; no certificate outlives its DSC. It is ``--expires``
if given, else the notAfter of the kid's DSC from ``--trust-list`` (``signer keys trust-list``
output), else (audit mode) the notAfter the log recorded when the DSC was imported
(``cert_imported``); a kid with none of these is refused (exit 2) and nothing is written.

The file appears only when the build succeeded and holds at least one batch (written to
``FILE.partial`` and renamed); a window without signatures prints an empty summary, writes no
file and exits 0. The summary (JSON on stdout) gives, per kid, the number of signatures or
certificates, batches, the first and last time and ``expires``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from signer.audit.signed import (
    LogNotVerified,
    SignatureWindow,
    WindowNotes,
    verified_signatures,
)
from signer.cli_args import ISO_TIME_HELP, iso_time, utc_iso
from signer.cli_exit import ExitCode, UsageError, note
from signer.config import load
from signer.dcc.errors import DccError
from signer.dcc.revocation import (
    BatchBuilder,
    HashType,
    RevocationBatch,
    country_uci_hash,
    kid_text,
    uci_hash,
)
from signer.dcc.trust import TrustStore
from signer.errors import AuditError, SignerError

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ALL_TIME = (_EPOCH, dt.datetime(9999, 12, 31, tzinfo=dt.UTC))


class RefusedBuild(SignerError):
    """The audit log does not verify, so no revocation batch is built from it (exit 1)."""


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``build`` on ``subparsers``."""
    build = subparsers.add_parser(
        "build",
        help="DCC Gateway revocation batches: what an identity signed, or from UVCIs",
        description="Write DCC Gateway revocation batches (JSON lines, <= 1000 entries each):"
        " SIGNATURE hashes of everything an identity had signed in a window (from a verified"
        " audit log), or UCI and COUNTRYCODEUCI hashes from a `dcc issue --uvci-out` file."
        " Prints a summary per kid. Exit 0 built (or nothing to revoke, no file), 1 the audit"
        " log does not verify, 2 usage, 3 built but possibly incomplete (see the warnings).",
    )
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--identity", help="backend certificate identity, e.g. CN=issuer")
    source.add_argument(
        "--uci-file", type=Path, metavar="FILE", help="JSON lines written by dcc issue --uvci-out"
    )
    build.add_argument("--since", type=iso_time, metavar="T", help=f"window start; {ISO_TIME_HELP}")
    build.add_argument("--until", type=iso_time, metavar="T", help="window end (exclusive)")
    build.add_argument("--kid", type=_kid, help="only this kid (hex or base64)")
    build.add_argument("--dir", type=Path, metavar="AUDIT_DIR", help="audit log directory (copy)")
    build.add_argument(
        "--pubkey", type=Path, help="audit public key (SPKI DER or PEM) the log must verify with"
    )
    build.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=Path,
        help="checkpoint kept outside the log (repeatable); the log must reach it",
    )
    build.add_argument("--out", type=Path, required=True, help="revocation batches (JSON lines)")
    build.add_argument("--country", help="batch country (default: [keys] country of --config)")
    build.add_argument("--config", type=Path, help="signer TOML config (for the country)")
    build.add_argument(
        "--expires", type=iso_time, metavar="T", help="expires of every batch (default: DSC)"
    )
    build.add_argument(
        "--trust-list", type=Path, metavar="FILE", help="trust list: each kid's DSC notAfter"
    )
    build.set_defaults(func=_run_build)


def _kid(value: str) -> bytes:
    text = value.strip()
    with contextlib.suppress(ValueError):
        if len(text) == 16:
            return bytes.fromhex(text)
    with contextlib.suppress(binascii.Error, ValueError):
        kid = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        if len(kid) == 8:
            return kid
    raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a kid (16 hex or 12 base64 chars)")


@dataclass
class _KidSummary:
    """What was built for one kid."""

    kid: bytes
    entries: int = 0
    batches: dict[str, int] = field(default_factory=dict)
    first_ns: int | None = None
    last_ns: int | None = None
    expires: dt.datetime | None = None
    profiles: set[str] = field(default_factory=set)

    def saw(self, time_ns: int) -> None:
        """Count one entry made at ``time_ns`` (Unix nanoseconds)."""
        self.entries += 1
        if self.first_ns is None or time_ns < self.first_ns:
            self.first_ns = time_ns
        if self.last_ns is None or time_ns > self.last_ns:
            self.last_ns = time_ns

    def to_json(self, counted: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kid": self.kid.hex(),
            "kid_base64": kid_text(self.kid),
            counted: self.entries,
            "batches": self.batches,
            "first": _iso_ns(self.first_ns),
            "last": _iso_ns(self.last_ns),
            "expires": utc_iso(self.expires) if self.expires else None,
        }
        if self.profiles:
            out["profiles"] = sorted(self.profiles)
        return out


def _iso_ns(time_ns: int | None) -> str | None:
    return None if time_ns is None else utc_iso(dt.datetime.fromtimestamp(time_ns / 1e9, dt.UTC))


class _Expiry:
    """``expires`` per kid: ``--expires``, the trust list's DSC, the log's ``cert_imported``."""

    def __init__(self, args: argparse.Namespace, logged: dict[bytes, dt.datetime]) -> None:
        self._fixed: dt.datetime | None = args.expires
        self._logged = logged
        self._listed: dict[bytes, dt.datetime] = {}
        if args.trust_list is not None:
            try:
                store = TrustStore.load(args.trust_list)
            except DccError as exc:
                raise UsageError(f"cannot load trust from {args.trust_list}: {exc}") from exc
            for key in store.keys:
                if key.dsc.not_after is not None:
                    known = self._listed.get(key.kid)
                    self._listed[key.kid] = max(key.dsc.not_after, known or key.dsc.not_after)

    def __call__(self, kid: bytes | None) -> dt.datetime:
        if self._fixed is not None:
            return self._fixed
        found = self._listed.get(kid) if kid is not None else None
        found = found or (self._logged.get(kid) if kid is not None else None)
        if found is None:
            name = kid.hex() if kid is not None else "UNKNOWN_KID"
            raise UsageError(
                f"kid {name}: no DSC notAfter to set the batch's expires from (not in"
                " --trust-list, no cert_imported record in the log); give --trust-list FILE"
                " (`signer keys trust-list`) or --expires T, the DSC's notAfter; nothing written"
            )
        return found


class _BatchFile:
    """Batches written to ``OUT.partial`` as they are made; renamed to ``OUT`` on success."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        self._file: TextIO | None = None
        self.batches = 0

    def write(self, batch: RevocationBatch) -> None:
        if self._file is None:
            self._file = self.partial.open("w", encoding="utf-8")
        self._file.write(json.dumps(batch.to_json(), separators=(",", ":")) + "\n")
        self.batches += 1

    def commit(self) -> Path | None:
        """Make the file durable under its name; None (and no file) when nothing was written."""
        if self._file is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.partial, self.out)
        return self.out

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.partial.unlink(missing_ok=True)


def _run_build(args: argparse.Namespace) -> int:
    country = _country(args)
    since, until = args.since, args.until
    if since is not None and until is not None and since >= until:
        raise UsageError("--until must be after --since (the window is [since, until))")
    output = _BatchFile(args.out)
    try:
        if args.identity is not None:
            code = _build_from_log(args, country, output)
        else:
            code = _build_from_uvcis(args, country, output)
    except BaseException:
        output.discard()
        raise
    return code


def _country(args: argparse.Namespace) -> str:
    country = args.country or (load(args.config).keys.country if args.config else None)
    if country is None:
        raise UsageError("say which country publishes the batches: --country CC or --config FILE")
    if len(country) != 2 or not country.isascii() or not country.isalpha():
        raise UsageError(f"--country {country[:10]!r} is not an ISO 3166 alpha-2 code")
    return country.upper()


def _window_ns(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _build_from_log(args: argparse.Namespace, country: str, output: _BatchFile) -> int:
    if args.since is None or args.until is None or args.dir is None or args.pubkey is None:
        raise UsageError("--identity needs --since, --until, --dir and --pubkey")
    window = SignatureWindow(
        args.identity, _window_ns(args.since), _window_ns(args.until), args.kid
    )
    notes = WindowNotes()
    kids: dict[bytes, _KidSummary] = {}
    builder = BatchBuilder(country, _Expiry(args, notes.dsc_not_after))
    try:
        entries = verified_signatures(
            args.dir,
            args.pubkey.read_bytes(),
            window,
            notes,
            extra_checkpoints=args.checkpoint,
        )
        for entry in entries:
            summary = kids.get(entry.kid) or kids.setdefault(entry.kid, _KidSummary(entry.kid))
            summary.saw(entry.time_ns)
            if entry.profile:
                summary.profiles.add(entry.profile)
            _emit(builder.add(entry.kid, HashType.SIGNATURE, entry.sig_hash), output, kids)
    except LogNotVerified as exc:
        raise RefusedBuild(
            f"refusing to build revocation batches from {args.dir}: {exc}. Verify the copy"
            " with `signer audit verify` and build from an intact one"
        ) from exc
    except AuditError as exc:
        raise UsageError(f"audit log {args.dir}: {exc}") from exc
    for batch in builder.flush():
        _emit(batch, output, kids)
    written = output.commit()
    incomplete = _warn_log(notes, window)
    result = {
        "hash_types": [HashType.SIGNATURE.value],
        "identity": args.identity,
        "since": utc_iso(args.since),
        "until": utc_iso(args.until),
        "kid": args.kid.hex() if args.kid else None,
        "country": country,
        "signatures": sum(k.entries for k in kids.values()),
        "batches": output.batches,
        "out": str(written) if written else None,
        "kids": [k.to_json("signatures") for k in kids.values()],
        "audit_log": _log_json(notes),
        "not_revocable": {"signatures": notes.unhashed, "records": notes.unhashed_seqs},
    }
    print(json.dumps(result, indent=2))
    if written is None:
        note(f"no signatures by {args.identity} in the window; no file written")
    return ExitCode.FINDING if incomplete else ExitCode.OK


def _emit(batch: RevocationBatch | None, output: _BatchFile, kids: dict[bytes, Any]) -> None:
    if batch is None:
        return
    output.write(batch)
    if batch.kid is not None and batch.kid in kids:
        summary = kids[batch.kid]
        summary.expires = batch.expires
        name = batch.hash_type.value
        summary.batches[name] = summary.batches.get(name, 0) + 1


def _warn_log(notes: WindowNotes, window: SignatureWindow) -> bool:
    """Print a warning per finding; True when the batches may be incomplete."""
    incomplete = False
    for gap in notes.repairs:
        overlaps = gap.overlaps(window)
        incomplete = incomplete or overlaps
        start = utc_iso(dt.datetime.fromtimestamp(gap.after_ns / 1e9, dt.UTC))
        end = utc_iso(dt.datetime.fromtimestamp(gap.repaired_ns / 1e9, dt.UTC))
        effect = (
            "it overlaps the window: signatures acknowledged in it may be missing from these"
            " batches; revoke such certificates by UCI (`--uci-file`) as well"
            if overlaps
            else "it does not overlap the window"
        )
        note(
            f"warning: the audit log records a repair (log_repaired, seq {gap.seq}) that may"
            f" have cut records written between {start} and {end}; {effect}"
        )
    if notes.unhashed:
        incomplete = True
        note(
            f"warning: {notes.unhashed} signatures in the window are recorded by digest only"
            f" (audit format 1 without store_signatures; records {notes.unhashed_seqs}) and"
            " cannot be revoked by SIGNATURE hash; revoke them by UCI (`--uci-file`)"
        )
    return incomplete


def _log_json(notes: WindowNotes) -> dict[str, Any]:
    report = notes.report
    if report is None:
        return {}
    return {
        "records_checked": report.records_checked,
        "checkpoints_checked": report.checkpoints_checked,
        "head": report.head.hex(),
        "findings": [
            {"kind": f.kind.value, "seq": f.seq, "position": f.position} for f in report.findings
        ],
    }


@dataclass(frozen=True)
class _IssuedLine:
    uvci: str
    country: str
    kid: bytes
    issued_at: dt.datetime


def _uvci_lines(path: Path) -> Iterator[_IssuedLine]:
    """The lines of a ``--uvci-out`` file (a line that does not parse is a usage error)."""
    with path.open(encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                uvci, country, kid = obj["uvci"], obj["co"], bytes.fromhex(obj["kid"])
                issued_at = iso_time(obj["issued_at"])
                if not (isinstance(uvci, str) and uvci and isinstance(country, str)):
                    raise ValueError("uvci and co must be strings")
                if len(kid) != 8:
                    raise ValueError("kid must be 8 bytes in hex")
            except (ValueError, KeyError, TypeError, argparse.ArgumentTypeError) as exc:
                raise UsageError(
                    f"{path} line {number}: not a `dcc issue --uvci-out` line (uvci, co, kind,"
                    f" kid, issued_at): {exc}"
                ) from exc
            yield _IssuedLine(uvci, country, kid, issued_at)


def _build_from_uvcis(args: argparse.Namespace, country: str, output: _BatchFile) -> int:
    if args.dir is not None or args.pubkey is not None or args.checkpoint:
        raise UsageError("--uci-file reads no audit log; drop --dir, --pubkey and --checkpoint")
    since = args.since or _ALL_TIME[0]
    until = args.until or _ALL_TIME[1]
    kids: dict[bytes, _KidSummary] = {}
    builder = BatchBuilder(country, _Expiry(args, {}))
    for line in _uvci_lines(args.uci_file):
        if not since <= line.issued_at < until or (args.kid and line.kid != args.kid):
            continue
        summary = kids.setdefault(line.kid, _KidSummary(line.kid))
        summary.saw(_window_ns(line.issued_at))
        _emit(builder.add(line.kid, HashType.UCI, uci_hash(line.uvci)), output, kids)
        for code in dict.fromkeys((line.country.upper(), country)):
            value = country_uci_hash(code, line.uvci)
            _emit(builder.add(line.kid, HashType.COUNTRYCODEUCI, value), output, kids)
    for batch in builder.flush():
        _emit(batch, output, kids)
    written = output.commit()
    result = {
        "hash_types": [HashType.UCI.value, HashType.COUNTRYCODEUCI.value],
        "uci_file": str(args.uci_file),
        "since": utc_iso(args.since) if args.since else None,
        "until": utc_iso(args.until) if args.until else None,
        "kid": args.kid.hex() if args.kid else None,
        "country": country,
        "certificates": sum(k.entries for k in kids.values()),
        "batches": output.batches,
        "out": str(written) if written else None,
        "kids": [k.to_json("certificates") for k in kids.values()],
    }
    print(json.dumps(result, indent=2))
    if written is None:
        note(f"no certificates selected from {args.uci_file}; no file written")
    return ExitCode.OK
