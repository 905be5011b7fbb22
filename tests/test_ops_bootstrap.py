"""``signer init`` and ``signer config check`` on a production configuration and a real token.

The token is initialised the way a vendor's tool would (``init_token`` in a child process, PINs
read from files), then ``signer init`` runs twice, and the daemon started on the result signs
its audit checkpoints with exactly the key ``init`` exported.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signer.dev.tls import ensure_dev_tls
from tests.conftest import ROOT, free_port, render_toml
from tests.hsm_modules import SOFTHSM_MODULE

TOKEN = "signer-prod"
INIT_TOKEN = """
import sys
from pathlib import Path
from signer.hsm.provision import init_token
module, label, so_file, user_file = sys.argv[1:]
init_token(Path(module), label, Path(so_file).read_text(), Path(user_file).read_text())
"""


def write_csca(path: Path, country: str = "VN") -> None:
    """A self-signed CSCA certificate as the national CSCA would have (CA, keyCertSign)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country),
            x509.NameAttribute(NameOID.COMMON_NAME, "Test CSCA"),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


class Host:
    """A production-like appliance host in a folder: config, PINs, TLS, CSCA, token folder."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.tls = home / "tls"
        ensure_dev_tls(self.tls)
        secrets_dir = home / "secrets"
        secrets_dir.mkdir(mode=0o700)
        for name in ("user", "so"):
            pin = secrets_dir / f"{name}.pin"
            pin.write_text(secrets.token_urlsafe(18))
            pin.chmod(0o600)
        (home / "tokens").mkdir()
        (home / "softhsm2.conf").write_text(
            f"directories.tokendir = {home / 'tokens'}\nobjectstore.backend = file\n"
            "log.level = ERROR\n"
        )
        write_csca(home / "csca.pem")
        (home / "records").mkdir(mode=0o700)
        self.port = free_port()
        self.config: dict[str, Any] = {
            "profiles": ["vaccination"],
            "server": {
                "listen": f"127.0.0.1:{self.port}",
                "tls": {
                    "cert": str(self.tls / "server.pem"),
                    "key": str(self.tls / "server.key"),
                    "client_ca": str(self.tls / "ca.pem"),
                },
            },
            "hsm": {
                "module": str(SOFTHSM_MODULE),
                "token_label": TOKEN,
                "pin_file": str(secrets_dir / "user.pin"),
                "softhsm_conf": str(home / "softhsm2.conf"),
                "workers": 1,
            },
            "keys": {
                "country": "VN",
                "approvals_required": 2,
                "csca_cert": str(home / "csca.pem"),
                "dev": False,
            },
            "audit": {"dir": str(home / "audit" / "log"), "origin": "signer-test-01"},
            "store": {"backend": "directory", "path": str(home / "records")},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "roles": {"issuer": ["CN=issuer"], "auditor": ["CN=auditor"]},
            "officers": {"alice": ["CN=officer"], "bob": ["CN=officer2"]},
        }
        (home / "audit").mkdir(mode=0o700)
        self.path = home / "production.toml"
        self.write()

    def write(self) -> None:
        self.path.write_text(render_toml(self.config))

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.home / "softhsm2.conf")}

    def signer(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "signer.cli", *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def init_token(self) -> None:
        """What the HSM vendor's tool does before signer is involved."""
        so_pin, user_pin = (str(self.home / "secrets" / f"{n}.pin") for n in ("so", "user"))
        subprocess.run(
            [sys.executable, "-c", INIT_TOKEN, str(SOFTHSM_MODULE), TOKEN, so_pin, user_pin],
            env=self.env(),
            cwd=ROOT,
            check=True,
            timeout=60,
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "host")


def field(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.strip().startswith(name):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name!r} in {output}")


