"""check_dsc: a good DSC passes; each bad one is refused by the check that names its flaw."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from signer.errors import CertificateError, PolicyError
from signer.keys.csr import build_csr
from signer.keys.dsc_checks import DscLifetimeTooShort, check_dsc
from signer.keys.issuance import (
    issue_certificate,
    issue_dsc,
    issue_dsc_from_csr,
    issue_self_signed_csca,
)
from signer.keys.kid import kid_for_certificate
from signer.keys.names import build_name
from signer.keys.pem import certificate_pem
from signer.keys.profiles import eku_for_profile
from signer.sigformat import der_to_raw

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
SUBJECT = {"country_name": "VN", "organization_name": "Bo Y Te", "common_name": "DSC"}
CSCA_SUBJECT = {"country_name": "VN", "common_name": "VN Dev CSCA"}
VACCINATION = "1.3.6.1.4.1.1847.2021.1.2"
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
ANY_EKU = "2.5.29.37.0"

Signer = Callable[[bytes], bytes]


def software_key() -> tuple[ec.EllipticCurvePrivateKey, bytes, Signer]:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def sign(digest: bytes) -> bytes:
        return der_to_raw(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))

    return key, spki, sign


def make_csca(
    subject: dict[str, str] = CSCA_SUBJECT,
) -> tuple[ec.EllipticCurvePrivateKey, bytes, Signer]:
    key, spki, sign = software_key()
    der = issue_self_signed_csca(
        spki_der=spki,
        subject=subject,
        sign=sign,
        not_before=NOW - 3 * YEAR,
        not_after=NOW + 10 * YEAR,
    )
    return key, der, sign


class Setup:
    def __init__(self) -> None:
        self.csca_key, self.csca, self.csca_sign = make_csca()
        self.hsm_key, self.hsm_spki, _ = software_key()

    def dsc(
        self,
        *,
        not_before: datetime = NOW - timedelta(days=1),
        not_after: datetime = NOW + 2 * YEAR,
        ekus: tuple[str, ...] = (VACCINATION,),
        spki: bytes | None = None,
    ) -> bytes:
        return issue_dsc(
            csca_der=self.csca,
            csca_sign=self.csca_sign,
            subject_spki_der=spki or self.hsm_spki,
            subject_name_der=build_name(SUBJECT),
            not_before=not_before,
            not_after=not_after,
            extended_key_usages=ekus,
        )

    def check(self, dsc: bytes, profile: str = "vaccination", **kwargs: object) -> object:
        args: dict[str, object] = {"csca_der": self.csca, "min_remaining": YEAR}
        args.update(kwargs)
        return check_dsc(dsc, self.hsm_spki, profile, NOW, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def cryptography_dsc(
    setup: Setup,
    public_key: object,
    *,
    sign_with: object = None,
    aki: bytes | None = None,
    extensions: tuple[x509.ExtensionType, ...] = (),
    csca: bytes | None = None,
) -> bytes:
    """A certificate built by cryptography, for shapes signer's own issuer refuses to build.

    Issued by ``setup``'s CSCA unless ``csca`` (with its key in ``sign_with``) is given.
    """
    ca = x509.load_der_x509_certificate(csca or setup.csca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")]))
        .issuer_name(ca.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + 2 * YEAR)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    signer_key = sign_with or setup.csca_key
    cert = builder.sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER)


CSCA_KEY_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
"""keyCertSign and cRLSign, as the certificate governance asks of a CSCA."""


def cryptography_csca(
    key: CertificateIssuerPrivateKeyTypes,
    *,
    ca: bool = True,
    key_usage: x509.KeyUsage | None = CSCA_KEY_USAGE,
    not_before: datetime = NOW - 3 * YEAR,
    not_after: datetime = NOW + 10 * YEAR,
) -> bytes:
    """A self-signed CSCA certificate built by cryptography, for keys and shapes of any kind."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.COMMON_NAME, "VN Test CSCA"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def check_with_csca(setup: Setup, key: CertificateIssuerPrivateKeyTypes, csca: bytes) -> object:
    """Check a good DSC that ``key`` issued under ``csca``."""
    dsc = cryptography_dsc(setup, setup.hsm_key.public_key(), sign_with=key, csca=csca)
    return setup.check(dsc, csca_der=csca)


def test_good_dsc_is_accepted_with_its_facts(setup: Setup) -> None:
    dsc = setup.dsc()
    info = check_dsc(certificate_pem(dsc), setup.hsm_spki, "vaccination", NOW, setup.csca, YEAR)
    assert info.der == dsc
    assert info.kid == kid_for_certificate(dsc)
    assert info.country == "VN"
    assert "DSC" in info.subject and "VN Dev CSCA" in info.issuer
    assert info.spki_der == setup.hsm_spki
    assert info.ekus == (VACCINATION,)
    assert info.not_after == (NOW + 2 * YEAR).replace(microsecond=0)
    assert info.not_before == NOW - timedelta(days=1)


