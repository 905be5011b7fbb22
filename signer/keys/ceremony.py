"""Officer operations that change keys: generate, import a DSC, request and approve changes.

Every write to the record store is conditional on the generation last read, so two officers
acting through two appliances on one store cannot both apply one change: the second write gets
:class:`~signer.errors.StoreConflict` (ABORTED) and changes nothing. A change that needs a
second officer is stored as a pending change; the approval that completes it first *claims*
it (a conditional delete) and only then applies it, so it is applied exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from signer.config import KeySettings, Settings
from signer.errors import KeyNotFound, PolicyError, StoreConflict
from signer.hsm.api import Token, digest_signer
from signer.keys import dual_control, lifecycle
from signer.keys.csr import build_csr
from signer.keys.dsc_checks import check_dsc
from signer.keys.lifecycle import KeyRecord, KeyState
from signer.keys.pem import certificate_der
from signer.keys.registry import KeyRegistry
from signer.keys.snapshot import KeyView
from signer.store.api import ABSENT, RecordKind, RecordStore, StoredRecord

log = logging.getLogger(__name__)

LifecycleEvent = Callable[[str, Mapping[str, Any]], None]
"""Receives every lifecycle event (name, details); the daemon writes it to the audit log."""

_APPLIED_EVENT: Mapping[dual_control.Action, str] = {
    "activate": "activation_scheduled",
    "retire": "retired",
    "destroy": "destroyed",
}


@dataclass(frozen=True)
class ChangeOutcome:
    """What an officer's request or approval did."""

    change: dual_control.PendingChange
    applied: bool
    key: KeyView


