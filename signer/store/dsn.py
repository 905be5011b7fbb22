"""PostgreSQL connection strings as the configuration holds them: without the password.

libpq itself reads the string (key=value pairs or a ``postgresql://`` URI), so signer accepts
exactly what ``psql`` would; only the parts that name the server are ever shown.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from signer.errors import ConfigError

_SHOWN = ("host", "hostaddr", "port", "dbname", "user")


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` is no usable connection string for the store, or None; never quotes it."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "is not a PostgreSQL connection string (key=value pairs or a postgresql:// URI)"
    if "password" in params:
        return "must not contain the password; put it in password_file (mode 600)"
    return None


def parse_dsn(dsn: str) -> dict[str, str]:
    """The settings of a connection string, or :class:`ConfigError` as :func:`dsn_problem`."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise ConfigError(f"the record store's dsn {problem}")
    return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}


def describe(params: dict[str, str]) -> str:
    """The server a connection string names, fit for messages and logs."""
    shown = [f"{key}={params[key]}" for key in _SHOWN if key in params]
    return "PostgreSQL " + (" ".join(shown) if shown else "(libpq defaults)")
