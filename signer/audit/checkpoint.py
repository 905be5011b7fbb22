"""Signed checkpoints of the audit log, in the C2SP signed-note format.

A checkpoint is a signed note (https://c2sp.org/signed-note) whose text follows
https://c2sp.org/tlog-checkpoint::

    <origin>
    <log size>
    <base64 head hash>
    timestamp <unix seconds>

    — <origin> <base64(key ID || signature)>

Deviation from tlog-checkpoint: the third line is the hash of the record at ``<log size>``
(the head of a SHA-256 hash chain, 32 zero bytes for an empty log), **not** an RFC 6962 Merkle
root. It proves the whole prefix of the log the same way, but allows no inclusion or
consistency proofs; a verifier needs the records themselves. The ``timestamp`` line is an
extension line.

Signature: signed-note type ``0x02`` ("ECDSA signatures as implemented by
github.com/transparency-dev/witness"), which is ECDSA P-256 over SHA-256 of the note text,
the signature DER-encoded (``ECDSA-Sig-Value``, as Go's ``ecdsa.SignASN1`` produces), and a
key ID that is the first 4 bytes of SHA-256 over the DER SubjectPublicKeyInfo (not the
name-salted hash of Ed25519 keys). The HSM returns raw ``r||s``; we convert it to DER. The
key name on the signature line is the origin. :func:`verifier_key` prints the
``<name>+<hex key ID>+<base64(0x02 || SPKI)>`` string that transparency-dev/formats'
``note.NewECDSAVerifier`` accepts, so Go tooling can verify our checkpoints too.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.errors import AuditError
from signer.sigformat import raw_to_der

SIGNATURE_TYPE_ECDSA = 0x02
KEY_ID_BYTES = 4
HEAD_BYTES = 32
_EM_DASH = "\u2014"
_TIMESTAMP_PREFIX = "timestamp "
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)$")


class CheckpointFormatError(AuditError):
    """A checkpoint file is not a well-formed signed note / checkpoint."""


class CheckpointSignatureError(AuditError):
    """A checkpoint carries no valid signature by the expected audit key."""


@dataclass(frozen=True)
class Checkpoint:
    """The signed statement "the log ``origin`` had ``size`` records ending in ``head``"."""

    origin: str
    size: int
    head: bytes
    timestamp: int | None = None

    def text(self) -> str:
        """The note text that is signed."""
        lines = [self.origin, str(self.size), base64.b64encode(self.head).decode("ascii")]
        if self.timestamp is not None:
            lines.append(f"{_TIMESTAMP_PREFIX}{self.timestamp}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CheckpointSigner:
    """The audit key: an HSM signing callable plus its public key.

    ``sign`` takes a 32-byte SHA-256 digest and returns a raw 64-byte ``r||s`` ECDSA P-256
    signature. ``origin`` names the log (for example ``signer.example.vn/audit/host-1``) and
    is also the key name on signature lines; it must not contain spaces or ``+``.
    """

    origin: str
    sign: Callable[[bytes], bytes]
    spki_der: bytes

    def __post_init__(self) -> None:
        check_origin(self.origin)
        load_audit_public_key(self.spki_der)


def check_origin(origin: str) -> None:
    """Refuse origins that the signed-note format cannot carry as a key name."""
    if not origin or any(ch.isspace() or ch == "+" or ord(ch) < 0x20 for ch in origin):
        raise ValueError(
            f"audit log origin {origin!r} must be non-empty without spaces or '+', "
            "e.g. 'signer.example.vn/audit/host-1'"
        )


def load_audit_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """Load an audit public key from SPKI DER or PEM; it must be ECDSA P-256."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except ValueError as exc:
        raise AuditError(
            "audit public key is neither SubjectPublicKeyInfo DER nor PEM; export it with "
            "`openssl pkey -pubin -outform DER`"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise AuditError("audit public key must be an ECDSA P-256 key")
    return key


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of ``key``."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(spki: bytes) -> bytes:
    """Signed-note key ID of an ECDSA key: SHA-256 of its SPKI DER, first 4 bytes."""
    return hashlib.sha256(spki).digest()[:KEY_ID_BYTES]


def verifier_key(name: str, spki: bytes) -> str:
    """The ``name+keyid+key`` verifier string used by Go signed-note tooling."""
    encoded = base64.b64encode(bytes([SIGNATURE_TYPE_ECDSA]) + spki).decode("ascii")
    return f"{name}+{key_id(spki).hex()}+{encoded}"


def sign_checkpoint(checkpoint: Checkpoint, signer: CheckpointSigner) -> str:
    """Return the complete signed note for ``checkpoint``."""
    text = checkpoint.text()
    raw = signer.sign(hashlib.sha256(text.encode("utf-8")).digest())
    blob = key_id(signer.spki_der) + raw_to_der(raw)
    return f"{text}\n{_EM_DASH} {signer.origin} {base64.b64encode(blob).decode('ascii')}\n"


def open_checkpoint(note: str, public_key: ec.EllipticCurvePublicKey) -> Checkpoint:
    """Parse a signed checkpoint and verify it against the audit public key.

    The signature line must carry the checkpoint's origin as key name and the key ID of
    ``public_key``; lines of other keys are ignored, as the signed-note spec requires.
    """
    text, signatures = _split_note(note)
    checkpoint = _parse_text(text)
    wanted_id = key_id(spki_der(public_key))
    matched = False
    for name, blob in signatures:
        if name != checkpoint.origin or blob[:KEY_ID_BYTES] != wanted_id:
            continue
        matched = True
        try:
            public_key.verify(blob[KEY_ID_BYTES:], text.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise CheckpointSignatureError(
                f"checkpoint at size {checkpoint.size} has an invalid signature by the audit "
                "key: the checkpoint was altered or forged"
            ) from exc
    if not matched:
        raise CheckpointSignatureError(
            f"checkpoint at size {checkpoint.size} is not signed by the given audit key "
            f"(key name {checkpoint.origin!r}, key ID {wanted_id.hex()}); check the --pubkey file"
        )
    return checkpoint


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise CheckpointFormatError("checkpoint contains control characters")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise CheckpointFormatError("checkpoint has no blank line before its signatures")
    text = note[: cut + 1]
    signatures = []
    for line in note[cut + 2 : -1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or not parts[1]:
            raise CheckpointFormatError(f"malformed checkpoint signature line {line!r}")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except binascii.Error as exc:
            raise CheckpointFormatError("checkpoint signature is not valid base64") from exc
        if len(blob) <= KEY_ID_BYTES:
            raise CheckpointFormatError("checkpoint signature is too short")
        signatures.append((parts[1], blob))
    return text, signatures


def _parse_text(text: str) -> Checkpoint:
    lines = text[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise CheckpointFormatError("checkpoint text must have origin, size and hash lines")
    origin, size_text, head_text = lines[:3]
    if not _DECIMAL_RE.match(size_text):
        raise CheckpointFormatError(f"checkpoint size {size_text!r} is not a decimal number")
    try:
        head = base64.b64decode(head_text, validate=True)
    except binascii.Error as exc:
        raise CheckpointFormatError("checkpoint head hash is not valid base64") from exc
    if len(head) != HEAD_BYTES:
        raise CheckpointFormatError(f"checkpoint head hash must be {HEAD_BYTES} bytes")
    timestamp = None
    for extension in lines[3:]:
        value = extension.removeprefix(_TIMESTAMP_PREFIX)
        if value != extension and _DECIMAL_RE.match(value):
            timestamp = int(value)
    return Checkpoint(origin, int(size_text), head, timestamp)
