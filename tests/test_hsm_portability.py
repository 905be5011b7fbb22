"""signer on the modules health authorities own: what crosses the PKCS#11 boundary, key ids,
worker sizing and start-up faults, the capability probe, and a store that cannot be reached.

Real modules only: the module under test (SoftHSM, or SoftHSM behind p11-kit's remoting with
``--pkcs11-remote``), OpenSC's ``pkcs11-spy`` in front of it to see every call, p11-kit's
trust module as a module that cannot run signer, and a relay in front of a real ``p11-kit
server`` to add latency or refuse connections.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute

from signer.config import HsmSettings, Settings, load, read_pin
from signer.errors import HsmError
from signer.hsm.pool import WorkerPool
from signer.hsm.pooled import PooledToken, pooled_token
from signer.hsm.sizing import plan_pool
from signer.sigformat import SignatureEncoding
from tests.conftest import ROOT, Appliance, MakeAppliance, new_appliance
from tests.hsm_modules import P11KitServer, p11kit_client_module
from tests.socket_relay import SocketRelay

MINIMAL_PUBLIC = {
    "CKA_CLASS",
    "CKA_KEY_TYPE",
    "CKA_EC_PARAMS",
    "CKA_TOKEN",
    "CKA_PRIVATE",
    "CKA_VERIFY",
    "CKA_LABEL",
    "CKA_ID",
}
MINIMAL_PRIVATE = {
    "CKA_CLASS",
    "CKA_KEY_TYPE",
    "CKA_TOKEN",
    "CKA_PRIVATE",
    "CKA_SENSITIVE",
    "CKA_EXTRACTABLE",
    "CKA_SIGN",
    "CKA_LABEL",
    "CKA_ID",
}


def _module_file(pattern: str, package: str) -> Path:
    found = sorted(glob.glob(pattern))
    if not found:
        pytest.fail(f"{pattern} not found: run ./softhsm_setup.sh --test-tools ({package})")
    return Path(found[0])


@pytest.fixture
def appliance_settings(tmp_path: Path) -> Settings:
    """A token made the way dev-setup makes it, on the module under test (nothing running)."""
    made = new_appliance(tmp_path / "hsm")
    made.setup()
    return load(made.config_path)


def spied(hsm: HsmSettings, log: Path) -> HsmSettings:
    """The same module and token seen through OpenSC's pkcs11-spy, which logs every call."""
    spy = _module_file("/usr/lib/*/pkcs11/pkcs11-spy.so", "opensc-pkcs11")
    environment = dict(hsm.vendor_environment)
    environment.update(PKCS11SPY=str(hsm.module), PKCS11SPY_OUTPUT=str(log))
    return replace(hsm, module=spy, vendor_environment=tuple(environment.items()))


def spy_calls(log: Path) -> list[str]:
    """The PKCS#11 functions called, in order, from a pkcs11-spy log."""
    return re.findall(r"^\d+: (C_\w+)", log.read_text(errors="replace"), flags=re.MULTILINE)


def spy_templates(log: Path, name: str) -> list[set[str]]:
    """The attribute names of every ``name`` template (e.g. pPrivateKeyTemplate) in the log."""
    templates = []
    lines = log.read_text(errors="replace").splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"[in] {name}["):
            found = set()
            for following in lines[index + 1 :]:
                match = re.match(r"^    (CKA_\w+)", following)
                if match:
                    found.add(match.group(1))
                elif not following.startswith("    "):
                    break
            templates.append(found)
    return templates


