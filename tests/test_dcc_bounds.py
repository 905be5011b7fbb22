"""Bounded decoding of untrusted DCC input: HC1 length, zlib output, CBOR shape, trust files.

Pure and fast: software keys, no token, no daemon. Each hostile input is built here, and each
refusal is checked by its error type and by the limit its message names.
"""

import datetime as dt
import io
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from signer.dcc import cose
from signer.dcc.base45 import b45encode
from signer.dcc.cbor_bounds import check_cbor
from signer.dcc.cwt import decode_claims
from signer.dcc.dsc import kid_of
from signer.dcc.errors import DccEncodingError, DccTrustError
from signer.dcc.hc1 import PREFIX, decode_hc1, encode_hc1, hc1_lines, inflate
from signer.dcc.issue import issue
from signer.dcc.limits import (
    MAX_CBOR_DEPTH,
    MAX_CBOR_ITEMS,
    MAX_COSE_BYTES,
    MAX_HC1_CHARS,
    MAX_TRUST_FILE_BYTES,
)
from signer.dcc.trust import TrustStore
from signer.dcc.verify import verify
from signer.sigformat import der_to_raw

ROOT = Path(__file__).resolve().parent.parent
IAT = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp())
DAY = 86400
ADDRESS_SPACE_LIMIT = 300 * 2**20


