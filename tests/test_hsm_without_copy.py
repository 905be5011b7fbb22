"""A module that cannot copy keys into a session (C_CopyObject), as CloudHSM, Google Cloud KMS
and YubiHSM 2 cannot: SoftHSM behind a small PKCS#11 module of the tests' own
(``tests/modules/without_copy.c``) that forwards every function but C_CopyObject, which answers
CKR_FUNCTION_NOT_SUPPORTED. With ``copy_keys_to_session = "auto"`` (the default) the daemon
finds that out at start, says so once, and signs from the token key; the probe recommends the
setting that skips the attempt."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.sigformat import raw_to_der
from signer.v1 import signing_pb2, signing_pb2_grpc
from tests.conftest import MODULE, MakeAppliance
from tests.hsm_modules import SOFTHSM_MODULE

SOURCE = Path(__file__).parent / "modules" / "without_copy.c"
COPY_NOTICE = "cannot copy keys into a session (C_CopyObject)"

pytestmark = pytest.mark.skipif(
    MODULE.module != SOFTHSM_MODULE, reason="wraps SoftHSM loaded directly"
)


@pytest.fixture(scope="module")
def without_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module, built with the system's C compiler and p11-kit's PKCS#11 header."""
    compiler = shutil.which("cc")
    header = Path("/usr/include/p11-kit-1/p11-kit/pkcs11.h")
    if compiler is None or not header.exists():
        pytest.fail("a C compiler and libp11-kit-dev are needed: ./softhsm_setup.sh --test-tools")
    built = tmp_path_factory.mktemp("module") / "without_copy.so"
    flags = ["-shared", "-fPIC", "-Wall", "-Werror", "-O2", f"-I{header.parent.parent}"]
    subprocess.run(
        [compiler, *flags, "-o", str(built), str(SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    return built


def _overrides(module: Path, copy: str | bool) -> dict[str, object]:
    return {
        "hsm": {
            "module": str(module),
            "copy_keys_to_session": copy,
            "environment": {"SIGNER_TEST_INNER_MODULE": str(SOFTHSM_MODULE)},
        }
    }


def test_auto_signs_from_the_token_key_and_says_so_once(
    make_appliance: MakeAppliance, without_copy: Path
) -> None:
    appliance = make_appliance(overrides=_overrides(without_copy, "auto"))
    digests = [bytes([n]) * 32 for n in range(50)]
    with appliance.channel() as channel:
        stub = signing_pb2_grpc.SigningStub(channel)
        key = stub.GetSigningKey(signing_pb2.GetSigningKeyRequest(profile="vaccination"))
        reply = stub.SignBatch(
            signing_pb2.SignBatchRequest(profile="vaccination", kid=key.kid, digests=digests)
        )
    public = serialization.load_der_public_key(key.public_key_spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for digest, signature in zip(digests, reply.signatures, strict=True):
        public.verify(raw_to_der(signature), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    log = appliance.log()
    assert log.count(COPY_NOTICE) == 1, log
    assert str(without_copy) in log


def test_the_probe_finds_no_copy_and_recommends_the_setting(
    make_appliance: MakeAppliance, without_copy: Path
) -> None:
    appliance = make_appliance(start=False, overrides=_overrides(without_copy, "auto"))
    result = appliance.cli("hsm", "probe", "--config", str(appliance.config_path), check=False)
    table = result.stdout.decode()
    assert result.returncode == 0, table + result.stderr.decode()
    row = next(line for line in table.splitlines() if line.startswith("copy a key into"))
    assert " no " in row and "not supported" in row, row
    assert "copy_keys_to_session = false" in table, table
    assert "This module can run signer." in table
