"""Key lifecycle record: legal and illegal transitions, CBOR round trip."""

import hashlib
from datetime import UTC, datetime, timedelta

import cbor2
import pytest

from signer.errors import PolicyError
from signer.keys.cbor_fields import RecordFormatError
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

T0 = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = KeyPolicy()


def dsc_info(seed: str, not_before: datetime = T0 - DAY, days: int = 730) -> DscInfo:
    return DscInfo(
        kid=hashlib.sha256(seed.encode()).digest()[:8],
        subject="C=VN, CN=" + seed,
        issuer="C=VN, CN=CSCA",
        country="VN",
        serial_number=1,
        not_before=not_before,
        not_after=not_before + days * DAY,
        spki_der=b"",
        ekus=(),
        der=b"",
    )


def pending(key_id: str = "00aa11bb22cc33dd") -> KeyRecord:
    return generated(key_id=key_id, profile="vaccination", label="vac-1", now=T0, actor="alice")


def ready(key_id: str = "00aa11bb22cc33dd") -> KeyRecord:
    return certificate_imported(pending(key_id), dsc_info(key_id), now=T0, actor="alice")


def test_generated_key_is_pending_with_history() -> None:
    record = pending()
    assert record.state is KeyState.PENDING
    assert record.kid is None and record.created_at == T0
    assert [(e.event, e.actor) for e in record.history] == [("generated", "alice")]


def test_bad_key_id_profile_and_actor_are_refused() -> None:
    with pytest.raises(RecordFormatError, match=r"lower-case hex"):
        generated(key_id="XYZ", profile="vaccination", label="l", now=T0, actor="a")
    with pytest.raises(RecordFormatError, match=r"profile 'booster'"):
        generated(key_id="aa", profile="booster", label="l", now=T0, actor="a")
    with pytest.raises(PolicyError, match=r"actor check"):
        generated(key_id="aa", profile="test", label="l", now=T0, actor=" ")


def test_import_sets_kid_and_dsc_validity() -> None:
    info = dsc_info("k")
    record = certificate_imported(pending(), info, now=T0, actor="bob")
    assert record.state is KeyState.READY
    assert record.kid == info.kid
    assert (record.dsc_not_before, record.dsc_not_after) == (info.not_before, info.not_after)
    assert record.history[-1].event == "certificate imported"
    assert info.kid.hex() in record.history[-1].detail


def test_second_import_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"certificate import refused: key .* is ready"):
        certificate_imported(ready(), dsc_info("other"), now=T0, actor="bob")


def test_schedule_activation_from_ready() -> None:
    record = schedule_activation(ready(), at=T0 + DAY, now=T0, actor="bob", policy=POLICY)
    assert record.state is KeyState.SCHEDULED
    assert record.activate_at == T0 + DAY


def test_activation_in_the_past_takes_effect_now() -> None:
    record = schedule_activation(ready(), at=T0 - DAY, now=T0, actor="bob", policy=POLICY)
    assert record.activate_at == T0


def test_activation_of_pending_or_retired_key_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"activation refused: key .* is pending"):
        schedule_activation(pending(), at=T0, now=T0, actor="bob", policy=POLICY)
    retired = retire(ready(), now=T0, actor="bob")
    with pytest.raises(PolicyError, match=r"activation refused: key .* is retired"):
        schedule_activation(retired, at=T0, now=T0, actor="bob", policy=POLICY)


def test_activation_with_too_short_dsc_is_refused() -> None:
    record = certificate_imported(pending(), dsc_info("s", days=365), now=T0, actor="a")
    with pytest.raises(PolicyError, match=r"activation refused.*longer validity"):
        schedule_activation(record, at=T0, now=T0, actor="bob", policy=POLICY)


def test_reschedule_only_before_activation_takes_effect() -> None:
    scheduled = schedule_activation(ready(), at=T0 + DAY, now=T0, actor="bob", policy=POLICY)
    moved = schedule_activation(scheduled, at=T0 + 2 * DAY, now=T0, actor="bob", policy=POLICY)
    assert moved.activate_at == T0 + 2 * DAY
    assert moved.history[-1].event == "activation rescheduled"
    with pytest.raises(PolicyError, match=r"activation refused"):
        schedule_activation(scheduled, at=T0 + 3 * DAY, now=T0 + DAY, actor="bob", policy=POLICY)


