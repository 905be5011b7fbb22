"""Batch issuance against the real daemon: order, per-line errors, resume after a kill, and a
daemon that goes away mid-run.

``signer dcc issue --batch`` runs as a subprocess (the way an operator runs it), with worker
processes; the checks read its output files and verify the certificates against the trust
list the appliance publishes. "Nothing lost or duplicated" is checked line by line: the output
names every non-blank input line exactly once, in order, and the UVCI file names exactly the
certificates of the output, in the same order.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signer.client import SignerClient
from signer.dcc import TrustStore, verify
from signer.dcc.batch_worker import BatchOptions
from signer.dcc.issue import RotatingSigner
from signer.dcc.pipeline import issue_batch
from tests.conftest import ROOT, Appliance, MakeAppliance, children_of, free_port
from tests.test_dcc_daemon import (
    activate_key,
    independently_verified,
    ready_keys,
    signatures_total,
    trust_list,
)

EXAMPLES = ROOT / "examples"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 69


def example_lines() -> list[str]:
    return [
        line
        for line in (EXAMPLES / "records-vn.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def write_batch(path: Path, count: int) -> list[bytes]:
    """``count`` valid records (the examples, cycled); returns the lines as written."""
    lines = [line.encode() for line in itertools.islice(itertools.cycle(example_lines()), count)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch_args(appliance: Appliance, source: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "dcc", "issue", "--batch", str(source), "--out", str(tmp_path / "out.jsonl"),
        "--uvci-out", str(tmp_path / "uvcis.jsonl"), "--config", str(appliance.config_path),
        *extra,
    ]  # fmt: skip


def start_batch(appliance: Appliance, args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "signer.cli", *args],
        env=appliance.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``path`` holds ``count`` lines (while ``process`` still runs)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"batch ended early ({process.returncode}): {err.decode()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")


def assert_complete_and_consistent(
    tmp_path: Path, lines: list[bytes], trust: TrustStore, *, verify_all: bool = False
) -> list[dict[str, Any]]:
    """Every non-blank input line answered exactly once, in order, by the line it names; the
    UVCI file lists exactly the issued certificates, in order; certificates verify."""
    out = read_jsonl(tmp_path / "out.jsonl")
    expected = [number for number, line in enumerate(lines, start=1) if line.strip()]
    assert [record["line"] for record in out] == expected
    for record in out:
        body = lines[record["line"] - 1]
        assert record["line_sha256"] == hashlib.sha256(body).hexdigest()[:16]
    issued = [record for record in out if "hc1" in record]
    uvcis = read_jsonl(tmp_path / "uvcis.jsonl")
    assert [u["uvci"] for u in uvcis] == [record["uvci"] for record in issued]
    assert len({record["uvci"] for record in issued}) == len(issued)
    for entry, record in zip(uvcis, issued, strict=True):
        assert entry == {key: record[key] for key in ("uvci", "co", "kind", "kid", "issued_at")}
    checked = issued if verify_all else random.Random(1).sample(issued, min(300, len(issued)))
    for record in checked:
        result = verify(record["hc1"], trust)
        assert result.signature_valid, (record["line"], result)
        name = json.loads(lines[record["line"] - 1])["nam"]["fn"]
        assert result.payload is not None and result.payload["nam"]["fn"] == name
    return out


def trust_of(appliance: Appliance, tmp_path: Path) -> TrustStore:
    return TrustStore.load(trust_list(appliance, tmp_path))


def test_output_in_input_order_with_an_error_line_per_bad_line(
    appliance: Appliance, tmp_path: Path
) -> None:
    lines = [line.encode() for line in itertools.islice(itertools.cycle(example_lines()), 240)]
    bad_dose = json.loads(lines[49])
    bad_dose["v"][0]["dn"] = 0
    bad_product = json.loads(lines[199])
    bad_product["v"][0]["mp"] = "NotAVaccine"
    lines[6] = b'{"nam": {"fn": "Tr'  # line 7: not JSON
    lines[49] = json.dumps(bad_dose).encode()  # line 50
    lines[50] = b"   "  # line 51: blank, no output line
    lines[98] = b"\xff" + lines[98]  # line 99: not UTF-8
    lines[149] = b'{"pad": "' + b"x" * 70_000 + b'"}'  # line 150: too long
    lines[199] = json.dumps(bad_product).encode()  # line 200
    lines[219] = b"[1, 2]"  # line 220: JSON, but no record
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    before = signatures_total(appliance)

    result = appliance.cli(
        *batch_args(appliance, source, tmp_path, "--jobs", "2", "--chunk-size", "16"), check=False
    )
    assert result.returncode == EXIT_REFUSED, result.stderr.decode()

    out = assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path))
    errors = {
        record["line"]: (record["field"], record["error"]) for record in out if "error" in record
    }
    assert errors[7][0] == "json" and errors[7][1].startswith("not valid JSON")
    assert errors[50] == ("v[0].dn", "v[0].dn: dose number must be >= 1")
    assert errors[99][0] == "line" and "not UTF-8" in errors[99][1]
    assert errors[150][0] == "line" and "longer than" in errors[150][1]
    assert errors[200][0] == "v[0].mp" and "'NotAVaccine'" in errors[200][1]
    assert errors[220][0] == "record"
    assert sorted(errors) == [7, 50, 99, 150, 200, 220]
    issued = len(out) - len(errors)
    assert signatures_total(appliance) - before == issued  # a refused line signs nothing

    summary = json.loads(result.stdout)
    assert (summary["issued"], summary["refused"], summary["lines"]) == (issued, 6, 239)
    assert summary["refused_by_field"] == {
        "json": 1,
        "line": 2,
        "record": 1,
        "v[0].dn": 1,
        "v[0].mp": 1,
    }
    assert (summary["last_line"], summary["complete"]) == (240, True)
    assert summary["signatures_checked"] >= 2  # the first signature of the kid, in each worker
    assert "6 of 239 records refused" in result.stderr.decode()

    again = appliance.cli(*batch_args(appliance, source, tmp_path, "--jobs", "2"), check=False)
    assert again.returncode == 0, again.stderr.decode()
    assert json.loads(again.stdout)["lines"] == 0  # all done: a restart adds nothing
    assert read_jsonl(tmp_path / "out.jsonl") == out


def test_a_killed_batch_resumes_without_losing_or_repeating_a_line(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance()
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 12_000)
    args = batch_args(appliance, source, tmp_path, "--jobs", "2", "--chunk-size", "100")
    process = start_batch(appliance, args)
    wait_for_lines(tmp_path / "out.jsonl", 1500, process)
    workers = children_of(process.pid)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers outlived it"
    done = (tmp_path / "out.jsonl").read_bytes().count(b"\n")
    assert done < len(lines), "the kill came after the end; make the batch longer"

    result = appliance.cli(*args, check=False)
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    assert summary["resumed_after_line"] >= done
    assert summary["resumed_after_line"] + summary["lines"] == len(lines)
    assert f"resuming after line {summary['resumed_after_line']}" in result.stderr.decode()
    out = assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path))
    boundary = summary["resumed_after_line"]
    dsc = appliance.signing_key().dsc_der
    for record in out[max(boundary - 3, 0) : boundary + 3]:
        independently_verified(record["hc1"], dsc)


def test_a_torn_output_line_and_a_lagging_uvci_file_are_repaired_on_restart(
    appliance: Appliance, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 300)
    args = batch_args(appliance, source, tmp_path, "--chunk-size", "50")
    appliance.cli(*args)
    out_path, uvci_path = tmp_path / "out.jsonl", tmp_path / "uvcis.jsonl"
    first = read_jsonl(out_path)
    # What a kill can leave: the output cut inside line 251, the UVCI file behind by a chunk.
    text = out_path.read_bytes()
    cut = text.index(b'{"line": 251,') + 40
    out_path.write_bytes(text[:cut])
    uvcis = uvci_path.read_bytes().splitlines(keepends=True)
    uvci_path.write_bytes(b"".join(uvcis[:200]) + uvcis[200][:30])

    result = appliance.cli(*args)
    summary = json.loads(result.stdout)
    assert (summary["resumed_after_line"], summary["lines"]) == (250, 50)
    stderr = result.stderr.decode()
    assert "cut a partial last line" in stderr and "added 50 lines" in stderr
    out = assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path))
    assert out[:250] == first[:250]
    assert {r["uvci"] for r in out[250:]}.isdisjoint(r["uvci"] for r in first)


def test_a_restart_refuses_an_output_written_from_another_input(
    appliance: Appliance, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    write_batch(source, 40)
    args = batch_args(appliance, source, tmp_path, "--chunk-size", "10")
    appliance.cli(*args)
    before = (tmp_path / "out.jsonl").read_bytes()
    lines = source.read_bytes().splitlines()
    lines[39] = lines[0]
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = appliance.cli(*args, check=False)
    assert result.returncode == EXIT_USAGE
    assert "line 40" in result.stderr.decode() and "another input" in result.stderr.decode()
    assert (tmp_path / "out.jsonl").read_bytes() == before

    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes\nwithout a final line break")
    result = appliance.cli(
        "dcc", "issue", "--batch", str(source), "--out", str(foreign),
        "--config", str(appliance.config_path), check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE
    assert "not the output of a batch" in result.stderr.decode() or "does not end with" in (
        result.stderr.decode()
    )
    assert foreign.read_text() == "my notes\nwithout a final line break"

    missing = appliance.cli(
        "dcc", "issue", "--batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"),
        "--config", str(appliance.config_path), check=False,
    )  # fmt: skip
    assert missing.returncode == EXIT_USAGE
    assert "nope.jsonl" in missing.stderr.decode()


def test_a_daemon_that_goes_away_is_retried_then_the_batch_stops_and_resumes(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance()
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 12_000)
    common = ("--jobs", "2", "--chunk-size", "100")
    args = batch_args(appliance, source, tmp_path, *common, "--retry-seconds", "2")
    process = start_batch(appliance, args)
    wait_for_lines(tmp_path / "out.jsonl", 1000, process)
    appliance.stop()
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == EXIT_UNAVAILABLE, stderr.decode()
    summary = json.loads(stdout)
    assert summary["stopped"]["status"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    message = stderr.decode()
    assert "unavailable" in message
    assert f"stopped after line {summary['last_line']}" in message
    written = read_jsonl(tmp_path / "out.jsonl")
    assert [record["line"] for record in written] == list(range(1, summary["last_line"] + 1))
    assert summary["last_line"] < len(lines)

    # Back up: the next run continues, and rides out a restart of the daemon in the middle.
    appliance.start()
    args = batch_args(appliance, source, tmp_path, *common, "--retry-seconds", "120")
    process = start_batch(appliance, args)
    wait_for_lines(tmp_path / "out.jsonl", summary["last_line"] + 1000, process)
    appliance.stop()
    time.sleep(1)
    appliance.start()
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    resumed = json.loads(stdout)
    assert resumed["resumed_after_line"] == summary["last_line"]
    assert resumed["complete"] is True
    assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path))


def test_an_unreachable_daemon_stops_the_batch_at_once(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_batch(source, 30)
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable, "-m", "signer.cli", "dcc", "issue", "--batch", str(source),
            "--out", str(tmp_path / "out.jsonl"), "--target", address, "--jobs", "2",
        ],
        capture_output=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr.decode()
    assert time.monotonic() - started < 60  # never reached: not retried for --retry-seconds
    assert f"the signer daemon at {address} is unavailable" in result.stderr.decode()
    assert "stopped after line 0" in result.stderr.decode()
    assert (tmp_path / "out.jsonl").read_bytes() == b""


def test_qr_images_are_named_by_input_line(appliance: Appliance, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_batch(source, 5)
    qr = tmp_path / "qr"
    appliance.cli(*batch_args(appliance, source, tmp_path, "--qr-dir", str(qr)))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [record["qr"] for record in out] == [f"000000/00000000{n}.png" for n in range(1, 6)]
    assert sorted(p.relative_to(qr).as_posix() for p in qr.rglob("*.png")) == [
        record["qr"] for record in out
    ]
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.fail("zbarimg is missing: run ./softhsm_setup.sh --test-tools (make test does)")
    decoded = subprocess.run(
        [zbarimg, "--raw", "-q", str(qr / out[2]["qr"])], capture_output=True, text=True
    )
    assert decoded.stdout.strip() == out[2]["hc1"]


def connect(address: str) -> RotatingSigner:
    """A signer for worker processes: module-level, so that ``spawn`` can pickle it."""
    return SignerClient(address).dcc_signer()


def test_the_library_runs_worker_processes_with_a_picklable_factory(
    appliance: Appliance, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 500)
    notes: list[str] = []
    factory: Callable[[], RotatingSigner] = functools.partial(connect, appliance.address)
    summary = issue_batch(
        source,
        tmp_path / "out.jsonl",
        factory,
        options=BatchOptions(chunk_size=40, check_rate=1.0),
        jobs=3,
        uvci_out=tmp_path / "uvcis.jsonl",
        notify=notes.append,
    )
    assert (summary.issued, summary.lines, summary.complete) == (500, 500, True)
    assert summary.checked_signatures == 500  # rate 1: every signature checked
    assert summary.stop is None and notes == []
    assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path), verify_all=True)


def test_workers_connect_over_mtls_and_a_refusal_stops_the_batch(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance(mtls=True)
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 400)
    before = signatures_total(appliance)
    refused = appliance.cli(
        *batch_args(appliance, source, tmp_path, "--jobs", "2", "--as", "auditor"), check=False
    )
    assert refused.returncode == EXIT_REFUSED
    assert "refused by the daemon: PERMISSION_DENIED" in refused.stderr.decode()
    assert json.loads(refused.stdout)["stopped"]["status"] == "PERMISSION_DENIED"
    assert (tmp_path / "out.jsonl").read_bytes() == b""
    assert signatures_total(appliance) == before

    issued = appliance.cli(*batch_args(appliance, source, tmp_path, "--jobs", "2"))
    assert json.loads(issued.stdout)["issued"] == len(lines)
    assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path))


def test_a_key_rotation_in_the_middle_of_a_batch_is_followed_by_every_worker(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance({"keys": {"overlap_minutes": 0}})
    (successor,) = ready_keys(appliance, tmp_path, "successor")
    first_kid = appliance.signing_key().kid.hex()
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 20_000)
    args = batch_args(appliance, source, tmp_path, "--jobs", "2", "--chunk-size", "200")
    process = start_batch(appliance, args)
    wait_for_lines(tmp_path / "out.jsonl", 1000, process)
    # Hold the batch still while the officer activates the successor (overlap 0: the old
    # kid is refused at once), so that the rotation surely lands in the middle of the batch.
    paused = [process.pid, *children_of(process.pid)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        written = (tmp_path / "out.jsonl").read_bytes().count(b"\n")
        activate_key(appliance, successor)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["issued"] == len(lines)
    second_kid = appliance.signing_key().kid.hex()
    assert second_kid != first_kid
    assert f"now signing with kid {second_kid}" in stderr.decode()

    out = assert_complete_and_consistent(
        tmp_path, lines, trust_of(appliance, tmp_path), verify_all=True
    )
    kids = [record["kid"] for record in out]
    assert set(kids) == {first_kid, second_kid}
    assert set(kids[:written]) == {first_kid}
    assert kids[-1] == second_kid


def test_ctrl_c_writes_what_is_finished_and_the_batch_continues_later(
    appliance: Appliance, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = write_batch(source, 20_000)
    args = batch_args(appliance, source, tmp_path, "--jobs", "2", "--chunk-size", "200")
    process = start_batch(appliance, args)
    wait_for_lines(tmp_path / "out.jsonl", 1000, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr.decode()
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and summary["complete"] is False
    assert f"stopped after line {summary['last_line']}" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    written = read_jsonl(tmp_path / "out.jsonl")
    assert [record["line"] for record in written] == list(range(1, summary["last_line"] + 1))

    appliance.cli(*args)
    assert_complete_and_consistent(tmp_path, lines, trust_of(appliance, tmp_path))
