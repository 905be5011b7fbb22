"""The file-system calls the log writer makes, behind one small seam.

Production uses :class:`OsFileOps`. Tests pass a subclass that counts ``fsync`` calls, fails
writes with ``ENOSPC``/``EIO``/``EFBIG``, or models a disk whose stable contents differ from the
page cache, to prove that the writer fails closed, recovers, and never trusts a lost write.
"""

import os
from pathlib import Path


class OsFileOps:
    """Thin wrappers over :mod:`os` for the calls the audit writer needs."""

    def open_append(self, path: Path) -> int:
        """Open ``path`` for appending, creating it (mode 0600) if needed."""
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def open_new(self, path: Path) -> int:
        """Create ``path`` for writing, replacing any stale copy (used for temp files)."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def open_rewrite(self, path: Path) -> int:
        """Open an existing ``path`` for writing at chosen offsets (no append, no create)."""
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, fd: int, data: bytes) -> int:
        """Write some of ``data``; return how many bytes were written."""
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Write some of ``data`` at ``offset``; return how many bytes were written."""
        return os.pwrite(fd, data, offset)

    def read_stable(self, path: Path, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` from the storage device, not from the page cache.

        The range must have been fsynced: clean cached pages are dropped first
        (``POSIX_FADV_DONTNEED``), so the read has to fetch them from the device again. A short
        result means the file is shorter than expected.
        """
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
            chunks = []
            while length > 0:
                chunk = os.pread(fd, length, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                length -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def fsync(self, fd: int) -> None:
        """Flush a file's data and metadata to stable storage."""
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Cut a file back to ``size`` bytes."""
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        """Close a file descriptor."""
        os.close(fd)

    def replace(self, source: Path, target: Path) -> None:
        """Atomically rename ``source`` over ``target``."""
        os.replace(source, target)

    def fsync_dir(self, path: Path) -> None:
        """Make the entries of directory ``path`` (creations, renames) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd: int, data: bytes) -> None:
        """Write all of ``data``, looping over short writes."""
        view = memoryview(data)
        while view:
            written = self.write(fd, bytes(view))
            if written <= 0:
                raise OSError(f"write returned {written}")
            view = view[written:]

    def pwrite_all(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset``, looping over short writes."""
        view = memoryview(data)
        while view:
            written = self.pwrite(fd, bytes(view), offset)
            if written <= 0:
                raise OSError(f"pwrite returned {written}")
            view, offset = view[written:], offset + written

    def write_file_atomically(self, path: Path, data: bytes) -> None:
        """Write ``path`` so that readers see the old or the new content, never a mix."""
        temp = path.with_name(f".{path.name}.tmp")
        fd = self.open_new(temp)
        try:
            try:
                self.write_all(fd, data)
                self.fsync(fd)
            finally:
                self.close(fd)
            self.replace(temp, path)
        except OSError:
            # do not leave a half-written temp file taking space on a disk that is full already
            temp.unlink(missing_ok=True)
            raise
        self.fsync_dir(path.parent)
