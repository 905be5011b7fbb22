"""Batch issuance that keeps the HSM busy: a JSONL file of records in, one output line each out.

::

    summary = issue_batch(Path("records.jsonl"), Path("out.jsonl"), connect, jobs=4)

The input is read in chunks of ``chunk_size`` lines. With ``jobs=1`` one process prepares a
chunk while the one before it is being signed (:func:`~signer.dcc.batch_worker.run_pipelined`);
with ``jobs=N`` N worker processes do that side by side, each with its own signer made by
``make_signer`` (its own gRPC channel: worker processes are started with ``spawn``, so nothing
of the parent's gRPC state is inherited, and ``make_signer`` must be picklable, e.g. a
module-level function). This process only reads, hands out chunks and writes: at most
``2 * jobs + 2`` chunks are on their way at any time, so memory stays flat for any input size,
and results are written strictly in input order however the workers finish.

Output (:mod:`signer.dcc.batch_output`): one line per non-blank input line, issued or refused
(naming line and field); ``uvci_out`` gets one line per issued certificate, in the same order.
A run that is restarted with the same output file continues after the last line it holds
(:mod:`signer.dcc.batch_resume`): nothing is lost or written twice, and an output file written
from another input is refused.

Failures that no line escapes stop the batch in order: every chunk before the failing one is
written, nothing after it, and the summary says where it stopped. A daemon that was reached
and then becomes unavailable is retried with backoff for ``retry_seconds`` first.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from signer.dcc.batch_output import LINE_SHA256_HEX, line_sha256
from signer.dcc.batch_resume import (
    BatchFileError,
    ResumePoint,
    cut_torn_tail,
    reconcile_uvcis,
    resume_point,
)
from signer.dcc.batch_worker import (
    MAX_CHUNK_SIZE,
    MAX_LINE_BYTES,
    BatchOptions,
    Chunk,
    ChunkResult,
    ChunkWorker,
    Flag,
    SignerFactory,
    Stop,
    run_pipelined,
    stop_for,
    worker_main,
)

_POLL_SECONDS = 0.2
_PROGRESS_SECONDS = 0.5


@dataclass
class BatchSummary:
    """What a run of :func:`issue_batch` did (lines it wrote, not those of earlier runs)."""

    lines: int = 0
    """Output lines written: input lines issued or refused."""
    issued: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    """Refused lines by the field named in their error line."""
    resumed_after: int = 0
    """The input line this run continued after (0: it started at the beginning)."""
    last_line: int = 0
    """The last input line the output file holds when the run ends."""
    seconds: float = 0.0
    checked_signatures: int = 0
    complete: bool = False
    """The whole input is in the output file."""
    stop: Stop | None = None
    """Why the run stopped before the end of the input (``None`` when it did not)."""
    interrupted: bool = False

    @property
    def refused_total(self) -> int:
        """Lines refused."""
        return sum(self.refused.values())

    @property
    def records_per_s(self) -> float:
        """Output lines per second of this run."""
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON object (what ``signer dcc issue --batch`` prints)."""
        summary: dict[str, Any] = {
            "issued": self.issued,
            "refused": self.refused_total,
            "refused_by_field": dict(sorted(self.refused.items())),
            "lines": self.lines,
            "resumed_after_line": self.resumed_after,
            "last_line": self.last_line,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_per_s, 1),
            "signatures_checked": self.checked_signatures,
        }
        if self.stop is not None:
            summary["stopped"] = {"reason": self.stop.message, "status": self.stop.status}
        if self.interrupted:
            summary["interrupted"] = True
        return summary


Notify = Callable[[str], None]


