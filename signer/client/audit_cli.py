"""``signer audit checkpoint`` and ``signer audit mirror``: the auditor's commands that talk to
the appliance (role auditor), beside the offline ``verify``, ``find`` and ``tail``.

Exit codes: 0 done; 1 a finding (a checkpoint that does not verify, an appliance log that
no longer holds what the mirror holds: "modified at sequence N"); 2 usage; 69 the appliance
cannot be reached (the message names the address); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

from signer.audit.checkpoint import load_audit_public_key, open_checkpoint
from signer.audit.fileops import OsFileOps
from signer.audit.mirror import STATE_FILE, Mirror
from signer.cli_args import utc_iso
from signer.cli_exit import ExitCode, UsageError, note
from signer.client.audit_source import GrpcAuditSource
from signer.client.connect import add_connection_options, make_channel, targets
from signer.client.errors import SignerUnavailable, from_rpc_error
from signer.errors import AuditError

ROLE = "auditor"


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``checkpoint`` and ``mirror`` under ``signer audit``."""
    text = "fetch the appliance's newest signed checkpoint and keep it in a file"
    checkpoint = subparsers.add_parser("checkpoint", help=text, description=text)
    add_connection_options(checkpoint)
    checkpoint.add_argument("--out", type=Path, required=True, help="where to write the note")
    checkpoint.add_argument(
        "--pubkey",
        type=Path,
        help="audit public key taken through a trusted channel; the checkpoint must verify"
        " with it (without it, only the key the daemon names is checked)",
    )
    checkpoint.set_defaults(func=_checkpoint)

    text = (
        "keep an off-box copy of the appliance's audit log: pull new records, check that they"
        " continue the copy and match the signed checkpoint, store them"
    )
    mirror = subparsers.add_parser("mirror", help=text, description=text)
    add_connection_options(mirror)
    mirror.add_argument("--dir", type=Path, required=True, help="the mirror folder")
    mirror.add_argument(
        "--pubkey",
        type=Path,
        help="audit public key (needed when the mirror is made; checked against it later)",
    )
    mirror.add_argument("--origin", help="log name the checkpoints must carry (default: the first)")
    mirror.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="keep running and pull every SECONDS (a pull that cannot reach the appliance is"
        " reported and retried); without it, pull once",
    )
    mirror.set_defaults(func=_mirror)


def _checkpoint(args: argparse.Namespace) -> int:
    trusted = load_audit_public_key(args.pubkey.read_bytes()) if args.pubkey else None
    channel = make_channel(args, ROLE)
    try:
        reply = GrpcAuditSource(channel, ", ".join(targets(args))).checkpoint()
    finally:
        channel.close()
    key = trusted or load_audit_public_key(reply.audit_public_key_spki)
    try:
        opened = open_checkpoint(reply.note, key)
    except AuditError as exc:
        where = args.pubkey if trusted else "the key the daemon names"
        raise AuditError(
            f"the appliance's checkpoint does not verify with {where}: {exc}"
        ) from None
    OsFileOps().write_file_atomically(args.out.resolve(), reply.note.encode("utf-8"))
    signed = (
        utc_iso(datetime.fromtimestamp(opened.timestamp, UTC)) if opened.timestamp else "unknown"
    )
    print(
        f"checkpoint of log {opened.origin} at size {opened.size}, head {opened.head.hex()},"
        f" signed {signed}: {args.out}"
    )
    if trusted is None:
        note(
            "checked only against the audit key the daemon names; pass --pubkey with the key"
            " taken through a trusted channel"
        )
    return ExitCode.OK


def _mirror(args: argparse.Namespace) -> int:
    if args.every is not None and args.every <= 0:
        raise UsageError(f"--every must be a positive number of seconds, got {args.every}")
    if args.pubkey is None and not (args.dir / STATE_FILE).exists():
        raise UsageError(
            f"{args.dir} is a new mirror: give the audit public key with --pubkey FILE"
            " (taken from the appliance through a trusted channel)"
        )
    public_key = args.pubkey.read_bytes() if args.pubkey else None
    address = ", ".join(targets(args))
    with Mirror(args.dir, public_key=public_key, origin=args.origin) as mirror:
        while True:
            _pull_once(args, mirror, address, keep_going=args.every is not None)
            if args.every is None:
                return ExitCode.OK
            time.sleep(args.every)


def _pull_once(args: argparse.Namespace, mirror: Mirror, address: str, keep_going: bool) -> None:
    """One pull; unreachable appliances are only reported when ``keep_going``."""
    channel = make_channel(args, ROLE)
    try:
        report = mirror.pull(GrpcAuditSource(channel, address))
    except grpc.RpcError as error:
        refused = from_rpc_error(error)
        if not (keep_going and isinstance(refused, SignerUnavailable)):
            raise
        note(f"{utc_iso(datetime.now(UTC))} the appliance at {address} is unavailable ({refused})")
        return
    finally:
        channel.close()
    print(f"{utc_iso(datetime.now(UTC))} {report.message}", flush=True)
