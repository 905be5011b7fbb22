"""ES256 in two PKCS#11 calls per signature: ``C_SignInit`` and one ``C_Sign``.

python-pkcs11 0.10 always asks for the output length first (``C_Sign`` with no buffer) and
then signs: three calls per signature, each a network round trip on a network HSM. A P-256
signature is 64 bytes, so signer passes a 64-byte buffer at once. python-pkcs11 offers no way
to skip the length query, so these calls go through the module's function list via ctypes
(``C_GetFunctionList``). Only the worker's one thread calls it (DESIGN.md §3.1).

Most modules hand every caller the same function list, so the session python-pkcs11 opened is
used directly. Some give each ``C_GetFunctionList`` call a module instance of its own (p11-kit's
remote client connects anew for each); then the signing path initialises its instance, opens a
session of its own on the same token and logs in with the same PIN, and signs with the token
key it finds there by ``CKA_ID``.
"""

from __future__ import annotations

import ctypes

from pkcs11 import Session
from pkcs11 import exceptions as p11
from pkcs11.types import Object

from signer.config import HsmSettings, read_pin
from signer.errors import HsmUnavailable, KeyNotFound
from signer.hsm.functions import (
    CK_ULONG,
    CKR_BUFFER_TOO_SMALL,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_OK,
    CKR_USER_ALREADY_LOGGED_IN,
    AttributeValue,
    Mechanism,
    ModuleFunctions,
    SessionInfo,
    check,
    error_for,
)
from signer.hsm.mechanisms import signing_mechanism
from signer.sigformat import P256_SIGNATURE_BYTES

_CKF_SERIAL_SESSION = 0x4
_CKU_USER = 1
_CKA_CLASS, _CKA_TOKEN, _CKA_ID = 0x0, 0x1, 0x102
_CKO_PRIVATE_KEY = 3


def session_handle(session: Session) -> int:
    """The C handle python-pkcs11 holds for a session."""
    handle: int = session.handle  # type: ignore[attr-defined]  # compiled, not in the stubs
    return int(handle)


def object_handle(obj: Object) -> int:
    """The C handle python-pkcs11 holds for an object."""
    if obj.handle is None:
        raise p11.KeyHandleInvalid()
    return int(obj.handle)


class SigningPath:
    """Where one worker's signatures go: ``C_SignInit`` + ``C_Sign`` into 64 bytes."""

    def __init__(self, session: Session, settings: HsmSettings) -> None:
        self._module = ModuleFunctions(settings.module)
        self._mechanism = Mechanism(int(signing_mechanism()), None, 0)
        self._buffer = ctypes.create_string_buffer(P256_SIGNATURE_BYTES)
        self._length = CK_ULONG()
        self.session = session_handle(session)
        info = SessionInfo()
        rv = self._module.call["C_GetSessionInfo"](self.session, ctypes.byref(info))
        self.own_session = rv != CKR_OK
        if self.own_session:
            self.session = self._open(settings)

    def _open(self, settings: HsmSettings) -> int:
        """Initialise this instance of the module, open a session on the token, log in."""
        call = self._module.call
        check(call["C_Initialize"](None), "C_Initialize", CKR_CRYPTOKI_ALREADY_INITIALIZED)
        slot = self._slot(settings.token_label)
        handle = CK_ULONG()
        check(
            call["C_OpenSession"](slot, _CKF_SERIAL_SESSION, None, None, ctypes.byref(handle)),
            "C_OpenSession",
        )
        pin = read_pin(settings).encode()
        try:
            rv = call["C_Login"](handle, _CKU_USER, pin, len(pin))
        finally:
            del pin
        check(rv, "C_Login", CKR_USER_ALREADY_LOGGED_IN)
        return int(handle.value)

    def _slot(self, label: str) -> int:
        for slot, info in self._module.token_infos():
            if info.label_text == label:
                return slot
        raise HsmUnavailable(f"the signing session found no token labelled {label!r}")

    def find_key(self, cka_id: bytes) -> int:
        """The handle of the token private key with this ``CKA_ID`` in the signing session."""
        call = self._module.call
        key_class = CK_ULONG(_CKO_PRIVATE_KEY)
        token = ctypes.c_ubyte(1)
        wanted = ctypes.create_string_buffer(cka_id, len(cka_id))
        template = (AttributeValue * 3)(
            AttributeValue(_CKA_CLASS, ctypes.addressof(key_class), ctypes.sizeof(key_class)),
            AttributeValue(_CKA_TOKEN, ctypes.addressof(token), 1),
            AttributeValue(_CKA_ID, ctypes.addressof(wanted), len(cka_id)),
        )
        check(call["C_FindObjectsInit"](self.session, template, 3), "C_FindObjectsInit")
        found = (CK_ULONG * 2)()
        count = CK_ULONG()
        try:
            check(
                call["C_FindObjects"](self.session, found, 2, ctypes.byref(count)), "C_FindObjects"
            )
        finally:
            call["C_FindObjectsFinal"](self.session)
        if count.value != 1:
            raise KeyNotFound(f"{count.value} private keys with id {cka_id.hex()} on the token")
        return int(found[0])

    def sign(self, key: int, digest: bytes) -> bytes:
        """One raw ``r||s`` signature over ``digest`` (:func:`signing_mechanism`)."""
        call = self._module.call
        rv = call["C_SignInit"](self.session, ctypes.byref(self._mechanism), key)
        if rv != CKR_OK:
            raise error_for(rv, "C_SignInit")
        self._length.value = P256_SIGNATURE_BYTES
        rv = call["C_Sign"](
            self.session, digest, len(digest), self._buffer, ctypes.byref(self._length)
        )
        if rv == CKR_BUFFER_TOO_SMALL:
            # Not a P-256 key. The operation is still active: finish it, then refuse.
            larger = ctypes.create_string_buffer(self._length.value)
            call["C_Sign"](self.session, digest, len(digest), larger, ctypes.byref(self._length))
            raise p11.KeySizeRange()
        if rv != CKR_OK:
            raise error_for(rv, "C_Sign")
        return self._buffer.raw[: self._length.value]

    def token_present(self, label: str) -> bool:
        """Whether the module still lists a token with this label (False when it cannot say:
        SoftHSM fails C_GetSlotList with GeneralError once its token folder is gone)."""
        try:
            return any(info.label_text == label for _, info in self._module.token_infos())
        except p11.PKCS11Error:
            return False

    def close(self) -> None:
        """Close the session of this path's own, if it opened one."""
        if self.own_session:
            self._module.call["C_CloseSession"](self.session)
            self.own_session = False