def issue_batch(
    source: Path,
    out: Path,
    make_signer: SignerFactory,
    *,
    options: BatchOptions | None = None,
    jobs: int = 1,
    uvci_out: Path | None = None,
    notify: Notify | None = None,
    progress: TextIO | None = None,
) -> BatchSummary:
    """Issue a certificate for every line of ``source`` (JSONL) into ``out``; see the module.

    ``notify`` receives notes for the operator (a resumed run, a key rotation, clipped
    expiry times), each once; ``progress``, when given, is a terminal that gets a progress
    line. Raises :class:`OSError` for a file that cannot be read or written and
    :class:`~signer.dcc.batch_resume.BatchFileError` for an output or UVCI file that cannot be
    continued; everything else ends up in the returned summary (``stop``).
    """
    options = options or BatchOptions()
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    tell = notify or (lambda text: None)
    started = time.monotonic()
    with source.open("rb") as input_file:
        point = resume_point(out)
        _skip_done(input_file, source, out, point)
        cut = cut_torn_tail(out, point)
        if cut:
            tell(f"cut a partial last line ({cut} bytes) from {out}; that line is issued again")
        if point.line:
            tell(f"resuming after line {point.line} of {source}: earlier lines are in {out}")
        if uvci_out is not None:
            added = reconcile_uvcis(out, uvci_out, MAX_CHUNK_SIZE)
            if added:
                tell(f"added {added} lines that {uvci_out} lacked from {out}")
        summary = BatchSummary(resumed_after=point.line, last_line=point.line)
        size = os.fstat(input_file.fileno()).st_size
        meter = _Progress(progress, size, input_file.tell()) if progress is not None else None
        with _Writer(out, uvci_out, summary, tell, meter) as writer, _interrupts_to(writer):
            chunks = _chunks(input_file, point.line, options.chunk_size, writer)
            try:
                if jobs == 1:
                    _run_inline(make_signer, options, chunks, writer)
                else:
                    _run_processes(make_signer, options, jobs, chunks, writer)
            except KeyboardInterrupt:
                writer.interrupted = True
            summary.interrupted = writer.interrupted
            summary.complete = writer.reached_end and summary.stop is None
            if meter is not None:
                meter.finish()
    summary.seconds = time.monotonic() - started
    return summary


