"""Registry and ceremony logic against the in-memory boundary: rotation, overlap, signed dual
control, conditional writes, forged and replayed records, guard rails, revocation.
Milliseconds per test; the SoftHSM suite proves the same on a real token and daemon."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from signer.config import KeySettings
from signer.errors import (
    InvalidRequest,
    KeyNotFound,
    KidNotAccepted,
    PermissionDenied,
    PolicyError,
    StoreConflict,
)
from signer.hsm.api import digest_signer
from signer.keys.cbor_fields import RecordFormatError
from signer.keys.ceremony import ChangeOutcome, KeyCeremonies
from signer.keys.governance import (
    Action,
    Endorsement,
    Governance,
    GovernanceError,
    Officers,
    Role,
    SignedChange,
    sign_document,
)
from signer.keys.issuance import issue_dsc_from_csr, issue_self_signed_csca
from signer.keys.lifecycle import KeyState
from signer.keys.profiles import eku_for_profile
from signer.keys.registry import KeyRegistry
from signer.store.api import RecordKind, RecordStore, StoredRecord
from tests.memory_boundary import MemoryRecordStore, MemoryToken
from tests.officer_certs import Credential, make_ca, make_client

PROFILE = "vaccination"
T0 = datetime.now(UTC).replace(microsecond=0)
CA = make_ca()
PEOPLE: dict[str, list[Credential]] = {
    "alice": [make_client(CA, "officer"), make_client(CA, "officer-laptop")],
    "bob": [make_client(CA, "officer2")],
    "carol": [make_client(CA, "officer3")],
}
OFFICERS = Officers(
    {
        "alice": ("CN=officer", "CN=officer-laptop"),
        "bob": ("CN=officer2",),
        "carol": ("CN=officer3",),
    }
)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Appliance:
    """One daemon's key logic: registry + ceremonies over a shared token and store."""

    token: MemoryToken
    store: RecordStore
    clock: Clock
    settings: KeySettings
    csca_der: bytes
    events: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.governance = Governance(
            OFFICERS,
            CA.certificate,
            self.settings.approvals_required,
            change_ttl=self.settings.change_ttl,
            takeover_notice=2 * self.settings.refresh_interval,
        )
        self.registry = KeyRegistry(
            self.token,
            self.store,
            self.settings,
            (PROFILE,),
            self.governance,
            clock=self.clock,
            on_rejected=lambda key_id, problem: self.rejected.append((key_id, problem)),
        )
        self.registry.refresh()
        self.ceremonies = KeyCeremonies(
            self.registry,
            self.token,
            self.store,
            self.settings,
            on_event=lambda name, details: self.events.append((name, details)),
            csca_der=self.csca_der,
            reserved_labels=("signer-audit",),
        )

    def certify(self, key_id: str) -> bytes:
        csca_key = self.token.key_id_by_label("csca")
        return issue_dsc_from_csr(
            csca_der=self.csca_der,
            csca_sign=digest_signer(self.token, csca_key),
            csr=self.ceremonies.csr(key_id),
            not_before=self.clock.now - timedelta(minutes=5),
            not_after=self.clock.now + timedelta(days=730),
            extended_key_usages=(eku_for_profile(PROFILE),),
        )

    def ready_key(self, label: str) -> str:
        view, _ = self.ceremonies.generate(PROFILE, label, "alice")
        self.ceremonies.import_certificate(view.key_id, self.certify(view.key_id), "alice")
        return view.key_id

    def request(
        self, action: Action, key_id: str, person: str = "alice", cert: int = 0, **fields: Any
    ) -> ChangeOutcome:
        document = self.ceremonies.draft(action, key_id, person, **fields).encode()
        return self.ceremonies.request_change(document, endorse(person, "request", document, cert))

    def approve(self, change_id: str, person: str, cert: int = 0) -> ChangeOutcome:
        documents = {c.change_id: c.signed.document for c in self.ceremonies.pending_changes()}
        signed_at = int(self.clock().timestamp())
        endorsement = endorse(person, "approve", documents.get(change_id, b""), cert, signed_at)
        return self.ceremonies.approve(change_id, endorsement)

    def activate_now(self, key_id: str) -> None:
        outcome = self.request("activate", key_id)
        if not outcome.applied:
            self.approve(outcome.change.change_id, "bob")

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