def test_dsc_without_eku_is_accepted_for_any_profile(setup: Setup) -> None:
    dsc = setup.dsc(ekus=())
    for profile in ("vaccination", "test", "recovery"):
        assert check_dsc(dsc, setup.hsm_spki, profile, NOW, None, YEAR).ekus == ()


def test_wrong_public_key_is_refused(setup: Setup) -> None:
    _key, other_spki, _sign = software_key()
    with pytest.raises(CertificateError, match=r"public key match check failed"):
        setup.check(setup.dsc(spki=other_spki))


def test_expired_dsc_is_refused(setup: Setup) -> None:
    dsc = setup.dsc(not_before=NOW - 2 * YEAR, not_after=NOW - timedelta(days=1))
    with pytest.raises(CertificateError, match=r"validity check failed: the DSC expired"):
        setup.check(dsc)


def test_not_yet_valid_dsc_is_refused(setup: Setup) -> None:
    dsc = setup.dsc(not_before=NOW + timedelta(days=1))
    with pytest.raises(CertificateError, match=r"validity check failed: the DSC is not valid yet"):
        setup.check(dsc)


def test_too_short_remaining_lifetime_is_refused_but_enough_passes(setup: Setup) -> None:
    dsc = setup.dsc(not_after=NOW + YEAR - timedelta(days=1))
    with pytest.raises(DscLifetimeTooShort, match=r"remaining lifetime check failed"):
        setup.check(dsc)
    assert setup.check(dsc, min_remaining=YEAR - timedelta(days=2))


def test_p384_certificate_is_refused(setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    dsc = cryptography_dsc(setup, key.public_key())
    with pytest.raises(CertificateError, match=r"public key algorithm check failed.*secp384r1"):
        setup.check(dsc)


def test_rsa_certificate_is_refused(setup: Setup) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dsc = cryptography_dsc(setup, key.public_key())
    with pytest.raises(CertificateError, match=r"public key algorithm check failed.*RSA"):
        setup.check(dsc)


def test_missing_digital_signature_is_refused(setup: Setup) -> None:
    dsc = issue_certificate(
        subject_name_der=build_name(SUBJECT),
        subject_spki_der=setup.hsm_spki,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + 2 * YEAR,
        sign=setup.csca_sign,
        issuer_certificate_der=setup.csca,
        is_ca=False,
        key_usage={"key_agreement"},
    )
    with pytest.raises(CertificateError, match=r"keyUsage check failed"):
        setup.check(dsc)


def test_missing_country_is_refused(setup: Setup) -> None:
    dsc = issue_certificate(
        subject_name_der=build_name({"common_name": "no country"}),
        subject_spki_der=setup.hsm_spki,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + 2 * YEAR,
        sign=setup.csca_sign,
        issuer_certificate_der=setup.csca,
        is_ca=False,
        key_usage={"digital_signature"},
    )
    with pytest.raises(CertificateError, match=r"subject country check failed"):
        setup.check(dsc)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"],
)
def test_garbage_is_refused(setup: Setup, data: bytes) -> None:
    with pytest.raises(CertificateError, match=r"parse check failed"):
        setup.check(data)


@pytest.mark.parametrize(
    ("eku", "profile"),
    [
        ("1.3.6.1.4.1.1847.2021.1.1", "vaccination"),
        ("1.3.6.1.4.1.1847.2021.1.2", "test"),
        ("1.3.6.1.4.1.1847.2021.1.3", "vaccination"),
        ("1.3.6.1.4.1.0.1847.2021.1.1", "recovery"),
    ],
)
def test_eku_for_another_profile_is_refused(setup: Setup, eku: str, profile: str) -> None:
    with pytest.raises(CertificateError, match=r"extended key usage check failed"):
        setup.check(setup.dsc(ekus=(eku,)), profile)


@pytest.mark.parametrize(
    ("eku", "profile"),
    [
        ("1.3.6.1.4.1.1847.2021.1.1", "test"),
        ("1.3.6.1.4.1.1847.2021.1.3", "recovery"),
        ("1.3.6.1.4.1.0.1847.2021.1.2", "vaccination"),
        ("1.3.6.1.4.1.1847.2021.0.2", "vaccination"),
        ("1.3.6.1.4.1.1847.2021.0.1", "test"),
    ],
)
def test_matching_eku_in_current_and_old_forms_is_accepted(
    setup: Setup, eku: str, profile: str
) -> None:
    assert setup.check(setup.dsc(ekus=(eku,)), profile)


