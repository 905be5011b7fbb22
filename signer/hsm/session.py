"""The HSM as one worker process sees it: one logged-in PKCS#11 session and a key cache.

:class:`TokenSession` runs only inside a worker process, on its main thread (DESIGN.md §3.1).
The daemon reaches it through :class:`signer.hsm.pooled.PooledToken`, which sends its bound
methods over the worker pipe; digests and signatures travel packed in one ``bytes`` each,
which pickles in a fraction of the time a list of small ``bytes`` takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, Session
from pkcs11.exceptions import KeyHandleInvalid, ObjectHandleInvalid, PKCS11Error
from pkcs11.types import Object, SignMixin

from signer.config import HsmSettings
from signer.errors import HsmError
from signer.hsm import keystore
from signer.hsm.api import GeneratedKey
from signer.hsm.mechanisms import signing_mechanism
from signer.hsm.token import wrap_error
from signer.sigformat import P256_SIGNATURE_BYTES, SHA256_DIGEST_BYTES


def call_name(call: Callable[..., Any]) -> str:
    """A readable name for a job (the session method it calls), for logs and errors."""
    target = getattr(call, "func", call)
    return str(getattr(target, "__name__", "job"))


class TokenSession:
    """Every operation a worker offers, over its one session."""

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

    def sign_packed(self, key_id: str, digests: bytes) -> bytes:
        """Raw ``r||s`` signatures, packed, over digests packed 32 bytes each."""
        mechanism = signing_mechanism()
        step = SHA256_DIGEST_BYTES
        try:
            key = self._key(key_id)
            signatures = b"".join(
                key.sign(digests[i : i + step], mechanism=mechanism)
                for i in range(0, len(digests), step)
            )
        except (KeyHandleInvalid, ObjectHandleInvalid):
            self._keys.pop(key_id, None)
            raise HsmError(f"key {key_id} disappeared from the HSM while signing") from None
        except PKCS11Error as exc:
            raise wrap_error(exc, f"signing with key {key_id}") from None
        if len(signatures) != len(digests) // step * P256_SIGNATURE_BYTES:
            raise HsmError(f"key {key_id} is not a P-256 key: its signatures have another size")
        return signatures

    def forget(self, key_id: str) -> None:
        """Drop the cached handle (and session copy) of a key that is being destroyed."""
        cached = self._keys.pop(key_id, None)
        if isinstance(cached, Object) and self.settings.copy_keys_to_session:
            cached.destroy()

    def ping(self) -> str:
        """A round trip to the token; returns its label."""
        try:
            self.session.generate_random(64)
            return str(self.session.token.label)
        except PKCS11Error as exc:
            raise wrap_error(exc, "checking the token") from None

    def generate_key(self, label: str) -> GeneratedKey:
        """See :meth:`signer.hsm.api.Token.generate_key`."""
        return keystore.generate_ec_key(self.session, label)

    def public_key(self, key_id: str) -> bytes:
        """See :meth:`signer.hsm.api.Token.public_key`."""
        return keystore.public_key_spki(self.session, key_id)

    def key_id_by_label(self, label: str) -> str:
        """See :meth:`signer.hsm.api.Token.key_id_by_label`."""
        return keystore.key_id_by_label(self.session, label)

    def store_certificate(self, key_id: str, label: str, der: bytes) -> None:
        """See :meth:`signer.hsm.api.Token.store_certificate`."""
        keystore.store_certificate(self.session, key_id, label, der)

    def certificate(self, key_id: str) -> bytes | None:
        """See :meth:`signer.hsm.api.Token.certificate`."""
        return keystore.certificate(self.session, key_id)

    def destroy_key_pair(self, key_id: str) -> int:
        """See :meth:`signer.hsm.api.Token.destroy_key_pair`."""
        self.forget(key_id)
        return keystore.destroy_key_pair(self.session, key_id)

    def data_objects(self, application: str) -> dict[str, tuple[int, bytes]]:
        """Data objects of an application: name -> (generation, value)."""
        return keystore.records(self.session, application)

    def put_data_object(
        self, application: str, name: str, expected_generation: int, value: bytes
    ) -> int:
        """Conditionally write a data object; returns its new generation."""
        return keystore.put_record(self.session, application, name, expected_generation, value)

    def delete_data_object(self, application: str, name: str, expected_generation: int) -> None:
        """Conditionally remove a data object."""
        keystore.delete_record(self.session, application, name, expected_generation)
