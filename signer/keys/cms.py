"""CMS SignedData (RFC 5652) over a content, signed through a :data:`SignDigest`.

What the DCC Gateway takes from a national backend: the content (a DSC's DER, a trust list)
encapsulated as ``id-data``, the signer's certificate (the NB_UP upload certificate) in
``certificates``, one SignerInfo identified by issuer and serial number, SHA-256, the signed
attributes contentType, signingTime and messageDigest, and an ``ecdsa-with-SHA256``
signature over those attributes. The private key never leaves the HSM: only the SHA-256 of
the DER-encoded attributes goes to ``sign``. ``openssl cms -verify`` accepts the result.
"""

import hashlib
from datetime import datetime

from asn1crypto import cms, x509

from signer.errors import CertificateError
from signer.keys.sign_digest import SignDigest, sign_to_der
from signer.keys.utc import require_utc


def signed_data(
    content: bytes, signer_certificate_der: bytes, sign: SignDigest, signing_time: datetime
) -> bytes:
    """DER of a ContentInfo holding SignedData over ``content``, signed by the key of
    ``signer_certificate_der`` through ``sign``."""
    try:
        certificate = x509.Certificate.load(signer_certificate_der)
        issuer, serial = certificate.issuer, certificate.serial_number
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"the signer certificate cannot be parsed: {exc}") from None
    attributes = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute(
                {
                    "type": "signing_time",
                    "values": [cms.Time({"utc_time": _second(signing_time)})],
                }
            ),
            cms.CMSAttribute(
                {"type": "message_digest", "values": [hashlib.sha256(content).digest()]}
            ),
        ]
    )
    signature = sign_to_der(attributes.dump(), sign)
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": issuer, "serial_number": serial}
                    )
                }
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": attributes,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "data", "content": content},
            "certificates": [certificate],
            "signer_infos": [signer_info],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def _second(moment: datetime) -> datetime:
    return require_utc(moment, "signing time").replace(microsecond=0)
