"""Private keys are made inside the HSM and cannot be read out (real SoftHSM token).

The production worker offers no way to read private attributes; the checks that need one open
their own PKCS#11 session here, as an attacker holding the user PIN would.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.types import SignMixin

from signer.config import Settings, load, read_pin
from signer.errors import InvalidRequest, StoreConflict
from signer.hsm.keystore import private_key_attributes
from signer.hsm.pooled import PooledToken, pooled_token
from signer.sigformat import SignatureEncoding
from signer.store.api import ABSENT, RecordKind
from signer.store.token import TokenRecordStore
from tests.conftest import new_appliance
from tests.test_record_store import check_conditional_writes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    appliance = new_appliance(tmp_path / "hsm")
    appliance.setup()
    return load(appliance.config_path)


@pytest.fixture
def token(settings: Settings) -> Iterator[PooledToken]:
    with pooled_token(settings.hsm, count=1) as pooled:
        yield pooled


@contextlib.contextmanager
def own_session(settings: Settings, rw: bool = False) -> Iterator[pkcs11.Session]:
    """A session of this test process on the appliance's token (module unloaded after): what
    someone holding only the user PIN can do, outside the daemon."""
    for name, value in settings.hsm.environment().items():
        os.environ[name] = value
    lib = pkcs11.lib(str(settings.hsm.module))
    try:
        token = lib.get_token(token_label=settings.hsm.token_label)
        with token.open(rw=rw, user_pin=read_pin(settings.hsm)) as session:
            yield session
    finally:
        pkcs11.unload(str(settings.hsm.module))


def test_generated_key_is_sensitive_and_not_extractable(
    settings: Settings, token: PooledToken
) -> None:
    generated = token.generate_key("extraction-test")
    signature = token.sign(generated.key_id, [b"\x11" * 32], SignatureEncoding.RAW)[0]
    assert len(signature) == 64
    with own_session(settings) as session:
        assert private_key_attributes(session, generated.key_id) == {
            "sensitive": True,
            "extractable": False,
            "always_sensitive": True,
            "never_extractable": True,
            "sign": True,
            "decrypt": False,
            "derive": False,
            "unwrap": False,
            "local": True,
        }
        key = next(
            session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.ID: bytes.fromhex(generated.key_id),
                    Attribute.TOKEN: True,
                }
            )
        )
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]


def test_softhsm_would_sign_any_length_so_the_token_must_check(
    settings: Settings, token: PooledToken
) -> None:
    key_id = token.key_id_by_label("signer-audit")
    with own_session(settings) as session:
        key = next(
            session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.ID: bytes.fromhex(key_id),
                    Attribute.TOKEN: True,
                }
            )
        )
        assert isinstance(key, SignMixin)
        assert len(key.sign(b"\x22" * 20, mechanism=Mechanism.ECDSA)) == 64
    with pytest.raises(InvalidRequest, match="32 bytes"):
        token.sign(key_id, [b"\x22" * 20], SignatureEncoding.RAW)


def test_records_on_the_token_follow_the_store_contract(token: PooledToken) -> None:
    check_conditional_writes(TokenRecordStore(token), RecordKind.CHANGE)


def test_racing_writers_on_the_token_keep_one_consistent_record(settings: Settings) -> None:
    """Two worker processes (two sessions, like two daemons) write one record at once.

    PKCS#11 has no compare-and-swap and SoftHSM shows other processes' new objects late, so
    both may succeed (the token store's docstring says so and points several daemons to the
    directory or PostgreSQL store); what must hold is that nothing fails but by StoreConflict
    and that the record ends as exactly one writer's value, never a mix or a loss.
    """
    with pooled_token(settings.hsm, count=2) as token:
        store = TokenRecordStore(token)
        for round_ in range(10):
            name = f"race{round_}"
            store.put(RecordKind.CHANGE, name, ABSENT, b"start")
            with ThreadPoolExecutor(2) as threads:
                results = list(threads.map(partial(_try_put, store, name), range(2)))
            winners = [i for i, won in enumerate(results) if won]
            final = store.load_all(RecordKind.CHANGE)[name]
            if not winners:
                assert (final.generation, final.value) == (1, b"start")
            else:
                assert final.generation == 2
                assert final.value in {f"w{i}".encode() for i in winners}


def _try_put(store: TokenRecordStore, name: str, index: int) -> bool:
    try:
        store.put(RecordKind.CHANGE, name, 1, f"w{index}".encode())
        return True
    except StoreConflict:
        return False
