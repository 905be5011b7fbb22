"""Bootstrap of a development (or test) token: what ``softhsm_setup.sh`` runs.

Idempotent: it creates only what is missing. On a fresh token it makes the audit key, a dev
CSCA key with a self-signed certificate, the upload key (NB_UP) with its self-signed
certificate, and for every configured profile one signing key
whose DSC the dev CSCA issues, then activates it. Every key event goes to the audit log, as
in the daemon. Nothing here is for production: the national CSCA is offline and signs CSRs
taken to it by the security officers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import pem

from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.client.officer import OfficerCredential
from signer.config import Settings, check_private_file, read_pin
from signer.dev.csca import dev_issue_certificate
from signer.dev.tls import ensure_dev_tls
from signer.errors import ConfigError, KeyNotFound
from signer.hsm.api import Token, digest_signer
from signer.hsm.pooled import PooledToken, pooled_token
from signer.hsm.provision import init_token, token_exists
from signer.identity import certificate_names
from signer.keys.ceremony import KeyCeremonies, make_ceremonies
from signer.keys.governance import Endorsement, Officers, Role
from signer.keys.issuance import issue_self_signed_csca
from signer.keys.lifecycle import KeyState
from signer.keys.pem import certificate_der, certificate_pem, load_certificate
from signer.keys.publish import ensure_upload_key
from signer.keys.registry import make_registry
from signer.keys.spki import load_p256_spki
from signer.service.trail import audit_log_public_key, open_audit_log
from signer.store.binding import check_binding
from signer.store.select import open_store

log = logging.getLogger(__name__)

SETUP_ACTOR = "softhsm_setup"
DEV_DSC_VALIDITY = timedelta(days=730)
DEV_CSCA_VALIDITY = timedelta(days=3650)
AUDIT_PUBLIC_KEY_FILE = "audit-public-key.pem"


def dev_setup(settings: Settings, so_pin_file: Path) -> None:
    """Create whatever the dev token still lacks (token, keys, certificates, active keys)."""
    for key, value in settings.hsm.environment().items():
        os.environ[key] = value
    tls = settings.server.tls
    if settings.keys.dev and tls.enabled and tls.cert is not None:
        ensure_dev_tls(tls.cert.parent)
    if not token_exists(settings.hsm.module, settings.hsm.token_label):
        check_private_file(so_pin_file, "SO PIN file")
        so_pin = so_pin_file.read_text(encoding="utf-8").strip()
        init_token(settings.hsm.module, settings.hsm.token_label, so_pin, read_pin(settings.hsm))
        log.info("initialised token %r", settings.hsm.token_label)
    audit_log: AuditLog | None = None
    with pooled_token(settings.hsm, count=1) as token:
        try:
            ensure_key(token, settings.hsm.audit_key_label)
            csca_key = ensure_key(token, settings.hsm.csca_key_label)
            ensure_csca_certificate(token, settings, csca_key)
            ensure_upload_key(
                token, settings.hsm.upload_key_label, settings.keys.country, datetime.now(UTC)
            )
            if settings.audit.enabled:
                export_audit_public_key(token, settings)
            signers = dev_officers(settings)
            # Without TLS the setup is the only person there is; with TLS it signs as the dev
            # officers, as many as a change needs, exactly as officers do through the daemon.
            acting = (
                settings
                if signers
                else replace(settings, keys=replace(settings.keys, approvals_required=1))
            )
            lacking = profiles_without_active_key(token, acting)
            if lacking:
                # Only now is the audit log opened: a running daemon holds it, and a set-up
                # that has nothing to do must not need it.
                if settings.audit.enabled:
                    audit_log = open_audit_log(token, settings)
                ceremonies = _ceremonies(token, acting, _recorder(audit_log))
                for profile in lacking:
                    ensure_active_key(token, settings, ceremonies, profile, signers)
        finally:
            if audit_log is not None:
                audit_log.close()


def _ceremonies(token: PooledToken, settings: Settings, on_event: Any = None) -> KeyCeremonies:
    store = open_store(settings, token)
    check_binding(token, store)
    registry = make_registry(token, store, settings)
    registry.refresh()
    return make_ceremonies(registry, token, store, settings, on_event)


def profiles_without_active_key(token: PooledToken, settings: Settings) -> list[str]:
    """The configured profiles that have no key signing right now."""
    registry = _ceremonies(token, settings).registry
    return [p for p in settings.profiles if registry.signing_view(p).active is None]


def ensure_key(token: Token, label: str) -> str:
    """The id of the key with this label, generated in the HSM if missing."""
    try:
        return token.key_id_by_label(label)
    except KeyNotFound:
        generated = token.generate_key(label)
        log.info("generated key %r in the HSM", label)
        return generated.key_id


def export_audit_public_key(token: Token, settings: Settings) -> Path:
    """Write the audit key's public half (PEM) beside the audit folder, for auditors."""
    path = settings.audit.directory.parent / AUDIT_PUBLIC_KEY_FILE
    spki = audit_log_public_key(token, settings)
    path.write_bytes(pem.armor("PUBLIC KEY", spki))
    return path


