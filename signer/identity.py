"""Names a client certificate is known by, the way the configuration writes them.

``CN=<common name>``, ``URI:<SAN URI>``, ``DNS:<SAN DNS name>`` and
``SHA256:<hex fingerprint of the DER certificate>``. The gRPC front end and the governance
checks both read identities through these functions, so a person is recognised the same way
on the connection and in a stored signature.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography import x509
from cryptography.x509.oid import NameOID


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
    names.append("SHA256:" + hashlib.sha256(der).hexdigest())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(names)
    names += [f"URI:{u}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    names += [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)]
    return tuple(names)
