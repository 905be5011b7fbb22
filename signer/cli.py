"""``signer``: the daemon, the officer and auditor tools, and the DCC issuance kit.

:func:`main` is the one place where an error becomes a line on stderr and an exit code
(:mod:`signer.cli_exit` holds the table); the commands raise typed errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from signer import __version__, cli_revocation
from signer.audit import cli as audit_cli
from signer.audit import retention
from signer.cli_args import CommandParser, positive_int, sha256_hex
from signer.cli_exit import (
    LOCAL_ERRORS,
    ExitCode,
    Failure,
    UsageError,
    daemon_failure,
    failure,
    note,
    report,
)
from signer.client import audit_cli as audit_client_cli
from signer.client import health_cli, keys_cli
from signer.client.client import DccSigner
from signer.client.connect import add_connection_options, make_client, targets
from signer.client.errors import RequestRefused, from_rpc_error
from signer.config import Settings, load
from signer.dcc import cli as dcc_cli
from signer.logs import configure_logging
from signer.ops import cli as ops_cli

if TYPE_CHECKING:
    from signer.hsm.api import Token

COMMAND_HELP = "the command to run; see its --help"
EXPECTED_ERRORS = (*LOCAL_ERRORS, grpc.RpcError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``signer`` command: run it and return its exit code."""
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parser``, run the chosen command, and turn an expected error into
    one prefixed, bounded line on stderr and its :class:`~signer.cli_exit.ExitCode`.

    :func:`main` runs the real command tree; tests run parts of it built around a software
    signer. Unexpected errors (bugs) keep their traceback.
    """
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except EXPECTED_ERRORS as error:
        return report(_failure(error, args))


def _failure(error: BaseException, args: argparse.Namespace | None) -> Failure:
    if isinstance(error, grpc.RpcError):
        error = from_rpc_error(error)
    if isinstance(error, RequestRefused):
        return daemon_failure(error.code.name, str(error), _address(args))
    return failure(error)


def _address(args: argparse.Namespace | None) -> str | None:
    """The daemon address a command was pointed at, for the message when it is unreachable."""
    if args is None or not hasattr(args, "target"):
        return None
    try:
        return ", ".join(targets(args))
    except EXPECTED_ERRORS:
        return None


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = CommandParser(
        prog="signer",
        description="HSM-backed ES256 signing appliance for EU Digital COVID Certificates.",
        epilog="Dev quick start: `make serve` in one terminal, then "
        "`mkdir -p out && signer dcc issue examples/record-vn.json --config hsm_config/dev.toml"
        " --qr out/qr.png`. "
        "Exit codes: 0 ok, 1 refused, 2 usage, 69 daemon unavailable, 78 configuration, "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"signer {__version__}")
    commands = command_group(parser, "commands")

    serve = commands.add_parser("serve", help="run the signing daemon")
    serve.add_argument("--config", type=Path, required=True, help="signer TOML config")
    serve.set_defaults(func=_serve)

    sign = commands.add_parser("sign", help="sign SHA-256 digests (hex) and print signatures")
    add_connection_options(sign)
    sign.add_argument("--profile", default="vaccination", help="certificate profile to sign for")
    sign.add_argument("--der", action="store_true", help="DER signatures instead of raw r||s")
    sign.add_argument(
        "digests",
        nargs="+",
        type=sha256_hex,
        metavar="DIGEST_HEX",
        help="SHA-256 digests, 64 hex characters each",
    )
    sign.set_defaults(func=_sign)

    ops_cli.add_init(commands)
    config = commands.add_parser("config", help="check a configuration and the files it names")
    ops_cli.add_config_subcommands(command_group(config, "config commands"))

    setup = commands.add_parser("dev-setup", help="create the dev token, keys and certificates")
    setup.add_argument("--config", type=Path, required=True, help="signer TOML config (dev)")
    setup.add_argument(
        "--so-pin-file", type=Path, required=True, help="file holding the token SO PIN"
    )
    setup.set_defaults(func=_dev_setup)

    keys = commands.add_parser("keys", help="key ceremonies for security officers")
    key_commands = command_group(keys, "keys commands")
    keys_cli.add_subcommands(key_commands)
    dev_issue = key_commands.add_parser(
        "dev-issue-cert", help="dev only: the dev CSCA in the HSM signs a key's CSR"
    )
    dev_issue.add_argument("key_id", help="key id, as `signer keys list` shows it")
    dev_issue.add_argument("--config", type=Path, required=True, help="signer TOML config (dev)")
    dev_issue.add_argument("--out", type=Path, required=True, help="DSC output (PEM)")
    dev_issue.add_argument("--days", type=positive_int, default=730, help="DSC validity in days")
    dev_issue.set_defaults(func=_dev_issue_cert)
    _add_publishing(key_commands)

    hsm = commands.add_parser("hsm", help="check a PKCS#11 module before the first ceremony")
    hsm_commands = command_group(hsm, "hsm commands")
    probe = hsm_commands.add_parser(
        "probe",
        help="try every PKCS#11 operation signer needs on the configured token (scratch keys,"
        " removed after); exit 0 only when the module can run signer",
    )
    probe.add_argument("--config", type=Path, required=True, help="signer TOML config")
    probe.set_defaults(func=_hsm_probe)

    health_cli.add_command(commands)

    audit = commands.add_parser(
        "audit", help="verify and query the audit log; fetch checkpoints, mirror it off the box"
    )
    audit_commands = command_group(audit, "audit commands")
    audit_cli.add_subcommands(audit_commands)
    audit_client_cli.add_subcommands(audit_commands)
    retention.add_subcommand(audit_commands)

    revocation = commands.add_parser(
        "revocation", help="DCC revocation batches from the audit log or issued UVCIs (offline)"
    )
    cli_revocation.add_subcommands(command_group(revocation, "revocation commands"))

    dcc = commands.add_parser("dcc", help="issue and verify HC1 certificates and QR codes")
    dcc_commands = command_group(dcc, "dcc commands")
    dcc_cli.add_subcommands(dcc_commands, _dcc_signer)
    for name in ("issue",):
        add_connection_options(dcc_commands.choices[name])
    return parser


def command_group(
    parser: argparse.ArgumentParser, title: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Subcommands of ``parser``; naming none is a usage error that lists them."""
    group = parser.add_subparsers(title=title, metavar="COMMAND", help=COMMAND_HELP)
    parser.set_defaults(func=_needs_command(parser, group))
    return group


