"""An immutable picture of the keys: what the signing path reads, and nothing that writes.

The registry builds a new :class:`KeySnapshot` on every refresh and swaps it in with one
assignment, so a request sees one consistent set of records however the store changes under
it. Every question takes the moment it is asked about: which key signs follows from the records
and the clock (:mod:`signer.keys.rotation`), so the snapshot itself never goes stale in time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from signer.errors import KeyNotFound, KidNotAccepted, PolicyError, UnknownProfile
from signer.keys import rotation
from signer.keys.lifecycle import KeyRecord
from signer.keys.policy import KeyPolicy, stop_signing_at


@dataclass(frozen=True)
class PublicMaterial:
    """What the HSM holds of a key that anybody may see: its DSC and its public key."""

    dsc_der: bytes | None = None
    spki_der: bytes | None = None


@dataclass(frozen=True)
class KeyView:
    """A key as the daemon sees it: its lifecycle record and its public material."""

    record: KeyRecord
    dsc_der: bytes | None
    spki_der: bytes | None
    effective_state: str = ""
    usable_until: datetime | None = None
    signs_new_requests: bool = False
    """The one key of its profile that new requests use now."""
    overlap_ends: datetime | None = None
    """For a superseded key still accepted: when its kid stops being accepted."""

    @property
    def key_id(self) -> str:
        """Hex identifier of the key in the HSM."""
        return self.record.key_id


@dataclass(frozen=True)
class KeySnapshot:
    """Keys, the generation each record was read at, and their public material."""

    profiles: tuple[str, ...]
    policy: KeyPolicy
    records: Mapping[str, KeyRecord]
    generations: Mapping[str, int]
    public: Mapping[str, PublicMaterial]

    @classmethod
    def empty(cls, profiles: tuple[str, ...], policy: KeyPolicy) -> KeySnapshot:
        """The picture before the first load: no keys."""
        return cls(
            profiles, policy, MappingProxyType({}), MappingProxyType({}), MappingProxyType({})
        )

    def require_profile(self, profile: str) -> None:
        """Refuse a profile this appliance does not serve (NOT_FOUND)."""
        if profile not in self.profiles:
            raise UnknownProfile(
                f"unknown profile {profile[:64]!r}; this appliance serves"
                f" {', '.join(self.profiles)}"
            )

    def signing_view(self, profile: str, now: datetime) -> rotation.SigningView:
        """Which key signs ``profile`` at ``now`` and which kids are still accepted."""
        self.require_profile(profile)
        return rotation.resolve_profile(self.records.values(), profile, now, self.policy)

    def signing_key(self, profile: str, now: datetime) -> KeyView:
        """The key that signs new requests of ``profile``; FAILED_PRECONDITION when none."""
        view = self.signing_view(profile, now)
        if view.active is None:
            raise PolicyError(view.reason_if_none)
        return self.view(view.active, now)

    def key_for_kid(self, profile: str, kid: bytes, now: datetime) -> KeyRecord:
        """The key that signs a request carrying ``kid``, or KidNotAccepted with the current kid.

        This is on every signing request, so it returns the bare record: the listing-only
        fields of :class:`KeyView` (effective state, usable-until) are not computed.
        """
        view = self.signing_view(profile, now)
        record = view.accepted.get(kid)
        if record is not None:
            return record
        if view.active is None:
            raise PolicyError(view.reason_if_none)
        current = view.active.kid
        assert current is not None
        raise KidNotAccepted(
            f"kid {kid[:16].hex()} may not sign for profile {profile!r} now; the current kid is "
            f"{current.hex()}: call GetSigningKey, rebuild the protected header and hash again",
            current_kid=current,
        )

    def view(self, record: KeyRecord, now: datetime) -> KeyView:
        """The full view of one record at ``now`` (effective state, usable-until)."""
        material = self.public.get(record.key_id, PublicMaterial())
        of_profile = [r for r in self.records.values() if r.profile == record.profile]
        state = rotation.effective_state(record, of_profile, now, self.policy)
        usable_until = None
        if record.activate_at is not None and record.dsc_not_after is not None:
            usable_until = stop_signing_at(record.activate_at, record.dsc_not_after, self.policy)
        signing = rotation.resolve_profile(of_profile, record.profile, now, self.policy)
        signs = signing.active is not None and signing.active.key_id == record.key_id
        overlap_ends = None if signs else rotation.overlap_end(record, of_profile, now, self.policy)
        return KeyView(
            record,
            material.dsc_der,
            material.spki_der,
            state.value,
            usable_until,
            signs_new_requests=signs,
            overlap_ends=overlap_ends,
        )

    def trust_list(self, now: datetime) -> list[KeyView]:
        """Every key whose DSC verifiers may still meet."""
        return [self.view(r, now) for r in rotation.trust_list(self.records.values(), now)]

    def revoked(self) -> list[KeyRecord]:
        """Revoked keys with a kid: verifiers must distrust what they signed."""
        return list(rotation.revoked(self.records.values()))

    def list_keys(self, now: datetime, profile: str = "") -> list[KeyView]:
        """All keys, optionally of one profile, oldest first."""
        ordered = sorted(self.records.values(), key=lambda r: (r.created_at, r.key_id))
        return [self.view(r, now) for r in ordered if not profile or r.profile == profile]

    def key(self, key_id: str, now: datetime) -> KeyView:
        """One key by its id (NOT_FOUND when unknown)."""
        record = self.records.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id[:40]!r}; `signer keys list` shows the keys")
        return self.view(record, now)
