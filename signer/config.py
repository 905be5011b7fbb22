"""TOML configuration -> typed, validated settings.

One file configures a daemon (DESIGN.md §3.7). Relative paths are resolved against the directory
of the configuration file, so a config and the files it names travel together. Secrets never
live in the file: the user PIN comes from a file that only its owner may read, or from an
environment variable named here.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from signer.errors import ConfigError

DEFAULT_MAX_BATCH = 10_000
KNOWN_PROFILES = ("vaccination", "test", "recovery")
# A digest costs 34 bytes in a SignBatchRequest and a DER signature up to 74 in the answer;
# the slack covers the other fields.
_BYTES_PER_DIGEST_MESSAGE = 80
_MESSAGE_SLACK = 64 * 1024
_MIB = 1024 * 1024
_DAY = timedelta(days=1)
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class TlsSettings:
    """Mutual TLS on the gRPC port; all three files are needed unless plaintext is allowed."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    insecure_loopback: bool = False

    @property
    def enabled(self) -> bool:
        """True when the server speaks TLS."""
        return self.cert is not None


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC front end."""

    listen: str = "127.0.0.1:50051"
    max_batch: int = DEFAULT_MAX_BATCH
    threads: int = 32
    tls: TlsSettings = field(default_factory=TlsSettings)
    # KeyAdmin is served only when the listen address is loopback or mTLS is on.
    admin_enabled: bool = True

    @property
    def max_message_bytes(self) -> int:
        """gRPC message-size limit that fits a batch of ``max_batch`` digests or signatures."""
        return self.max_batch * _BYTES_PER_DIGEST_MESSAGE + _MESSAGE_SLACK


@dataclass(frozen=True)
class HsmSettings:
    """Where the PKCS#11 module, the token and the PIN are."""

    module: Path
    token_label: str
    pin_file: Path | None = None
    pin_env: str | None = None
    workers: int = 0
    softhsm_conf: Path | None = None
    audit_key_label: str = "signer-audit"
    csca_key_label: str = "dev-csca"
    copy_keys_to_session: bool = True
    timeout_seconds: float = 30.0

    @property
    def worker_count(self) -> int:
        """Number of signing worker processes (0 in the file means one per core)."""
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    def environment(self) -> dict[str, str]:
        """Environment variables the PKCS#11 module needs in worker processes."""
        return {"SOFTHSM2_CONF": str(self.softhsm_conf)} if self.softhsm_conf else {}


@dataclass(frozen=True)
class KeySettings:
    """Lifecycle policy (DCC defaults) and dual control."""

    usage_period: timedelta = timedelta(days=182)
    credential_lifetime: timedelta = timedelta(days=365)
    overlap: timedelta = timedelta(minutes=10)
    warn_before: timedelta = timedelta(days=30)
    approvals_required: int = 2
    change_ttl: timedelta = timedelta(hours=24)
    refresh_interval: timedelta = timedelta(seconds=2)
    csca_cert: Path | None = None
    country: str = "VN"
    dev: bool = False


@dataclass(frozen=True)
class AuditSettings:
    """The tamper-evident audit log."""

    enabled: bool = True
    directory: Path = Path("audit")
    segment_max_bytes: int = 64 * _MIB
    checkpoint_every_records: int = 10_000
    checkpoint_every_seconds: float = 60.0
    store_signatures: bool = False
    origin: str = "signer"


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus exposition."""

    listen: str | None = "127.0.0.1:9102"


@dataclass(frozen=True)
class RoleSettings:
    """Which client-certificate identities hold which roles."""

    issuer: tuple[str, ...] = ()
    officer: tuple[str, ...] = ()
    auditor: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuotaSettings:
    """Per-identity signing limits; 0 disables a limit."""

    signatures_per_second: float = 0.0
    burst: int = 0
    max_concurrent: int = 0


@dataclass(frozen=True)
class ClientSettings:
    """Where the command-line tools find client certificates (dev setups)."""

    ca: Path | None = None
    cert_dir: Path | None = None
    server_name: str = "localhost"


@dataclass(frozen=True)
class LogSettings:
    """Process log output."""

    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class Settings:
    """Everything a daemon needs, validated."""

    source: Path
    server: ServerSettings
    hsm: HsmSettings
    keys: KeySettings
    audit: AuditSettings
    metrics: MetricsSettings
    roles: RoleSettings
    quota: QuotaSettings
    log: LogSettings
    profiles: tuple[str, ...] = ("vaccination",)
    client: ClientSettings = field(default_factory=ClientSettings)


def load(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a configuration file; raise :class:`ConfigError` naming the problem."""
    source = Path(path).resolve()
    try:
        with source.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {source} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse(raw, source)


