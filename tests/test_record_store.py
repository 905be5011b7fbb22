"""The record-store contract for every backend that runs without an HSM (a dict, a folder and a
real PostgreSQL server), atomicity under racing writers, the store id, and open_store over a
real SoftHSM token; the token backend's own contract runs in test_hsm_keys.py."""

from __future__ import annotations

import multiprocessing
import re
import secrets
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from psycopg.conninfo import make_conninfo

from signer.config import StoreBackend, StoreSettings, load
from signer.errors import ConfigError, InvalidRequest, StoreConflict, StoreUnavailable
from signer.hsm.pooled import pooled_token
from signer.service.status import status_code
from signer.store.api import ABSENT, RecordKind, RecordStore
from signer.store.directory import DirectoryRecordStore
from signer.store.postgresql import PostgresRecordStore
from signer.store.select import open_store
from signer.store.token import STORE_ID_APPLICATION, TokenRecordStore
from tests.conftest import new_appliance
from tests.memory_boundary import MemoryRecordStore
from tests.pg_server import MissingPostgres, PostgresServer, running_postgres

Opener = Callable[[Path], RecordStore]
"""Opens the store kept at a place: the same place gives the same store, as to two daemons."""


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        with running_postgres() as server:
            yield server
    except MissingPostgres as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(params=["memory", "directory", "postgresql"])
def opener(request: pytest.FixtureRequest) -> Iterator[Opener]:
    if request.param == "memory":
        yield lambda place: MemoryRecordStore()
    elif request.param == "directory":
        yield lambda place: DirectoryRecordStore(place / "store")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        opened: list[PostgresRecordStore] = []

        def open_postgres(place: Path) -> RecordStore:
            opened.append(PostgresRecordStore(server.dsn_for(place), server.password_file))
            return opened[-1]

        yield open_postgres
        for store in opened:
            store.close()


@pytest.fixture
def store(opener: Opener, tmp_path: Path) -> RecordStore:
    return opener(tmp_path)


def test_conditional_writes_and_deletes(store: RecordStore) -> None:
    check_conditional_writes(store, RecordKind.KEY)


def check_conditional_writes(store: RecordStore, kind: RecordKind) -> None:
    """The contract every backend keeps, on a kind that starts empty."""
    assert store.load_all(kind) == {}
    assert store.put(kind, "a1", ABSENT, b"one") == 1
    with pytest.raises(StoreConflict, match="expected generation 0, found 1"):
        store.put(kind, "a1", ABSENT, b"again")
    assert store.put(kind, "a1", 1, b"two") == 2
    with pytest.raises(StoreConflict):
        store.put(kind, "a1", 1, b"stale")
    record = store.load_all(kind)["a1"]
    assert (record.name, record.generation, record.value) == ("a1", 2, b"two")
    with pytest.raises(StoreConflict):
        store.delete(kind, "a1", 1)
    store.delete(kind, "a1", 2)
    with pytest.raises(StoreConflict):
        store.delete(kind, "a1", 2)
    assert store.load_all(kind) == {}


def test_kinds_are_separate_namespaces(store: RecordStore) -> None:
    store.put(RecordKind.KEY, "same", ABSENT, b"key")
    store.put(RecordKind.CSR, "same", ABSENT, b"csr")
    assert store.load_all(RecordKind.KEY)["same"].value == b"key"
    assert store.load_all(RecordKind.CSR)["same"].value == b"csr"
    assert store.load_all(RecordKind.CHANGE) == {}


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 200, "nul\x00"])
def test_unsafe_names_are_refused(store: RecordStore, name: str) -> None:
    with pytest.raises(InvalidRequest, match="record name"):
        store.put(RecordKind.KEY, name, ABSENT, b"v")
    assert store.load_all(RecordKind.KEY) == {}


def test_the_store_id_is_random_stable_and_no_record(store: RecordStore) -> None:
    store_id = store.store_id()
    assert re.fullmatch("[0-9a-f]{32}", store_id)
    assert store.store_id() == store_id
    assert all(store.load_all(kind) == {} for kind in RecordKind)


@pytest.mark.parametrize("opener", ["directory", "postgresql"], indirect=True)
def test_a_store_is_the_same_for_everyone_opening_its_place(opener: Opener, tmp_path: Path) -> None:
    first = opener(tmp_path / "a")
    first.put(RecordKind.KEY, "k", ABSENT, b"written by the first daemon")
    again = opener(tmp_path / "a")
    assert again.load_all(RecordKind.KEY)["k"].value == b"written by the first daemon"
    assert again.store_id() == first.store_id()
    other = opener(tmp_path / "b")
    assert other.store_id() != first.store_id()
    assert other.load_all(RecordKind.KEY) == {}


def _race(root: str, index: int) -> bool:
    try:
        DirectoryRecordStore(Path(root)).put(RecordKind.CHANGE, "c", 1, f"w{index}".encode())
        return True
    except StoreConflict:
        return False


def test_directory_store_lets_one_of_many_processes_win(tmp_path: Path) -> None:
    store = DirectoryRecordStore(tmp_path / "shared")
    store.put(RecordKind.CHANGE, "c", ABSENT, b"start")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        wins = pool.starmap(_race, [(str(tmp_path / "shared"), i) for i in range(8)])
    assert wins.count(True) == 1
    final = store.load_all(RecordKind.CHANGE)["c"]
    assert final.generation == 2 and final.value == f"w{wins.index(True)}".encode()
    assert sorted(p.name for p in (tmp_path / "shared" / "pending-change").iterdir()) == ["c"]


