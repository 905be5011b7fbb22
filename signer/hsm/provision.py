"""Token provisioning for setup: initialise a fresh SoftHSM token without a PIN on argv.

``softhsm2-util --init-token`` takes PINs only as arguments or from a terminal, so the token is
initialised here through the module's own ``C_InitToken``; python-pkcs11 has no binding for it.
This runs once, in the short-lived setup process, before any other PKCS#11 use in that process.
Both functions go through ``C_GetFunctionList`` only, so they work with modules that export
nothing else (p11-kit's remote client); a token that exists already is never touched, which is
how ``signer dev-setup`` works on tokens initialised with the vendor's own tools and PIN rules.
"""

from __future__ import annotations

from pathlib import Path

import pkcs11
from pkcs11.exceptions import PKCS11Error

from signer.errors import HsmError
from signer.hsm.functions import (
    CK_ULONG,
    CKF_TOKEN_INITIALIZED,
    LABEL_BYTES,
    ModuleFunctions,
    TokenInfo,
)
from signer.hsm.functions import check as _check_rv


def init_token(module: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise the first uninitialised token with ``label`` and set its user PIN."""
    if len(label.encode()) > LABEL_BYTES:
        raise HsmError(f"token label {label!r} is longer than {LABEL_BYTES} bytes")
    functions = _initialised(module)
    try:
        slot = _free_slot(functions)
        padded = label.encode().ljust(LABEL_BYTES, b" ")
        so = so_pin.encode()
        _check(functions.call["C_InitToken"](slot, so, CK_ULONG(len(so)), padded), "C_InitToken")
    finally:
        functions.call["C_Finalize"](None)
    token = pkcs11.lib(str(module)).get_token(token_label=label)
    with token.open(rw=True, so_pin=so_pin) as session:
        session.init_pin(user_pin)


def token_exists(module: Path, label: str) -> bool:
    """True when an initialised token with this label is present."""
    functions = _initialised(module)
    try:
        return any(
            info.flags & CKF_TOKEN_INITIALIZED and info.label_text == label
            for _, info in _infos(functions)
        )
    finally:
        functions.call["C_Finalize"](None)


def _initialised(module: Path) -> ModuleFunctions:
    try:
        functions = ModuleFunctions(module)
    except (OSError, PKCS11Error) as exc:
        raise HsmError(f"cannot load PKCS#11 module {module}: {exc}") from None
    _check(functions.call["C_Initialize"](None), "C_Initialize")
    return functions


def _infos(functions: ModuleFunctions) -> list[tuple[int, TokenInfo]]:
    try:
        return list(functions.token_infos())
    except PKCS11Error as exc:
        raise HsmError(f"listing the tokens failed ({type(exc).__name__})") from None


def _free_slot(functions: ModuleFunctions) -> int:
    for slot, info in _infos(functions):
        if not info.flags & CKF_TOKEN_INITIALIZED:
            return slot
    raise HsmError("no uninitialised token slot is free in the PKCS#11 module")


def _check(rv: int, call: str) -> None:
    try:
        _check_rv(rv, call)
    except PKCS11Error:
        raise HsmError(f"{call} failed with CKR 0x{rv & 0xFFFFFFFF:08x}") from None