def test_init_on_a_fresh_token_twice_and_the_daemon_signs_with_the_exported_key(
    host: Host,
) -> None:
    host.init_token()
    first = host.signer("init", "--config", str(host.path))
    assert first.returncode == 0, first.stderr
    assert f"token {TOKEN!r}: audit key 'signer-audit' created" in first.stdout
    exported = host.home / "audit" / "audit-public-key.pem"
    assert field(first.stdout, "public key") == str(exported)
    pem_bytes = exported.read_bytes()
    assert "next steps:" in first.stdout and "signer keys generate" in first.stdout

    second = host.signer("init", "--config", str(host.path))
    assert second.returncode == 0, second.stderr
    assert "audit key 'signer-audit' exists" in second.stdout
    for name in ("key id", "SHA-256 of its SPKI", "signed-note verifier"):
        assert field(second.stdout, name) == field(first.stdout, name)
    assert exported.read_bytes() == pem_bytes

    daemon = subprocess.Popen(
        [sys.executable, "-m", "signer.cli", "serve", "--config", str(host.path)],
        env=host.env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        connect = ["--target", f"127.0.0.1:{host.port}", "--server-name", "localhost"]
        connect += ["--ca", str(host.tls / "ca.pem"), "--cert", str(host.tls / "auditor.pem")]
        connect += ["--key", str(host.tls / "auditor.key")]
        deadline = time.monotonic() + 60
        answer = host.signer("health", *connect)
        while answer.returncode == 69 and time.monotonic() < deadline:
            time.sleep(0.3)
            answer = host.signer("health", *connect)
        assert answer.returncode == 1, "up, but no profile has a key before the ceremony"
        assert answer.stdout == "NOT_SERVING\n"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    verified = host.signer(
        "audit", "verify", "--dir", str(host.home / "audit" / "log"), "--pubkey", str(exported)
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout and " 0 checkpoints" not in verified.stdout


def test_init_refuses_dev_settings_and_a_token_that_is_not_there(host: Host) -> None:
    missing = host.signer("init", "--config", str(host.path))
    assert missing.returncode == 78
    assert "no initialised token with this label" in missing.stderr and TOKEN in missing.stderr
    assert not (host.home / "audit" / "audit-public-key.pem").exists()

    host.config["keys"]["dev"] = True
    host.write()
    dev = host.signer("init", "--config", str(host.path))
    assert dev.returncode == 78 and "[keys] dev = true" in dev.stderr


def test_config_check_lists_every_problem_of_the_files(host: Host) -> None:
    good = host.signer("config", "check", str(host.path))
    assert good.returncode == 0, good.stderr
    assert "is usable" in good.stdout and "[server.tls]" in good.stdout

    (host.home / "secrets" / "user.pin").chmod(0o644)
    (host.tls / "server.key").unlink()
    (host.home / "audit").rename(host.home / "elsewhere")
    host.config["keys"]["csca_cert"] = str(host.tls / "server.pem")  # not a CA
    host.config["hsm"]["module"] = str(host.home / "libvendor.so")
    host.config["store"]["path"] = str(host.home / "gone" / "records")
    host.write()
    bad = host.signer("config", "check", str(host.path))
    assert bad.returncode == 78 and bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert all(line.startswith(f"signer: {host.path}: ") for line in lines), lines
    for expected in (
        "[hsm] module",
        "PIN file",
        "chmod 600",
        "[server.tls] key",
        "[keys] csca_cert",
        "basicConstraints",
        "[store] path",
        "[audit] dir",
    ):
        assert any(expected in line for line in lines), (expected, lines)
    assert len(lines) == 6, lines


def test_config_check_lists_every_problem_of_the_file_itself(host: Host) -> None:
    text = host.path.read_text()
    host.path.write_text(text.replace("workers = 1", "workers = -1\nspeed = 3"))
    bad = host.signer("config", "check", str(host.path))
    assert bad.returncode == 78
    lines = bad.stderr.splitlines()
    assert any("[hsm.workers]" in line for line in lines), lines
    assert any("hsm.speed" in line for line in lines), lines