@contextlib.contextmanager
def _interrupts_to(writer: _Writer) -> Iterator[None]:
    """The first Ctrl-C stops the batch in order (what is finished is written); a second one
    interrupts at once. Only where signals can be handled (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: object) -> None:
        writer.interrupt()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _skip_done(file: IO[bytes], source: Path, out: Path, point: ResumePoint) -> None:
    """Read past the input lines ``out`` already holds; check that the last of them is the
    line ``out`` says it answered."""
    if point.line == 0:
        return
    body, sha = b"", None
    for number in range(1, point.line + 1):
        line = file.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise BatchFileError(
                f"{out} answers line {point.line} but {source} has only {number - 1} lines:"
                " it was written from another input; give another --out"
            )
        body, sha = _body(file, line)
    if (sha or line_sha256(body)) != point.line_sha256:
        raise BatchFileError(
            f"line {point.line} of {source} is not the line {out} answered (line_sha256"
            f" differs): {out} was written from another input; give another --out"
        )


def _body(file: IO[bytes], line: bytes) -> tuple[bytes, str | None]:
    """The line without its line break, and ``None``; for an overlong line its first
    ``MAX_LINE_BYTES + 1`` bytes and the ``line_sha256`` of all of it (the rest is skipped)."""
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        digest = hashlib.sha256(line)
        while rest := file.readline(MAX_LINE_BYTES):
            digest.update(rest.rstrip(b"\r\n"))
            if rest.endswith(b"\n"):
                break
        return line, digest.hexdigest()[:LINE_SHA256_HEX]
    return line.rstrip(b"\r\n"), None


def _chunks(file: IO[bytes], after: int, size: int, writer: _Writer) -> Iterator[Chunk]:
    """Chunks of the non-blank lines after line ``after``, until the input ends or the
    batch stops."""
    number = after
    lines: list[tuple[int, bytes]] = []
    overlong: dict[int, str] = {}
    index = 0
    while not writer.failed:
        line = file.readline(MAX_LINE_BYTES + 1)
        if not line:
            if lines:
                yield Chunk(index, lines, file.tell(), overlong)
                index += 1
            writer.input_ends(index)
            return
        number += 1
        body, sha = _body(file, line)
        if sha is not None:
            overlong[number] = sha
        if body.strip():
            lines.append((number, body))
        if len(lines) == size:
            yield Chunk(index, lines, file.tell(), overlong)
            index += 1
            lines, overlong = [], {}


def _run_inline(
    make_signer: SignerFactory, options: BatchOptions, chunks: Iterator[Chunk], writer: _Writer
) -> None:
    reached, stop = threading.Event(), threading.Event()
    writer.watch(stop)
    try:
        signer = make_signer()
    except Exception as error:
        writer.accept(ChunkResult(0, 0, stop=stop_for(error)))
        return
    try:
        worker = ChunkWorker(signer, options, options.load_value_sets(), reached, stop)
        run_pipelined(worker, chunks, writer.accept)
    finally:
        close = getattr(signer, "close", None)
        if callable(close):
            close()


def _run_processes(
    make_signer: SignerFactory,
    options: BatchOptions,
    jobs: int,
    chunks: Iterator[Chunk],
    writer: _Writer,
) -> None:
    first = next(chunks, None)
    if first is None:
        return  # nothing left to issue: no worker to start
    chunks = itertools.chain([first], chunks)
    context = multiprocessing.get_context("spawn")
    tasks: Any = context.Queue()
    results: Any = context.Queue()
    reached, stop = context.Event(), context.Event()
    writer.watch(stop)
    workers = [
        context.Process(
            target=worker_main,
            args=(make_signer, options, tasks, results, reached, stop),
            name=f"signer-batch-{number}",
            daemon=True,
        )
        for number in range(jobs)
    ]
    for process in workers:
        process.start()
    window = 2 * jobs + 2
    in_flight = 0
    try:
        for chunk in chunks:
            tasks.put(chunk)
            in_flight += 1
            while in_flight >= window and not writer.failed:
                in_flight -= _collect(results, workers, writer, stop)
        while in_flight and not writer.failed:
            in_flight -= _collect(results, workers, writer, stop)
    except KeyboardInterrupt:
        stop.set()
        _drain(tasks, results, workers, writer)
        raise
    if writer.failed:
        stop.set()
    _drain(tasks, results, workers, writer)


def _collect(results: Any, workers: list[Any], writer: _Writer, stop: Any) -> int:
    """Wait for one result (0 when a worker died instead: the batch then stops)."""
    while True:
        try:
            writer.accept(results.get(timeout=_POLL_SECONDS))
            return 1
        except queue.Empty:
            dead = [p for p in workers if p.exitcode not in (None, 0)]
            if dead:
                stop.set()
                writer.fail(
                    Stop(f"worker process {dead[0].name} ended with exit code {dead[0].exitcode}")
                )
                return 0


def _drain(tasks: Any, results: Any, workers: list[Any], writer: _Writer) -> None:
    """Tell every worker to end, take what they still deliver, and wait for them."""
    for _ in workers:
        tasks.put(None)
    while any(p.is_alive() for p in workers):
        try:
            writer.accept(results.get(timeout=_POLL_SECONDS))
        except queue.Empty:
            continue
    while True:
        try:
            writer.accept(results.get_nowait())
        except queue.Empty:
            break
    for process in workers:
        process.join()


class _Writer:
    """Writes chunk results in input order; remembers the first failure and where it stops."""

    def __init__(
        self,
        out: Path,
        uvci_out: Path | None,
        summary: BatchSummary,
        tell: Notify,
        meter: _Progress | None,
    ) -> None:
        self.summary = summary
        self.failed = False
        """No more chunks to hand out: the batch stops (a failure or Ctrl-C)."""
        self.interrupted = False
        self.reached_end = False
        self._flags: list[Flag] = []
        self._out_path = out
        self._uvci_path = uvci_out
        self._tell = tell
        self._meter = meter
        self._next = 0
        self._last_index: int | None = None
        self._waiting: dict[int, ChunkResult] = {}
        self._told: set[str] = set()
        self._halted = False
        self._lock = threading.Lock()
        self._out: IO[str] | None = None
        self._uvci: IO[str] | None = None

    def __enter__(self) -> _Writer:
        self._out = self._out_path.open("a", encoding="utf-8")
        if self._uvci_path is not None:
            self._uvci = self._uvci_path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        for file in (self._out, self._uvci):
            if file is not None:
                file.flush()
                os.fsync(file.fileno())
                file.close()

    def watch(self, flag: Flag) -> None:
        """Set ``flag`` (the workers' stop) when the batch is interrupted."""
        self._flags.append(flag)

    def interrupt(self) -> None:
        """Ctrl-C: hand out no more chunks; chunks on their way finish unless not started."""
        self.interrupted = True
        self.failed = True
        for flag in self._flags:
            flag.set()

    def input_ends(self, chunks: int) -> None:
        """The reader handed out ``chunks`` chunks and reached the end of the input."""
        with self._lock:
            self._last_index = chunks
            self._update_end()

    def fail(self, stop: Stop) -> None:
        """Stop the batch for a reason that belongs to no chunk (a worker died)."""
        with self._lock:
            self._record_stop(stop)
            self._halted = True

    def accept(self, result: ChunkResult) -> None:
        """Take a result in any order; write it (and whatever waited for it) when its turn
        comes."""
        with self._lock:
            if result.stop is not None:
                self._record_stop(result.stop)
            if self._halted or result.index < self._next:
                return
            self._waiting[result.index] = result
            while (ready := self._waiting.pop(self._next, None)) is not None:
                if ready.stop is not None:
                    self._halted = True
                    self._waiting.clear()
                    break
                self._write(ready)
                self._next += 1
            self._update_end()

    def _record_stop(self, stop: Stop) -> None:
        self.failed = True
        current = self.summary.stop
        if current is None or (current.abandoned and not stop.abandoned):
            self.summary.stop = stop

    def _update_end(self) -> None:
        self.reached_end = self._last_index is not None and self._next == self._last_index

    def _write(self, result: ChunkResult) -> None:
        assert self._out is not None
        self._out.write(result.out_text)
        self._out.flush()
        if self._uvci is not None and result.uvci_text:
            # The output is on disk before the UVCI lines: a restart can then always rebuild
            # UVCI lines from the output and never finds one the output lacks.
            os.fsync(self._out.fileno())
            self._uvci.write(result.uvci_text)
            self._uvci.flush()
        summary = self.summary
        summary.lines += result.lines
        summary.issued += result.issued
        summary.checked_signatures += result.checked
        summary.last_line = result.last_line
        for name, count in result.refused.items():
            summary.refused[name] = summary.refused.get(name, 0) + count
        for text in result.notes:
            if text not in self._told:
                self._told.add(text)
                self._tell(text)
        if self._meter is not None:
            self._meter.update(summary, result.end_offset)


class _Progress:
    """A progress line on a terminal, redrawn at most twice a second."""

    def __init__(self, stream: TextIO, size: int, start: int) -> None:
        self._stream = stream
        self._size = max(size - start, 1)
        self._start = start
        self._began = time.monotonic()
        self._shown = 0.0
        self._drawn = False

    def update(self, summary: BatchSummary, offset: int) -> None:
        now = time.monotonic()
        if now - self._shown < _PROGRESS_SECONDS:
            return
        self._shown = now
        done = min(max(offset - self._start, 0) / self._size, 1.0)
        elapsed = now - self._began
        rate = summary.lines / elapsed if elapsed > 0 else 0.0
        left = f", {elapsed / done * (1 - done) / 60:.0f} min left" if done > 0 else ""
        self._stream.write(
            f"\rsigner: line {summary.last_line:,}, {100 * done:.1f} % of the input,"
            f" {summary.issued:,} issued, {summary.refused_total:,} refused,"
            f" {rate:,.0f} records/s{left}\x1b[K"
        )
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def terminal(stream: TextIO = sys.stderr) -> TextIO | None:
    """``stream`` if it is a terminal (where progress belongs), else ``None``."""
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):
        return None
