"""Fixtures that build real parts: a SoftHSM token in a temp dir and the real daemon on loopback.

Nothing here is mocked. ``make_appliance`` writes a config, runs ``signer dev-setup`` (token,
audit key, dev CSCA, one active key per profile) and starts ``signer serve`` as a subprocess on
free loopback ports; tests talk to it over gRPC like any client. The PKCS#11 module is SoftHSM2
unless ``--pkcs11-remote`` or ``SIGNER_TEST_PKCS11_MODULE`` chooses another
(:mod:`tests.hsm_modules`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signer.v1 import key_admin_pb2_grpc, signing_pb2, signing_pb2_grpc
from tests.hsm_modules import (
    SOFTHSM_MODULE,
    ModuleUnderTest,
    P11KitServer,
    module_under_test,
    provision,
)
from tests.tmp_retention import forget_earlier_runs  # noqa: F401 (session fixture, autouse)

ROOT = Path(__file__).resolve().parent.parent
TOKEN_LABEL = "signer-test"
MODULE = ModuleUnderTest(SOFTHSM_MODULE)
"""The module under test; ``pytest_configure`` sets it from the option and environment."""
_SERVERS: list[P11KitServer] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pkcs11-remote",
        action="store_true",
        help="run the daemon through p11-kit's remote client module in front of SoftHSM"
        " (a real p11-kit server per test token), as for a network HSM",
    )


def pytest_configure(config: pytest.Config) -> None:
    global MODULE
    MODULE = module_under_test(bool(config.getoption("--pkcs11-remote")))


def pytest_report_header(config: pytest.Config) -> str:
    return f"PKCS#11 module under test: {MODULE.describe}"


@pytest.fixture(scope="session", autouse=True)
def _stop_p11kit_servers() -> Iterator[None]:
    """Every p11-kit server a test started stops when the session ends."""
    yield
    for server in _SERVERS:
        server.stop()


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def render_toml(config: dict[str, Any]) -> str:
    """A tiny TOML writer for the nested dicts tests build."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]

    def table(prefix: str, body: dict[str, Any]) -> None:
        lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items() if not isinstance(v, dict))
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    for key, value in config.items():
        if isinstance(value, dict):
            table(key, value)
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Appliance:
    """One token + config + (optionally running) daemon, all under ``home``."""

    home: Path
    config_path: Path
    config: dict[str, Any]
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    channels: list[grpc.Channel] = field(default_factory=list)
    p11kit: P11KitServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    @property
    def audit_public_key(self) -> Path:
        return self.home / "audit-public-key.pem"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SOFTHSM2_CONF"] = str(self.home / "softhsm2.conf")
        return env

    def cli(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``signer ARGS`` as a subprocess against this appliance."""
        result = subprocess.run(
            [sys.executable, "-m", "signer.cli", *args],
            env=self.env(),
            capture_output=True,
            input=input,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"signer {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout.decode()}\n{result.stderr.decode()}"
            )
        return result

    def provision(self) -> None:
        """Make the token where dev-setup cannot (another module, p11-kit's server) and start
        the p11-kit server in front of it."""
        environment = provision(MODULE, self.home, TOKEN_LABEL)
        if environment:
            self.config = merge(self.config, {"hsm": {"environment": environment}})
            self.config_path.write_text(render_toml(self.config))
        if self.p11kit is not None and self.p11kit.process is None:
            self.p11kit.start()

    def setup(self) -> None:
        """Create the token and keys the way softhsm_setup.sh does."""
        self.provision()
        self.cli(
            "dev-setup",
            "--config",
            str(self.config_path),
            "--so-pin-file",
            str(self.home / "secrets" / "so.pin"),
        )

    def start(self, wait: bool = True) -> None:
        """Start ``signer serve`` and wait until health says SERVING."""
        self.log_path = self.home / f"daemon-{int(time.time() * 1000)}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "signer.cli", "serve", "--config", str(self.config_path)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log()}")
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.2)
        raise AssertionError(f"daemon did not become SERVING within {timeout} s:\n{self.log()}")

    def health(self, service: str = "") -> int | None:
        try:
            with self._open_channel("issuer") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                return int(reply.status)
        except grpc.RpcError:
            return None

    @property
    def tls_dir(self) -> Path | None:
        cert = self.config["server"].get("tls", {}).get("cert")
        return Path(cert).parent if cert else None

    def credentials(self, identity: str) -> grpc.ChannelCredentials:
        """Client mTLS credentials of one of the dev identities (issuer, officer, ...)."""
        assert self.tls_dir is not None
        return grpc.ssl_channel_credentials(
            root_certificates=(self.tls_dir / "ca.pem").read_bytes(),
            private_key=(self.tls_dir / f"{identity}.key").read_bytes(),
            certificate_chain=(self.tls_dir / f"{identity}.pem").read_bytes(),
        )

    def _open_channel(
        self, identity: str, credentials: grpc.ChannelCredentials | None = None
    ) -> grpc.Channel:
        limit = 64 * 1024 * 1024
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.ssl_target_name_override", "localhost"),
        ]
        if self.tls_dir is None and credentials is None:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(
            self.address, credentials or self.credentials(identity), options=options
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def channel(
        self, identity: str = "issuer", credentials: grpc.ChannelCredentials | None = None
    ) -> grpc.Channel:
        """A channel to the daemon (mTLS as ``identity`` when the appliance uses TLS)."""
        channel = self._open_channel(identity, credentials)
        self.channels.append(channel)
        return channel

    def signing(self, identity: str = "issuer") -> signing_pb2_grpc.SigningStub:
        return signing_pb2_grpc.SigningStub(self.channel(identity))

    def key_admin(self, identity: str = "officer") -> key_admin_pb2_grpc.KeyAdminStub:
        return key_admin_pb2_grpc.KeyAdminStub(self.channel(identity))

    def signing_key(self, profile: str = "vaccination") -> signing_pb2.SigningKey:
        return self.signing().GetSigningKey(
            signing_pb2.GetSigningKeyRequest(profile=profile), timeout=10
        )

    def worker_pids(self) -> set[int]:
        """Process ids of the daemon's HSM worker processes."""
        assert self.process is not None
        return {
            pid
            for pid in children_of(self.process.pid)
            if b"spawn_main" in _cmdline(pid)  # not multiprocessing's resource tracker
        }

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())


def children_of(pid: int) -> set[int]:
    """Direct children of a process (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # a thread that ended while we looked
        found.update(int(c) for c in children)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        rest = head[len(name) :]
        if rest and not rest.startswith("{"):
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(value)
    return 0.0


def base_config(home: Path, port: int, metrics_port: int) -> dict[str, Any]:
    hsm: dict[str, Any] = {
        "module": str(MODULE.module),
        "token_label": TOKEN_LABEL,
        "pin_file": str(home / "secrets" / "user.pin"),
        "workers": 2,
        "timeout_seconds": 10,
    }
    if MODULE.module == SOFTHSM_MODULE:
        hsm["softhsm_conf"] = str(home / "softhsm2.conf")
    return {
        "profiles": ["vaccination"],
        "server": {
            "listen": f"127.0.0.1:{port}",
            "max_batch": 10000,
            "tls": {"insecure_loopback": True},
        },
        "hsm": hsm,
        "keys": {
            "country": "VN",
            "approvals_required": 1,
            "csca_cert": str(home / "csca.pem"),
            "dev": True,
            "refresh_seconds": 0.5,
        },
        "audit": {
            "dir": str(home / "audit"),
            "checkpoint_every_records": 100,
            "checkpoint_every_seconds": 1,
        },
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }


def mtls_overrides(home: Path) -> dict[str, Any]:
    """Config for mutual TLS with the dev certificates dev-setup makes in ``home/tls``."""
    tls = home / "tls"
    return {
        "server": {
            "tls": {
                "insecure_loopback": False,
                "cert": str(tls / "server.pem"),
                "key": str(tls / "server.key"),
                "client_ca": str(tls / "ca.pem"),
            }
        },
        "client": {"ca": str(tls / "ca.pem"), "cert_dir": str(tls)},
        "roles": {"issuer": ["CN=issuer"], "auditor": ["CN=auditor"]},
        "officers": {"alice": ["CN=officer"], "bob": ["CN=officer2"]},
    }


def new_appliance(
    home: Path,
    overrides: dict[str, Any] | None = None,
    token_dir: Path | None = None,
    mtls: bool = False,
) -> Appliance:
    """Write token config, PIN files and signer config under ``home`` (nothing started)."""
    if shutil.which("softhsm2-util") is None or not SOFTHSM_MODULE.exists():
        pytest.fail("SoftHSM2 is not installed: run ./softhsm_setup.sh (make test does)")
    if not MODULE.module.exists():
        pytest.fail(f"the PKCS#11 module under test {MODULE.module} does not exist")
    home.mkdir(parents=True, exist_ok=True)
    secrets_dir = home / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    tokens = token_dir or home / "tokens"
    tokens.mkdir(exist_ok=True)
    (home / "softhsm2.conf").write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    for name in ("user", "so"):
        pin = secrets_dir / f"{name}.pin"
        if not pin.exists():
            pin.write_text(secrets.token_urlsafe(18))
            pin.chmod(0o600)
    port, metrics_port = free_port(), free_port()
    config = base_config(home, port, metrics_port)
    server = None
    if MODULE.remote:
        server = P11KitServer(home, TOKEN_LABEL)
        _SERVERS.append(server)
        address = {"P11_KIT_SERVER_ADDRESS": server.address}
        config = merge(config, {"hsm": {"environment": address}})
    if mtls:
        config = merge(config, mtls_overrides(home))
    config = merge(config, overrides or {})
    path = home / "signer.toml"
    path.write_text(render_toml(config))
    return Appliance(home, path, config, port, metrics_port, p11kit=server)


MakeAppliance = Callable[..., Appliance]


@pytest.fixture
def make_appliance(tmp_path: Path) -> Iterator[MakeAppliance]:
    """Factory for appliances of one test; every daemon started is stopped afterwards."""
    made: list[Appliance] = []

    def make(
        overrides: dict[str, Any] | None = None,
        name: str = "a",
        start: bool = True,
        token_dir: Path | None = None,
        mtls: bool = False,
    ) -> Appliance:
        appliance = new_appliance(tmp_path / name, overrides, token_dir, mtls)
        made.append(appliance)
        appliance.setup()
        if start:
            appliance.start()
        return appliance

    yield make
    for appliance in made:
        appliance.stop()


@pytest.fixture(scope="session")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One daemon shared by the tests that do not change its keys or kill it."""
    shared = new_appliance(tmp_path_factory.mktemp("shared"))
    shared.setup()
    shared.start()
    yield shared
    shared.stop()
