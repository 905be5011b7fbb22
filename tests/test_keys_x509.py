"""CSR building, dev CSCA and DSC issuance, PEM helpers and kid, checked by independent tools."""

import hashlib
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from signer.errors import CertificateError, SignerError
from signer.keys.csr import build_csr, verify_csr
from signer.keys.issuance import (
    issue_dsc,
    issue_dsc_from_csr,
    issue_self_signed_csca,
    random_serial_number,
)
from signer.keys.kid import kid_for_certificate
from signer.keys.names import build_name
from signer.keys.pem import certificate_der, certificate_pem, csr_der, csr_pem
from signer.keys.profiles import eku_for_profile
from signer.sigformat import der_to_raw

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
DSC_SUBJECT = {"country_name": "VN", "organization_name": "Bo Y Te", "common_name": "DSC 1"}


def software_key() -> tuple[ec.EllipticCurvePrivateKey, bytes, Callable[[bytes], bytes]]:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def sign(digest: bytes) -> bytes:
        assert len(digest) == 32
        return der_to_raw(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))

    return key, spki, sign


def dev_csca() -> tuple[bytes, Callable[[bytes], bytes]]:
    _key, spki, sign = software_key()
    csca = issue_self_signed_csca(
        spki_der=spki,
        subject={"country_name": "VN", "common_name": "VN Dev CSCA"},
        sign=sign,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=3650),
    )
    return csca, sign


def test_kid_is_first_8_bytes_of_sha256_of_der() -> None:
    csca, _ = dev_csca()
    kid = kid_for_certificate(csca)
    assert len(kid) == 8
    assert kid == hashlib.sha256(csca).digest()[:8]
    assert kid != kid_for_certificate(csca + b"\x00")


def test_csr_verifies_with_cryptography_and_carries_key_and_subject() -> None:
    key, spki, sign = software_key()
    der = build_csr(spki, DSC_SUBJECT, sign)
    request = x509.load_der_x509_csr(der)
    assert request.is_signature_valid
    assert request.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert request.public_key() == key.public_key()
    assert request.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "VN"
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "DSC 1"


