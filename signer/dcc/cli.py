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

Exit codes: OK; REFUSED when some certificate is invalid or revoked (verify) or some record of
a batch was refused (issue); USAGE for a bad record, option or input file; CONFIG for an unusable
value-set folder named in the configuration; the daemon's refusals and unavailability as in
:class:`signer.cli_exit.ExitCode`.
"""

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

from signer.cli_args import ISO_TIME_HELP, iso_time, positive_int, utc_iso
from signer.cli_exit import ExitCode, UsageError, note
from signer.config import load
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
from signer.dcc.qr import write_qr
from signer.dcc.revocation import RevocationList, RevocationListError
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
        help="digests per signing call",
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
    settings = load(args.config) if getattr(args, "config", None) else None
    folder = args.value_sets or (settings.dcc.value_sets if settings else None)
    national = settings.dcc.national_codes if settings else {}
    try:
        return ValueSets.load(folder, national)
    except DccValueSetError as exc:
        if args.value_sets is None and settings is not None:
            raise ConfigError(f"{settings.source}: [dcc] {exc}") from exc
        raise UsageError(str(exc)) from exc


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
            for cert in signed:
                line = {
                    "uvci": cert.uvci,
                    "co": cert.country,
                    "kind": cert.kind,
                    "kid": cert.kid.hex(),
                    "issued_at": utc_iso(dt.datetime.fromtimestamp(cert.iat, dt.UTC)),
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")


def _run_issue(args: argparse.Namespace, make_signer: MakeSigner) -> int:
    if (args.record is None) == (args.batch is None):
        raise UsageError("give either RECORD.json or --batch RECORDS.jsonl")
    if args.batch is not None and args.out is None:
        raise UsageError("--batch needs --out OUT.jsonl")
    signer = None
    try:
        signer = make_signer(args)
        issuer = _Issuer(args, signer)
        if args.batch is not None:
            return _issue_batch(issuer, args.batch, args.out)
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
        print(json.dumps(_summary(signed, hc1), ensure_ascii=False))
    else:
        print(hc1)
    return ExitCode.OK


def _summary(prepared: PreparedCertificate, hc1: str) -> dict[str, Any]:
    summary = {
        "hc1": hc1,
        "uvci": prepared.uvci,
        "kind": prepared.kind,
        "profile": prepared.profile,
        "co": prepared.country,
        "kid": prepared.kid.hex(),
        "iat": prepared.iat,
        "exp": prepared.exp,
        "exp_clipped": prepared.exp_clipped,
    }
    if prepared.notes:
        summary["notes"] = list(prepared.notes)
    return _with_iso_times(summary)


def _warn_clipped(prepared: PreparedCertificate, not_after: dt.datetime) -> None:
    if prepared.exp_clipped:
        note(
            f"warning: exp clipped to the DSC's notAfter {utc_iso(not_after)}; "
            "the certificate is valid for less than the requested period"
        )


def _issue_batch(issuer: _Issuer, batch: Path, out_path: Path) -> int:
    with batch.open(encoding="utf-8") as counting:
        total = sum(1 for line in counting if line.strip())
    chunk_size = issuer.args.chunk_size
    done = refused = 0
    clipped_warned = False
    with batch.open(encoding="utf-8") as source, out_path.open("w", encoding="utf-8") as out:
        for chunk in _chunks(_numbered_lines(source), chunk_size):
            results: dict[int, dict[str, Any]] = {}
            ready: list[tuple[int, PreparedCertificate]] = []
            for number, line in chunk:
                try:
                    record = json.loads(line)
                    profile = issuer.profile(record)
                except (DccError, ValueError) as exc:
                    results[number] = {"line": number, "error": str(exc)}
                    continue
                issuer.chunks(profile)
                try:
                    ready.append((number, issuer.prepare(record, profile)))
                except (DccError, ValueError) as exc:
                    results[number] = {"line": number, "error": str(exc)}
            signed, hc1s = issuer.sign([cert for _, cert in ready])
            issuer.record_uvcis(signed)
            clipped = [cert for cert in signed if cert.exp_clipped]
            if clipped and not clipped_warned:
                _warn_clipped(clipped[0], issuer.not_after(clipped[0]))
                clipped_warned = True
            for (number, _), cert, hc1 in zip(ready, signed, hc1s, strict=True):
                results[number] = {"line": number, **_summary(cert, hc1)}
            _write_lines(out, [results[number] for number, _ in chunk])
            done += len(chunk)
            refused += len(chunk) - len(ready)
            if total > chunk_size:
                note(f"processed {done}/{total} ({100 * done // total}%)")
    if refused:
        note(f"{refused} of {total} records refused; see 'error' in {out_path}")
        return ExitCode.REFUSED
    return ExitCode.OK


def _numbered_lines(source: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(source, start=1):
        if line.strip():
            yield number, line


def _chunks(items: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_lines(out: IO[str], objects: Sequence[dict[str, Any]]) -> None:
    out.writelines(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
    out.flush()