class SoftSigner:
    """A software ES256 key with a self-signed DSC, standing in for the daemon."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Bounds test DSC"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            .sign(self.key, hashes.SHA256())
        )
        self.dsc_der = cert.public_bytes(serialization.Encoding.DER)
        self.dsc_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.kid = kid_of(self.dsc_der)

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))
        return [der_to_raw(self.key.sign(d, algorithm)) for d in digests]

    def sign1(self, payload: bytes, *, tag: int | None = cose.TAG_SIGN1) -> bytes:
        """A COSE_Sign1 over ``payload`` with this key, as CBOR bytes."""
        protected = cose.protected_header(self.kid)
        signature = self.sign("", self.kid, [cose.sig_structure_digest(protected, payload)])[0]
        body: Any = [protected, {}, payload, signature]
        return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


@pytest.fixture(scope="module")
def signer() -> SoftSigner:
    return SoftSigner()


@pytest.fixture(scope="module")
def trust(signer: SoftSigner) -> TrustStore:
    return TrustStore.from_dsc(signer.dsc_der)


def records() -> list[dict[str, Any]]:
    lines = (ROOT / "examples" / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def zeros_bomb(mebibytes: int) -> bytes:
    """A zlib stream that inflates to ``mebibytes`` MiB of zeros, built without holding them."""
    compressor = zlib.compressobj(9)
    chunk = bytes(2**20)
    parts = [compressor.compress(chunk) for _ in range(mebibytes)]
    return b"".join([*parts, compressor.flush()])


def claims(hcert: Any) -> bytes:
    return cbor2.dumps({1: "VN", 4: IAT + 365 * DAY, 6: IAT, -260: {1: hcert}})


# --- real certificates still verify ----------------------------------------------------------


def test_issued_certificates_verify_within_the_limits(
    signer: SoftSigner, trust: TrustStore
) -> None:
    hc1s = issue(
        records(),
        signer,
        signer.kid,
        issuer_country="VN",
        dsc_not_after=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        iat=IAT,
    )
    assert len(hc1s) == 20
    for hc1 in hc1s:
        result = verify(hc1, trust, at=IAT + DAY)
        assert result.acceptable, result.error
        assert result.payload is not None and result.payload["nam"]["fnt"]


def streamed_claims() -> bytes:
    """Claims as a streaming encoder writes them: indefinite-length maps and a chunked name."""
    item = cbor2.dumps
    return b"".join(
        [
            b"\xbf",  # claims map, indefinite length
            *(item(x) for x in (1, "VN", 4, IAT + 365 * DAY, 6, IAT, -260)),
            b"\xa1\x01\xbf",  # a map {1: HCERT}, the HCERT map of indefinite length
            item("nam"),
            b"\xa1" + item("fnt") + b"\x7f\x62TE\x62ST\xff",  # {"fnt": "TE" "ST"}
            b"\xff\xff",  # end of the HCERT map, end of the claims map
        ]
    )


def test_indefinite_lengths_from_streaming_encoders_still_verify(
    signer: SoftSigner, trust: TrustStore
) -> None:
    result = verify(encode_hc1(signer.sign1(streamed_claims())), trust, at=IAT + DAY)
    assert result.acceptable, result.error
    assert result.payload == {"nam": {"fnt": "TEST"}}
    assert result.exp == IAT + 365 * DAY


def test_cwt_wrapped_and_untagged_cose_still_parse(signer: SoftSigner) -> None:
    payload = claims({"v": []})
    cwt = cbor2.dumps(cbor2.CBORTag(cose.TAG_CWT, cbor2.loads(signer.sign1(payload))))
    for data in (cwt, signer.sign1(payload, tag=None)):
        assert cose.parse_sign1(data).payload == payload


# --- HC1 text length -------------------------------------------------------------------------


def test_oversized_hc1_text_is_refused_before_base45_decoding() -> None:
    # Lower-case letters are not base45: had decoding started, the error would name them.
    text = PREFIX + "a" * 25_000_000
    with pytest.raises(DccEncodingError) as refused:
        decode_hc1(text)
    message = str(refused.value)
    assert f"{len(text)} characters" in message
    assert f"limit of {MAX_HC1_CHARS}" in message
    assert "invalid character" not in message


def test_hc1_text_at_the_limit_is_decoded() -> None:
    cose_bytes = b"\xd2\x84" + bytes(range(256)) * 21
    text = PREFIX + b45encode(cose_bytes)
    padded = text + " " * (MAX_HC1_CHARS - len(text))
    assert len(padded) == MAX_HC1_CHARS
    assert decode_hc1(padded) == cose_bytes
    with pytest.raises(DccEncodingError, match=f"limit of {MAX_HC1_CHARS}"):
        decode_hc1(padded + " ")


def test_verify_reports_the_length_refusal(trust: TrustStore) -> None:
    result = verify(PREFIX + "0" * (3 * MAX_HC1_CHARS), trust)
    assert result.signature_valid is False
    assert result.error is not None and f"limit of {MAX_HC1_CHARS}" in result.error


def test_stdin_lines_are_read_in_bounded_pieces() -> None:
    long_line = "HC1:" + "A" * 1_000_000
    stream = io.StringIO(f"  HC1:ONE \n\n{long_line}\nHC1:TWO")
    lines = list(hc1_lines(stream))
    assert lines[0] == "HC1:ONE"
    assert lines[1] == long_line[: MAX_HC1_CHARS + 1]
    assert lines[2] == "HC1:TWO"
    with pytest.raises(DccEncodingError, match=f"limit of {MAX_HC1_CHARS}"):
        decode_hc1(lines[1])


# --- zlib ------------------------------------------------------------------------------------


def test_zlib_bomb_inside_hc1_is_refused(signer: SoftSigner, trust: TrustStore) -> None:
    bomb_cose = signer.sign1(claims({"padding": bytes(4 * 2**20)}))
    hc1 = encode_hc1(bomb_cose)
    assert len(hc1) <= MAX_HC1_CHARS, "the bomb must get past the length check"
    with pytest.raises(DccEncodingError, match=f"more than the limit of {MAX_COSE_BYTES} bytes"):
        decode_hc1(hc1)
    result = verify(hc1, trust, at=IAT)
    assert result.signature_valid is False
    assert result.error is not None and "decompression bomb" in result.error


def test_inflate_allows_exactly_the_limit_and_refuses_one_more() -> None:
    assert inflate(zlib.compress(bytes(MAX_COSE_BYTES))) == bytes(MAX_COSE_BYTES)
    with pytest.raises(DccEncodingError, match="decompression bomb"):
        inflate(zlib.compress(bytes(MAX_COSE_BYTES + 1)))


def test_inflate_refuses_truncated_streams_and_trailing_bytes() -> None:
    stream = zlib.compress(b"\xd2\x84" + bytes(range(200)))
    with pytest.raises(DccEncodingError, match="incomplete or truncated"):
        inflate(stream[:-4])
    with pytest.raises(DccEncodingError, match="3 bytes after the end"):
        inflate(stream + b"xyz")
    with pytest.raises(DccEncodingError, match="zlib"):
        decode_hc1(PREFIX + b45encode(stream + b"xyz"))


BOMB_CHILD = """
import resource, sys, zlib
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from signer.dcc.base45 import b45encode
from signer.dcc.errors import DccEncodingError
from signer.dcc.hc1 import decode_hc1, inflate
bomb = open(sys.argv[1], "rb").read()

