"""Which PKCS#11 module the integration tests drive, and how its tokens are made.

Three ways, chosen by the environment (or ``pytest --pkcs11-remote``):

* default: SoftHSM2 loaded directly; ``signer dev-setup`` initialises each test token with
  ``C_InitToken``.
* ``--pkcs11-remote`` (or ``SIGNER_TEST_P11KIT_REMOTE=1``): SoftHSM behind p11-kit's remoting.
  Each test token is initialised on SoftHSM directly, a real ``p11-kit server`` exposes it on a
  unix socket of its own, and the daemon loads ``p11-kit-client.so`` with
  ``P11_KIT_SERVER_ADDRESS`` in ``[hsm.environment]``: a module whose every call crosses a
  socket, as with a network HSM.
* ``SIGNER_TEST_PKCS11_MODULE=/path/to/module.so`` with ``SIGNER_TEST_PROVISION="command ..."``:
  another module. The command runs once per test token with ``SIGNER_TEST_HOME``,
  ``SIGNER_TEST_TOKEN_LABEL``, ``SIGNER_TEST_SO_PIN_FILE`` and ``SIGNER_TEST_USER_PIN_FILE``
  in its environment; it must leave an initialised token with that label whose user PIN is
  the one in the file (PINs travel in files, never on a command line), and may print
  ``NAME=value`` lines that become the token's ``[hsm.environment]``. Without a command the
  module must support ``C_InitToken``.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
MODULE_VARIABLE = "SIGNER_TEST_PKCS11_MODULE"
PROVISION_VARIABLE = "SIGNER_TEST_PROVISION"
REMOTE_VARIABLE = "SIGNER_TEST_P11KIT_REMOTE"
_SERVER_START_SECONDS = 15.0


def p11kit_client_module() -> Path:
    """Debian's p11-kit remote client module (package p11-kit-modules)."""
    found = sorted(glob.glob("/usr/lib/*/pkcs11/p11-kit-client.so"))
    if not found:
        raise RuntimeError(
            "p11-kit-client.so not found: run ./softhsm_setup.sh --test-tools, which installs"
            " the Debian packages p11-kit and p11-kit-modules"
        )
    return Path(found[0])


@dataclass(frozen=True)
class ModuleUnderTest:
    """The module the daemon loads and how a token for it is made."""

    module: Path
    remote: bool = False
    provision: tuple[str, ...] = ()

    @property
    def describe(self) -> str:
        """For the pytest header."""
        if self.remote:
            return f"SoftHSM2 via p11-kit remoting ({self.module})"
        return str(self.module)


def module_under_test(remote: bool) -> ModuleUnderTest:
    """The module chosen by ``--pkcs11-remote`` and the ``SIGNER_TEST_*`` variables."""
    if remote or os.environ.get(REMOTE_VARIABLE) == "1":
        return ModuleUnderTest(p11kit_client_module(), remote=True)
    module = Path(os.environ.get(MODULE_VARIABLE) or SOFTHSM_MODULE)
    return ModuleUnderTest(
        module, provision=tuple(shlex.split(os.environ.get(PROVISION_VARIABLE, "")))
    )


def provision(chosen: ModuleUnderTest, home: Path, token_label: str) -> dict[str, str]:
    """Make the token of one test appliance where ``dev-setup`` cannot; return the variables
    for its ``[hsm.environment]``."""
    secrets_dir = home / "secrets"
    env = {
        **os.environ,
        "SIGNER_TEST_HOME": str(home),
        "SIGNER_TEST_TOKEN_LABEL": token_label,
        "SIGNER_TEST_SO_PIN_FILE": str(secrets_dir / "so.pin"),
        "SIGNER_TEST_USER_PIN_FILE": str(secrets_dir / "user.pin"),
    }
    if chosen.remote:
        env["SOFTHSM2_CONF"] = str(home / "softhsm2.conf")
        command: tuple[str, ...] = (sys.executable, "-m", "tests.provision_softhsm")
    elif chosen.provision:
        command = chosen.provision
    else:
        return {}
    result = subprocess.run(
        command, env=env, capture_output=True, timeout=120, cwd=Path(__file__).parent.parent
    )
    if result.returncode != 0:
        raise AssertionError(
            f"provisioning the test token failed ({' '.join(command)} exited"
            f" {result.returncode}):\n{result.stderr.decode(errors='replace')}"
        )
    pairs = (line.partition("=") for line in result.stdout.decode().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, _, value in pairs}


class P11KitServer:
    """A real ``p11-kit server`` exposing one SoftHSM token on a unix socket."""

    def __init__(self, home: Path, token_label: str) -> None:
        self.home = home
        self.token_label = token_label
        # Unix socket paths are limited to ~100 bytes: pytest's temp paths can be longer.
        self._dir = Path(tempfile.mkdtemp(prefix="p11kit-"))
        self.socket = self._dir / "pkcs11"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The value of P11_KIT_SERVER_ADDRESS for clients."""
        return f"unix:path={self.socket}"

    def start(self) -> None:
        """Start the server and wait until its socket exists."""
        if shutil.which("p11-kit") is None:
            raise AssertionError(
                "p11-kit is not installed: run ./softhsm_setup.sh --test-tools (packages p11-kit,"
                " p11-kit-modules)"
            )
        log = (self.home / "p11kit-server.log").open("ab")
        self.process = subprocess.Popen(
            [
                "p11-kit",
                "server",
                "--foreground",
                "--provider",
                str(SOFTHSM_MODULE),
                "--name",
                str(self.socket),
                f"pkcs11:token={self.token_label}",
            ],
            env={**os.environ, "SOFTHSM2_CONF": str(self.home / "softhsm2.conf")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _SERVER_START_SECONDS
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    "p11-kit server did not start:\n"
                    + (self.home / "p11kit-server.log").read_text(errors="replace")
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server and remove its socket folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self._dir, ignore_errors=True)
