"""``signer config check FILE``: the configuration and every file it names, without starting
anything (no PKCS#11 module is loaded, no port opened, no database contacted).

What the daemon would refuse at start is a *problem* (exit 78, every one listed): the loader's
own checks (unknown keys, bad values, dev-only settings in a production file) and then, file by
file, the PKCS#11 module, the PIN source, the TLS certificate, key and client CA, the national
CSCA certificate, the record store, the audit folder and the dev client files. What cannot be
judged from here is a *note* (the PIN environment variable of a systemd ``EnvironmentFile``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from signer.config import (
    Settings,
    StoreBackend,
    check_private_file,
    load,
    read_pin,
    read_store_password,
)
from signer.errors import CertificateError, ConfigError
from signer.keys.dsc_checks import _check_csca as check_csca  # what import-cert applies
from signer.keys.pem import load_certificate


@dataclass
class ConfigReport:
    """The outcome of a check: the settings (None if the file does not load), problems, notes."""

    source: Path
    settings: Settings | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the daemon could start with this configuration."""
        return not self.problems


class ConfigProblems(ConfigError):
    """Several configuration problems, one per line (the CLI prints each on its own line)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def check_config(path: Path | str) -> ConfigReport:
    """Load ``path`` and check every file it names; never raises for a bad configuration."""
    report = ConfigReport(Path(path).resolve())
    try:
        report.settings = load(report.source)
    except ConfigError as exc:
        report.problems.extend(str(exc).splitlines())
        return report
    check_files(report.settings, report)
    return report


def check_files(settings: Settings, report: ConfigReport) -> None:
    """Append to ``report`` what is wrong with the files ``settings`` names."""
    checks: list[tuple[str, Callable[[Settings, ConfigReport], None]]] = [
        ("[hsm] module", _module),
        ("[hsm] PIN", _pin),
        ("[hsm] softhsm_conf", _softhsm_conf),
        ("[server.tls]", _tls),
        ("[keys] csca_cert", _csca),
        ("[store]", _store),
        ("[audit] dir", _audit_dir),
        ("[client]", _client),
    ]
    for name, check in checks:
        before = len(report.problems)
        check(settings, report)
        if len(report.problems) == before:
            report.checked.append(name)


def _problem(report: ConfigReport, where: str, message: str) -> None:
    report.problems.append(f"{report.source}: {where} {message}")


def _module(settings: Settings, report: ConfigReport) -> None:
    module = settings.hsm.module
    where = f"[hsm] module {module}"
    if not module.is_file():
        _problem(report, where, "does not exist: install the HSM vendor's PKCS#11 library")
        return
    mode = module.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        _problem(
            report,
            where,
            f"is writable by group or others (mode {stat.S_IMODE(mode):o}); the daemon runs"
            f" it with its privileges: `chmod go-w {module}`",
        )
    if not os.access(module, os.R_OK):
        _problem(report, where, "cannot be read by this user")


def _pin(settings: Settings, report: ConfigReport) -> None:
    hsm = settings.hsm
    if hsm.pin_env and not os.environ.get(hsm.pin_env):
        report.notes.append(
            f"[hsm] pin_env {hsm.pin_env} is not set here; the daemon must get it from its"
            " environment (the systemd unit's EnvironmentFile=/etc/signer/signer.env)"
        )
        return
    try:
        read_pin(hsm)
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        _problem(report, "[hsm]", _reason(exc))


def _softhsm_conf(settings: Settings, report: ConfigReport) -> None:
    conf = settings.hsm.softhsm_conf
    if conf is not None and not conf.is_file():
        _problem(report, f"[hsm] softhsm_conf {conf}", "does not exist")


def _tls(settings: Settings, report: ConfigReport) -> None:
    tls = settings.server.tls
    if not tls.enabled:
        return
    if tls.cert is None or tls.key is None or tls.client_ca is None:
        _problem(report, "[server.tls]", "needs cert, key and client_ca for mutual TLS")
        return
    chain = _certificates(report, "[server.tls] cert", tls.cert)
    if chain:
        _still_valid(report, f"[server.tls] cert {tls.cert}", chain[0])
    key = None
    try:
        check_private_file(tls.key, "key")
    except ConfigError as exc:
        _problem(report, "[server.tls]", str(exc))
    else:
        try:
            key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            _problem(report, f"[server.tls] key {tls.key}", f"is not usable: {_reason(exc)}")
    if chain and key is not None and _public(key) != _public(chain[0]):
        _problem(
            report,
            f"[server.tls] key {tls.key}",
            f"does not belong to the certificate {tls.cert}",
        )
    for certificate in _certificates(report, "[server.tls] client_ca", tls.client_ca):
        _still_valid(report, f"[server.tls] client_ca {tls.client_ca}", certificate)


def _csca(settings: Settings, report: ConfigReport) -> None:
    path = settings.keys.csca_cert
    if path is None:
        return
    where = f"[keys] csca_cert {path}"
    try:
        certificate = load_certificate(path.read_bytes())
        public_key = x509.load_der_x509_certificate(certificate.dump()).public_key()
        check_csca(certificate, public_key, datetime.now(UTC))
    except (CertificateError, OSError) as exc:
        _problem(report, where, _reason(exc))
        return
    country = certificate.subject.native.get("country_name")
    if country != settings.keys.country:
        _problem(
            report,
            where,
            f"is the CSCA of country {country!r}, but [keys] country is {settings.keys.country!r}",
        )


def _store(settings: Settings, report: ConfigReport) -> None:
    store = settings.store
    if store.backend is StoreBackend.DIRECTORY and store.path is not None:
        if store.path.exists() and not store.path.is_dir():
            _problem(report, f"[store] path {store.path}", "is not a folder")
        elif not store.path.exists() and not store.path.parent.is_dir():
            _problem(report, f"[store] path {store.path}", "and its parent folder do not exist")
    if store.password_file is not None:
        try:
            read_store_password(store.password_file)
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            _problem(report, "[store]", _reason(exc))


def _audit_dir(settings: Settings, report: ConfigReport) -> None:
    if not settings.audit.enabled:
        return
    folder = settings.audit.directory
    where = f"[audit] dir {folder}"
    if not folder.exists():
        if not folder.parent.is_dir():
            _problem(report, where, f"does not exist, nor does {folder.parent}")
        else:
            report.notes.append(f"{where} does not exist yet; the daemon creates it (mode 0700)")
        return
    if not folder.is_dir():
        _problem(report, where, "is not a folder")
        return
    mode = folder.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _problem(
            report,
            where,
            f"is open to group or others (mode {stat.S_IMODE(mode):o}); the log names who"
            f" signed what: `chmod 700 {folder}`",
        )


def _client(settings: Settings, report: ConfigReport) -> None:
    client = settings.client
    if client.ca is not None and not client.ca.is_file():
        _problem(report, f"[client] ca {client.ca}", "does not exist")
    if client.cert_dir is not None and not client.cert_dir.is_dir():
        _problem(report, f"[client] cert_dir {client.cert_dir}", "does not exist")


def _certificates(report: ConfigReport, where: str, path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        _problem(report, f"{where} {path}", _reason(exc))
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        _problem(report, f"{where} {path}", f"holds no PEM certificate ({exc})")
        return []


def _still_valid(report: ConfigReport, where: str, certificate: x509.Certificate) -> None:
    now = datetime.now(UTC)
    if now < certificate.not_valid_before_utc:
        _problem(report, where, f"is not valid before {certificate.not_valid_before_utc}")
    elif now >= certificate.not_valid_after_utc:
        _problem(report, where, f"expired at {certificate.not_valid_after_utc}")


def _public(holder: object) -> bytes:
    key = holder.public_key()  # type: ignore[attr-defined]
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _reason(error: BaseException) -> str:
    """Why, without the file name (the caller names the file)."""
    if isinstance(error, FileNotFoundError):
        return "does not exist"
    if isinstance(error, OSError):
        return str(error.strerror or error)
    return str(error)
