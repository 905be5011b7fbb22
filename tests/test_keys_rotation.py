"""Rotation: which key signs at each moment, overlap of the previous kid, trust list."""

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from signer.keys.dsc_checks import DscInfo
from signer.keys.lifecycle import (
    KeyRecord,
    KeyState,
    certificate_imported,
    destroy,
    generated,
    retire,
    schedule_activation,
)
from signer.keys.policy import KeyPolicy
from signer.keys.rotation import effective_state, resolve_profile, trust_list

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
POLICY = KeyPolicy()
ROTATION = T0 + 100 * DAY


def ready(key_id: str, profile: str = "vaccination", dsc_days: int = 730) -> KeyRecord:
    record = generated(key_id=key_id, profile=profile, label=key_id, now=T0, actor="alice")
    info = DscInfo(
        kid=hashlib.sha256(key_id.encode()).digest()[:8],
        subject="C=VN",
        issuer="C=VN",
        country="VN",
        serial_number=1,
        not_before=T0,
        not_after=T0 + dsc_days * DAY,
        spki_der=b"",
        ekus=(),
        der=b"",
    )
    return certificate_imported(record, info, now=T0, actor="alice")


def active(
    key_id: str, at: datetime, profile: str = "vaccination", dsc_days: int = 730
) -> KeyRecord:
    return schedule_activation(
        ready(key_id, profile, dsc_days), at=at, now=T0, actor="bob", policy=POLICY
    )


@pytest.fixture
def old_and_new() -> tuple[KeyRecord, KeyRecord]:
    return active("01", T0), active("02", ROTATION)


def test_before_rotation_the_old_key_alone_signs(old_and_new: tuple[KeyRecord, KeyRecord]) -> None:
    old, new = old_and_new
    view = resolve_profile(old_and_new, "vaccination", ROTATION - MINUTE, POLICY)
    assert view.active == old
    assert set(view.accepted) == {old.kid}
    assert view.reason_if_none == ""
    assert effective_state(new, old_and_new, ROTATION - MINUTE, POLICY) is KeyState.SCHEDULED


def test_at_rotation_the_new_key_signs_and_the_old_kid_is_accepted(
    old_and_new: tuple[KeyRecord, KeyRecord],
) -> None:
    old, new = old_and_new
    for moment in (ROTATION, ROTATION + POLICY.overlap - timedelta(seconds=1)):
        view = resolve_profile(old_and_new, "vaccination", moment, POLICY)
        assert view.active == new
        assert dict(view.accepted) == {new.kid: new, old.kid: old}
        assert effective_state(old, old_and_new, moment, POLICY) is KeyState.ACTIVE
        assert effective_state(new, old_and_new, moment, POLICY) is KeyState.ACTIVE


def test_after_overlap_only_the_new_key_signs(old_and_new: tuple[KeyRecord, KeyRecord]) -> None:
    old, new = old_and_new
    view = resolve_profile(old_and_new, "vaccination", ROTATION + POLICY.overlap, POLICY)
    assert view.active == new
    assert set(view.accepted) == {new.kid}
    assert effective_state(old, old_and_new, ROTATION + POLICY.overlap, POLICY) is KeyState.RETIRED


def test_usage_period_end_stops_the_key() -> None:
    key = active("01", T0)
    last = resolve_profile([key], "vaccination", T0 + POLICY.usage_period - MINUTE, POLICY)
    assert last.active == key
    view = resolve_profile([key], "vaccination", T0 + POLICY.usage_period, POLICY)
    assert view.active is None
    assert dict(view.accepted) == {}
    assert "usage period" in view.reason_if_none and "activate a new key" in view.reason_if_none
    assert effective_state(key, [key], T0 + POLICY.usage_period, POLICY) is KeyState.RETIRED


