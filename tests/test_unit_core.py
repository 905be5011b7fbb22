"""Fast unit tests of pure pieces: config, request validation, signature encodings, quotas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from signer.config import DEFAULT_MAX_BATCH, QuotaSettings, TlsSettings, load, read_pin
from signer.errors import ConfigError, InvalidRequest, QuotaExceeded
from signer.hsm.mechanisms import SignatureEncoding
from signer.service.quota import Quotas
from signer.service.server import is_loopback, server_credentials
from signer.service.validation import check_digests, check_request_id, encoding_for
from signer.sigformat import der_to_raw, raw_to_der

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


MINIMAL = (
    '[keys]\ncsca_cert = "csca.pem"\n'
    '[hsm]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\ntoken_label = "t"\npin_file = "pin"\n'
)


def test_minimal_config_gets_dcc_defaults(tmp_path: Path) -> None:
    settings = load(write(tmp_path, MINIMAL))
    assert settings.server.max_batch == DEFAULT_MAX_BATCH
    assert settings.keys.usage_period.days == 182
    assert settings.keys.credential_lifetime.days == 365
    assert settings.keys.overlap.total_seconds() == 600
    assert settings.keys.approvals_required == 2
    assert settings.hsm.pin_file == (tmp_path / "pin").resolve()
    assert settings.server.max_message_bytes > DEFAULT_MAX_BATCH * 74


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('pin = "1234"\n', "PINs may not be"),
        ("bogus = 1\n", "unknown setting"),
        ("workers = -1\n", ">= 0"),
        ('workers = "two"\n', "must be a"),
    ],
)
def test_bad_hsm_settings_are_named(tmp_path: Path, extra: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(write(tmp_path, MINIMAL + extra))


def test_unknown_profile_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        load(write(tmp_path, 'profiles = ["passport"]\n' + MINIMAL))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[hsm\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("keys", "extra", "words"),
    [
        ("approvals_required = 1\n", "", "approvals_required must be >= 2"),
        ("", "[audit]\nenabled = false\n", "only allowed with dev"),
        ("", "[server.tls]\ninsecure_loopback = true\n", "insecure_loopback is only"),
    ],
)
def test_production_rules(tmp_path: Path, keys: str, extra: str, words: str) -> None:
    text = MINIMAL.replace("[keys]\n", "[keys]\n" + keys) + extra
    with pytest.raises(ConfigError, match=words):
        load(write(tmp_path, text))
    no_csca = MINIMAL.replace('csca_cert = "csca.pem"\n', "")
    with pytest.raises(ConfigError, match="csca_cert is required"):
        load(write(tmp_path, no_csca))
    assert load(write(tmp_path, no_csca.replace("[keys]\n", "[keys]\ndev = true\n"))).keys.dev


def test_pin_file_must_be_private(tmp_path: Path) -> None:
    settings = load(write(tmp_path, MINIMAL))
    pin = tmp_path / "pin"
    pin.write_text("secret-pin\n")
    pin.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        read_pin(settings.hsm)
    assert "secret-pin" not in str(caught.value)
    pin.chmod(0o600)
    assert read_pin(settings.hsm) == "secret-pin"


def test_plaintext_only_on_loopback_with_opt_in() -> None:
    assert server_credentials(TlsSettings(insecure_loopback=True), "127.0.0.1:1") is None
    with pytest.raises(ConfigError, match="without TLS"):
        server_credentials(TlsSettings(insecure_loopback=True), "0.0.0.0:1")
    with pytest.raises(ConfigError, match="without TLS"):
        server_credentials(TlsSettings(), "127.0.0.1:1")
    assert is_loopback("[::1]:5") and is_loopback("localhost:5") and not is_loopback("10.0.0.1:5")


def test_digest_checks() -> None:
    check_digests([b"\x00" * 32] * 3, 3)
    with pytest.raises(InvalidRequest, match="empty"):
        check_digests([], 3)
    with pytest.raises(InvalidRequest, match="max_batch of 3"):
        check_digests([b"\x00" * 32] * 4, 3)
    with pytest.raises(InvalidRequest, match=r"digests\[1\] is 20 bytes"):
        check_digests([b"\x00" * 32, b"\x00" * 20], 3)
    with pytest.raises(InvalidRequest, match="non-printable"):
        check_request_id("a\nb")
    assert encoding_for(0) is SignatureEncoding.RAW
    assert encoding_for(2) is SignatureEncoding.DER
    with pytest.raises(InvalidRequest):
        encoding_for(3)


def test_raw_der_round_trip_pads_short_halves() -> None:
    raw = (1).to_bytes(32, "big") + (2**255 + 7).to_bytes(32, "big")
    der = raw_to_der(raw)
    assert der_to_raw(der) == raw
    with pytest.raises(ValueError, match="64 bytes"):
        raw_to_der(raw[:63])


def test_quota_isolates_identities() -> None:
    now = [0.0]
    rejected: list[str] = []
    quotas = Quotas(
        QuotaSettings(signatures_per_second=100, burst=200, max_concurrent=1),
        on_reject=rejected.append,
        clock=lambda: now[0],
    )
    with quotas.admit("flood", 200):
        with pytest.raises(QuotaExceeded, match="in flight"), quotas.admit("flood", 1):
            pass
        with quotas.admit("calm", 150):
            pass
    with pytest.raises(QuotaExceeded, match="retry in") as caught, quotas.admit("flood", 50):
        pass
    assert caught.value.retry_after == pytest.approx(0.5)
    now[0] = 1.0
    with quotas.admit("flood", 50):
        pass
    with pytest.raises(QuotaExceeded, match="burst"), quotas.admit("calm", 201):
        pass
    assert rejected == ["concurrency", "rate", "batch_over_burst"]


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos" / "signer" / "v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    generated = sorted(p.name for p in (tmp_path / "signer" / "v1").iterdir())
    assert generated, "protoc generated nothing"
    for name in generated:
        fresh = (tmp_path / "signer" / "v1" / name).read_bytes()
        committed = (ROOT / "signer" / "v1" / name).read_bytes()
        assert fresh == committed, f"signer/v1/{name} is stale: run `make proto`"


def test_json_log_lines_carry_the_rpc_fields() -> None:
    import json
    import logging

    from signer.logs import JsonFormatter

    record = logging.LogRecord("signer.access", logging.INFO, __file__, 1, "rpc %s", ("x",), None)
    record.rpc = {
        "method": "SignBatch",
        "identity": "CN=issuer",
        "code": "OK",
        "duration_ms": 1.5,
        "request_id": "r-1",
    }
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "rpc x"
    assert (line["method"], line["identity"], line["code"], line["request_id"]) == (
        "SignBatch",
        "CN=issuer",
        "OK",
        "r-1",
    )


def test_tools_take_the_server_name_from_the_flag(tmp_path: Path) -> None:
    from signer.cli import build_parser
    from signer.client.connect import connection

    files = [str(tmp_path / n) for n in ("ca.pem", "c.pem", "c.key")]
    args = build_parser().parse_args(
        [
            "sign",
            "--target",
            "10.0.0.1:50051",
            "--ca",
            files[0],
            "--cert",
            files[1],
            "--key",
            files[2],
            "--server-name",
            "signer-1.example.vn",
            "00" * 32,
        ]
    )
    found = connection(args, "issuer")
    assert found.targets == ["10.0.0.1:50051"]
    assert found.server_name == "signer-1.example.vn"
    assert found.tls is not None and str(found.tls.key) == files[2]
    plain = build_parser().parse_args(["sign", "--target", "127.0.0.1:1", "00" * 32])
    assert connection(plain, "issuer").tls is None
