"""Which key of a profile signs now, which kids are still accepted, and the trust list.

Everything follows from the records and the clock, so a rotation happens exactly at the
scheduled time without a background job: a scheduled key whose ``activate_at`` has passed is
active, and the key it supersedes keeps signing requests that carry its kid for
``policy.overlap``, then stops.

Supersession is final: once a later activation has taken effect, the earlier key never becomes
the active key again, even if the later key is retired or stops by policy (the profile then has
no active key until an officer activates a new one). Silently resuming a key people believe
rotated out would be the surprising outcome.
"""

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from signer.keys.lifecycle import KeyRecord, KeyState
from signer.keys.policy import Decision, KeyPolicy, may_sign
from signer.keys.profiles import require_profile
from signer.keys.utc import require_utc

_LIVE = (KeyState.SCHEDULED, KeyState.ACTIVE)
_HOW_TO_START = "generate a key, import its DSC and activate it with `signer keys`"


@dataclass(frozen=True)
class SigningView:
    """The signing situation of one profile at one moment."""

    profile: str
    active: KeyRecord | None
    """The key new signing requests should use (its kid goes into the COSE header)."""
    accepted: Mapping[bytes, KeyRecord] = field(default_factory=lambda: MappingProxyType({}))
    """kid -> key for every kid a request may carry now: the active key plus keys superseded
    less than ``overlap`` ago."""
    reason_if_none: str = ""
    """Empty when there is an active key; otherwise what an officer should do."""


class _Activation(NamedTuple):
    at: datetime
    kid: bytes
    record: KeyRecord


def _activation(record: KeyRecord, now: datetime) -> _Activation | None:
    """The activation of ``record`` if it took effect by ``now``."""
    if record.activate_at is None or record.kid is None or record.activate_at > now:
        return None
    took_effect = record.state in _LIVE or (
        # A retired or destroyed key counts only if it was activated before its retirement.
        record.retired_at is not None and record.retired_at > record.activate_at
    )
    return _Activation(record.activate_at, record.kid, record) if took_effect else None


def _signing_decision(record: KeyRecord, now: datetime, policy: KeyPolicy) -> Decision:
    if record.activate_at is None or record.dsc_not_before is None or record.dsc_not_after is None:
        return Decision(False, f"key {record.key_id} has no DSC or no activation time")
    return may_sign(
        activated_at=record.activate_at,
        dsc_not_before=record.dsc_not_before,
        dsc_not_after=record.dsc_not_after,
        now=now,
        policy=policy,
    )


def _activation_order(records: Iterable[KeyRecord], now: datetime) -> list[_Activation]:
    found = (_activation(r, now) for r in records)
    return sorted((a for a in found if a is not None), key=lambda a: (a.at, a.record.key_id))


def _upcoming(records: Iterable[KeyRecord], now: datetime) -> list[tuple[datetime, str]]:
    return sorted(
        (r.activate_at, r.key_id)
        for r in records
        if r.state in _LIVE and r.activate_at is not None and r.activate_at > now
    )


def _why_none(
    records: list[KeyRecord],
    latest: KeyRecord | None,
    now: datetime,
    policy: KeyPolicy,
    profile: str,
) -> str:
    head = f"no active key for profile {profile!r}: "
    upcoming = _upcoming(records, now)
    when = ""
    if upcoming:
        when = f"; key {upcoming[0][1]} is scheduled to activate at {upcoming[0][0].isoformat()}"
    if latest is None:
        ready = [r.key_id for r in records if r.state is KeyState.READY]
        pending = [r.key_id for r in records if r.state is KeyState.PENDING]
        if ready:
            return head + f"key {ready[0]} has its DSC; schedule its activation" + when
        if pending:
            return head + f"key {pending[0]} waits for its DSC; import it, then activate" + when
        if upcoming:
            return head + when.removeprefix("; ")
        return head + _HOW_TO_START
    if latest.state not in _LIVE:
        return head + f"the last activated key {latest.key_id} was retired; {_HOW_TO_START}" + when
    reason = _signing_decision(latest, now, policy).reason
    return head + f"key {latest.key_id}: {reason}" + when


