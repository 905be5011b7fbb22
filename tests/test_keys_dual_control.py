"""Dual control: who may approve a pending change, and when it is complete."""

from datetime import UTC, datetime, timedelta

import cbor2
import pytest

from signer.errors import PolicyError
from signer.keys.cbor_fields import RecordFormatError
from signer.keys.dual_control import PendingChange, approve, request_change

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def change(**params: object) -> PendingChange:
    return request_change(
        action="activate",
        key_id="00aa11bb22cc33dd",
        params=params or {"activate_at": T0 + 24 * HOUR},  # type: ignore[arg-type]
        requested_by="alice",
        now=T0,
        ttl=2 * HOUR,
    )


def test_with_two_required_a_second_officer_completes_it() -> None:
    pending = change()
    assert not pending.is_complete(2)
    approved, complete = approve(pending, "bob", T0 + HOUR, 2)
    assert complete
    assert approved.approvals == ("bob",)
    assert pending.approvals == ()


def test_with_one_required_the_requester_alone_suffices() -> None:
    assert change().is_complete(1)
    assert not change().is_complete(2)


def test_requester_cannot_approve_own_change() -> None:
    with pytest.raises(PolicyError, match=r"alice requested change .* cannot approve"):
        approve(change(), "alice", T0, 2)
    with pytest.raises(PolicyError, match=r"cannot approve"):
        approve(change(), "ALICE ", T0, 2)


def test_same_identity_cannot_approve_twice() -> None:
    approved, complete = approve(change(), "bob", T0, 3)
    assert not complete
    with pytest.raises(PolicyError, match=r"Bob already approved"):
        approve(approved, "Bob", T0, 3)
    third, complete = approve(approved, "carol", T0, 3)
    assert complete and third.approvals == ("bob", "carol")


def test_expired_change_cannot_be_approved() -> None:
    assert approve(change(), "bob", T0 + 2 * HOUR - timedelta(seconds=1), 2)[1]
    with pytest.raises(PolicyError, match=r"expired at .* request the change again"):
        approve(change(), "bob", T0 + 2 * HOUR, 2)


def test_empty_approver_and_bad_counts_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"identity is empty"):
        approve(change(), "  ", T0, 2)
    with pytest.raises(PolicyError, match=r"approvals_required is 0"):
        approve(change(), "bob", T0, 0)


def test_unknown_action_and_empty_requester_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"unknown action 'revive'"):
        request_change(action="revive", key_id="aa", params={}, requested_by="a", now=T0)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"must name who requested"):
        request_change(action="retire", key_id="aa", params={}, requested_by="", now=T0)


def test_params_are_read_only() -> None:
    pending = change()
    with pytest.raises(TypeError):
        pending.params["activate_at"] = T0  # type: ignore[index]


def test_cbor_round_trip() -> None:
    pending = request_change(
        action="destroy",
        key_id="aa",
        params={"force": True, "reason": "compromise", "when": T0 + timedelta(microseconds=5)},
        requested_by="alice",
        now=T0,
    )
    approved, _ = approve(pending, "bob", T0, 2)
    data = approved.to_cbor()
    again = PendingChange.from_cbor(data)
    assert again == approved
    assert again.params["when"] == T0 + timedelta(microseconds=5)
    assert again.params["force"] is True
    assert again.to_cbor() == data
    decoded = cbor2.loads(data)
    assert decoded["v"] == 1
    with pytest.raises(RecordFormatError, match=r"unknown action"):
        PendingChange.from_cbor(cbor2.dumps({**decoded, "action": "revive"}))
    with pytest.raises(RecordFormatError, match=r"approvals must be text"):
        PendingChange.from_cbor(cbor2.dumps({**decoded, "approvals": [1]}))