def attempt(name, decode):
    try:
        decode()
        print(name, "decoded")
    except DccEncodingError as exc:
        print(name, "refused:", exc)
    except MemoryError:
        print(name, "MemoryError")

attempt("hc1", lambda: decode_hc1("HC1:" + b45encode(bomb)))
attempt("inflate", lambda: inflate(bomb))
attempt("zlib.decompress", lambda: zlib.decompress(bomb))
"""


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def test_bomb_is_refused_within_a_bounded_address_space(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zlib"
    bomb.write_bytes(zeros_bomb(512))
    child = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD.format(limit=ADDRESS_SPACE_LIMIT), str(bomb)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    assert child.returncode == 0, child.stderr
    hc1, inflated, control = child.stdout.splitlines()
    assert hc1.startswith("hc1 refused: HC1 text has") and f"limit of {MAX_HC1_CHARS}" in hc1
    assert inflated.startswith("inflate refused: zlib:")
    assert f"limit of {MAX_COSE_BYTES} bytes" in inflated
    # The control: unbounded inflating of the same bytes does not fit in this address space.
    assert control == "zlib.decompress MemoryError"


# --- CBOR ------------------------------------------------------------------------------------


def test_deeply_nested_payload_is_refused(signer: SoftSigner, trust: TrustStore) -> None:
    nested = b"\x81" * 10_000 + b"\x00"
    with pytest.raises(DccEncodingError, match=f"deeper than the limit of {MAX_CBOR_DEPTH}"):
        decode_claims(nested)
    result = verify(encode_hc1(signer.sign1(nested)), trust, at=IAT)
    assert result.signature_valid is True
    assert result.error is not None and f"limit of {MAX_CBOR_DEPTH} levels" in result.error
    assert result.payload is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x81" * 10_000 + b"\x00",  # nested arrays
        b"\xd2" * 10_000 + b"\x80",  # COSE tag 18, nested
        b"\x9f" * 10_000 + b"\xff" * 10_000,  # indefinite-length arrays
    ],
)
def test_deeply_nested_cose_is_refused(data: bytes) -> None:
    with pytest.raises(DccEncodingError, match=f"deeper than the limit of {MAX_CBOR_DEPTH}"):
        cose.parse_sign1(data)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    check_cbor(b"\x81" * MAX_CBOR_DEPTH + b"\x00", "test")
    with pytest.raises(DccEncodingError, match="deeper"):
        check_cbor(b"\x81" * (MAX_CBOR_DEPTH + 1) + b"\x00", "test")


def test_too_many_items_are_refused() -> None:
    wide = cbor2.dumps({1: "VN", -260: {1: {"v": list(range(MAX_CBOR_ITEMS))}}})
    assert len(wide) <= MAX_COSE_BYTES
    with pytest.raises(DccEncodingError, match=f"more than {MAX_CBOR_ITEMS} CBOR items"):
        decode_claims(wide)


def test_oversized_cbor_is_refused_unread() -> None:
    data = cbor2.dumps([bytes(MAX_COSE_BYTES)])
    with pytest.raises(DccEncodingError, match=f"{len(data)} bytes, over the limit"):
        cose.parse_sign1(data)


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        (b"\xa1\x01\xd8\x1c\x81\xd8\x1d\x00", "tag 28"),  # shared reference: a cycle
        (cbor2.dumps({4: 2**100}), "tag 2"),  # bignum
        (cbor2.dumps({6: cbor2.CBORTag(1, IAT)}), "tag 1"),  # tagged time
        (cbor2.dumps({-260: {1: cbor2.CBORTag(cose.TAG_SIGN1, [])}}), "tag 18"),
        (b"\xa1\x01\xf7", "simple value 23"),  # undefined
        (b"\xa1\x01\xf8\x80", "simple value 128"),
    ],
)
def test_tags_and_simple_values_a_dcc_never_holds_are_refused(payload: bytes, found: str) -> None:
    with pytest.raises(DccEncodingError, match=found):
        decode_claims(payload)


def test_tags_inside_the_cose_array_are_refused(signer: SoftSigner) -> None:
    protected, _, payload, signature = cbor2.loads(signer.sign1(claims({}))).value
    unprotected = {4: cbor2.CBORTag(cose.TAG_CWT, signer.kid)}
    message = cbor2.CBORTag(cose.TAG_SIGN1, [protected, unprotected, payload, signature])
    with pytest.raises(DccEncodingError, match="tag 61 at byte"):
        cose.parse_sign1(cbor2.dumps(message))


def test_bytes_after_the_cose_message_are_refused(signer: SoftSigner) -> None:
    with pytest.raises(DccEncodingError, match=r"trailing data \(2 bytes\)"):
        cose.parse_sign1(signer.sign1(claims({})) + b"\x00\x00")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x9b" + b"\xff" * 8, "items announced"),  # an array of 2**64-1 items
        (b"\x5b" + b"\xff" * 8, "truncated string"),  # a byte string of 2**64-1 bytes
        (b"\xbf\x01\xff", "map key without a value"),
        (b"\x5f\x01\xff", "bad chunk"),
        (b"\x1c", "reserved"),
        (b"\xff", "unexpected break"),
        (b"\x9f\x01", "truncated"),  # no break
    ],
)
def test_malformed_cbor_is_refused_before_decoding(data: bytes, problem: str) -> None:
    with pytest.raises(DccEncodingError, match=problem):
        check_cbor(data, "test")


# --- trust files -----------------------------------------------------------------------------


def test_oversized_trust_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    with path.open("wb") as file:
        file.write(b"[")
        file.truncate(MAX_TRUST_FILE_BYTES + 1)
    with pytest.raises(DccTrustError, match=f"limit of {MAX_TRUST_FILE_BYTES} bytes"):
        TrustStore.load(path)


def test_deeply_nested_trust_list_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text("[" * 200_000 + "]" * 200_000, encoding="ascii")
    with pytest.raises(DccTrustError, match="nested too deeply"):
        TrustStore.load(path)


# --- the command line ------------------------------------------------------------------------


def test_cli_verify_refuses_a_bomb_file_on_stdin(signer: SoftSigner, tmp_path: Path) -> None:
    dsc = tmp_path / "dsc.pem"
    dsc.write_bytes(signer.dsc_pem)
    bomb = tmp_path / "bomb.txt"
    bomb.write_text(encode_hc1(signer.sign1(claims({"x": bytes(4 * 2**20)}))) + "\n")
    oversized = tmp_path / "oversized.txt"
    oversized.write_text(PREFIX + "0" * 25_000_000 + "\n")
    for path, limit in ((bomb, MAX_COSE_BYTES), (oversized, MAX_HC1_CHARS)):
        with path.open("rb") as stdin:
            done = subprocess.run(
                [sys.executable, "-m", "signer.cli", "dcc", "verify", "--cert", str(dsc), "-"],
                stdin=stdin,
                capture_output=True,
                text=True,
                env=child_env(),
                check=False,
            )
        assert done.returncode != 0
        mentions = [line for line in (done.stdout + done.stderr).splitlines() if str(limit) in line]
        assert len(mentions) == 1, (done.stdout, done.stderr)
