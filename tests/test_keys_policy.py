"""KeyPolicy: when a key stops signing, may_sign / may_activate decisions, metric helpers."""

from datetime import UTC, datetime, timedelta

import pytest

from signer.errors import ConfigError, SignerError
from signer.keys.policy import (
    KeyPolicy,
    may_activate,
    may_sign,
    rotation_due,
    seconds_until_dsc_expiry,
    seconds_until_stop_signing,
    stop_signing_at,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = KeyPolicy()


def test_defaults_follow_dcc_governance() -> None:
    assert POLICY.usage_period == 182 * DAY
    assert POLICY.credential_lifetime == 365 * DAY
    assert POLICY.overlap == timedelta(minutes=10)
    assert POLICY.warn_before == 30 * DAY


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"usage_period must be positive"):
        KeyPolicy(usage_period=timedelta(0))
    with pytest.raises(ConfigError, match=r"overlap must not be negative"):
        KeyPolicy(overlap=timedelta(seconds=-1))


def test_stop_is_usage_period_end_when_dsc_is_long() -> None:
    assert stop_signing_at(T0, T0 + 730 * DAY, POLICY) == T0 + 182 * DAY


def test_stop_is_dsc_end_minus_credential_lifetime_when_dsc_is_short() -> None:
    assert stop_signing_at(T0, T0 + 400 * DAY, POLICY) == T0 + 35 * DAY


def test_may_sign_within_window_and_not_after_usage_period() -> None:
    args = {"activated_at": T0, "dsc_not_before": T0 - DAY, "dsc_not_after": T0 + 730 * DAY}
    inside = may_sign(**args, now=T0 + 181 * DAY, policy=POLICY)
    assert inside.allowed
    after = may_sign(**args, now=T0 + 182 * DAY, policy=POLICY)
    assert not after.allowed
    assert "usage period" in after.reason and "activate a new key" in after.reason
    before = may_sign(**args, now=T0 - timedelta(seconds=1), policy=POLICY)
    assert not before.allowed and "not active before" in before.reason


def test_may_sign_refuses_when_credentials_would_outlive_dsc() -> None:
    decision = may_sign(
        activated_at=T0,
        dsc_not_before=T0 - DAY,
        dsc_not_after=T0 + 400 * DAY,
        now=T0 + 36 * DAY,
        policy=POLICY,
    )
    assert not decision.allowed
    assert "must outlive credentials by 365 days" in decision.reason


def test_may_activate() -> None:
    ok = may_activate(
        activate_at=T0, dsc_not_before=T0, dsc_not_after=T0 + 730 * DAY, policy=POLICY
    )
    assert ok.allowed and "until" in ok.reason
    early = may_activate(
        activate_at=T0 - DAY, dsc_not_before=T0, dsc_not_after=T0 + 730 * DAY, policy=POLICY
    )
    assert not early.allowed and "not valid before" in early.reason
    short = may_activate(
        activate_at=T0, dsc_not_before=T0, dsc_not_after=T0 + 365 * DAY, policy=POLICY
    )
    assert not short.allowed and "longer validity" in short.reason


def test_metric_helpers() -> None:
    assert seconds_until_stop_signing(
        activated_at=T0, dsc_not_after=T0 + 730 * DAY, now=T0 + 82 * DAY, policy=POLICY
    ) == pytest.approx((100 * DAY).total_seconds())
    assert (
        seconds_until_stop_signing(
            activated_at=T0, dsc_not_after=T0 + 730 * DAY, now=T0 + 300 * DAY, policy=POLICY
        )
        == 0.0
    )
    assert seconds_until_dsc_expiry(T0 + DAY, T0) == DAY.total_seconds()
    assert seconds_until_dsc_expiry(T0, T0 + DAY) == 0.0
    long_dsc = T0 + 730 * DAY
    assert not rotation_due(
        activated_at=T0, dsc_not_after=long_dsc, now=T0 + 151 * DAY, policy=POLICY
    )
    assert rotation_due(activated_at=T0, dsc_not_after=long_dsc, now=T0 + 152 * DAY, policy=POLICY)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(SignerError, match=r"naive datetime"):
        stop_signing_at(datetime(2026, 1, 1), T0, POLICY)
