"""Client certificates a test makes with an appliance's dev client CA (``home/tls``)."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Appliance


@dataclass(frozen=True)
class ClientCert:
    """mTLS credentials of a made certificate, and the certificate itself."""

    credentials: grpc.ChannelCredentials
    der: bytes
    key_pem: bytes
    """The private key (PEM), for a process that builds its own credentials."""

    @property
    def fingerprint(self) -> str:
        """The identity of this certificate when it holds no role."""
        return "SHA256:" + hashlib.sha256(self.der).hexdigest()


def client_certificate(
    appliance: Appliance, common_name: str | None = None, uris: tuple[str, ...] = ()
) -> ClientCert:
    """A certificate for ``common_name`` (None: an empty subject) with SAN ``uris``, from the
    appliance's dev client CA. The CN is not checked against X.509's 64-character bound, so
    that tests can send what a hostile CA holder could."""
    assert appliance.tls_dir is not None
    tls = appliance.tls_dir
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([])
    if common_name is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # longer than X.509's 64: on purpose
            cn = x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False)
        subject = x509.Name([cn])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=common_name is None,  # RFC 5280: critical when the subject is empty
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=key_pem,
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    return ClientCert(credentials, cert.public_bytes(serialization.Encoding.DER), key_pem)


def client_certificate_files(appliance: Appliance, common_name: str) -> tuple[Path, Path]:
    """:func:`client_certificate` for ``CN=common_name``, written as ``NAME.pem`` and
    ``NAME.key`` (mode 600) beside the dev identities, so that ``appliance.credentials(NAME)``
    and clients given file paths find it; returns the two paths."""
    assert appliance.tls_dir is not None
    made = client_certificate(appliance, common_name)
    cert_path = appliance.tls_dir / f"{common_name}.pem"
    key_path = appliance.tls_dir / f"{common_name}.key"
    certificate = x509.load_der_x509_certificate(made.der)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(made.key_pem)
    return cert_path, key_path
