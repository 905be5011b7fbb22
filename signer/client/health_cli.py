"""``signer health``: is the appliance SERVING? For operators, scripts and runbooks.

Exit codes: 0 SERVING, 1 NOT_SERVING (or UNKNOWN), 2 a service name the appliance does not
report, 69 the appliance cannot be reached (the message names the address). ``--watch`` prints
the status and then every change until the appliance goes away (69) or Ctrl-C (130).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import grpc

from signer.cli_args import utc_iso
from signer.cli_exit import ExitCode, UsageError
from signer.client import health
from signer.client.connect import add_connection_options, make_channel, targets
from signer.client.errors import SignerUnavailable


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``signer health``."""
    description = (
        "Ask the appliance's gRPC health service whether it signs. Exit 0 SERVING,"
        " 1 NOT_SERVING, 69 unreachable."
    )
    parser = commands.add_parser(
        "health", help="is the appliance SERVING?", description=description
    )
    add_connection_options(parser)
    parser.add_argument(
        "--service",
        default="",
        choices=health.SERVICES,
        metavar="NAME",
        help="one service (signer.v1.Signing, signer.v1.KeyAdmin: also NOT_SERVING while the"
        " record store is unreachable, signer.v1.Audit, signer.hsm.workers: NOT_SERVING while"
        " fewer HSM workers run than configured); default: the appliance as a whole",
    )
    parser.add_argument(
        "--watch", action="store_true", help="print the status, then each change, until stopped"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    parser.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    found = targets(args)
    if len(found) > 1:
        raise UsageError("signer health checks one appliance at a time: give one --target")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    label = f"{args.service}: " if args.service else ""
    channel = make_channel(args, "issuer")
    try:
        if args.watch:
            _watch(channel, args.service, label)
        status = health.check(channel, args.service, args.timeout)
    except health.UnknownService as exc:
        raise UsageError(str(exc)) from None
    finally:
        channel.close()
    print(f"{label}{status}")
    return ExitCode.OK if status == health.SERVING else ExitCode.REFUSED


def _watch(channel: grpc.Channel, service: str, label: str) -> None:
    """Print each status until the appliance goes away, then raise its unavailability."""
    ending = "the health stream ended"
    try:
        for status in health.watch(channel, service):
            print(f"{utc_iso(datetime.now(UTC))} {label}{status}", flush=True)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.UNIMPLEMENTED:
            raise
        ending = f"the health stream ended with {error.code().name}"
    raise SignerUnavailable(ending, grpc.StatusCode.UNAVAILABLE)
