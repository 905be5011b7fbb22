"""The daemon's current view of the keys, reloaded from the record store and the HSM.

Lifecycle records live in a :class:`~signer.store.api.RecordStore`; DSCs and
public keys in the HSM. The registry reloads them every ``refresh_interval`` (and after each
change a ceremony makes), so a change made through another daemon sharing the store is seen
within that interval, and swaps in a new immutable :class:`~signer.keys.snapshot.KeySnapshot`.
Which key signs is derived from the snapshot and the clock on every request
(:mod:`signer.keys.rotation`), so a scheduled rotation happens exactly at its time without
any background job. Changes are made by :class:`signer.keys.ceremony.KeyCeremonies`.

The store needs availability, not trust: every record is re-verified on every load
(:func:`signer.keys.governance.record_problem`). A record that does not verify — rewritten by
someone holding only the HSM PIN or write access to the store — is not acted on: the daemon
keeps the last version it verified (or ignores the key), logs an ERROR and reports it through
``on_rejected`` (audit record, metric, alert).

Key records are never deleted (a destroyed key keeps its record), so a record this daemon
verified that is missing from a later load is not taken as "the key is gone": the last verified
version stays, with a WARNING. A refresh that cannot reach the HSM or the store changes nothing
either; signing goes on with the last verified snapshot, and the HSM's own errors answer the
requests that need it (UNAVAILABLE), never "no active key".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import MappingProxyType

from cryptography import x509

from signer.config import KeySettings, Settings
from signer.errors import HsmUnavailable, KeyNotFound, PolicyError, SignerError, StoreUnavailable
from signer.hsm.api import Token
from signer.keys import rotation
from signer.keys.governance import Governance, Officers, record_problem
from signer.keys.lifecycle import KeyRecord, KeyState
from signer.keys.policy import KeyPolicy
from signer.keys.snapshot import KeySnapshot, KeyView, PublicMaterial
from signer.store.api import RecordKind, RecordStore

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def policy_from(settings: KeySettings) -> KeyPolicy:
    """The rotation policy the key settings describe."""
    return KeyPolicy(
        usage_period=settings.usage_period,
        credential_lifetime=settings.credential_lifetime,
        overlap=settings.overlap,
        warn_before=settings.warn_before,
    )


class KeyRegistry:
    """The latest verified snapshot of the keys, and the reload that replaces it."""

    def __init__(
        self,
        token: Token,
        store: RecordStore,
        settings: KeySettings,
        profiles: Iterable[str],
        governance: Governance,
        clock: Callable[[], datetime] = utcnow,
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        self._token = token
        self._store = store
        self.settings = settings
        self.governance = governance
        self.clock = clock
        self._on_rejected = on_rejected or (lambda key_id, problem: None)
        self._reported: set[tuple[str, int]] = set()
        self._missing: set[str] = set()
        self._unreachable = False
        self.policy = policy_from(settings)
        self._snapshot = KeySnapshot.empty(tuple(profiles), self.policy)
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def snapshot(self) -> KeySnapshot:
        """The current picture of the keys (replaced whole on every refresh)."""
        return self._snapshot

    @property
    def profiles(self) -> tuple[str, ...]:
        """The certificate profiles this daemon serves."""
        return self._snapshot.profiles

    def refresh(self) -> None:
        """Reload records from the store, and the public material of keys not seen before.

        Refreshes are serialised: a background refresh that read the store before an
        officer's change cannot install its stale view after the change's own refresh.
        """
        with self._refresh_lock:
            self._snapshot = self._load(self._snapshot)

    def _load(self, previous: KeySnapshot) -> KeySnapshot:
        records: dict[str, KeyRecord] = {}
        generations: dict[str, int] = {}
        for name, stored in self._store.load_all(RecordKind.KEY).items():
            try:
                record = KeyRecord.from_cbor(stored.value)
                if record.key_id != name:
                    raise PolicyError(f"it is stored under another name, {name!r}")
            except (ValueError, SignerError) as exc:
                self._reject(name, stored.generation, f"it does not decode: {exc}")
                continue
            before = previous.records.get(record.key_id)
            problem = record_problem(record, self.governance, before)
            if problem:
                self._reject(record.key_id, stored.generation, problem)
                if before is None:
                    continue
                record, generation = before, previous.generations[record.key_id]
            else:
                generation = stored.generation
            records[record.key_id] = record
            generations[record.key_id] = generation
        self._keep_missing(previous, records, generations)
        public = dict(previous.public)
        for key_id, record in records.items():
            known = public.get(key_id)
            if known is None or (known.dsc_der is None and record.kid is not None):
                public[key_id] = self._load_public(record)
        return KeySnapshot(
            previous.profiles,
            self.policy,
            MappingProxyType(records),
            MappingProxyType(generations),
            MappingProxyType(public),
        )

    def _keep_missing(
        self, previous: KeySnapshot, records: dict[str, KeyRecord], generations: dict[str, int]
    ) -> None:
        """Keep the verified records a load did not return (a store or token that lost them
        for a while, not a ceremony: records are never deleted)."""
        for key_id, record in previous.records.items():
            if key_id in records:
                self._missing.discard(key_id)
                continue
            records[key_id] = record
            generations[key_id] = previous.generations[key_id]
            if key_id not in self._missing:
                self._missing.add(key_id)
                log.warning(
                    "key record %s is missing from the record store; the last verified version"
                    " stays in force (check the store and the HSM token)",
                    key_id[:40],
                )

    def _reject(self, key_id: str, generation: int, problem: str) -> None:
        """Report a record this daemon will not act on (once per stored version)."""
        if (key_id, generation) in self._reported:
            return
        self._reported.add((key_id, generation))
        log.error(
            "NOT acting on key record %s (generation %d): %s. It may have been rewritten"
            " outside a ceremony; the last verified version stays in force",
            key_id[:40],
            generation,
            problem,
        )
        self._on_rejected(key_id[:40], problem)

    def _load_public(self, record: KeyRecord) -> PublicMaterial:
        dsc = self._token.certificate(record.key_id) if record.kid else None
        spki = None
        if record.state is not KeyState.DESTROYED:
            try:
                spki = self._token.public_key(record.key_id)
            except KeyNotFound:
                spki = None
        return PublicMaterial(dsc, spki)

    def run_refresher(self) -> None:
        """Refresh every ``refresh_interval`` until :meth:`stop`; errors are logged, not raised."""
        while not self._stop.wait(self.settings.refresh_interval.total_seconds()):
            try:
                self.refresh()
            except StoreUnavailable as exc:  # reported once per outage by the daemon's store
                log.debug("refreshing keys failed (%s); keeping the last view", exc)
                continue
            except HsmUnavailable as exc:
                if not self._unreachable:
                    self._unreachable = True
                    log.warning("refreshing keys: %s; keeping the last verified view", exc)
                continue
            except Exception:
                log.exception("refreshing keys failed; keeping the last view")
                continue
            if self._unreachable:
                self._unreachable = False
                log.info("refreshing keys works again")

    def stop(self) -> None:
        """End :meth:`run_refresher`."""
        self._stop.set()

    # -- questions about now, answered from the current snapshot -------------------------------

    def signing_view(self, profile: str, now: datetime | None = None) -> rotation.SigningView:
        """Which key signs ``profile`` now and which kids are still accepted."""
        return self._snapshot.signing_view(profile, now or self.clock())

    def signing_key(self, profile: str) -> KeyView:
        """The key that signs new requests of ``profile``; FAILED_PRECONDITION when none."""
        return self._snapshot.signing_key(profile, self.clock())

    def key_for_kid(self, profile: str, kid: bytes) -> KeyRecord:
        """The key that signs a request carrying ``kid`` (see :meth:`KeySnapshot.key_for_kid`)."""
        return self._snapshot.key_for_kid(profile, kid, self.clock())

    def trust_list(self) -> list[KeyView]:
        """Every key whose DSC verifiers may still meet."""
        return self._snapshot.trust_list(self.clock())

    def list_keys(self, profile: str = "") -> list[KeyView]:
        """All keys, optionally of one profile, oldest first."""
        return self._snapshot.list_keys(self.clock(), profile)

    def key(self, key_id: str) -> KeyView:
        """One key by its id."""
        return self._snapshot.key(key_id, self.clock())


def governance_from(settings: Settings) -> Governance:
    """The officers, their CA and the approval counts a configuration sets."""
    tls = settings.server.tls
    client_ca = None
    if tls.enabled and tls.client_ca is not None:
        client_ca = x509.load_pem_x509_certificate(tls.client_ca.read_bytes())
    return Governance(
        Officers(settings.officers),
        client_ca,
        approvals_required=settings.keys.approvals_required,
        revoke_approvals=settings.keys.revoke_approvals,
        change_ttl=settings.keys.change_ttl,
        takeover_notice=2 * settings.keys.refresh_interval,
    )


def make_registry(
    token: Token,
    store: RecordStore,
    settings: Settings,
    on_rejected: Callable[[str, str], None] | None = None,
) -> KeyRegistry:
    """A registry for the configured profiles, key policy and officers."""
    return KeyRegistry(
        token,
        store,
        settings.keys,
        settings.profiles,
        governance_from(settings),
        on_rejected=on_rejected,
    )