def _needs_command(
    parser: argparse.ArgumentParser, group: argparse._SubParsersAction[argparse.ArgumentParser]
) -> Callable[[argparse.Namespace], int]:
    def missing(args: argparse.Namespace) -> int:
        raise UsageError(
            f"{parser.prog} needs a command: {', '.join(group.choices)}"
            f" (see `{parser.prog} --help`)"
        )

    return missing


def _serve(args: argparse.Namespace) -> int:
    from signer.service.server import Daemon

    settings = load(args.config)
    configure_logging(settings.log)
    daemon = Daemon(settings)
    daemon.start()
    stopping = {"done": False}

    def stop(signum: int, frame: Any) -> None:
        if not stopping["done"]:
            stopping["done"] = True
            logging.getLogger("signer").info("signal %d: stopping", signum)
            daemon.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.wait()
    return ExitCode.OK


def _sign(args: argparse.Namespace) -> int:
    with make_client(args, "issuer") as client:
        key = client.signing_key(args.profile)
        for signature in client.sign_digests(args.profile, args.digests, kid=key.kid, der=args.der):
            print(signature.hex())
    return ExitCode.OK


def _dev_setup(args: argparse.Namespace) -> int:
    from signer.dev.setup import dev_setup

    settings = load(args.config)
    configure_logging(settings.log)
    dev_setup(settings, args.so_pin_file)
    return ExitCode.OK


def _dev_issue_cert(args: argparse.Namespace) -> int:
    from signer.dev.setup import issue_dev_certificate
    from signer.keys.pem import certificate_pem

    der = issue_dev_certificate(load(args.config), args.key_id, timedelta(days=args.days))
    args.out.write_bytes(certificate_pem(der))
    note(f"the dev CSCA issued a DSC for key {args.key_id}: {args.out}")
    return ExitCode.OK


def _hsm_probe(args: argparse.Namespace) -> int:
    from signer.errors import HsmError
    from signer.hsm.probe import probe
    from signer.hsm.probe_report import render

    settings = load(args.config)
    configure_logging(settings.log)
    report = probe(settings.hsm)
    print(render(report), end="", flush=True)
    if not report.can_run_signer:
        raise HsmError(
            f"the PKCS#11 module {report.module} cannot run signer: it lacks"
            f" {', '.join(report.missing)} (see the table above)"
        )
    return ExitCode.OK


