"""The release artefacts: ``make dist`` builds a wheel and an sdist, the wheel installs into a
fresh venv the way deploy/README.md says, and the installed ``signer`` runs from there alone.
The OCI recipe keeps the properties the deployment docs promise.

Building and installing needs the package index pip is configured with (PyPI or a mirror):
the build backend and the dependencies come from there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import ROOT

CONTAINERFILE = ROOT / "deploy" / "Containerfile"


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def _source_copy(target: Path) -> Path:
    """The source tree without local state, so that building writes nothing into the real one."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv", "data", "out", "dist", "build", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(ROOT, target, ignore=ignored, symlinks=True)
    return target


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_wheel_installs_into_a_fresh_venv_and_signer_runs_from_it(tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dist = tmp_path / "dist"
    source = _source_copy(tmp_path / "source")
    env = _clean_env()
    _run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=source, env=env)
    wheel = dist / f"signer-{version}-py3-none-any.whl"
    sdist = dist / f"signer-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("signer/cli.py", "signer/v1/audit_pb2.py", "signer/ops/bootstrap.py"):
        assert module in names, module
    assert "signer/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for release_file in ("protos/signer/v1/audit.proto", "hsm_config/production.toml"):
        assert release_file in members, release_file
    assert "deploy/systemd/signer.service" in members and "deploy/Containerfile" in members

    venv = tmp_path / "opt-signer" / ".venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    helped = _run(venv / "bin" / "signer", "--help", cwd=elsewhere, env=env)
    for command in ("serve", "init", "config", "health", "audit", "keys", "dcc"):
        assert re.search(rf"^\s+{command}\b", helped, flags=re.MULTILINE), command
    assert _run(venv / "bin" / "signer", "--version", cwd=elsewhere, env=env).strip() == (
        f"signer {version}"
    )
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import signer; print(signer.__file__)",
        cwd=elsewhere,
        env=env,
    )
    assert Path(where.strip()).is_relative_to(venv), where


def test_the_container_recipe_runs_the_wheel_as_a_non_root_user_with_mounts() -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    instructions = [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    users = [line.split(None, 1)[1] for line in instructions if line.startswith("USER ")]
    assert users, "no USER: the daemon would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users
    copies = [line for line in instructions if line.startswith("COPY ") and "--from" not in line]
    assert copies == ["COPY dist/signer-*.whl /tmp/dist/"], "only the wheel goes into the image"
    assert 'ENTRYPOINT ["/opt/signer/.venv/bin/signer"]' in instructions
    assert 'CMD ["serve", "--config", "/etc/signer/signer.toml"]' in instructions
    for secret in ("user.pin", ".key", "signer.toml"):
        assert not any(secret in line for line in copies), f"{secret} must be mounted, not baked"
    assert "--read-only" in text, "the run example must use a read-only root filesystem"
