"""The lifecycle record of an HSM key and the legal moves between its states.

The record lives on the token as CBOR (a ``CKO_DATA`` object sharing the key's ``CKA_ID``), so
every appliance pointed at the token sees the same states. Transitions are pure functions:
each takes a record and returns a new one with a history entry, or raises
:class:`~signer.errors.PolicyError` saying why the move is illegal and what to do instead.

Stored states only change through these functions. Whether a scheduled key is already
signing, or a superseded key has stopped, follows from the clock; see
:mod:`signer.keys.rotation`.
"""

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from signer.errors import PolicyError
from signer.keys.cbor_fields import FieldReader, RecordFormatError, encode, optional_time
from signer.keys.dsc_checks import DscInfo
from signer.keys.kid import KID_BYTES
from signer.keys.policy import KeyPolicy, may_activate
from signer.keys.profiles import PROFILES
from signer.keys.utc import from_unix, require_utc, to_unix

RECORD_FORMAT_VERSION: Final = 2
_KEY_ID = re.compile(r"(?:[0-9a-f]{2}){1,64}")


class KeyState(enum.StrEnum):
    """Lifecycle states. ``active`` is mostly derived: a scheduled key whose time has come."""

    PENDING = "pending"
    """Generated in the HSM, waiting for its DSC."""
    READY = "ready"
    """DSC imported; may be scheduled for activation."""
    SCHEDULED = "scheduled"
    """Activation set for ``activate_at`` (signing from then on)."""
    ACTIVE = "active"
    """Signing (effective state; also accepted when stored)."""
    RETIRED = "retired"
    """Never signs again; the DSC stays in the trust list until it expires."""
    REVOKED = "revoked"
    """Withdrawn after a compromise: never signs again, and verifiers are told to distrust it."""
    DESTROYED = "destroyed"
    """Private key destroyed in the HSM."""


@dataclass(frozen=True)
class HistoryEntry:
    """One event in a key's life."""

    at: datetime
    event: str
    actor: str
    detail: str = ""


