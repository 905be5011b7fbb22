"""The HSM as one worker process sees it: one logged-in PKCS#11 session and a key cache.

:class:`TokenSession` runs only inside a worker process, on its main thread (DESIGN.md §3.1).
The daemon reaches it through :class:`signer.hsm.pooled.PooledToken`, which sends its bound
methods over the worker pipe; digests and signatures travel packed in one ``bytes`` each,
which pickles in a fraction of the time a list of small ``bytes`` takes. Signatures go through
:class:`signer.hsm.rawsign.SigningPath` (two PKCS#11 calls each), from a session copy of the
key where the module makes one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, Session
from pkcs11.exceptions import KeyHandleInvalid, KeySizeRange, ObjectHandleInvalid, PKCS11Error
from pkcs11.types import Object

from signer.config import HsmSettings
from signer.errors import HsmError, HsmUnavailable, KeyNotFound
from signer.hsm import keystore
from signer.hsm.api import GeneratedKey
from signer.hsm.calibrate import COPY_UNSUPPORTED, Calibration, calibrate
from signer.hsm.keygen import generate_ec_key
from signer.hsm.rawsign import SigningPath, object_handle
from signer.hsm.token import wrap_error
from signer.sigformat import P256_SIGNATURE_BYTES, SHA256_DIGEST_BYTES

log = logging.getLogger(__name__)


def call_name(call: Callable[..., Any]) -> str:
    """A readable name for a job (the session method it calls), for logs and errors."""
    target = getattr(call, "func", call)
    return str(getattr(target, "__name__", "job"))


class TokenSession:
    """Every operation a worker offers, over its one session."""

    def __init__(
        self, session: Session, settings: HsmSettings, path: SigningPath | None = None
    ) -> None:
        self.session = session
        self.settings = settings
        self.path = path or SigningPath(session, settings)
        self._keys: dict[str, int] = {}
        """Key id -> handle of the key (or its session copy) on the signing path."""
        self._copies: dict[str, Object] = {}
        # None: not known yet; the first key tells (or the calibration at start did). A
        # signing path with a session of its own signs from the token key.
        wanted = settings.copy_keys_to_session and not self.path.own_session
        self.copy_keys: bool | None = None if wanted else False

    def calibrate(self) -> Calibration:
        """Measure signing and C_CopyObject with a throw-away session key (see
        :mod:`signer.hsm.calibrate`); the answer decides whether this worker copies keys."""
        found = calibrate(self.session, self.path)
        if found.copy_supported is not None and self.copy_keys is None:
            self.copy_keys = found.copy_supported
        return found

    def _key(self, key_id: str) -> int:
        handle = self._keys.get(key_id)
        if handle is None:
            try:
                if self.path.own_session:
                    handle = self.path.find_key(bytes.fromhex(key_id))
                else:
                    key: Object = keystore.private_key(self.session, key_id)
                    if self.copy_keys is not False:
                        key = self._session_copy(key_id, key)
                    handle = object_handle(key)
            except KeyNotFound:
                self.check_token(f"looking up key {key_id}")
                raise
            self._keys[key_id] = handle
        return handle

    def check_token(self, doing: str) -> None:
        """Raise HsmUnavailable when the token itself is gone: a lookup that found nothing
        means "no such object" only while the token is still there.

        A SoftHSM process whose token folder disappeared finds no objects at all, even after
        the folder is back, and fails C_GetSlotList; only a new process sees the token again,
        so the worker that raises this is replaced (:mod:`signer.hsm.worker`).
        """
        label = self.settings.token_label
        if not self.path.token_present(label):
            raise HsmUnavailable(
                f"HSM unavailable while {doing}: token {label!r} is no longer present;"
                " check the HSM and token (the worker starts again)"
            )

    def _session_copy(self, key_id: str, token_key: Object) -> Object:
        """A session copy of a token key (it stays inside the HSM; it only saves the token
        lookup), or the token key itself where the module cannot copy keys."""
        try:
            copy = token_key.copy({Attribute.TOKEN: False})
        except COPY_UNSUPPORTED as exc:
            self.copy_keys = False
            level = logging.WARNING if self.settings.copy_keys_to_session is True else logging.INFO
            log.log(
                level,
                "PKCS#11 module %s cannot copy keys into the session (%s): signing from the"
                " token key; set [hsm] copy_keys_to_session = false to skip the attempt",
                self.settings.module,
                type(exc).__name__,
            )
            return token_key
        self.copy_keys = True
        self._copies[key_id] = copy
        return copy

    def sign_packed(self, key_id: str, digests: bytes) -> bytes:
        """Raw ``r||s`` signatures, packed, over digests packed 32 bytes each."""
        step = SHA256_DIGEST_BYTES
        try:
            handle = self._key(key_id)
            sign = self.path.sign
            signatures = b"".join(
                sign(handle, digests[i : i + step]) for i in range(0, len(digests), step)
            )
        except (KeyHandleInvalid, ObjectHandleInvalid):
            self._keys.pop(key_id, None)
            self.check_token(f"signing with key {key_id}")
            raise HsmError(f"key {key_id} disappeared from the HSM while signing") from None
        except KeySizeRange:
            raise HsmError(f"key {key_id} is not a P-256 key: its signatures are longer") from None
        except PKCS11Error as exc:
            raise wrap_error(exc, f"signing with key {key_id}") from None
        if len(signatures) != len(digests) // step * P256_SIGNATURE_BYTES:
            raise HsmError(f"key {key_id} is not a P-256 key: its signatures have another size")
        return signatures

    def forget(self, key_id: str) -> None:
        """Drop the cached handle (and session copy) of a key that is being destroyed."""
        self._keys.pop(key_id, None)
        copy = self._copies.pop(key_id, None)
        if copy is not None:
            copy.destroy()

    def close(self) -> None:
        """Close what the signing path opened of its own."""
        self.path.close()

    def ping(self) -> str:
        """A round trip to the token; returns its label."""
        try:
            self.session.generate_random(64)
            return str(self.session.token.label)
        except PKCS11Error as exc:
            raise wrap_error(exc, "checking the token") from None

    def generate_key(self, label: str) -> GeneratedKey:
        """See :meth:`signer.hsm.api.Token.generate_key`."""
        return generate_ec_key(self.session, label, self.settings)

    def public_key(self, key_id: str) -> bytes:
        """See :meth:`signer.hsm.api.Token.public_key`."""
        try:
            return keystore.public_key_spki(self.session, key_id)
        except KeyNotFound:
            self.check_token(f"reading public key {key_id}")
            raise

    def key_id_by_label(self, label: str) -> str:
        """See :meth:`signer.hsm.api.Token.key_id_by_label`."""
        try:
            return keystore.key_id_by_label(self.session, label)
        except KeyNotFound:
            self.check_token(f"looking up key {label!r}")
            raise

    def store_certificate(self, key_id: str, label: str, der: bytes) -> None:
        """See :meth:`signer.hsm.api.Token.store_certificate`."""
        keystore.store_certificate(self.session, key_id, label, der)

    def certificate(self, key_id: str) -> bytes | None:
        """See :meth:`signer.hsm.api.Token.certificate`."""
        try:
            found = keystore.certificate(self.session, key_id)
        except PKCS11Error as exc:
            raise wrap_error(exc, f"reading the certificate of key {key_id}") from None
        if found is None:
            self.check_token(f"reading the certificate of key {key_id}")
        return found

    def destroy_key_pair(self, key_id: str) -> int:
        """See :meth:`signer.hsm.api.Token.destroy_key_pair`."""
        self.forget(key_id)
        return keystore.destroy_key_pair(self.session, key_id)

    def data_objects(self, application: str) -> dict[str, tuple[int, bytes]]:
        """Data objects of an application: name -> (generation, value)."""
        found = keystore.records(self.session, application)
        if not found:
            self.check_token(f"reading records {application}")
        return found

    def put_data_object(
        self, application: str, name: str, expected_generation: int, value: bytes
    ) -> int:
        """Conditionally write a data object; returns its new generation."""
        return keystore.put_record(self.session, application, name, expected_generation, value)

    def delete_data_object(self, application: str, name: str, expected_generation: int) -> None:
        """Conditionally remove a data object."""
        keystore.delete_record(self.session, application, name, expected_generation)
