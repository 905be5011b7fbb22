"""The signing worker process: one ``C_Initialize``, one login, one session, one thread.

A worker answers jobs sent over a pipe by :class:`signer.hsm.pool.WorkerPool`. Each job is
``(job_id, operation, kwargs)``; each answer is ``(job_id, ok, value_or_error)``. Only the
worker's main thread touches PKCS#11 (DESIGN.md §3.1).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import pkcs11
from pkcs11 import Attribute, Session
from pkcs11.exceptions import KeyHandleInvalid, ObjectHandleInvalid, PKCS11Error
from pkcs11.types import Object, SignMixin

from signer.config import HsmSettings
from signer.errors import HsmError, SignerError
from signer.hsm import keystore
from signer.hsm.mechanisms import SignatureEncoding, encode_signature, signing_mechanism
from signer.hsm.token import load_module, open_session, wrap_error

READY = "ready"
FAILED = "failed"


class _Signer:
    """Per-process key cache and the operations a worker offers."""

    def __init__(self, session: Session, settings: HsmSettings) -> None:
        self.session = session
        self.settings = settings
        self._keys: dict[str, SignMixin] = {}

    def _key(self, key_id: str) -> SignMixin:
        key = self._keys.get(key_id)
        if key is None:
            token_key = keystore.private_key(self.session, key_id)
            # A session object stays inside the HSM; it only saves the token lookup.
            copy = self.settings.copy_keys_to_session
            found = token_key.copy({Attribute.TOKEN: False}) if copy else token_key
            assert isinstance(found, SignMixin)
            key = found
            self._keys[key_id] = key
        return key

    def sign(self, key_id: str, digests: Sequence[bytes], encoding: str) -> list[bytes]:
        enc = SignatureEncoding(encoding)
        mechanism = signing_mechanism()
        try:
            key = self._key(key_id)
            return [encode_signature(key.sign(d, mechanism=mechanism), enc) for d in digests]
        except (KeyHandleInvalid, ObjectHandleInvalid):
            self._keys.pop(key_id, None)
            raise HsmError(f"key {key_id} disappeared from the HSM while signing") from None
        except PKCS11Error as exc:
            raise wrap_error(exc, f"signing with key {key_id}") from None

    def forget(self, key_id: str) -> None:
        cached = self._keys.pop(key_id, None)
        if isinstance(cached, Object) and self.settings.copy_keys_to_session:
            cached.destroy()

    def ping(self) -> str:
        try:
            self.session.generate_random(64)  # a round trip to the token
            return str(self.session.token.label)
        except PKCS11Error as exc:
            raise wrap_error(exc, "checking the token") from None

    def operations(self) -> dict[str, Callable[..., Any]]:
        s = self.session
        return {
            "sign": self.sign,
            "forget": self.forget,
            "ping": self.ping,
            "generate_key": lambda label: keystore.generate_ec_key(s, label),
            "public_key": lambda key_id: keystore.public_key_spki(s, key_id),
            "key_id_by_label": lambda label: keystore.key_id_by_label(s, label),
            "store_certificate": lambda key_id, label, der: keystore.store_certificate(
                s, key_id, label, der
            ),
            "certificate": lambda key_id: keystore.certificate(s, key_id),
            "destroy_key_pair": self._destroy,
            "put_record": lambda application, name, value: keystore.put_record(
                s, application, name, value
            ),
            "records": lambda application: keystore.records(s, application),
            "delete_record": lambda application, name: keystore.delete_record(s, application, name),
            "private_key_attributes": lambda key_id: keystore.private_key_attributes(s, key_id),
            "read_private_value": lambda key_id: keystore.read_private_value(s, key_id),
            "pid": os.getpid,
        }

    def _destroy(self, key_id: str) -> int:
        self.forget(key_id)
        return keystore.destroy_key_pair(self.session, key_id)


def worker_main(conn: Connection, settings: HsmSettings) -> None:
    """Entry point of a worker process (started with the ``spawn`` method)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        lib = load_module(settings)
        session = open_session(settings, lib)
    except SignerError as exc:
        conn.send((FAILED, str(exc)))
        return
    signer = _Signer(session, settings)
    operations = signer.operations()
    conn.send((READY, os.getpid()))
    try:
        _serve(conn, operations)
    finally:
        with contextlib.suppress(PKCS11Error):
            session.close()
        pkcs11.unload(str(settings.module))


def _serve(conn: Connection, operations: dict[str, Callable[..., Any]]) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        job_id, name, kwargs = job
        try:
            result = operations[name](**kwargs)
            answer: tuple[int, bool, Any] = (job_id, True, result)
        except SignerError as exc:
            answer = (job_id, False, exc)
        except Exception as exc:
            # A worker reports unexpected errors; it does not die of them.
            failure = HsmError(f"{name} failed in the HSM worker: {type(exc).__name__}")
            answer = (job_id, False, failure)
        try:
            conn.send(answer)
        except (BrokenPipeError, EOFError, OSError):
            return  # the daemon is gone; nobody is waiting for this answer