def test_dsc_for_several_dcc_profiles_is_accepted_for_those_only(setup: Setup) -> None:
    dsc = setup.dsc(ekus=("1.3.6.1.4.1.1847.2021.1.1", VACCINATION))
    assert setup.check(dsc, "test")
    assert setup.check(dsc, "vaccination")
    with pytest.raises(CertificateError, match=r"extended key usage check failed"):
        setup.check(dsc, "recovery")


@pytest.mark.parametrize(
    ("ekus", "named"),
    [
        ((SERVER_AUTH,), r"server_auth \(1\.3\.6\.1\.5\.5\.7\.3\.1\)"),
        ((ANY_EKU,), r"any_extended_key_usage \(2\.5\.29\.37\.0\)"),
        ((VACCINATION, SERVER_AUTH), r"server_auth"),
        ((ANY_EKU, VACCINATION), r"any_extended_key_usage"),
        (("1.3.6.1.4.1.0.1847.2021.1.2", "1.3.6.1.5.5.7.3.4"), r"email_protection"),
        ((VACCINATION, "1.3.6.1.4.1.1847.2021.1.9"), r"1\.3\.6\.1\.4\.1\.1847\.2021\.1\.9"),
    ],
)
def test_foreign_eku_is_refused_even_beside_the_right_dcc_eku(
    setup: Setup, ekus: tuple[str, ...], named: str
) -> None:
    with pytest.raises(
        CertificateError, match=rf"extended key usage check failed: the DSC allows {named}"
    ):
        setup.check(setup.dsc(ekus=ekus))


def test_empty_eku_extension_is_refused(setup: Setup) -> None:
    dsc = cryptography_dsc(
        setup, setup.hsm_key.public_key(), extensions=(x509.ExtendedKeyUsage([]),)
    )
    with pytest.raises(CertificateError, match=r"extended key usage check failed: .* is empty"):
        setup.check(dsc)


def test_dsc_with_ca_true_is_refused(setup: Setup) -> None:
    dsc = issue_certificate(
        subject_name_der=build_name(SUBJECT),
        subject_spki_der=setup.hsm_spki,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + 2 * YEAR,
        sign=setup.csca_sign,
        issuer_certificate_der=setup.csca,
        is_ca=True,
        key_usage={"digital_signature"},
    )
    with pytest.raises(CertificateError, match=r"basicConstraints check failed: .*CA:true"):
        setup.check(dsc)


def test_dsc_with_ca_false_is_accepted(setup: Setup) -> None:
    dsc = cryptography_dsc(
        setup,
        setup.hsm_key.public_key(),
        extensions=(x509.BasicConstraints(ca=False, path_length=None),),
    )
    assert setup.check(dsc)


@pytest.mark.parametrize(
    ("usages", "named"),
    [
        ({"key_cert_sign"}, "keyCertSign"),
        ({"crl_sign"}, "cRLSign"),
        ({"key_cert_sign", "crl_sign"}, "keyCertSign, cRLSign"),
    ],
)
def test_dsc_with_ca_key_usage_is_refused(setup: Setup, usages: set[str], named: str) -> None:
    dsc = issue_certificate(
        subject_name_der=build_name(SUBJECT),
        subject_spki_der=setup.hsm_spki,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + 2 * YEAR,
        sign=setup.csca_sign,
        issuer_certificate_der=setup.csca,
        is_ca=False,
        key_usage={"digital_signature", *usages},
    )
    with pytest.raises(CertificateError, match=rf"keyUsage check failed: .* allows {named},"):
        setup.check(dsc)


@pytest.mark.parametrize("profile", ["vaccination", "test", "recovery"])
def test_dev_issued_dsc_from_csr_passes(setup: Setup, profile: str) -> None:
    _key, spki, sign = software_key()
    dsc = issue_dsc_from_csr(
        csca_der=setup.csca,
        csca_sign=setup.csca_sign,
        csr=build_csr(spki, SUBJECT, sign),
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + 2 * YEAR,
        extended_key_usages=(eku_for_profile(profile),),
    )
    info = check_dsc(dsc, spki, profile, NOW, setup.csca, YEAR)
    assert info.ekus == (eku_for_profile(profile),)


def test_unknown_profile_is_refused(setup: Setup) -> None:
    with pytest.raises(PolicyError, match=r"unknown profile 'booster'"):
        setup.check(setup.dsc(), "booster")


def test_csca_with_other_name_is_refused(setup: Setup) -> None:
    _key, other_csca, _sign = make_csca({"country_name": "FR", "common_name": "FR CSCA"})
    with pytest.raises(CertificateError, match=r"issuer name check failed"):
        setup.check(setup.dsc(), csca_der=other_csca)