def ensure_csca_certificate(token: Token, settings: Settings, csca_key: str) -> None:
    """Write a self-signed dev CSCA certificate for the CSCA key, unless a matching one exists."""
    path = settings.keys.csca_cert
    if path is None:
        return
    spki = token.public_key(csca_key)
    if path.exists():
        existing = load_certificate(path.read_bytes())
        if load_p256_spki(existing.public_key.dump()) == load_p256_spki(spki):
            return
    now = datetime.now(UTC)
    der = issue_self_signed_csca(
        spki_der=spki,
        subject={
            "country_name": settings.keys.country,
            "organization_name": "signer development",
            "common_name": "DEV CSCA - NOT FOR PRODUCTION",
        },
        sign=digest_signer(token, csca_key),
        not_before=now - timedelta(hours=1),
        not_after=now + DEV_CSCA_VALIDITY,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate_pem(certificate_der(der)))
    log.info("wrote dev CSCA certificate %s", path)


def dev_officers(settings: Settings) -> list[DevOfficer]:
    """The dev officers' certificates in ``[client] cert_dir``, one per person of [officers]."""
    folder = settings.client.cert_dir
    if not settings.server.tls.enabled or folder is None:
        return []
    officers = Officers(settings.officers)
    found: dict[str, DevOfficer] = {}
    for cert in sorted(folder.glob("*.pem")):
        key = cert.with_suffix(".key")
        if not key.is_file():
            continue
        credential = OfficerCredential.from_files(cert, key)
        owner = officers.person_of(certificate_names(credential.certificate_der))
        if owner is not None and owner[0] not in found:
            found[owner[0]] = DevOfficer(owner[0], owner[1], credential)
    return list(found.values())


@dataclass(frozen=True)
class DevOfficer:
    """A person of [officers] and the dev certificate they sign with."""

    person: str
    identity: str
    credential: OfficerCredential

    def endorse(self, role: Role, document: bytes) -> Endorsement:
        """This officer's signed part in a change (an approval with the time it is signed)."""
        signed_at = int(time.time()) if role == "approve" else None
        signature = self.credential.sign(role, document, signed_at)
        return Endorsement(
            role, self.person, self.identity, self.credential.certificate_der, signature, signed_at
        )


def activate_as_officers(ceremonies: KeyCeremonies, key_id: str, signers: list[DevOfficer]) -> None:
    """Request an activation as the first dev officer and approve it as the next ones."""
    if not signers:
        unsigned = Endorsement("request", SETUP_ACTOR, SETUP_ACTOR, b"", b"")
        document = ceremonies.draft("activate", key_id, SETUP_ACTOR).encode()
        ceremonies.request_change(document, unsigned)
        return
    document = ceremonies.draft("activate", key_id, signers[0].person).encode()
    outcome = ceremonies.request_change(document, signers[0].endorse("request", document))
    for approver in signers[1:]:
        if outcome.applied:
            return
        outcome = ceremonies.approve(
            outcome.change.change_id, approver.endorse("approve", document)
        )
    if not outcome.applied:
        raise ConfigError(
            f"the dev setup found {len(signers)} officer certificate(s) in [client] cert_dir, too"
            " few to approve an activation; add persons to [officers] or lower approvals_required"
        )


def ensure_active_key(
    token: Token,
    settings: Settings,
    ceremonies: KeyCeremonies,
    profile: str,
    signers: list[DevOfficer],
) -> None:
    """Give ``profile`` an active key: generate, have the dev CSCA certify, import, activate."""
    registry = ceremonies.registry
    if registry.signing_view(profile).active is not None:
        return
    waiting = [
        v
        for v in registry.list_keys(profile)
        if v.record.state in (KeyState.PENDING, KeyState.READY)
    ]
    view = (
        waiting[-1] if waiting else ceremonies.generate(profile, f"dev-{profile}", SETUP_ACTOR)[0]
    )
    if view.record.state is KeyState.PENDING:
        dsc = dev_issue_certificate(settings, token, ceremonies, view.key_id, DEV_DSC_VALIDITY)
        view = ceremonies.import_certificate(view.key_id, dsc, SETUP_ACTOR)
    activate_as_officers(ceremonies, view.key_id, signers)
    log.info("profile %s: key %s active", profile, view.key_id)


def _recorder(audit_log: AuditLog | None) -> Any:
    def record(name: str, details: Mapping[str, Any]) -> None:
        if audit_log is not None:
            clean = {k: v for k, v in details.items() if v is not None}
            audit_log.append(EventType(name), identity=SETUP_ACTOR, details=clean)

    return record


def issue_dev_certificate(settings: Settings, key_id: str, validity: timedelta) -> bytes:
    """``signer keys dev-issue-cert``: the dev CSCA certifies a key's CSR (dev configs only)."""
    for key, value in settings.hsm.environment().items():
        os.environ[key] = value
    with pooled_token(settings.hsm, count=1) as token:
        ceremonies = _ceremonies(token, settings)
        return dev_issue_certificate(settings, token, ceremonies, key_id, validity)
