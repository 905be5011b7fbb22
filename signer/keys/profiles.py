"""Signing profiles (certificate types) and the DCC extended key usages that name them."""

from typing import Final

from signer.errors import PolicyError

PROFILES: Final = ("vaccination", "test", "recovery")

_PROFILE_DIGIT: Final = {"test": "1", "vaccination": "2", "recovery": "3"}

EKU_PREFIX: Final = "1.3.6.1.4.1.1847.2021.1."
"""Current DCC EKU arc (eHealth Network technical specification, volume 1)."""

LEGACY_EKU_PREFIXES: Final = ("1.3.6.1.4.1.0.1847.2021.1.", "1.3.6.1.4.1.1847.2021.0.")
"""Older forms still found in DSCs; ``...4.1.0.1847...`` is the one DGCA verifiers accept."""


def require_profile(profile: str) -> str:
    """Return ``profile`` if it is a known signing profile, else raise :class:`PolicyError`."""
    if profile not in PROFILES:
        raise PolicyError(
            f"profile check failed: unknown profile {profile!r}; use one of {', '.join(PROFILES)}"
        )
    return profile


def eku_for_profile(profile: str) -> str:
    """The current-form DCC EKU OID of ``profile`` (for example ``...2021.1.2`` for vaccination)."""
    return EKU_PREFIX + _PROFILE_DIGIT[require_profile(profile)]


def profile_of_eku(oid: str) -> str | None:
    """The profile an EKU OID stands for, in any accepted form; ``None`` for non-DCC OIDs."""
    for prefix in (EKU_PREFIX, *LEGACY_EKU_PREFIXES):
        if oid.startswith(prefix):
            digit = oid[len(prefix) :]
            for profile, profile_digit in _PROFILE_DIGIT.items():
                if digit == profile_digit:
                    return profile
    return None