class KeyCeremonies:
    """The officer-facing operations on keys, under dual control."""

    def __init__(
        self,
        registry: KeyRegistry,
        token: Token,
        store: RecordStore,
        settings: KeySettings,
        on_event: LifecycleEvent | None = None,
        csca_der: bytes | None = None,
    ) -> None:
        self.registry = registry
        self._token = token
        self._store = store
        self._settings = settings
        self._on_event = on_event or (lambda name, details: None)
        self._csca_der = csca_der
        self._write_lock = threading.Lock()

    def _now(self) -> datetime:
        return self.registry.clock()

    # -- reading what only ceremonies need ------------------------------------------------------

    def csr(self, key_id: str) -> bytes:
        """The CSR made when the key was generated."""
        self.registry.key(key_id)
        stored = self._store.load_all(RecordKind.CSR).get(key_id)
        if stored is None:
            raise KeyNotFound(f"no CSR stored for key {key_id}")
        return stored.value

    def pending_changes(self) -> list[dual_control.PendingChange]:
        """Changes waiting for approval (expired ones are dropped and reported)."""
        now = self._now()
        live = []
        for name, stored in self._store.load_all(RecordKind.CHANGE).items():
            change = dual_control.PendingChange.from_cbor(stored.value)
            if change.expires_at <= now:
                self._drop_expired(name, stored, change)
                continue
            live.append(change)
        return sorted(live, key=lambda c: c.requested_at)

    def _drop_expired(
        self, name: str, stored: StoredRecord, change: dual_control.PendingChange
    ) -> None:
        try:
            self._store.delete(RecordKind.CHANGE, name, stored.generation)
        except StoreConflict:
            return  # another daemon dropped or approved it first
        self._event("change_expired", change_id=name, action=change.action, key_id=change.key_id)

    # -- officer operations --------------------------------------------------------------------

    def generate(self, profile: str, label: str, officer: str) -> tuple[KeyView, bytes]:
        """Generate a key in the HSM for ``profile`` and return it with its CSR (DER)."""
        self.registry.snapshot.require_profile(profile)
        if not label or len(label) > 64 or not label.isprintable():
            raise PolicyError("a key label of 1 to 64 printable characters is required")
        with self._write_lock:
            generated = self._token.generate_key(label)
            record = lifecycle.generated(
                key_id=generated.key_id,
                profile=profile,
                label=label,
                now=self._now(),
                actor=officer,
            )
            self._store.put(RecordKind.KEY, record.key_id, ABSENT, record.to_cbor())
            self._event(
                "key_generated", key_id=record.key_id, profile=profile, label=label, officer=officer
            )
            csr = build_csr(
                generated.spki_der,
                {"country_name": self._settings.country, "common_name": f"{label} ({profile})"},
                digest_signer(self._token, record.key_id),
            )
            self._store.put(RecordKind.CSR, record.key_id, ABSENT, csr)
            self._event("csr_made", key_id=record.key_id, profile=profile, officer=officer)
            self.registry.refresh()
            return self.registry.key(record.key_id), csr

    def import_certificate(self, key_id: str, certificate: bytes, officer: str) -> KeyView:
        """Check a DSC against the HSM key and the policy, store it, and move the key to ready."""
        with self._write_lock:
            self.registry.refresh()
            record = self.registry.key(key_id).record
            spki = self._token.public_key(key_id)
            info = check_dsc(
                certificate,
                expected_spki_der=spki,
                profile=record.profile,
                now=self._now(),
                csca_der=self._csca_der,
                min_remaining=self._settings.credential_lifetime,
            )
            updated = lifecycle.certificate_imported(record, info, now=self._now(), actor=officer)
            self._token.store_certificate(key_id, record.label, info.der)
            self._put(updated)
            self._event(
                "cert_imported",
                key_id=key_id,
                kid=info.kid.hex(),
                officer=officer,
                subject=info.subject,
                not_after=info.not_after.isoformat(),
            )
            self.registry.refresh()
            return self.registry.key(key_id)

    def request_change(
        self,
        action: dual_control.Action,
        key_id: str,
        officer: str,
        params: Mapping[str, dual_control.ParamValue],
    ) -> ChangeOutcome:
        """Open a dual-control change; it applies at once when one approval is enough."""
        with self._write_lock:
            self.registry.refresh()
            record = self.registry.key(key_id).record
            self._validate(action, record, params)
            change = dual_control.request_change(
                action=action,
                key_id=key_id,
                params=params,
                requested_by=officer,
                now=self._now(),
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
            self._store.put(RecordKind.CHANGE, change.change_id, ABSENT, change.to_cbor())
            return ChangeOutcome(change, False, self.registry.key(key_id))

    def approve(self, change_id: str, officer: str) -> ChangeOutcome:
        """Approve a pending change as a second officer; apply it when enough approved."""
        with self._write_lock:
            stored = self._store.load_all(RecordKind.CHANGE).get(change_id)
            if stored is None:
                raise KeyNotFound(
                    f"no pending change {change_id[:40]!r}; it may have been applied or expired"
                )
            change = dual_control.PendingChange.from_cbor(stored.value)
            now = self._now()
            if change.expires_at <= now:
                self._drop_expired(change_id, stored, change)
            approved, complete = dual_control.approve(
                change, officer, now, self._settings.approvals_required
            )
            if not complete:
                self._store.put(RecordKind.CHANGE, change_id, stored.generation, approved.to_cbor())
                self._approved(approved, officer)
                return ChangeOutcome(approved, False, self.registry.key(change.key_id))
            self.registry.refresh()
            # A change that cannot apply now stays pending (it may apply later); one that can
            # is claimed first: of two racing approvals only one deletes it and applies it.
            self._validate(
                approved.action, self.registry.key(approved.key_id).record, approved.params
            )
            self._store.delete(RecordKind.CHANGE, change_id, stored.generation)
            self._approved(approved, officer)
            return self._apply(approved)

    def _approved(self, change: dual_control.PendingChange, officer: str) -> None:
        self._event(
            "change_approved",
            change_id=change.change_id,
            action=change.action,
            key_id=change.key_id,
            officer=officer,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _put(self, record: KeyRecord) -> None:
        expected = self.registry.snapshot.generations.get(record.key_id, ABSENT)
        self._store.put(RecordKind.KEY, record.key_id, expected, record.to_cbor())

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
        now = self._now()
        if action == "activate":
            at = params.get("activate_at")
            return lifecycle.schedule_activation(
                record,
                at=max(at if isinstance(at, datetime) else now, self._earliest_takeover(record)),
                now=now,
                actor=actor,
                policy=self.registry.policy,
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
        record = self.registry.key(change.key_id).record
        actors = ", ".join((change.requested_by, *change.approvals))
        if change.action == "activate":
            self._refuse_racing_activation(record)
        updated = self._transition(change.action, record, change.params, actor=actors)
        if change.action == "destroy":
            self._token.destroy_key_pair(record.key_id)
        self._put(updated)
        self._event(
            _APPLIED_EVENT[change.action],
            key_id=record.key_id,
            change_id=change.change_id,
            officers=actors,
            activate_at=updated.activate_at.isoformat() if updated.activate_at else None,
        )
        self.registry.refresh()
        return ChangeOutcome(change, True, self.registry.key(change.key_id))

    def _earliest_takeover(self, record: KeyRecord) -> datetime:
        """The earliest moment a new key may take over a profile that has an active key.

        Every daemon sharing the store must know of the activation before it takes effect, or
        a client that got the new kid from one daemon is refused by another that still has the
        old view. Daemons reload the records every ``refresh_interval``, so a rotation takes
        effect no sooner than two intervals after it is applied. A profile without an active
        key has no client to disturb and is activated at once.
        """
        now = self._now()
        if self.registry.signing_view(record.profile, now).active is None:
            return now
        return now + 2 * self._settings.refresh_interval

    def _refuse_racing_activation(self, record: KeyRecord) -> None:
        """Refuse a second pending takeover of one profile: one scheduled activation at a time."""
        now = self._now()
        for other in self.registry.snapshot.records.values():
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


def make_ceremonies(
    registry: KeyRegistry,
    token: Token,
    store: RecordStore,
    settings: Settings,
    on_event: LifecycleEvent | None = None,
) -> KeyCeremonies:
    """Ceremonies configured from the settings (the CSCA certificate read if configured)."""
    csca_path = settings.keys.csca_cert
    csca = certificate_der(csca_path.read_bytes()) if csca_path and csca_path.exists() else None
    return KeyCeremonies(registry, token, store, settings.keys, on_event, csca)
