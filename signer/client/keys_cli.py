"""``signer keys ...``: the security officer's tool, talking to the KeyAdmin API."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from signer.cli_args import ISO_TIME_HELP, iso_time, utc_iso
from signer.client.client import open_channel
from signer.client.connect import add_connection_options, connection, make_channel, make_client
from signer.client.errors import from_rpc_error
from signer.client.officer import OfficerCredential, OfficerSession
from signer.dcc.trust import (
    gateway_trust_list,
    revoked_entry,
    trust_list_entry,
    write_json,
    write_trust_list,
)
from signer.keys.governance import Action
from signer.keys.pem import csr_pem
from signer.v1 import key_admin_pb2, key_admin_pb2_grpc


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the officer commands under ``signer keys``."""

    def command(name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_connection_options(parser)
        parser.add_argument("--officer", default="", help="your identity (only without mTLS)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=run)
        return parser

    key_id_help = "key id, as `signer keys list` shows it"
    command("list", "list keys with state, kid and validity", _list).add_argument(
        "--profile", default="", help="only keys of this profile (default: all)"
    )
    p = command("generate", "generate a key in the HSM and write its CSR", _generate)
    p.add_argument("--profile", required=True, help="certificate profile, e.g. vaccination")
    p.add_argument("--label", required=True, help="name of the key, e.g. 2027-H1")
    p.add_argument("--csr-out", type=Path, required=True, help="where to write the CSR (PEM)")
    p = command("csr", "write a pending key's CSR again", _csr)
    p.add_argument("key_id", help=key_id_help)
    p.add_argument("--csr-out", type=Path, required=True, help="where to write the CSR (PEM)")
    p = command("import-cert", "import the DSC the CSCA issued for a key", _import)
    p.add_argument("key_id", help=key_id_help)
    p.add_argument("certificate", type=Path, help="DSC, PEM or DER")
    p = command("activate", "schedule a key's activation (needs approval)", _activate)
    p.add_argument("key_id", help=key_id_help)
    p.add_argument(
        "--at",
        type=iso_time,
        metavar="TIME",
        help=f"time the key takes over (default: on approval); {ISO_TIME_HELP}",
    )
    p = command("approve", "check and sign another person's pending change", _approve)
    p.add_argument("change_id", help="change id, as `signer keys changes` shows it")
    p = command("retire", "stop a key from signing (needs approval)", _retire)
    p.add_argument("key_id", help=key_id_help)
    p.add_argument("--reason", default="", help="why, for the audit log")
    p.add_argument(
        "--force",
        action="store_true",
        help="retire the only key signing its profile (signing stops); needs --reason",
    )
    p = command("revoke", "withdraw a compromised key at once; it leaves the trust list", _revoke)
    p.add_argument("key_id", help=key_id_help)
    p.add_argument("--reason", required=True, help="why, for the audit log and partners")
    p = command("destroy", "delete a retired key's private key (needs approval)", _destroy)
    p.add_argument("key_id", help=key_id_help)
    p.add_argument("--force", action="store_true", help="before its DSC expired")
    p.add_argument("--reason", default="", help="why, for the audit log (needed with --force)")
    command("changes", "list changes waiting for approval", _changes)
    p = command("trust-list", "write the trust list (JSON) verifiers need", _trust_list)
    p.add_argument("--out", type=Path, required=True, help="where to write the trust list")
    p.add_argument(
        "--gateway-out",
        type=Path,
        help="also write the DSCs in the DCC Gateway's trust-list shape to this file",
    )


def _stub(args: argparse.Namespace) -> key_admin_pb2_grpc.KeyAdminStub:
    return key_admin_pb2_grpc.KeyAdminStub(make_channel(args, "officer"))


def _session(args: argparse.Namespace) -> OfficerSession:
    """The officer's signing session: changes are signed with the client certificate's key."""
    found = connection(args, "officer")
    credential = None
    if found.tls is not None:
        credential = OfficerCredential.from_files(found.tls.cert, found.tls.key)
    channel = open_channel(found.targets[:1], found.tls, found.server_name)
    return OfficerSession(channel, credential, officer=args.officer, timeout=60)


def _request(args: argparse.Namespace, action: Action, **fields: Any) -> int:
    try:
        reply = _session(args).request(action, args.key_id, **fields)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    return _outcome(args, reply)


def _call(rpc: Any, request: Any) -> Any:
    try:
        return rpc(request, timeout=60)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def _time(ts: Timestamp, present: bool) -> str:
    return utc_iso(ts.ToDatetime(tzinfo=UTC)) if present else ""


def key_json(key: key_admin_pb2.KeyInfo) -> dict[str, Any]:
    """A key as a JSON object."""
    return {
        "key_id": key.key_id,
        "profile": key.profile,
        "label": key.label,
        "stored_state": key.state,
        "effective_state": key.effective_state,
        "signs_new_requests": key.signs_new_requests,
        "kid": key.kid.hex(),
        "not_before": _time(key.not_before, key.HasField("not_before")),
        "not_after": _time(key.not_after, key.HasField("not_after")),
        "activate_at": _time(key.activate_at, key.HasField("activate_at")),
        "overlap_ends": _time(key.overlap_ends, key.HasField("overlap_ends")),
        "usable_until": _time(key.usable_until, key.HasField("usable_until")),
        "revoked_at": _time(key.revoked_at, key.HasField("revoked_at")),
        "signatures_since_daemon_start": key.signatures_total,
    }


def change_json(change: key_admin_pb2.PendingChange) -> dict[str, Any]:
    """A pending change as a JSON object."""
    return {
        "change_id": change.change_id,
        "action": change.action,
        "key_id": change.key_id,
        "requested_by": change.requested_by,
        "approvals": list(change.approvals),
        "expires_at": _time(change.expires_at, change.HasField("expires_at")),
        "activate_at": _time(change.activate_at, change.HasField("activate_at")),
        "reason": change.reason,
        "force": change.force,
    }


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def _emit(args: argparse.Namespace, obj: Any, text: str) -> int:
    print(json.dumps(obj, indent=2) if args.json else text)
    return 0


def _list(args: argparse.Namespace) -> int:
    reply = _call(_stub(args).ListKeys, key_admin_pb2.ListKeysRequest(profile=args.profile))
    rows = [key_json(k) for k in reply.keys]
    if args.json:
        return _emit(args, rows, "")
    for row in rows:
        row["signs"] = "*" if row["signs_new_requests"] else ""
        row["signed"] = row["signatures_since_daemon_start"]
    _print_table(
        rows,
        [
            "signs",
            "key_id",
            "profile",
            "label",
            "effective_state",
            "kid",
            "activate_at",
            "overlap_ends",
            "usable_until",
            "signed",
        ],
    )
    print("* signs new requests; SIGNED counts signatures since this daemon started")
    return 0


def _generate(args: argparse.Namespace) -> int:
    reply = _call(
        _stub(args).GenerateKey,
        key_admin_pb2.GenerateKeyRequest(
            profile=args.profile, label=args.label, officer=args.officer
        ),
    )
    args.csr_out.write_bytes(csr_pem(reply.csr_der))
    return _emit(
        args,
        key_json(reply.key),
        f"generated key {reply.key.key_id}; CSR written to {args.csr_out}",
    )


def _csr(args: argparse.Namespace) -> int:
    reply = _call(_stub(args).GetCsr, key_admin_pb2.GetCsrRequest(key_id=args.key_id))
    args.csr_out.write_bytes(csr_pem(reply.csr_der))
    return _emit(args, {"csr": str(args.csr_out)}, f"CSR written to {args.csr_out}")


def _import(args: argparse.Namespace) -> int:
    reply = _call(
        _stub(args).ImportCertificate,
        key_admin_pb2.ImportCertificateRequest(
            key_id=args.key_id, certificate=args.certificate.read_bytes(), officer=args.officer
        ),
    )
    return _emit(
        args,
        key_json(reply),
        f"key {reply.key_id} is {reply.effective_state}; kid {reply.kid.hex()}",
    )


def _outcome(args: argparse.Namespace, reply: key_admin_pb2.ChangeResponse) -> int:
    change = change_json(reply.change)
    if reply.applied:
        text = (
            f"{reply.change.action} of key {reply.key.key_id} applied: {reply.key.effective_state}"
        )
    else:
        text = (
            f"change {reply.change.change_id} ({reply.change.action} {reply.change.key_id})"
            f" waits for another person: they check it and sign it with"
            f" `signer keys approve {reply.change.change_id}`"
        )
    return _emit(
        args, {"applied": reply.applied, "change": change, "key": key_json(reply.key)}, text
    )


def _activate(args: argparse.Namespace) -> int:
    return _request(args, "activate", activate_at=args.at)


def _approve(args: argparse.Namespace) -> int:
    try:
        reply = _session(args).approve(args.change_id)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    return _outcome(args, reply)


def _retire(args: argparse.Namespace) -> int:
    return _request(args, "retire", reason=args.reason, force=args.force)


def _destroy(args: argparse.Namespace) -> int:
    return _request(args, "destroy", reason=args.reason, force=args.force)


def _revoke(args: argparse.Namespace) -> int:
    return _request(args, "revoke", reason=args.reason)


def _changes(args: argparse.Namespace) -> int:
    reply = _call(_stub(args).ListChanges, key_admin_pb2.ListChangesRequest())
    rows = [change_json(c) for c in reply.changes]
    if args.json:
        return _emit(args, rows, "")
    _print_table(rows, ["change_id", "action", "key_id", "requested_by", "expires_at"])
    return 0


def _trust_list(args: argparse.Namespace) -> int:
    with make_client(args, "issuer") as client:
        listed = client.trust_list()
    entries = [trust_list_entry(e.dsc_der, e.profile, e.state) for e in listed.entries]
    revoked = [
        revoked_entry(
            r.kid,
            r.profile,
            r.revoked_at.ToDatetime(tzinfo=UTC) if r.HasField("revoked_at") else None,
        )
        for r in listed.revoked
    ]
    write_trust_list(entries, args.out, revoked)
    summary: dict[str, Any] = {
        "entries": len(entries),
        "revoked": len(revoked),
        "out": str(args.out),
    }
    text = f"wrote {len(entries)} certificate(s) and {len(revoked)} revoked kid(s) to {args.out}"
    if args.gateway_out is not None:
        write_json(gateway_trust_list(entries, datetime.now(UTC)), args.gateway_out)
        summary["gateway_out"] = str(args.gateway_out)
        text += f"; DCC Gateway shape in {args.gateway_out}"
    return _emit(args, summary, text)
