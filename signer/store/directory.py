"""Records as files in a directory, on local disk or a shared file system.

One file per record, ``<root>/<kind>/<name>``: an 8-byte generation and the record's bytes;
the store id is ``<root>/.store-id``.
Writers take an exclusive ``flock`` on ``<root>/.lock`` (advisory locks also hold across
hosts on NFSv4), compare generations, write a temporary file, fsync it and rename it over the
record, then fsync the folder, so a reader sees the old record or the new one, never a mix.

A folder that is missing or unreadable once the daemon runs (a shared file system unmounted,
the folder moved away) fails the call with :class:`StoreUnavailable` naming the folder; it is
never read as "no records". The next call looks again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from signer.audit.fileops import OsFileOps
from signer.errors import ConfigError, StoreUnavailable
from signer.store.api import (
    ABSENT,
    RecordKind,
    StoredRecord,
    check_name,
    conflict,
    new_store_id,
)

_GENERATION_BYTES = 8
_STORE_ID_FILE = ".store-id"


class DirectoryRecordStore:
    """:class:`~signer.store.api.RecordStore` in a folder."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._files = OsFileOps()
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            for kind in RecordKind:
                (root / kind.value).mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"record store folder {root} is not usable: {exc.strerror}") from None

    def load_all(self, kind: RecordKind) -> Mapping[str, StoredRecord]:
        """See :meth:`signer.store.api.RecordStore.load_all`."""
        found = {}
        with self._reachable():
            for path in (self._root / kind.value).iterdir():
                if path.name.startswith("."):
                    continue  # a temporary file of a writer
                record = self._read(path)
                if record is not None:
                    found[path.name] = record
        return found

    def put(self, kind: RecordKind, name: str, expected_generation: int, value: bytes) -> int:
        """See :meth:`signer.store.api.RecordStore.put`."""
        path = self._root / kind.value / check_name(name)
        with self._reachable(), self._locked():
            current = self._generation(path)
            if current != expected_generation:
                raise conflict(f"{kind.value}/{name}", expected_generation, current)
            generation = current + 1
            blob = generation.to_bytes(_GENERATION_BYTES, "big") + value
            self._write(path.with_name(f".{name}.tmp"), path, blob)
            return generation

    def delete(self, kind: RecordKind, name: str, expected_generation: int) -> None:
        """See :meth:`signer.store.api.RecordStore.delete`."""
        path = self._root / kind.value / check_name(name)
        with self._reachable(), self._locked():
            current = self._generation(path)
            if current == ABSENT or current != expected_generation:
                raise conflict(f"{kind.value}/{name}", expected_generation, current)
            path.unlink()
            self._files.fsync_dir(path.parent)

    def store_id(self) -> str:
        """See :meth:`signer.store.api.RecordStore.store_id`."""
        path = self._root / _STORE_ID_FILE
        with self._reachable(), self._locked():
            try:
                return path.read_text(encoding="ascii", errors="replace").strip()
            except FileNotFoundError:
                pass
            store_id = new_store_id()
            self._write(path.with_name(f"{_STORE_ID_FILE}.tmp"), path, store_id.encode("ascii"))
            return store_id

    def _write(self, temp: Path, path: Path, blob: bytes) -> None:
        fd = self._files.open_new(temp)
        try:
            self._files.write_all(fd, blob)
            self._files.fsync(fd)
        finally:
            self._files.close(fd)
        self._files.replace(temp, path)
        self._files.fsync_dir(path.parent)

    def _generation(self, path: Path) -> int:
        record = self._read(path)
        return ABSENT if record is None else record.generation

    @staticmethod
    def _read(path: Path) -> StoredRecord | None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        generation = int.from_bytes(blob[:_GENERATION_BYTES], "big")
        return StoredRecord(path.name, generation, blob[_GENERATION_BYTES:])

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turn the folder's I/O errors into :class:`StoreUnavailable` naming the folder."""
        try:
            yield
        except OSError as exc:
            raise StoreUnavailable(
                f"record store folder {self._root} cannot be used: {exc.strerror or exc};"
                " check that it is mounted and readable, the next request tries again"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
