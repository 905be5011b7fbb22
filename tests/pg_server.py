"""A real PostgreSQL server for the tests, from Debian's binaries, in a temporary folder.

It listens only on a unix socket in its own folder (no TCP port to collide with), requires a
password (SCRAM) from every client, and runs as the ``postgres`` system user when the tests run
as root, because ``initdb`` refuses root. ``./softhsm_setup.sh --test-tools`` installs it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

USER = "signer"
DATABASE = "signer"
_SERVICE_ACCOUNT = "postgres"
_MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin;"
    " run ./softhsm_setup.sh --test-tools, which installs the Debian package postgresql"
)


class MissingPostgres(RuntimeError):
    """The server binaries the record-store tests need are not installed."""


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not found:
        raise MissingPostgres(_MISSING)
    return Path(found[-1]).parent


class PostgresServer:
    """One running server: connection strings for its schemas and a password file for them."""

    def __init__(self, home: Path, bin_dir: Path, account: str | None) -> None:
        self.home = home
        self.data = home / "data"
        self.socket_dir = home
        self.password = secrets.token_urlsafe(18)
        self.password_file = home / "client-password"
        self._bin = bin_dir
        self._account = account

    def _run(self, *args: str | Path) -> None:
        extra: dict[str, Any] = {}
        if self._account is not None:
            extra = {"user": self._account, "group": pwd.getpwnam(self._account).pw_gid}
        done = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, check=False, **extra
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        """initdb, configure the socket, start, create the test database."""
        self._hand_over(self.home)
        init_password = self.home / "init-password"
        init_password.write_text(self.password + "\n", encoding="utf-8")
        init_password.chmod(0o600)
        self._hand_over(init_password)
        self._run(
            self._bin / "initdb",
            "--pgdata",
            self.data,
            "--username",
            USER,
            "--auth",
            "scram-sha-256",
            "--pwfile",
            init_password,
            "--encoding",
            "UTF8",
            "--no-instructions",
        )
        init_password.unlink()
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        log = self.home / "log"
        self._run(self._bin / "pg_ctl", "--pgdata", self.data, "--log", log, "--wait", "start")
        self.password_file.write_text(self.password + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)
        with self.admin("postgres") as db:
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended)."""
        self._run(self._bin / "pg_ctl", "--pgdata", self.data, "--mode", "fast", "--wait", "stop")

    def start_again(self) -> None:
        """Start a server stopped with :meth:`stop` again: same data, socket and password."""
        log = self.home / "log"
        self._run(self._bin / "pg_ctl", "--pgdata", self.data, "--log", log, "--wait", "start")

    def _hand_over(self, path: Path) -> None:
        if self._account is not None:
            account = pwd.getpwnam(self._account)
            os.chown(path, account.pw_uid, account.pw_gid)

    def dsn(self, **settings: str) -> str:
        """A connection string to the test database without the password."""
        return make_conninfo(host=str(self.socket_dir), dbname=DATABASE, user=USER, **settings)

    def dsn_for(self, place: Path) -> str:
        """A connection string whose search path is a schema of its own for ``place``: two
        places are two separate stores in one database, one place is always the same."""
        schema = "s_" + hashlib.sha256(str(place).encode()).hexdigest()[:20]
        with self.admin() as db:
            db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        return self.dsn(options=f"-c search_path={schema}")

    @contextmanager
    def admin(self, database: str = DATABASE) -> Iterator[psycopg.Connection[Any]]:
        """A superuser connection of the test itself, in autocommit mode."""
        dsn = make_conninfo(host=str(self.socket_dir), dbname=database, user=USER)
        with psycopg.connect(dsn, password=self.password, autocommit=True) as db:
            yield db


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server in a fresh folder under /tmp (short enough for a socket path) and stop
    and remove it afterwards."""
    bin_dir = _bin_dir()
    account = None
    home = Path(tempfile.mkdtemp(prefix="signer-pg-"))
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVICE_ACCOUNT)
        except KeyError:
            raise MissingPostgres(
                f"tests run as root but there is no '{_SERVICE_ACCOUNT}' account to run"
                f" initdb as; {_MISSING}"
            ) from None
        account = _SERVICE_ACCOUNT
    server = PostgresServer(home, bin_dir, account)
    try:
        server.start()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
