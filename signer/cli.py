"""``signer``: the daemon, the officer and auditor tools, and the DCC issuance kit.

:func:`main` is the one place where an error becomes a line on stderr and an exit code
(:mod:`signer.cli_exit` holds the table); the commands raise typed errors.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from signer import __version__
from signer.audit import cli as audit_cli
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
from signer.client import keys_cli
from signer.client.client import DccSigner
from signer.client.connect import add_connection_options, make_client, targets
from signer.client.errors import RequestRefused, from_rpc_error
from signer.config import load
from signer.dcc import cli as dcc_cli
from signer.logs import configure_logging

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
        "`signer dcc issue examples/record-vn.json --config hsm_config/dev.toml --qr qr.png`. "
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

    hsm = commands.add_parser("hsm", help="check a PKCS#11 module before the first ceremony")
    hsm_commands = command_group(hsm, "hsm commands")
    probe = hsm_commands.add_parser(
        "probe",
        help="try every PKCS#11 operation signer needs on the configured token (scratch keys,"
        " removed after); exit 0 only when the module can run signer",
    )
    probe.add_argument("--config", type=Path, required=True, help="signer TOML config")
    probe.set_defaults(func=_hsm_probe)

    audit = commands.add_parser("audit", help="verify and query the audit log (offline)")
    audit_cli.add_subcommands(command_group(audit, "audit commands"))

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


def _dcc_signer(args: argparse.Namespace) -> DccSigner:
    return make_client(args, "issuer").dcc_signer()


if __name__ == "__main__":
    sys.exit(main())