def endorse(
    person: str, role: Role, document: bytes, cert: int = 0, signed_at: int | None = None
) -> Endorsement:
    credential = PEOPLE[person][cert]
    signature = sign_document(credential.key, role, document, signed_at)
    return Endorsement(role, person, f"cert {cert}", credential.der, signature, signed_at)


def csca(token: MemoryToken) -> bytes:
    key_id = token.generate_key("csca").key_id
    return issue_self_signed_csca(
        spki_der=token.public_key(key_id),
        subject={"country_name": "VN", "common_name": "unit test CSCA"},
        sign=digest_signer(token, key_id),
        not_before=T0 - timedelta(hours=1),
        not_after=T0 + timedelta(days=3650),
    )


def make(approvals: int = 1, store: RecordStore | None = None) -> Appliance:
    token = MemoryToken()
    settings = KeySettings(approvals_required=approvals, refresh_interval=timedelta(seconds=2))
    return Appliance(token, store or MemoryRecordStore(), Clock(), settings, csca(token))


def sibling(first: Appliance, store: RecordStore | None = None) -> Appliance:
    """A second daemon on the same token and store (optionally seen through a wrapper)."""
    return Appliance(first.token, store or first.store, first.clock, first.settings, first.csca_der)


def test_generate_import_activate_then_sign() -> None:
    app = make()
    view, csr = app.ceremonies.generate(PROFILE, "first", "alice")
    assert view.record.state is KeyState.PENDING and csr == app.ceremonies.csr(view.key_id)
    with pytest.raises(PolicyError, match="no active key"):
        app.registry.signing_key(PROFILE)
    ready = app.ceremonies.import_certificate(view.key_id, app.certify(view.key_id), "alice")
    assert ready.record.state is KeyState.READY and ready.dsc_der is not None
    outcome = app.request("activate", view.key_id)
    assert outcome.applied
    signing = app.registry.signing_key(PROFILE)
    assert signing.key_id == view.key_id and signing.record.kid is not None
    assert signing.signs_new_requests
    assert app.registry.key_for_kid(PROFILE, signing.record.kid).key_id == view.key_id
    assert app.event_names() == [
        "key_generated",
        "csr_made",
        "cert_imported",
        "change_requested",
        "activation_scheduled",
    ]
    assert app.rejected == []


def test_rotation_keeps_the_old_kid_for_the_overlap_then_names_the_new_one() -> None:
    app = make()
    old = app.ready_key("old")
    app.activate_now(old)
    new = app.ready_key("new")
    at = T0 + timedelta(hours=1)
    app.request("activate", new, activate_at=at)
    old_kid = app.registry.key(old).record.kid
    new_kid = app.registry.key(new).record.kid
    assert old_kid is not None and new_kid is not None
    assert app.registry.signing_key(PROFILE).key_id == old

    app.clock.now = at + timedelta(seconds=1)
    assert app.registry.signing_key(PROFILE).key_id == new
    assert app.registry.key_for_kid(PROFILE, old_kid).key_id == old  # inside the overlap
    assert app.registry.key(old).overlap_ends == at + app.settings.overlap
    assert not app.registry.key(old).signs_new_requests

    app.clock.now = at + app.settings.overlap + timedelta(seconds=1)
    with pytest.raises(KidNotAccepted) as refused:
        app.registry.key_for_kid(PROFILE, old_kid)
    assert refused.value.current_kid == new_kid
    assert app.registry.key(old).effective_state == "retired"


def test_a_takeover_waits_two_refresh_intervals_so_every_daemon_knows_first() -> None:
    app = make()
    first = app.ready_key("first")
    app.activate_now(first)
    second = app.ready_key("second")
    outcome = app.request("activate", second)
    assert outcome.key.record.activate_at == T0 + 2 * app.settings.refresh_interval


