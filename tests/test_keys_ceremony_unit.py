"""Registry and ceremony logic against the in-memory boundary: rotation, overlap, dual control,
conditional writes. Milliseconds per test; the SoftHSM suite proves the same on a real token."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from signer.config import KeySettings
from signer.errors import KeyNotFound, KidNotAccepted, PolicyError, StoreConflict
from signer.hsm.api import digest_signer
from signer.keys.ceremony import KeyCeremonies
from signer.keys.issuance import issue_dsc_from_csr, issue_self_signed_csca
from signer.keys.lifecycle import KeyState
from signer.keys.profiles import eku_for_profile
from signer.keys.registry import KeyRegistry
from signer.store.api import RecordKind, RecordStore, StoredRecord
from tests.memory_boundary import MemoryRecordStore, MemoryToken

PROFILE = "vaccination"
T0 = datetime.now(UTC).replace(microsecond=0)


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

    def __post_init__(self) -> None:
        self.registry = KeyRegistry(
            self.token, self.store, self.settings, (PROFILE,), clock=self.clock
        )
        self.registry.refresh()
        self.ceremonies = KeyCeremonies(
            self.registry,
            self.token,
            self.store,
            self.settings,
            on_event=lambda name, details: self.events.append((name, details)),
            csca_der=self.csca_der,
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

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


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
    outcome = app.ceremonies.request_change("activate", view.key_id, "alice", {})
    assert outcome.applied
    signing = app.registry.signing_key(PROFILE)
    assert signing.key_id == view.key_id and signing.record.kid is not None
    assert app.registry.key_for_kid(PROFILE, signing.record.kid).key_id == view.key_id
    assert app.event_names() == [
        "key_generated",
        "csr_made",
        "cert_imported",
        "change_requested",
        "activation_scheduled",
    ]


def test_rotation_keeps_the_old_kid_for_the_overlap_then_names_the_new_one() -> None:
    app = make()
    old = app.ready_key("old")
    app.ceremonies.request_change("activate", old, "alice", {})
    new = app.ready_key("new")
    at = T0 + timedelta(hours=1)
    app.ceremonies.request_change("activate", new, "alice", {"activate_at": at})
    old_kid = app.registry.key(old).record.kid
    new_kid = app.registry.key(new).record.kid
    assert old_kid is not None and new_kid is not None
    assert app.registry.signing_key(PROFILE).key_id == old

    app.clock.now = at + timedelta(seconds=1)
    assert app.registry.signing_key(PROFILE).key_id == new
    assert app.registry.key_for_kid(PROFILE, old_kid).key_id == old  # inside the overlap

    app.clock.now = at + app.settings.overlap + timedelta(seconds=1)
    with pytest.raises(KidNotAccepted) as refused:
        app.registry.key_for_kid(PROFILE, old_kid)
    assert refused.value.current_kid == new_kid
    assert app.registry.key(old).effective_state == "retired"


def test_a_takeover_waits_two_refresh_intervals_so_every_daemon_knows_first() -> None:
    app = make()
    first = app.ready_key("first")
    app.ceremonies.request_change("activate", first, "alice", {})
    second = app.ready_key("second")
    outcome = app.ceremonies.request_change("activate", second, "alice", {"activate_at": None})
    assert outcome.key.record.activate_at == T0 + 2 * app.settings.refresh_interval


def test_dual_control_needs_a_second_officer() -> None:
    app = make(approvals=2)
    key_id = app.ready_key("dual")
    outcome = app.ceremonies.request_change("activate", key_id, "alice", {})
    assert not outcome.applied
    assert [c.change_id for c in app.ceremonies.pending_changes()] == [outcome.change.change_id]
    with pytest.raises(PolicyError):
        app.ceremonies.approve(outcome.change.change_id, "alice")
    assert app.registry.key(key_id).record.state is KeyState.READY
    applied = app.ceremonies.approve(outcome.change.change_id, "bob")
    assert applied.applied
    assert app.registry.signing_key(PROFILE).key_id == key_id
    assert app.ceremonies.pending_changes() == []
    with pytest.raises(KeyNotFound):
        app.ceremonies.approve(outcome.change.change_id, "carol")


def test_an_expired_change_is_dropped_and_refused() -> None:
    app = make(approvals=2)
    key_id = app.ready_key("late")
    change = app.ceremonies.request_change("activate", key_id, "alice", {}).change
    app.clock.now = T0 + app.settings.change_ttl + timedelta(seconds=1)
    with pytest.raises(PolicyError, match="expired at"):
        app.ceremonies.approve(change.change_id, "bob")
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
    change = first.ceremonies.request_change("activate", key_id, "alice", {}).change
    racing = RacingStore(first.store, lambda: first.ceremonies.approve(change.change_id, "carol"))
    second = sibling(first, racing)
    with pytest.raises(StoreConflict, match="another officer or appliance"):
        second.ceremonies.approve(change.change_id, "bob")
    applied = first.event_names().count("activation_scheduled")
    applied += second.event_names().count("activation_scheduled")
    assert applied == 1
    assert "change_approved" not in second.event_names()
    second.registry.refresh()
    assert second.registry.signing_key(PROFILE).key_id == key_id


def test_a_stale_key_record_write_is_refused() -> None:
    first = make()
    key_id = first.ready_key("contested")
    second = sibling(first)
    first.ceremonies.request_change("activate", key_id, "alice", {})
    stale = second.registry.snapshot.records[key_id]
    assert second.registry.snapshot.generations[key_id] == 2  # generated, then certified
    with pytest.raises(StoreConflict):
        second.store.put(
            RecordKind.KEY,
            key_id,
            second.registry.snapshot.generations[key_id],
            replace(stale, label="rewritten").to_cbor(),
        )
    first.registry.refresh()
    assert first.registry.key(key_id).record.label == "contested"


def test_refusals_change_nothing() -> None:
    app = make()
    key_id = app.ready_key("only")
    app.ceremonies.request_change("activate", key_id, "alice", {})
    before = dict(app.store.load_all(RecordKind.KEY))
    with pytest.raises(PolicyError, match="retire it first"):
        app.ceremonies.request_change("destroy", key_id, "alice", {"reason": "x"})
    with pytest.raises(PolicyError, match="label"):
        app.ceremonies.generate(PROFILE, "", "alice")
    with pytest.raises(KeyNotFound):
        app.ceremonies.request_change("retire", "00" * 8, "alice", {})
    assert dict(app.store.load_all(RecordKind.KEY)) == before
    assert app.store.load_all(RecordKind.CHANGE) == {}