@dataclass(frozen=True)
class KeyRecord:
    """The lifecycle record of one HSM key (all times timezone-aware UTC)."""

    key_id: str
    """Lower-case hex of the key's ``CKA_ID``."""
    profile: str
    label: str
    state: KeyState
    created_at: datetime
    kid: bytes | None = None
    dsc_not_before: datetime | None = None
    dsc_not_after: datetime | None = None
    activate_at: datetime | None = None
    """When the activation takes (or took) effect."""
    retired_at: datetime | None = None
    destroyed_at: datetime | None = None
    revoked_at: datetime | None = None
    history: tuple[HistoryEntry, ...] = field(default=())
    authority: bytes | None = None
    """The signed change (:class:`signer.keys.governance.SignedChange`, CBOR) that made the
    last governed move (activate, retire, revoke, destroy); every daemon verifies it."""

    def __post_init__(self) -> None:
        problem = _invariant_problem(self)
        if problem:
            raise RecordFormatError(f"key record check failed: {problem}")

    def to_cbor(self) -> bytes:
        """Canonical CBOR of the record, with its format version; times as unix seconds."""
        return encode(
            {
                "v": RECORD_FORMAT_VERSION,
                "key_id": self.key_id,
                "profile": self.profile,
                "label": self.label,
                "state": self.state.value,
                "created_at": to_unix(self.created_at),
                "kid": self.kid,
                "dsc_not_before": optional_time(self.dsc_not_before),
                "dsc_not_after": optional_time(self.dsc_not_after),
                "activate_at": optional_time(self.activate_at),
                "retired_at": optional_time(self.retired_at),
                "destroyed_at": optional_time(self.destroyed_at),
                "revoked_at": optional_time(self.revoked_at),
                "authority": self.authority,
                "history": [
                    [to_unix(entry.at), entry.event, entry.actor, entry.detail]
                    for entry in self.history
                ],
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> "KeyRecord":
        """Decode :meth:`to_cbor` output; raises :class:`RecordFormatError` on any deviation."""
        reader = FieldReader(data, "key record", RECORD_FORMAT_VERSION)
        state_text = reader.text("state")
        try:
            state = KeyState(state_text)
        except ValueError as exc:
            raise reader.error(f"unknown state {state_text!r}") from exc
        history = tuple(_history_entry(reader, item) for item in reader.array("history"))
        record = cls(
            key_id=reader.text("key_id"),
            profile=reader.text("profile"),
            label=reader.text("label"),
            state=state,
            created_at=reader.time("created_at"),
            kid=reader.optional_bytes("kid"),
            dsc_not_before=reader.optional_time("dsc_not_before"),
            dsc_not_after=reader.optional_time("dsc_not_after"),
            activate_at=reader.optional_time("activate_at"),
            retired_at=reader.optional_time("retired_at"),
            destroyed_at=reader.optional_time("destroyed_at"),
            revoked_at=reader.optional_time("revoked_at"),
            history=history,
            authority=reader.optional_bytes("authority"),
        )
        reader.finish()
        return record


def _history_entry(reader: FieldReader, item: Any) -> HistoryEntry:
    if (
        not isinstance(item, list)
        or len(item) != 4
        or isinstance(item[0], bool)
        or not isinstance(item[0], int | float)
        or not all(isinstance(text, str) for text in item[1:])
    ):
        raise reader.error("a history entry is not [time, event, actor, detail]")
    return HistoryEntry(at=from_unix(item[0]), event=item[1], actor=item[2], detail=item[3])


def _invariant_problem(record: KeyRecord) -> str:
    if not _KEY_ID.fullmatch(record.key_id):
        return f"key_id {record.key_id!r} is not lower-case hex of 1 to 64 bytes"
    if record.profile not in PROFILES:
        return f"profile {record.profile!r} is not one of {', '.join(PROFILES)}"
    certified = record.kid is not None
    if certified != (record.dsc_not_before is not None) or certified != (
        record.dsc_not_after is not None
    ):
        return "kid and DSC validity must be set together"
    if record.kid is not None and len(record.kid) != KID_BYTES:
        return f"kid must be {KID_BYTES} bytes, not {len(record.kid)}"
    if record.state in (KeyState.READY, KeyState.SCHEDULED, KeyState.ACTIVE) and not certified:
        return f"a {record.state.value} key must have a DSC"
    if record.state in (KeyState.SCHEDULED, KeyState.ACTIVE) and record.activate_at is None:
        return f"a {record.state.value} key must have activate_at"
    if (
        record.state in (KeyState.RETIRED, KeyState.REVOKED, KeyState.DESTROYED)
        and record.retired_at is None
    ):
        return f"a {record.state.value} key must have retired_at"
    if record.state is KeyState.REVOKED and record.revoked_at is None:
        return "a revoked key must have revoked_at"
    if record.state is KeyState.DESTROYED and record.destroyed_at is None:
        return "a destroyed key must have destroyed_at"
    return ""


def _require_actor(actor: str) -> str:
    if not actor.strip():
        raise PolicyError("actor check failed: every key change must name the person doing it")
    return actor


def _moved(
    record: KeyRecord, now: datetime, event: str, actor: str, detail: str, **changes: Any
) -> KeyRecord:
    entry = HistoryEntry(
        at=require_utc(now, "now"), event=event, actor=_require_actor(actor), detail=detail
    )
    return replace(record, history=(*record.history, entry), **changes)


def _refuse(record: KeyRecord, move: str, allowed_from: str, hint: str) -> PolicyError:
    return PolicyError(
        f"{move} refused: key {record.key_id} is {record.state.value}, but {move} needs a key "
        f"that is {allowed_from}; {hint}"
    )


def generated(*, key_id: str, profile: str, label: str, now: datetime, actor: str) -> KeyRecord:
    """The record of a key just generated in the HSM: state pending (waiting for its DSC)."""
    moment = require_utc(now, "now")
    record = KeyRecord(
        key_id=key_id, profile=profile, label=label, state=KeyState.PENDING, created_at=moment
    )
    return _moved(record, moment, "generated", actor, f"profile={profile} label={label}")


def certificate_imported(
    record: KeyRecord, dsc: DscInfo, *, now: datetime, actor: str
) -> KeyRecord:
    """pending -> ready: attach a DSC that passed :func:`signer.keys.dsc_checks.check_dsc`."""
    if record.state is not KeyState.PENDING:
        raise _refuse(
            record,
            "certificate import",
            "pending",
            "a key gets exactly one DSC; generate a new key for a new certificate",
        )
    return _moved(
        record,
        now,
        "certificate imported",
        actor,
        f"kid={dsc.kid.hex()} subject={dsc.subject} valid {dsc.not_before.isoformat()} .. "
        f"{dsc.not_after.isoformat()}",
        state=KeyState.READY,
        kid=dsc.kid,
        dsc_not_before=dsc.not_before,
        dsc_not_after=dsc.not_after,
    )


def schedule_activation(
    record: KeyRecord, *, at: datetime, now: datetime, actor: str, policy: KeyPolicy
) -> KeyRecord:
    """ready -> scheduled: the key signs from ``max(at, now)`` on (no job needed at that time).

    A time in the past means "now", so that an approval arriving late never back-dates an
    activation and shortens the previous key's overlap. A scheduled key whose activation has
    not taken effect yet may be rescheduled.
    """
    moment = require_utc(now, "now")
    effective = max(require_utc(at, "activate_at"), moment)
    rescheduling = (
        record.state is KeyState.SCHEDULED
        and record.activate_at is not None
        and record.activate_at > moment
    )
    if record.state is not KeyState.READY and not rescheduling:
        raise _refuse(
            record,
            "activation",
            "ready (DSC imported) or scheduled and not yet in effect",
            "import the DSC first, or generate a new key if this one was retired or has "
            "already been activated",
        )
    if record.dsc_not_before is None or record.dsc_not_after is None:
        raise PolicyError(f"activation refused: key {record.key_id} has no DSC; import it first")
    decision = may_activate(
        activate_at=effective,
        dsc_not_before=record.dsc_not_before,
        dsc_not_after=record.dsc_not_after,
        policy=policy,
    )
    if not decision.allowed:
        raise PolicyError(f"activation refused for key {record.key_id}: {decision.reason}")
    return _moved(
        record,
        moment,
        "activation rescheduled" if rescheduling else "activation scheduled",
        actor,
        f"activate_at={effective.isoformat()}; {decision.reason}",
        state=KeyState.SCHEDULED,
        activate_at=effective,
    )


def retire(record: KeyRecord, *, now: datetime, actor: str, reason: str = "") -> KeyRecord:
    """pending|ready|scheduled|active -> retired: the key never signs again, from ``now``.

    Its DSC stays in the trust list until it expires, so credentials already signed still
    verify.
    """
    if record.state not in (
        KeyState.PENDING,
        KeyState.READY,
        KeyState.SCHEDULED,
        KeyState.ACTIVE,
    ):
        raise _refuse(
            record,
            "retirement",
            "pending, ready, scheduled or active",
            "nothing to do, the key is already out of service",
        )
    moment = require_utc(now, "now")
    return _moved(
        record, moment, "retired", actor, reason, state=KeyState.RETIRED, retired_at=moment
    )


def destroy(
    record: KeyRecord, *, now: datetime, actor: str, force: bool = False, reason: str = ""
) -> KeyRecord:
    """retired -> destroyed (the caller then deletes the private key in the HSM).

    Refused before the DSC expires unless ``force`` is set with a non-empty ``reason`` (for
    example a compromise). Destroying a scheduled or active key is always refused: retire it
    first, so that the refusal of its signatures is recorded before the key disappears.
    """
    moment = require_utc(now, "now")
    if record.state in (KeyState.SCHEDULED, KeyState.ACTIVE):
        raise PolicyError(
            f"destruction refused: key {record.key_id} is {record.state.value} (it signs or "
            "will sign); retire it first, then destroy it"
        )
    if record.state not in (KeyState.RETIRED, KeyState.REVOKED):
        raise _refuse(record, "destruction", "retired or revoked", "retire it first")
    if force and not reason.strip():
        raise PolicyError(
            f"forced destruction refused for key {record.key_id}: a forced destruction needs a "
            "reason for the audit log (for example 'key compromise, incident 42')"
        )
    revoked = record.state is KeyState.REVOKED
    if (
        record.dsc_not_after is not None
        and moment < record.dsc_not_after
        and not (force or revoked)
    ):
        raise PolicyError(
            f"destruction refused: the DSC of key {record.key_id} is valid until "
            f"{record.dsc_not_after.isoformat()}; wait until then, or force it with a reason"
        )
    detail = f"forced: {reason}" if force else reason
    return _moved(
        record,
        moment,
        "destroyed",
        actor,
        detail,
        state=KeyState.DESTROYED,
        destroyed_at=moment,
    )


def revoke(record: KeyRecord, *, now: datetime, actor: str, reason: str) -> KeyRecord:
    """Any state but destroyed -> revoked: withdrawn at once after a compromise.

    Unlike retirement there is no overlap and the DSC leaves the trust list: verifiers are told
    to distrust everything the key signed. A reason is required for the audit log.
    """
    if record.state in (KeyState.REVOKED, KeyState.DESTROYED):
        raise _refuse(
            record,
            "revocation",
            "not yet revoked or destroyed",
            "a destroyed key signs nothing; its DSC can be distrusted by its kid",
        )
    if not reason.strip():
        raise PolicyError(
            f"revocation refused for key {record.key_id}: give a reason for the audit log"
            " (for example 'private key exposed, incident 42')"
        )
    moment = require_utc(now, "now")
    return _moved(
        record,
        moment,
        "revoked",
        actor,
        reason,
        state=KeyState.REVOKED,
        retired_at=record.retired_at or moment,
        revoked_at=moment,
    )
