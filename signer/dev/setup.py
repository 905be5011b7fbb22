"""Bootstrap of a development (or test) token: what ``softhsm_setup.sh`` runs.

Idempotent: it creates only what is missing. On a fresh token it makes the audit key, a dev
CSCA key with a self-signed certificate, and for every configured profile one signing key
whose DSC the dev CSCA issues, then activates it. Every key event goes to the audit log, as
in the daemon. Nothing here is for production: the national CSCA is offline and signs CSRs
taken to it by the security officers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import pem

from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.config import Settings, check_private_file, read_pin
from signer.dev.tls import ensure_dev_tls
from signer.errors import KeyNotFound
from signer.hsm.mechanisms import SignatureEncoding
from signer.hsm.pool import WorkerPool
from signer.hsm.provision import init_token, token_exists
from signer.keys.issuance import issue_self_signed_csca
from signer.keys.lifecycle import KeyState
from signer.keys.pem import certificate_der, certificate_pem, load_certificate
from signer.keys.registry import KeyRegistry, make_registry
from signer.keys.spki import load_p256_spki
from signer.service.trail import audit_log_public_key, open_audit_log

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
    pool = WorkerPool(settings.hsm, count=1)
    pool.start()
    audit_log: AuditLog | None = None
    try:
        ensure_key(pool, settings.hsm.audit_key_label)
        csca_key = ensure_key(pool, settings.hsm.csca_key_label)
        ensure_csca_certificate(pool, settings, csca_key)
        if settings.audit.enabled:
            export_audit_public_key(pool, settings)
        one_officer = replace(settings, keys=replace(settings.keys, approvals_required=1))
        lacking = profiles_without_active_key(make_registry(pool, one_officer), settings)
        if lacking:
            # Only now is the audit log opened: a running daemon holds it, and a set-up that
            # has nothing to do must not need it.
            if settings.audit.enabled:
                audit_log = open_audit_log(pool, settings)
            registry = make_registry(pool, one_officer, _recorder(audit_log))
            registry.refresh()
            for profile in lacking:
                ensure_active_key(registry, profile)
    finally:
        try:
            if audit_log is not None:
                audit_log.close()
        finally:
            pool.close()


def profiles_without_active_key(registry: KeyRegistry, settings: Settings) -> list[str]:
    """The configured profiles that have no key signing right now."""
    registry.refresh()
    return [p for p in settings.profiles if registry.signing_view(p).active is None]


def ensure_key(pool: WorkerPool, label: str) -> str:
    """The id of the key with this label, generated in the HSM if missing."""
    try:
        key_id: str = pool.call("key_id_by_label", label=label)
        return key_id
    except KeyNotFound:
        generated = pool.call("generate_key", label=label)
        log.info("generated key %r in the HSM", label)
        return str(generated.key_id)


def export_audit_public_key(pool: WorkerPool, settings: Settings) -> Path:
    """Write the audit key's public half (PEM) beside the audit folder, for auditors."""
    path = settings.audit.directory.parent / AUDIT_PUBLIC_KEY_FILE
    spki = audit_log_public_key(pool, settings)
    path.write_bytes(pem.armor("PUBLIC KEY", spki))
    return path


def ensure_csca_certificate(pool: WorkerPool, settings: Settings, csca_key: str) -> None:
    """Write a self-signed dev CSCA certificate for the CSCA key, unless a matching one exists."""
    path = settings.keys.csca_cert
    if path is None:
        return
    spki = pool.call("public_key", key_id=csca_key)
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
        sign=lambda digest: pool.sign(csca_key, [digest], SignatureEncoding.RAW)[0],
        not_before=now - timedelta(hours=1),
        not_after=now + DEV_CSCA_VALIDITY,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate_pem(certificate_der(der)))
    log.info("wrote dev CSCA certificate %s", path)


def ensure_active_key(registry: KeyRegistry, profile: str) -> None:
    """Give ``profile`` an active key: generate, have the dev CSCA certify, import, activate."""
    if registry.signing_view(profile).active is not None:
        return
    waiting = [
        v
        for v in registry.list_keys(profile)
        if v.record.state in (KeyState.PENDING, KeyState.READY)
    ]
    view = waiting[-1] if waiting else registry.generate(profile, f"dev-{profile}", SETUP_ACTOR)[0]
    if view.record.state is KeyState.PENDING:
        dsc = registry.dev_issue_certificate(view.key_id, DEV_DSC_VALIDITY)
        view = registry.import_certificate(view.key_id, dsc, SETUP_ACTOR)
    registry.request_change("activate", view.key_id, SETUP_ACTOR, {"activate_at": None})
    log.info("profile %s: key %s active", profile, view.key_id)


def _recorder(audit_log: AuditLog | None) -> Any:
    def record(name: str, details: Mapping[str, Any]) -> None:
        if audit_log is not None:
            clean = {k: v for k, v in details.items() if v is not None}
            audit_log.append(EventType(name), identity=SETUP_ACTOR, details=clean)

    return record


def dev_issue_certificate(settings: Settings, key_id: str, validity: timedelta) -> bytes:
    """Have the dev CSCA key in the HSM certify a key's CSR (refused outside dev configs)."""
    for key, value in settings.hsm.environment().items():
        os.environ[key] = value
    pool = WorkerPool(settings.hsm, count=1)
    pool.start()
    try:
        registry = make_registry(pool, settings)
        registry.refresh()
        return registry.dev_issue_certificate(key_id, validity)
    finally:
        pool.close()
