"""Key changes as signed documents that every daemon checks before acting on them.

An officer's request and every approval are signatures, made with the officer's own private
key (the one of the client certificate they connect with), over one canonical CBOR
:class:`ChangeDocument`. The daemon stores the document, the signatures and the certificates
with the records, and every daemon re-verifies them whenever it loads the records: a record
whose change does not verify to enough distinct *persons* of ``[officers]`` is not acted on.
So neither one person holding several certificates nor someone holding only the HSM user PIN
(who can rewrite any stored record) can activate, retire or destroy a key.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from signer.errors import PolicyError
from signer.identity import certificate_names, normalise
from signer.keys.cbor_fields import FieldReader, RecordFormatError, encode, optional_time
from signer.keys.lifecycle import KeyRecord, KeyState
from signer.keys.utc import to_unix

DOCUMENT_FORMAT_VERSION: Final = 2
"""Version 2 documents need every approval to carry the time it was signed; version 1
documents (drafted before approvals carried it) are still read."""
READABLE_DOCUMENT_VERSIONS: Final = (1, 2)
SIGNED_CHANGE_FORMAT_VERSION: Final = 1
SIGNATURE_CONTEXT: Final = "signer.v1/key-change"
CLOCK_SKEW: Final = timedelta(minutes=1)
"""How far an officer's signed time (a request's drafting time, an approval's signing time) may
be from the appliance's clock when it arrives."""
APPLY_MARGIN: Final = timedelta(minutes=1)
"""How long an appliance may take from receiving the completing approval to scheduling the
activation (store round trips), allowed on top of :data:`CLOCK_SKEW` when records are checked."""
MAX_SIGNED_AT: Final = 2**33
"""Signed times are Unix seconds below this (the year 2242)."""
DRAFT_WINDOW: Final = timedelta(minutes=15)
"""How long a drafted change document may take to be signed and sent."""

Action = Literal["activate", "retire", "destroy", "revoke"]
ACTIONS: Final = ("activate", "retire", "destroy", "revoke")
Role = Literal["request", "approve"]
_CHANGE_ID = re.compile(r"[0-9a-f]{16,64}")

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class GovernanceError(PolicyError):
    """A signed change does not verify: a signature, certificate, person or count is wrong."""