def test_dual_control_needs_a_second_person_not_a_second_certificate() -> None:
    app = make(approvals=2)
    key_id = app.ready_key("dual")
    outcome = app.request("activate", key_id)
    assert not outcome.applied
    change_id = outcome.change.change_id
    assert [c.change_id for c in app.ceremonies.pending_changes()] == [change_id]
    for cert in (0, 1):  # alice's own certificate, then her second one
        with pytest.raises(PermissionDenied, match="alice requested change"):
            app.approve(change_id, "alice", cert)
    assert app.registry.key(key_id).record.state is KeyState.READY
    applied = app.approve(change_id, "bob")
    assert applied.applied
    assert app.registry.signing_key(PROFILE).key_id == key_id
    assert app.ceremonies.pending_changes() == []
    with pytest.raises(KeyNotFound):
        app.approve(change_id, "carol")
    details = dict(app.events)["activation_scheduled"]
    assert details["officers"] == "alice, bob"


def test_a_signature_for_someone_else_or_over_other_bytes_is_refused() -> None:
    app = make(approvals=2)
    key_id = app.ready_key("forged")
    document = app.ceremonies.draft("activate", key_id, "alice").encode()
    as_bob = endorse("bob", "request", document)
    with pytest.raises(PermissionDenied, match="names 'alice' as requester, but bob signed"):
        app.ceremonies.request_change(document, as_bob)
    other = app.ceremonies.draft("retire", key_id, "alice", reason="x").encode()
    stolen = replace(endorse("alice", "request", other), role="request")
    with pytest.raises(GovernanceError, match="does not verify"):
        app.ceremonies.request_change(document, stolen)
    assert app.store.load_all(RecordKind.CHANGE) == {}


def test_a_stale_draft_is_refused() -> None:
    app = make()
    key_id = app.ready_key("stale")
    document = app.ceremonies.draft("activate", key_id, "alice").encode()
    app.clock.now = T0 + timedelta(hours=1)
    with pytest.raises(PolicyError, match="draft it again"):
        app.ceremonies.request_change(document, endorse("alice", "request", document))


def test_an_expired_change_is_dropped_and_refused() -> None:
    app = make(approvals=2)
    key_id = app.ready_key("late")
    change = app.request("activate", key_id).change
    [pending] = app.ceremonies.pending_changes()
    app.clock.now = T0 + app.settings.change_ttl + timedelta(seconds=1)
    with pytest.raises(PolicyError, match="expired at"):
        app.ceremonies.approve(change.change_id, endorse("bob", "approve", pending.signed.document))
    assert app.store.load_all(RecordKind.CHANGE) == {}
    assert "change_expired" in app.event_names()
    assert app.registry.key(key_id).record.state is KeyState.READY


class RacingStore:
    """A store through which a daemon claims a pending change just after another daemon
    approved and applied it: ``before_claim`` runs first, as a thread switch would."""

    def __init__(self, inner: RecordStore, before_claim: Callable[[], object]) -> None:
        self.inner = inner
        self.before_claim = before_claim

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        return self.inner.load_all(kind)

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        return self.inner.put(kind, name, expected_generation, value)

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        if kind is RecordKind.CHANGE:
            self.before_claim()
        self.inner.delete(kind, name, expected_generation)

    def store_id(self) -> str:
        return self.inner.store_id()


def test_two_racing_approvals_across_two_daemons_apply_once() -> None:
    first = make(approvals=2)
    key_id = first.ready_key("raced")
    change = first.request("activate", key_id).change
    racing = RacingStore(first.store, lambda: first.approve(change.change_id, "carol"))
    second = sibling(first, racing)
    with pytest.raises(StoreConflict, match="another officer or appliance"):
        second.approve(change.change_id, "bob")
    applied = first.event_names().count("activation_scheduled")
    applied += second.event_names().count("activation_scheduled")
    assert applied == 1
    assert "change_approved" not in second.event_names()
    second.registry.refresh()
    assert second.registry.signing_key(PROFILE).key_id == key_id


