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
from pathlib import Path

from pkcs11 import Session
from pkcs11 import exceptions as p11
from pkcs11.types import Object

from signer.config import HsmSettings, read_pin
from signer.errors import HsmUnavailable, KeyNotFound
from signer.hsm.mechanisms import signing_mechanism
from signer.sigformat import P256_SIGNATURE_BYTES

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG
CKR_OK = 0
CKR_BUFFER_TOO_SMALL = 0x150
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
_CKF_SERIAL_SESSION = 0x4
_CKU_USER = 1
_CKA_CLASS, _CKA_TOKEN, _CKA_ID = 0x0, 0x1, 0x102
_CKO_PRIVATE_KEY = 3
_LABEL_BYTES = 32

# Positions in CK_FUNCTION_LIST after its CK_VERSION (PKCS#11 v2.40, section 5).
_INDEX = {
    "C_Initialize": 0,
    "C_GetSlotList": 4,
    "C_GetTokenInfo": 6,
    "C_OpenSession": 12,
    "C_CloseSession": 13,
    "C_GetSessionInfo": 15,
    "C_Login": 18,
    "C_FindObjectsInit": 26,
    "C_FindObjects": 27,
    "C_FindObjectsFinal": 28,
    "C_SignInit": 42,
    "C_Sign": 43,
}
_FUNCTIONS = 68


class _Mechanism(ctypes.Structure):
    _fields_ = (("mechanism", CK_ULONG), ("parameter", ctypes.c_void_p), ("length", CK_ULONG))


class _Attribute(ctypes.Structure):
    _fields_ = (("type", CK_ULONG), ("value", ctypes.c_void_p), ("length", CK_ULONG))


class _SessionInfo(ctypes.Structure):
    _fields_ = (("slot", CK_ULONG), ("state", CK_ULONG), ("flags", CK_ULONG), ("error", CK_ULONG))


class _TokenInfo(ctypes.Structure):
    _fields_ = (("label", ctypes.c_char * _LABEL_BYTES), ("rest", ctypes.c_ubyte * 512))


class _FunctionList(ctypes.Structure):
    _fields_ = (
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        ("functions", ctypes.c_void_p * _FUNCTIONS),
    )


_ULONG_P = ctypes.POINTER(CK_ULONG)
_SIGNATURES = {
    "C_Initialize": (ctypes.c_void_p,),
    "C_GetSlotList": (ctypes.c_ubyte, _ULONG_P, _ULONG_P),
    "C_GetTokenInfo": (CK_ULONG, ctypes.POINTER(_TokenInfo)),
    "C_OpenSession": (CK_ULONG, CK_ULONG, ctypes.c_void_p, ctypes.c_void_p, _ULONG_P),
    "C_CloseSession": (CK_ULONG,),
    "C_GetSessionInfo": (CK_ULONG, ctypes.POINTER(_SessionInfo)),
    "C_Login": (CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG),
    "C_FindObjectsInit": (CK_ULONG, ctypes.POINTER(_Attribute), CK_ULONG),
    "C_FindObjects": (CK_ULONG, _ULONG_P, CK_ULONG, _ULONG_P),
    "C_FindObjectsFinal": (CK_ULONG,),
    "C_SignInit": (CK_ULONG, ctypes.POINTER(_Mechanism), CK_ULONG),
    "C_Sign": (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, _ULONG_P),
}

# Return values the signing path can meet, as python-pkcs11's exceptions (so callers catch one
# kind of error whichever path made it).
_ERRORS: dict[int, type[p11.PKCS11Error]] = {
    0x005: p11.GeneralError,
    0x006: p11.FunctionFailed,
    0x020: p11.DataInvalid,
    0x021: p11.DataLenRange,
    0x030: p11.DeviceError,
    0x031: p11.DeviceMemory,
    0x032: p11.DeviceRemoved,
    0x054: p11.FunctionNotSupported,
    0x060: p11.KeyHandleInvalid,
    0x063: p11.KeyTypeInconsistent,
    0x070: p11.MechanismInvalid,
    0x071: p11.MechanismParamInvalid,
    0x082: p11.ObjectHandleInvalid,
    0x090: p11.OperationActive,
    0x091: p11.OperationNotInitialized,
    0x0A0: p11.PinIncorrect,
    0x0A4: p11.PinLocked,
    0x0B0: p11.SessionClosed,
    0x0B3: p11.SessionHandleInvalid,
    0x0E0: p11.TokenNotPresent,
    0x0E1: p11.TokenNotRecognised,
    0x101: p11.UserNotLoggedIn,
}


