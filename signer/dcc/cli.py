"""``signer dcc issue`` and ``signer dcc verify``: argparse subcommands for the DCC layer.

:mod:`signer.cli` registers them with :func:`add_subcommands` and runs ``args.func(args)``.
A handler returns an :class:`signer.cli_exit.ExitCode` for what it printed itself and raises
a typed error for anything else. ``issue`` reaches the daemon only through the object
``make_signer(args)`` returns (see :class:`SigningService`); if that object has a ``close()``
method it is called when the command ends. ``verify`` needs no daemon at all.

Each record is signed by the key of its kind's profile (``v`` vaccination, ``t`` test, ``r``
recovery); ``--profile`` only restricts. Records are checked against the eHN value sets
(``--value-sets DIR`` or ``[dcc] value_sets``, national codes from ``[dcc.national_codes]``)
before anything is signed. ``--uvci-out FILE`` appends one JSON line per issued certificate
(``uvci``, ``co``, ``kind``, ``kid``, ``issued_at``): what revocation by UCI needs later.

``verify --revocation FILE`` (repeatable) refuses a certificate whose SIGNATURE, UCI or
COUNTRYCODEUCI hash one of the revocation batches lists, naming the hash type.

``--batch`` runs :func:`signer.dcc.pipeline.issue_batch`: ``--jobs N`` worker processes, each
with a signer made by ``make_signer`` from a copy of the arguments (so ``make_signer`` must be
a module-level function for N > 1), output in input order, a restart continues where the
output file ends, a JSON summary on stdout and progress on stderr when it is a terminal.

Exit codes: OK; REFUSED when some certificate is invalid or revoked (verify) or some record of
a batch was refused (issue); USAGE for a bad record, option or input file; CONFIG for an unusable
value-set folder named in the configuration; the daemon's refusals and unavailability as in
:class:`signer.cli_exit.ExitCode` (a batch the daemon stopped says where, exit 69 or 1);
INTERRUPTED for a batch stopped with Ctrl-C (what was done is written).
"""

import argparse
import datetime as dt
import functools
import json
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol, TextIO

from signer.cli_args import ISO_TIME_HELP, iso_time, positive_int, utc_iso
from signer.cli_exit import ExitCode, Failure, UsageError, bounded, daemon_failure, note, report
from signer.config import Settings, load
from signer.dcc.batch_output import QR_FORMATS, certificate_summary, uvci_line_of
from signer.dcc.batch_resume import BatchFileError
from signer.dcc.batch_worker import DEFAULT_RETRY_SECONDS, MAX_CHUNK_SIZE, BatchOptions
from signer.dcc.errors import DccError, DccRecordError
from signer.dcc.hc1 import hc1_lines
from signer.dcc.issue import (
    DEFAULT_CHUNK_SIZE,
    ChunkSigner,
    IssuingKey,
    PreparedCertificate,
    profile_for,
)
from signer.dcc.issue import prepare_one as _prepare_one
from signer.dcc.pipeline import BatchSummary, issue_batch, terminal
from signer.dcc.qr import write_qr
from signer.dcc.revocation import RevocationList, RevocationListError
from signer.dcc.sigcheck import DEFAULT_SAMPLE_RATE
from signer.dcc.trust import TrustStore
from signer.dcc.value_sets import DccValueSetError, ValueSets
from signer.dcc.verify import verify
from signer.errors import ConfigError


class SigningService(Protocol):
    """What ``issue`` needs from the lead's client: the current key and digest signing."""

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        """Return ``(kid, dsc_der)`` of the key that signs for ``profile`` now."""
        ...

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        """Return one raw 64-byte ``r||s`` signature per digest, in order."""
        ...


MakeSigner = Callable[[argparse.Namespace], SigningService]


