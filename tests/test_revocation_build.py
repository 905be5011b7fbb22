"""``signer revocation build`` on audit logs written by the real writer with a software key."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.audit.checkpoint import CheckpointSigner
from signer.audit.events import EventType
from signer.audit.log import AuditLog
from signer.audit.segments import list_segments
from signer.cli import main
from tests.audit_support import digest, make_signer

KEY = ec.generate_private_key(ec.SECP256R1())
KID_A, KID_B = b"\xaa" * 8, b"\xbb" * 8
START = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
DSC_END = "2028-06-30T00:00:00+00:00"


def at(minutes: int) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


def iso(minutes: int) -> str:
    return at(minutes).isoformat()


class Log:
    """An audit log whose records carry the times the test chooses."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.signer: CheckpointSigner = make_signer()
        self.now = at(0)
        self.log = AuditLog(
            directory, self.signer, clock_ns=lambda: int(self.now.timestamp() * 1e9)
        )
        self.pubkey = directory.parent / "audit.der"
        self.pubkey.write_bytes(self.signer.spki_der)

    def batch(
        self, minute: int, n: int, identity: str = "CN=issuer", kid: bytes = KID_A
    ) -> list[str]:
        """Sign ``n`` digests at ``minute``; return their SIGNATURE hashes as base64."""
        self.now = at(minute)
        raws, expected = [], []
        for i in range(n):
            d = digest(minute, identity, i)
            der = KEY.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            r, s = utils.decode_dss_signature(der)
            raws.append(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
            h = hashlib.sha256(r.to_bytes(32, "big")).digest()[:16]
            expected.append(base64.b64encode(h).decode())
        self.log.append(
            EventType.SIGN_BATCH,
            identity=identity,
            profile="vaccination",
            kid=kid,
            request_id=f"m{minute}",
            digests=[digest(minute, identity, i) for i in range(n)],
            signatures=raws,
        )
        return expected

    def imported(self, kid: bytes) -> None:
        self.log.append(EventType.CERT_IMPORTED, details={"kid": kid.hex(), "not_after": DSC_END})

    def close(self) -> None:
        self.log.close()


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path / "audit")


Run = Callable[..., tuple[int, dict[str, object], str]]


@pytest.fixture
def build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(
        log: Log, *extra: str, identity: str = "CN=issuer", since: int = 0, until: int = 60
    ) -> tuple[int, dict[str, object], str]:
        capsys.readouterr()
        argv = [
            "revocation", "build", "--identity", identity, "--since", iso(since),
            "--until", iso(until), "--dir", str(log.directory), "--pubkey", str(log.pubkey),
            "--out", str(tmp_path / "batches.jsonl"), "--country", "VN", *extra,
        ]  # fmt: skip
        code = main(argv)
        captured = capsys.readouterr()
        summary = json.loads(captured.out) if captured.out.strip() else {}
        return code, summary, captured.err

    return run


def batches(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]


def entries(found: list[dict[str, object]]) -> list[str]:
    return [e["hash"] for b in found for e in b["entries"]]  # type: ignore[attr-defined]


def test_one_identity_one_window_becomes_gateway_batches(
    log: Log, build: Run, tmp_path: Path
) -> None:
    log.imported(KID_A)
    log.imported(KID_B)
    before = log.batch(5, 3)
    mine = log.batch(10, 1500) + log.batch(20, 2, identity="CN=other")[:0] + log.batch(30, 7)
    theirs = log.batch(31, 4, identity="CN=other")
    mine_b = log.batch(40, 2, kid=KID_B)
    after = log.batch(50, 3)
    log.close()
    code, summary, err = build(log, since=10, until=50)
    assert code == 0, err
    found = batches(tmp_path)
    assert sorted(entries(found)) == sorted(mine + mine_b)
    assert not set(entries(found)) & set(before + theirs + after)
    assert [(b["kid"], len(b["entries"])) for b in found] == [  # type: ignore[arg-type]
        (base64.b64encode(KID_A).decode(), 1000),
        (base64.b64encode(KID_A).decode(), 507),
        (base64.b64encode(KID_B).decode(), 2),
    ]
    for batch in found:
        assert set(batch) == {"country", "expires", "kid", "hashType", "entries"}
        assert (batch["country"], batch["hashType"], batch["expires"]) == (
            "VN",
            "SIGNATURE",
            DSC_END,
        )
    assert summary["signatures"] == 1509 and summary["batches"] == 3
    kids = {k["kid"]: k for k in summary["kids"]}  # type: ignore[attr-defined]
    assert kids[KID_A.hex()]["signatures"] == 1507
    assert kids[KID_A.hex()]["batches"] == {"SIGNATURE": 2}
    assert (kids[KID_A.hex()]["first"], kids[KID_A.hex()]["last"]) == (iso(10), iso(30))
    assert kids[KID_B.hex()]["expires"] == DSC_END
    only_b = build(log, "--kid", KID_B.hex(), since=0, until=60)
    assert only_b[0] == 0 and sorted(entries(batches(tmp_path))) == sorted(mine_b)


def test_a_window_without_signatures_writes_nothing(log: Log, build: Run, tmp_path: Path) -> None:
    log.batch(5, 2)
    log.batch(6, 2, identity="CN=other")
    log.close()
    code, summary, err = build(log, since=6, until=60)
    assert code == 0, err
    assert (summary["signatures"], summary["batches"], summary["kids"], summary["out"]) == (
        0,
        0,
        [],
        None,
    )
    assert "no signatures by CN=issuer" in err
    assert list(tmp_path.glob("batches.jsonl*")) == []