def error_for(rv: int, call: str) -> p11.PKCS11Error:
    """The python-pkcs11 exception for a return value (pure)."""
    kind = _ERRORS.get(rv)
    return kind() if kind is not None else p11.PKCS11Error(f"{call} returned CKR 0x{rv:08x}")


def session_handle(session: Session) -> int:
    """The C handle python-pkcs11 holds for a session."""
    handle: int = session.handle  # type: ignore[attr-defined]  # compiled, not in the stubs
    return int(handle)


def object_handle(obj: Object) -> int:
    """The C handle python-pkcs11 holds for an object."""
    if obj.handle is None:
        raise p11.KeyHandleInvalid()
    return int(obj.handle)


class _Module:
    """One ``C_GetFunctionList`` answer of a module, with typed ctypes calls."""

    def __init__(self, module: Path) -> None:
        # dlopen hands back the library python-pkcs11 already loaded (same file, one copy).
        self._library = ctypes.CDLL(str(module))
        get_list = self._library.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(_FunctionList)),)
        found = ctypes.POINTER(_FunctionList)()
        self.check(get_list(ctypes.byref(found)), "C_GetFunctionList")
        table = found.contents.functions
        self.call = {
            name: ctypes.CFUNCTYPE(CK_RV, *_SIGNATURES[name])(table[index])
            for name, index in _INDEX.items()
        }

    @staticmethod
    def check(rv: int, call: str, *also_ok: int) -> None:
        if rv != CKR_OK and rv not in also_ok:
            raise error_for(rv, call)


class SigningPath:
    """Where one worker's signatures go: ``C_SignInit`` + ``C_Sign`` into 64 bytes."""

    def __init__(self, session: Session, settings: HsmSettings) -> None:
        self._module = _Module(settings.module)
        self._mechanism = _Mechanism(int(signing_mechanism()), None, 0)
        self._buffer = ctypes.create_string_buffer(P256_SIGNATURE_BYTES)
        self._length = CK_ULONG()
        self.session = session_handle(session)
        info = _SessionInfo()
        rv = self._module.call["C_GetSessionInfo"](self.session, ctypes.byref(info))
        self.own_session = rv != CKR_OK
        if self.own_session:
            self.session = self._open(settings)

    def _open(self, settings: HsmSettings) -> int:
        """Initialise this instance of the module, open a session on the token, log in."""
        call, check = self._module.call, self._module.check
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
        call, check = self._module.call, self._module.check
        count = CK_ULONG()
        check(call["C_GetSlotList"](1, None, ctypes.byref(count)), "C_GetSlotList")
        slots = (CK_ULONG * max(1, count.value))()
        check(call["C_GetSlotList"](1, slots, ctypes.byref(count)), "C_GetSlotList")
        for slot in slots[: count.value]:
            info = _TokenInfo()
            check(call["C_GetTokenInfo"](slot, ctypes.byref(info)), "C_GetTokenInfo")
            if info.label.decode(errors="replace").rstrip() == label:
                return int(slot)
        raise HsmUnavailable(f"the signing session found no token labelled {label!r}")

    def find_key(self, cka_id: bytes) -> int:
        """The handle of the token private key with this ``CKA_ID`` in the signing session."""
        call, check = self._module.call, self._module.check
        key_class = CK_ULONG(_CKO_PRIVATE_KEY)
        token = ctypes.c_ubyte(1)
        wanted = ctypes.create_string_buffer(cka_id, len(cka_id))
        template = (_Attribute * 3)(
            _Attribute(_CKA_CLASS, ctypes.addressof(key_class), ctypes.sizeof(key_class)),
            _Attribute(_CKA_TOKEN, ctypes.addressof(token), 1),
            _Attribute(_CKA_ID, ctypes.addressof(wanted), len(cka_id)),
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

    def close(self) -> None:
        """Close the session of this path's own, if it opened one."""
        if self.own_session:
            self._module.call["C_CloseSession"](self.session)
            self.own_session = False
