"""A token remembers which record store governs its keys; a daemon pointed elsewhere refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import MakeAppliance, new_appliance


def test_a_second_appliance_on_the_token_must_use_the_same_store(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    first = make_appliance({"store": {"backend": "directory", "path": str(tmp_path / "a")}})
    assert first.signing_key().kid
    home = tmp_path / "b"
    (home / "secrets").mkdir(parents=True, mode=0o700)
    for name in ("user.pin", "so.pin"):
        shutil.copy2(first.home / "secrets" / name, home / "secrets" / name)
    shutil.copy2(first.home / "csca.pem", home / "csca.pem")
    elsewhere = {"store": {"backend": "directory", "path": str(tmp_path / "other")}}
    second = new_appliance(home, elsewhere, token_dir=first.home / "tokens")
    refused = second.cli("serve", "--config", str(second.config_path), check=False, timeout=60)
    assert refused.returncode == 78, refused.stderr
    message = refused.stderr.decode()
    assert "governed by record store" in message and "[store]" in message
    # nothing was created in the other store: no keys, no records
    assert not any((tmp_path / "other" / "key-record").iterdir())
    same = new_appliance(
        tmp_path / "c",
        {"store": {"backend": "directory", "path": str(tmp_path / "a")}},
        token_dir=first.home / "tokens",
    )
    for name in ("user.pin", "so.pin"):
        shutil.copy2(first.home / "secrets" / name, same.home / "secrets" / name)
    shutil.copy2(first.home / "csca.pem", same.home / "csca.pem")
    same.start()
    try:
        assert same.signing_key().kid == first.signing_key().kid
    finally:
        same.stop()
