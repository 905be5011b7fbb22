"""How command-line tools find and reach the appliance: flags, or the daemon's own config."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import grpc

from signer.client.client import SignerClient, TlsFiles
from signer.config import Settings, load


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
        "--as",
        dest="identity",
        default=None,
        help="dev client certificate to use (issuer, officer, officer2, auditor)",
    )


def _settings(args: argparse.Namespace) -> Settings | None:
    return load(args.config) if getattr(args, "config", None) else None


def connection(args: argparse.Namespace, role: str) -> tuple[list[str], TlsFiles | None]:
    """The targets and TLS files for a tool acting in ``role``."""
    settings = _settings(args)
    targets = list(args.target or [])
    if not targets:
        if settings is None:
            raise SystemExit("say where the appliance is: --config FILE or --target HOST:PORT")
        host, _, port = settings.server.listen.rpartition(":")
        host = "127.0.0.1" if _unspecified(host) else host
        targets = [f"{host}:{port}"]
    if args.cert or args.key or args.ca:
        if not (args.cert and args.key and args.ca):
            raise SystemExit("mTLS needs --ca, --cert and --key together")
        return targets, TlsFiles(ca=args.ca, cert=args.cert, key=args.key)
    if settings is not None and settings.server.tls.enabled and settings.client.cert_dir:
        name = args.identity or role
        folder = settings.client.cert_dir
        assert settings.client.ca is not None
        return targets, TlsFiles(
            ca=settings.client.ca, cert=folder / f"{name}.pem", key=folder / f"{name}.key"
        )
    return targets, None


def server_name(args: argparse.Namespace) -> str | None:
    """The TLS name to check the server certificate against, when not the target's host."""
    if getattr(args, "server_name", None):
        return str(args.server_name)
    settings = _settings(args)
    return (
        settings.client.server_name if settings is not None and settings.client.cert_dir else None
    )


def make_client(args: argparse.Namespace, role: str = "issuer") -> SignerClient:
    """A SignerClient for the appliance the arguments point at."""
    targets, tls = connection(args, role)
    return SignerClient(targets, tls=tls, server_name=server_name(args) if tls else None)


def make_channel(args: argparse.Namespace, role: str) -> grpc.Channel:
    """A raw channel, for the officer and auditor tools."""
    targets, tls = connection(args, role)
    target = targets[0]
    if tls is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )
    name = server_name(args)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options=options)


def _unspecified(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False