@pytest.mark.parametrize("expected", [ABSENT, 1], ids=["create", "update"])
def test_postgresql_store_lets_one_of_many_connections_win(
    postgres: PostgresServer, tmp_path: Path, expected: int
) -> None:
    """Eight writers, each with its own connection (a server process of its own), released
    together by a barrier, write the same record from the same generation, ten times over."""
    dsn = postgres.dsn_for(tmp_path)
    writers = [PostgresRecordStore(dsn, postgres.password_file) for _ in range(8)]
    try:
        for round_ in range(10):
            name = f"race{round_}"
            if expected != ABSENT:
                writers[0].put(RecordKind.CHANGE, name, ABSENT, b"start")
            barrier = threading.Barrier(len(writers))

            def write(index: int, name: str = name, barrier: threading.Barrier = barrier) -> bool:
                barrier.wait()
                try:
                    writers[index].put(RecordKind.CHANGE, name, expected, f"w{index}".encode())
                    return True
                except StoreConflict:
                    return False

            with ThreadPoolExecutor(len(writers)) as threads:
                wins = list(threads.map(write, range(len(writers))))
            assert wins.count(True) == 1
            final = writers[0].load_all(RecordKind.CHANGE)[name]
            assert (final.generation, final.value) == (
                expected + 1,
                f"w{wins.index(True)}".encode(),
            )
    finally:
        for writer in writers:
            writer.close()


def test_a_refused_password_appears_in_no_error(postgres: PostgresServer, tmp_path: Path) -> None:
    wrong = "Wr0ng-" + secrets.token_urlsafe(12)
    password_file = tmp_path / "password"
    password_file.write_text(wrong + "\n")
    password_file.chmod(0o600)
    with pytest.raises(StoreUnavailable) as caught:
        PostgresRecordStore(postgres.dsn(), password_file)
    message = str(caught.value)
    assert "password authentication failed" in message
    assert f"PostgreSQL host={postgres.socket_dir} dbname=signer user=signer" in message
    assert status_code(caught.value) is grpc.StatusCode.UNAVAILABLE
    shown = "".join(traceback.format_exception(caught.value))
    assert wrong not in shown and postgres.password not in shown


def test_an_unreachable_server_is_named_without_the_password(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    nowhere = tmp_path / "no-server-here"
    dsn = make_conninfo(postgres.dsn(), host=str(nowhere))
    with pytest.raises(StoreUnavailable) as caught:
        PostgresRecordStore(dsn, postgres.password_file)
    assert f"PostgreSQL host={nowhere} dbname=signer" in str(caught.value)
    assert postgres.password not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    "dsn", ["host=db password=hunter2 dbname=signer", "postgresql://signer:hunter2@db/signer"]
)
def test_a_password_in_the_dsn_is_refused_unquoted(dsn: str) -> None:
    with pytest.raises(ConfigError, match="must not contain the password") as caught:
        PostgresRecordStore(dsn)
    assert "hunter2" not in str(caught.value)


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    application = "lost-connection-test"
    dsn = make_conninfo(postgres.dsn_for(tmp_path), application_name=application)
    store = PostgresRecordStore(dsn, postgres.password_file)
    try:
        store.put(RecordKind.KEY, "k", ABSENT, b"kept")
        with postgres.admin() as db:
            ended = db.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (application,),
            ).fetchall()
        assert ended == [(True,)]
        with pytest.raises(StoreUnavailable, match="the next request connects again"):
            store.load_all(RecordKind.KEY)
        assert store.load_all(RecordKind.KEY)["k"].value == b"kept"
        assert store.put(RecordKind.KEY, "k", 1, b"after") == 2
    finally:
        store.close()


def test_open_store_builds_the_configured_backend(postgres: PostgresServer, tmp_path: Path) -> None:
    """Through one real SoftHSM token: the token backend keeps its id in a data object of its
    own, and every backend open_store builds has its own id."""
    appliance = new_appliance(tmp_path / "hsm")
    appliance.setup()
    settings = load(appliance.config_path)
    with pooled_token(settings.hsm, count=1) as token:
        on_token = open_store(settings, token)
        assert isinstance(on_token, TokenRecordStore)
        token_id = on_token.store_id()
        assert open_store(settings, token).store_id() == token_id
        assert set(token.data_objects(STORE_ID_APPLICATION)) == {"store-id"}
        assert len(on_token.load_all(RecordKind.KEY)) == len(settings.profiles)
        in_folder = open_store(
            replace(settings, store=StoreSettings(StoreBackend.DIRECTORY, path=tmp_path / "r")),
            token,
        )
        assert isinstance(in_folder, DirectoryRecordStore)
        in_database = open_store(
            replace(
                settings,
                store=StoreSettings(
                    StoreBackend.POSTGRESQL,
                    dsn=postgres.dsn_for(tmp_path),
                    password_file=postgres.password_file,
                ),
            ),
            token,
        )
        assert isinstance(in_database, PostgresRecordStore)
        in_database.close()
        ids = {token_id, in_folder.store_id(), in_database.store_id()}
        assert len(ids) == 3


def test_dev_setup_keeps_key_records_in_the_configured_database(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = postgres.dsn_for(tmp_path)
    store_table = {
        "backend": "postgresql",
        "dsn": dsn,
        "password_file": str(postgres.password_file),
    }
    appliance = new_appliance(tmp_path / "hsm", overrides={"store": store_table})
    appliance.setup()
    settings = load(appliance.config_path)
    database = PostgresRecordStore(dsn, postgres.password_file)
    try:
        assert len(database.load_all(RecordKind.KEY)) == len(settings.profiles)
    finally:
        database.close()
    with pooled_token(settings.hsm, count=1) as token:
        assert TokenRecordStore(token).load_all(RecordKind.KEY) == {}