def test_a_record_rewritten_without_signatures_is_not_acted_on() -> None:
    """What someone holding only the PIN (or write access to the store) can do, and gets."""
    app = make(approvals=2)
    active = app.ready_key("active")
    app.activate_now(active)
    waiting = app.ready_key("waiting")
    other = sibling(app)
    stored = app.store.load_all(RecordKind.KEY)[waiting]
    record = app.registry.key(waiting).record
    forged = replace(record, state=KeyState.SCHEDULED, activate_at=T0 - timedelta(hours=1))
    app.store.put(RecordKind.KEY, waiting, stored.generation, forged.to_cbor())
    for daemon in (app, other):
        daemon.registry.refresh()
        assert daemon.registry.signing_key(PROFILE).key_id == active
        assert daemon.registry.key(waiting).record.state is KeyState.READY
        assert [key for key, _ in daemon.rejected] == [waiting]
        assert "needs the signed change behind it" in daemon.rejected[0][1]
    app.registry.refresh()  # reported once per stored version, not on every refresh
    assert len(app.rejected) == 1


def test_an_activation_moved_earlier_or_a_signature_moved_to_another_key_is_refused() -> None:
    app = make()
    first = app.ready_key("first")
    app.activate_now(first)
    second = app.ready_key("second")
    later = T0 + timedelta(days=1)
    app.request("activate", second, activate_at=later)
    stored = app.store.load_all(RecordKind.KEY)[second]
    earlier = replace(app.registry.key(second).record, activate_at=T0 + timedelta(minutes=1))
    app.store.put(RecordKind.KEY, second, stored.generation, earlier.to_cbor())
    app.registry.refresh()
    assert "moves the key's activation time" in app.rejected[-1][1]  # it had verified it
    assert "activates earlier" in sibling(app).rejected[-1][1]  # a daemon seeing it first
    assert app.registry.key(second).record.activate_at == later
    third = app.ready_key("third")
    authority = app.registry.key(second).record.authority
    stored = app.store.load_all(RecordKind.KEY)[third]
    moved = replace(
        app.registry.key(third).record,
        state=KeyState.SCHEDULED,
        activate_at=later,
        authority=authority,
    )
    app.store.put(RecordKind.KEY, third, stored.generation, moved.to_cbor())
    app.registry.refresh()
    assert "for another key" in app.rejected[-1][1]
    assert app.registry.key(third).record.state is KeyState.READY


def test_a_replayed_older_record_cannot_bring_a_retired_key_back() -> None:
    app = make()
    old = app.ready_key("old")
    app.activate_now(old)
    active_version = app.store.load_all(RecordKind.KEY)[old]
    new = app.ready_key("new")
    app.request("activate", new)
    app.clock.now = T0 + timedelta(minutes=1)
    app.request("retire", old, reason="rotated")
    retired = app.store.load_all(RecordKind.KEY)[old]
    app.store.put(RecordKind.KEY, old, retired.generation, active_version.value)
    app.registry.refresh()
    assert "moves the key back from retired" in app.rejected[-1][1]
    assert app.registry.key(old).record.state is KeyState.RETIRED


def test_retiring_the_only_signing_key_needs_force_and_a_reason() -> None:
    app = make()
    only = app.ready_key("only")
    app.activate_now(only)
    before = dict(app.store.load_all(RecordKind.KEY))
    with pytest.raises(PolicyError, match="only key signing profile 'vaccination'"):
        app.request("retire", only, reason="routine")
    with pytest.raises(PolicyError, match="give a reason"):
        app.request("retire", only, force=True)
    assert dict(app.store.load_all(RecordKind.KEY)) == before
    outcome = app.request("retire", only, force=True, reason="signing must stop: incident 7")
    assert outcome.applied and outcome.key.record.state is KeyState.RETIRED
    details = dict(app.events)["retired"]
    assert details["reason"] == "signing must stop: incident 7" and details["force"] is True


