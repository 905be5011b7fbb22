"""Records in one PostgreSQL table, shared by appliances on several hosts.

The table is created on first use when missing; a DBA may create it beforehand and grant the
daemon's role only SELECT, INSERT, UPDATE and DELETE on it::

    CREATE TABLE signer_records (
        kind text NOT NULL, name text NOT NULL,
        generation bigint NOT NULL, value bytea NOT NULL,
        PRIMARY KEY (kind, name));

Every conditional write is one statement in its own transaction: ``INSERT ... ON CONFLICT DO
NOTHING`` creates a record only where none exists, ``UPDATE ... WHERE generation = expected``
moves one on only from the generation its writer read. Under READ COMMITTED a second UPDATE of
the same row waits for the first to commit, checks its condition again against the new row and
matches nothing, so of several racing writers exactly one wins. The store id is the row
``('store-id', 'store-id')``, of a kind no record has.

The password comes from a private file, read again at every connection so that it can be
rotated, and handed to libpq directly: it is never in the connection string, argv or a message.
A lost connection fails the call that found it with :class:`StoreUnavailable`; the next call
connects again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.rows import TupleRow

from signer.config import read_store_password
from signer.errors import StoreUnavailable
from signer.store.api import ABSENT, RecordKind, StoredRecord, check_name, conflict, new_store_id
from signer.store.dsn import describe, parse_dsn

_TABLE: Final = "signer_records"
# No RecordKind has this value, so load_all never returns the store id's row.
_STORE_ID_KIND = "store-id"
# Serialises CREATE TABLE among daemons starting at once ("SIGN" in ASCII).
_CREATE_LOCK = 0x5349474E
_DEFAULTS: Final = {"connect_timeout": "10", "application_name": "signer-record-store"}

_CREATE = """
CREATE TABLE IF NOT EXISTS signer_records (
    kind text NOT NULL,
    name text NOT NULL,
    generation bigint NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (kind, name)
)"""
_SELECT_KIND = "SELECT name, generation, value FROM signer_records WHERE kind = %s"
_SELECT_ONE = "SELECT generation, value FROM signer_records WHERE kind = %s AND name = %s"
_INSERT = """
INSERT INTO signer_records (kind, name, generation, value) VALUES (%s, %s, 1, %s)
ON CONFLICT (kind, name) DO NOTHING
RETURNING generation"""
_UPDATE = """
UPDATE signer_records SET generation = generation + 1, value = %s
WHERE kind = %s AND name = %s AND generation = %s
RETURNING generation"""
_DELETE = """
DELETE FROM signer_records WHERE kind = %s AND name = %s AND generation = %s
RETURNING generation"""


class PostgresRecordStore:
    """:class:`~signer.store.api.RecordStore` in a PostgreSQL table; safe to share by threads.

    ``dsn`` is a libpq connection string without the password; ``password_file`` (mode 600)
    holds the password when the server asks for one. Connects at once, so that a wrong address
    fails at start.
    """

    def __init__(self, dsn: str, password_file: Path | None = None) -> None:
        params = parse_dsn(dsn)
        self._dsn = dsn
        self._defaults = {key: value for key, value in _DEFAULTS.items() if key not in params}
        self._where = describe(params)
        self._password_file = password_file
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[TupleRow] | None = None
        with self._session():
            pass

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        """See :meth:`signer.store.api.RecordStore.load_all`."""
        with self._session() as db:
            rows = db.execute(_SELECT_KIND, (kind.value,)).fetchall()
        return {
            name: StoredRecord(name, generation, bytes(value)) for name, generation, value in rows
        }

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        """See :meth:`signer.store.api.RecordStore.put`."""
        check_name(name)
        with self._session() as db:
            if expected_generation == ABSENT:
                row = db.execute(_INSERT, (kind.value, name, value)).fetchone()
            else:
                row = db.execute(_UPDATE, (value, kind.value, name, expected_generation)).fetchone()
            if row is None:
                found = self._generation(db, kind.value, name)
                raise conflict(f"{kind.value}/{name}", expected_generation, found)
        return int(row[0])

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        """See :meth:`signer.store.api.RecordStore.delete`."""
        check_name(name)
        with self._session() as db:
            row = db.execute(_DELETE, (kind.value, name, expected_generation)).fetchone()
            if row is None:
                found = self._generation(db, kind.value, name)
                raise conflict(f"{kind.value}/{name}", expected_generation, found)

    def store_id(self) -> str:
        """See :meth:`signer.store.api.RecordStore.store_id`; a row of a kind of its own."""
        key = (_STORE_ID_KIND, _STORE_ID_KIND)
        with self._session() as db:
            db.execute(_INSERT, (*key, new_store_id().encode("ascii")))
            row = db.execute(_SELECT_ONE, key).fetchone()
        if row is None:
            raise StoreUnavailable(f"the store id row in {self._where} vanished as it was read")
        return bytes(row[1]).decode("ascii", "replace")

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        with self._lock:
            self._drop()

    @staticmethod
    def _generation(db: psycopg.Connection[TupleRow], kind: str, name: str) -> int:
        row = db.execute(_SELECT_ONE, (kind, name)).fetchone()
        return ABSENT if row is None else int(row[0])

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """The connection, opened if there is none; any database error drops it."""
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connect()
                    self._create_table(self._connection)
                yield self._connection
            except psycopg.Error as exc:
                self._drop()
                raise self._unavailable(exc) from None

    def _connect(self) -> psycopg.Connection[TupleRow]:
        password = None
        settings: dict[str, Any] = dict(self._defaults)
        if self._password_file is not None:
            password = settings["password"] = read_store_password(self._password_file)
        try:
            return psycopg.connect(self._dsn, autocommit=True, **settings)
        except psycopg.Error as exc:
            raise self._unavailable(exc, password) from None

    @staticmethod
    def _create_table(db: psycopg.Connection[TupleRow]) -> None:
        found = db.execute("SELECT to_regclass(%s)", (_TABLE,)).fetchone()
        if found is not None and found[0] is not None:
            return
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            db.execute(_CREATE)

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
            self._connection = None

    def _unavailable(self, exc: psycopg.Error, password: str | None = None) -> StoreUnavailable:
        detail = str(exc)
        if password:
            detail = detail.replace(password, "***")
        return StoreUnavailable(
            f"record store {self._where} failed: {' '.join(detail.split())};"
            " the next request connects again"
        )