def parse(raw: dict[str, Any], source: Path) -> Settings:
    """Validate an already-parsed TOML document; paths resolve against ``source``'s folder."""
    reader = _Reader(raw, source)
    settings = _build(
        Settings,
        source=source,
        server=_server(reader.table("server")),
        hsm=_hsm(reader.table("hsm")),
        keys=_keys(reader.table("keys")),
        audit=_audit(reader.table("audit")),
        metrics=_build(MetricsSettings, listen=reader.table("metrics").text("listen")),
        roles=_roles(reader.table("roles")),
        quota=_quota(reader.table("quota")),
        log=_log(reader.table("log")),
        profiles=_tuple(reader.str_list("profiles")),
        client=_client(reader.table("client")),
    )
    reader.reject_unknown()
    if not settings.profiles:
        raise ConfigError(f"{source}: 'profiles' must name at least one certificate profile")
    _check_production_rules(settings)
    unknown = sorted(set(settings.profiles) - set(KNOWN_PROFILES))
    if unknown:
        raise ConfigError(
            f"{source}: unknown profile(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PROFILES)}"
        )
    return settings


def _check_production_rules(settings: Settings) -> None:
    """Outside dev configurations, refuse settings that would weaken the appliance."""
    where = settings.source
    if settings.server.tls.insecure_loopback and not settings.keys.dev:
        raise ConfigError(
            f"{where}: [server.tls] insecure_loopback is only allowed with [keys] dev = true:"
            " without client certificates there are no roles and no real dual control"
        )
    if settings.keys.dev:
        return
    if settings.keys.approvals_required < 2:
        raise ConfigError(f"{where}: [keys] approvals_required must be >= 2 unless dev = true")
    if not settings.audit.enabled:
        raise ConfigError(f"{where}: [audit] enabled = false is only allowed with dev = true")
    if settings.keys.csca_cert is None:
        raise ConfigError(
            f"{where}: [keys] csca_cert is required unless dev = true: imported DSCs must chain"
            " to the national CSCA"
        )
    quota = settings.quota
    if quota.signatures_per_second and quota.burst < settings.server.max_batch:
        raise ConfigError(
            f"{where}: [quota] burst ({quota.burst}) is below [server] max_batch"
            f" ({settings.server.max_batch}); every full batch would be refused"
        )


def read_pin(hsm: HsmSettings) -> str:
    """Return the token user PIN from its file or environment variable.

    A PIN file readable by group or others is refused: fail closed rather than run with a
    secret that other accounts on the host may have read.
    """
    if hsm.pin_env:
        value = os.environ.get(hsm.pin_env)
        if value:
            return value.strip()
        if hsm.pin_file is None:
            raise ConfigError(
                f"environment variable {hsm.pin_env} that should hold the PIN is empty"
            )
    if hsm.pin_file is None:
        raise ConfigError("[hsm] needs pin_file or pin_env to find the token user PIN")
    check_private_file(hsm.pin_file, "PIN file")
    pin = hsm.pin_file.read_text(encoding="utf-8").strip()
    if not pin:
        raise ConfigError(f"PIN file {hsm.pin_file} is empty")
    return pin


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that is missing or readable by anyone but its owner."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run 'chmod 600 {path}'"
        )