def test_csr_verifies_with_openssl(tmp_path: Path) -> None:
    _key, spki, sign = software_key()
    path = tmp_path / "req.der"
    path.write_bytes(build_csr(spki, DSC_SUBJECT, sign))
    result = subprocess.run(
        ["openssl", "req", "-verify", "-inform", "DER", "-in", str(path), "-noout"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr


def test_csr_with_another_signing_key_is_refused() -> None:
    _key, spki, _sign = software_key()
    _other, _other_spki, other_sign = software_key()
    with pytest.raises(CertificateError, match=r"CSR signature check"):
        build_csr(spki, DSC_SUBJECT, other_sign)


def test_sign_callable_returning_der_instead_of_raw_is_refused() -> None:
    key, spki, _sign = software_key()

    def der_sign(digest: bytes) -> bytes:
        return key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    with pytest.raises(SignerError, match=r"signing check failed"):
        build_csr(spki, DSC_SUBJECT, der_sign)


def test_csr_for_non_p256_key_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(CertificateError, match=r"public key algorithm check.*secp384r1"):
        build_csr(spki, DSC_SUBJECT, lambda d: b"\x00" * 64)


def test_bad_country_in_subject_is_refused() -> None:
    _key, spki, sign = software_key()
    with pytest.raises(CertificateError, match=r"subject check failed.*alpha-2"):
        build_csr(spki, {"country_name": "Vietnam", "common_name": "x"}, sign)


def test_verify_csr_returns_key_and_subject_and_refuses_tampering() -> None:
    _key, spki, sign = software_key()
    der = build_csr(spki, DSC_SUBJECT, sign)
    info = verify_csr(csr_pem(der))
    assert info.spki_der == spki
    assert info.country == "VN"
    assert "DSC 1" in info.subject
    assert info.der == der
    tampered = der.replace(b"DSC 1", b"DSC 2")
    assert tampered != der
    with pytest.raises(CertificateError, match=r"CSR signature check"):
        verify_csr(tampered)


def test_dev_csca_is_a_self_signed_ca() -> None:
    csca, _ = dev_csca()
    cert = x509.load_der_x509_certificate(csca)
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def test_dsc_from_csr_is_issued_by_csca_with_dcc_profile(tmp_path: Path) -> None:
    csca, csca_sign = dev_csca()
    key, spki, sign = software_key()
    dsc = issue_dsc_from_csr(
        csca_der=csca,
        csca_sign=csca_sign,
        csr=build_csr(spki, DSC_SUBJECT, sign),
        not_before=NOW,
        not_after=NOW + timedelta(days=730),
        extended_key_usages=[eku_for_profile("vaccination")],
    )
    cert = x509.load_der_x509_certificate(dsc)
    ca = x509.load_der_x509_certificate(csca)
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "VN"
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [oid.dotted_string for oid in eku] == ["1.3.6.1.4.1.1847.2021.1.2"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=730)
    assert cert.serial_number > 0
    assert len(cert.serial_number.to_bytes(16, "big")) == 16

    (tmp_path / "ca.pem").write_bytes(certificate_pem(csca))
    (tmp_path / "dsc.pem").write_bytes(certificate_pem(dsc))
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-attime",
            str(int((NOW + timedelta(days=1)).timestamp())),
            "-CAfile",
            str(tmp_path / "ca.pem"),
            str(tmp_path / "dsc.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dsc_without_country_is_refused() -> None:
    csca, csca_sign = dev_csca()
    _key, spki, _sign = software_key()
    with pytest.raises(CertificateError, match=r"subject country check"):
        issue_dsc(
            csca_der=csca,
            csca_sign=csca_sign,
            subject_spki_der=spki,
            subject_name_der=build_name({"common_name": "no country"}),
            not_before=NOW,
            not_after=NOW + timedelta(days=730),
        )


def test_dsc_outliving_csca_is_refused() -> None:
    csca, csca_sign = dev_csca()
    _key, spki, _sign = software_key()
    with pytest.raises(CertificateError, match=r"issuer validity check"):
        issue_dsc(
            csca_der=csca,
            csca_sign=csca_sign,
            subject_spki_der=spki,
            subject_name_der=build_name(DSC_SUBJECT),
            not_before=NOW,
            not_after=NOW + timedelta(days=4000),
        )


def test_dsc_signed_with_a_key_other_than_the_csca_is_refused() -> None:
    csca, _csca_sign = dev_csca()
    _key, spki, sign = software_key()
    with pytest.raises(CertificateError, match=r"issuer signature check"):
        issue_dsc(
            csca_der=csca,
            csca_sign=sign,
            subject_spki_der=spki,
            subject_name_der=build_name(DSC_SUBJECT),
            not_before=NOW,
            not_after=NOW + timedelta(days=730),
        )


def test_serial_numbers_are_positive_16_byte_and_distinct() -> None:
    serials = {random_serial_number() for _ in range(50)}
    assert len(serials) == 50
    assert all(s.bit_length() == 127 for s in serials)


def test_pem_and_der_read_the_same_certificate() -> None:
    csca, _ = dev_csca()
    assert certificate_der(csca) == csca
    assert certificate_der(certificate_pem(csca)) == csca


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello world",
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        b"\x30\x03\x02\x01\x01",
    ],
)
def test_garbage_is_refused_as_certificate(garbage: bytes) -> None:
    with pytest.raises(CertificateError, match=r"parse check failed"):
        certificate_der(garbage)


def test_truncated_trailing_and_wrong_pem_type_are_refused() -> None:
    csca, _ = dev_csca()
    with pytest.raises(CertificateError, match=r"parse check failed"):
        certificate_der(csca[:-10])
    with pytest.raises(CertificateError, match=r"parse check failed"):
        certificate_der(csca + b"\x00")
    with pytest.raises(CertificateError, match=r"PEM block is a 'CERTIFICATE REQUEST'"):
        certificate_der(csr_pem(csca))
    with pytest.raises(CertificateError, match=r"2 blocks"):
        certificate_der(certificate_pem(csca) + certificate_pem(csca))
    with pytest.raises(CertificateError, match=r"CSR parse check failed"):
        csr_der(b"nonsense")
