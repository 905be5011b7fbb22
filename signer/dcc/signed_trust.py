"""Trust lists signed for direct partners: CMS SignedData checked against a pinned certificate.

A country that exchanges DSCs with a partner directly (without the DCC Gateway) signs its
trust list with its upload key (``signer keys sign-trust-list``): CMS SignedData (RFC 5652),
the trust-list JSON as encapsulated ``id-data`` content, signed attributes contentType,
signingTime and messageDigest, ``ecdsa-with-SHA256``. The partner pins the publisher's upload
certificate, received out of band, and :func:`open_signed_trust_list` accepts the content
only if that certificate's key signed exactly these bytes. The certificate embedded in the
message is never trusted by itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from asn1crypto import cms
from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from signer.dcc.dsc import certificate_der
from signer.dcc.errors import DccTrustError

_PEM_TYPES = (b"-----BEGIN CMS-----", b"-----BEGIN PKCS7-----")
_SIGNATURE_ALGORITHMS = frozenset({"sha256_ecdsa", "ecdsa"})


@dataclass(frozen=True)
class SignedContent:
    """The content of a signed trust list whose signature verified."""

    content: bytes
    signing_time: dt.datetime | None
    signer_subject: str


def is_signed(data: bytes) -> bool:
    """Whether ``data`` is a CMS SignedData message (PEM-armoured or DER), not JSON or a DSC."""
    if data.lstrip()[:30].startswith(_PEM_TYPES):
        return True
    if data[:1] != b"\x30":
        return False
    try:
        return bool(cms.ContentInfo.load(data)["content_type"].native == "signed_data")
    except (ValueError, TypeError, KeyError):
        return False


def open_signed_trust_list(data: bytes, signer_certificate: bytes) -> SignedContent:
    """Verify CMS ``data`` against the pinned ``signer_certificate`` (PEM or DER) and return
    its content; :class:`DccTrustError` says which check failed."""
    pinned = _certificate(signer_certificate)
    signed = _signed_data(data)
    encapsulated = signed["encap_content_info"]
    if encapsulated["content_type"].native != "data" or encapsulated["content"].native is None:
        raise DccTrustError("signed trust list: the CMS does not carry its content (id-data)")
    content = bytes(encapsulated["content"].native)
    infos = signed["signer_infos"]
    if len(infos) != 1:
        raise DccTrustError(f"signed trust list: expected one signer, found {len(infos)}")
    info = infos[0]
    if info["digest_algorithm"]["algorithm"].native != "sha256":
        raise DccTrustError("signed trust list: the digest algorithm is not SHA-256")
    attributes = info["signed_attrs"]
    if not attributes:
        raise DccTrustError("signed trust list: the CMS has no signed attributes")
    values = {attribute["type"].native: attribute["values"] for attribute in attributes}
    if [v.native for v in values.get("content_type", [])] != ["data"]:
        raise DccTrustError("signed trust list: the signed contentType is not id-data")
    digests = [bytes(v.native) for v in values.get("message_digest", [])]
    if digests != [hashlib.sha256(content).digest()]:
        raise DccTrustError("signed trust list: the content does not match its signed digest")
    if info["signature_algorithm"]["algorithm"].native not in _SIGNATURE_ALGORITHMS:
        raise DccTrustError("signed trust list: the signature algorithm is not ECDSA with SHA-256")
    public_key = pinned.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise DccTrustError("the pinned upload certificate does not hold an EC key")
    signed_bytes = b"\x31" + _der_length(len(attributes.contents)) + attributes.contents
    try:
        public_key.verify(bytes(info["signature"].native), signed_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise DccTrustError(
            "signed trust list: the signature does not verify with the pinned upload"
            " certificate; the list was altered or signed by someone else"
        ) from None
    signing_time = _signing_time(values)
    if signing_time is not None and not (
        pinned.not_valid_before_utc <= signing_time <= pinned.not_valid_after_utc
    ):
        raise DccTrustError(
            f"signed trust list: signed at {signing_time.isoformat()}, outside the validity of"
            " the pinned upload certificate"
        )
    return SignedContent(content, signing_time, pinned.subject.rfc4514_string())


def _certificate(data: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(certificate_der(data))
    except ValueError as exc:
        raise DccTrustError(f"the pinned upload certificate cannot be read: {exc}") from None


def _signed_data(data: bytes) -> cms.SignedData:
    der = data
    if data.lstrip()[:30].startswith(_PEM_TYPES):
        try:
            _, _, der = asn1_pem.unarmor(data)
        except ValueError as exc:
            raise DccTrustError(f"signed trust list: malformed PEM: {exc}") from None
    try:
        info = cms.ContentInfo.load(bytes(der))
        if info["content_type"].native != "signed_data":
            raise DccTrustError("signed trust list: the CMS is not SignedData")
        signed = info["content"]
        signed.native  # noqa: B018 (parses every field now, so malformed input fails here)
    except DccTrustError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise DccTrustError(f"signed trust list: not a CMS message: {exc}") from None
    assert isinstance(signed, cms.SignedData)
    return signed


def _signing_time(values: dict[str, cms.SetOfAny]) -> dt.datetime | None:
    times = values.get("signing_time")
    if not times:
        return None
    moment = times[0].native
    return moment if isinstance(moment, dt.datetime) else None


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body
