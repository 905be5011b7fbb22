"""Signed change documents: who may sign, what verifies, what a forger cannot do (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta

import pytest

from signer.errors import PolicyError
from signer.keys.cbor_fields import RecordFormatError
from signer.keys.governance import (
    ChangeDocument,
    Endorsement,
    Governance,
    GovernanceError,
    Officers,
    Role,
    SignedChange,
    sign_document,
    verify_signed_change,
)
from tests.officer_certs import NOW, Credential, make_ca, make_client

CA = make_ca()
ALICE_1 = make_client(CA, "officer")
ALICE_2 = make_client(CA, "officer")  # the same person's second certificate
BOB = make_client(CA, "officer2")
MALLORY = make_client(make_ca("other CA"), "officer2")


def fingerprint(credential: Credential) -> str:
    return "SHA256:" + hashlib.sha256(credential.der).hexdigest()


OFFICERS = Officers({"alice": ("CN=officer",), "bob": ("CN=officer2",)})
RULES = Governance(OFFICERS, CA.certificate, approvals_required=2)


def document(**changes: object) -> bytes:
    base = ChangeDocument(
        change_id="00112233445566778899aabbccddeeff",
        action="activate",
        key_id="aabbccddeeff0011",
        profile="vaccination",
        requested_by="alice",
        requested_at=NOW,
        activate_at=NOW + timedelta(hours=1),
        reason="scheduled rotation",
    )
    return replace(base, **changes).encode()  # type: ignore[arg-type]


def endorse(doc: bytes, who: Credential, person: str, role: Role) -> Endorsement:
    return Endorsement(role, person, "CN=x", who.der, sign_document(who.key, role, doc))


def test_request_and_approval_by_two_persons_verify() -> None:
    doc = document()
    signed = SignedChange(
        doc, (endorse(doc, ALICE_1, "alice", "request"), endorse(doc, BOB, "bob", "approve"))
    )
    assert verify_signed_change(SignedChange.decode(signed.encode()), RULES).action == "activate"


def test_one_person_with_two_certificates_is_one_person() -> None:
    doc = document()
    officers = Officers({"alice": ("CN=officer", fingerprint(ALICE_2)), "bob": ("CN=officer2",)})
    signed = SignedChange(
        doc,
        (endorse(doc, ALICE_1, "alice", "request"), endorse(doc, ALICE_2, "alice", "approve")),
    )
    with pytest.raises(GovernanceError, match=r"alice signed change .* twice"):
        verify_signed_change(signed, replace(RULES, officers=officers))


def test_an_approval_claimed_for_another_person_is_refused() -> None:
    doc = document()
    signed = SignedChange(
        doc,
        (endorse(doc, ALICE_1, "alice", "request"), endorse(doc, ALICE_2, "bob", "approve")),
    )
    with pytest.raises(GovernanceError, match="belongs to alice"):
        verify_signed_change(signed, RULES)


def test_a_certificate_from_another_ca_is_refused() -> None:
    doc = document()
    signed = SignedChange(
        doc, (endorse(doc, ALICE_1, "alice", "request"), endorse(doc, MALLORY, "bob", "approve"))
    )
    with pytest.raises(GovernanceError, match="not issued by the client CA"):
        verify_signed_change(signed, RULES)


def test_a_rewritten_document_no_longer_verifies() -> None:
    doc = document()
    signed = SignedChange(
        doc, (endorse(doc, ALICE_1, "alice", "request"), endorse(doc, BOB, "bob", "approve"))
    )
    earlier = document(activate_at=NOW)
    with pytest.raises(GovernanceError, match="signature of 'alice' does not verify"):
        verify_signed_change(SignedChange(earlier, signed.endorsements), RULES)


def test_a_request_signature_is_not_an_approval() -> None:
    doc = document()
    request = endorse(doc, BOB, "bob", "request")
    reused = Endorsement("approve", "bob", "CN=x", BOB.der, request.signature)
    signed = SignedChange(doc, (endorse(doc, ALICE_1, "alice", "request"), reused))
    with pytest.raises(GovernanceError, match="approve signature of 'bob'"):
        verify_signed_change(signed, RULES)


def test_too_few_persons_and_wrong_requester_are_refused() -> None:
    doc = document()
    alone = SignedChange(doc, (endorse(doc, ALICE_1, "alice", "request"),))
    with pytest.raises(GovernanceError, match="1 of the 2 persons"):
        verify_signed_change(alone, RULES)
    by_bob = SignedChange(
        doc, (endorse(doc, BOB, "bob", "request"), endorse(doc, ALICE_1, "alice", "approve"))
    )
    with pytest.raises(GovernanceError, match="requested by 'alice' but signed by 'bob'"):
        verify_signed_change(by_bob, RULES)


def test_revocation_needs_only_one_person_by_default() -> None:
    doc = document(action="revoke", activate_at=None, reason="key compromised")
    signed = SignedChange(doc, (endorse(doc, ALICE_1, "alice", "request"),))
    assert verify_signed_change(signed, RULES).action == "revoke"


def test_unsigned_endorsements_pass_only_without_tls() -> None:
    doc = document()
    unsigned = SignedChange(
        doc,
        (
            Endorsement("request", "alice", "alice", b"", b""),
            Endorsement("approve", "bob", "bob", b"", b""),
        ),
    )
    with pytest.raises(GovernanceError, match="not signed"):
        verify_signed_change(unsigned, RULES)
    assert verify_signed_change(unsigned, replace(RULES, client_ca=None)).key_id


def test_a_certificate_expired_before_the_change_is_refused() -> None:
    old = make_client(CA, "officer2", NOW - timedelta(days=9), NOW - timedelta(days=2))
    doc = document()
    signed = SignedChange(
        doc, (endorse(doc, ALICE_1, "alice", "request"), endorse(doc, old, "bob", "approve"))
    )
    with pytest.raises(GovernanceError, match="not valid when the change was made"):
        verify_signed_change(signed, RULES)


def test_documents_are_canonical_and_checked() -> None:
    doc = document()
    assert ChangeDocument.decode(doc).encode() == doc
    with pytest.raises(PolicyError, match="change id"):
        ChangeDocument.decode(document(change_id="../../etc"))
    with pytest.raises(RecordFormatError):
        ChangeDocument.decode(doc + b"\x00")


def test_an_approval_time_is_covered_by_its_signature() -> None:
    doc = document()
    signed_at = int(NOW.timestamp())
    approval = Endorsement(
        "approve",
        "bob",
        "CN=x",
        BOB.der,
        sign_document(BOB.key, "approve", doc, signed_at),
        signed_at,
    )
    change = SignedChange(doc, (endorse(doc, ALICE_1, "alice", "request"), approval))
    verify_signed_change(change, RULES)
    assert SignedChange.decode(change.encode()) == change
    moved = replace(approval, signed_at=signed_at + 3600)
    with pytest.raises(GovernanceError, match="does not verify"):
        verify_signed_change(SignedChange(doc, (change.endorsements[0], moved)), RULES)
