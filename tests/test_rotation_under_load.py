"""Rotation while clients sign continuously, on one daemon and on two daemons sharing a token.

The clients behave like issuance backends: they cache the kid from GetSigningKey, put it in
every SignBatch, and fetch the key again when a refusal names a new kid. Some also refresh the
kid every half second. The only refusal allowed is FAILED_PRECONDITION for the old kid after
the overlap window, carrying the new kid.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from signer.v1 import key_admin_pb2, signing_pb2, signing_pb2_grpc
from tests.conftest import Appliance, MakeAppliance
from tests.test_key_ceremony import (
    PROFILE,
    dev_cert,
    digests,
    dsc_public_key,
    key_set,
    verify_raw,
    wait_for,
)

OVERLAP_SECONDS = 3.0
FAST = {"keys": {"overlap_minutes": OVERLAP_SECONDS / 60, "refresh_seconds": 0.5}}
BATCH = 100


@dataclass
class Signed:
    kid: bytes
    answered: datetime
    digest: bytes
    signature: bytes


@dataclass
class Refusal:
    kid: bytes
    answered: datetime
    code: grpc.StatusCode
    current_kid: bytes | None
    details: str


@dataclass
class Load:
    """Client threads signing until stopped; every answer is recorded."""

    stubs: list[signing_pb2_grpc.SigningStub]
    eager: int
    lazy: int
    signed: list[Signed] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        kinds = [True] * self.eager + [False] * self.lazy
        for n, eager in enumerate(kinds):
            thread = threading.Thread(target=self._client, args=(n, eager), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client hung"

    def _client(self, number: int, eager: bool) -> None:
        turn = number  # clients alternate between the stubs (several daemons = round robin)

        def stub() -> signing_pb2_grpc.SigningStub:
            nonlocal turn
            turn += 1
            return self.stubs[turn % len(self.stubs)]

        def current_kid() -> bytes:
            request = signing_pb2.GetSigningKeyRequest(profile=PROFILE)
            return bytes(stub().GetSigningKey(request, timeout=10).kid)

        try:
            kid = current_kid()
        except grpc.RpcError as error:
            self.errors.append(f"GetSigningKey: {error.code()} {error.details()}")
            return
        fetched = time.monotonic()
        while not self.stop.is_set():
            if eager and time.monotonic() - fetched > 0.5:
                kid, fetched = current_kid(), time.monotonic()
            batch = digests(BATCH, os.urandom(8))
            request = signing_pb2.SignBatchRequest(profile=PROFILE, kid=kid, digests=batch)
            try:
                reply = stub().SignBatch(request, timeout=30)
            except grpc.RpcError as error:
                trailers = dict(error.trailing_metadata() or ())
                current = trailers.get("signer-current-kid-bin")
                self.refusals.append(
                    Refusal(
                        kid,
                        datetime.now(UTC),
                        error.code(),
                        current if isinstance(current, bytes) else None,
                        str(error.details()),
                    )
                )
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    time.sleep(0.1)
                    continue
                try:
                    kid, fetched = current_kid(), time.monotonic()
                except grpc.RpcError as again:
                    self.errors.append(f"GetSigningKey: {again.code()} {again.details()}")
                continue
            if reply.kid != kid or len(reply.signatures) != BATCH:
                self.errors.append(f"asked kid {kid.hex()}, answered {reply.kid.hex()}")
            self.signed.append(Signed(kid, datetime.now(UTC), batch[-1], reply.signatures[-1]))


def prepare_key(app: Appliance, label: str, folder: Path) -> tuple[str, bytes, bytes]:
    """Generate a key through KeyAdmin and import its dev DSC: (key_id, kid, dsc_der)."""
    admin = app.key_admin()
    generated = admin.GenerateKey(
        key_admin_pb2.GenerateKeyRequest(profile=PROFILE, label=label, officer="alice"),
        timeout=30,
    )
    key_id = generated.key.key_id
    pem = dev_cert(app, key_id, folder / f"{label}.pem").read_bytes()
    imported = admin.ImportCertificate(
        key_admin_pb2.ImportCertificateRequest(key_id=key_id, certificate=pem, officer="alice"),
        timeout=30,
    )
    assert imported.state == "ready"
    return key_id, bytes(imported.kid), bytes(imported.dsc_der)


def activate(app: Appliance, key_id: str, at: datetime | None) -> datetime:
    """Activate (one approval is enough in these configs); return when the key takes over."""
    request = key_admin_pb2.ActivateRequest(key_id=key_id, officer="alice")
    if at is not None:
        request.activate_at.FromDatetime(at)
    reply = app.key_admin().Activate(request, timeout=30)
    assert reply.applied and reply.key.state == "scheduled"
    return reply.key.activate_at.ToDatetime(tzinfo=UTC)


def check_load(
    load: Load, old_kid: bytes, new_kid: bytes, takeover: datetime, dscs: dict[bytes, bytes]
) -> None:
    """Zero failures except the old kid after the overlap, and every signature verifies."""
    assert load.errors == []
    end_of_overlap = takeover + timedelta(seconds=OVERLAP_SECONDS)
    for refusal in load.refusals:
        assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION, refusal
        assert refusal.kid == old_kid, refusal
        assert refusal.current_kid == new_kid, refusal
        assert refusal.answered >= end_of_overlap, (refusal, end_of_overlap)
    # the lazy clients kept the old kid until it was refused
    assert len(load.refusals) >= load.lazy, load.refusals
    old = [s for s in load.signed if s.kid == old_kid]
    new = [s for s in load.signed if s.kid == new_kid]
    assert len(old) + len(new) == len(load.signed)
    assert any(s.answered > takeover + timedelta(seconds=1) for s in old), "no overlap signing"
    assert new and min(s.answered for s in new) >= takeover
    keys = {kid: dsc_public_key(der) for kid, der in dscs.items()}
    for signed in load.signed:
        verify_raw(keys[signed.kid], signed.digest, signed.signature)


def test_clients_sign_through_a_scheduled_rotation(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    app = make_appliance(FAST)
    old = app.signing_key()
    new_id, new_kid, new_dsc = prepare_key(app, "next", tmp_path)
    load = Load([app.signing()], eager=2, lazy=2)
    load.start()
    time.sleep(0.5)
    takeover = activate(app, new_id, datetime.now(UTC) + timedelta(seconds=2))
    wait_for(lambda: app.signing_key().kid == new_kid, 10, "the takeover")
    assert datetime.now(UTC) >= takeover
    deadline = takeover + timedelta(seconds=OVERLAP_SECONDS + 1.5)
    wait_for(lambda: datetime.now(UTC) >= deadline, 15, "the end of the overlap")
    load.finish()
    check_load(load, old.kid, new_kid, takeover, {old.kid: old.dsc_der, new_kid: new_dsc})
    assert len(load.signed) > 20, f"only {len(load.signed)} batches signed"
    states = key_set(app)
    assert states[old.key_id][1] == "retired" and states[new_id][1] == "active"


def _second_daemon(make_appliance: MakeAppliance, first: Appliance, tmp_path: Path) -> Appliance:
    """A daemon with its own config, audit log and ports on the first daemon's token."""
    home = tmp_path / "b"
    (home / "secrets").mkdir(parents=True, mode=0o700)
    for name in ("user.pin", "so.pin"):
        shutil.copy2(first.home / "secrets" / name, home / "secrets" / name)
    shutil.copy2(first.home / "csca.pem", home / "csca.pem")
    return make_appliance(FAST, name="b", token_dir=first.home / "tokens")


