"""The daemon's view of the keys on the token, and the officer operations that change them.

The token is the source of truth (DESIGN.md §3.3): lifecycle records and pending changes are
data objects on it, read through the HSM worker processes. The registry keeps a snapshot that
it refreshes every few seconds (and after each change it makes), so a change made through
another daemon on the same token is seen within ``refresh_interval``. Which key signs is
derived from the snapshot and the clock on every request (:mod:`signer.keys.rotation`), so a
scheduled rotation happens exactly at its time without any background job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from signer.config import KeySettings, Settings
from signer.errors import (
    KeyNotFound,
    KidNotAccepted,
    PolicyError,
    UnknownProfile,
)
from signer.hsm.mechanisms import SignatureEncoding
from signer.hsm.pool import WorkerPool
from signer.keys import dual_control, lifecycle, rotation
from signer.keys.csr import build_csr
from signer.keys.dsc_checks import check_dsc
from signer.keys.issuance import issue_dsc_from_csr
from signer.keys.lifecycle import KeyRecord, KeyState
from signer.keys.pem import certificate_der
from signer.keys.policy import KeyPolicy, stop_signing_at
from signer.keys.profiles import eku_for_profile

log = logging.getLogger(__name__)

RECORD_APPLICATION = "signer.v1/key-record"
CHANGE_APPLICATION = "signer.v1/pending-change"
CSR_APPLICATION = "signer.v1/csr"

LifecycleEvent = Callable[[str, Mapping[str, Any]], None]
"""Receives every lifecycle event (name, details); the daemon writes it to the audit log."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class KeyView:
    """A key as the daemon sees it: its lifecycle record and its public material."""

    record: KeyRecord
    dsc_der: bytes | None
    spki_der: bytes | None
    effective_state: str = ""
    usable_until: datetime | None = None

    @property
    def key_id(self) -> str:
        """Hex ``CKA_ID`` of the key."""
        return self.record.key_id


@dataclass(frozen=True)
class ChangeOutcome:
    """What an officer's request or approval did."""

    change: dual_control.PendingChange
    applied: bool
    key: KeyView


