"""A real PKCS#11 module that cannot run signer: the daemon refuses to start, naming it.

p11-kit's trust module (Debian ``p11-kit-modules``) has a token, "System Trust", that opens
only read-only and offers no mechanisms. ``signer serve`` on it must stop at once with the
refusal exit code (as for a module without CKM_ECDSA) and one line naming the module, what it
lacks and the setting to change, not a retry loop or a traceback.
"""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest

from signer.cli_exit import ExitCode
from tests.conftest import ROOT, free_port


def trust_module() -> Path:
    found = sorted(glob.glob("/usr/lib/*/pkcs11/p11-kit-trust.so"))
    if not found:
        pytest.fail("p11-kit-trust.so not found: run ./softhsm_setup.sh --test-tools")
    return Path(found[0])


def test_serve_refuses_a_read_only_token_naming_module_and_setting(tmp_path: Path) -> None:
    module = trust_module()
    pin = tmp_path / "user.pin"
    pin.write_text("0000")
    pin.chmod(0o600)
    config = tmp_path / "trust.toml"
    config.write_text(
        'profiles = ["vaccination"]\n'
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        "[server.tls]\ninsecure_loopback = true\n"
        f'[hsm]\nmodule = "{module}"\ntoken_label = "System Trust"\npin_file = "{pin}"\n'
        "workers = 1\n"
        '[keys]\ndev = true\ncountry = "VN"\n'
        f'[audit]\ndir = "{tmp_path / "audit"}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "signer.cli", "serve", "--config", str(config)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == ExitCode.REFUSED, result.stderr
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("signer: ")
    assert f"the PKCS#11 module {module}" in line
    assert "only read-only" in line and "writable token" in line
    assert "[hsm] module and token_label" in line
    assert "Traceback" not in result.stdout.decode()
    assert not (tmp_path / "audit").exists() or not any((tmp_path / "audit").iterdir())
