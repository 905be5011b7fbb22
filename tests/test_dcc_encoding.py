"""base45, HC1 framing, ICAO name transliteration and UVCI check characters."""

import zlib

import pytest

from signer.dcc.base45 import b45decode, b45encode
from signer.dcc.errors import DccEncodingError
from signer.dcc.hc1 import decode_hc1, encode_hc1
from signer.dcc.names import TransliterationError, is_icao_name, transliterate, truncate_given_names
from signer.dcc.uvci import (
    UvciError,
    check_character,
    generate_uvci,
    is_valid_uvci,
    validate_uvci,
)

RFC9285_VECTORS = [
    (b"AB", "BB8"),
    (b"Hello!!", "%69 VD92EX0"),
    (b"base-45", "UJCLQE7W581"),
    (b"ietf!", "QED8WEX0"),
    (b"", ""),
]


@pytest.mark.parametrize(("raw", "encoded"), RFC9285_VECTORS)
def test_base45_rfc9285_vectors(raw: bytes, encoded: str) -> None:
    assert b45encode(raw) == encoded
    assert b45decode(encoded) == raw


def test_base45_round_trips_every_byte_value() -> None:
    data = bytes(range(256)) * 3 + b"\xff"
    assert b45decode(b45encode(data)) == data


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("GGW", "triplet"),  # 65535 + 1: RFC 9285 section 6 example of an invalid triplet
        ("ZZZ", "triplet"),
        ("A", "length"),
        ("ABCD", "length"),
        ("aB8", "character"),
        (":::", "triplet"),
    ],
)
def test_base45_refuses_invalid_input(text: str, reason: str) -> None:
    with pytest.raises(DccEncodingError, match=reason):
        b45decode(text)


def test_hc1_round_trip_uses_prefix_and_zlib() -> None:
    cose = b"\xd2\x84" + bytes(range(200))
    text = encode_hc1(cose)
    assert text.startswith("HC1:")
    assert zlib.decompress(b45decode(text[4:])) == cose
    assert decode_hc1(text) == cose


def test_hc1_tolerates_missing_prefix_whitespace_and_no_compression() -> None:
    cose = b"\xd2\x84\x43\xa1\x01\x26"
    assert decode_hc1("  " + encode_hc1(cose)[4:] + "\n") == cose
    assert decode_hc1("HC1:" + b45encode(cose)) == cose


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Nguyễn Văn Đức", "NGUYEN<VAN<DUC"),
        ("Đặng Thị Thu Hương", "DANG<THI<THU<HUONG"),
        ("đỗ mỹ linh", "DO<MY<LINH"),
        ("Huỳnh  Quốc-Bảo", "HUYNH<QUOC<BAO"),
        ("Ưng Hoàng Phúc", "UNG<HOANG<PHUC"),
        ("Müller-Lüdenscheidt", "MUELLER<LUEDENSCHEIDT"),
        ("Groß", "GROSS"),
        ("Ørsted Ærø", "OERSTED<AEROE"),
        ("Åsa", "AASA"),
        ("Þórunn", "THORUNN"),
        ("Łukasz Żółć", "LUKASZ<ZOLC"),
        ("O'Brien", "OBRIEN"),
        ("François", "FRANCOIS"),
        ("Peña", "PENA"),
        ("Nguye\u0302\u0303n", "NGUYEN"),  # decomposed input
    ],
)
def test_transliteration(name: str, expected: str) -> None:
    result = transliterate(name)
    assert result == expected
    assert is_icao_name(result)


@pytest.mark.parametrize("name", ["Иван", "王伟", "Nguyễn 3", "", " - "])
def test_transliteration_refuses(name: str) -> None:
    with pytest.raises(TransliterationError):
        transliterate(name)


def test_transliteration_is_never_cut_and_truncation_is_a_separate_rule() -> None:
    result = transliterate("Ä" * 50)
    assert result == "AE" * 50
    truncated = truncate_given_names(result)
    assert len(truncated) == 80
    assert is_icao_name(truncated)


@pytest.mark.parametrize(
    ("body", "check"),
    [
        # DCC schema FAQ / DIGG test vector, and check characters of published examples.
        ("URN:UVCI:01:NL:187/37512422923", "Z"),
        ("URN:UVCI:01:AT:10807843F94AEE0EE5093FBC254BD813", "B"),
        ("URN:UVCI:01:SE:EHM/V12916227TFJJ", "Q"),
    ],
)
def test_uvci_known_check_characters(body: str, check: str) -> None:
    assert check_character(body) == check
    validate_uvci(f"{body}#{check}")


def test_uvci_generation_round_trip() -> None:
    values = {generate_uvci("VN") for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert value.startswith("URN:UVCI:01:VN:")
        assert is_valid_uvci(value)
    with_block = generate_uvci("VN", issuer_block="MOH")
    assert with_block.startswith("URN:UVCI:01:VN:MOH/")
    assert is_valid_uvci(with_block)


def test_uvci_detects_every_single_character_change() -> None:
    uvci = generate_uvci("VN")
    body_end = uvci.index("#")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for position in range(len("URN:UVCI:01:VN:"), body_end):
        for replacement in alphabet:
            if replacement == uvci[position]:
                continue
            changed = uvci[:position] + replacement + uvci[position + 1 :]
            assert not is_valid_uvci(changed), changed


def test_uvci_validation_messages() -> None:
    with pytest.raises(UvciError, match="no check character"):
        validate_uvci("URN:UVCI:01:NL:187/37512422923")
    validate_uvci("URN:UVCI:01:NL:187/37512422923", require_check=False)
    with pytest.raises(UvciError, match="expected 'Z'"):
        validate_uvci("URN:UVCI:01:NL:187/37512422923#A", require_check=False)
    with pytest.raises(UvciError, match="form"):
        validate_uvci("URN:UVCI:01:nl:187#Z")
    with pytest.raises(UvciError, match="version"):
        validate_uvci("URN:UVCI:02:NL:187/37512422923#Z")
