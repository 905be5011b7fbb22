"""``signer dcc issue`` and ``signer dcc verify``: argparse subcommands for the DCC layer.

:mod:`signer.cli` registers them with :func:`add_subcommands` and runs ``args.func(args)``.
A handler returns an :class:`signer.cli_exit.ExitCode` for what it printed itself and raises
a typed error for anything else. ``issue`` reaches the daemon only through the object
``make_signer(args)`` returns (see :class:`SigningService`); if that object has a ``close()``
method it is called when the command ends. ``verify`` needs no daemon at all.

Exit codes: OK; REFUSED when some certificate is invalid (verify) or some record of a batch
was refused (issue); USAGE for a bad record, option or input file; the daemon's refusals and
unavailability as in :class:`signer.cli_exit.ExitCode`.
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
from signer.dcc.errors import DccError
from signer.dcc.hc1 import hc1_lines
from signer.dcc.issue import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PROFILE,
    ChunkSigner,
    IssuingKey,
    PreparedCertificate,
)
from signer.dcc.issue import prepare_one as _prepare_one
from signer.dcc.qr import write_qr
from signer.dcc.trust import TrustStore
from signer.dcc.verify import verify


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
        help="issue vaccination certificates (HC1 strings, QR codes)",
        description="Sign one vaccination record (prints the HC1 string) or a JSONL batch.",
    )
    issue_parser.add_argument("record", nargs="?", type=Path, help="record JSON file, or -")
    issue_parser.add_argument("--batch", type=Path, help="JSONL file: one record per line")
    issue_parser.add_argument("--out", type=Path, help="JSONL output of --batch")
    issue_parser.add_argument("--profile", default=DEFAULT_PROFILE, help="signing profile")
    issue_parser.add_argument("--qr", type=Path, help="write the QR code (.png or .svg)")
    issue_parser.add_argument("--json", action="store_true", help="print a JSON object")
    issue_parser.add_argument(
        "--issuer-country", help="CWT iss and UVCI country (default: the DSC's subject C)"
    )
    issue_parser.add_argument(
        "--validity-days", type=positive_int, default=365, help="QR lifetime in days"
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

    verify_parser = subparsers.add_parser(
        "verify",
        help="verify HC1 strings offline",
        description="Verify HC1 strings; prints one JSON object per certificate. Exit status 0 "
        "only when every signature is valid.",
    )
    trust = verify_parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--cert", type=Path, help="trusted DSC (PEM or DER)")
    trust.add_argument("--trust-list", type=Path, help="trust-list JSON")
    verify_parser.add_argument(
        "--at",
        type=iso_time,
        metavar="TIME",
        help=f"time for the expiry check (default: now); {ISO_TIME_HELP}",
    )
    verify_parser.add_argument("hc1", nargs="+", help="HC1 strings, or - for one per stdin line")
    verify_parser.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    source = args.cert or args.trust_list
    try:
        store = TrustStore.load(source)
    except DccError as exc:
        raise UsageError(f"cannot load trust from {source}: {exc}") from exc
    for skipped in store.skipped:
        note(f"warning: trust list {skipped}")
    all_valid = True
    for hc1 in _hc1_inputs(args.hc1, sys.stdin):
        result = verify(hc1, store, at=args.at)
        all_valid = all_valid and result.signature_valid
        output = _with_iso_times(result.to_json())
        print(json.dumps(output, ensure_ascii=False, default=str), flush=True)
    return ExitCode.OK if all_valid else ExitCode.REFUSED


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


class _Issuer:
    """The per-command state of ``issue``: key, DSC facts and options.

    Signing goes through :class:`ChunkSigner`, so a key rotation during a batch re-prepares
    the certificates not yet signed for the new key; ``key`` is always the current one.
    """

    def __init__(self, args: argparse.Namespace, signer: SigningService) -> None:
        self.args = args
        kid, dsc_der = signer.signing_key(args.profile)
        key = IssuingKey.from_dsc(kid, dsc_der)
        country = args.issuer_country or key.country
        if not country:
            raise UsageError("the DSC has no subject country; pass --issuer-country")
        self.country: str = country
        self.iat = dt.datetime.now(dt.UTC)
        self.chunks = ChunkSigner(signer, key, profile=args.profile, verify=True)

    @property
    def key(self) -> IssuingKey:
        return self.chunks.key

    def prepare(self, record: Any) -> PreparedCertificate:
        return _prepare_one(
            record,
            self.key.kid,
            self.country,
            self.iat,
            self.key.not_after,
            validity=dt.timedelta(days=self.args.validity_days),
            allow_dose_beyond_series=self.args.allow_dose_beyond_series,
        )

    def sign(
        self, prepared: Sequence[PreparedCertificate]
    ) -> tuple[list[PreparedCertificate], list[str]]:
        rotations = self.chunks.rotations
        signed, hc1s = self.chunks.sign(prepared)
        if self.chunks.rotations != rotations:
            note(f"the signing key changed; now signing with kid {self.key.kid.hex()}")
        return signed, hc1s


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
    try:
        prepared = issuer.prepare(_read_record(path))
    except DccError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    (signed,), (hc1,) = issuer.sign([prepared])
    _warn_clipped(signed, issuer.key.not_after)
    if issuer.args.qr is not None:
        write_qr(hc1, issuer.args.qr)
    if issuer.args.json:
        print(json.dumps(_summary(signed, hc1), ensure_ascii=False))
    else:
        print(hc1)
    return ExitCode.OK


def _summary(prepared: PreparedCertificate, hc1: str) -> dict[str, Any]:
    return _with_iso_times(
        {
            "hc1": hc1,
            "uvci": prepared.uvci,
            "kid": prepared.kid.hex(),
            "iat": prepared.iat,
            "exp": prepared.exp,
            "exp_clipped": prepared.exp_clipped,
        }
    )


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
                    ready.append((number, issuer.prepare(json.loads(line))))
                except (DccError, ValueError) as exc:
                    results[number] = {"line": number, "error": str(exc)}
            signed, hc1s = issuer.sign([cert for _, cert in ready])
            if signed and not clipped_warned and signed[0].exp_clipped:
                _warn_clipped(signed[0], issuer.key.not_after)
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