def test_key_generation_sends_only_the_minimal_template(
    appliance_settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "spy.log"
    with pooled_token(spied(appliance_settings.hsm, log), count=1) as token:
        generated = token.generate_key("minimal-template")
        assert token.public_key(generated.key_id) == generated.spki_der
    assert spy_templates(log, "pPublicKeyTemplate") == [MINIMAL_PUBLIC]
    assert spy_templates(log, "pPrivateKeyTemplate") == [MINIMAL_PRIVATE]
    # SoftHSM enables decryption and unwrapping by default: signer switched them off.
    assert "C_SetAttributeValue" in spy_calls(log)


def test_a_signature_costs_two_pkcs11_calls(appliance_settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "spy.log"
    count = 50
    with pooled_token(spied(appliance_settings.hsm, log), count=1) as token:
        key_id = token.key_id_by_label(appliance_settings.hsm.audit_key_label)
        token.sign(key_id, [os.urandom(32)], SignatureEncoding.RAW)  # finds and caches the key
        before = len(spy_calls(log))
        signatures = token.sign(
            key_id, [os.urandom(32) for _ in range(count)], SignatureEncoding.RAW
        )
        calls = spy_calls(log)[before:]
    assert len(signatures) == count and all(len(s) == 64 for s in signatures)
    assert calls.count("C_SignInit") == count
    assert calls.count("C_Sign") == count
    assert len(calls) == 2 * count


def test_key_ids_of_any_length_and_old_keys_keep_signing(appliance_settings: Settings) -> None:
    short = replace(appliance_settings.hsm, key_id_bytes=2)
    with pooled_token(short, count=1) as token:
        generated = token.generate_key("short-id")
        assert len(bytes.fromhex(generated.key_id)) == 2
        assert token.key_id_by_label("short-id") == generated.key_id
        [signature] = token.sign(generated.key_id, [os.urandom(32)], SignatureEncoding.RAW)
        assert len(signature) == 64
        # The audit key dev-setup made with an 8-byte id signs under the new setting.
        old = token.key_id_by_label(appliance_settings.hsm.audit_key_label)
        assert len(bytes.fromhex(old)) == 8
        assert token.sign(old, [os.urandom(32)], SignatureEncoding.RAW)


def test_a_module_that_chooses_no_id_is_refused_naming_the_setting(
    appliance_settings: Settings,
) -> None:
    chosen = replace(appliance_settings.hsm, key_id_bytes=0)
    with pooled_token(chosen, count=1) as token:
        with pytest.raises(HsmError) as refused:
            token.generate_key("no-id")
        message = str(refused.value)
        assert str(chosen.module) in message and "CKA_ID" in message
        assert "[hsm] key_id_bytes" in message
        # The refused key did not stay behind.
        assert "no private key labelled 'no-id'" in _missing_key(token, "no-id")


def _missing_key(token: PooledToken, label: str) -> str:
    try:
        token.key_id_by_label(label)
    except Exception as exc:
        return str(exc)
    return "found"


def test_probe_says_the_module_under_test_can_run_signer(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance(start=False)
    result = appliance.cli("hsm", "probe", "--config", str(appliance.config_path))
    table = result.stdout.decode()
    for capability in (
        "elliptic curves (P-256)",
        "generate a key (minimal template)",
        "key reads back protected",
        "sign (C_SignInit + C_Sign, 64 bytes)",
        "signature verifies",
        "certificate objects",
        "random numbers",
        "concurrent logins and signing",
    ):
        row = next(line for line in table.splitlines() if line.startswith(capability))
        assert " ok " in row, row
    assert "This module can run signer." in table
    assert "[hsm]\nkey_id_bytes = 8" in table and 'workers = "auto"' in table
    assert "scratch objects removed" in table
    assert _probe_leftovers(appliance) == []


def _probe_leftovers(appliance: Appliance) -> list[str]:
    """Labels of objects the probe left on the token, read in a session of this process."""
    settings = load(appliance.config_path)
    for name, value in settings.hsm.environment().items():
        os.environ[name] = value
    lib = pkcs11.lib(str(settings.hsm.module))
    try:
        token = lib.get_token(token_label=settings.hsm.token_label)
        with token.open(user_pin=read_pin(settings.hsm)) as session:
            labels = [str(obj[Attribute.LABEL]) for obj in session.get_objects({})]
    finally:
        pkcs11.unload(str(settings.hsm.module))
    return [label for label in labels if label.startswith("signer-probe-")]


def test_probe_refuses_a_module_that_cannot_run_signer(tmp_path: Path) -> None:
    """p11-kit's trust module: a real module with a read-only token and no mechanisms."""
    trust = _module_file("/usr/lib/*/pkcs11/p11-kit-trust.so", "p11-kit-modules")
    pin = tmp_path / "user.pin"
    pin.write_text("0000")
    pin.chmod(0o600)
    config = tmp_path / "trust.toml"
    config.write_text(
        f'[hsm]\nmodule = "{trust}"\ntoken_label = "System Trust"\npin_file = "{pin}"\n'
        "[keys]\ndev = true\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", "hsm", "probe", "--config", str(config)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 1
    [line] = result.stderr.decode().splitlines()
    assert line.startswith(f"signer: the PKCS#11 module {trust} cannot run signer: it lacks")
    assert "find the token, log in" in line
    assert "MISSING" in result.stdout.decode()


@pytest.fixture
def remote_token(appliance_settings: Settings) -> Iterator[tuple[HsmSettings, SocketRelay]]:
    """The appliance's SoftHSM token behind a real p11-kit server and a relay, and settings
    that reach it through p11-kit's remote client via the relay."""
    home = appliance_settings.source.parent
    server = P11KitServer(home, appliance_settings.hsm.token_label)
    server.start()
    relay = SocketRelay(Path(tempfile.mkdtemp(prefix="relay-")) / "s", server.socket).start()
    hsm = replace(
        appliance_settings.hsm,
        module=p11kit_client_module(),
        softhsm_conf=None,
        vendor_environment=(("P11_KIT_SERVER_ADDRESS", relay.address),),
    )
    yield hsm, relay
    relay.stop()
    server.stop()


def test_workers_auto_follows_the_measured_round_trip(
    remote_token: tuple[HsmSettings, SocketRelay],
) -> None:
    hsm, relay = remote_token
    relay.delay = 0.002
    pool = WorkerPool(replace(hsm, workers="auto", max_workers=6))
    try:
        pool.start()
        assert pool.calibration is not None and pool.calibration.timing is not None
        timing = pool.calibration.timing
        # Every call of a signature crossed the relay, which holds each for 2 ms.
        assert timing.wall >= 2 * relay.delay
        expected = plan_pool(timing, os.cpu_count() or 1, "auto", 6, hsm.chunk_digests)
        assert pool.plan == expected
        assert pool.size == expected.workers == pool.workers_up
        assert pool.chunk == expected.chunk
        token = PooledToken(pool)
        key_id = token.key_id_by_label(hsm.audit_key_label)
        batch = [os.urandom(32) for _ in range(200)]
        assert len(token.sign(key_id, batch, SignatureEncoding.RAW)) == 200
        # The batch went out in jobs of the planned size, not of [hsm] chunk_digests.
        assert pool.sign_jobs == math.ceil(200 / expected.chunk)
    finally:
        pool.close()


def test_a_fixed_pool_too_small_for_the_latency_is_named_in_the_log(
    remote_token: tuple[HsmSettings, SocketRelay], caplog: pytest.LogCaptureFixture
) -> None:
    hsm, relay = remote_token
    relay.delay = 0.002
    caplog.set_level(logging.WARNING, logger="signer.hsm.pool")
    pool = WorkerPool(replace(hsm, workers=1))
    try:
        pool.start()
        assert pool.size == 1
        if pool.plan.warning is not None:  # decided from the measurement by plan_pool
            assert pool.plan.warning in caplog.text
            assert '[hsm] workers = "auto"' in caplog.text
        assert (
            pool.plan.wanted
            == plan_pool(
                pool.calibration.timing if pool.calibration else None,
                os.cpu_count() or 1,
                1,
                hsm.max_workers,
                hsm.chunk_digests,
            ).wanted
        )
    finally:
        pool.close()


def test_workers_that_cannot_start_leave_the_pool_degraded_until_recovered(
    remote_token: tuple[HsmSettings, SocketRelay], caplog: pytest.LogCaptureFixture
) -> None:
    hsm, relay = remote_token
    caplog.set_level(logging.WARNING, logger="signer.hsm.pool")

    class CutAfterTheFirstLogin(WorkerPool):
        """The HSM becomes unreachable once the first worker has logged in."""

        def _spawn(self, index: int, measure: bool = False) -> Any:
            worker = super()._spawn(index, measure)
            if index == 0:
                relay.refusing = True
            return worker

    pool = CutAfterTheFirstLogin(hsm, count=3)
    try:
        pool.start()
        assert pool.workers_up == 1 and pool.degraded
        assert "2 of 3 workers could not start" in caplog.text
        token = PooledToken(pool)
        key_id = token.key_id_by_label(hsm.audit_key_label)
        assert len(token.sign(key_id, [os.urandom(32)] * 300, SignatureEncoding.RAW)) == 300
        relay.refusing = False
        deadline = time.monotonic() + 60
        while pool.workers_up < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pool.workers_up == 3 and not pool.degraded
    finally:
        pool.close()


def test_the_first_worker_is_retried_then_the_start_fails_unavailable(
    remote_token: tuple[HsmSettings, SocketRelay], caplog: pytest.LogCaptureFixture
) -> None:
    hsm, relay = remote_token
    relay.refusing = True
    caplog.set_level(logging.WARNING, logger="signer.hsm.pool")
    pool = WorkerPool(hsm, count=2)
    try:
        with pytest.raises(HsmError) as failed:
            pool.start()
        assert "could not start" in str(failed.value)
        assert caplog.text.count("trying again in") == 3
    finally:
        pool.close()


def test_a_store_unreachable_at_start_exits_69_naming_it(make_appliance: MakeAppliance) -> None:
    appliance = make_appliance(start=False)
    nowhere = tempfile.mkdtemp(prefix="no-postgres-")
    text = appliance.config_path.read_text()
    appliance.config_path.write_text(
        text
        + f'\n[store]\nbackend = "postgresql"\ndsn = "host={nowhere} dbname=signer user=signer"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", "serve", "--config", str(appliance.config_path)],
        env=appliance.env(),
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 69, result.stderr.decode()
    [line] = [x for x in result.stderr.decode().splitlines() if x.startswith("signer: ")]
    assert line.startswith("signer: record store PostgreSQL host=")
    assert nowhere in line
    assert "died" not in result.stderr.decode()