def _poll(check: Callable[[], bool], timeout: float = 10) -> float:
    """Seconds until ``check()`` holds."""
    started = time.monotonic()
    return wait_for(check, timeout, "the second daemon", step=0.02) - started


def test_second_daemon_on_the_token_follows_a_rotation(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    a = make_appliance(FAST)
    b = _second_daemon(make_appliance, a, tmp_path)
    old = a.signing_key()
    assert b.signing_key().kid == old.kid

    # a key generated and certified through A shows up in B within a refresh or two
    generated = a.key_admin().GenerateKey(
        key_admin_pb2.GenerateKeyRequest(profile=PROFILE, label="seen-by-b", officer="alice"),
        timeout=30,
    )
    seen = _poll(lambda: generated.key.key_id in key_set(b))
    assert key_set(b)[generated.key.key_id][0] == "pending"
    assert seen < 2.0, f"B saw the new key after {seen:.2f} s"

    # clients spread over A and B sign through an immediate rotation made through A
    new_id, new_kid, new_dsc = prepare_key(a, "next", tmp_path)
    _poll(lambda: key_set(b).get(new_id, ("",))[0] == "ready")
    load = Load([a.signing(), b.signing()], eager=2, lazy=2)
    load.start()
    time.sleep(0.5)
    applied = datetime.now(UTC)
    takeover = activate(a, new_id, None)
    # the takeover waits two refresh intervals so that B knows of it first
    assert takeover >= applied + timedelta(seconds=0.9), (applied, takeover)
    known = _poll(lambda: key_set(b)[new_id][0] == "scheduled")
    assert datetime.now(UTC) < takeover, f"B learnt of the activation {known:.2f} s late"
    wait_for(lambda: b.signing_key().kid == new_kid, 10, "B's takeover")
    assert datetime.now(UTC) >= takeover
    deadline = takeover + timedelta(seconds=OVERLAP_SECONDS + 1.5)
    wait_for(lambda: datetime.now(UTC) >= deadline, 15, "the end of the overlap")
    load.finish()
    check_load(load, old.kid, new_kid, takeover, {old.kid: old.dsc_der, new_kid: new_dsc})

    # retiring the only key through A (forced: signing stops) stops it on B too
    retired = a.key_admin().Retire(
        key_admin_pb2.RetireRequest(
            key_id=new_id, reason="test: stop signing", force=True, officer="alice"
        ),
        timeout=30,
    )
    assert retired.applied
    gone = _poll(lambda: key_set(b)[new_id][0] == "retired")
    request = signing_pb2.SignBatchRequest(profile=PROFILE, kid=new_kid, digests=digests(1, b"x"))
    try:
        b.signing().SignBatch(request, timeout=10)
        raise AssertionError("B signed with a key retired through A")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no active key" in (error.details() or "")
    print(f"B saw: new key {seen:.2f} s, activation {known:.2f} s, retirement {gone:.2f} s")
