"""``signer init --config production.toml``: what a production appliance needs on its token
before the first start, created only where missing.

The token must already be initialised with the HSM vendor's tools under the vendor's PIN rules
(this never calls ``C_InitToken``). On it, ``init`` creates the audit key that signs checkpoints
if the token has none under ``[hsm] audit_key_label``, exports its public key for the auditors
and prints its fingerprint, after every check of ``signer config check``. Running it again
changes nothing and prints the same key. Dev configurations (``[keys] dev = true``) are
refused: they have ``signer dev-setup``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import pem

from signer.audit.checkpoint import key_id as note_key_id
from signer.audit.checkpoint import load_audit_public_key, spki_der, verifier_key
from signer.audit.fileops import OsFileOps
from signer.config import Settings
from signer.errors import ConfigError, HsmError, KeyNotFound
from signer.hsm.api import Token
from signer.hsm.pooled import pooled_token
from signer.hsm.provision import token_exists
from signer.ops.config_check import ConfigProblems, ConfigReport, check_files

AUDIT_PUBLIC_KEY_FILE = "audit-public-key.pem"


@dataclass(frozen=True)
class InitReport:
    """What ``init`` found or made."""

    token_label: str
    audit_key_label: str
    audit_key_id: str
    created: bool
    public_key_file: Path
    spki_der: bytes
    origin: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the audit key's SubjectPublicKeyInfo, as auditors compare it."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def note_verifier(self) -> str:
        """The ``name+keyid+key`` string Go signed-note tools verify checkpoints with."""
        return verifier_key(self.origin, self.spki_der)


def default_public_key_file(settings: Settings) -> Path:
    """Where ``init`` exports the audit public key unless told otherwise: beside the audit
    folder, where ``signer dev-setup`` puts it too."""
    return settings.audit.directory.parent / AUDIT_PUBLIC_KEY_FILE


def init_appliance(settings: Settings, public_key_file: Path) -> InitReport:
    """Check the configuration, create the audit key if missing, export its public key."""
    if settings.keys.dev:
        raise ConfigError(
            f"{settings.source}: [keys] dev = true is a development configuration; signer init"
            " prepares production appliances (dev setups: `make setup` / `signer dev-setup`)"
        )
    report = ConfigReport(settings.source, settings)
    check_files(settings, report)
    if report.problems:
        raise ConfigProblems(report.problems)
    for name, value in settings.hsm.environment().items():
        os.environ[name] = value
    hsm = settings.hsm
    if not token_exists(hsm.module, hsm.token_label):
        raise ConfigError(
            f"{settings.source}: [hsm] token_label {hsm.token_label!r}: the PKCS#11 module has no"
            " initialised token with this label; initialise it with the HSM vendor's tools first"
            " (signer init never initialises a token)"
        )
    with pooled_token(hsm, count=1) as token:
        key_id, created = ensure_audit_key(token, hsm.audit_key_label)
        spki = token.public_key(key_id)
    export_public_key(spki, public_key_file)
    return InitReport(
        hsm.token_label,
        hsm.audit_key_label,
        key_id,
        created,
        public_key_file,
        spki,
        settings.audit.origin,
    )


def ensure_audit_key(token: Token, label: str) -> tuple[str, bool]:
    """The audit key's identifier, and whether it was generated now."""
    try:
        return token.key_id_by_label(label), False
    except KeyNotFound as exc:
        # KeyNotFound also reports several keys under one label: never add another one then.
        if not str(exc).startswith("no "):
            raise HsmError(f"audit key {label!r}: {exc}; remove the extra keys first") from None
    return token.generate_key(label).key_id, True


def export_public_key(spki: bytes, path: Path) -> None:
    """Write the audit public key as PEM; an existing file must hold the same key."""
    wanted = spki_der(load_audit_public_key(spki))
    if path.exists():
        existing = spki_der(load_audit_public_key(path.read_bytes()))
        if existing == wanted:
            return
        raise ConfigError(
            f"{path} holds another public key (key ID {note_key_id(existing).hex()}) than the"
            f" audit key on the token (key ID {note_key_id(wanted).hex()}); if the audit key was"
            " replaced on purpose, move the old file away and tell the auditors"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    OsFileOps().write_file_atomically(path, pem.armor("PUBLIC KEY", wanted))
    path.chmod(0o644)


def next_steps(report: InitReport) -> list[str]:
    """The ceremony that follows, as commands an operator can copy."""
    connect = "--target HOST:PORT --ca server-ca.pem --cert you.pem --key you.key"
    return [
        f"1. Give the auditors {report.public_key_file} through a trusted channel and read them"
        f" its SHA-256 fingerprint {report.fingerprint} to compare; they start their mirror with"
        f" `signer audit mirror --dir MIRROR --pubkey audit-public-key.pem {connect}` (from"
        " cron, or with --every SECONDS).",
        "2. Start the daemon (`systemctl enable --now signer`) and check it with"
        f" `signer health {connect}`: NOT_SERVING until every profile has an active key.",
        "3. Security officers generate each profile's first key, each with their own client"
        f" certificate: `signer keys generate {connect} --profile vaccination --label 2027-H1"
        " --csr-out 2027-H1.csr`.",
        "4. Take the CSR to the national CSCA; import the DSC it issues with `signer keys"
        " import-cert KEY_ID dsc.pem`, publish the DSC to the trust list, then `signer keys"
        " activate KEY_ID` and a second officer `signer keys approve CHANGE_ID`.",
        "5. `signer health` says SERVING; `signer audit checkpoint --out FILE --pubkey"
        " audit-public-key.pem` proves the auditors can fetch checkpoints.",
    ]
