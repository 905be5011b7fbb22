"""Names a client certificate is known by, the way the configuration writes them.

``CN=<common name>``, ``URI:<SAN URI>``, ``DNS:<SAN DNS name>`` and
``SHA256:<hex fingerprint of the DER certificate>``. The gRPC front end and the governance
checks both read identities through these functions, so a person is recognised the same way
on the connection and in a stored signature.

Where several names of one certificate could stand for it, the most specific comes first
(:data:`PRECEDENCE`): a pinned fingerprint names one certificate, a SAN URI or DNS name one
workload, a common name whatever certificate the client CA gave that CN.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography import x509
from cryptography.x509.oid import NameOID

MAX_IDENTITY_CHARS = 256
"""The longest identity the configuration may name; longer certificate names never grant a role,
so no identity the daemon records, counts or logs is longer (a fingerprint is 71 characters)."""
PRECEDENCE = ("SHA256:", "URI:", "DNS:", "CN=")
"""Name forms from the most to the least specific."""


def normalise(identity: str) -> str:
    """One spelling per identity: fingerprints lower-case hex without colons."""
    if identity.upper().startswith("SHA256:"):
        return "SHA256:" + identity[7:].replace(":", "").lower()
    return identity


@functools.lru_cache(maxsize=1024)
def certificate_names(der: bytes) -> tuple[str, ...]:
    """Every identity of a certificate: its CNs, fingerprint and SAN names (cached)."""
    cert = x509.load_der_x509_certificate(der)
    names = [
        f"CN={attribute.value!s}"
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    names.append(fingerprint_name(der))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(names)
    names += [f"URI:{u}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    names += [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)]
    return tuple(names)


def fingerprint_name(der: bytes) -> str:
    """``SHA256:<hex>`` of a DER certificate: the identity of a certificate that holds no role."""
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def ranked(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` in :data:`PRECEDENCE` order (the order among names of one form is kept)."""
    return tuple(sorted(names, key=_rank))


def _rank(name: str) -> int:
    for rank, prefix in enumerate(PRECEDENCE):
        if name.startswith(prefix):
            return rank
    return len(PRECEDENCE)
