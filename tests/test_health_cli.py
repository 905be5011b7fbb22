"""``signer health`` against the real daemon over mutual TLS: SERVING, NOT_SERVING, unreachable,
and ``--watch`` through a shutdown; and the README's route for ad-hoc calls (reflection)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.conftest import ROOT, Appliance, MakeAppliance, render_toml


def health(appliance: Appliance, *args: str) -> subprocess.CompletedProcess[bytes]:
    return appliance.cli("health", "--config", str(appliance.config_path), *args, check=False)


def test_health_exit_codes_serving_watch_and_unreachable(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance(mtls=True)
    up = health(appliance)
    assert (up.returncode, up.stdout) == (0, b"SERVING\n"), up.stderr
    one = health(appliance, "--service", "signer.v1.Audit")
    assert (one.returncode, one.stdout) == (0, b"signer.v1.Audit: SERVING\n"), one.stderr
    tls = appliance.home / "tls"
    explicit = appliance.cli(
        "health",
        "--target",
        appliance.address,
        "--ca",
        str(tls / "ca.pem"),
        "--cert",
        str(tls / "auditor.pem"),
        "--key",
        str(tls / "auditor.key"),
        "--server-name",
        "localhost",
        check=False,
    )
    assert explicit.returncode == 0 and explicit.stdout == b"SERVING\n", explicit.stderr
    unknown = health(appliance, "--service", "signer.v1.Nothing")
    assert unknown.returncode == 2 and b"signer.v1.Signing" in unknown.stderr

    config = appliance.config_path
    watcher = subprocess.Popen(
        [sys.executable, "-m", "signer.cli", "health", "--watch", "--config", str(config)],
        env=appliance.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watcher.stdout is not None
    first = watcher.stdout.readline().decode()
    assert first.endswith(" SERVING\n"), first
    time.sleep(5)  # the daemon re-publishes its status every 2 s; only changes are printed
    appliance.stop()
    out, err = watcher.communicate(timeout=60)
    statuses = [line.split(" ", 1)[1] for line in (first + out.decode()).splitlines()]
    assert statuses == ["SERVING", "NOT_SERVING"], statuses
    assert watcher.returncode == 69, err
    assert appliance.address.encode() in err

    down = health(appliance)
    assert down.returncode == 69 and down.stdout == b""
    assert down.stderr.startswith(b"signer: ") and appliance.address.encode() in down.stderr


def test_health_is_not_serving_while_a_profile_has_no_active_key(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance(mtls=True, start=False)
    appliance.config["profiles"] = ["vaccination", "test"]  # dev-setup made a key for one only
    appliance.config_path.write_text(render_toml(appliance.config))
    appliance.start(wait=False)
    deadline = time.monotonic() + 60
    while "no active key for test" not in appliance.log():
        assert time.monotonic() < deadline, appliance.log()
        time.sleep(0.3)
    answer = health(appliance)
    assert (answer.returncode, answer.stdout) == (1, b"NOT_SERVING\n"), answer.stderr
    signing = health(appliance, "--service", "signer.v1.Signing")
    assert (signing.returncode, signing.stdout) == (1, b"signer.v1.Signing: NOT_SERVING\n")


def test_the_readme_reflection_route_lists_services_and_calls_one(
    make_appliance: MakeAppliance,
) -> None:
    appliance = make_appliance(mtls=True)
    tls = appliance.home / "tls"
    flags = ["--ca", str(tls / "ca.pem"), "--cert", str(tls / "auditor.pem")]
    flags += ["--key", str(tls / "auditor.key"), appliance.address]

    def example(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "examples" / "grpc_call.py"), *flags, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = example()
    assert listed.returncode == 0, listed.stderr
    for service in ("signer.v1.Signing", "signer.v1.Audit", "grpc.health.v1.Health"):
        assert service in listed.stdout.split(), listed.stdout
    called = example("signer.v1.Audit/VerifyLog", "{}")
    assert called.returncode == 0, called.stderr
    answer = json.loads(called.stdout)
    assert answer["ok"] is True and int(answer["records"]) > 0, answer
    refused = example("signer.v1.Signing/GetTrustList", "{}")  # the auditor is no issuer
    assert refused.returncode == 1 and refused.stderr.startswith("PERMISSION_DENIED")
