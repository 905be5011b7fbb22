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
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from signer.errors import ConfigError

DEFAULT_MAX_BATCH = 10_000
KNOWN_PROFILES = ("vaccination", "test", "recovery")
# A digest costs 34 bytes in a SignBatchRequest and a DER signature up to 74 in the answer;
# the slack covers the other fields.
_BYTES_PER_DIGEST_MESSAGE = 80
_MESSAGE_SLACK = 64 * 1024


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
    segment_max_bytes: int = 64 * 1024 * 1024
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
    profiles: tuple[str, ...]
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
    settings = Settings(
        source=source,
        server=_server(reader.table("server")),
        hsm=_hsm(reader.table("hsm")),
        keys=_keys(reader.table("keys")),
        audit=_audit(reader.table("audit")),
        metrics=MetricsSettings(listen=reader.table("metrics").text("listen", "127.0.0.1:9102")),
        roles=_roles(reader.table("roles")),
        quota=_quota(reader.table("quota")),
        log=_log(reader.table("log")),
        profiles=tuple(reader.str_list("profiles", ["vaccination"])),
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
    """Typed access to one TOML table that remembers which keys were used."""

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

    def text(self, key: str, default: str | None = None) -> str | None:
        value: str | None = self._get(key, str, default)
        return value

    def required_str(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self.error(key, "is required")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, bool, default)
        return value

    def whole(self, key: str, default: int, minimum: int = 0) -> int:
        value: int = self._get(key, int, default)
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = float(self._get(key, (int, float), default))
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return value

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value: list[Any] = self._get(key, list, default)
        if not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        return [str(item) for item in value]

    @property
    def source_dir(self) -> Path:
        """Folder of the configuration file (relative paths resolve against it)."""
        return self._source.parent

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else (self._source.parent / candidate).resolve()

    def reject_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(
                f"{self._source}: unknown setting(s) {', '.join(self._name(k) for k in unknown)}"
            )
        for child in self._children:
            child.reject_unknown()


def _server(t: _Reader) -> ServerSettings:
    tls = t.table("tls")
    return ServerSettings(
        listen=t.text("listen", "127.0.0.1:50051") or "127.0.0.1:50051",
        max_batch=t.whole("max_batch", DEFAULT_MAX_BATCH, minimum=1),
        threads=t.whole("threads", 32, minimum=2),
        tls=TlsSettings(
            cert=tls.path("cert"),
            key=tls.path("key"),
            client_ca=tls.path("client_ca"),
            insecure_loopback=tls.flag("insecure_loopback", False),
        ),
        admin_enabled=t.flag("admin_enabled", True),
    )


def _hsm(t: _Reader) -> HsmSettings:
    module = t.path("module")
    if module is None:
        raise t.error("module", "is required (path of the PKCS#11 library)")
    if "pin" in t._data:
        raise t.error("pin", "PINs may not be in the configuration; use pin_file or pin_env")
    return HsmSettings(
        module=module,
        token_label=t.required_str("token_label"),
        pin_file=t.path("pin_file"),
        pin_env=t.text("pin_env"),
        workers=t.whole("workers", 0),
        softhsm_conf=t.path("softhsm_conf"),
        audit_key_label=t.text("audit_key_label", "signer-audit") or "signer-audit",
        csca_key_label=t.text("csca_key_label", "dev-csca") or "dev-csca",
        copy_keys_to_session=t.flag("copy_keys_to_session", True),
        timeout_seconds=t.number("timeout_seconds", 30.0, minimum=0.1),
    )


def _keys(t: _Reader) -> KeySettings:
    return KeySettings(
        usage_period=timedelta(days=t.number("usage_period_days", 182, minimum=1)),
        credential_lifetime=timedelta(days=t.number("credential_lifetime_days", 365, minimum=0)),
        overlap=timedelta(minutes=t.number("overlap_minutes", 10)),
        warn_before=timedelta(days=t.number("warn_before_days", 30)),
        approvals_required=t.whole("approvals_required", 2, minimum=1),
        change_ttl=timedelta(minutes=t.number("change_ttl_minutes", 24 * 60, minimum=1)),
        refresh_interval=timedelta(seconds=t.number("refresh_seconds", 2, minimum=0.1)),
        csca_cert=t.path("csca_cert"),
        country=t.text("country", "VN") or "VN",
        dev=t.flag("dev", False),
    )


def _audit(t: _Reader) -> AuditSettings:
    return AuditSettings(
        enabled=t.flag("enabled", True),
        directory=t.path("dir") or (t.source_dir / "audit"),
        segment_max_bytes=t.whole("segment_max_mb", 64, minimum=1) * 1024 * 1024,
        checkpoint_every_records=t.whole("checkpoint_every_records", 10_000, minimum=1),
        checkpoint_every_seconds=t.number("checkpoint_every_seconds", 60.0, minimum=0.1),
        store_signatures=t.flag("store_signatures", False),
        origin=t.text("origin", "signer") or "signer",
    )


def _roles(t: _Reader) -> RoleSettings:
    return RoleSettings(
        issuer=tuple(t.str_list("issuer", [])),
        officer=tuple(t.str_list("officer", [])),
        auditor=tuple(t.str_list("auditor", [])),
    )


def _quota(t: _Reader) -> QuotaSettings:
    return QuotaSettings(
        signatures_per_second=t.number("signatures_per_second", 0.0),
        burst=t.whole("burst", 0),
        max_concurrent=t.whole("max_concurrent", 0),
    )


def _client(t: _Reader) -> ClientSettings:
    return ClientSettings(
        ca=t.path("ca"),
        cert_dir=t.path("cert_dir"),
        server_name=t.text("server_name", "localhost") or "localhost",
    )


def _log(t: _Reader) -> LogSettings:
    level = (t.text("level", "INFO") or "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise t.error("level", "must be DEBUG, INFO, WARNING or ERROR")
    return LogSettings(level=level, json=t.flag("json", False))