def add_subcommands(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]", make_signer: MakeSigner
) -> None:
    """Register ``issue`` and ``verify`` on ``subparsers``; each sets ``func`` in the namespace."""
    issue_parser = subparsers.add_parser(
        "issue",
        help="issue vaccination, test and recovery certificates (HC1 strings, QR codes)",
        description="Sign one record (prints the HC1 string) or a JSONL batch; each record is"
        " signed by the key of its kind (v vaccination, t test, r recovery).",
    )
    issue_parser.add_argument("record", nargs="?", type=Path, help="record JSON file, or -")
    issue_parser.add_argument("--batch", type=Path, help="JSONL file: one record per line")
    issue_parser.add_argument("--out", type=Path, help="JSONL output of --batch")
    issue_parser.add_argument(
        "--profile",
        choices=("vaccination", "test", "recovery"),
        help="refuse records of any other kind (default: each record's kind picks its profile)",
    )
    issue_parser.add_argument("--qr", type=Path, help="write the QR code (.png or .svg)")
    issue_parser.add_argument("--json", action="store_true", help="print a JSON object")
    issue_parser.add_argument(
        "--issuer-country", help="CWT iss and UVCI country (default: the DSC's subject C)"
    )
    issue_parser.add_argument(
        "--validity-days",
        type=positive_int,
        help="QR lifetime in days (default: 365 for vaccinations, 3 for tests; a recovery"
        " certificate expires with its du)",
    )
    issue_parser.add_argument(
        "--value-sets",
        type=Path,
        metavar="DIR",
        help="folder of eHN value-set files (default: [dcc] value_sets, else the shipped copy)",
    )
    issue_parser.add_argument(
        "--uvci-out",
        type=Path,
        metavar="FILE",
        help="append one JSON line (uvci, co, kind, kid, issued_at) per issued certificate",
    )
    issue_parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"--batch: input lines per signing call (at most {MAX_CHUNK_SIZE})",
    )
    issue_parser.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="--batch: processes preparing and encoding certificates (one per client core)",
    )
    issue_parser.add_argument(
        "--verify-sample",
        type=_rate,
        default=DEFAULT_SAMPLE_RATE,
        metavar="RATE",
        help="--batch: share of signatures checked against the DSC besides the first of each"
        f" kid (0 to 1; default {DEFAULT_SAMPLE_RATE}; 1 checks every one)",
    )
    issue_parser.add_argument(
        "--qr-dir",
        type=Path,
        metavar="DIR",
        help="--batch: write each certificate's QR code to DIR/NNNNNN/LLLLLLLLL.png"
        " (L the input line number, N = L // 1000)",
    )
    issue_parser.add_argument(
        "--qr-format", choices=QR_FORMATS, default="png", help="--batch: QR image format"
    )
    issue_parser.add_argument(
        "--retry-seconds",
        type=_seconds,
        default=DEFAULT_RETRY_SECONDS,
        metavar="S",
        help="--batch: how long to retry a daemon that became unavailable before stopping"
        f" (default {DEFAULT_RETRY_SECONDS:.0f})",
    )
    issue_parser.add_argument(
        "--allow-dose-beyond-series",
        action="store_true",
        help="accept dn > sd (eHN booster encodings such as 2/1)",
    )
    issue_parser.set_defaults(func=lambda args: _run_issue(args, make_signer))

    sets_parser = subparsers.add_parser(
        "value-sets",
        help="show the eHN value sets (and versions) records are checked against",
        description="Print one JSON object: value-set name -> valueSetId@valueSetDate, the"
        " folder, and the national codes the configuration adds.",
    )
    sets_parser.add_argument("--config", type=Path, help="signer TOML config ([dcc] table)")
    sets_parser.add_argument("--value-sets", type=Path, metavar="DIR", help="value-set folder")
    sets_parser.set_defaults(func=_run_value_sets)

    verify_parser = subparsers.add_parser(
        "verify",
        help="verify HC1 strings offline",
        description="Verify HC1 strings; prints one JSON object per certificate. Exit status 0 "
        "only when every signature is valid.",
    )
    trust = verify_parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--cert", type=Path, help="trusted DSC (PEM or DER)")
    trust.add_argument(
        "--trust-list",
        type=Path,
        help="trust list: this project's JSON, the DCC Gateway's, or one signed for partners",
    )
    verify_parser.add_argument(
        "--trust-list-signer",
        type=Path,
        metavar="CERT",
        help="the publisher's upload certificate (PEM/DER) a signed trust list must verify with",
    )
    verify_parser.add_argument(
        "--revocation",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="DCC revocation batches (JSON, JSON array or JSON lines, as `signer revocation"
        " build` writes them); a listed certificate is refused. Repeat for several files",
    )
    verify_parser.add_argument(
        "--at",
        type=iso_time,
        metavar="TIME",
        help=f"time for the expiry check (default: now); {ISO_TIME_HELP}",
    )
    verify_parser.add_argument("hc1", nargs="+", help="HC1 strings, or - for one per stdin line")
    verify_parser.set_defaults(func=_run_verify)


