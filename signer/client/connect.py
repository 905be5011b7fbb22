"""How command-line tools find and reach the appliance: flags, or the daemon's own config."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from signer.cli_exit import UsageError
from signer.client.client import SignerClient, TlsFiles, open_channel
from signer.config import Settings, load
from signer.errors import ConfigError

DEV_IDENTITIES = ("issuer", "officer", "officer2", "auditor")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` (read the address and dev client certificates from it) or explicit flags."""
    group = parser.add_argument_group("connection")
    group.add_argument("--config", type=Path, help="signer TOML config (dev: hsm_config/dev.toml)")
    group.add_argument(
        "--target", help="appliance address host:port (repeat for round robin)", action="append"
    )
    group.add_argument("--ca", type=Path, help="PEM of the CA that issued the server certificate")
    group.add_argument("--cert", type=Path, help="PEM client certificate (mTLS)")
    group.add_argument("--key", type=Path, help="PEM client private key (mTLS)")
    group.add_argument(
        "--server-name",
        help="name to check in the server certificate, if not the target's host name",
    )
    group.add_argument(
        "--as",
        dest="identity",
        default=None,
        help=f"dev client certificate to use ({', '.join(DEV_IDENTITIES)})",
    )


def _settings(args: argparse.Namespace) -> Settings | None:
    return load(args.config) if getattr(args, "config", None) else None


@dataclass(frozen=True)
class Connection:
    """Where a tool connects and as whom."""

    targets: list[str]
    tls: TlsFiles | None
    server_name: str | None


def targets(args: argparse.Namespace, settings: Settings | None = None) -> list[str]:
    """The appliance addresses the arguments point at (``--target``, else the config's)."""
    given = list(getattr(args, "target", None) or [])
    if given:
        return given
    settings = settings or _settings(args)
    if settings is None:
        raise UsageError("say where the appliance is: --config FILE or --target HOST:PORT")
    host, _, port = settings.server.listen.rpartition(":")
    host = "127.0.0.1" if _unspecified(host) else host
    return [f"{host}:{port}"]


def connection(args: argparse.Namespace, role: str) -> Connection:
    """The targets, TLS files and server name for a tool acting in ``role``."""
    settings = _settings(args)
    found = targets(args, settings)
    name = args.server_name or None
    if args.cert or args.key or args.ca:
        if not (args.cert and args.key and args.ca):
            raise UsageError("mTLS needs --ca, --cert and --key together")
        return Connection(found, TlsFiles(ca=args.ca, cert=args.cert, key=args.key), name)
    if settings is not None and settings.server.tls.enabled and settings.client.cert_dir:
        tls = _dev_identity(settings, args.identity, role)
        return Connection(found, tls, name or settings.client.server_name)
    if args.identity:
        raise UsageError(
            f"--as {args.identity}: the configuration has no client certificates"
            " (needs [server.tls] and [client] cert_dir)"
        )
    return Connection(found, None, None)


def _dev_identity(settings: Settings, identity: str | None, role: str) -> TlsFiles:
    """The client certificate ``--as identity`` (default: the one named after ``role``)."""
    folder = settings.client.cert_dir
    ca = settings.client.ca
    assert folder is not None
    if ca is None or not ca.is_file():
        raise ConfigError(
            f"{settings.source}: [client] ca {ca} does not exist (dev: `make setup` creates it)"
        )
    name = identity or role
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    if cert.is_file() and key.is_file():
        return TlsFiles(ca=ca, cert=cert, key=key)
    if identity:
        raise UsageError(
            f"--as {identity}: no client certificate {cert.name} and {key.name} in {folder}"
            f" (dev identities: {', '.join(DEV_IDENTITIES)})"
        )
    raise ConfigError(
        f"{settings.source}: no client certificate for role {role} in [client] cert_dir"
        f" {folder} (dev: `make setup` creates {cert.name}; or pick one with --as)"
    )


def make_client(args: argparse.Namespace, role: str = "issuer") -> SignerClient:
    """A SignerClient for the appliance the arguments point at."""
    found = connection(args, role)
    return SignerClient(found.targets, tls=found.tls, server_name=found.server_name)


def make_channel(args: argparse.Namespace, role: str) -> grpc.Channel:
    """A channel for the officer and auditor tools (first target only)."""
    found = connection(args, role)
    return open_channel(found.targets[:1], found.tls, found.server_name)


def _unspecified(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False
