"""Open the PKCS#11 module, find the token by label and log in, with actionable errors."""

from __future__ import annotations

import os

import pkcs11
from pkcs11 import Session, Token
from pkcs11._pkcs11 import lib as Pkcs11Lib
from pkcs11.exceptions import (
    DeviceError,
    DeviceMemory,
    DeviceRemoved,
    FunctionFailed,
    GeneralError,
    NoSuchToken,
    PinIncorrect,
    PinLocked,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    TokenNotRecognised,
    TokenWriteProtected,
    UserNotLoggedIn,
)

from signer.config import HsmSettings, read_pin
from signer.errors import HsmError, HsmUnavailable
from signer.hsm.loadfail import load_failure, missing_module
from signer.hsm.mechanisms import signing_mechanism

# Errors after which the HSM, not the request, is at fault: answer UNAVAILABLE, and the worker
# that met one starts again with a new C_Initialize, login and session (a SoftHSM process that
# lost its token folder never sees the token again; C_GetSlotList then fails with GeneralError).
UNAVAILABLE_ERRORS: tuple[type[PKCS11Error], ...] = (
    DeviceError,
    DeviceMemory,
    DeviceRemoved,
    GeneralError,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    TokenNotRecognised,
    UserNotLoggedIn,
)


def wrap_error(exc: BaseException, doing: str) -> HsmError:
    """Translate a python-pkcs11 exception into the project's errors, naming the operation."""
    name = type(exc).__name__
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return HsmUnavailable(f"HSM unavailable while {doing} ({name}); check the HSM and token")
    return HsmError(f"HSM refused {doing} ({name})")


def load_module(settings: HsmSettings) -> Pkcs11Lib:
    """Load the PKCS#11 library named in the settings (one per process) and initialise it.

    A failure says why (:func:`signer.hsm.loadfail.load_failure`): ConfigError when a file
    the settings name is missing or is no loadable module, HsmUnavailable otherwise.
    """
    for key, value in settings.environment().items():
        os.environ[key] = value
    if not settings.module.is_file():
        raise missing_module(settings.module)
    try:
        return pkcs11.lib(str(settings.module))
    except (PKCS11Error, OSError, RuntimeError) as exc:
        raise load_failure(settings.module, exc, os.environ.get("SOFTHSM2_CONF")) from None


def find_token(lib: Pkcs11Lib, label: str) -> Token:
    """Return the token with this label, or explain which tokens exist."""
    try:
        return lib.get_token(token_label=label)
    except NoSuchToken:
        labels = sorted({slot.get_token().label for slot in lib.get_slots(token_present=True)})
        raise HsmUnavailable(
            f"no token labelled {label!r}; tokens present: {labels or 'none'}"
            " (run softhsm_setup.sh for the dev token)"
        ) from None
    except PKCS11Error as exc:
        raise wrap_error(exc, f"looking up token {label!r}") from None


def check_signing_mechanism(settings: HsmSettings, session: Session) -> None:
    """Refuse a token without ``CKM_ECDSA`` before anything else, naming module and remedy."""
    try:
        offered = session.token.slot.get_mechanisms()
    except PKCS11Error:
        return  # the module will not say; signing will tell
    if signing_mechanism() not in offered:
        raise HsmError(
            f"the PKCS#11 module {settings.module} offers no CKM_ECDSA on token"
            f" {settings.token_label!r}: signer signs ES256 with it; set [hsm] module to a module"
            " with elliptic curves (`signer hsm probe --config FILE` lists what one offers)"
        )


def open_session(settings: HsmSettings, lib: Pkcs11Lib) -> Session:
    """Open a read-write session on the configured token, logged in as the user."""
    token = find_token(lib, settings.token_label)
    pin = read_pin(settings)
    try:
        return token.open(rw=True, user_pin=pin)
    except PinIncorrect:
        raise HsmError(f"token {settings.token_label!r} refused the user PIN") from None
    except PinLocked:
        raise HsmError(
            f"the user PIN of token {settings.token_label!r} is locked;"
            " a security officer must reset it"
        ) from None
    except TokenWriteProtected:
        raise HsmError(
            f"the PKCS#11 module {settings.module} opens token {settings.token_label!r} only"
            " read-only: signer needs a writable token (keys, certificates, its audit key); set"
            " [hsm] module and token_label to a token of your HSM (`signer hsm probe --config"
            " FILE` lists what a module offers)"
        ) from None
    except (GeneralError, FunctionFailed) as exc:
        # A refused PIN has codes of its own: these are the device's trouble, worth a retry.
        raise HsmUnavailable(
            f"HSM unavailable while logging in to token {settings.token_label!r}"
            f" ({type(exc).__name__}); check the HSM and token"
        ) from None
    except PKCS11Error as exc:
        raise wrap_error(exc, f"logging in to token {settings.token_label!r}") from None
    finally:
        del pin