def _add_publishing(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``signer keys upload-key|export-csca|publish-dsc|sign-trust-list``: run on the host of
    the HSM with ``--config`` (they use the token directly, like ``dev-issue-cert``)."""
    upload = commands.add_parser(
        "upload-key",
        help="create (if missing) the upload key (NB_UP) in the HSM and write its certificate",
    )
    upload.add_argument("--config", type=Path, required=True, help="signer TOML config")
    upload.add_argument("--out", type=Path, required=True, help="upload certificate (PEM)")
    upload.add_argument(
        "--days", type=positive_int, default=730, help="validity of a new certificate in days"
    )
    upload.set_defaults(func=_upload_key)

    csca = commands.add_parser("export-csca", help="write the national CSCA certificate")
    csca.add_argument("--config", type=Path, required=True, help="signer TOML config")
    csca.add_argument("--out", type=Path, required=True, help="CSCA certificate (PEM)")
    csca.add_argument("--der", type=Path, help="also write it as DER here")
    csca.set_defaults(func=_export_csca)

    publish = commands.add_parser(
        "publish-dsc",
        help="DCC Gateway upload and revocation packages of a key's DSC (CMS, upload key)",
    )
    publish.add_argument("key_id", help="key id, as `signer keys list` shows it")
    publish.add_argument("--config", type=Path, required=True, help="signer TOML config")
    publish.add_argument("--out-dir", type=Path, required=True, help="folder for the packages")
    publish.set_defaults(func=_publish_dsc)

    sign_list = commands.add_parser(
        "sign-trust-list", help="sign a trust list (from `signer keys trust-list`) for partners"
    )
    sign_list.add_argument("trust_list", type=Path, help="trust-list JSON to sign")
    sign_list.add_argument("--config", type=Path, required=True, help="signer TOML config")
    sign_list.add_argument("--out", type=Path, required=True, help="signed trust list (CMS)")
    sign_list.set_defaults(func=_sign_trust_list)


def _on_token(settings: Settings, run: Callable[[Token], int]) -> int:
    from signer.hsm.pooled import pooled_token

    for name, value in settings.hsm.environment().items():
        os.environ[name] = value
    with pooled_token(settings.hsm, count=1) as token:
        return run(token)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def _upload_key(args: argparse.Namespace) -> int:
    from signer.keys.pem import certificate_pem
    from signer.keys.publish import ensure_upload_key

    settings = load(args.config)

    def run(token: Token) -> int:
        key = ensure_upload_key(
            token,
            settings.hsm.upload_key_label,
            settings.keys.country,
            datetime.now(UTC),
            timedelta(days=args.days),
        )
        args.out.write_bytes(certificate_pem(key.certificate_der))
        _print_json(
            {
                "key_id": key.key_id,
                "label": settings.hsm.upload_key_label,
                "created": key.created,
                "certificate": str(args.out),
                "sha256_thumbprint": key.thumbprint,
            }
        )
        return ExitCode.OK

    return _on_token(settings, run)


def _export_csca(args: argparse.Namespace) -> int:
    from signer.keys.publish import csca_certificate

    settings = load(args.config)
    exported = csca_certificate(settings.keys.csca_cert)
    args.out.write_bytes(exported.pem)
    if args.der is not None:
        args.der.write_bytes(exported.der)
    _print_json({**exported.summary(), "out": str(args.out)})
    return ExitCode.OK


def _publish_dsc(args: argparse.Namespace) -> int:
    from signer.keys.pem import certificate_pem
    from signer.keys.publish import dsc_packages, upload_key

    settings = load(args.config)

    def run(token: Token) -> int:
        uploader = upload_key(token, settings.hsm.upload_key_label)
        packages = dsc_packages(token, args.key_id, uploader, datetime.now(UTC))
        kid = hashlib.sha256(packages.dsc_der).digest()[:8].hex()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "dsc": args.out_dir / f"dsc-{kid}.der",
            "upload": args.out_dir / f"upload-{kid}.cms",
            "revocation": args.out_dir / f"revoke-{kid}.cms",
            "upload_certificate": args.out_dir / "upload-cert.pem",
        }
        files["dsc"].write_bytes(packages.dsc_der)
        files["upload"].write_bytes(packages.upload)
        files["revocation"].write_bytes(packages.revocation)
        files["upload_certificate"].write_bytes(certificate_pem(uploader.certificate_der))
        _print_json(
            {
                "key_id": args.key_id,
                "kid": kid,
                "files": {name: str(path) for name, path in files.items()},
                "gateway": {
                    "upload": "POST /signerCertificate, body: base64 of the upload package",
                    "revocation": "DELETE /signerCertificate, body: base64 of the revocation"
                    " package",
                },
                "upload_certificate_sha256": uploader.thumbprint,
            }
        )
        return ExitCode.OK

    return _on_token(settings, run)


def _sign_trust_list(args: argparse.Namespace) -> int:
    from signer.dcc.errors import DccError
    from signer.dcc.trust import FORMAT_NAME, TrustStore
    from signer.keys.publish import sign_publication, upload_key

    settings = load(args.config)
    content = args.trust_list.read_bytes()
    try:
        document = json.loads(content)
        store = TrustStore.from_trust_list(document)
    except (ValueError, DccError) as exc:
        raise UsageError(f"{args.trust_list}: not a trust list: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise UsageError(
            f"{args.trust_list}: not a {FORMAT_NAME} document; write one with"
            " `signer keys trust-list`"
        )
    if store.skipped:
        raise UsageError(
            f"{args.trust_list}: {len(store.skipped)} unusable entr(y/ies), first:"
            f" {store.skipped[0]}; nothing signed"
        )

    def run(token: Token) -> int:
        uploader = upload_key(token, settings.hsm.upload_key_label)
        args.out.write_bytes(sign_publication(token, content, uploader, datetime.now(UTC)))
        _print_json(
            {
                "signed": str(args.trust_list),
                "entries": len(store),
                "revoked": len(store.revoked_kids),
                "out": str(args.out),
                "upload_certificate_sha256": uploader.thumbprint,
            }
        )
        return ExitCode.OK

    return _on_token(settings, run)


def _dcc_signer(args: argparse.Namespace) -> DccSigner:
    return make_client(args, "issuer").dcc_signer()


if __name__ == "__main__":
    sys.exit(main())
