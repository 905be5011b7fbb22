"""``signer``: the daemon, the officer and auditor tools, and the DCC issuance kit."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from signer import __version__
from signer.audit import cli as audit_cli
from signer.client import keys_cli
from signer.client.client import DccSigner
from signer.client.connect import add_connection_options, make_client
from signer.config import load
from signer.dcc import cli as dcc_cli
from signer.errors import ConfigError, SignerError
from signer.logs import configure_logging

EXIT_CONFIG = 78  # EX_CONFIG: systemd need not restart a daemon whose configuration is wrong


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``signer`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except ConfigError as error:
        print(f"signer: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except SignerError as error:
        print(f"signer: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="signer",
        description="HSM-backed ES256 signing appliance for EU Digital COVID Certificates.",
        epilog="Dev quick start: `make serve` in one terminal, then "
        "`signer dcc issue examples/record-vn.json --config hsm_config/dev.toml --qr qr.png`.",
    )
    parser.add_argument("--version", action="version", version=f"signer {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the signing daemon")
    serve.add_argument("--config", type=Path, required=True)
    serve.set_defaults(func=_serve)

    sign = commands.add_parser("sign", help="sign SHA-256 digests (hex) and print signatures")
    add_connection_options(sign)
    sign.add_argument("--profile", default="vaccination")
    sign.add_argument("--der", action="store_true", help="DER signatures instead of raw r||s")
    sign.add_argument("digests", nargs="+", metavar="DIGEST_HEX")
    sign.set_defaults(func=_sign)

    setup = commands.add_parser("dev-setup", help="create the dev token, keys and certificates")
    setup.add_argument("--config", type=Path, required=True)
    setup.add_argument("--so-pin-file", type=Path, required=True)
    setup.set_defaults(func=_dev_setup)

    keys = commands.add_parser("keys", help="key ceremonies for security officers")
    key_commands = keys.add_subparsers(title="keys commands", metavar="COMMAND")
    keys_cli.add_subcommands(key_commands)
    dev_issue = key_commands.add_parser(
        "dev-issue-cert", help="dev only: the dev CSCA in the HSM signs a key's CSR"
    )
    dev_issue.add_argument("key_id")
    dev_issue.add_argument("--config", type=Path, required=True)
    dev_issue.add_argument("--out", type=Path, required=True, help="DSC output (PEM)")
    dev_issue.add_argument("--days", type=int, default=730, help="DSC validity")
    dev_issue.set_defaults(func=_dev_issue_cert)

    audit = commands.add_parser("audit", help="verify and query the audit log (offline)")
    audit_cli.add_subcommands(audit.add_subparsers(title="audit commands", metavar="COMMAND"))

    dcc = commands.add_parser("dcc", help="issue and verify HC1 certificates and QR codes")
    dcc_commands = dcc.add_subparsers(title="dcc commands", metavar="COMMAND")
    dcc_cli.add_subcommands(dcc_commands, _dcc_signer)
    for name in ("issue",):
        add_connection_options(dcc_commands.choices[name])
    return parser


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
    return 0


def _sign(args: argparse.Namespace) -> int:
    try:
        digests = [bytes.fromhex(d) for d in args.digests]
    except ValueError:
        raise SystemExit("digests must be hexadecimal SHA-256 values") from None
    with make_client(args, "issuer") as client:
        key = client.signing_key(args.profile)
        for signature in client.sign_digests(args.profile, digests, kid=key.kid, der=args.der):
            print(signature.hex())
    return 0


def _dev_setup(args: argparse.Namespace) -> int:
    from signer.dev.setup import dev_setup

    settings = load(args.config)
    configure_logging(settings.log)
    dev_setup(settings, args.so_pin_file)
    return 0


def _dev_issue_cert(args: argparse.Namespace) -> int:
    from signer.dev.setup import issue_dev_certificate
    from signer.keys.pem import certificate_pem

    der = issue_dev_certificate(load(args.config), args.key_id, timedelta(days=args.days))
    args.out.write_bytes(certificate_pem(der))
    print(f"the dev CSCA issued a DSC for key {args.key_id}: {args.out}", file=sys.stderr)
    return 0


def _dcc_signer(args: argparse.Namespace) -> DccSigner:
    return make_client(args, "issuer").dcc_signer()


if __name__ == "__main__":
    sys.exit(main())
