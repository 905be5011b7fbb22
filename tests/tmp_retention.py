"""Temp folders of earlier test runs (SoftHSM tokens, PIN files) go when a new run starts.

pytest (``tmp_path_retention_policy = "failed"`` in pyproject.toml) removes a passing run's
folders when it ends and keeps a failed test's folder for debugging; this removes what earlier
runs kept, once a new run starts. A folder whose run is still going (pytest's lock file in it,
younger than pytest's own three-day limit) stays: several people may run tests at once.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator

import pytest

LOCK_FILE = ".lock"
LOCK_TIMEOUT_SECONDS = 3 * 24 * 3600
_RUN_FOLDER = re.compile(r"pytest-\d+")


@pytest.fixture(scope="session", autouse=True)
def forget_earlier_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remove the finished earlier runs' folders beside this run's (pytest-managed) folder."""
    current = tmp_path_factory.getbasetemp()
    if _RUN_FOLDER.fullmatch(current.name):
        for folder in current.parent.iterdir():
            if folder == current or folder.is_symlink() or not _RUN_FOLDER.fullmatch(folder.name):
                continue
            lock = folder / LOCK_FILE
            if lock.exists() and time.time() - lock.stat().st_mtime < LOCK_TIMEOUT_SECONDS:
                continue
            shutil.rmtree(folder, ignore_errors=True)
    yield
