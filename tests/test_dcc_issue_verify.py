"""Issuance round trips and verification of spec-allowed variants, with a software P-256 key.

The software key plays the HSM: it signs the 32-byte digests exactly as the daemon does
(ECDSA over a prehashed SHA-256, raw r||s out).
"""

import base64
import datetime as dt
import hashlib
import json
import random
import shutil
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID
from pycose.keys.cosekey import CoseKey
from pycose.messages.sign1message import Sign1Message

from signer.dcc import cose
from signer.dcc.base45 import b45encode
from signer.dcc.dsc import kid_of, parse_dsc, public_key_from_spki
from signer.dcc.errors import DccError, DccRecordError
from signer.dcc.hc1 import decode_hc1, encode_hc1
from signer.dcc.issue import finish, issue, prepare
from signer.dcc.qr import MAX_ALPHANUMERIC_Q, check_qr_payload, make_qr, qr_png, write_qr
from signer.dcc.trust import TrustedKey, TrustStore, trust_list_entry, write_trust_list
from signer.dcc.verify import verify
from signer.sigformat import der_to_raw, raw_to_der

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IAT = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp())
DAY = 86400
VACCINATION_EKU = x509.ObjectIdentifier("1.3.6.1.4.1.1847.2021.1.2")


def make_dsc(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    not_before: dt.datetime = dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    not_after: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    serial: int = 1,
) -> bytes:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Test DSC {serial}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([VACCINATION_EKU]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class SoftSigner:
    """A DigestSigner and SigningService backed by a software key."""

    key: ec.EllipticCurvePrivateKey
    dsc_der: bytes
    calls: list[int] = field(default_factory=list)

    @property
    def kid(self) -> bytes:
        return kid_of(self.dsc_der)

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        return self.kid, self.dsc_der

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        assert kid == self.kid
        assert all(len(d) == 32 for d in digests)
        self.calls.append(len(digests))
        algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))
        return [der_to_raw(self.key.sign(d, algorithm)) for d in digests]


@pytest.fixture(scope="module")
def signer() -> SoftSigner:
    key = ec.generate_private_key(ec.SECP256R1())
    return SoftSigner(key, make_dsc(key))


@pytest.fixture(scope="module")
def trust(signer: SoftSigner) -> TrustStore:
    return TrustStore.from_dsc(signer.dsc_der)


def records() -> list[dict[str, Any]]:
    lines = (EXAMPLES / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def issue_one(signer: SoftSigner) -> str:
    return issue(
        records()[:1],
        signer,
        signer.kid,
        issuer_country="VN",
        dsc_not_after=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        iat=IAT,
    )[0]


# --- issuance ----------------------------------------------------------------------------


def test_prepare_builds_the_documented_structures(signer: SoftSigner) -> None:
    (cert,) = prepare(records()[:1], signer.kid, "VN", IAT, IAT + 1000 * DAY)
    assert cbor2.loads(cert.protected) == {1: -7, 4: signer.kid}
    assert list(cbor2.loads(cert.protected)) == [1, 4]
    claims = cbor2.loads(cert.payload)
    assert claims[1] == "VN"
    assert claims[6] == IAT
    assert claims[4] == IAT + 365 * DAY
    assert isinstance(claims[4], int)
    assert isinstance(claims[6], int)
    assert claims[-260][1] == cert.hcert
    assert cert.exp_clipped is False
    expected = cbor2.dumps(["Signature1", cert.protected, b"", cert.payload])
    assert cert.digest == hashlib.sha256(expected).digest()
    assert cert.digest == cose.sig_structure_digest(cert.protected, cert.payload)


def test_exp_is_clipped_to_the_dsc_not_after(signer: SoftSigner) -> None:
    not_after = IAT + 100 * DAY
    (cert,) = prepare(records()[:1], signer.kid, "VN", IAT, not_after)
    assert cert.exp == not_after
    assert cert.exp_clipped is True
    assert cbor2.loads(cert.payload)[4] == not_after
    with pytest.raises(DccError, match="DSC expired"):
        prepare(records()[:1], signer.kid, "VN", IAT, IAT)


def test_prepare_names_the_record_index(signer: SoftSigner) -> None:
    batch = records()[:3]
    batch[2]["v"][0]["dn"] = 0
    with pytest.raises(DccRecordError) as info:
        prepare(batch, signer.kid, "VN", IAT, IAT + 1000 * DAY)
    assert str(info.value) == "records[2].v[0].dn: dose number must be >= 1"


def test_issue_round_trip_verifies_and_chunks(signer: SoftSigner, trust: TrustStore) -> None:
    batch = records()
    signer.calls.clear()
    hc1s = issue(
        batch,
        signer,
        signer.kid,
        issuer_country="VN",
        dsc_not_after=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        iat=IAT,
        chunk_size=7,
        verify_with=signer.key.public_key(),
    )
    assert signer.calls == [7, 7, 6]
    assert len(hc1s) == len(batch)
    for record, hc1 in zip(batch, hc1s, strict=True):
        assert hc1.startswith("HC1:")
        result = verify(hc1, trust, at=IAT + DAY)
        assert result.signature_valid, result.error
        assert result.error is None
        assert result.acceptable
        assert result.kid == signer.kid
        assert result.issuer == "VN"
        assert (result.iat, result.exp) == (IAT, IAT + 365 * DAY)
        assert result.expired is False
        assert result.payload is not None
        assert result.payload["nam"]["fn"] == record["nam"]["fn"]
        assert result.payload["v"][0]["dn"] == record["v"][0]["dn"]


def pycose_sign1(data: bytes) -> Sign1Message:
    """Sign1Message.decode() of pycose 1.1 expects a list, but cbor2 >= 6 decodes tag
    contents as a tuple; so unwrap the tag here and let pycose build the message."""
    tagged = cbor2.loads(data)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)


