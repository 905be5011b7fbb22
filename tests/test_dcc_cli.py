"""``issue`` and ``verify`` subcommands, driven through argparse with a software signer."""

import argparse
import datetime as dt
import io
import json
import os
import select
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from signer import cli
from signer.cli_args import CommandParser
from signer.dcc.cli import add_subcommands
from signer.dcc.dsc import kid_of
from signer.dcc.trust import trust_list_entry, write_trust_list
from signer.sigformat import der_to_raw

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class SoftService:
    """The daemon's SigningService, played by a software key."""

    def __init__(self, not_after: dt.datetime) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                x509.NameAttribute(NameOID.COMMON_NAME, "CLI test DSC"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(7)
            .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
            .not_valid_after(not_after)
            .sign(self.key, hashes.SHA256())
        )
        self.dsc_der = cert.public_bytes(serialization.Encoding.DER)
        self.kid = kid_of(self.dsc_der)
        self.batches: list[int] = []
        self.closed = False

    def signing_key(self, profile: str) -> tuple[bytes, bytes]:
        assert profile == "vaccination"
        return self.kid, self.dsc_der

    def sign(self, profile: str, kid: bytes, digests: Sequence[bytes]) -> Sequence[bytes]:
        assert kid == self.kid
        self.batches.append(len(digests))
        return [der_to_raw(self.key.sign(d, ec.ECDSA(Prehashed(hashes.SHA256())))) for d in digests]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def service() -> SoftService:
    return SoftService(dt.datetime.now(dt.UTC) + dt.timedelta(days=730))


def run(service: SoftService, argv: list[str]) -> int:
    """``signer dcc ARGV`` through the CLI's error path, signing with ``service``."""
    parser: argparse.ArgumentParser = CommandParser(prog="signer dcc")
    add_subcommands(parser.add_subparsers(required=True), lambda args: service)
    return cli.run(parser, argv)


