"""The test suite's temp folders (SoftHSM tokens, PIN files) do not outlive the run that made
them: pytest's retention settings in pyproject.toml and :mod:`tests.tmp_retention`, exercised
in separate pytest sessions."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LEAVES_A_PIN = """
def test_makes_a_token(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "user.pin").write_text("not-a-real-pin")
    assert {FAIL}
"""


def _session(folder: Path, temproot: Path, fail: bool) -> int:
    test = folder / "test_leaves_a_pin.py"
    test.write_text(LEAVES_A_PIN.replace("{FAIL}", "False" if fail else "True"))
    plugins = ["-p", "no:cacheprovider", "-p", "tests.tmp_retention"]
    config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(folder)]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, *config, str(test)],
        env={**os.environ, "PYTEST_DEBUG_TEMPROOT": str(temproot), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode


def _pins(temproot: Path) -> list[Path]:
    return sorted(temproot.rglob("user.pin"))


def test_pin_files_of_a_run_are_gone_after_it_and_kept_only_for_failures(tmp_path: Path) -> None:
    temproot = tmp_path / "temproot"
    running = temproot / f"pytest-of-{getpass.getuser()}" / "pytest-90"
    running.mkdir(parents=True)  # a run of someone else that is still going (locked)
    (running / ".lock").write_text("4242")
    (running / "user.pin").write_text("theirs")
    assert _session(tmp_path, temproot, fail=False) == 0
    assert _pins(temproot) == [running / "user.pin"], "a passing run leaves no PIN file"
    assert _session(tmp_path, temproot, fail=True) == 1
    assert len(_pins(temproot)) == 2, "a failed test keeps its folder for debugging"
    assert _session(tmp_path, temproot, fail=False) == 0
    assert _pins(temproot) == [running / "user.pin"], "the next run removes what a failed run kept"