class _Reader:
    """Typed access to one TOML table that remembers which keys were used.

    Every accessor returns None for an absent key, and the settings are built with
    :func:`_build`, so an absent key gets the default its dataclass declares: each default
    is written once, on the dataclass.
    """

    def __init__(self, data: dict[str, Any], source: Path, where: str = "") -> None:
        self._data = data
        self._source = source
        self._where = where
        self._used: set[str] = set()
        self._children: list[_Reader] = []

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self._used.add(key)
        if key not in self._data:
            return default
        value = self._data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.error(key, "must be a number, not true/false")
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "number"
            raise self.error(key, f"must be a {expected}, got {type(value).__name__}")
        return value

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError naming the file and the key."""
        return ConfigError(f"{self._source}: [{self._name(key)}] {message}")

    def table(self, key: str) -> _Reader:
        child = _Reader(self._get(key, dict, {}), self._source, self._name(key))
        self._children.append(child)
        return child

    def text(self, key: str) -> str | None:
        value: str | None = self._get(key, str, None)
        return value

    def required_str(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self.error(key, "is required")
        return value

    def flag(self, key: str) -> bool | None:
        value: bool | None = self._get(key, bool, None)
        return value

    def whole(self, key: str, minimum: int = 0) -> int | None:
        value: int | None = self._get(key, int, None)
        if value is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, minimum: float = 0.0) -> float | None:
        value = self._get(key, (int, float), None)
        if value is None:
            return None
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return float(value)

    def duration(self, key: str, unit: timedelta, minimum: float = 0.0) -> timedelta | None:
        """A number of ``unit``s (the unit is in the key's name, e.g. ``_days``)."""
        value = self.number(key, minimum)
        return None if value is None else value * unit

    def str_list(self, key: str) -> list[str] | None:
        value: list[Any] | None = self._get(key, list, None)
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        return [str(item) for item in value]

    def resolve(self, path: Path) -> Path:
        """``path`` itself if absolute, else relative to the folder of the configuration file."""
        candidate = path.expanduser()
        return candidate if candidate.is_absolute() else (self._source.parent / candidate).resolve()

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        return None if value is None else self.resolve(Path(value))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(
                f"{self._source}: unknown setting(s) {', '.join(self._name(k) for k in unknown)}"
            )
        for child in self._children:
            child.reject_unknown()


_T = TypeVar("_T")


def _build(cls: Callable[..., _T], **values: object) -> _T:
    """``cls(**values)`` without the None values, so that absent keys keep their defaults."""
    return cls(**{name: value for name, value in values.items() if value is not None})


def _tuple(items: list[str] | None) -> tuple[str, ...] | None:
    return None if items is None else tuple(items)


def _server(t: _Reader) -> ServerSettings:
    tls = t.table("tls")
    return _build(
        ServerSettings,
        listen=t.text("listen") or None,
        max_batch=t.whole("max_batch", minimum=1),
        threads=t.whole("threads", minimum=2),
        tls=_build(
            TlsSettings,
            cert=tls.path("cert"),
            key=tls.path("key"),
            client_ca=tls.path("client_ca"),
            insecure_loopback=tls.flag("insecure_loopback"),
        ),
        admin_enabled=t.flag("admin_enabled"),
    )


def _hsm(t: _Reader) -> HsmSettings:
    module = t.path("module")
    if module is None:
        raise t.error("module", "is required (path of the PKCS#11 library)")
    if "pin" in t._data:
        raise t.error("pin", "PINs may not be in the configuration; use pin_file or pin_env")
    return _build(
        HsmSettings,
        module=module,
        token_label=t.required_str("token_label"),
        pin_file=t.path("pin_file"),
        pin_env=t.text("pin_env"),
        workers=t.whole("workers"),
        softhsm_conf=t.path("softhsm_conf"),
        audit_key_label=t.text("audit_key_label") or None,
        csca_key_label=t.text("csca_key_label") or None,
        copy_keys_to_session=t.flag("copy_keys_to_session"),
        timeout_seconds=t.number("timeout_seconds", minimum=0.1),
    )


def _keys(t: _Reader) -> KeySettings:
    return _build(
        KeySettings,
        usage_period=t.duration("usage_period_days", _DAY, minimum=1),
        credential_lifetime=t.duration("credential_lifetime_days", _DAY),
        overlap=t.duration("overlap_minutes", _MINUTE),
        warn_before=t.duration("warn_before_days", _DAY),
        approvals_required=t.whole("approvals_required", minimum=1),
        change_ttl=t.duration("change_ttl_minutes", _MINUTE, minimum=1),
        refresh_interval=t.duration("refresh_seconds", _SECOND, minimum=0.1),
        csca_cert=t.path("csca_cert"),
        country=t.text("country") or None,
        dev=t.flag("dev"),
    )


def _audit(t: _Reader) -> AuditSettings:
    segment_mb = t.whole("segment_max_mb", minimum=1)
    audit = _build(
        AuditSettings,
        enabled=t.flag("enabled"),
        directory=t.path("dir"),
        segment_max_bytes=None if segment_mb is None else segment_mb * _MIB,
        checkpoint_every_records=t.whole("checkpoint_every_records", minimum=1),
        checkpoint_every_seconds=t.number("checkpoint_every_seconds", minimum=0.1),
        store_signatures=t.flag("store_signatures"),
        origin=t.text("origin") or None,
    )
    # The default directory, like every relative path, lives next to the configuration file.
    return replace(audit, directory=t.resolve(audit.directory))


def _roles(t: _Reader) -> RoleSettings:
    return _build(
        RoleSettings,
        issuer=_tuple(t.str_list("issuer")),
        officer=_tuple(t.str_list("officer")),
        auditor=_tuple(t.str_list("auditor")),
    )


def _quota(t: _Reader) -> QuotaSettings:
    return _build(
        QuotaSettings,
        signatures_per_second=t.number("signatures_per_second"),
        burst=t.whole("burst"),
        max_concurrent=t.whole("max_concurrent"),
    )


def _client(t: _Reader) -> ClientSettings:
    return _build(
        ClientSettings,
        ca=t.path("ca"),
        cert_dir=t.path("cert_dir"),
        server_name=t.text("server_name") or None,
    )


def _log(t: _Reader) -> LogSettings:
    level = t.text("level")
    if level is not None and level.upper() not in LOG_LEVELS:
        raise t.error("level", f"must be {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}")
    return _build(LogSettings, level=level and level.upper(), json=t.flag("json"))