def test_short_dsc_stops_the_key_a_credential_lifetime_before_it_expires() -> None:
    key = active("01", T0, dsc_days=400)
    assert resolve_profile([key], "vaccination", T0 + 34 * DAY, POLICY).active == key
    view = resolve_profile([key], "vaccination", T0 + 35 * DAY, POLICY)
    assert view.active is None
    assert "outlive credentials" in view.reason_if_none


def test_superseded_key_past_its_usage_period_is_not_accepted_in_overlap() -> None:
    old = active("01", T0)
    new = active("02", T0 + POLICY.usage_period - MINUTE)
    view = resolve_profile([old, new], "vaccination", T0 + POLICY.usage_period, POLICY)
    assert view.active == new
    assert set(view.accepted) == {new.kid}


def test_no_key_reasons_tell_the_officer_what_to_do() -> None:
    empty = resolve_profile([], "vaccination", T0, POLICY)
    assert empty.active is None
    assert "no active key for profile 'vaccination'" in empty.reason_if_none
    assert "generate a key" in empty.reason_if_none
    only_ready = resolve_profile([ready("01")], "vaccination", T0, POLICY)
    assert "key 01 has its DSC; schedule its activation" in only_ready.reason_if_none
    future = resolve_profile([active("01", T0 + DAY)], "vaccination", T0, POLICY)
    assert future.active is None
    assert "scheduled to activate at 2026-01-02" in future.reason_if_none


def test_other_profiles_are_ignored() -> None:
    records = [active("01", T0, profile="test")]
    assert resolve_profile(records, "vaccination", T0 + DAY, POLICY).active is None
    assert resolve_profile(records, "test", T0 + DAY, POLICY).active == records[0]


def test_retiring_the_active_key_stops_it_and_does_not_revive_the_superseded_one(
    old_and_new: tuple[KeyRecord, KeyRecord],
) -> None:
    old, new = old_and_new
    retired_new = retire(new, now=ROTATION + DAY, actor="carol", reason="compromise")
    view = resolve_profile([old, retired_new], "vaccination", ROTATION + 2 * DAY, POLICY)
    assert view.active is None
    assert dict(view.accepted) == {}
    assert "was retired" in view.reason_if_none


def test_key_retired_before_its_activation_does_not_supersede(
    old_and_new: tuple[KeyRecord, KeyRecord],
) -> None:
    old, new = old_and_new
    cancelled = retire(new, now=ROTATION - DAY, actor="carol", reason="cancelled")
    view = resolve_profile([old, cancelled], "vaccination", ROTATION + DAY, POLICY)
    assert view.active == old


def test_chained_rotations_within_overlap_accept_all_recent_kids() -> None:
    keys = [active("01", T0), active("02", ROTATION), active("03", ROTATION + 5 * MINUTE)]
    view = resolve_profile(keys, "vaccination", ROTATION + 6 * MINUTE, POLICY)
    assert view.active == keys[2]
    assert set(view.accepted) == {k.kid for k in keys}
    later = resolve_profile(keys, "vaccination", ROTATION + 11 * MINUTE, POLICY)
    assert set(later.accepted) == {keys[1].kid, keys[2].kid}


def test_trust_list_keeps_every_dsc_verifiers_may_meet() -> None:
    now = T0 + 800 * DAY
    signing = active("01", now - DAY, dsc_days=2000)
    upcoming = ready("02", dsc_days=2000)
    retired_after_use = retire(active("03", T0, dsc_days=2000), now=T0 + DAY, actor="c")
    destroyed = destroy(retired_after_use, now=T0 + 2 * DAY, actor="c", force=True, reason="x")
    never_used = retire(ready("04", dsc_days=2000), now=T0, actor="c")
    expired = active("05", T0, dsc_days=730)
    pending = generated(key_id="06", profile="test", label="p", now=T0, actor="a")
    listed = trust_list([signing, upcoming, destroyed, never_used, expired, pending], now)
    assert {r.key_id for r in listed} == {"01", "02", "03"}
