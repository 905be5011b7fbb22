"""Dual control: who may approve a pending change, and when it is complete (pure)."""

from datetime import UTC, datetime, timedelta

import pytest

from signer.errors import PermissionDenied, PolicyError
from signer.keys.dual_control import PendingChange, approve, new_change_id
from signer.keys.governance import ChangeDocument, Endorsement, SignedChange

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def change(action: str = "activate") -> PendingChange:
    document = ChangeDocument(
        change_id=new_change_id(),
        action=action,  # type: ignore[arg-type]
        key_id="00aa11bb22cc33dd",
        profile="vaccination",
        requested_by="alice",
        requested_at=T0,
        activate_at=T0 + 24 * HOUR,
    ).encode()
    request = Endorsement("request", "alice", "alice", b"", b"")
    return PendingChange.of(SignedChange(document, (request,)), ttl=2 * HOUR)


def by(person: str) -> Endorsement:
    return Endorsement("approve", person, person, b"", b"")


def test_a_second_person_completes_a_change_that_needs_two() -> None:
    pending = change()
    assert pending.persons() == 1
    approved, complete = approve(pending, by("bob"), T0 + HOUR, 2)
    assert complete
    assert approved.approvals == ("bob",)
    assert pending.approvals == ()
    assert approved.expires_at == T0 + 2 * HOUR


def test_the_requester_cannot_approve_their_own_change() -> None:
    with pytest.raises(PermissionDenied, match=r"alice requested change .* cannot approve"):
        approve(change(), by("alice"), T0, 2)


def test_the_same_person_cannot_approve_twice() -> None:
    approved, complete = approve(change(), by("bob"), T0, 3)
    assert not complete
    with pytest.raises(PermissionDenied, match=r"bob already approved"):
        approve(approved, by("bob"), T0, 3)
    third, complete = approve(approved, by("carol"), T0, 3)
    assert complete and third.approvals == ("bob", "carol")


def test_an_expired_change_cannot_be_approved() -> None:
    assert approve(change(), by("bob"), T0 + 2 * HOUR - timedelta(seconds=1), 2)[1]
    with pytest.raises(PolicyError, match=r"expired at .* request the change again"):
        approve(change(), by("bob"), T0 + 2 * HOUR, 2)


def test_a_pending_change_survives_its_stored_form() -> None:
    approved, _ = approve(change("destroy"), by("bob"), T0, 3)
    again = PendingChange.of(SignedChange.decode(approved.signed.encode()), 2 * HOUR)
    assert again == approved
    assert (again.action, again.key_id, again.requested_by) == (
        "destroy",
        "00aa11bb22cc33dd",
        "alice",
    )


def test_unknown_actions_and_bad_windows_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"unknown action 'revive'"):
        change("revive")
    with pytest.raises(PolicyError, match="ttl"):
        PendingChange.of(change().signed, timedelta(0))
