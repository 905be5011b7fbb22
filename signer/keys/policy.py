"""When a key may sign: usage period, credential lifetime against DSC validity, overlap.

Pure functions of times. eHealth Network certificate governance: private-key usage period
about 6 months, DSC about 2 years, and a credential (QR code, 12 months) must not outlive the
DSC that verifies it. So a key stops signing at the earlier of ``activated_at + usage_period``
and ``dsc_not_after - credential_lifetime``.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from signer.errors import ConfigError
from signer.keys.utc import require_utc


@dataclass(frozen=True)
class KeyPolicy:
    """The rotation numbers; all configurable, defaults from the DCC governance."""

    usage_period: timedelta = timedelta(days=182)
    """How long a key signs after its activation."""
    credential_lifetime: timedelta = timedelta(days=365)
    """How long a signed credential lives; the DSC must outlast it."""
    overlap: timedelta = timedelta(minutes=10)
    """How long a superseded key still signs requests that carry its kid."""
    warn_before: timedelta = timedelta(days=30)
    """How long before the stop-signing time monitoring should warn."""

    def __post_init__(self) -> None:
        for name in ("usage_period", "credential_lifetime"):
            if getattr(self, name) <= timedelta(0):
                raise ConfigError(f"key policy check failed: {name} must be positive")
        for name in ("overlap", "warn_before"):
            if getattr(self, name) < timedelta(0):
                raise ConfigError(f"key policy check failed: {name} must not be negative")


@dataclass(frozen=True)
class Decision:
    """A yes/no answer of the policy with the reason a person can act on."""

    allowed: bool
    reason: str


def stop_signing_at(activated_at: datetime, dsc_not_after: datetime, policy: KeyPolicy) -> datetime:
    """The moment a key activated at ``activated_at`` must stop signing."""
    return min(
        require_utc(activated_at, "activated_at") + policy.usage_period,
        require_utc(dsc_not_after, "dsc_not_after") - policy.credential_lifetime,
    )


def _stop_reason(activated_at: datetime, dsc_not_after: datetime, policy: KeyPolicy) -> str:
    if activated_at + policy.usage_period <= dsc_not_after - policy.credential_lifetime:
        return f"its usage period of {policy.usage_period.days} days since activation ends"
    return (
        f"its DSC (valid until {dsc_not_after.isoformat()}) must outlive credentials by "
        f"{policy.credential_lifetime.days} days"
    )


def may_sign(
    *,
    activated_at: datetime,
    dsc_not_before: datetime,
    dsc_not_after: datetime,
    now: datetime,
    policy: KeyPolicy,
) -> Decision:
    """Whether a key activated at ``activated_at`` may sign at ``now`` (ignoring rotation)."""
    activated = require_utc(activated_at, "activated_at")
    moment = require_utc(now, "now")
    not_before = require_utc(dsc_not_before, "dsc_not_before")
    not_after = require_utc(dsc_not_after, "dsc_not_after")
    stop = stop_signing_at(activated, not_after, policy)
    if moment < activated:
        return Decision(False, f"the key is not active before {activated.isoformat()}")
    if moment < not_before:
        return Decision(False, f"the key's DSC is not valid before {not_before.isoformat()}")
    if moment >= stop:
        return Decision(
            False,
            f"the key stopped signing at {stop.isoformat()} because "
            f"{_stop_reason(activated, not_after, policy)}; activate a new key",
        )
    return Decision(True, f"the key may sign until {stop.isoformat()}")


def may_activate(
    *,
    activate_at: datetime,
    dsc_not_before: datetime,
    dsc_not_after: datetime,
    policy: KeyPolicy,
) -> Decision:
    """Whether a key whose DSC has the given validity may be activated at ``activate_at``."""
    activate = require_utc(activate_at, "activate_at")
    not_before = require_utc(dsc_not_before, "dsc_not_before")
    not_after = require_utc(dsc_not_after, "dsc_not_after")
    if activate < not_before:
        return Decision(
            False,
            f"the DSC is not valid before {not_before.isoformat()}; activate at or after then",
        )
    stop = stop_signing_at(activate, not_after, policy)
    if stop <= activate:
        return Decision(
            False,
            f"the DSC expires at {not_after.isoformat()}, so credentials of "
            f"{policy.credential_lifetime.days} days may only be signed until {stop.isoformat()}, "
            "before the activation time; request a DSC with a longer validity",
        )
    return Decision(
        True,
        f"the key may sign from {activate.isoformat()} until {stop.isoformat()} (then "
        f"{_stop_reason(activate, not_after, policy)})",
    )


def seconds_until_stop_signing(
    *, activated_at: datetime, dsc_not_after: datetime, now: datetime, policy: KeyPolicy
) -> float:
    """Seconds from ``now`` until the key must stop signing; 0 once it has stopped."""
    stop = stop_signing_at(activated_at, dsc_not_after, policy)
    return max(0.0, (stop - require_utc(now, "now")).total_seconds())


def seconds_until_dsc_expiry(dsc_not_after: datetime, now: datetime) -> float:
    """Seconds from ``now`` until the DSC expires; 0 once it has expired."""
    left = require_utc(dsc_not_after, "dsc_not_after") - require_utc(now, "now")
    return max(0.0, left.total_seconds())


def rotation_due(
    *, activated_at: datetime, dsc_not_after: datetime, now: datetime, policy: KeyPolicy
) -> bool:
    """True once ``now`` is within ``warn_before`` of the stop-signing time (time to rotate)."""
    stop = stop_signing_at(activated_at, dsc_not_after, policy)
    return require_utc(now, "now") >= stop - policy.warn_before
