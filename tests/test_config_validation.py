"""The loader refuses nonsense with one ConfigError naming key and value, never a traceback."""

from __future__ import annotations

import tomllib
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

import pytest

from signer.config import (
    AuditSettings,
    ClientSettings,
    HsmSettings,
    KeySettings,
    LogSettings,
    MetricsSettings,
    QuotaSettings,
    RoleSettings,
    ServerSettings,
    Settings,
    StoreBackend,
    StoreSettings,
    load,
    read_pin,
    read_store_password,
)
from signer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FINGERPRINT = "3f1c9a6e0b7d4e2a8c5f1b9d7e3a6c0f2b8d4e1a7c9f3b5d0e6a2c8f4b1d7e9a"
HSM = '[hsm]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\ntoken_label = "t"\n'
MINIMAL = '[keys]\ncsca_cert = "csca.pem"\n' + HSM + 'pin_file = "pin"\n'


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "signer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """The lines of the ConfigError that loading ``text`` raises."""
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return [line.removeprefix(f"{path}: ") for line in lines]


def with_setting(table: str, line: str) -> str:
    """MINIMAL plus one ``key = value`` line in ``[table]``."""
    header = f"[{table}]\n"
    if header in MINIMAL:
        return MINIMAL.replace(header, header + line + "\n", 1)
    return MINIMAL + header + line + "\n"


def shown(literal: str) -> str:
    """How a message shows the value a TOML literal stands for."""
    return repr(tomllib.loads(f"v = {literal}")["v"])


def test_absent_keys_get_the_dataclass_defaults(tmp_path: Path) -> None:
    s = load(config(tmp_path, MINIMAL))
    assert s.server == ServerSettings()
    assert s.keys == replace(KeySettings(), csca_cert=(tmp_path / "csca.pem").resolve())
    assert s.audit == replace(
        AuditSettings(), directory=(tmp_path / AuditSettings().directory).resolve()
    )
    assert s.metrics == MetricsSettings()
    assert s.roles == RoleSettings()
    assert s.quota == QuotaSettings()
    assert s.log == LogSettings()
    assert s.client == ClientSettings()
    assert s.store == StoreSettings(backend=StoreBackend.TOKEN)
    assert s.profiles == next(f.default for f in fields(Settings) if f.name == "profiles")
    assert s.hsm == HsmSettings(
        module=Path("/usr/lib/softhsm/libsofthsm2.so"),
        token_label="t",
        pin_file=(tmp_path / "pin").resolve(),
    )


@pytest.mark.parametrize(
    ("table", "key", "literal"),
    [
        ("quota", "signatures_per_second", "nan"),
        ("quota", "signatures_per_second", "inf"),
        ("keys", "overlap_minutes", "inf"),
        ("keys", "overlap_minutes", "-inf"),
        ("keys", "usage_period_days", "nan"),
        ("keys", "credential_lifetime_days", "inf"),
        ("keys", "warn_before_days", "-nan"),
        ("keys", "change_ttl_minutes", "inf"),
        ("keys", "refresh_seconds", "nan"),
        ("hsm", "timeout_seconds", "-inf"),
        ("audit", "checkpoint_every_seconds", "nan"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path: Path, table: str, key: str, literal: str) -> None:
    found = problems(tmp_path, with_setting(table, f"{key} = {literal}"))
    assert found == [f"[{table}.{key}] must be a finite number, got {shown(literal)}"]


@pytest.mark.parametrize(
    ("table", "key", "literal"),
    [
        ("server", "max_batch", "nan"),
        ("server", "threads", "inf"),
        ("hsm", "workers", "1e3"),
        ("quota", "burst", "nan"),
        ("audit", "segment_max_mb", "64.5"),
    ],
)
def test_whole_numbers_refuse_floats_nan_and_inf(
    tmp_path: Path, table: str, key: str, literal: str
) -> None:
    found = problems(tmp_path, with_setting(table, f"{key} = {literal}"))
    assert found == [f"[{table}.{key}] must be an integer, got {shown(literal)}"]


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("keys", "overlap_minutes", "1e12"),
        ("keys", "overlap_minutes", "1e300"),
        ("keys", "change_ttl_minutes", "1e12"),
        ("keys", "usage_period_days", "36500"),
        ("keys", "credential_lifetime_days", "1e9"),
        ("keys", "refresh_seconds", "1e12"),
        ("hsm", "timeout_seconds", "1e12"),
        ("hsm", "workers", "100000"),
        ("server", "max_batch", "1000000000"),
        ("server", "threads", "1000000"),
        ("keys", "approvals_required", "1000"),
        ("quota", "signatures_per_second", "1e12"),
        ("quota", "burst", "1000000000000"),
        ("quota", "max_concurrent", "1000000"),
        ("audit", "segment_max_mb", "100000000"),
        ("audit", "checkpoint_every_records", "1000000000000"),
        ("audit", "checkpoint_every_seconds", "1e9"),
    ],
)
def test_huge_values_are_refused_with_the_bound(
    tmp_path: Path, table: str, key: str, value: str
) -> None:
    [found] = problems(tmp_path, with_setting(table, f"{key} = {value}"))
    assert found.startswith(f"[{table}.{key}] must be <= ")
    assert found.endswith(f", got {shown(value)}")


def test_ten_years_is_the_longest_duration(tmp_path: Path) -> None:
    s = load(config(tmp_path, with_setting("keys", "overlap_minutes = 5260320")))
    assert s.keys.overlap == timedelta(days=3653)
    assert problems(tmp_path, with_setting("keys", "overlap_minutes = 5260321")) == [
        "[keys.overlap_minutes] must be <= 5260320, got 5260321"
    ]


def test_negative_numbers_and_wrong_types_are_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, with_setting("keys", "overlap_minutes = -1")) == [
        "[keys.overlap_minutes] must be >= 0, got -1"
    ]
    assert problems(tmp_path, with_setting("hsm", "workers = true")) == [
        "[hsm.workers] must be an integer, got true"
    ]
    assert problems(tmp_path, "server = 5\n" + MINIMAL) == ["[server] must be a table, got 5"]


@pytest.mark.parametrize(
    ("identity", "words"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("CN=", "names nothing after CN="),
        ("CN=  ", "names nothing after CN="),
        ("URI:", "names nothing after URI:"),
        ("DNS:", "names nothing after DNS:"),
        ("SHA256:", "64 hex digits"),
        ("SHA256:abc", "64 hex digits"),
        ("SHA256:" + "g" * 64, "64 hex digits"),
        ("SHA256:" + FINGERPRINT + "00", "64 hex digits"),
        ("cn=issuer", "must start with CN=, URI:, DNS: or SHA256:"),
        ("issuer", "must start with"),
        ("CN= issuer", "spaces"),
        ("DNS:a b.example", "spaces"),
        ("CN=a\nb", "control characters"),
    ],
)
def test_identities_that_name_no_certificate_are_refused(
    tmp_path: Path, identity: str, words: str
) -> None:
    literal = identity.replace("\n", "\\n")
    [found] = problems(tmp_path, MINIMAL + f'[roles]\nissuer = ["CN=ok", "{literal}"]\n')
    assert found.startswith(f"[roles.issuer] {identity!r}"[:50])
    assert words in found


def test_well_formed_identities_are_kept_as_written(tmp_path: Path) -> None:
    pinned = "SHA256:" + ":".join(FINGERPRINT[i : i + 2] for i in range(0, 64, 2)).upper()
    text = MINIMAL + (
        "[roles]\n"
        'issuer = ["CN=issuance backend 01", "URI:spiffe://moh.gov.vn/dcc/backend"]\n'
        "[officers]\n"
        f'alice = ["{pinned}", "DNS:officer.moh.gov.vn"]\n'
    )
    settings = load(config(tmp_path, text))
    roles = settings.roles
    assert roles.issuer == ("CN=issuance backend 01", "URI:spiffe://moh.gov.vn/dcc/backend")
    assert roles.officer == (pinned, "DNS:officer.moh.gov.vn")
    assert dict(settings.officers) == {"alice": (pinned, "DNS:officer.moh.gov.vn")}


def test_an_identity_under_two_roles_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + '[roles]\nissuer = ["CN=x"]\n[officers]\nal = ["CN=x"]\n')
    assert len(found) == 1
    assert found[0].startswith("[roles.officer] 'CN=x' is also listed under issuer")
    assert "allow_shared_identities = true" in found[0]


def test_a_fingerprint_is_the_same_identity_in_any_spelling(tmp_path: Path) -> None:
    colons = ":".join(FINGERPRINT[i : i + 2] for i in range(0, 64, 2)).upper()
    text = MINIMAL + (
        f'[roles]\nissuer = ["SHA256:{FINGERPRINT}"]\nauditor = ["sha256:{colons}"]\n'
    )
    [found] = problems(tmp_path, text)
    assert found.startswith("[roles.auditor]") and "also listed under issuer" in found


def test_one_identity_holding_all_three_roles_is_reported_for_each_extra_role(
    tmp_path: Path,
) -> None:
    text = MINIMAL + ('[roles]\nissuer = ["CN=x"]\nauditor = ["CN=x"]\n[officers]\nal = ["CN=x"]\n')
    found = problems(tmp_path, text)
    assert [line.split("]")[0] for line in found] == ["[roles.officer", "[roles.auditor"]


def test_shared_identities_load_with_the_explicit_opt_in(tmp_path: Path) -> None:
    text = MINIMAL + (
        "[roles]\nallow_shared_identities = true\n"
        'issuer = ["CN=x"]\nauditor = ["CN=x"]\n[officers]\nal = ["CN=x", "CN=y"]\n'
    )
    roles = load(config(tmp_path, text)).roles
    assert roles.allow_shared_identities is True
    assert roles.issuer == ("CN=x",) and roles.officer == ("CN=x", "CN=y")
    assert roles.auditor == ("CN=x",)


def test_pin_file_and_pin_env_together_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + 'pin_env = "SIGNER_USER_PIN"\n')
    assert found == [
        "[hsm] pin_file and pin_env are both set; name only one (pin_file is preferred: the"
        " environment of the daemon and its workers is readable via /proc)"
    ]


def test_a_pin_source_is_required(tmp_path: Path) -> None:
    assert problems(tmp_path, '[keys]\ncsca_cert = "c.pem"\n' + HSM) == [
        "[hsm] needs pin_file or pin_env to find the token user PIN"
    ]


def test_pin_env_must_name_a_variable_and_is_never_echoed(tmp_path: Path) -> None:
    text = '[keys]\ncsca_cert = "c.pem"\n' + HSM + 'pin_env = "12 34-56"\npin = "s3cret-pin"\n'
    found = problems(tmp_path, text)
    assert found == [
        "[hsm.pin] PINs may not be in the configuration; use pin_file or pin_env",
        "[hsm.pin_env] must be the name of an environment variable",
    ]
    assert "12 34-56" not in "\n".join(found) and "s3cret" not in "\n".join(found)


def test_pin_comes_from_the_one_source_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '[keys]\ncsca_cert = "c.pem"\n' + HSM + 'pin_env = "SIGNER_TEST_PIN"\n'
    hsm = load(config(tmp_path, text)).hsm
    monkeypatch.setenv("SIGNER_TEST_PIN", " env-pin \n")
    assert read_pin(hsm) == "env-pin"
    pin_file = tmp_path / "pin"
    pin_file.write_text("file-pin\n")
    pin_file.chmod(0o600)
    with pytest.raises(ConfigError, match="pin_file and pin_env are both set"):
        read_pin(replace(hsm, pin_file=pin_file))
    monkeypatch.setenv("SIGNER_TEST_PIN", "")
    with pytest.raises(ConfigError, match="SIGNER_TEST_PIN that should hold the PIN is empty"):
        read_pin(hsm)


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        ("server", 'listen = ""', "[server.listen] must not be empty, got ''"),
        ("hsm", 'audit_key_label = " "', "[hsm.audit_key_label] must not be empty, got ' '"),
        ("client", 'ca = ""', "[client.ca] must not be empty, got ''"),
        ("audit", 'origin = "a\\nb"', "[audit.origin] must not contain control characters"),
        ("keys", 'country = "Vietnam"', "[keys.country] must be a two-letter ISO 3166 code"),
        ("log", 'level = "loud"', "[log.level] must be DEBUG, INFO, WARNING or ERROR, got 'loud'"),
    ],
)
def test_empty_and_malformed_strings_are_refused(
    tmp_path: Path, table: str, line: str, expected: str
) -> None:
    [found] = problems(tmp_path, with_setting(table, line))
    assert found.startswith(expected), found


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    [found] = problems(tmp_path, with_setting("log", f'level = "{"x" * 5000}"'))
    assert found.startswith("[log.level] must be") and found.endswith("...")
    assert len(found) < 200


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    text = (
        'profiles = ["passport"]\n'
        "[server]\nmax_batch = 0\n"
        "[keys]\noverlap_minutes = inf\napprovals_required = 1\n"
        + HSM
        + 'pin_file = "pin"\npin_env = "PIN"\nworkers = nan\n'
        + '[roles]\nissuer = ["CN="]\n'
        + "[quota]\nsignatures_per_second = nan\n"
        + "[bogus]\n"
    )
    found = problems(tmp_path, text)
    assert found == [
        "[server.max_batch] must be >= 1, got 0",
        "[hsm] pin_file and pin_env are both set; name only one (pin_file is preferred: the"
        " environment of the daemon and its workers is readable via /proc)",
        "[hsm.workers] must be an integer, got nan",
        "[keys.overlap_minutes] must be a finite number, got inf",
        "[roles.issuer] 'CN=': names nothing after CN=",
        "[quota.signatures_per_second] must be a finite number, got nan",
        "unknown setting(s) bogus",
        "unknown profile(s) 'passport'; known: vaccination, test, recovery",
        "[keys] approvals_required must be >= 2 unless dev = true, got 1",
        "[keys] csca_cert is required unless dev = true: imported DSCs must chain to the"
        " national CSCA",
    ]


def test_dev_config_loads_without_shared_identities() -> None:
    s = load(ROOT / "hsm_config" / "dev.toml")
    assert s.keys.dev and s.roles.allow_shared_identities is False
    identities = s.roles.issuer + s.roles.officer + s.roles.auditor
    assert s.roles.issuer and s.roles.officer and s.roles.auditor
    assert len(set(identities)) == len(identities)


def test_production_config_loads_with_one_pin_source() -> None:
    s = load(ROOT / "hsm_config" / "production.toml")
    assert s.hsm.pin_file == Path("/etc/signer/user.pin") and s.hsm.pin_env is None
    assert s.roles.allow_shared_identities is False
    text = (ROOT / "hsm_config" / "production.toml").read_text(encoding="utf-8")
    assert '\n# pin_env = "SIGNER_USER_PIN"\n' in text, "pin_env stays shown as the alternative"


def test_officers_are_persons_and_one_identity_belongs_to_one_person(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[officers]\nalice = ["CN=officer", "CN=spare"]\nbob = ["CN=officer2", "CN=spare"]\n'
        '"Bad Name" = ["CN=z"]\ncarol = []\n'
    )
    found = problems(tmp_path, text)
    assert any(
        line.startswith("[officers.bob] 'CN=spare' is also listed for alice") for line in found
    )
    assert any(line.startswith("[officers.Bad Name] a person's name") for line in found)
    assert any(line.startswith("[officers.carol] is required") for line in found)


def test_the_old_officer_role_list_is_refused_with_the_way_forward(tmp_path: Path) -> None:
    [found] = problems(tmp_path, MINIMAL + '[roles]\nofficer = ["CN=officer"]\n')
    assert found.startswith("[roles.officer] officers are persons now")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            'backend = "mysql"',
            ["[store.backend] must be token, directory or postgresql, got 'mysql'"],
        ),
        ("backend = 3", ["[store.backend] must be a string, got 3"]),
        (
            'backend = "directory"',
            ["[store.path] is required (the folder of the records, relative to this file)"],
        ),
        (
            'backend = "postgresql"\npassword_file = "pg.password"',
            [
                "[store.dsn] is required (a libpq connection string such as"
                " 'host=db.example dbname=signer')"
            ],
        ),
        ('path = "records"', ["[store.path] is not used with backend = 'token'"]),
        (
            'backend = "directory"\npath = "r"\ndsn = "host=db"\npassword_file = "p"',
            [
                "[store.dsn] is not used with backend = 'directory'",
                "[store.password_file] is not used with backend = 'directory'",
            ],
        ),
        (
            'backend = "postgresql"\ndsn = "host=db password=hunter2"',
            ["[store.dsn] must not contain the password; put it in password_file (mode 600)"],
        ),
        (
            'backend = "postgresql"\ndsn = "postgresql://signer:hunter2@db/signer"',
            ["[store.dsn] must not contain the password; put it in password_file (mode 600)"],
        ),
        (
            'backend = "postgresql"\ndsn = "host=db hunter2"',
            [
                "[store.dsn] is not a PostgreSQL connection string (key=value pairs or a"
                " postgresql:// URI)"
            ],
        ),
        (
            'backend = "postgresql"\ndsn = "hunter2\\n"',
            ["[store.dsn] must not contain control characters"],
        ),
        ('backend = "postgresql"\ndsn = " "', ["[store.dsn] must not be empty"]),
    ],
)
def test_store_problems_are_named_and_never_show_the_dsn(
    tmp_path: Path, lines: str, expected: list[str]
) -> None:
    found = problems(tmp_path, with_setting("store", lines))
    assert found == expected
    assert "hunter2" not in "\n".join(found)


def test_each_store_backend_loads_with_its_own_settings(tmp_path: Path) -> None:
    folder = load(config(tmp_path, with_setting("store", 'backend = "directory"\npath = "r"')))
    assert folder.store == StoreSettings(StoreBackend.DIRECTORY, path=(tmp_path / "r").resolve())
    dsn = "host=db.example port=5433 dbname=signer user=signer sslmode=verify-full"
    text = f'backend = "postgresql"\ndsn = "{dsn}"\npassword_file = "secrets/pg"'
    database = load(config(tmp_path, with_setting("store", text)))
    assert database.store == StoreSettings(
        StoreBackend.POSTGRESQL, dsn=dsn, password_file=(tmp_path / "secrets/pg").resolve()
    )


def test_the_store_password_file_must_be_private_and_not_empty(tmp_path: Path) -> None:
    password_file = tmp_path / "pg.password"
    password_file.write_text(" pass phrase \n")
    password_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"accessible by group or others \(mode 644\)") as caught:
        read_store_password(password_file)
    assert "pass phrase" not in str(caught.value)
    password_file.chmod(0o600)
    assert read_store_password(password_file) == " pass phrase "
    password_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_store_password(password_file)
    with pytest.raises(ConfigError, match="does not exist"):
        read_store_password(tmp_path / "missing")


def test_hsm_defaults_suit_any_module(tmp_path: Path) -> None:
    hsm = load(config(tmp_path, MINIMAL)).hsm
    assert hsm.workers == "auto" and hsm.chunk_digests == 128
    assert hsm.copy_keys_to_session == "auto"
    assert hsm.key_id_bytes == 8 and hsm.max_workers == 32
    assert hsm.vendor_environment == ()


def test_workers_chunks_copies_and_key_ids_take_numbers_or_auto(tmp_path: Path) -> None:
    text = with_setting(
        "hsm",
        "workers = 12\nmax_workers = 64\nchunk_digests = 64\ncopy_keys_to_session = false\n"
        "key_id_bytes = 0",
    )
    hsm = load(config(tmp_path, text)).hsm
    assert (hsm.workers, hsm.max_workers, hsm.chunk_digests) == (12, 64, 64)
    assert (hsm.copy_keys_to_session, hsm.key_id_bytes, hsm.worker_count) == (False, 0, 12)
    assert problems(tmp_path, with_setting("hsm", 'workers = "many"')) == [
        "[hsm.workers] must be an integer or \"auto\", got 'many'"
    ]
    assert problems(tmp_path, with_setting("hsm", 'copy_keys_to_session = "yes"')) == [
        "[hsm.copy_keys_to_session] must be true, false or \"auto\", got 'yes'"
    ]
    assert problems(tmp_path, with_setting("hsm", "key_id_bytes = 65")) == [
        "[hsm.key_id_bytes] must be <= 64, got 65"
    ]
    assert problems(tmp_path, with_setting("hsm", "chunk_digests = 0")) == [
        "[hsm.chunk_digests] must be >= 1, got 0"
    ]


def test_hsm_environment_reaches_the_module_and_refuses_what_would_change_signer(
    tmp_path: Path,
) -> None:
    text = MINIMAL + '[hsm.environment]\nP11_KIT_SERVER_ADDRESS = "unix:path=/run/p11"\n'
    hsm = load(config(tmp_path, text)).hsm
    assert hsm.environment() == {"P11_KIT_SERVER_ADDRESS": "unix:path=/run/p11"}
    found = problems(
        tmp_path,
        MINIMAL.replace('pin_file = "pin"\n', 'pin_env = "SIGNER_PIN"\n')
        + '[hsm.environment]\nLD_PRELOAD = "/tmp/x.so"\nSIGNER_PIN = "123456"\n'
        + 'SOFTHSM2_CONF = "/etc/softhsm2.conf"\n"1BAD" = "x"\nNUMBER = 5\n',
    )
    assert found == [
        "[hsm.environment.1BAD] must be the name of an environment variable",
        "[hsm.environment.LD_PRELOAD] would change how signer runs, not how the module finds"
        " its HSM",
        "[hsm.environment.NUMBER] must be a string, got 5",
        "[hsm.environment.SIGNER_PIN] is pin_env: PINs may not be in the configuration",
        "[hsm.environment.SOFTHSM2_CONF] would change how signer runs, not how the module"
        " finds its HSM; use [hsm] softhsm_conf",
    ]
    assert all("123456" not in line and "/tmp/x.so" not in line for line in found)