def _run_value_sets(args: argparse.Namespace) -> int:
    sets = value_sets_for(args)
    shown = {
        "versions": sets.versions(),
        "folder": str(sets["country-2-codes"].source.parent),
        "national_codes": {
            name: sorted(sets[name].national) for name in sets.versions() if sets[name].national
        },
    }
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return ExitCode.OK


def _run_verify(args: argparse.Namespace) -> int:
    source = args.cert or args.trust_list
    if args.trust_list_signer is not None and args.trust_list is None:
        raise UsageError("--trust-list-signer checks a --trust-list; give one")
    pinned = args.trust_list_signer.read_bytes() if args.trust_list_signer else None
    try:
        store = TrustStore.load(source, pinned)
    except DccError as exc:
        raise UsageError(f"cannot load trust from {source}: {exc}") from exc
    if store.signed is not None:
        when = store.signed.signing_time
        note(
            f"trust list signed by {store.signed.signer_subject}"
            f" at {utc_iso(when) if when else 'an unstated time'}: signature valid"
        )
    for skipped in store.skipped:
        note(f"warning: trust list {skipped}")
    revocations = _revocation_list(args.revocation) if args.revocation else None
    all_valid = True
    for hc1 in _hc1_inputs(args.hc1, sys.stdin):
        result = verify(hc1, store, at=args.at, revocations=revocations)
        all_valid = all_valid and result.signature_valid and not result.revoked
        output = _with_iso_times(result.to_json())
        print(json.dumps(output, ensure_ascii=False, default=str), flush=True)
    return ExitCode.OK if all_valid else ExitCode.REFUSED


def _revocation_list(paths: Sequence[Path]) -> RevocationList:
    """The entries of every ``--revocation`` file (a file that does not parse is USAGE)."""
    revocations = RevocationList()
    for path in paths:
        try:
            revocations.add_document(path.read_text(encoding="utf-8"), str(path))
        except (RevocationListError, UnicodeDecodeError) as exc:
            raise UsageError(f"--revocation {path}: {exc}") from exc
    note(
        f"revocation lists: {len(revocations)} entries in {revocations.batches} batches"
        f" from {len(paths)} file(s)"
    )
    return revocations


def _with_iso_times(claims: dict[str, Any]) -> dict[str, Any]:
    """``claims`` plus ``issued_at``/``expires_at``: its ``iat``/``exp`` as ISO 8601 UTC."""
    out = dict(claims)
    for numeric, readable in (("iat", "issued_at"), ("exp", "expires_at")):
        value = claims.get(numeric)
        out[readable] = (
            utc_iso(dt.datetime.fromtimestamp(value, dt.UTC)) if isinstance(value, int) else None
        )
    return out


def _hc1_inputs(values: Sequence[str], stdin: TextIO) -> Iterator[str]:
    for value in values:
        if value == "-":
            yield from hc1_lines(stdin)
        else:
            yield value


def value_sets_for(args: argparse.Namespace) -> ValueSets:
    """The value sets ``args`` name: ``--value-sets``, else ``[dcc]`` of ``--config``, else the
    shipped copy; national codes come from the configuration."""
    settings, folder, national = _value_set_source(args)
    try:
        return ValueSets.load(folder, national)
    except DccValueSetError as exc:
        if args.value_sets is None and settings is not None:
            raise ConfigError(f"{settings.source}: [dcc] {exc}") from exc
        raise UsageError(str(exc)) from exc


def _value_set_source(
    args: argparse.Namespace,
) -> tuple[Settings | None, Path | None, dict[str, tuple[str, ...]]]:
    settings = load(args.config) if getattr(args, "config", None) else None
    folder = args.value_sets or (settings.dcc.value_sets if settings else None)
    national = settings.dcc.national_codes if settings else {}
    return settings, folder, {name: tuple(codes) for name, codes in national.items()}


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a number from 0 to 1")
    return rate


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a number of seconds >= 0")
    return seconds