def test_issued_certificate_verifies_with_pycose(signer: SoftSigner) -> None:
    hc1 = issue_one(signer)
    pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message = pycose_sign1(decode_hc1(hc1))
    message.key = CoseKey.from_pem_public_key(pem.decode())
    assert message.verify_signature()
    assert message.phdr_encoded == cbor2.dumps({1: -7, 4: signer.kid})
    tampered = bytearray(decode_hc1(hc1))
    tampered[-1] ^= 1
    message = pycose_sign1(bytes(tampered))
    message.key = CoseKey.from_pem_public_key(pem.decode())
    assert not message.verify_signature()


def test_finish_refuses_wrong_signatures(signer: SoftSigner) -> None:
    prepared = prepare(records()[:2], signer.kid, "VN", IAT, IAT + 1000 * DAY)
    good = signer.sign("vaccination", signer.kid, [p.digest for p in prepared])
    with pytest.raises(DccError, match="2 certificates"):
        finish(prepared, good[:1])
    with pytest.raises(DccError, match="raw r"):
        finish(prepared, [raw_to_der(s) for s in good])
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(DccError, match="signature 0 does not verify"):
        finish(prepared, good, verify_with=other.public_key())
    assert len(finish(prepared, good, verify_with=signer.key.public_key())) == 2


# --- QR ------------------------------------------------------------------------------------


