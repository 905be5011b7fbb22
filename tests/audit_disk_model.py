"""A disk model behind the audit writer's file-ops seam: a page cache that can lie about the device.

The real files play the page cache: they are what the running process reads back. For segment
files the model also keeps the *device* copy, updated only by a successful ``fsync`` (in whole
4 KiB pages, as the kernel writes them back). :meth:`ModelDisk.remount` replaces each segment
file with its device copy, like an unmount and mount would. Two failure modes are modelled:

* ``fail_fsyncs``: the next fsyncs fail; the dirty pages are marked clean without being written
  and, as on a device that failed mid-write, their device copy is zeroed (PostgreSQL's
  "fsyncgate": a later fsync, on the same or a new descriptor, succeeds without them);
* ``lose_tail``: the next fsync succeeds but the last ``lose_tail`` bytes of the file never reach
  the device (measured on ext4 over a loop device whose backing store filled up).

``truncate_rewrites_partial_page`` says whether cutting a file dirties the page that holds the
new end (ext4 and XFS zero the rest of it, so a later fsync writes the page again); without
it, only the writer's own read-back can notice a dropped page of acknowledged bytes.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from signer.audit.fileops import OsFileOps
from signer.audit.segments import SEGMENT_PREFIX, SEGMENT_SUFFIX

PAGE = 4096


def _is_segment(path: Path) -> bool:
    return path.name.startswith(SEGMENT_PREFIX) and path.name.endswith(SEGMENT_SUFFIX)


class ModelDisk(OsFileOps):
    """File ops over real files, with a separate device copy of every segment."""

    def __init__(self) -> None:
        self.device: dict[Path, bytearray] = {}
        self.fail_fsyncs = 0
        self.fail_errno = errno.EIO
        self.lose_tail = 0
        self.truncate_rewrites_partial_page = True
        self.rewrites = 0
        self._paths: dict[int, Path] = {}
        self._dirty: dict[Path, set[int]] = {}

    def open_append(self, path: Path) -> int:
        """Open a segment for appending; a new segment starts empty on the device too."""
        fd = super().open_append(path)
        self._track(fd, path)
        return fd

    def open_rewrite(self, path: Path) -> int:
        """Open a segment for writing at offsets; counted so tests can see repairs happen."""
        fd = super().open_rewrite(path)
        self.rewrites += 1
        self._track(fd, path)
        return fd

    def close(self, fd: int) -> None:
        """Forget which path ``fd`` belongs to, then close it."""
        self._paths.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes) -> int:
        """Append to the page cache; the pages written become dirty."""
        start = os.fstat(fd).st_size
        written = super().write(fd, data)
        self._mark(fd, start, written)
        return written

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Write into the page cache at ``offset``; the pages written become dirty."""
        written = super().pwrite(fd, data, offset)
        self._mark(fd, offset, written)
        return written

    def truncate(self, fd: int, size: int) -> None:
        """Cut the file; zeroing the rest of a partial page may dirty that page (see above)."""
        super().truncate(fd, size)
        if size % PAGE and self.truncate_rewrites_partial_page:
            self._mark(fd, size, 1)

    def fsync(self, fd: int) -> None:
        """Write the dirty pages to the device, or fail, or lie, as configured."""
        path = self._paths.get(fd)
        if path is None:
            super().fsync(fd)
            return
        dirty = self._dirty.pop(path, set())
        device = self.device[path]
        cache = path.read_bytes()
        if self.fail_fsyncs:
            self.fail_fsyncs -= 1
            for page in dirty:
                start = page * PAGE
                device[start : start + PAGE] = bytes(len(device[start : start + PAGE]))
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        del device[len(cache) :]
        device.extend(bytes(len(cache) - len(device)))
        for page in dirty:
            start = page * PAGE
            device[start : start + PAGE] = cache[start : start + PAGE]
        if self.lose_tail:
            lost = min(self.lose_tail, len(device))
            device[len(device) - lost :] = bytes(lost)
            self.lose_tail = 0

    def read_stable(self, path: Path, offset: int, length: int) -> bytes:
        """Read a segment from the device copy, never from the page cache."""
        if path not in self.device:
            return super().read_stable(path, offset, length)
        return bytes(self.device[path][offset : offset + length])

    def remount(self) -> None:
        """Replace every segment file with what the device holds."""
        for path, data in self.device.items():
            path.write_bytes(bytes(data))

    def _track(self, fd: int, path: Path) -> None:
        if _is_segment(path):
            self._paths[fd] = path
            self.device.setdefault(path, bytearray())

    def _mark(self, fd: int, start: int, length: int) -> None:
        path = self._paths.get(fd)
        if path is None or length <= 0:
            return
        pages = range(start // PAGE, (start + length - 1) // PAGE + 1)
        self._dirty.setdefault(path, set()).update(pages)