class _Issuer:
    """The per-command state of ``issue``: one signing key per profile, options, value sets.

    Signing goes through one :class:`ChunkSigner` per profile, so a key rotation during a
    batch re-prepares the certificates not yet signed for the new key.
    """

    def __init__(self, args: argparse.Namespace, signer: SigningService) -> None:
        self.args = args
        self.signer = signer
        self.value_sets = value_sets_for(args)
        self.iat = dt.datetime.now(dt.UTC)
        self.validity = (
            dt.timedelta(days=args.validity_days) if args.validity_days is not None else None
        )
        self._chunks: dict[str, ChunkSigner] = {}

    def chunks(self, profile: str) -> ChunkSigner:
        """The chunk signer of ``profile``, asking the daemon for its key the first time."""
        if profile not in self._chunks:
            kid, dsc_der = self.signer.signing_key(profile)
            key = IssuingKey.from_dsc(kid, dsc_der, profile=profile)
            if not (self.args.issuer_country or key.country):
                raise UsageError(f"the {profile} DSC has no subject country; pass --issuer-country")
            self._chunks[profile] = ChunkSigner(self.signer, key, profile=profile, verify=True)
        return self._chunks[profile]

    def profile(self, record: Any) -> str:
        """The profile of ``record``'s kind (:class:`DccRecordError` if it does not fit)."""
        return profile_for(record, self.args.profile)

    def prepare(self, record: Any, profile: str) -> PreparedCertificate:
        key = self.chunks(profile).key
        return _prepare_one(
            record,
            key.kid,
            self.args.issuer_country or str(key.country),
            self.iat,
            key.not_after,
            validity=self.validity,
            allow_dose_beyond_series=self.args.allow_dose_beyond_series,
            profile=profile,
            value_sets=self.value_sets,
        )

    def sign(
        self, prepared: Sequence[PreparedCertificate]
    ) -> tuple[list[PreparedCertificate], list[str]]:
        """Sign each certificate with its profile's key; results in the order given."""
        signed: list[PreparedCertificate | None] = [None] * len(prepared)
        hc1s = [""] * len(prepared)
        for profile in dict.fromkeys(cert.profile for cert in prepared):
            chunks = self.chunks(profile)
            indices = [i for i, cert in enumerate(prepared) if cert.profile == profile]
            rotations = chunks.rotations
            certs, strings = chunks.sign([prepared[i] for i in indices])
            if chunks.rotations != rotations:
                note(
                    f"the {profile} signing key changed; now signing with kid"
                    f" {chunks.key.kid.hex()}"
                )
            for i, cert, hc1 in zip(indices, certs, strings, strict=True):
                signed[i], hc1s[i] = cert, hc1
        return [cert for cert in signed if cert is not None], hc1s

    def not_after(self, cert: PreparedCertificate) -> dt.datetime:
        return self.chunks(cert.profile).key.not_after

    def record_uvcis(self, signed: Sequence[PreparedCertificate]) -> None:
        """Append the UVCI lines of ``signed`` to ``--uvci-out``, if given."""
        if self.args.uvci_out is None or not signed:
            return
        with self.args.uvci_out.open("a", encoding="utf-8") as out:
            out.writelines(uvci_line_of(cert) for cert in signed)


def _run_issue(args: argparse.Namespace, make_signer: MakeSigner) -> int:
    if (args.record is None) == (args.batch is None):
        raise UsageError("give either RECORD.json or --batch RECORDS.jsonl")
    if args.batch is not None:
        return _issue_batch(args, make_signer)
    signer = None
    try:
        signer = make_signer(args)
        issuer = _Issuer(args, signer)
        return _issue_one(issuer, args.record)
    finally:
        close = getattr(signer, "close", None)
        if callable(close):
            with suppress(Exception):
                close()


def _read_record(path: Path) -> Any:
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from exc