def test_a_revoked_key_stops_at_once_and_leaves_the_trust_list() -> None:
    app = make(approvals=2)
    old = app.ready_key("old")
    app.activate_now(old)
    new = app.ready_key("new")
    app.activate_now(new)
    app.clock.now += 2 * app.settings.refresh_interval + timedelta(seconds=1)
    old_kid = app.registry.key(old).record.kid
    assert old_kid is not None
    assert app.registry.key_for_kid(PROFILE, old_kid).key_id == old  # overlap
    outcome = app.request("revoke", old, person="carol", reason="private key exposed")
    assert outcome.applied  # one person suffices to stop a key
    with pytest.raises(KidNotAccepted) as refused:
        app.registry.key_for_kid(PROFILE, old_kid)
    assert refused.value.current_kid == app.registry.key(new).record.kid
    assert [v.key_id for v in app.registry.trust_list()] == [new]
    assert [r.key_id for r in app.registry.snapshot.revoked()] == [old]
    assert dict(app.events)["revoked"]["reason"] == "private key exposed"
    with pytest.raises(PolicyError, match="revocation refused"):
        app.request("revoke", old, reason="again")
    with pytest.raises(KeyNotFound):
        app.request("revoke", "00" * 8, reason="unknown")
    sibling(app).registry.refresh()


def test_refusals_change_nothing() -> None:
    app = make()
    key_id = app.ready_key("only")
    app.activate_now(key_id)
    before = dict(app.store.load_all(RecordKind.KEY))
    with pytest.raises(PolicyError, match="retire it first"):
        app.request("destroy", key_id, reason="x")
    with pytest.raises(PolicyError, match="label"):
        app.ceremonies.generate(PROFILE, "", "alice")
    with pytest.raises(InvalidRequest, match="reserved"):
        app.ceremonies.generate(PROFILE, "signer-audit", "alice")
    with pytest.raises(KeyNotFound):
        app.request("retire", "00" * 8)
    assert dict(app.store.load_all(RecordKind.KEY)) == before
    assert app.store.load_all(RecordKind.CHANGE) == {}


def _rewrite(app: Appliance, key_id: str, **changes: Any) -> None:
    """Write ``key_id``'s record, as ``app`` last verified it, back to the store with
    ``changes``: what a holder of the PIN alone can do to the records."""
    stored = app.store.load_all(RecordKind.KEY)[key_id]
    record = replace(app.registry.key(key_id).record, **changes)
    app.store.put(RecordKind.KEY, key_id, stored.generation, record.to_cbor())


def test_a_signed_activation_cannot_be_moved_later_to_bring_an_old_key_back() -> None:
    """With only the PIN, re-timing an old key's signed activation would make it the newest
    activation again and take over signing. A daemon that verified the record refuses any
    re-timing; one that first sees it refuses a time beyond what the change allowed."""
    app = make()
    old = app.ready_key("old")
    app.activate_now(old)
    new = app.ready_key("new")
    app.request("activate", new)
    app.clock.now = T0 + timedelta(minutes=1)
    assert app.registry.signing_key(PROFILE).key_id == new
    _rewrite(app, old, activate_at=app.clock.now)
    app.registry.refresh()
    assert "moves the key's activation time" in app.rejected[-1][1]
    assert app.registry.signing_key(PROFILE).key_id == new
    _rewrite(app, old, activate_at=T0 + timedelta(days=2))
    newcomer = sibling(app)
    assert "activates later than change" in newcomer.rejected[-1][1]
    assert newcomer.registry.signing_key(PROFILE).key_id == new


def test_an_approved_activation_is_bound_to_its_signed_approval_time() -> None:
    """Approvals carry the time they were signed. A daemon that first sees an old key's
    activation re-timed past its approval (here after a successor activated ten minutes later,
    well inside the change's 24-hour approval window) refuses it, so the PIN alone cannot bring
    the old key back."""
    app = make(approvals=2)
    old = app.ready_key("old")
    app.activate_now(old)
    assert app.registry.signing_key(PROFILE).key_id == old
    app.clock.now = T0 + timedelta(minutes=10)
    new = app.ready_key("new")
    app.activate_now(new)
    app.clock.now = T0 + timedelta(minutes=11)
    assert app.registry.signing_key(PROFILE).key_id == new
    _rewrite(app, old, activate_at=app.clock.now)
    newcomer = sibling(app)
    assert "activates later than change" in newcomer.rejected[-1][1]
    assert newcomer.registry.signing_key(PROFILE).key_id == new