def test_qr_png_decodes_to_the_same_string(signer: SoftSigner, tmp_path: Path) -> None:
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.skip("zbarimg (Debian package zbar-tools) is not installed")
    hc1 = issue_one(signer)
    png = tmp_path / "cert.png"
    write_qr(hc1, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = subprocess.run(
        [zbarimg, "--raw", "-q", str(png)], capture_output=True, text=True, check=True
    ).stdout
    assert decoded.rstrip("\n") == hc1
    svg = tmp_path / "cert.svg"
    write_qr(hc1, svg)
    assert b"<svg" in svg.read_bytes()


def test_qr_uses_alphanumeric_mode_level_q(signer: SoftSigner) -> None:
    qr = make_qr(issue_one(signer))
    assert qr.error == "Q"
    assert qr.mode == "alphanumeric"
    assert qr_png(issue_one(signer))[:4] == b"\x89PNG"


def test_qr_size_check() -> None:
    check_qr_payload("HC1:" + "A" * (MAX_ALPHANUMERIC_Q - 4))
    with pytest.raises(DccError, match="at most"):
        check_qr_payload("HC1:" + "A" * MAX_ALPHANUMERIC_Q)
    with pytest.raises(DccError, match="alphanumeric"):
        check_qr_payload("HC1:abc")


# --- verification of hand-made variants ------------------------------------------------------


def hand_made(
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: dict[int, Any],
    unprotected: dict[int, Any] | None = None,
    claims: dict[int, Any] | None = None,
    tag: int | None = 18,
    compress: bool = True,
    prefix: str = "HC1:",
    der_signature: bool = False,
) -> str:
    protected_bstr = cbor2.dumps(protected)
    hcert = {"ver": "1.3.0", "nam": {"fnt": "TEST"}, "dob": "1990", "v": []}
    payload = cbor2.dumps(
        claims if claims is not None else {1: "VN", 4: IAT + 365 * DAY, 6: IAT, -260: {1: hcert}}
    )
    der = key.sign(cose.sig_structure(protected_bstr, payload), ec.ECDSA(hashes.SHA256()))
    signature = der if der_signature else der_to_raw(der)
    body: Any = [protected_bstr, unprotected or {}, payload, signature]
    if tag is not None:
        body = cbor2.CBORTag(18, body)
        if tag == 61:
            body = cbor2.CBORTag(61, body)
    data = cbor2.dumps(body)
    return prefix + b45encode(zlib.compress(data, 9) if compress else data)


@pytest.mark.parametrize(
    ("variant", "kwargs"),
    [
        ("kid in unprotected header", {"protected": {1: -7}, "unprotected": {4: "KID"}}),
        ("kid and alg in unprotected", {"protected": {}, "unprotected": {1: -7, 4: "KID"}}),
        ("untagged", {"protected": {1: -7, 4: "KID"}, "tag": None}),
        ("CWT tag 61 wrapping", {"protected": {1: -7, 4: "KID"}, "tag": 61}),
        ("uncompressed", {"protected": {1: -7, 4: "KID"}, "compress": False}),
        ("kid before alg", {"protected": {4: "KID", 1: -7}}),
        ("no HC1 prefix", {"protected": {1: -7, 4: "KID"}, "prefix": ""}),
        (
            "float timestamps",
            {
                "protected": {1: -7, 4: "KID"},
                "claims": {1: "VN", 4: IAT + 365.0 * DAY + 0.5, 6: IAT + 0.25, -260: {1: {}}},
            },
        ),
        (
            "protected kid wins over unprotected",
            {"protected": {1: -7, 4: "KID"}, "unprotected": {4: b"wrongkid"}},
        ),
    ],
)
def test_variants_verify(
    signer: SoftSigner, trust: TrustStore, variant: str, kwargs: dict[str, Any]
) -> None:
    for headers in (kwargs.get("protected", {}), kwargs.get("unprotected") or {}):
        for label, value in headers.items():
            if value == "KID":
                headers[label] = signer.kid
    result = verify(hand_made(signer.key, **kwargs), trust, at=IAT + DAY)
    assert result.signature_valid, f"{variant}: {result.error}"
    assert result.kid == signer.kid
    assert (result.iat, result.exp) == (IAT, IAT + 365 * DAY)
    assert result.expired is False


def test_der_signature_is_refused_with_a_clear_error(signer: SoftSigner, trust: TrustStore) -> None:
    hc1 = hand_made(signer.key, protected={1: -7, 4: signer.kid}, der_signature=True)
    result = verify(hc1, trust, at=IAT)
    assert result.signature_valid is False
    assert result.error is not None
    assert "DER-encoded" in result.error


def test_missing_kid_tries_every_key(signer: SoftSigner, trust: TrustStore) -> None:
    result = verify(hand_made(signer.key, protected={1: -7}), trust, at=IAT)
    assert result.signature_valid
    assert result.kid is None
    assert any("no kid" in w for w in result.warnings)


def test_several_dscs_sharing_one_kid_are_all_tried(signer: SoftSigner) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    other_info = parse_dsc(make_dsc(other, serial=2))
    mine = parse_dsc(signer.dsc_der)
    store = TrustStore(
        [
            TrustedKey(kid=signer.kid, public_key=other_info.public_key, dsc=other_info),
            TrustedKey(kid=signer.kid, public_key=mine.public_key, dsc=mine),
        ]
    )
    assert len(store.candidates(signer.kid)) == 2
    assert verify(issue_one(signer), store, at=IAT).signature_valid
    only_other = TrustStore(store.keys[:1])
    result = verify(issue_one(signer), only_other, at=IAT)
    assert not result.signature_valid
    assert result.error is not None
    assert "not valid" in result.error


def test_ps256_is_accepted() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dsc = make_dsc(key)
    kid = kid_of(dsc)
    protected = cbor2.dumps({1: -37, 4: kid})
    payload = cbor2.dumps({1: "VN", 4: IAT + DAY, 6: IAT, -260: {1: {"ver": "1.3.0"}}})
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    signature = key.sign(cose.sig_structure(protected, payload), pss, hashes.SHA256())
    data = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))
    result = verify(encode_hc1(data), TrustStore.from_dsc(dsc), at=IAT)
    assert result.signature_valid, result.error


