"""Private keys are made inside the HSM and cannot be read out (real SoftHSM token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from signer.config import load
from signer.errors import HsmError
from signer.hsm.mechanisms import SignatureEncoding
from signer.hsm.pool import WorkerPool
from tests.conftest import new_appliance


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WorkerPool]:
    appliance = new_appliance(tmp_path / "hsm")
    appliance.setup()
    settings = load(appliance.config_path)
    workers = WorkerPool(settings.hsm, count=1)
    workers.start()
    yield workers
    workers.close()


def test_generated_key_is_sensitive_and_not_extractable(pool: WorkerPool) -> None:
    generated = pool.call("generate_key", label="extraction-test")
    flags = pool.call("private_key_attributes", key_id=generated.key_id)
    assert flags == {
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
        "sign": True,
        "decrypt": False,
        "derive": False,
        "unwrap": False,
        "local": True,
    }
    with pytest.raises(HsmError, match="AttributeSensitive"):
        pool.call("read_private_value", key_id=generated.key_id)
    signature = pool.sign(generated.key_id, [b"\x11" * 32], SignatureEncoding.RAW)[0]
    assert len(signature) == 64


def test_softhsm_would_sign_any_length_so_the_daemon_must_check(pool: WorkerPool) -> None:
    key_id = pool.call("key_id_by_label", label="signer-audit")
    assert len(pool.sign(key_id, [b"\x22" * 20], SignatureEncoding.RAW)[0]) == 64