def write_dsc(service: SoftService, tmp_path: Path) -> Path:
    path = tmp_path / "dsc.pem"
    cert = x509.load_der_x509_certificate(service.dsc_der)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_issue_prints_hc1_and_writes_qr(
    service: SoftService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "qr.png"
    code = run(service, ["issue", str(EXAMPLES / "record-vn.json"), "--qr", str(png)])
    assert code == 0
    assert service.closed
    hc1 = capsys.readouterr().out.strip()
    assert hc1.startswith("HC1:")
    assert png.read_bytes()[:4] == b"\x89PNG"
    if shutil.which("zbarimg") is None:
        pytest.fail("zbarimg is missing: run ./softhsm_setup.sh --test-tools (make test does)")
    decoded = subprocess.run(
        ["zbarimg", "--raw", "-q", str(png)], capture_output=True, text=True, check=True
    )
    assert decoded.stdout.strip() == hc1

    dsc = write_dsc(service, tmp_path)
    assert run(service, ["verify", "--cert", str(dsc), hc1]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["signature_valid"] is True
    assert result["kid"] == service.kid.hex()
    assert result["expired"] is False
    assert result["payload"]["nam"]["gnt"] == "VAN<DUC"
    assert result["issuer"] == "VN"


def test_issue_json_and_exp_clipping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = SoftService(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
    assert run(short, ["issue", str(EXAMPLES / "record-vn.json"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["exp_clipped"] is True
    assert summary["kid"] == short.kid.hex()
    assert summary["uvci"].startswith("URN:UVCI:01:VN:")
    assert summary["exp"] - summary["iat"] < 31 * 86400
    assert "clipped" in captured.err


def test_issue_refuses_invalid_record(
    service: SoftService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = json.loads((EXAMPLES / "record-vn.json").read_text(encoding="utf-8"))
    record["v"][0]["co"] = "XX"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    assert run(service, ["issue", str(path)]) == 2
    assert "v[0].co" in capsys.readouterr().err
    assert service.batches == []


def test_batch_issue_then_verify_from_stdin(
    service: SoftService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = (EXAMPLES / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[4])
    bad["v"][0]["dn"] = 0
    lines[4] = json.dumps(bad)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([*lines, "", "{not json"]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = run(service, ["issue", "--batch", str(source), "--out", str(out), "--chunk-size", "8"])
    captured = capsys.readouterr()
    assert code == 1
    assert "\r" not in captured.err, "progress is for a terminal only"
    assert "2 of 21 records refused (json: 1, v[0].dn: 1)" in captured.err
    summary = json.loads(captured.out)
    assert (summary["issued"], summary["refused"], summary["lines"]) == (19, 2, 21)
    assert summary["refused_by_field"] == {"json": 1, "v[0].dn": 1}
    assert (summary["last_line"], summary["complete"]) == (22, True)
    assert service.batches == [7, 8, 4]
    results: list[dict[str, Any]] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in results] == [*range(1, 21), 22]
    assert results[4]["error"] == "v[0].dn: dose number must be >= 1"
    assert results[4]["field"] == "v[0].dn"
    assert results[-1]["field"] == "json" and "not valid JSON" in results[-1]["error"]
    good = [r["hc1"] for r in results if "hc1" in r]
    assert len(good) == 19

    trust_list = tmp_path / "trust.json"
    write_trust_list([trust_list_entry(service.dsc_der, "vaccination", "active")], trust_list)
    tampered = good[0][:-3] + ("A" if good[0][-3] != "A" else "B") + good[0][-2:]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(good) + "\n\n"))
    assert run(service, ["verify", "--trust-list", str(trust_list), "-"]) == 0
    outputs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(outputs) == 19
    assert all(o["signature_valid"] for o in outputs)

    assert run(service, ["verify", "--trust-list", str(trust_list), good[1], tampered]) == 1
    outputs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["signature_valid"] for o in outputs] == [True, False]


def test_verify_expiry_at_given_time(
    service: SoftService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(service, ["issue", str(EXAMPLES / "record-vn.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    dsc = write_dsc(service, tmp_path)
    expires = dt.datetime.fromisoformat(summary["expires_at"])
    assert expires == dt.datetime.fromtimestamp(summary["exp"], dt.UTC)
    for at in (expires - dt.timedelta(seconds=1), expires + dt.timedelta(seconds=1)):
        offset = at.astimezone(dt.timezone(dt.timedelta(hours=7))).isoformat()
        naive = at.replace(tzinfo=None).isoformat()
        zulu = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        for given in (offset, naive, zulu):
            assert run(service, ["verify", "--cert", str(dsc), "--at", given, summary["hc1"]]) == 0
            result = json.loads(capsys.readouterr().out)
            assert result["signature_valid"] is True
            assert result["expired"] is (at > expires), given
            assert result["expires_at"] == summary["expires_at"]


def test_verify_garbage_exits_nonzero(
    service: SoftService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsc = write_dsc(service, tmp_path)
    assert run(service, ["verify", "--cert", str(dsc), "HC1:NOPE"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["signature_valid"] is False
    assert result["error"]


def test_batch_progress_goes_to_a_terminal(
    service: SoftService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text((EXAMPLES / "records-vn.jsonl").read_text(encoding="utf-8") * 3, "utf-8")
    controller, terminal = os.openpty()
    shown = b""
    with open(terminal, "w", encoding="utf-8") as tty:
        monkeypatch.setattr("sys.stderr", tty)
        out = tmp_path / "out.jsonl"
        code = run(service, ["issue", "--batch", str(source), "--out", str(out)])
        monkeypatch.undo()
        tty.flush()
        while select.select([controller], [], [], 0.2)[0]:
            shown += os.read(controller, 65536)
    os.close(controller)
    assert code == 0
    text = shown.decode()
    assert "\rsigner: line 60, 100.0 % of the input, 60 issued, 0 refused" in text
    assert "signer: issued 60 of 60 records" in text
    assert json.loads(capsys.readouterr().out)["issued"] == 60


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--verify-sample", "2"], "is not a number from 0 to 1"),
        (["--chunk-size", "20000"], "--chunk-size 20000 is more than 10000"),
        (["--qr", "x.png"], "with --batch use --qr-dir DIR"),
        (["--retry-seconds", "-1"], "is not a number of seconds >= 0"),
        (["--jobs", "2"], "--jobs 2 needs a signer that worker processes can make"),
    ],
)
def test_batch_usage_errors(
    service: SoftService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out.jsonl"
    source = str(EXAMPLES / "records-vn.jsonl")
    assert run(service, ["issue", "--batch", source, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert service.batches == []