def test_a_log_that_fails_verification_is_refused(log: Log, build: Run, tmp_path: Path) -> None:
    log.imported(KID_A)
    log.batch(10, 5)
    log.batch(11, 5)
    log.close()
    segment = list_segments(log.directory)[-1].path
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    code, summary, err = build(log)
    assert code == 1
    assert summary == {}
    assert err.startswith("signer: refusing to build revocation batches") and "verify" in err
    assert list(tmp_path.glob("batches.jsonl*")) == []


def test_a_repair_outside_the_window_warns_one_inside_it_is_a_finding(
    log: Log, build: Run, tmp_path: Path
) -> None:
    log.imported(KID_A)
    log.batch(10, 2)
    log.close()
    with list_segments(log.directory)[-1].path.open("ab") as segment:
        segment.write(bytes(500))  # what a crash during a write leaves
    reopened = Log.__new__(Log)
    reopened.directory, reopened.signer, reopened.pubkey = log.directory, log.signer, log.pubkey
    reopened.now = at(20)
    reopened.log = AuditLog(
        log.directory, log.signer, clock_ns=lambda: int(reopened.now.timestamp() * 1e9)
    )
    late = reopened.batch(30, 2)
    reopened.close()

    code, summary, err = build(log, since=25, until=60)
    assert code == 0, err
    assert "log_repaired" in err and "does not overlap the window" in err
    assert sorted(entries(batches(tmp_path))) == sorted(late)
    assert [f["kind"] for f in summary["audit_log"]["findings"]] == ["log_repaired"]  # type: ignore[index]

    code, _, err = build(log, since=15, until=60)
    assert code == 3
    assert "overlaps the window" in err and "--uci-file" in err
    assert sorted(entries(batches(tmp_path))) == sorted(late)


def test_expires_needs_a_source(log: Log, build: Run, tmp_path: Path) -> None:
    log.batch(10, 2)
    log.close()
    code, _, err = build(log)
    assert code == 2
    assert f"kid {KID_A.hex()}: no DSC notAfter" in err
    assert list(tmp_path.glob("batches.jsonl*")) == []
    code, _, err = build(log, "--expires", "2029-01-01T00:00:00Z")
    assert code == 0, err
    assert {b["expires"] for b in batches(tmp_path)} == {"2029-01-01T00:00:00+00:00"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--since", iso(30), "--until", iso(10)), "--until must be after --since"),
        (("--kid", "xyz"), "is not a kid"),
        (("--country", "Vietnam"), "alpha-2"),
    ],
)
def test_bad_options_are_usage_errors(
    log: Log, build: Run, extra: tuple[str, ...], message: str
) -> None:
    log.close()
    code, _, err = build(log, *extra)
    assert code == 2
    assert message in err


def test_uci_file_gives_uci_and_countrycodeuci_batches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uvcis = tmp_path / "uvcis.jsonl"
    lines = [
        {"uvci": f"URN:UVCI:01:VN:X{i}#A", "co": "VN" if i % 2 else "LA", "kind": "v",
         "kid": (KID_A if i < 1200 else KID_B).hex(), "issued_at": iso(i % 50)}
        for i in range(1250)
    ]  # fmt: skip
    uvcis.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "uci.jsonl"
    argv = ["revocation", "build", "--uci-file", str(uvcis), "--out", str(out), "--country", "VN"]
    assert main([*argv, "--expires", DSC_END, "--until", iso(40)]) == 0
    summary = json.loads(capsys.readouterr().out)
    found = [json.loads(line) for line in out.read_text().splitlines()]
    selected = [line for line in lines if dt.datetime.fromisoformat(line["issued_at"]) < at(40)]
    assert summary["certificates"] == len(selected)

    def listed(hash_type: str, kid: bytes) -> set[str]:
        kid_b64 = base64.b64encode(kid).decode()
        return {
            e["hash"]
            for b in found
            if b["hashType"] == hash_type and b["kid"] == kid_b64
            for e in b["entries"]
        }

    def b64(data: bytes) -> str:
        return base64.b64encode(hashlib.sha256(data).digest()[:16]).decode()

    for kid in (KID_A, KID_B):
        mine = [line for line in selected if line["kid"] == kid.hex()]
        assert listed("UCI", kid) == {b64(line["uvci"].encode()) for line in mine}
        countries = {b64(f"{line['co']}{line['uvci']}".encode()) for line in mine}
        issuer = {b64(f"VN{line['uvci']}".encode()) for line in mine}
        assert listed("COUNTRYCODEUCI", kid) == countries | issuer
    assert all(1 <= len(b["entries"]) <= 1000 for b in found)


def test_uci_file_with_a_bad_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uvcis = tmp_path / "uvcis.jsonl"
    good = {"uvci": "URN:UVCI:01:VN:X#A", "co": "VN", "kind": "v", "kid": KID_A.hex(),
            "issued_at": iso(1)}  # fmt: skip
    uvcis.write_text(json.dumps(good) + "\n" + '{"uvci": "x"}\n')
    out = tmp_path / "uci.jsonl"
    argv = ["revocation", "build", "--uci-file", str(uvcis), "--out", str(out)]
    assert main([*argv, "--country", "VN", "--expires", DSC_END]) == 2
    assert "line 2" in capsys.readouterr().err
    assert list(tmp_path.glob("uci.jsonl*")) == []