# --- refusals --------------------------------------------------------------------------------


def test_flipped_signature_byte_is_refused(signer: SoftSigner, trust: TrustStore) -> None:
    data = bytearray(decode_hc1(issue_one(signer)))
    data[-5] ^= 0x01
    result = verify(encode_hc1(bytes(data)), trust, at=IAT)
    assert result.signature_valid is False
    assert result.error is not None
    assert "not valid" in result.error


def test_flipped_payload_byte_is_refused(signer: SoftSigner, trust: TrustStore) -> None:
    message = cose.parse_sign1(decode_hc1(issue_one(signer)))
    payload = message.payload.replace(b"VAN", b"VAM")
    assert payload != message.payload
    data = cbor2.dumps(cbor2.CBORTag(18, [message.protected, {}, payload, message.signature]))
    assert not verify(encode_hc1(data), trust, at=IAT).signature_valid


def test_unknown_kid_is_refused(signer: SoftSigner) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    store = TrustStore.from_dsc(make_dsc(other, serial=3))
    result = verify(issue_one(signer), store, at=IAT)
    assert result.signature_valid is False
    assert result.error == f"unknown kid {signer.kid.hex()}"
    assert result.kid == signer.kid


def test_expired_at_a_given_time(signer: SoftSigner, trust: TrustStore) -> None:
    hc1 = issue_one(signer)
    exp = IAT + 365 * DAY
    at_exp = verify(hc1, trust, at=exp)
    assert at_exp.signature_valid and not at_exp.expired
    later = verify(hc1, trust, at=exp + 1)
    assert later.signature_valid is True
    assert later.expired is True
    assert later.acceptable is False
    as_datetime = verify(hc1, trust, at=dt.datetime.fromtimestamp(exp + 1, dt.UTC))
    assert as_datetime.expired is True


@pytest.mark.parametrize(
    "garbage", ["", "HC1:", "HC1:hello world", "not a certificate at all", "HC1:" + b45encode(b"x")]
)
def test_garbage_is_refused(trust: TrustStore, garbage: str) -> None:
    result = verify(garbage, trust)
    assert result.signature_valid is False
    assert result.error is not None
    assert result.payload is None


