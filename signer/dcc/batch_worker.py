"""The work of batch issuance on one chunk of input lines, in a worker process or in-line.

A :class:`ChunkWorker` turns a :class:`Chunk` (numbered input lines) into a
:class:`ChunkResult` (output lines, UVCI lines, counts) in two steps: :meth:`~ChunkWorker.prepare`
(parse, validate, build the CBOR and the digest: CPU) and :meth:`~ChunkWorker.complete` (sign
remotely, check the sampled signatures, encode COSE/zlib/base45, QR images: a wait, then CPU).
:func:`run_pipelined` prepares chunk *n + 1* while chunk *n* is being signed, so every worker
keeps one signing request in flight. A bad line becomes an error line; a problem that no line
can escape (the daemon unreachable after the retries, a refusal, a signature that does not
verify) becomes a :class:`Stop` for the whole chunk, which is then not written.

:func:`worker_main` is the entry point of a worker process: it makes its own signer (its own
gRPC channel, never one inherited from the parent) with the factory it was given, and exits
when its parent dies.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Protocol, TypeVar

from signer.cli_exit import UsageError
from signer.dcc.batch_output import (
    error_line,
    issued_line,
    line_sha256,
    qr_name,
    uvci_line_of,
)
from signer.dcc.errors import DccError, DccRecordError
from signer.dcc.issue import (
    DEFAULT_CHUNK_SIZE,
    ChunkSigner,
    IssuingKey,
    PreparedCertificate,
    RotatingSigner,
    SignatureMismatch,
    finish_one,
    prepare_one,
    profile_for,
)
from signer.dcc.qr import write_qr
from signer.dcc.sigcheck import DEFAULT_SAMPLE_RATE, SignatureCheck
from signer.dcc.value_sets import ValueSets
from signer.errors import ConfigError, SignerError

MAX_LINE_BYTES = 64 * 1024
"""Longest input line read; a record is well under 1 KiB and a certificate must fit one QR
code (about 2.4 kB of text), so a longer line is refused unread."""
MAX_CHUNK_SIZE = 10_000
DEFAULT_RETRY_SECONDS = 60.0
RETRYABLE_STATUSES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"}
)
"""Statuses a chunk is retried after. CANCELLED is among them because the batch never cancels
a call itself (Ctrl-C is a flag its loops check): a CANCELLED call is a daemon that went away
in the middle of it (seen when a daemon restarts under a running batch)."""
_FIRST_RETRY_DELAY = 0.5
_MAX_RETRY_DELAY = 8.0
_T = TypeVar("_T")


class Flag(Protocol):
    """A ``threading.Event`` or ``multiprocessing.Event``."""

    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class BatchOptions:
    """How a batch is issued; every worker process gets a copy, so it holds no open objects."""

    profile: str | None = None
    """Refuse records of any other kind (default: each record's kind picks its profile)."""
    issuer_country: str | None = None
    """CWT ``iss`` and UVCI country (default: the DSC's subject C)."""
    validity: dt.timedelta | None = None
    allow_dose_beyond_series: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Input lines per chunk: one signing request per profile present in it."""
    check_rate: float = DEFAULT_SAMPLE_RATE
    """Share of signatures checked against the DSC besides the first of each kid."""
    qr_dir: Path | None = None
    qr_format: str = "png"
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    """How long a chunk keeps retrying a daemon that was reached before and is now unavailable."""
    value_sets: Path | None = None
    """Folder of eHN value-set files (default: the shipped copy)."""
    national_codes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be 1 to {MAX_CHUNK_SIZE}")
        if not (math.isfinite(self.retry_seconds) and self.retry_seconds >= 0):
            raise ValueError("retry_seconds must be >= 0")
        SignatureCheck(self.check_rate)
        qr_name(1, self.qr_format)

    def load_value_sets(self) -> ValueSets:
        """The value sets records are checked against."""
        return ValueSets.load(self.value_sets, self.national_codes)


@dataclass(frozen=True)
class Chunk:
    """Consecutive non-blank input lines: ``(line number, line without its line break)``.

    A line longer than :data:`MAX_LINE_BYTES` is given cut to ``MAX_LINE_BYTES + 1`` bytes,
    with the ``line_sha256`` of all of it in ``overlong``.
    """

    index: int
    lines: list[tuple[int, bytes]]
    end_offset: int = 0
    """Input file offset just after the chunk's last line (for progress)."""
    overlong: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    """Why a chunk was not issued; the batch stops before it."""

    message: str
    status: str | None = None
    """The gRPC status name when the daemon refused or could not be reached."""
    usage: bool = False
    """A problem of the options or the input as a whole (exit code 2)."""
    config: bool = False
    """The configuration or a file it names is unusable (exit code 78)."""
    abandoned: bool = False
    """Given up because another chunk had stopped the batch, not a failure of its own."""
    trace: str | None = None
    """The traceback of an unexpected error (a bug)."""


@dataclass
class ChunkResult:
    """What a chunk adds to the output, or why it cannot."""

    index: int
    last_line: int
    end_offset: int = 0
    out_text: str = ""
    uvci_text: str = ""
    lines: int = 0
    issued: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    checked: int = 0
    notes: list[str] = field(default_factory=list)
    stop: Stop | None = None


class _LineRefused(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


class _UsageProblem(DccError):
    """The options cannot work with the signer's keys (e.g. no country for the UVCIs)."""


@dataclass
class _Line:
    position: int
    number: int
    sha: str
    cert: PreparedCertificate | None = None
    refused: _LineRefused | None = None


@dataclass
class PreparedChunk:
    """A chunk whose valid lines are ready for signing."""

    chunk: Chunk
    lines: list[_Line]


class ChunkWorker:
    """Prepares and completes chunks with one signer (one key per profile, asked lazily).

    ``reached`` is set once any worker of the batch has reached the daemon: only then are
    UNAVAILABLE answers retried for ``retry_seconds`` (a daemon that was never reached is
    reported at once). ``stop`` is set when the batch stops; chunks then give up.
    """

    def __init__(
        self,
        signer: RotatingSigner,
        options: BatchOptions,
        value_sets: ValueSets,
        reached: Flag,
        stop: Flag,
    ) -> None:
        self._signer = signer
        self._options = options
        self._value_sets = value_sets
        self._reached = reached
        self._stop = stop
        self._signers: dict[str, ChunkSigner] = {}
        self._check = SignatureCheck(options.check_rate)
        self._qr_folders: set[Path] = set()

    def abandon(self) -> None:
        """Stop the batch: chunks not yet signed give up (with an abandoned :class:`Stop`)."""
        self._stop.set()

    def prepare(self, chunk: Chunk) -> PreparedChunk | ChunkResult:
        """Validate and prepare every line; a :class:`ChunkResult` with a stop if no line can
        be prepared (the daemon cannot name its key)."""
        if self._stop.is_set():
            return self._stopped(chunk, Stop("the batch stopped", abandoned=True))
        try:
            iat = math.floor(time.time())
            lines = [
                self._prepare_line(position, number, raw, iat, chunk.overlong.get(number))
                for position, (number, raw) in enumerate(chunk.lines)
            ]
            return PreparedChunk(chunk, lines)
        except Exception as error:
            return self._stopped(chunk, self._stop_for(error))

    def complete(self, prepared: PreparedChunk) -> ChunkResult:
        """Sign, check, encode; the output of the chunk in input order, or its stop."""
        chunk = prepared.chunk
        try:
            return self._complete(prepared)
        except Exception as error:
            return self._stopped(chunk, self._stop_for(error))

    def _prepare_line(
        self, position: int, number: int, raw: bytes, iat: int, sha: str | None
    ) -> _Line:
        line = _Line(position, number, sha or line_sha256(raw))
        try:
            line.cert = self._prepare_record(raw, iat)
        except _LineRefused as refused:
            line.refused = refused
        return line

    def _prepare_record(self, raw: bytes, iat: int) -> PreparedCertificate:
        if len(raw) > MAX_LINE_BYTES:
            raise _LineRefused("line", f"longer than {MAX_LINE_BYTES} bytes; not read")
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _LineRefused("line", f"not UTF-8 (byte {exc.start + 1})") from None
        except (ValueError, RecursionError) as exc:
            raise _LineRefused("json", f"not valid JSON: {exc}") from None
        try:
            profile = profile_for(record, self._options.profile)
        except DccRecordError as exc:
            raise _LineRefused(exc.field, str(exc)) from None
        key = self._chunk_signer(profile).key
        options = self._options
        try:
            return prepare_one(
                record,
                key.kid,
                options.issuer_country or str(key.country),
                iat,
                key.not_after,
                validity=options.validity,
                allow_dose_beyond_series=options.allow_dose_beyond_series,
                profile=profile,
                value_sets=self._value_sets,
            )
        except DccRecordError as exc:
            raise _LineRefused(exc.field, str(exc)) from None
        except (DccError, ValueError) as exc:
            raise _LineRefused("record", str(exc)) from None

    def _chunk_signer(self, profile: str) -> ChunkSigner:
        chunks = self._signers.get(profile)
        if chunks is None:
            kid, dsc_der = self._retrying(lambda: self._signer.signing_key(profile))
            key = IssuingKey.from_dsc(kid, dsc_der, profile=profile)
            if not (self._options.issuer_country or key.country):
                raise _UsageProblem(
                    f"the {profile} DSC has no subject country; pass --issuer-country"
                )
            chunks = ChunkSigner(self._signer, key, profile=profile, check=self._check)
            self._signers[profile] = chunks
        return chunks

    def _complete(self, prepared: PreparedChunk) -> ChunkResult:
        chunk = prepared.chunk
        result = ChunkResult(chunk.index, chunk.lines[-1][0], chunk.end_offset)
        out = [""] * len(prepared.lines)
        uvcis = [""] * len(prepared.lines)
        by_profile: dict[str, list[_Line]] = {}
        for line in prepared.lines:
            if line.refused is not None:
                out[line.position] = self._refuse(result, line, line.refused)
            else:
                assert line.cert is not None
                by_profile.setdefault(line.cert.profile, []).append(line)
        checked_before = self._check.checked
        for profile, lines in by_profile.items():
            chunks = self._signers[profile]
            rotations = chunks.rotations
            certs = [line.cert for line in lines if line.cert is not None]
            signed, signatures = self._retrying(lambda: chunks.sign_digests(certs))  # noqa: B023
            if chunks.rotations != rotations:
                _note(
                    result,
                    f"the {profile} signing key changed; now signing with kid"
                    f" {chunks.key.kid.hex()}",
                )
            public_key = chunks.verify_with()
            for line, cert, signature in zip(lines, signed, signatures, strict=True):
                try:
                    hc1 = finish_one(cert, signature, verify_with=public_key, check=self._check)
                except SignatureMismatch:
                    raise SignatureMismatch(
                        f"the signature of line {line.number} does not verify under the DSC of"
                        f" kid {cert.kid.hex()}: the signer used another key or returned a"
                        " broken signature; nothing of its chunk was written (check the HSM and"
                        " daemon, and the output so far with `signer dcc verify`)"
                    ) from None
                except DccError as exc:
                    out[line.position] = self._refuse(result, line, _LineRefused("hc1", str(exc)))
                    continue
                qr = self._write_qr(line.number, hc1)
                out[line.position] = issued_line(line.number, line.sha, cert, hc1, qr)
                uvcis[line.position] = uvci_line_of(cert)
                result.issued += 1
                if cert.exp_clipped:
                    _note(
                        result,
                        f"exp clipped to the {profile} DSC's notAfter"
                        f" {chunks.key.not_after.isoformat(timespec='seconds')}: its"
                        " certificates are valid for less than the requested period",
                    )
        result.checked = self._check.checked - checked_before
        result.lines = len(prepared.lines)
        result.out_text = "".join(out)
        result.uvci_text = "".join(uvcis)
        return result

    @staticmethod
    def _refuse(result: ChunkResult, line: _Line, refused: _LineRefused) -> str:
        result.refused[refused.field] = result.refused.get(refused.field, 0) + 1
        return error_line(line.number, line.sha, refused.field, refused.message)

    def _write_qr(self, number: int, hc1: str) -> PurePath | None:
        folder = self._options.qr_dir
        if folder is None:
            return None
        name = qr_name(number, self._options.qr_format)
        target = folder / name
        if target.parent not in self._qr_folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._qr_folders.add(target.parent)
        write_qr(hc1, target)
        return name

    def _retrying(self, call: Callable[[], _T]) -> _T:
        delay = _FIRST_RETRY_DELAY
        deadline: float | None = None
        while True:
            try:
                result = call()
            except Exception as error:
                if status_of(error) not in RETRYABLE_STATUSES or not self._reached.is_set():
                    raise
                now = time.monotonic()
                deadline = now + self._options.retry_seconds if deadline is None else deadline
                if now >= deadline or self._stop.wait(min(delay, deadline - now)):
                    raise
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            self._reached.set()
            return result

    def _stop_for(self, error: BaseException) -> Stop:
        abandoned = self._stop.is_set()
        self._stop.set()
        return stop_for(error, abandoned=abandoned)

    def _stopped(self, chunk: Chunk, stop: Stop) -> ChunkResult:
        return ChunkResult(chunk.index, chunk.lines[-1][0], chunk.end_offset, stop=stop)


def stop_for(error: BaseException, *, abandoned: bool = False) -> Stop:
    """The :class:`Stop` an error causes: the daemon's status, a usage or configuration
    problem, another expected error, or a bug (with its traceback)."""
    message = str(error)
    status = status_of(error)
    if status is not None:
        return Stop(message, status=status, abandoned=abandoned)
    if isinstance(error, _UsageProblem | UsageError):
        return Stop(message, usage=True, abandoned=abandoned)
    if isinstance(error, ConfigError):
        return Stop(message, config=True, abandoned=abandoned)
    if isinstance(error, SignerError | OSError):
        return Stop(message, abandoned=abandoned)
    trace = "".join(traceback.format_exception(error))
    return Stop(f"{type(error).__name__}: {error}", abandoned=abandoned, trace=trace)


def _note(result: ChunkResult, text: str) -> None:
    if text not in result.notes:
        result.notes.append(text)


def status_of(error: BaseException) -> str | None:
    """The gRPC status name an error carries (``code`` attribute or method), else ``None``."""
    code = getattr(error, "code", None)
    if callable(code):
        try:
            code = code()
        except Exception:
            return None
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else None


def run_pipelined(
    worker: ChunkWorker, chunks: Iterable[Chunk], emit: Callable[[ChunkResult], None]
) -> None:
    """Prepare each chunk while the one before it is signed and completed; ``emit`` every
    result (from the signing thread, one at a time, in chunk order)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="signer-batch-sign") as signing:
        pending: Future[None] | None = None
        try:
            for chunk in chunks:
                prepared = worker.prepare(chunk)
                if pending is not None:
                    pending.result()
                    pending = None
                if isinstance(prepared, ChunkResult):
                    emit(prepared)
                else:
                    pending = signing.submit(_complete_and_emit, worker, prepared, emit)
        except BaseException:
            worker.abandon()
            raise
        if pending is not None:
            pending.result()


def _complete_and_emit(
    worker: ChunkWorker, prepared: PreparedChunk, emit: Callable[[ChunkResult], None]
) -> None:
    emit(worker.complete(prepared))


SignerFactory = Callable[[], RotatingSigner]


def worker_main(
    make_signer: SignerFactory,
    options: BatchOptions,
    tasks: Any,
    results: Any,
    reached: Flag,
    stop: Flag,
) -> None:
    """Entry point of a worker process: chunks from ``tasks`` (``None`` ends), results to
    ``results``. Ctrl-C is left to the parent, which stops the batch in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    signer: RotatingSigner | None = None
    try:
        signer = make_signer()
        worker = ChunkWorker(signer, options, options.load_value_sets(), reached, stop)
        run_pipelined(worker, iter(tasks.get, None), results.put)
    except Exception as error:
        stop.set()
        failure = stop_for(error)
        for chunk in iter(tasks.get, None):
            results.put(ChunkResult(chunk.index, chunk.lines[-1][0], stop=failure))
    finally:
        close = getattr(signer, "close", None)
        if callable(close):
            close()


def _exit_with_parent() -> None:
    """End this worker process as soon as the process that started it is gone (killed)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch(sentinel: int) -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, args=(parent.sentinel,), daemon=True).start()