@dataclass(frozen=True)
class ChangeDocument:
    """What officers sign: one requested change of one key, with every field that matters."""

    change_id: str
    action: Action
    key_id: str
    profile: str
    requested_by: str
    """The person (a name under ``[officers]``) who requests the change."""
    requested_at: datetime
    activate_at: datetime | None = None
    reason: str = ""
    force: bool = False
    format_version: int = DOCUMENT_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version not in READABLE_DOCUMENT_VERSIONS:
            raise PolicyError(f"change check failed: unknown format {self.format_version}")
        if self.action not in ACTIONS:
            raise PolicyError(f"change check failed: unknown action {self.action[:20]!r}")
        if not _CHANGE_ID.fullmatch(self.change_id):
            raise PolicyError("change check failed: a change id is 16 to 64 lower-case hex digits")

    def encode(self) -> bytes:
        """Canonical CBOR: the exact bytes officers sign."""
        return encode(
            {
                "v": self.format_version,
                "change_id": self.change_id,
                "action": self.action,
                "key_id": self.key_id,
                "profile": self.profile,
                "requested_by": self.requested_by,
                "requested_at": to_unix(self.requested_at),
                "activate_at": optional_time(self.activate_at),
                "reason": self.reason,
                "force": self.force,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ChangeDocument:
        """Parse :meth:`encode` output; anything else is a RecordFormatError."""
        reader = FieldReader(data, "change document", READABLE_DOCUMENT_VERSIONS)
        action = reader.text("action")
        if action not in ACTIONS:
            raise reader.error(f"unknown action {action[:20]!r}")
        document = cls(
            change_id=reader.text("change_id"),
            action=cast(Action, action),
            key_id=reader.text("key_id"),
            profile=reader.text("profile"),
            requested_by=reader.text("requested_by"),
            requested_at=reader.time("requested_at"),
            activate_at=reader.optional_time("activate_at"),
            reason=reader.text("reason"),
            force=reader.boolean("force"),
            format_version=reader.version,
        )
        reader.finish()
        if document.encode() != data:
            raise reader.error("it is not in canonical form")
        return document


def to_be_signed(role: Role, document: bytes, signed_at: int | None = None) -> bytes:
    """The bytes an officer's key signs: context, role and the document, and the time of
    signing (Unix seconds) where the endorsement carries one, in canonical CBOR."""
    fields: dict[str, object] = {"context": SIGNATURE_CONTEXT, "role": role, "document": document}
    if signed_at is not None:
        fields["signed_at"] = signed_at
    return encode(fields)


def sign_document(
    key: SigningKey, role: Role, document: bytes, signed_at: int | None = None
) -> bytes:
    """An officer's signature over a change document (client side), binding ``signed_at``
    (Unix seconds) where given: approvals carry the time they were signed."""
    message = to_be_signed(role, document, signed_at)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message)


def signature_valid(
    certificate: x509.Certificate,
    role: Role,
    document: bytes,
    sig: bytes,
    signed_at: int | None = None,
) -> bool:
    """Whether ``sig`` is the certificate key's signature over the document in this role (and
    over the time of signing, where the endorsement carries one)."""
    message = to_be_signed(role, document, signed_at)
    public = certificate.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(sig, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Endorsement:
    """One officer's part in a change: the request or an approval.

    ``certificate`` and ``signature`` are empty only for a development daemon without TLS,
    which has no certificates to check (see :attr:`Governance.enforced`).
    """

    role: Role
    person: str
    identity: str
    certificate: bytes
    signature: bytes
    signed_at: int | None = None
    """When the officer signed (Unix seconds, UTC), covered by the signature. Approvals carry
    it, so that the time an activation takes effect is bound to a signed time; endorsements
    made before it existed have none."""

    def encode(self) -> list[object]:
        """CBOR form inside a :class:`SignedChange`."""
        fields: list[object] = [
            self.role,
            self.person,
            self.identity,
            self.certificate,
            self.signature,
        ]
        return fields if self.signed_at is None else [*fields, self.signed_at]

    @property
    def signed_time(self) -> datetime | None:
        """:attr:`signed_at` as an aware UTC time."""
        return None if self.signed_at is None else datetime.fromtimestamp(self.signed_at, UTC)


@dataclass(frozen=True)
class SignedChange:
    """A change document with the endorsements collected so far."""

    document: bytes
    endorsements: tuple[Endorsement, ...]

    @property
    def change(self) -> ChangeDocument:
        """The decoded document."""
        return ChangeDocument.decode(self.document)

    def with_endorsement(self, endorsement: Endorsement) -> SignedChange:
        """A copy with one more endorsement."""
        return SignedChange(self.document, (*self.endorsements, endorsement))

    def encode(self) -> bytes:
        """Canonical CBOR, stored with pending changes and key records."""
        return encode(
            {
                "v": SIGNED_CHANGE_FORMAT_VERSION,
                "document": self.document,
                "endorsements": [e.encode() for e in self.endorsements],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> SignedChange:
        """Parse :meth:`encode` output."""
        reader = FieldReader(data, "signed change", SIGNED_CHANGE_FORMAT_VERSION)
        document = reader.optional_bytes("document")
        items = reader.array("endorsements")
        reader.finish()
        if document is None:
            raise reader.error("the document is missing")
        endorsements = []
        for item in items:
            if (
                not isinstance(item, list)
                or len(item) not in (5, 6)
                or item[0] not in ("request", "approve")
                or not all(isinstance(text, str) for text in item[1:3])
                or not all(isinstance(blob, bytes) for blob in item[3:5])
                or (
                    len(item) == 6
                    and (type(item[5]) is not int or not 0 <= item[5] < MAX_SIGNED_AT)
                )
            ):
                raise reader.error("an endorsement is malformed")
            signed_at = item[5] if len(item) == 6 else None
            endorsements.append(Endorsement(item[0], item[1], item[2], item[3], item[4], signed_at))
        return cls(document, tuple(endorsements))


@dataclass(frozen=True)
class Officers:
    """The persons allowed to change keys and the certificate identities each may use."""

    persons: Mapping[str, tuple[str, ...]]

    def person_of(self, identities: Iterable[str]) -> tuple[str, str] | None:
        """``(person, identity)`` for the first identity some person owns, else None."""
        owners = {normalise(i): person for person, ids in self.persons.items() for i in ids}
        for identity in identities:
            person = owners.get(normalise(identity))
            if person is not None:
                return person, identity
        return None


@dataclass(frozen=True)
class Governance:
    """The rules every daemon applies to every change.

    Without TLS (allowed only in dev configurations) there are no certificates, so persons are
    whatever the caller claims and stored records are not re-verified: ``enforced`` is False.
    """

    officers: Officers
    client_ca: x509.Certificate | None
    """The CA that issues officer certificates; None only without TLS (development)."""
    approvals_required: int
    revoke_approvals: int = 1
    change_ttl: timedelta = timedelta(hours=24)
    """How long a change may wait for its approvals (``[keys] change_ttl_minutes``)."""
    takeover_notice: timedelta = timedelta(seconds=4)
    """How much later than approved an activation may take effect: two refresh intervals."""

    @property
    def enforced(self) -> bool:
        """Signatures are required wherever officers have certificates (mutual TLS)."""
        return self.client_ca is not None

    def required_for(self, action: Action) -> int:
        """How many distinct persons a change of this kind needs."""
        return self.revoke_approvals if action == "revoke" else self.approvals_required


def verify_endorsement(
    endorsement: Endorsement, document: bytes, at: datetime, rules: Governance
) -> str:
    """The person behind a valid endorsement; GovernanceError naming what is wrong."""
    if not rules.enforced:
        return endorsement.person
    if not endorsement.certificate or not endorsement.signature:
        raise GovernanceError(f"the {endorsement.role} by {endorsement.person!r} is not signed")
    try:
        certificate = x509.load_der_x509_certificate(endorsement.certificate)
    except ValueError:
        raise GovernanceError(
            f"the {endorsement.role} by {endorsement.person!r} carries no readable certificate"
        ) from None
    assert rules.client_ca is not None
    try:
        certificate.verify_directly_issued_by(rules.client_ca)
    except (ValueError, TypeError, InvalidSignature):
        raise GovernanceError(
            f"the certificate of {endorsement.person!r} was not issued by the client CA"
        ) from None
    if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        raise GovernanceError(
            f"the certificate of {endorsement.person!r} was not valid when the change was made"
        )
    if not signature_valid(
        certificate, endorsement.role, document, endorsement.signature, endorsement.signed_at
    ):
        raise GovernanceError(
            f"the {endorsement.role} signature of {endorsement.person!r} does not verify"
        )
    owner = rules.officers.person_of(certificate_names(endorsement.certificate))
    if owner is None or owner[0] != endorsement.person:
        raise GovernanceError(
            f"the certificate that signed for {endorsement.person!r} belongs to"
            f" {owner[0] if owner else 'no officer'}"
        )
    return owner[0]


def verify_signed_change(signed: SignedChange, rules: Governance) -> ChangeDocument:
    """Check a change before acting on it: every endorsement, the requester, and that enough
    distinct persons signed. Returns the document; raises GovernanceError otherwise."""
    change = signed.change
    requests = [e for e in signed.endorsements if e.role == "request"]
    if len(requests) != 1:
        raise GovernanceError(f"change {change.change_id} has {len(requests)} requests, not 1")
    persons: list[str] = []
    for endorsement in signed.endorsements:
        person = verify_endorsement(endorsement, signed.document, change.requested_at, rules)
        if person in persons:
            raise GovernanceError(f"{person} signed change {change.change_id} twice")
        persons.append(person)
    if requests[0].person != change.requested_by:
        raise GovernanceError(
            f"change {change.change_id} was requested by {change.requested_by!r} but signed"
            f" by {requests[0].person!r}"
        )
    needed = rules.required_for(change.action)
    if len(persons) < needed:
        raise GovernanceError(
            f"change {change.change_id} has {len(persons)} of the {needed} persons it needs"
        )
    return change


_RANK: Mapping[KeyState, int] = {
    KeyState.PENDING: 0,
    KeyState.READY: 1,
    KeyState.SCHEDULED: 2,
    KeyState.ACTIVE: 2,
    KeyState.RETIRED: 3,
    KeyState.REVOKED: 4,
    KeyState.DESTROYED: 5,
}
_ACTION_BEHIND: Mapping[KeyState, Action] = {
    KeyState.SCHEDULED: "activate",
    KeyState.ACTIVE: "activate",
    KeyState.RETIRED: "retire",
    KeyState.REVOKED: "revoke",
    KeyState.DESTROYED: "destroy",
}


def record_problem(record: KeyRecord, rules: Governance, previous: KeyRecord | None) -> str:
    """Why a daemon must not act on a stored key record (empty when it may).

    A record in a governed state (scheduled, active, retired, revoked, destroyed) must carry
    the signed change that put it there, verifying to enough persons, for this key and this
    profile; an activation may not take effect earlier than the officers signed. A record
    may not move back (from retired to active, or lose its revocation) from what this daemon
    verified before: that is a replayed older record.
    """
    if previous is not None:
        if _RANK[record.state] < _RANK[previous.state]:
            return f"it moves the key back from {previous.state.value} to {record.state.value}"
        if previous.revoked_at is not None and record.revoked_at is None:
            return "it drops the key's revocation"
        if (
            previous.authority is not None
            and previous.authority == record.authority
            and previous.activate_at != record.activate_at
        ):
            return "it moves the key's activation time without a new signed change"
    wanted = _ACTION_BEHIND.get(record.state)
    if wanted is None or not rules.enforced:
        return ""
    if record.authority is None:
        return f"a {record.state.value} key needs the signed change behind it; none is stored"
    try:
        signed = SignedChange.decode(record.authority)
        change = verify_signed_change(signed, rules)
    except (PolicyError, RecordFormatError) as exc:
        return str(exc)
    if change.key_id != record.key_id or change.profile != record.profile:
        return f"its signed change {change.change_id} is for another key or profile"
    if change.action != wanted:
        return f"its state is {record.state.value} but its signed change is a {change.action}"
    if wanted == "activate":
        floor = change.activate_at or change.requested_at
        if record.activate_at is None or record.activate_at < floor:
            return f"it activates earlier than change {change.change_id} allows ({floor})"
        latest = _latest_application(signed, change, rules)
        if isinstance(latest, str):
            return latest
        ceiling = max(floor, latest) + rules.takeover_notice
        if record.activate_at > ceiling:
            return f"it activates later than change {change.change_id} allows ({ceiling})"
    return ""


def _latest_application(
    signed: SignedChange, change: ChangeDocument, rules: Governance
) -> datetime | str:
    """The latest time an honest appliance can have applied ``change``: applying postpones a
    takeover (daemons need two refreshes' notice) from then, never further.

    A change without approvals applied with its request, which is refused once its draft is
    stale. Otherwise it applied when its last approval arrived (an appliance applies a change
    as soon as it is complete and stores no approval after that, so the last is the one that
    completed it, whatever ``approvals_required`` says today), within the clock skew the
    appliance accepted and the time applying takes. Approvals of a version 1
    document (drafted before approvals carried their time) allow the change's whole approval
    window; a version 2 document needs every approval's time. A problem with the approval times
    is returned as a string.
    """
    times = [e.signed_time for e in signed.endorsements if e.role == "approve"]
    if not times:
        return change.requested_at + DRAFT_WINDOW
    approved = [t for t in times if t is not None]
    if len(approved) < len(times):
        if change.format_version >= 2:
            return f"an approval of change {change.change_id} carries no signing time"
        return change.requested_at + rules.change_ttl
    window_start = change.requested_at - CLOCK_SKEW
    window_end = change.requested_at + rules.change_ttl + CLOCK_SKEW
    if any(not window_start <= t <= window_end for t in approved):
        return f"an approval of change {change.change_id} is dated outside its approval window"
    return max(approved) + CLOCK_SKEW + APPLY_MARGIN
