"""Development mTLS material: a dev CA, a localhost server certificate and one client
certificate per role, so the dev setup runs with mutual TLS like production.

These keys live in files under the project's data folder: they protect a developer's loopback
connection, not the national signing key, which stays in the HSM. Production uses the
operator's own PKI; nothing here is meant for it.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_CLIENTS = ("issuer", "officer", "officer2", "auditor")
VALIDITY = timedelta(days=825)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "signer development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _issue(
    subject: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey,
    usage: list[x509.ObjectIdentifier],
    san: list[x509.GeneralName],
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject if ca_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca_cert is None, path_length=None), True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), False)
    return builder.sign(ca_key, hashes.SHA256())


def ensure_dev_tls(folder: Path) -> None:
    """Create the dev CA, server and client certificates in ``folder`` if missing."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_pem, ca_key_path = folder / "ca.pem", folder / "ca.key"
    if ca_pem.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue("signer dev TLS CA", ca_key, None, ca_key, [], [])
        _write_key(ca_key_path, ca_key)
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    wanted = {
        "server": (
            [ExtendedKeyUsageOID.SERVER_AUTH],
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ],
        )
    }
    for client in DEV_CLIENTS:
        wanted[client] = (
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [x509.UniformResourceIdentifier(f"urn:signer:dev:{client}")],
        )
    for name, (usage, san) in wanted.items():
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name if name != "server" else "localhost", ca_key, ca_cert, key, usage, san)
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
