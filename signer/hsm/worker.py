"""The signing worker process: one ``C_Initialize``, one login, one session, one thread.

A worker answers jobs sent over a pipe by :class:`signer.hsm.pool.WorkerPool`. Each job is
``(job_id, call)``, where ``call`` is a :class:`~signer.hsm.session.TokenSession` method bound
to its arguments; each answer is ``(job_id, ok, value_or_error)``. Only the worker's main
thread touches PKCS#11 (DESIGN.md §3.1). Its first message says whether it started:
``(READY, WorkerStarted)`` or ``(FAILED, SignerError)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pkcs11
from pkcs11.exceptions import PKCS11Error

from signer.config import HsmSettings
from signer.errors import HsmError, HsmUnavailable, SignerError
from signer.hsm.calibrate import Calibration
from signer.hsm.session import TokenSession, call_name
from signer.hsm.token import check_signing_mechanism, load_module, open_session

READY = "ready"
FAILED = "failed"


@dataclass(frozen=True)
class WorkerStarted:
    """A worker is logged in; ``calibration`` is there when it was asked to measure."""

    pid: int
    calibration: Calibration | None = None


def worker_main(conn: Connection, settings: HsmSettings, calibrate: bool = False) -> None:
    """Entry point of a worker process (started with the ``spawn`` method)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        lib = load_module(settings)
        session = open_session(settings, lib)
    except SignerError as exc:
        conn.send((FAILED, exc))
        return
    try:
        check_signing_mechanism(settings, session)
        token = TokenSession(session, settings)
        measured = token.calibrate() if calibrate else None
    except SignerError as exc:
        conn.send((FAILED, exc))
        _close(session, settings)
        return
    conn.send((READY, WorkerStarted(os.getpid(), measured)))
    try:
        _serve(conn, token)
    finally:
        with contextlib.suppress(PKCS11Error):
            token.close()
        _close(session, settings)


def _close(session: pkcs11.Session, settings: HsmSettings) -> None:
    with contextlib.suppress(PKCS11Error):
        session.close()
    pkcs11.unload(str(settings.module))


def _serve(conn: Connection, token: TokenSession) -> None:
    """Answer jobs until the pipe closes, or until the HSM became unavailable to this process:
    then the worker answers and ends, and the pool starts a new one (new C_Initialize, login
    and session), since a session that lost its token may never see it again."""
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        job_id, call = job
        try:
            answer: tuple[int, bool, Any] = (job_id, True, call(token))
        except SignerError as exc:
            answer = (job_id, False, exc)
        except Exception as exc:
            # A worker reports unexpected errors; it does not die of them.
            failure = HsmError(f"{call_name(call)} failed in the HSM worker: {type(exc).__name__}")
            answer = (job_id, False, failure)
        try:
            conn.send(answer)
        except (BrokenPipeError, EOFError, OSError):
            return  # the daemon is gone; nobody is waiting for this answer
        if isinstance(answer[2], HsmUnavailable):
            return
