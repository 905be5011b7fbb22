"""Why a PKCS#11 module did not load, in words an operator can act on.

python-pkcs11 reports a failed ``dlopen`` with the loader's text, but a failed
``C_Initialize`` only as an exception class with no message (SoftHSM answers
``CKR_GENERAL_ERROR`` both when its configuration file is missing and when its token folder
is). This module looks at the files SoftHSM reads to name the one that is missing.

A file the settings name that is missing or is no loadable module is a
:class:`~signer.errors.ConfigError` (``signer serve`` exits 78: restarting will not help); a
token folder that is gone, or a module that cannot initialise for another reason, is
:class:`~signer.errors.HsmUnavailable` (retried, and ``signer serve`` exits 69).
"""

from __future__ import annotations

import re
from pathlib import Path

from signer.errors import ConfigError, HsmUnavailable, SignerError

SOFTHSM_DEFAULT_CONF = Path("/etc/softhsm/softhsm2.conf")
"""Where SoftHSM reads its configuration when ``SOFTHSM2_CONF`` is not set."""

_DLOPEN_PREFIX = re.compile(r"^OS exception while loading [^:]*: ")
_TOKENDIR = re.compile(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", re.MULTILINE)


def missing_module(module: Path) -> ConfigError:
    """The error for a module path where there is no file."""
    return ConfigError(
        f"cannot load PKCS#11 module {module}: no such file; set [hsm] module to the path of"
        " the HSM vendor's PKCS#11 library (SoftHSM on Debian: /usr/lib/softhsm/libsofthsm2.so)"
    )


def load_failure(module: Path, error: BaseException, softhsm_conf: str | None) -> SignerError:
    """The error for a module that failed to load (``dlopen``) or to initialise.

    ``softhsm_conf`` is the ``SOFTHSM2_CONF`` the module sees (None when unset).
    """
    text = str(error).strip()
    if isinstance(error, OSError) or _DLOPEN_PREFIX.match(text):
        reason = _DLOPEN_PREFIX.sub("", text) or type(error).__name__
        return ConfigError(
            f"cannot load PKCS#11 module {module}: {reason}; set [hsm] module to a PKCS#11"
            " library built for this machine, with its dependencies installed"
        )
    reason = text or type(error).__name__
    doing = f"cannot initialise PKCS#11 module {module} (C_Initialize: {reason})"
    conf = _softhsm_conf(module, softhsm_conf)
    if conf is not None:
        found = _softhsm_problem(doing, conf)
        if found is not None:
            return found
    return HsmUnavailable(
        f"HSM unavailable: {doing}; check the module's own configuration and that the HSM"
        " can be reached"
    )


def _softhsm_conf(module: Path, variable: str | None) -> Path | None:
    """The configuration file SoftHSM reads, or None when the module is not SoftHSM (another
    module, p11-kit's client in front of SoftHSM too, ignores SOFTHSM2_CONF)."""
    if "softhsm" not in module.resolve().name.lower():
        return None
    return Path(variable) if variable else SOFTHSM_DEFAULT_CONF


def _softhsm_problem(doing: str, conf: Path) -> SignerError | None:
    """A missing configuration file or token folder, named, or None if both are there."""
    try:
        text = conf.read_text(errors="replace")
    except FileNotFoundError:
        return ConfigError(
            f"{doing}: its configuration file {conf} does not exist; set [hsm] softhsm_conf"
            " (SOFTHSM2_CONF) to the softhsm2.conf that names the token folder"
        )
    except OSError as exc:
        return ConfigError(
            f"{doing}: its configuration file {conf} cannot be read ({exc.strerror});"
            " let the signer user read it"
        )
    match = _TOKENDIR.search(text)
    if match is None:
        return None
    tokens = Path(match.group(1))
    if tokens.is_dir():
        return None
    return HsmUnavailable(
        f"HSM unavailable: {doing}: the SoftHSM token folder {tokens} (directories.tokendir"
        f" in {conf}) does not exist; restore it, or point {conf} at the token folder"
    )