def test_revoked_dsc_does_not_verify(signer: SoftSigner, tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    write_trust_list([trust_list_entry(signer.dsc_der, "vaccination", "revoked")], path)
    result = verify(issue_one(signer), TrustStore.load(path), at=IAT)
    assert result.signature_valid is False
    assert result.error is not None
    assert "revoked" in result.error


# --- trust store -----------------------------------------------------------------------------


def test_trust_list_round_trip(signer: SoftSigner, tmp_path: Path) -> None:
    entry = trust_list_entry(signer.dsc_der, "vaccination", "active")
    assert entry["kid_hex"] == signer.kid.hex()
    assert base64.b64decode(entry["kid_b64"]) == signer.kid
    assert base64.b64decode(entry["dsc_b64"]) == signer.dsc_der
    assert entry["dsc_pem"].startswith("-----BEGIN CERTIFICATE-----\n")
    assert (entry["not_before"], entry["not_after"]) == (
        "2024-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z",
    )
    assert (entry["country"], entry["profile"], entry["state"]) == ("VN", "vaccination", "active")
    path = tmp_path / "trust.json"
    write_trust_list([entry], path)
    document = json.loads(path.read_text())
    assert document["format"] == "signer-trust-list"
    assert document["version"] == 1
    store = TrustStore.load(path)
    assert len(store) == 1
    assert store.keys[0].profile == "vaccination"
    assert verify(issue_one(signer), store, at=IAT).signature_valid


def test_trust_list_variants_and_skips(signer: SoftSigner, tmp_path: Path) -> None:
    b64 = base64.b64encode(signer.dsc_der).decode()
    pem = trust_list_entry(signer.dsc_der, "vaccination", "active")["dsc_pem"]
    documents: list[Any] = [
        [{"dsc_pem": pem}],
        {"certificates": [{"kid": base64.b64encode(signer.kid).decode(), "rawData": b64}]},
        {"entries": [{"kid_hex": signer.kid.hex(), "dsc_b64": b64}, {"kid_hex": "zz"}, 5]},
    ]
    for document in documents:
        store = TrustStore.from_trust_list(document)
        assert len(store) == 1, document
        assert verify(issue_one(signer), store, at=IAT).signature_valid
    assert len(TrustStore.from_trust_list(documents[2]).skipped) == 2
    disagree = {"kid_hex": "00" * 8, "kid_b64": base64.b64encode(signer.kid).decode()}
    store = TrustStore.from_trust_list([{**disagree, "dsc_b64": b64}])
    assert len(store) == 0
    assert "disagree" in store.skipped[0]


def test_dsc_files_pem_and_der(signer: SoftSigner, tmp_path: Path) -> None:
    der_path = tmp_path / "dsc.der"
    der_path.write_bytes(signer.dsc_der)
    pem_path = tmp_path / "dsc.pem"
    cert = x509.load_der_x509_certificate(signer.dsc_der)
    pem_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path in (der_path, pem_path):
        store = TrustStore.load(path)
        assert store.keys[0].kid == signer.kid
        assert verify(issue_one(signer), store, at=IAT).signature_valid


def test_dsc_rejected_by_cryptography_falls_back_to_asn1crypto(signer: SoftSigner) -> None:
    raw = bytearray(signer.dsc_der)
    version_field = raw.find(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))
    raw[version_field + 4] = 0x07
    odd = bytes(raw)
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_certificate(odd)
    info = parse_dsc(odd)
    assert info.strictly_parsed is False
    assert info.country == "VN"
    assert info.not_after == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    store = TrustStore([])
    store.add(TrustedKey(kid=signer.kid, public_key=info.public_key, dsc=info))
    assert verify(issue_one(signer), store, at=IAT).signature_valid


def test_explicit_curve_parameters_are_understood(signer: SoftSigner) -> None:
    cert = asn1_x509.Certificate.load(signer.dsc_der)
    spki = cert["tbs_certificate"]["subject_public_key_info"]
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    gx = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
    gy = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    specified = asn1_keys.SpecifiedECDomain(
        {
            "version": "ecdpVer1",
            "field_id": {"field_type": "prime_field", "parameters": p},
            "curve": {
                "a": (p - 3).to_bytes(32, "big"),
                "b": b.to_bytes(32, "big"),
            },
            "base": b"\x04" + gx.to_bytes(32, "big") + gy.to_bytes(32, "big"),
            "order": n,
            "cofactor": 1,
        }
    )
    explicit = asn1_keys.PublicKeyInfo(
        {
            "algorithm": {
                "algorithm": "ec",
                "parameters": asn1_keys.ECDomainParameters(name="specified", value=specified),
            },
            "public_key": spki["public_key"].native,
        }
    ).dump()
    key = public_key_from_spki(explicit)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.public_numbers() == signer.key.public_key().public_numbers()


def test_verify_does_not_import_hsm_or_grpc() -> None:
    code = (
        "import sys, signer.dcc, signer.dcc.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pkcs11', 'grpc')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_mutated_certificates_never_raise(signer: SoftSigner, trust: TrustStore) -> None:
    rng = random.Random(9285)
    original_bytes = decode_hc1(issue_one(signer))
    original = cose.parse_sign1(original_bytes)
    signed_parts = (original.protected, original.payload, original.signature)
    for _ in range(1000):
        data = bytearray(original_bytes)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        result = verify(encode_hc1(bytes(data)), trust, at=IAT)
        if result.signature_valid:
            mutated = cose.parse_sign1(bytes(data))
            assert (mutated.protected, mutated.payload, mutated.signature) == signed_parts
        else:
            assert result.error is not None
