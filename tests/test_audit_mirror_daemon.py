"""The auditor's commands against the real daemon over mutual TLS: ``signer audit checkpoint``
and ``signer audit mirror``, up to a PIN holder's rewrite of the log re-signed in the HSM.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, Mechanism, ObjectClass

from signer.audit.checkpoint import CheckpointSigner, load_audit_public_key, open_checkpoint
from signer.audit.events import EventType
from signer.audit.query import iter_records
from signer.config import load
from signer.v1 import audit_pb2, audit_pb2_grpc, signing_pb2
from tests.audit_rewrite import rewrite_log
from tests.conftest import Appliance, MakeAppliance
from tests.test_audit_mirror import snapshot
from tests.test_hsm_keys import own_session

PROFILE = "vaccination"


def sign_batches(appliance: Appliance, count: int, tag: str) -> int:
    """Sign ``count`` batches as the issuer; return the audit sequence of the last one."""
    stub = appliance.signing()
    kid = appliance.signing_key().kid
    seq = 0
    for number in range(count):
        digests = [hashlib.sha256(f"{tag}/{number}/{i}".encode()).digest() for i in range(4)]
        request = signing_pb2.SignBatchRequest(
            profile=PROFILE, kid=kid, digests=digests, request_id=f"{tag}-{number}"
        )
        seq = stub.SignBatch(request, timeout=10).audit_sequence
    return seq


def wait_for_checkpoint(appliance: Appliance, size: int) -> None:
    audit = audit_pb2_grpc.AuditStub(appliance.channel("auditor"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = audit.GetLatestCheckpoint(audit_pb2.GetLatestCheckpointRequest(), timeout=5)
        if reply.size >= size:
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint covering record {size} within 30 s")


def hsm_checkpoint_signer(appliance: Appliance) -> CheckpointSigner:
    """The audit key in the HSM as someone holding only the user PIN reaches it, outside the
    daemon (python-pkcs11 on the appliance's token)."""
    settings = load(appliance.config_path)
    spki = load_audit_public_key(appliance.audit_public_key.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def sign(digest: bytes) -> bytes:
        with own_session(settings) as session:
            key = next(
                session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        Attribute.LABEL: settings.hsm.audit_key_label,
                    }
                )
            )
            assert isinstance(key, pkcs11.types.SignMixin)
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

    return CheckpointSigner(settings.audit.origin, sign, spki)


def run(appliance: Appliance, *args: str) -> subprocess.CompletedProcess[bytes]:
    return appliance.cli(*args, "--config", str(appliance.config_path), check=False)


def test_checkpoint_and_mirror_catch_a_rewrite_the_pin_holder_signed_in_the_hsm(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    appliance = make_appliance(mtls=True)
    pubkey = str(appliance.audit_public_key)
    mirror = tmp_path / "auditor" / "mirror"
    kept = tmp_path / "auditor" / "checkpoint.txt"
    kept.parent.mkdir()

    first = sign_batches(appliance, 6, "early")
    wait_for_checkpoint(appliance, first)
    fetched = run(appliance, "audit", "checkpoint", "--out", str(kept), "--pubkey", pubkey)
    assert fetched.returncode == 0, fetched.stderr
    opened = open_checkpoint(kept.read_text(), load_audit_public_key(Path(pubkey).read_bytes()))
    assert opened.size >= first and f"at size {opened.size}" in fetched.stdout.decode()

    pulled = run(appliance, "audit", "mirror", "--dir", str(mirror), "--pubkey", pubkey)
    assert pulled.returncode == 0, pulled.stderr
    size = int(re.search(rb" (\d+) in total", pulled.stdout).group(1))  # type: ignore[union-attr]
    assert size >= first and f"(1..{size})".encode() in pulled.stdout

    later = sign_batches(appliance, 4, "later")
    wait_for_checkpoint(appliance, later)
    pulled = run(appliance, "audit", "mirror", "--dir", str(mirror))
    assert pulled.returncode == 0, pulled.stderr
    grown = int(re.search(rb" (\d+) in total", pulled.stdout).group(1))  # type: ignore[union-attr]
    assert grown >= later
    assert f"{grown - size} new records ({size + 1}..{grown})".encode() in pulled.stdout
    verified = appliance.cli("audit", "verify", "--dir", str(mirror), "--pubkey", pubkey)
    assert b"intact" in verified.stdout

    # The PIN holder drops a signed batch, rebuilds the chain and signs a checkpoint in the HSM.
    appliance.stop()
    dropped = next(
        r.seq
        for r in iter_records(appliance.audit_dir)
        if r.event is EventType.SIGN_BATCH and r.request_id == "early-2"
    )
    rewrite_log(appliance.audit_dir, hsm_checkpoint_signer(appliance), drop=dropped)
    alone = appliance.cli("audit", "verify", "--dir", str(appliance.audit_dir), "--pubkey", pubkey)
    assert b"intact" in alone.stdout, "the appliance's own verifier cannot see it"
    appliance.start()
    wait_for_checkpoint(appliance, sign_batches(appliance, 2, "after"))

    before = snapshot(mirror)
    caught = run(appliance, "audit", "mirror", "--dir", str(mirror))
    assert caught.returncode == 1, (caught.stdout, caught.stderr)
    message = caught.stderr.decode()
    assert f"modified at sequence {dropped}:" in message, message
    assert message.startswith("signer: ") and message.count("\n") == 1
    assert snapshot(mirror) == before, "nothing in the mirror may change"

    appliance.stop()
    for command in (
        ("audit", "mirror", "--dir", str(mirror)),
        ("audit", "checkpoint", "--out", str(tmp_path / "x.txt")),
    ):
        down = run(appliance, *command)
        assert down.returncode == 69, (command, down.stderr)
        assert appliance.address.encode() in down.stderr
    assert snapshot(mirror) == before
    assert not (tmp_path / "x.txt").exists()
