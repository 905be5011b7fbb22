"""A module's ``CK_FUNCTION_LIST`` through ctypes, for the few calls python-pkcs11 cannot make.

signer reaches a module through ``C_GetFunctionList`` only, as PKCS#11 intends: some modules
export no other symbol (p11-kit's remote client). Each call of it may hand out a module
instance of its own (p11-kit's client connects anew), so a :class:`ModuleFunctions` is one
instance, with its own ``C_Initialize``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from pkcs11 import exceptions as p11

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG
CKR_OK = 0
CKR_BUFFER_TOO_SMALL = 0x150
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_TOKEN_INITIALIZED = 0x400
LABEL_BYTES = 32

# Positions in CK_FUNCTION_LIST after its CK_VERSION (PKCS#11 v2.40, section 5).
_INDEX = {
    "C_Initialize": 0,
    "C_Finalize": 1,
    "C_GetSlotList": 4,
    "C_GetTokenInfo": 6,
    "C_InitToken": 9,
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


class Mechanism(ctypes.Structure):
    """CK_MECHANISM."""

    _fields_ = (("mechanism", CK_ULONG), ("parameter", ctypes.c_void_p), ("length", CK_ULONG))


class AttributeValue(ctypes.Structure):
    """CK_ATTRIBUTE."""

    _fields_ = (("type", CK_ULONG), ("value", ctypes.c_void_p), ("length", CK_ULONG))


class SessionInfo(ctypes.Structure):
    """CK_SESSION_INFO."""

    _fields_ = (("slot", CK_ULONG), ("state", CK_ULONG), ("flags", CK_ULONG), ("error", CK_ULONG))


class TokenInfo(ctypes.Structure):
    """CK_TOKEN_INFO up to its flags; the rest is room for the fields signer does not read."""

    _fields_ = (
        ("label", ctypes.c_char * LABEL_BYTES),
        ("manufacturer_id", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serial_number", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        ("rest", ctypes.c_ubyte * 512),
    )

    @property
    def label_text(self) -> str:
        """The label without its padding."""
        return bytes(self.label).decode(errors="replace").rstrip()


class _FunctionList(ctypes.Structure):
    _fields_ = (
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        ("functions", ctypes.c_void_p * _FUNCTIONS),
    )


_ULONG_P = ctypes.POINTER(CK_ULONG)
_SIGNATURES: dict[str, tuple[type, ...]] = {
    "C_Initialize": (ctypes.c_void_p,),
    "C_Finalize": (ctypes.c_void_p,),
    "C_GetSlotList": (ctypes.c_ubyte, _ULONG_P, _ULONG_P),
    "C_GetTokenInfo": (CK_ULONG, ctypes.POINTER(TokenInfo)),
    "C_InitToken": (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p),
    "C_OpenSession": (CK_ULONG, CK_ULONG, ctypes.c_void_p, ctypes.c_void_p, _ULONG_P),
    "C_CloseSession": (CK_ULONG,),
    "C_GetSessionInfo": (CK_ULONG, ctypes.POINTER(SessionInfo)),
    "C_Login": (CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG),
    "C_FindObjectsInit": (CK_ULONG, ctypes.POINTER(AttributeValue), CK_ULONG),
    "C_FindObjects": (CK_ULONG, _ULONG_P, CK_ULONG, _ULONG_P),
    "C_FindObjectsFinal": (CK_ULONG,),
    "C_SignInit": (CK_ULONG, ctypes.POINTER(Mechanism), CK_ULONG),
    "C_Sign": (CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p, _ULONG_P),
}

# Return values signer's ctypes calls can meet, as python-pkcs11's exceptions (so callers catch
# one kind of error whichever way the call went).
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


def check(rv: int, call: str, *also_ok: int) -> None:
    """Raise the exception for ``rv`` unless it is CKR_OK or one of ``also_ok``."""
    if rv != CKR_OK and rv not in also_ok:
        raise error_for(rv, call)


class ModuleFunctions:
    """One ``C_GetFunctionList`` answer of a module: ``call["C_..."](...)`` returns the CKR."""

    def __init__(self, module: Path) -> None:
        # dlopen hands back a library this process already loaded (same file, one copy).
        self._library = ctypes.CDLL(str(module))
        get_list = self._library.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(_FunctionList)),)
        found = ctypes.POINTER(_FunctionList)()
        check(get_list(ctypes.byref(found)), "C_GetFunctionList")
        table = found.contents.functions
        self.call = {
            name: ctypes.CFUNCTYPE(CK_RV, *_SIGNATURES[name])(table[index])
            for name, index in _INDEX.items()
        }

    def token_infos(self) -> list[tuple[int, TokenInfo]]:
        """(slot id, token info) of every slot with a token present."""
        count = CK_ULONG()
        while True:
            check(self.call["C_GetSlotList"](1, None, ctypes.byref(count)), "C_GetSlotList")
            slots = (CK_ULONG * max(1, count.value))()
            rv = self.call["C_GetSlotList"](1, slots, ctypes.byref(count))
            if rv != CKR_BUFFER_TOO_SMALL:  # a slot appeared between the two calls: ask again
                check(rv, "C_GetSlotList")
                break
        found = []
        for slot in slots[: count.value]:
            info = TokenInfo()
            check(self.call["C_GetTokenInfo"](slot, ctypes.byref(info)), "C_GetTokenInfo")
            found.append((int(slot), info))
        return found