def resolve_profile(
    records: Iterable[KeyRecord], profile: str, now: datetime, policy: KeyPolicy
) -> SigningView:
    """The signing view of ``profile`` at ``now``.

    ``active`` is the key whose activation took effect last (greatest ``activate_at`` <= now,
    ties broken by key_id), if it is not retired and the policy still lets it sign.
    ``accepted`` adds each earlier key superseded less than ``policy.overlap`` ago that is
    neither retired nor stopped by the policy.
    """
    require_profile(profile)
    moment = require_utc(now, "now")
    of_profile = [r for r in records if r.profile == profile]
    ordered = _activation_order(of_profile, moment)
    accepted: dict[bytes, KeyRecord] = {}
    for earlier, later in itertools.pairwise(ordered):
        if (
            earlier.record.state in _LIVE
            and moment < later.at + policy.overlap
            and _signing_decision(earlier.record, moment, policy).allowed
        ):
            accepted[earlier.kid] = earlier.record
    latest = ordered[-1] if ordered else None
    active = None
    if (
        latest is not None
        and latest.record.state in _LIVE
        and _signing_decision(latest.record, moment, policy).allowed
    ):
        active = latest.record
        accepted[latest.kid] = latest.record
    latest_record = latest.record if latest is not None else None
    return SigningView(
        profile=profile,
        active=active,
        accepted=MappingProxyType(accepted),
        reason_if_none=(
            "" if active else _why_none(of_profile, latest_record, moment, policy, profile)
        ),
    )


def effective_state(
    record: KeyRecord,
    all_records_of_profile: Iterable[KeyRecord],
    now: datetime,
    policy: KeyPolicy,
) -> KeyState:
    """The state to show for ``record`` at ``now``, derived from the clock.

    A scheduled key whose time has come is ``active`` while it signs (as the active key or in
    its overlap after being superseded) and ``retired`` once it may no longer sign.
    """
    moment = require_utc(now, "now")
    if record.state not in _LIVE:
        return record.state
    if record.activate_at is None or record.activate_at > moment:
        return KeyState.SCHEDULED
    others = [r for r in all_records_of_profile if r.key_id != record.key_id]
    view = resolve_profile([*others, record], record.profile, moment, policy)
    signing = view.accepted.get(record.kid) if record.kid is not None else None
    if signing is not None and signing.key_id == record.key_id:
        return KeyState.ACTIVE
    return KeyState.RETIRED


def trust_list(records: Iterable[KeyRecord], now: datetime) -> tuple[KeyRecord, ...]:
    """Keys whose DSC verifiers may still meet: DSC not expired, whatever the key's state.

    Retired and destroyed keys stay while their DSC is valid (credentials they signed are
    still out there); ready and scheduled keys are included ahead of their first signature.
    Keys retired before their activation ever took effect signed nothing and are left out,
    and so are revoked keys (also once destroyed): verifiers must stop trusting them.
    Ordered by DSC start, then key_id.
    """
    moment = require_utc(now, "now")
    listed = []
    for record in records:
        if record.kid is None or record.dsc_not_after is None or record.dsc_not_after <= moment:
            continue
        if record.revoked_at is not None:
            continue
        retired = record.state in (KeyState.RETIRED, KeyState.DESTROYED)
        if retired and _activation(record, record.retired_at or moment) is None:
            continue
        listed.append(record)
    return tuple(sorted(listed, key=lambda r: (r.dsc_not_before, r.key_id)))


def revoked(records: Iterable[KeyRecord]) -> tuple[KeyRecord, ...]:
    """Revoked keys that have a kid, oldest revocation first: what partners must distrust."""
    found = [r for r in records if r.revoked_at is not None and r.kid is not None]
    return tuple(sorted(found, key=lambda r: (r.revoked_at, r.key_id)))


def overlap_end(
    record: KeyRecord, records_of_profile: Iterable[KeyRecord], now: datetime, policy: KeyPolicy
) -> datetime | None:
    """When a superseded key that is still accepted stops being accepted, else None."""
    moment = require_utc(now, "now")
    records = list(records_of_profile)
    view = resolve_profile(records, record.profile, moment, policy)
    if record.kid is None or record.kid not in view.accepted or view.active is None:
        return None
    if view.active.key_id == record.key_id:
        return None
    for earlier, later in itertools.pairwise(_activation_order(records, moment)):
        if earlier.record.key_id == record.key_id:
            return later.at + policy.overlap
    return None
