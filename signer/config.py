"""TOML configuration -> typed, validated settings.

One file configures a daemon. Relative paths are resolved against the directory
of the configuration file, so a config and the files it names travel together. Secrets never
live in the file: the user PIN comes from a file that only its owner may read, or from an
environment variable named here.
"""

from __future__ import annotations

import enum
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from signer.errors import ConfigError
from signer.identity import MAX_IDENTITY_CHARS, normalise
from signer.keys.profiles import PROFILES

DEFAULT_MAX_BATCH = 10_000
# A digest costs 34 bytes in a SignBatchRequest and a DER signature up to 74 in the answer;
# the slack covers the other fields.
_BYTES_PER_DIGEST_MESSAGE = 80
_MESSAGE_SLACK = 64 * 1024
_MIB = 1024 * 1024
_DAY = timedelta(days=1)
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)
_HOUR = timedelta(hours=1)
# About ten years: a longer key policy is a typo, and it stays far from timedelta's limit.
_LONGEST = timedelta(days=3653)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_ROLES = ("issuer", "officer", "auditor")
_NAME_FORMS = {"CN=": "common name", "URI:": "SAN URI", "DNS:": "SAN DNS name"}
_FINGERPRINT = re.compile(r"[0-9a-fA-F]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_PERSON = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
AUTO: Literal["auto"] = "auto"
# Variables that would change how signer itself runs, not how the PKCS#11 module finds its HSM.
_RESERVED_ENVIRONMENT = re.compile(r"(LD_|PYTHON|DYLD_).*|PATH|HOME|SOFTHSM2_CONF")
_SHOWN_CHARS = 60
_HIDDEN = object()


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
    reflection: bool = True
    """Serve gRPC server reflection (for grpcurl), to identities that hold a role."""

    @property
    def max_message_bytes(self) -> int:
        """gRPC message-size limit that fits a batch of ``max_batch`` digests or signatures."""
        return self.max_batch * _BYTES_PER_DIGEST_MESSAGE + _MESSAGE_SLACK


@dataclass(frozen=True)
class HsmSettings:
    """Where the PKCS#11 module, the token and the PIN are, and how signer uses the module."""

    module: Path
    token_label: str
    pin_file: Path | None = None
    pin_env: str | None = None
    workers: int | Literal["auto"] = AUTO
    """Signing worker processes: a number, 0 for one per core, or "auto" (measured at start)."""
    max_workers: int = 32
    """Upper bound for ``workers = "auto"``: keep it within the HSM's session limit."""
    softhsm_conf: Path | None = None
    vendor_environment: tuple[tuple[str, str], ...] = ()
    """``[hsm.environment]``: variables the vendor's module reads (name, value)."""
    audit_key_label: str = "signer-audit"
    csca_key_label: str = "dev-csca"
    upload_key_label: str = "signer-upload"
    """The key that signs what the country publishes (DCC Gateway NB_UP): upload packages of
    DSCs and signed trust lists. Generated in the HSM like every other key."""
    copy_keys_to_session: bool | Literal["auto"] = AUTO
    """Sign from a session copy of each key where the module supports C_CopyObject."""
    key_id_bytes: int = 8
    """Length of the random CKA_ID signer asks for; 0 lets the module choose it."""
    timeout_seconds: float = 30.0
    chunk_digests: int = 128
    """Most digests in one worker job while the pool has one worker per core: large batches
    are cut, small requests share one. A larger pool (a network HSM) cuts its jobs in
    proportion (:func:`signer.hsm.sizing.job_digests`)."""
    coalesce: bool = True
    """Concurrent small requests for one key that wait together share a worker job."""

    @property
    def worker_count(self) -> int:
        """Signing worker processes before any measurement: the number configured, or one per
        core for 0 and for "auto" (which may add more once it measured the HSM)."""
        if isinstance(self.workers, int) and self.workers > 0:
            return self.workers
        return os.cpu_count() or 1

    def environment(self) -> dict[str, str]:
        """Environment variables the PKCS#11 module needs in worker processes."""
        variables = {"SOFTHSM2_CONF": str(self.softhsm_conf)} if self.softhsm_conf else {}
        variables.update(self.vendor_environment)
        return variables


@dataclass(frozen=True)
class KeySettings:
    """Lifecycle policy (DCC defaults) and dual control."""

    usage_period: timedelta = timedelta(days=182)
    credential_lifetime: timedelta = timedelta(days=365)
    overlap: timedelta = timedelta(minutes=10)
    warn_before: timedelta = timedelta(days=30)
    approvals_required: int = 2
    revoke_approvals: int = 1
    """Revoking stops a key (the safe direction), so by default one officer suffices."""
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
    keep_signatures: bool = False
    """TOML ``store_signatures``: keep each whole signature in its record, beside the 16-byte
    SIGNATURE revocation hash every signed batch record keeps anyway."""
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
    # Off by default: one identity with several roles undoes the separation of duties.
    allow_shared_identities: bool = False


@dataclass(frozen=True)
class QuotaSettings:
    """Per-identity signing limits; 0 disables a limit."""

    signatures_per_second: float = 0.0
    burst: int = 0
    max_concurrent: int = 0


@dataclass(frozen=True)
class LimitSettings:
    """What callers may hold open at once, so that no identity can starve another.

    A call is any RPC but a health check (always answered); a stream is a call that streams
    (SignStream, reflection, health Watch, Audit ReadRecords), and counts as a call too.
    """

    max_calls: int = 1024
    max_calls_per_identity: int = 256
    max_streams: int = 256
    max_streams_per_identity: int = 64
    stream_idle_seconds: float = 120.0
    """A bidirectional stream (SignStream, reflection) that sends no request for this long is
    ended with RESOURCE_EXHAUSTED."""
    refusal_window_seconds: float = 60.0
    """Refused callers are audited as one record per identity, reason and window (a count)."""


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


class StoreBackend(enum.StrEnum):
    """Where key lifecycle records and pending changes are kept."""

    TOKEN = "token"  # noqa: S105 (a backend's name, not a password)
    DIRECTORY = "directory"
    POSTGRESQL = "postgresql"


# The keys of [store] each backend reads; any other is a mistake worth reporting.
_STORE_KEYS = {
    StoreBackend.TOKEN: (),
    StoreBackend.DIRECTORY: ("path",),
    StoreBackend.POSTGRESQL: ("dsn", "password_file"),
}


@dataclass(frozen=True)
class StoreSettings:
    """The record store: the token's data objects, a folder, or a PostgreSQL database."""

    backend: StoreBackend = StoreBackend.TOKEN
    path: Path | None = None
    # A libpq connection string without the password, which only ever comes from password_file.
    dsn: str | None = None
    password_file: Path | None = None


DCC_VALUE_SETS = (
    "disease-agent-targeted",
    "vaccine-prophylaxis",
    "vaccine-medicinal-product",
    "vaccine-mah-manf",
    "test-type",
    "test-manf",
    "test-result",
    "country-2-codes",
)
"""The eHN value-set names ``[dcc.national_codes]`` may extend (see signer.dcc.value_sets)."""


@dataclass(frozen=True)
class DccSettings:
    """What ``signer dcc issue`` checks records against."""

    value_sets: Path | None = None
    """Folder of eHN value-set files (``NAME.json``); ``None``: the copy shipped with signer."""
    national_codes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Value-set name -> national codes accepted besides the official ones."""


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
    limits: LimitSettings = field(default_factory=LimitSettings)
    profiles: tuple[str, ...] = ("vaccination",)
    client: ClientSettings = field(default_factory=ClientSettings)
    officers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Security officers as persons: name -> the certificate identities that person uses.
    Every listed identity holds the officer role; dual control counts persons."""
    store: StoreSettings = field(default_factory=StoreSettings)
    dcc: DccSettings = field(default_factory=DccSettings)


def load(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a configuration file; raise :class:`ConfigError` naming every problem."""
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
    """Validate an already-parsed TOML document; paths resolve against ``source``'s folder.

    All problems of the document are collected and raised together, one per line, in one
    :class:`ConfigError`; a bad value stands in as its default while the rest is checked.
    """
    problems: list[str] = []
    reader = _Reader(raw, source, problems)
    officers = _officers(reader.table("officers"))
    settings = _build(
        Settings,
        source=source,
        server=_server(reader.table("server")),
        hsm=_hsm(reader.table("hsm")),
        keys=_keys(reader.table("keys")),
        audit=_audit(reader.table("audit")),
        metrics=_build(MetricsSettings, listen=reader.table("metrics").text("listen")),
        roles=_roles(reader.table("roles"), officers),
        quota=_quota(reader.table("quota")),
        log=_log(reader.table("log")),
        limits=_limits(reader.table("limits")),
        profiles=_tuple(reader.str_list("profiles")),
        client=_client(reader.table("client")),
        officers=MappingProxyType(officers),
        store=_store(reader.table("store")),
        dcc=_dcc(reader.table("dcc")),
    )
    reader.reject_unknown()
    problems += _profile_problems(settings.profiles)
    problems += _production_problems(settings)
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    return settings


def _profile_problems(profiles: tuple[str, ...]) -> list[str]:
    if not profiles:
        return ["'profiles' must name at least one certificate profile"]
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown:
        return [
            f"unknown profile(s) {', '.join(map(_show, unknown))}; known: {', '.join(PROFILES)}"
        ]
    return []


def _production_problems(settings: Settings) -> list[str]:
    """Outside dev configurations, refuse settings that would weaken the appliance."""
    problems = []
    if settings.server.tls.insecure_loopback and not settings.keys.dev:
        problems.append(
            "[server.tls] insecure_loopback is only allowed with [keys] dev = true:"
            " without client certificates there are no roles and no real dual control"
        )
    if settings.keys.dev:
        return problems
    if settings.keys.approvals_required < 2:
        problems.append(
            "[keys] approvals_required must be >= 2 unless dev = true,"
            f" got {settings.keys.approvals_required}"
        )
    if not settings.audit.enabled:
        problems.append("[audit] enabled = false is only allowed with dev = true")
    if settings.keys.csca_cert is None:
        problems.append(
            "[keys] csca_cert is required unless dev = true: imported DSCs must chain"
            " to the national CSCA"
        )
    quota = settings.quota
    if quota.signatures_per_second and quota.burst < settings.server.max_batch:
        problems.append(
            f"[quota] burst ({quota.burst}) is below [server] max_batch"
            f" ({settings.server.max_batch}); every full batch would be refused"
        )
    return problems


def read_pin(hsm: HsmSettings) -> str:
    """Return the token user PIN from its file or environment variable.

    A PIN file readable by group or others is refused: fail closed rather than run with a
    secret that other accounts on the host may have read.
    """
    if hsm.pin_env and hsm.pin_file is None:
        value = os.environ.get(hsm.pin_env, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {hsm.pin_env} that should hold the PIN is empty"
            )
        return value
    if hsm.pin_file is not None and not hsm.pin_env:
        check_private_file(hsm.pin_file, "PIN file")
        pin = hsm.pin_file.read_text(encoding="utf-8").strip()
        if not pin:
            raise ConfigError(f"PIN file {hsm.pin_file} is empty")
        return pin
    raise ConfigError(f"[hsm] {_pin_source_problem(hsm.pin_file, hsm.pin_env)}")


def read_store_password(path: Path) -> str:
    """The record store's database password from its file, refused like a PIN file when
    others may read it; only a trailing line break is removed."""
    check_private_file(path, "store password file")
    password = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not password:
        raise ConfigError(f"store password file {path} is empty")
    return password


def _pin_source_problem(pin_file: Path | None, pin_env: str | None) -> str | None:
    """Why the PIN cannot be found unambiguously, or None: exactly one source must be named."""
    if pin_file is None and not pin_env:
        return "needs pin_file or pin_env to find the token user PIN"
    if pin_file is not None and pin_env:
        return (
            "pin_file and pin_env are both set; name only one (pin_file is preferred: the"
            " environment of the daemon and its workers is readable via /proc)"
        )
    return None


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


def identity_problem(identity: str) -> str | None:
    """Why ``identity`` cannot name a client certificate (see ``[roles]``), or None if it can."""
    if not identity.strip():
        return "is empty"
    if len(identity) > MAX_IDENTITY_CHARS:
        return f"is longer than {MAX_IDENTITY_CHARS} characters"
    if _has_control_characters(identity):
        return "must not contain control characters"
    if identity.upper().startswith("SHA256:"):
        if not _FINGERPRINT.fullmatch(identity[len("SHA256:") :].replace(":", "")):
            return "a SHA256: fingerprint must be 64 hex digits (colons between pairs allowed)"
        return None
    for prefix, name in _NAME_FORMS.items():
        if identity.startswith(prefix):
            rest = identity[len(prefix) :]
            if not rest.strip():
                return f"names nothing after {prefix}"
            if rest != rest.strip() or (prefix != "CN=" and any(c.isspace() for c in rest)):
                return f"has spaces that no certificate {name} contains"
            return None
    return f"must start with {', '.join(_NAME_FORMS)} or SHA256: (in capitals)"


def _show(value: object) -> str:
    """A value as an operator wrote it, cut short so one line stays one line."""
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _has_control_characters(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


_T = TypeVar("_T")
_TYPE_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


class _Reader:
    """Typed access to one TOML table that remembers which keys were used.

    Every accessor returns None for an absent key, and the settings are built with
    :func:`_build`, so an absent key gets the default its dataclass declares: each default
    is written once, on the dataclass. A bad value is recorded in the shared problem list
    and read as absent, so that one pass finds every problem of the file.
    """

    def __init__(
        self, data: dict[str, Any], source: Path, problems: list[str], where: str = ""
    ) -> None:
        self._data = data
        self._source = source
        self._problems = problems
        self._where = where
        self._used: set[str] = set()
        self._reported: set[str] = set()
        self._children: list[_Reader] = []

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self._used.add(key)
        if key not in self._data:
            return default
        value = self._data[key]
        # bool is a subclass of int, but true is no number of workers.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            expected = _TYPE_NAMES.get(kind, "a number") if isinstance(kind, type) else "a number"
            self.problem(key, f"must be {expected}", value)
            return default
        return value

    def problem(self, key: str, message: str, value: object = _HIDDEN) -> None:
        """Record that ``key`` is unusable; the message ends with ``value`` unless it is hidden."""
        self._reported.add(key)
        shown = "" if value is _HIDDEN else f", got {_show(value)}"
        self._problems.append(f"[{self._name(key)}] {message}{shown}")

    def table_problem(self, message: str) -> None:
        """Record a problem of this table as a whole (several keys that do not fit together)."""
        self._problems.append(f"[{self._where}] {message}")

    def reported(self, *keys: str) -> bool:
        """True when a problem was already recorded for one of ``keys``."""
        return not self._reported.isdisjoint(keys)

    def missing(self, key: str, hint: str) -> None:
        """Record a required key as missing, unless it is present and was reported as bad."""
        if not self.reported(key):
            self.problem(key, f"is required ({hint})")

    def forbid(self, key: str, message: str) -> None:
        """Refuse ``key`` with ``message``, never showing its value."""
        if key in self._data:
            self._used.add(key)
            self.problem(key, message)

    def table(self, key: str) -> _Reader:
        child = _Reader(self._get(key, dict, {}), self._source, self._problems, self._name(key))
        self._children.append(child)
        return child

    def text(self, key: str, nonempty: bool = False, show: bool = True) -> str | None:
        value: str | None = self._get(key, str, None)
        if value is None:
            return None
        if _has_control_characters(value):
            self.problem(key, "must not contain control characters", value if show else _HIDDEN)
            return None
        if nonempty and not value.strip():
            self.problem(key, "must not be empty", value if show else _HIDDEN)
            return None
        return value

    def matching(
        self, key: str, pattern: re.Pattern[str], expected: str, show: bool = True
    ) -> str | None:
        """A string that ``pattern`` matches entirely."""
        value = self.text(key, show=show)
        if value is None or pattern.fullmatch(value):
            return value
        self.problem(key, f"must be {expected}", value if show else _HIDDEN)
        return None

    def flag(self, key: str) -> bool | None:
        value: bool | None = self._get(key, bool, None)
        return value

    def flag_or_auto(self, key: str) -> bool | Literal["auto"] | None:
        """true, false or "auto"."""
        if isinstance(self._data.get(key), str):
            value = self._get(key, str, None)
            if value == AUTO:
                return AUTO
            self.problem(key, 'must be true, false or "auto"', value)
            return None
        return self.flag(key)

    def whole_or_auto(self, key: str, minimum: int, maximum: int) -> int | Literal["auto"] | None:
        """An integer in range, or "auto"."""
        if isinstance(self._data.get(key), str):
            value = self._get(key, str, None)
            if value == AUTO:
                return AUTO
            self.problem(key, 'must be an integer or "auto"', value)
            return None
        return self.whole(key, minimum, maximum)

    def whole(self, key: str, minimum: int, maximum: int) -> int | None:
        value: int | None = self._get(key, int, None)
        if value is None or not self._in_range(key, value, value, minimum, maximum):
            return None
        return value

    def number(self, key: str, minimum: float, maximum: float) -> float | None:
        value = self._get(key, (int, float), None)
        if value is None:
            return None
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.problem(key, "must be a finite number", value)
            return None
        return number if self._in_range(key, number, value, minimum, maximum) else None

    def _in_range(
        self, key: str, value: float, written: object, minimum: float, maximum: float
    ) -> bool:
        if minimum <= value <= maximum:
            return True
        bound = f">= {_bound(minimum)}" if value < minimum else f"<= {_bound(maximum)}"
        self.problem(key, f"must be {bound}", written)
        return False

    def duration(
        self, key: str, unit: timedelta, minimum: float, longest: timedelta = _LONGEST
    ) -> timedelta | None:
        """A number of ``unit``s (the unit is in the key's name, e.g. ``_days``)."""
        value = self.number(key, minimum, longest / unit)
        return None if value is None else value * unit

    def names(self) -> list[str]:
        """The keys this table holds (for tables whose keys are names, like ``[officers]``)."""
        return sorted(self._data)

    def str_list(self, key: str) -> list[str] | None:
        value: list[Any] | None = self._get(key, list, None)
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            self.problem(key, "must be a list of strings", value)
            return None
        return [str(item) for item in value]

    def resolve(self, path: Path) -> Path:
        """``path`` itself if absolute, else relative to the folder of the configuration file."""
        candidate = path.expanduser()
        return candidate if candidate.is_absolute() else (self._source.parent / candidate).resolve()

    def path(self, key: str) -> Path | None:
        value = self.text(key, nonempty=True)
        return None if value is None else self.resolve(Path(value))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            self._problems.append(f"unknown setting(s) {', '.join(self._name(k) for k in unknown)}")
        for child in self._children:
            child.reject_unknown()


def _build(cls: Callable[..., _T], **values: object) -> _T:
    """``cls(**values)`` without the None values, so that absent keys keep their defaults."""
    return cls(**{name: value for name, value in values.items() if value is not None})


def _tuple(items: list[str] | None) -> tuple[str, ...] | None:
    return None if items is None else tuple(items)


def _server(t: _Reader) -> ServerSettings:
    tls = t.table("tls")
    return _build(
        ServerSettings,
        listen=t.text("listen", nonempty=True),
        max_batch=t.whole("max_batch", 1, 1_000_000),
        threads=t.whole("threads", 2, 1024),
        tls=_build(
            TlsSettings,
            cert=tls.path("cert"),
            key=tls.path("key"),
            client_ca=tls.path("client_ca"),
            insecure_loopback=tls.flag("insecure_loopback"),
        ),
        admin_enabled=t.flag("admin_enabled"),
        reflection=t.flag("reflection"),
    )


def _hsm(t: _Reader) -> HsmSettings:
    t.forbid("pin", "PINs may not be in the configuration; use pin_file or pin_env")
    module = t.path("module")
    token_label = t.text("token_label", nonempty=True)
    pin_file = t.path("pin_file")
    # Never shown: a PIN typed here by mistake must not reach the logs.
    pin_env = t.matching("pin_env", _ENV_NAME, "the name of an environment variable", show=False)
    if module is None:
        t.missing("module", "path of the PKCS#11 library")
    if token_label is None:
        t.missing("token_label", "label of the token holding the keys")
    pin_problem = _pin_source_problem(pin_file, pin_env)
    if pin_problem and not t.reported("pin_file", "pin_env"):
        t.table_problem(pin_problem)
    copy = t.flag_or_auto("copy_keys_to_session")
    return _build(
        HsmSettings,
        # Stand-ins when missing: the problem is recorded and these settings never returned.
        module=module or Path(),
        token_label=token_label or "",
        pin_file=pin_file,
        pin_env=pin_env,
        workers=t.whole_or_auto("workers", 0, 256),
        max_workers=t.whole("max_workers", 1, 256),
        softhsm_conf=t.path("softhsm_conf"),
        vendor_environment=_hsm_environment(t.table("environment"), pin_env),
        audit_key_label=t.text("audit_key_label", nonempty=True),
        csca_key_label=t.text("csca_key_label", nonempty=True),
        upload_key_label=t.text("upload_key_label", nonempty=True),
        copy_keys_to_session=copy,
        key_id_bytes=t.whole("key_id_bytes", 0, 64),
        timeout_seconds=t.number("timeout_seconds", 0.1, _HOUR / _SECOND),
        chunk_digests=t.whole("chunk_digests", 1, 100_000),
        coalesce=t.flag("coalesce"),
    )


def _hsm_environment(t: _Reader, pin_env: str | None) -> tuple[tuple[str, str], ...] | None:
    """``[hsm.environment]``: NAME = "value" pairs set for the module; values are never shown,
    since a vendor variable may hold a path to a credential."""
    pairs = []
    for name in t.names():
        value = t.text(name, show=False)
        if not _ENV_NAME.fullmatch(name):
            t.problem(name, "must be the name of an environment variable")
        elif _RESERVED_ENVIRONMENT.fullmatch(name):
            t.problem(
                name,
                "would change how signer runs, not how the module finds its HSM"
                + ("; use [hsm] softhsm_conf" if name == "SOFTHSM2_CONF" else ""),
            )
        elif name == pin_env:
            t.problem(name, "is pin_env: PINs may not be in the configuration")
        elif value is not None:
            pairs.append((name, value))
    return tuple(pairs) or None


def _keys(t: _Reader) -> KeySettings:
    return _build(
        KeySettings,
        usage_period=t.duration("usage_period_days", _DAY, 1),
        credential_lifetime=t.duration("credential_lifetime_days", _DAY, 0),
        overlap=t.duration("overlap_minutes", _MINUTE, 0),
        warn_before=t.duration("warn_before_days", _DAY, 0),
        approvals_required=t.whole("approvals_required", 1, 10),
        revoke_approvals=t.whole("revoke_approvals", 1, 10),
        change_ttl=t.duration("change_ttl_minutes", _MINUTE, 1),
        refresh_interval=t.duration("refresh_seconds", _SECOND, 0.1, longest=_HOUR),
        csca_cert=t.path("csca_cert"),
        country=t.matching("country", _COUNTRY, "a two-letter ISO 3166 code in capitals"),
        dev=t.flag("dev"),
    )


def _audit(t: _Reader) -> AuditSettings:
    segment_mb = t.whole("segment_max_mb", 1, 64 * 1024)
    audit = _build(
        AuditSettings,
        enabled=t.flag("enabled"),
        directory=t.path("dir"),
        segment_max_bytes=None if segment_mb is None else segment_mb * _MIB,
        checkpoint_every_records=t.whole("checkpoint_every_records", 1, 10_000_000),
        checkpoint_every_seconds=t.number("checkpoint_every_seconds", 0.1, _DAY / _SECOND),
        keep_signatures=t.flag("store_signatures"),
        origin=t.text("origin", nonempty=True),
    )
    # The default directory, like every relative path, lives next to the configuration file.
    return replace(audit, directory=t.resolve(audit.directory))


def _officers(t: _Reader) -> dict[str, tuple[str, ...]]:
    """``[officers]``: person name -> identities; one identity belongs to one person only."""
    persons: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for person in t.names():
        identities = t.str_list(person)
        if not _PERSON.fullmatch(person):
            t.problem(person, "a person's name is 1-64 lower-case letters, digits, '.', '_', '-'")
            continue
        if not identities:
            t.missing(person, "the certificate identities this person uses, e.g. ['CN=alice']")
            continue
        for identity in identities:
            problem = identity_problem(identity)
            if problem:
                t.problem(person, f"{_show(identity)}: {problem}")
                continue
            other = owner.setdefault(normalise(identity), person)
            if other != person:
                t.problem(
                    person,
                    f"{_show(identity)} is also listed for {other}: one certificate identity"
                    " belongs to one person, or dual control could be one person twice",
                )
        persons[person] = tuple(identities)
    return persons


def _roles(t: _Reader, officers: Mapping[str, tuple[str, ...]]) -> RoleSettings:
    allow_shared = t.flag("allow_shared_identities")
    t.forbid(
        "officer",
        "officers are persons now: list each under [officers] as name = [identities],"
        " so that dual control counts people, not certificates",
    )
    from_officers = [identity for ids in officers.values() for identity in ids]
    lists = {
        role: from_officers if role == "officer" else t.str_list(role) or [] for role in _ROLES
    }
    first_role: dict[str, str] = {}
    for role, identities in lists.items():
        for identity in identities:
            if identity_problem(identity):
                if role != "officer":  # officer identities were checked in [officers]
                    t.problem(role, f"{_show(identity)}: {identity_problem(identity)}")
                continue
            other = first_role.setdefault(normalise(identity), role)
            if other != role and not allow_shared:
                t.problem(
                    role,
                    f"{_show(identity)} is also listed under {other}: an issuer must not change"
                    " keys, an officer must not sign (allow_shared_identities = true permits it)",
                )
    return _build(
        RoleSettings,
        issuer=_tuple(lists["issuer"]),
        officer=_tuple(lists["officer"]),
        auditor=_tuple(lists["auditor"]),
        allow_shared_identities=allow_shared,
    )


def _quota(t: _Reader) -> QuotaSettings:
    return _build(
        QuotaSettings,
        signatures_per_second=t.number("signatures_per_second", 0, 10_000_000),
        burst=t.whole("burst", 0, 100_000_000),
        max_concurrent=t.whole("max_concurrent", 0, 10_000),
    )


def _limits(t: _Reader) -> LimitSettings:
    limits = _build(
        LimitSettings,
        max_calls=t.whole("max_calls", 1, 100_000),
        max_calls_per_identity=t.whole("max_calls_per_identity", 1, 100_000),
        max_streams=t.whole("max_streams", 1, 100_000),
        max_streams_per_identity=t.whole("max_streams_per_identity", 1, 100_000),
        stream_idle_seconds=t.number("stream_idle_seconds", 0.5, _DAY / _SECOND),
        refusal_window_seconds=t.number("refusal_window_seconds", 1, _HOUR / _SECOND),
    )
    for smaller, larger in (
        ("max_calls_per_identity", "max_calls"),
        ("max_streams_per_identity", "max_streams"),
        ("max_streams", "max_calls"),
        ("max_streams_per_identity", "max_calls_per_identity"),
    ):
        if getattr(limits, smaller) > getattr(limits, larger) and not t.reported(smaller, larger):
            t.table_problem(
                f"{smaller} ({getattr(limits, smaller)}) must not be above {larger}"
                f" ({getattr(limits, larger)}): a stream is a call too, and one identity's"
                " share is part of the whole"
            )
    return limits


def _client(t: _Reader) -> ClientSettings:
    return _build(
        ClientSettings,
        ca=t.path("ca"),
        cert_dir=t.path("cert_dir"),
        server_name=t.text("server_name", nonempty=True),
    )


def _log(t: _Reader) -> LogSettings:
    level = t.text("level")
    if level is not None and level.upper() not in _LOG_LEVELS:
        choices = f"{', '.join(_LOG_LEVELS[:-1])} or {_LOG_LEVELS[-1]}"
        t.problem("level", f"must be {choices}", level)
        level = None
    return _build(LogSettings, level=level and level.upper(), json=t.flag("json"))


def _store(t: _Reader) -> StoreSettings:
    name = t.text("backend")
    backend = None
    if name is not None:
        try:
            backend = StoreBackend(name)
        except ValueError:
            choices = ", ".join(b.value for b in list(StoreBackend)[:-1])
            t.problem("backend", f"must be {choices} or {list(StoreBackend)[-1].value}", name)
    path = t.path("path")
    # Never shown: it may hold a password typed here by mistake.
    dsn = t.text("dsn", nonempty=True, show=False)
    if dsn is not None:
        dsn = _checked_dsn(t, dsn)
    password_file = t.path("password_file")
    if backend is StoreBackend.DIRECTORY and path is None:
        t.missing("path", "the folder of the records, relative to this file")
    if backend is StoreBackend.POSTGRESQL and dsn is None:
        t.missing("dsn", "a libpq connection string such as 'host=db.example dbname=signer'")
    if not t.reported("backend"):
        chosen = backend or StoreBackend.TOKEN
        given = {"path": path, "dsn": dsn, "password_file": password_file}
        for key in sorted(k for k, v in given.items() if v is not None):
            if key not in _STORE_KEYS[chosen]:
                t.problem(key, f"is not used with backend = {chosen.value!r}")
    return _build(StoreSettings, backend=backend, path=path, dsn=dsn, password_file=password_file)


def _dcc(t: _Reader) -> DccSettings:
    codes = t.table("national_codes")
    national: dict[str, tuple[str, ...]] = {}
    for name in codes.names():
        listed = codes.str_list(name)
        if name not in DCC_VALUE_SETS:
            codes.problem(name, f"is not a value set; use one of {', '.join(DCC_VALUE_SETS)}")
            continue
        if listed is None:
            continue
        bad = [code for code in listed if not 0 < len(code) <= 80 or code != code.strip()]
        if bad or _has_control_characters("".join(listed)):
            codes.problem(name, "codes must be 1-80 characters without surrounding spaces", listed)
            continue
        national[name] = tuple(listed)
    return _build(
        DccSettings,
        value_sets=t.path("value_sets"),
        national_codes=MappingProxyType(national),
    )


def _checked_dsn(t: _Reader, dsn: str) -> str | None:
    # Imported here: psycopg takes a tenth of a second to load, paid only by configs using it.
    from signer.store.dsn import dsn_problem

    problem = dsn_problem(dsn)
    if problem is None:
        return dsn
    t.problem("dsn", problem)
    return None
