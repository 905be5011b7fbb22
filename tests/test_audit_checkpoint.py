"""Checkpoint notes (C2SP signed-note, ECDSA type 0x02) and the record encoding."""

import base64
import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.audit.checkpoint import (
    Checkpoint,
    CheckpointFormatError,
    CheckpointSignatureError,
    CheckpointSigner,
    key_id,
    open_checkpoint,
    sign_checkpoint,
    verifier_key,
)
from signer.audit.events import EventType
from signer.audit.record import AuditRecord, RecordDecodeError, decode_record
from signer.sigformat import der_to_raw

ORIGIN = "test.example/audit"


def make_signer(origin: str = ORIGIN) -> tuple[CheckpointSigner, ec.EllipticCurvePrivateKey]:
    priv = ec.generate_private_key(ec.SECP256R1())
    spki = priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def sign(digest: bytes) -> bytes:
        return der_to_raw(priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))

    return CheckpointSigner(origin, sign, spki), priv


def test_signed_note_layout_follows_c2sp_ecdsa_rules() -> None:
    signer, priv = make_signer()
    head = hashlib.sha256(b"head").digest()
    note = sign_checkpoint(Checkpoint(ORIGIN, 42, head, 1700000000), signer)

    text, _, sig_line = note.partition("\n\n")
    assert text + "\n" == f"{ORIGIN}\n42\n{base64.b64encode(head).decode()}\ntimestamp 1700000000\n"
    dash, name, blob_b64 = sig_line.rstrip("\n").split(" ")
    assert dash == "\u2014" and name == ORIGIN
    blob = base64.b64decode(blob_b64)
    assert blob[:4] == hashlib.sha256(signer.spki_der).digest()[:4] == key_id(signer.spki_der)
    # The rest is a DER signature over SHA-256 of the note text (Go's ecdsa.VerifyASN1).
    priv.public_key().verify(blob[4:], (text + "\n").encode(), ec.ECDSA(hashes.SHA256()))
    assert open_checkpoint(note, priv.public_key()) == Checkpoint(ORIGIN, 42, head, 1700000000)


def test_verifier_key_string() -> None:
    signer, _ = make_signer()
    name, kid_hex, key_b64 = verifier_key(ORIGIN, signer.spki_der).split("+", 2)
    assert name == ORIGIN and kid_hex == key_id(signer.spki_der).hex()
    assert base64.b64decode(key_b64) == b"\x02" + signer.spki_der


def test_altered_checkpoint_text_is_rejected() -> None:
    signer, priv = make_signer()
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, bytes(32)), signer)
    with pytest.raises(CheckpointSignatureError, match="invalid signature"):
        open_checkpoint(note.replace("\n5\n", "\n6\n"), priv.public_key())


def test_checkpoint_of_another_key_is_rejected() -> None:
    signer, _ = make_signer()
    _, other = make_signer()
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, bytes(32)), signer)
    with pytest.raises(CheckpointSignatureError, match="not signed by the given audit key"):
        open_checkpoint(note, other.public_key())


@pytest.mark.parametrize(
    "note",
    [
        "",
        "origin\n1\nAAAA\n",
        f"{ORIGIN}\nx\n{base64.b64encode(bytes(32)).decode()}\n\n\u2014 a AAAAAAA=\n",
        f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\n\n- {ORIGIN} AAAAAAA=\n",
    ],
)
def test_malformed_checkpoints_are_rejected(note: str) -> None:
    _, priv = make_signer()
    with pytest.raises(CheckpointFormatError):
        open_checkpoint(note, priv.public_key())


def test_origin_with_space_is_refused() -> None:
    signer, _ = make_signer()
    with pytest.raises(ValueError, match="origin"):
        CheckpointSigner("bad origin", signer.sign, signer.spki_der)


def _record(**changes: object) -> AuditRecord:
    fields: dict[str, object] = {
        "seq": 7,
        "time_ns": 1,
        "event": EventType.SIGN_BATCH,
        "identity": "issuer-a",
        "profile": "vaccination",
        "kid": b"\x01" * 8,
        "request_id": "r-1",
        "digests": (b"\x02" * 32,),
        "signatures": (b"\x03" * 64,),
        "details": {"n": 1},
        "prev": b"\x04" * 32,
    }
    fields.update(changes)
    return AuditRecord(**fields)  # type: ignore[arg-type]


def test_record_round_trip() -> None:
    record = _record()
    assert decode_record(record.encode()) == record
    assert decode_record(_record(signatures=None).encode()).signatures is None


def test_record_decoding_is_strict() -> None:
    payload = _record().encode()
    with pytest.raises(RecordDecodeError, match="bytes after"):
        decode_record(payload + b"\x00")
    body = cbor2.loads(payload)
    body["digests"] = [b"\x01" * 31]
    with pytest.raises(RecordDecodeError, match="32-byte"):
        decode_record(cbor2.dumps(body, canonical=True))
    body = cbor2.loads(payload)
    body["event"] = "coffee_break"
    with pytest.raises(RecordDecodeError, match="unknown event"):
        decode_record(cbor2.dumps(body, canonical=True))