def test_csca_with_same_name_but_other_key_is_refused(setup: Setup) -> None:
    _key, impostor, _sign = make_csca()
    with pytest.raises(CertificateError, match=r"CSCA signature check failed"):
        setup.check(setup.dsc(), csca_der=impostor)


def test_csca_that_is_not_a_ca_is_refused(setup: Setup) -> None:
    not_ca = setup.dsc()
    with pytest.raises(CertificateError, match=r"CSCA basicConstraints check failed: .* not a CA"):
        setup.check(setup.dsc(), csca_der=not_ca)


def test_garbage_csca_is_refused(setup: Setup) -> None:
    with pytest.raises(CertificateError, match=r"CSCA certificate parse check failed"):
        setup.check(setup.dsc(), csca_der=b"junk")


def test_aki_not_matching_csca_ski_is_refused(setup: Setup) -> None:
    good = cryptography_dsc(setup, setup.hsm_key.public_key())
    assert setup.check(good)
    dsc = cryptography_dsc(setup, setup.hsm_key.public_key(), aki=b"\x01" * 20)
    with pytest.raises(CertificateError, match=r"authority key identifier check failed"):
        setup.check(dsc)


def test_no_csca_skips_issuer_checks(setup: Setup) -> None:
    _key, impostor, impostor_sign = make_csca()
    dsc = issue_dsc(
        csca_der=impostor,
        csca_sign=impostor_sign,
        subject_spki_der=setup.hsm_spki,
        subject_name_der=build_name(SUBJECT),
        not_before=NOW - timedelta(days=1),
        not_after=NOW + 2 * YEAR,
    )
    assert setup.check(dsc, csca_der=None)
    with pytest.raises(CertificateError, match=r"CSCA signature check failed"):
        setup.check(dsc)


@pytest.fixture(scope="module")
def rsa_3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def test_csca_with_p384_or_large_rsa_key_is_accepted(
    setup: Setup, rsa_3072: rsa.RSAPrivateKey
) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    brainpool = ec.generate_private_key(ec.BrainpoolP256R1())
    for key in (p256, p384, brainpool, rsa_3072):
        assert check_with_csca(setup, key, cryptography_csca(key))


@pytest.mark.parametrize(
    ("make_key", "named"),
    [
        pytest.param(
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "RSA 2048-bit",
            id="rsa-2048",
        ),
        pytest.param(
            lambda: rsa.generate_private_key(public_exponent=3, key_size=3072),
            "RSA 3072-bit",
            id="rsa-3072-exponent-3",
        ),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), "EC secp256k1", id="k1"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP224R1()), "EC secp224r1", id="p224"),
    ],
)
def test_csca_with_weak_or_unusual_key_is_refused(
    setup: Setup, make_key: Callable[[], CertificateIssuerPrivateKeyTypes], named: str
) -> None:
    key = make_key()
    with pytest.raises(
        CertificateError,
        match=rf"CSCA public key check failed: .* holds a {named} key, .*\[keys\] csca_cert",
    ):
        check_with_csca(setup, key, cryptography_csca(key))


def test_csca_without_ca_true_is_refused(setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(
        CertificateError,
        match=r"CSCA basicConstraints check failed: .* not a CA .*\[keys\] csca_cert",
    ):
        check_with_csca(setup, key, cryptography_csca(key, ca=False))


@pytest.mark.parametrize(
    "key_usage",
    [None, x509.KeyUsage(True, False, False, False, False, False, True, False, False)],
)
def test_csca_without_key_cert_sign_is_refused(
    setup: Setup, key_usage: x509.KeyUsage | None
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(
        CertificateError,
        match=r"CSCA keyUsage check failed: .* lacks keyCertSign.*\[keys\] csca_cert",
    ):
        check_with_csca(setup, key, cryptography_csca(key, key_usage=key_usage))


def test_expired_csca_is_refused(setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csca = cryptography_csca(key, not_before=NOW - 5 * YEAR, not_after=NOW - timedelta(days=1))
    with pytest.raises(
        CertificateError,
        match=r"CSCA validity check failed: the CSCA certificate expired at 2026-01-14T12:00:00"
        r"\+00:00; .*\[keys\] csca_cert",
    ):
        check_with_csca(setup, key, csca)


def test_not_yet_valid_csca_is_refused(setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csca = cryptography_csca(key, not_before=NOW + timedelta(days=1))
    with pytest.raises(
        CertificateError,
        match=r"CSCA validity check failed: the CSCA certificate is not valid yet .*"
        r"\[keys\] csca_cert",
    ):
        check_with_csca(setup, key, csca)
