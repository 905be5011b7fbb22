"""Officer operations that change keys: generate, import a DSC, request and approve changes.

A change is a :class:`~signer.keys.governance.ChangeDocument` the requesting officer signs;
approvers sign the same document (:mod:`signer.keys.governance`). The signatures are checked
here when they arrive, and the signed change is stored with the key record it justifies, so
that every daemon re-verifies it on every load. Every write to the record store is conditional
on the generation last read, so two officers acting through two appliances on one store cannot
both apply one change: the second write gets :class:`~signer.errors.StoreConflict` (ABORTED)
and changes nothing. The approval that completes a change first *claims* it (a conditional
delete) and only then applies it, so it is applied exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from signer.config import KeySettings, Settings
from signer.errors import InvalidRequest, KeyNotFound, PermissionDenied, PolicyError, StoreConflict
from signer.hsm.api import Token, digest_signer
from signer.keys import dual_control, lifecycle
from signer.keys.csr import build_csr
from signer.keys.dsc_checks import check_dsc
from signer.keys.dual_control import PendingChange, new_change_id
from signer.keys.governance import (
    CLOCK_SKEW,
    DRAFT_WINDOW,
    MAX_SIGNED_AT,
    Action,
    ChangeDocument,
    Endorsement,
    SignedChange,
    verify_endorsement,
    verify_signed_change,
)
from signer.keys.lifecycle import KeyRecord, KeyState
from signer.keys.pem import certificate_der
from signer.keys.registry import KeyRegistry
from signer.keys.snapshot import KeyView
from signer.store.api import ABSENT, RecordKind, RecordStore, StoredRecord

log = logging.getLogger(__name__)

LifecycleEvent = Callable[[str, Mapping[str, Any]], None]
"""Receives every lifecycle event (name, details); the daemon writes it to the audit log."""


_APPLIED_EVENT: Mapping[Action, str] = {
    "activate": "activation_scheduled",
    "retire": "retired",
    "destroy": "destroyed",
    "revoke": "revoked",
}


@dataclass(frozen=True)
class ChangeOutcome:
    """What an officer's request or approval did."""

    change: PendingChange
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
        reserved_labels: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self._token = token
        self._store = store
        self._settings = settings
        self._on_event = on_event or (lambda name, details: None)
        self._csca_der = csca_der
        self._reserved = frozenset(reserved_labels)
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

    def pending_changes(self) -> list[PendingChange]:
        """Changes waiting for approval (expired ones are dropped and reported)."""
        now = self._now()
        live = []
        for name, stored in self._store.load_all(RecordKind.CHANGE).items():
            change = self._pending(stored)
            if change.expires_at <= now:
                self._drop_expired(name, stored, change)
                continue
            live.append(change)
        return sorted(live, key=lambda c: c.document.requested_at)

    def _pending(self, stored: StoredRecord) -> PendingChange:
        return PendingChange.of(SignedChange.decode(stored.value), self._settings.change_ttl)

    def _drop_expired(self, name: str, stored: StoredRecord, change: PendingChange) -> None:
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
        if label in self._reserved:
            raise InvalidRequest(
                f"label {label!r} is reserved for signer's own keys (audit, CSCA, upload); choose"
                " another label"
            )
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

    def draft(
        self,
        action: Action,
        key_id: str,
        person: str,
        *,
        activate_at: datetime | None = None,
        reason: str = "",
        force: bool = False,
    ) -> ChangeDocument:
        """The canonical document of a change ``person`` wants, for them to check and sign."""
        record = self.registry.key(key_id).record
        return ChangeDocument(
            change_id=new_change_id(),
            action=action,
            key_id=key_id,
            profile=record.profile,
            requested_by=person,
            requested_at=self._now(),
            activate_at=activate_at,
            reason=reason,
            force=force,
        )

    def request_change(self, document: bytes, endorsement: Endorsement) -> ChangeOutcome:
        """Open a change from its signed document; apply it at once when one person suffices."""
        change = ChangeDocument.decode(document)
        if endorsement.role != "request":
            raise InvalidRequest("a change is requested with a request signature")
        person = verify_endorsement(
            endorsement, document, change.requested_at, self.registry.governance
        )
        if person != change.requested_by:
            raise PermissionDenied(
                f"change {change.change_id} names {change.requested_by!r} as requester, but"
                f" {person} signed it; draft the change again as yourself"
            )
        self._check_fresh(change)
        with self._write_lock:
            self.registry.refresh()
            record = self.registry.key(change.key_id).record
            if record.profile != change.profile:
                raise PolicyError(
                    f"change {change.change_id} names profile {change.profile!r}, but key"
                    f" {record.key_id} serves {record.profile!r}"
                )
            self._validate(change, record)
            pending = PendingChange.of(
                SignedChange(document, (endorsement,)), self._settings.change_ttl
            )
            self._event("change_requested", **_change_details(change, endorsement))
            if pending.persons() >= self.registry.governance.required_for(change.action):
                return self._apply(pending)
            self._store.put(RecordKind.CHANGE, change.change_id, ABSENT, pending.signed.encode())
            return ChangeOutcome(pending, False, self.registry.key(change.key_id))

    def approve(self, change_id: str, endorsement: Endorsement) -> ChangeOutcome:
        """Add a person's signed approval to a pending change; apply it when enough signed."""
        if endorsement.role != "approve":
            raise InvalidRequest("a change is approved with an approval signature")
        with self._write_lock:
            stored = self._store.load_all(RecordKind.CHANGE).get(change_id)
            if stored is None:
                raise KeyNotFound(
                    f"no pending change {change_id[:40]!r}; it may have been applied or expired"
                )
            pending = self._pending(stored)
            now = self._now()
            if pending.expires_at <= now:
                self._drop_expired(change_id, stored, pending)
            person = verify_endorsement(
                endorsement,
                pending.signed.document,
                pending.document.requested_at,
                self.registry.governance,
            )
            endorsement = replace(endorsement, person=person)
            approved, complete = dual_control.approve(
                pending, endorsement, now, self.registry.governance.required_for(pending.action)
            )
            self._check_signed_time(endorsement, now)
            if not complete:
                self._store.put(
                    RecordKind.CHANGE, change_id, stored.generation, approved.signed.encode()
                )
                self._approved(approved, endorsement)
                return ChangeOutcome(approved, False, self.registry.key(pending.key_id))
            self.registry.refresh()
            # A change that cannot apply now stays pending (it may apply later); one that can
            # is claimed first: of two racing approvals only one deletes it and applies it.
            self._validate(approved.document, self.registry.key(approved.key_id).record)
            self._store.delete(RecordKind.CHANGE, change_id, stored.generation)
            self._approved(approved, endorsement)
            return self._apply(approved)

    def _check_signed_time(self, endorsement: Endorsement, now: datetime) -> None:
        """An approval carries the time it was signed, close to this appliance's clock: every
        daemon bounds the activation it applies by that time (see ``record_problem``)."""
        if not self.registry.governance.enforced:
            return
        if endorsement.signed_at is None:
            raise InvalidRequest(
                "the approval carries no signing time; approve with a signer CLI of this"
                " appliance's version"
            )
        if not 0 < endorsement.signed_at < MAX_SIGNED_AT:
            raise InvalidRequest("the approval's signing time is not a time (Unix seconds)")
        signed = datetime.fromtimestamp(endorsement.signed_at, UTC)
        if abs(signed - now) > CLOCK_SKEW:
            raise PolicyError(
                f"the approval was signed at {signed.isoformat()} but the appliance's clock says"
                f" {now.replace(microsecond=0).isoformat()}: more than {CLOCK_SKEW}"
                " apart; set both clocks right (NTP) and approve again"
            )

    def _approved(self, change: PendingChange, endorsement: Endorsement) -> None:
        self._event(
            "change_approved",
            change_id=change.change_id,
            action=change.action,
            key_id=change.key_id,
            officer=endorsement.person,
            identity=endorsement.identity,
        )

    def _check_fresh(self, change: ChangeDocument) -> None:
        now = self._now()
        if not now - DRAFT_WINDOW <= change.requested_at <= now + CLOCK_SKEW:
            raise PolicyError(
                f"change {change.change_id} was drafted at {change.requested_at.isoformat()};"
                f" a draft must be signed and sent within {DRAFT_WINDOW}: draft it again"
            )

    # -- helpers -------------------------------------------------------------------------------

    def _put(self, record: KeyRecord) -> None:
        expected = self.registry.snapshot.generations.get(record.key_id, ABSENT)
        self._store.put(RecordKind.KEY, record.key_id, expected, record.to_cbor())

    def _event(self, name: str, **details: Any) -> None:
        self._on_event(name, details)

    def _validate(self, change: ChangeDocument, record: KeyRecord) -> None:
        """Dry-run the transition so an impossible change is refused before approval."""
        if change.action == "activate":
            self._refuse_racing_activation(record)
        if change.action == "retire":
            self._refuse_stopping_the_profile(change, record)
        self._transition(change, record, actor="validation")

    def _refuse_stopping_the_profile(self, change: ChangeDocument, record: KeyRecord) -> None:
        """Retiring the key that signs its profile now stops signing: only with force + reason."""
        active = self.registry.signing_view(record.profile).active
        if active is None or active.key_id != record.key_id:
            return
        if not change.force:
            raise PolicyError(
                f"retirement refused: key {record.key_id} is the only key signing profile"
                f" {record.profile!r}, so signing would stop; first activate its successor and"
                " wait until the successor is active, or force it with a reason"
            )
        if not change.reason.strip():
            raise PolicyError(
                f"forced retirement refused for key {record.key_id}: give a reason for the audit"
                " log"
            )

    def _transition(self, change: ChangeDocument, record: KeyRecord, actor: str) -> KeyRecord:
        now = self._now()
        if change.action == "activate":
            at = change.activate_at or now
            return lifecycle.schedule_activation(
                record,
                at=max(at, self._earliest_takeover(record)),
                now=now,
                actor=actor,
                policy=self.registry.policy,
            )
        if change.action == "retire":
            return lifecycle.retire(record, now=now, actor=actor, reason=change.reason)
        if change.action == "revoke":
            return lifecycle.revoke(record, now=now, actor=actor, reason=change.reason)
        return lifecycle.destroy(
            record, now=now, actor=actor, force=change.force, reason=change.reason
        )

    def _apply(self, pending: PendingChange) -> ChangeOutcome:
        # What every other daemon will check before acting on the record, checked here first.
        change = verify_signed_change(pending.signed, self.registry.governance)
        record = self.registry.key(change.key_id).record
        persons = [e.person for e in pending.signed.endorsements]
        if change.action == "activate":
            self._refuse_racing_activation(record)
        updated = replace(
            self._transition(change, record, actor=", ".join(persons)),
            authority=pending.signed.encode(),
        )
        if change.action == "destroy":
            self._token.destroy_key_pair(record.key_id)
        self._put(updated)
        self._event(
            _APPLIED_EVENT[change.action],
            key_id=record.key_id,
            change_id=change.change_id,
            officers=", ".join(persons),
            identities=", ".join(e.identity for e in pending.signed.endorsements),
            reason=change.reason or None,
            force=change.force or None,
            activate_at=updated.activate_at.isoformat() if updated.activate_at else None,
        )
        self.registry.refresh()
        return ChangeOutcome(pending, True, self.registry.key(change.key_id))

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
    return KeyCeremonies(
        registry,
        token,
        store,
        settings.keys,
        on_event,
        csca,
        reserved_labels=(
            settings.hsm.audit_key_label,
            settings.hsm.csca_key_label,
            settings.hsm.upload_key_label,
        ),
    )


def _change_details(change: ChangeDocument, endorsement: Endorsement) -> dict[str, Any]:
    """What the audit record of a request says: every officer-supplied field and who signed."""
    return {
        "change_id": change.change_id,
        "action": change.action,
        "key_id": change.key_id,
        "officer": endorsement.person,
        "identity": endorsement.identity,
        "reason": change.reason or None,
        "force": change.force or None,
        "activate_at": change.activate_at.isoformat() if change.activate_at else None,
    }