def _issue_one(issuer: _Issuer, path: Path) -> int:
    record = _read_record(path)
    try:
        profile = issuer.profile(record)
    except DccRecordError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    issuer.chunks(profile)
    try:
        prepared = issuer.prepare(record, profile)
    except DccError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    for text in prepared.notes:
        note(f"warning: {text}")
    (signed,), (hc1,) = issuer.sign([prepared])
    issuer.record_uvcis([signed])
    _warn_clipped(signed, issuer.not_after(signed))
    if issuer.args.qr is not None:
        write_qr(hc1, issuer.args.qr)
    if issuer.args.json:
        print(json.dumps(certificate_summary(signed, hc1), ensure_ascii=False))
    else:
        print(hc1)
    return ExitCode.OK


def _warn_clipped(prepared: PreparedCertificate, not_after: dt.datetime) -> None:
    if prepared.exp_clipped:
        note(
            f"warning: exp clipped to the DSC's notAfter {utc_iso(not_after)}; "
            "the certificate is valid for less than the requested period"
        )


def _issue_batch(args: argparse.Namespace, make_signer: MakeSigner) -> int:
    if args.out is None:
        raise UsageError("--batch needs --out OUT.jsonl")
    if args.qr is not None:
        raise UsageError("--qr writes the QR code of one record; with --batch use --qr-dir DIR")
    if args.chunk_size > MAX_CHUNK_SIZE:
        raise UsageError(f"--chunk-size {args.chunk_size} is more than {MAX_CHUNK_SIZE}")
    value_sets_for(args)  # an unusable folder stops here, before any worker starts
    _, folder, national = _value_set_source(args)
    options = BatchOptions(
        profile=args.profile,
        issuer_country=args.issuer_country,
        validity=dt.timedelta(days=args.validity_days) if args.validity_days else None,
        allow_dose_beyond_series=args.allow_dose_beyond_series,
        chunk_size=args.chunk_size,
        check_rate=args.verify_sample,
        qr_dir=args.qr_dir,
        qr_format=args.qr_format,
        retry_seconds=args.retry_seconds,
        value_sets=folder,
        national_codes=national,
    )
    worker_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    factory = functools.partial(make_signer, worker_args)
    if args.jobs > 1:
        try:
            pickle.dumps(factory)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise UsageError(
                f"--jobs {args.jobs} needs a signer that worker processes can make ({exc});"
                " use --jobs 1"
            ) from exc
    try:
        summary = issue_batch(
            args.batch,
            args.out,
            factory,
            options=options,
            jobs=args.jobs,
            uvci_out=args.uvci_out,
            notify=note,
            progress=terminal(sys.stderr),
        )
    except BatchFileError as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps(summary.to_json(), ensure_ascii=False), flush=True)
    return _batch_outcome(args, summary)


def _batch_outcome(args: argparse.Namespace, summary: BatchSummary) -> int:
    """Tell the operator what the batch did; its exit code."""
    note(
        f"issued {summary.issued} of {summary.lines} records in {summary.seconds:.1f} s"
        f" ({summary.records_per_s:.0f} records/s, jobs {args.jobs})"
    )
    if summary.refused:
        by_field = ", ".join(f"{name}: {count}" for name, count in sorted(summary.refused.items()))
        note(
            f"{summary.refused_total} of {summary.lines} records refused ({by_field});"
            f" see 'error' in {args.out}"
        )
    stop = summary.stop
    if summary.interrupted or stop is not None:
        note(
            f"stopped after line {summary.last_line} of {args.batch}: everything up to it is in"
            f" {args.out}; run the same command again to continue after it"
        )
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    if stop is not None:
        if stop.trace is not None:
            raise RuntimeError(f"batch issuance failed in a worker:\n{stop.trace}")
        if stop.status is not None:
            address = ", ".join(args.target) if getattr(args, "target", None) else None
            return report(daemon_failure(stop.status, stop.message, address))
        if stop.usage:
            return report_code(ExitCode.USAGE, stop.message)
        if stop.config:
            return report_code(ExitCode.CONFIG, stop.message)
        return report_code(ExitCode.REFUSED, stop.message)
    return ExitCode.REFUSED if summary.refused else ExitCode.OK


def report_code(code: ExitCode, message: str) -> int:
    """Print ``message`` as the command's one error line; return ``code``."""
    return report(Failure(code, bounded(message)))