def test_an_approval_signed_far_from_the_appliance_clock_is_refused() -> None:
    app = make(approvals=2)
    key_id = app.ready_key("skewed")
    change = app.request("activate", key_id).change
    [pending] = app.ceremonies.pending_changes()
    late = int((app.clock.now - timedelta(minutes=10)).timestamp())
    skewed = endorse("bob", "approve", pending.signed.document, signed_at=late)
    with pytest.raises(PolicyError, match="clock says"):
        app.ceremonies.approve(change.change_id, skewed)
    timeless = endorse("bob", "approve", pending.signed.document)
    with pytest.raises(InvalidRequest, match="no signing time"):
        app.ceremonies.approve(change.change_id, timeless)
    huge = endorse("bob", "approve", pending.signed.document, signed_at=2**62)
    with pytest.raises(InvalidRequest, match="not a time"):
        app.ceremonies.approve(change.change_id, huge)
    with pytest.raises(RecordFormatError, match="endorsement is malformed"):
        SignedChange.decode(SignedChange(pending.signed.document, (huge,)).encode())
    assert app.registry.key(key_id).record.state is KeyState.READY
    [still] = app.ceremonies.pending_changes()
    assert len(still.signed.endorsements) == 1


def test_an_approval_signed_by_a_clock_a_minute_behind_still_verifies_everywhere() -> None:
    """The appliance accepts an approval signed up to a minute away from its clock; the bound
    every daemon applies leaves room for that and for the time applying takes."""
    app = make(approvals=2)
    key_id = app.ready_key("behind")
    change = app.request("activate", key_id).change
    [pending] = app.ceremonies.pending_changes()
    signed_at = int(T0.timestamp())
    app.clock.now = T0 + timedelta(seconds=59)
    outcome = app.ceremonies.approve(
        change.change_id, endorse("bob", "approve", pending.signed.document, signed_at=signed_at)
    )
    assert outcome.applied
    newcomer = sibling(app)
    assert newcomer.rejected == []
    assert newcomer.registry.signing_key(PROFILE).key_id == key_id


def test_approval_times_are_required_by_new_documents_and_optional_for_old_ones() -> None:
    """Documents drafted since approvals carry their time (format 2) need it in every
    approval, so an approval without one cannot stand in to widen the bound; a format 1
    record, approved before, still verifies."""
    app = make(approvals=2)
    key_id = app.ready_key("k")
    app.activate_now(key_id)
    signed = SignedChange.decode(app.registry.key(key_id).record.authority or b"")
    document = signed.change
    untimed = endorse("bob", "approve", signed.document)
    _rewrite(
        app,
        key_id,
        authority=SignedChange(signed.document, (signed.endorsements[0], untimed)).encode(),
    )
    newcomer = sibling(app)
    assert "carries no signing time" in newcomer.rejected[-1][1]
    assert newcomer.registry.signing_view(PROFILE).active is None

    old = replace(document, format_version=1).encode()
    legacy = SignedChange(old, (endorse("alice", "request", old), endorse("bob", "approve", old)))
    _rewrite(app, key_id, authority=legacy.encode())
    veteran = sibling(app)
    assert veteran.rejected == []
    assert veteran.registry.signing_key(PROFILE).key_id == key_id


def test_lowering_approvals_required_keeps_earlier_activations_valid() -> None:
    """A change is applied when its last approval arrives, so that approval bounds it, also
    for a daemon configured with fewer approvals later."""
    app = make(approvals=3)
    key_id = app.ready_key("three")
    change = app.request("activate", key_id).change
    app.approve(change.change_id, "bob")
    app.clock.now = T0 + timedelta(minutes=10)
    assert app.approve(change.change_id, "carol").applied
    app.clock.now = T0 + timedelta(minutes=11)
    relaxed = Appliance(
        app.token, app.store, app.clock, replace(app.settings, approvals_required=2), app.csca_der
    )
    assert relaxed.rejected == []
    assert relaxed.registry.signing_key(PROFILE).key_id == key_id
