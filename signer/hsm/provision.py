"""Token provisioning for setup: initialise a fresh SoftHSM token without a PIN on argv.

``softhsm2-util --init-token`` takes PINs only as arguments or from a terminal, so the token is
initialised here through the module's own ``C_InitToken``; python-pkcs11 has no binding for it.
This runs once, in the short-lived setup process, before any other PKCS#11 use in that process.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pkcs11

from signer.errors import HsmError

_CKF_TOKEN_INITIALIZED = 0x400
_CKR_OK = 0
_LABEL_BYTES = 32
CK_ULONG = ctypes.c_ulong


class _TokenInfo(ctypes.Structure):
    _fields_ = (
        ("label", ctypes.c_char * 32),
        ("manufacturer_id", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serial_number", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        ("rest", ctypes.c_ubyte * 256),
    )
    slot: int


def init_token(module: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise the first uninitialised token with ``label`` and set its user PIN."""
    if len(label.encode()) > _LABEL_BYTES:
        raise HsmError(f"token label {label!r} is longer than {_LABEL_BYTES} bytes")
    lib = ctypes.CDLL(str(module))
    _check(lib.C_Initialize(None), "C_Initialize")
    try:
        slot = _free_slot(lib)
        padded = label.encode().ljust(_LABEL_BYTES, b" ")
        so = so_pin.encode()
        _check(lib.C_InitToken(CK_ULONG(slot), so, CK_ULONG(len(so)), padded), "C_InitToken")
    finally:
        lib.C_Finalize(None)
    token = pkcs11.lib(str(module)).get_token(token_label=label)
    with token.open(rw=True, so_pin=so_pin) as session:
        session.init_pin(user_pin)


def token_exists(module: Path, label: str) -> bool:
    """True when an initialised token with this label is present."""
    lib = ctypes.CDLL(str(module))
    _check(lib.C_Initialize(None), "C_Initialize")
    try:
        return any(
            info.flags & _CKF_TOKEN_INITIALIZED
            and info.label.decode(errors="replace").rstrip() == label
            for info in _token_infos(lib)
        )
    finally:
        lib.C_Finalize(None)


def _token_infos(lib: ctypes.CDLL) -> list[_TokenInfo]:
    count = CK_ULONG(0)
    _check(lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)), "C_GetSlotList")
    slots = (CK_ULONG * count.value)()
    _check(lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)), "C_GetSlotList")
    infos = []
    for slot in slots[: count.value]:
        info = _TokenInfo()
        _check(lib.C_GetTokenInfo(CK_ULONG(slot), ctypes.byref(info)), "C_GetTokenInfo")
        info.slot = int(slot)
        infos.append(info)
    return infos


def _free_slot(lib: ctypes.CDLL) -> int:
    for info in _token_infos(lib):
        if not info.flags & _CKF_TOKEN_INITIALIZED:
            return info.slot
    raise HsmError("no uninitialised token slot is free in the PKCS#11 module")


def _check(rv: int, call: str) -> None:
    if rv != _CKR_OK:
        raise HsmError(f"{call} failed with CKR 0x{rv & 0xFFFFFFFF:08x}")