@pytest.mark.parametrize("stage", ["pending", "ready", "scheduled", "active"])
def test_retire_from_live_states(stage: str) -> None:
    record = pending() if stage == "pending" else ready()
    if stage in ("scheduled", "active"):
        record = schedule_activation(record, at=T0, now=T0, actor="a", policy=POLICY)
    retired = retire(record, now=T0 + DAY, actor="carol", reason="rotation")
    assert retired.state is KeyState.RETIRED
    assert retired.retired_at == T0 + DAY
    assert retired.history[-1].detail == "rotation"


def test_retire_twice_is_refused() -> None:
    retired = retire(ready(), now=T0, actor="a")
    with pytest.raises(PolicyError, match=r"retirement refused"):
        retire(retired, now=T0, actor="a")


def test_destroying_active_key_is_refused() -> None:
    active = schedule_activation(ready(), at=T0, now=T0, actor="a", policy=POLICY)
    with pytest.raises(PolicyError, match=r"destruction refused: .* retire it first"):
        destroy(active, now=T0 + 1000 * DAY, actor="a", force=True, reason="x")


def test_destroy_before_dsc_expiry_needs_force_and_reason() -> None:
    retired = retire(ready(), now=T0, actor="a")
    assert retired.dsc_not_after is not None
    with pytest.raises(PolicyError, match=r"DSC of key .* is valid until"):
        destroy(retired, now=T0 + DAY, actor="a")
    with pytest.raises(PolicyError, match=r"needs a reason"):
        destroy(retired, now=T0 + DAY, actor="a", force=True, reason="  ")
    forced = destroy(retired, now=T0 + DAY, actor="a", force=True, reason="key compromise")
    assert forced.state is KeyState.DESTROYED
    assert forced.history[-1].detail == "forced: key compromise"
    after = destroy(retired, now=retired.dsc_not_after, actor="a")
    assert after.state is KeyState.DESTROYED and after.destroyed_at == retired.dsc_not_after
    with pytest.raises(PolicyError, match=r"destruction refused"):
        destroy(after, now=after.dsc_not_after or T0, actor="a")


def test_destroy_of_ready_key_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"destruction refused: .* is ready"):
        destroy(ready(), now=T0 + 1000 * DAY, actor="a")


def test_cbor_round_trip_keeps_everything_and_is_canonical() -> None:
    record = schedule_activation(
        ready(), at=T0 + timedelta(days=1, microseconds=123457), now=T0, actor="bob", policy=POLICY
    )
    record = retire(record, now=T0 + timedelta(days=2, seconds=0.5), actor="c", reason="r")
    data = record.to_cbor()
    again = KeyRecord.from_cbor(data)
    assert again == record
    assert again.to_cbor() == data
    decoded = cbor2.loads(data)
    assert decoded["v"] == 2
    assert decoded["state"] == "retired"
    assert decoded["authority"] is None and decoded["revoked_at"] is None
    assert isinstance(decoded["created_at"], int)
    assert isinstance(decoded["activate_at"], float)
    assert data == cbor2.dumps(decoded, canonical=True)


def test_damaged_cbor_is_refused() -> None:
    decoded = cbor2.loads(ready().to_cbor())
    with pytest.raises(RecordFormatError, match=r"not CBOR"):
        KeyRecord.from_cbor(b"\xff\x00")
    with pytest.raises(RecordFormatError, match=r"1 bytes follow"):
        KeyRecord.from_cbor(ready().to_cbor() + b"\x00")
    with pytest.raises(
        RecordFormatError, match=r"format version is 1, this signer reads version 2"
    ):
        KeyRecord.from_cbor(cbor2.dumps({**decoded, "v": 1}))
    with pytest.raises(RecordFormatError, match=r"unknown fields \['extra'\]"):
        KeyRecord.from_cbor(cbor2.dumps({**decoded, "extra": 1}))
    with pytest.raises(RecordFormatError, match=r"unknown state 'live'"):
        KeyRecord.from_cbor(cbor2.dumps({**decoded, "state": "live"}))
    with pytest.raises(RecordFormatError, match=r"'kid' has type str"):
        KeyRecord.from_cbor(cbor2.dumps({**decoded, "kid": "abc"}))
    with pytest.raises(RecordFormatError, match=r"must have a DSC"):
        KeyRecord.from_cbor(
            cbor2.dumps({**decoded, "kid": None, "dsc_not_before": None, "dsc_not_after": None})
        )
    with pytest.raises(RecordFormatError, match=r"field 'label' is missing"):
        KeyRecord.from_cbor(cbor2.dumps({k: v for k, v in decoded.items() if k != "label"}))
