"""One error path for the ``signer`` command: the exit-code table, its messages, help texts.

The mapping is tested as a pure function; the command runs in-process through
``signer.cli.main`` (and once as a real process) against configs that point at a free loopback
port, so "unreachable" is real; the refusal test uses the shared real daemon.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from signer.cli import build_parser, main
from signer.cli_args import iso_time
from signer.cli_exit import (
    MAX_MESSAGE_CHARS,
    PREFIX,
    ExitCode,
    UsageError,
    bounded,
    daemon_failure,
    failure,
)
from signer.client import TlsFiles
from signer.errors import AuditError, ConfigError, PolicyError, StoreUnavailable
from tests.conftest import (
    ROOT,
    Appliance,
    base_config,
    free_port,
    merge,
    mtls_overrides,
    render_toml,
)

DIGEST = "ab" * 32


# -- the table, as a pure mapping ---------------------------------------------------------------


def test_exit_code_values_are_the_documented_table() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "REFUSED": 1,
        "USAGE": 2,
        "FINDING": 3,
        "UNAVAILABLE": 69,
        "CONFIG": 78,
        "INTERRUPTED": 130,
    }
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\| (\d+) ", section, flags=re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (UsageError("give either RECORD.json or --batch"), ExitCode.USAGE, "give either"),
        (ConfigError("/etc/signer.toml: [hsm] module missing"), ExitCode.CONFIG, "[hsm] module"),
        (PolicyError("activation refused: key k1 is pending"), ExitCode.REFUSED, "k1 is pending"),
        (AuditError("segment 3 is damaged"), ExitCode.REFUSED, "segment 3"),
        (
            StoreUnavailable("record store db.example:5432/signer failed: timeout"),
            ExitCode.UNAVAILABLE,
            "db.example:5432/signer",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "/tmp/dsc.pem"),
            ExitCode.USAGE,
            "/tmp/dsc.pem: No such file or directory",
        ),
        (ValueError("bad chunk"), ExitCode.USAGE, "invalid input: bad chunk"),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_local_error_maps_to_code_and_message(
    error: BaseException, code: ExitCode, text: str
) -> None:
    found = failure(error)
    assert found.code is code
    assert text in found.message
    assert not found.message.startswith(PREFIX)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("UNAVAILABLE", ExitCode.UNAVAILABLE),
        ("DEADLINE_EXCEEDED", ExitCode.UNAVAILABLE),
        ("PERMISSION_DENIED", ExitCode.REFUSED),
        ("UNAUTHENTICATED", ExitCode.REFUSED),
        ("NOT_FOUND", ExitCode.REFUSED),
        ("INVALID_ARGUMENT", ExitCode.REFUSED),
        ("FAILED_PRECONDITION", ExitCode.REFUSED),
        ("RESOURCE_EXHAUSTED", ExitCode.REFUSED),
        ("INTERNAL", ExitCode.REFUSED),
    ],
)
def test_daemon_status_maps_to_code(status: str, code: ExitCode) -> None:
    found = daemon_failure(status, f"{status}: details")
    assert found.code is code
    assert f"{status}: details" in found.message
    if code is ExitCode.REFUSED:
        assert found.message.startswith("refused by the daemon: ")


def test_every_grpc_status_has_a_code_in_the_table() -> None:
    for status in grpc.StatusCode:
        if status is not grpc.StatusCode.OK:
            assert daemon_failure(status.name, "x").code in (
                ExitCode.REFUSED,
                ExitCode.UNAVAILABLE,
            )


def test_unavailable_names_the_address_and_the_remedy() -> None:
    message = daemon_failure("UNAVAILABLE", "connection refused", "127.0.0.1:50051").message
    assert "the signer daemon at 127.0.0.1:50051 is unavailable (connection refused)" in message
    assert "make serve" in message
    long = daemon_failure("UNAVAILABLE", "x" * 5000, "127.0.0.1:50051").message
    assert len(long) <= MAX_MESSAGE_CHARS and long.endswith("(dev: start it with `make serve`)")


def test_offline_commands_and_the_table_load_without_grpc() -> None:
    code = (
        "import sys, signer.cli_exit, signer.cli_args, signer.audit.cli, signer.dcc.cli;"
        "sys.exit(any(m.split('.')[0] == 'grpc' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_messages_are_one_bounded_line() -> None:
    message = failure(UsageError("x\n" * 2000)).message
    assert len(message) <= MAX_MESSAGE_CHARS
    assert "\n" not in message
    assert bounded("  a \n\t b ") == "a b"


def test_iso_time_takes_offsets_zulu_and_naive_as_utc() -> None:
    expected = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    for text in ("2026-12-01T08:00:00+07:00", "2026-12-01T01:00:00Z", "2026-12-01T01:00:00"):
        parsed = iso_time(text)
        assert parsed == expected
        assert parsed.utcoffset() == timedelta(0)
    assert iso_time("2026-11-30T20:00-05:00") == expected.astimezone(timezone(timedelta(hours=-5)))
    with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
        iso_time("1764550800")


def test_tls_files_accept_str_and_refuse_other_types() -> None:
    tls = TlsFiles(ca="ca.pem", cert=Path("c.pem"), key="c.key")
    assert (tls.ca, tls.cert, tls.key) == (Path("ca.pem"), Path("c.pem"), Path("c.key"))
    with pytest.raises(TypeError, match="TlsFiles ca must be a path"):
        TlsFiles(ca=b"ca.pem", cert="c.pem", key="c.key")  # type: ignore[arg-type]


# -- every subcommand and option explains itself -----------------------------------------------


def _walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str | None]]:
    """(where, help) of every action and subcommand under ``parser``."""
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        yield f"{parser.prog} {name}", action.help
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for command, subparser in action.choices.items():
                yield f"{parser.prog} {command}", helps.get(command)
                yield from _walk(subparser)


def test_every_subcommand_and_option_has_help() -> None:
    entries = list(_walk(build_parser()))
    assert len(entries) > 100
    missing = [where for where, text in entries if not text or text == argparse.SUPPRESS]
    assert missing == []


# -- the command, in-process --------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``signer ARGV`` in-process; return its exit code and its one stderr line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    assert "Traceback" not in err
    return code, lines[0]


@pytest.fixture
def unreachable(tmp_path: Path) -> Path:
    """A valid config whose daemon address is a free loopback port nobody listens on."""
    config = tmp_path / "signer.toml"
    config.write_text(render_toml(base_config(tmp_path, free_port(), free_port())))
    return config


def listen_address(config: Path) -> str:
    found = re.search(r'listen = "(127\.0\.0\.1:\d+)"', config.read_text())
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize(
    "argv",
    [
        ["sign"],
        ["sign", "--bogus", DIGEST],
        ["keys", "activate"],
        ["keys"],
        ["nonsense"],
        ["dcc", "issue", "--chunk-size", "0", "record.json"],
        ["dcc", "verify", "--cert", "dsc.pem", "--at", "1764550800", "HC1:X"],
        ["keys", "activate", "k1", "--at", "next tuesday", "--target", "127.0.0.1:1"],
        ["audit", "tail", "--dir", ".", "-n", "many"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, line = run(argv, capsys)
    assert code == ExitCode.USAGE
    assert "--help" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["sign", "--target", "127.0.0.1:1", "not-hex"],
        ["sign", "--target", "127.0.0.1:1", DIGEST, "abcd"],
        ["audit", "find", "zz" * 32, "--dir", "."],
    ],
)
def test_non_hex_or_short_digest_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = run(argv, capsys)
    assert code == ExitCode.USAGE
    assert "is not a SHA-256 digest (64 hex characters)" in line


def test_missing_or_broken_config_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    code, line = run(["keys", "list", "--config", str(missing)], capsys)
    assert code == ExitCode.CONFIG
    assert line == f"{PREFIX}configuration file {missing} does not exist"

    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    code, line = run(["sign", "--config", str(broken), DIGEST], capsys)
    assert code == ExitCode.CONFIG
    assert "not valid TOML" in line


@pytest.mark.parametrize(
    "command",
    [
        ["keys", "list"],
        ["sign", DIGEST],
        ["dcc", "issue", str(ROOT / "examples" / "record-vn.json")],
    ],
    ids=["keys", "sign", "dcc-issue"],
)
def test_unreachable_daemon_exits_69_naming_the_address(
    unreachable: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = run([*command, "--config", str(unreachable)], capsys)
    assert code == ExitCode.UNAVAILABLE
    assert f"the signer daemon at {listen_address(unreachable)} is unavailable" in line
    assert "make serve" in line


def test_unreachable_target_flag_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    code, line = run(["keys", "changes", "--target", target], capsys)
    assert code == ExitCode.UNAVAILABLE
    assert target in line


def test_no_address_at_all_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = run(["keys", "list"], capsys)
    assert code == ExitCode.USAGE
    assert "--config FILE or --target HOST:PORT" in line


def test_missing_tls_files_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.pem"
    flags = ["--target", "127.0.0.1:1", "--ca", str(ca), "--cert", "c.pem", "--key", "c.key"]
    code, line = run(["keys", "list", *flags], capsys)
    assert code == ExitCode.USAGE
    assert line == f"{PREFIX}{ca}: No such file or directory"


def mtls_config(home: Path) -> Path:
    """A config with client certificates in ``home/tls``; only the issuer's exists."""
    tls = home / "tls"
    tls.mkdir(parents=True)
    for name in ("ca.pem", "issuer.pem", "issuer.key"):
        (tls / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    config = home / "signer.toml"
    settings = merge(base_config(home, free_port(), free_port()), mtls_overrides(home))
    config.write_text(render_toml(settings))
    return config


def test_as_unknown_identity_is_a_clean_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = mtls_config(tmp_path)
    code, line = run(["keys", "list", "--config", str(config), "--as", "nobody"], capsys)
    assert code == ExitCode.USAGE
    tls = tmp_path / "tls"
    assert f"--as nobody: no client certificate nobody.pem and nobody.key in {tls}" in line
    assert "officer2" in line

    code, line = run(["keys", "list", "--config", str(config)], capsys)
    assert code == ExitCode.CONFIG
    assert "no client certificate for role officer" in line


def test_as_without_client_certificates_is_a_usage_error(
    unreachable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = run(["keys", "list", "--config", str(unreachable), "--as", "officer"], capsys)
    assert code == ExitCode.USAGE
    assert "the configuration has no client certificates" in line


def test_as_nobody_in_a_real_process(tmp_path: Path) -> None:
    config = mtls_config(tmp_path)
    command = ["keys", "list", "--config", str(config), "--as", "nobody"]
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == ExitCode.USAGE
    assert result.stdout == ""
    assert result.stderr.startswith(f"{PREFIX}--as nobody: no client certificate nobody.pem")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# -- refusals by a real daemon ------------------------------------------------------------------


def test_daemon_refusal_exits_1(appliance: Appliance) -> None:
    config = str(appliance.config_path)
    activate = appliance.cli(
        "keys", "activate", "deadbeef", "--config", config, "--officer", "alice", check=False
    )
    assert activate.returncode == ExitCode.REFUSED
    assert activate.stderr.decode().startswith(f"{PREFIX}refused by the daemon: NOT_FOUND")
    assert activate.stderr.count(b"\n") == 1 and activate.stdout == b""

    sign = appliance.cli("sign", "--config", config, "--profile", "recovery", DIGEST, check=False)
    assert sign.returncode == ExitCode.REFUSED
    assert sign.stderr.decode().startswith(f"{PREFIX}refused by the daemon: NOT_FOUND")