class KeyRegistry:
    """Keys, their lifecycle and their rotation, backed by the token."""

    def __init__(
        self,
        pool: WorkerPool,
        settings: KeySettings,
        profiles: Iterable[str],
        on_event: LifecycleEvent | None = None,
        clock: Callable[[], datetime] = utcnow,
        csca_der: bytes | None = None,
        csca_key_label: str = "dev-csca",
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._profiles = tuple(profiles)
        self._on_event = on_event or (lambda name, details: None)
        self._clock = clock
        self._csca_der = csca_der
        self._csca_label = csca_key_label
        self.policy = KeyPolicy(
            usage_period=settings.usage_period,
            credential_lifetime=settings.credential_lifetime,
            overlap=settings.overlap,
            warn_before=settings.warn_before,
        )
        self._records_by_id: Mapping[str, KeyRecord] = MappingProxyType({})
        self._public: dict[str, tuple[bytes | None, bytes | None]] = {}
        self._write_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()

    # -- reading ------------------------------------------------------------------------------

    @property
    def profiles(self) -> tuple[str, ...]:
        """The certificate profiles this daemon serves."""
        return self._profiles

    def refresh(self) -> None:
        """Reload lifecycle records from the token, and the DSCs of keys not seen before.

        Refreshes are serialised: a background refresh that read the token before an
        officer's change cannot install its stale view after the change's own refresh.
        """
        with self._refresh_lock:
            self._refresh()

    def _refresh(self) -> None:
        blobs: dict[str, bytes] = self._pool.call("records", application=RECORD_APPLICATION)
        loaded: dict[str, KeyRecord] = {}
        for name, blob in blobs.items():
            try:
                loaded[name] = KeyRecord.from_cbor(blob)
            except (ValueError, PolicyError) as exc:
                log.error("ignoring unreadable key record %s on the token: %s", name, exc)
        for key_id, record in loaded.items():
            known = self._public.get(key_id)
            if known is None or (known[0] is None and record.kid is not None):
                self._public[key_id] = self._load_public(record)
        self._records_by_id = MappingProxyType(loaded)

    def _load_public(self, record: KeyRecord) -> tuple[bytes | None, bytes | None]:
        dsc = self._pool.call("certificate", key_id=record.key_id) if record.kid else None
        spki = None
        if record.state is not KeyState.DESTROYED:
            try:
                spki = self._pool.call("public_key", key_id=record.key_id)
            except KeyNotFound:
                spki = None
        return dsc, spki

    def run_refresher(self) -> None:
        """Refresh every ``refresh_interval`` until :meth:`stop`; errors are logged, not raised."""
        while not self._stop.wait(self._settings.refresh_interval.total_seconds()):
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing keys from the token failed; keeping the last view")

    def stop(self) -> None:
        """End :meth:`run_refresher`."""
        self._stop.set()

    def _records(self) -> list[KeyRecord]:
        return list(self._records_by_id.values())

    def _view(self, record: KeyRecord, now: datetime | None = None) -> KeyView:
        moment = now or self._clock()
        dsc, spki = self._public.get(record.key_id, (None, None))
        of_profile = [r for r in self._records() if r.profile == record.profile]
        state = rotation.effective_state(record, of_profile, moment, self.policy)
        usable_until = None
        if record.activate_at is not None and record.dsc_not_after is not None:
            usable_until = stop_signing_at(record.activate_at, record.dsc_not_after, self.policy)
        return KeyView(record, dsc, spki, state.value, usable_until)

    def _require_profile(self, profile: str) -> None:
        if profile not in self._profiles:
            raise UnknownProfile(
                f"unknown profile {profile!r}; this appliance serves {', '.join(self._profiles)}"
            )

    def signing_view(self, profile: str, now: datetime | None = None) -> rotation.SigningView:
        """Which key signs ``profile`` now and which kids are still accepted."""
        self._require_profile(profile)
        return rotation.resolve_profile(self._records(), profile, now or self._clock(), self.policy)

    def signing_key(self, profile: str) -> KeyView:
        """The key that signs new requests of ``profile``; FAILED_PRECONDITION when none."""
        now = self._clock()
        view = self.signing_view(profile, now)
        if view.active is None:
            raise PolicyError(view.reason_if_none)
        return self._view(view.active, now)

    def key_for_kid(self, profile: str, kid: bytes) -> KeyRecord:
        """The key that signs a request carrying ``kid``, or KidNotAccepted with the current kid.

        This is on every signing request, so it returns the bare record: the listing-only
        fields of :class:`KeyView` (effective state, usable-until) are not computed.
        """
        view = self.signing_view(profile)
        record = view.accepted.get(kid)
        if record is not None:
            return record
        if view.active is None:
            raise PolicyError(view.reason_if_none)
        current = view.active.kid
        assert current is not None
        raise KidNotAccepted(
            f"kid {kid.hex()} may not sign for profile {profile!r} now; the current kid is "
            f"{current.hex()}: call GetSigningKey, rebuild the protected header and hash again",
            current_kid=current,
        )

    def trust_list(self) -> list[KeyView]:
        """Every key whose DSC verifiers may still meet."""
        now = self._clock()
        return [self._view(r, now) for r in rotation.trust_list(self._records(), now)]

    def list_keys(self, profile: str = "") -> list[KeyView]:
        """All keys, optionally of one profile, oldest first."""
        now = self._clock()
        records = sorted(self._records(), key=lambda r: (r.created_at, r.key_id))
        return [self._view(r, now) for r in records if not profile or r.profile == profile]

    def key(self, key_id: str) -> KeyView:
        """One key by its id."""
        record = self._records_by_id.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id!r}; `signer keys list` shows the keys")
        return self._view(record)

    def pending_changes(self) -> list[dual_control.PendingChange]:
        """Changes waiting for approval (expired ones are dropped and reported)."""
        blobs: dict[str, bytes] = self._pool.call("records", application=CHANGE_APPLICATION)
        now = self._clock()
        live = []
        for name, blob in blobs.items():
            change = dual_control.PendingChange.from_cbor(blob)
            if change.expires_at <= now:
                self._pool.call("delete_record", application=CHANGE_APPLICATION, name=name)
                self._event(
                    "change_expired", change_id=name, action=change.action, key_id=change.key_id
                )
                continue
            live.append(change)
        return sorted(live, key=lambda c: c.requested_at)

    # -- officer operations --------------------------------------------------------------------

    def generate(self, profile: str, label: str, officer: str) -> tuple[KeyView, bytes]:
        """Generate a key in the HSM for ``profile`` and return it with its CSR (DER)."""
        self._require_profile(profile)
        if not label or len(label) > 64 or not label.isprintable():
            raise PolicyError("a key label of 1 to 64 printable characters is required")
        with self._write_lock:
            generated = self._pool.call("generate_key", label=label)
            now = self._clock()
            record = lifecycle.generated(
                key_id=generated.key_id, profile=profile, label=label, now=now, actor=officer
            )
            self._put(record)
            self._event(
                "key_generated", key_id=record.key_id, profile=profile, label=label, officer=officer
            )
            csr = build_csr(
                generated.spki_der,
                {
                    "country_name": self._settings.country,
                    "common_name": f"{label} ({profile})",
                },
                self._signer_for(record.key_id),
            )
            self._pool.call(
                "put_record", application=CSR_APPLICATION, name=record.key_id, value=csr
            )
            self._event("csr_made", key_id=record.key_id, profile=profile, officer=officer)
            self._public[record.key_id] = (None, generated.spki_der)
            self.refresh()
            return self.key(record.key_id), csr

    def csr(self, key_id: str) -> bytes:
        """The CSR made when the key was generated."""
        self.key(key_id)
        blobs: dict[str, bytes] = self._pool.call("records", application=CSR_APPLICATION)
        if key_id not in blobs:
            raise KeyNotFound(f"no CSR stored for key {key_id}")
        return blobs[key_id]

    def import_certificate(self, key_id: str, certificate: bytes, officer: str) -> KeyView:
        """Check a DSC against the HSM key and the policy, store it, and move the key to ready."""
        with self._write_lock:
            self.refresh()
            record = self.key(key_id).record
            spki = self._pool.call("public_key", key_id=key_id)
            info = check_dsc(
                certificate,
                expected_spki_der=spki,
                profile=record.profile,
                now=self._clock(),
                csca_der=self._csca_der,
                min_remaining=self._settings.credential_lifetime,
            )
            updated = lifecycle.certificate_imported(record, info, now=self._clock(), actor=officer)
            self._pool.call("store_certificate", key_id=key_id, label=record.label, der=info.der)
            self._public[key_id] = (info.der, spki)
            self._put(updated)
            self._event(
                "cert_imported",
                key_id=key_id,
                kid=info.kid.hex(),
                officer=officer,
                subject=info.subject,
                not_after=info.not_after.isoformat(),
            )
            self.refresh()
            return self.key(key_id)

    def request_change(
        self,
        action: dual_control.Action,
        key_id: str,
        officer: str,
        params: Mapping[str, dual_control.ParamValue],
    ) -> ChangeOutcome:
        """Open a dual-control change; it applies at once when one approval is enough."""
        with self._write_lock:
            self.refresh()
            record = self.key(key_id).record
            self._validate(action, record, params)
            change = dual_control.request_change(
                action=action,
                key_id=key_id,
                params=params,
                requested_by=officer,
                now=self._clock(),
                ttl=self._settings.change_ttl,
            )
            self._event(
                "change_requested",
                change_id=change.change_id,
                action=action,
                key_id=key_id,
                officer=officer,
            )
            if change.is_complete(self._settings.approvals_required):
                return self._apply(change)
            self._pool.call(
                "put_record",
                application=CHANGE_APPLICATION,
                name=change.change_id,
                value=change.to_cbor(),
            )
            return ChangeOutcome(change, False, self.key(key_id))

    def approve(self, change_id: str, officer: str) -> ChangeOutcome:
        """Approve a pending change as a second officer; apply it when enough approved."""
        with self._write_lock:
            blobs: dict[str, bytes] = self._pool.call("records", application=CHANGE_APPLICATION)
            if change_id not in blobs:
                raise KeyNotFound(
                    f"no pending change {change_id!r}; it may have been applied or expired"
                )
            change = dual_control.PendingChange.from_cbor(blobs[change_id])
            now = self._clock()
            if change.expires_at <= now:
                self._pool.call("delete_record", application=CHANGE_APPLICATION, name=change_id)
                self._event(
                    "change_expired",
                    change_id=change_id,
                    action=change.action,
                    key_id=change.key_id,
                )
            approved, complete = dual_control.approve(
                change, officer, now, self._settings.approvals_required
            )
            self._event(
                "change_approved",
                change_id=change_id,
                action=change.action,
                key_id=change.key_id,
                officer=officer,
            )
            if not complete:
                self._pool.call(
                    "put_record",
                    application=CHANGE_APPLICATION,
                    name=change_id,
                    value=approved.to_cbor(),
                )
                return ChangeOutcome(approved, False, self.key(change.key_id))
            self.refresh()
            outcome = self._apply(approved)
            self._pool.call("delete_record", application=CHANGE_APPLICATION, name=change_id)
            return outcome

    def dev_issue_certificate(self, key_id: str, validity: timedelta) -> bytes:
        """Have the dev CSCA in the token sign the key's CSR (dev configurations only)."""
        if not self._settings.dev or self._csca_der is None:
            raise PolicyError(
                "dev-issue-cert is refused: this is not a dev configuration with a dev CSCA;"
                " take the CSR to the national CSCA"
            )
        record = self.key(key_id).record
        csca_key = self._pool.call("key_id_by_label", label=self._csca_label)
        now = self._clock()
        return issue_dsc_from_csr(
            csca_der=self._csca_der,
            csca_sign=self._signer_for(csca_key),
            csr=self.csr(key_id),
            not_before=now - timedelta(minutes=5),
            not_after=now + validity,
            extended_key_usages=(eku_for_profile(record.profile),),
        )

    # -- helpers -------------------------------------------------------------------------------

    def _signer_for(self, key_id: str) -> Callable[[bytes], bytes]:
        def sign(digest: bytes) -> bytes:
            return self._pool.sign(key_id, [digest], SignatureEncoding.RAW)[0]

        return sign

    def _put(self, record: KeyRecord) -> None:
        self._pool.call(
            "put_record", application=RECORD_APPLICATION, name=record.key_id, value=record.to_cbor()
        )

    def _event(self, name: str, **details: Any) -> None:
        self._on_event(name, details)

    def _validate(
        self,
        action: dual_control.Action,
        record: KeyRecord,
        params: Mapping[str, dual_control.ParamValue],
    ) -> None:
        """Dry-run the transition so an impossible change is refused before approval."""
        if action == "activate":
            self._refuse_racing_activation(record)
        self._transition(action, record, params, actor="validation")

    def _transition(
        self,
        action: dual_control.Action,
        record: KeyRecord,
        params: Mapping[str, dual_control.ParamValue],
        actor: str,
    ) -> KeyRecord:
        now = self._clock()
        if action == "activate":
            at = params.get("activate_at")
            return lifecycle.schedule_activation(
                record,
                at=max(at if isinstance(at, datetime) else now, self._earliest_takeover(record)),
                now=now,
                actor=actor,
                policy=self.policy,
            )
        if action == "retire":
            return lifecycle.retire(
                record, now=now, actor=actor, reason=str(params.get("reason") or "")
            )
        return lifecycle.destroy(
            record,
            now=now,
            actor=actor,
            force=bool(params.get("force")),
            reason=str(params.get("reason") or ""),
        )

    def _apply(self, change: dual_control.PendingChange) -> ChangeOutcome:
        record = self.key(change.key_id).record
        actors = ", ".join((change.requested_by, *change.approvals))
        if change.action == "activate":
            self._refuse_racing_activation(record)
        updated = self._transition(change.action, record, change.params, actor=actors)
        if change.action == "destroy":
            self._pool.call("destroy_key_pair", key_id=record.key_id)
            self._pool.broadcast("forget", key_id=record.key_id)
        self._put(updated)
        event = {
            "activate": "activation_scheduled",
            "retire": "retired",
            "destroy": "destroyed",
        }[change.action]
        self._event(
            event,
            key_id=record.key_id,
            change_id=change.change_id,
            officers=actors,
            activate_at=updated.activate_at.isoformat() if updated.activate_at else None,
        )
        self.refresh()
        return ChangeOutcome(change, True, self.key(change.key_id))

    def _earliest_takeover(self, record: KeyRecord) -> datetime:
        """The earliest moment a new key may take over a profile that has an active key.

        Every daemon on the token must know of the activation before it takes effect, or a
        client that got the new kid from one daemon is refused by another that still has the
        old view. Daemons reload the records every ``refresh_interval``, so a rotation takes
        effect no sooner than two intervals after it is applied. A profile without an active
        key has no client to disturb and is activated at once.
        """
        now = self._clock()
        if (
            rotation.resolve_profile(self._records(), record.profile, now, self.policy).active
            is None
        ):
            return now
        return now + 2 * self._settings.refresh_interval

    def _refuse_racing_activation(self, record: KeyRecord) -> None:
        """Refuse a second pending takeover of one profile: one scheduled activation at a time."""
        now = self._clock()
        for other in self._records():
            if (
                other.key_id != record.key_id
                and other.profile == record.profile
                and other.state is KeyState.SCHEDULED
                and other.activate_at is not None
                and other.activate_at > now
            ):
                raise PolicyError(
                    f"activation refused: key {other.key_id} is already scheduled to take over "
                    f"profile {record.profile!r} at {other.activate_at.isoformat()}; retire that"
                    " activation first or wait until it has taken effect"
                )


def make_registry(
    pool: WorkerPool, settings: Settings, on_event: LifecycleEvent | None = None
) -> KeyRegistry:
    """A registry configured from the settings (dev CSCA certificate read if configured)."""
    csca_path = settings.keys.csca_cert
    csca = certificate_der(csca_path.read_bytes()) if csca_path and csca_path.exists() else None
    return KeyRegistry(
        pool,
        settings.keys,
        settings.profiles,
        on_event=on_event,
        csca_der=csca,
        csca_key_label=settings.hsm.csca_key_label,
    )
