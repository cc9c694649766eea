"""Reading a file an operator names by path (a secret's ``*_FILE``, a signing key, a retired or
upcoming key, a seal) without waiting on one that is not a file.

An ordinary ``open`` of a FIFO (named pipe) blocks until something opens its other end: a FIFO
left at a seal's path (by mistake, or by anyone who may write the retired keys' directory) hung a
process at start, or every request and job that asked whether the key was sealed, for good,
where a directory or a mode it may not read there fails with a message. So the file is opened
without blocking (a FIFO then opens at once), and whatever is not a regular file is refused
before a byte is read: a FIFO, a socket, a device. The type comes from the opened file
(``fstat``), so a FIFO swapped in after a check cannot pass on a regular file's type.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"))


class NotARegularFile(OSError):
    """The path names a FIFO, a socket or a device rather than a regular file (a directory is
    ``IsADirectoryError``, as a read of one always was). No system call failed, so it has no
    errno: ``strerror`` says what the path is."""

    def __str__(self) -> str:
        return f"{self.strerror}: {str(self.filename)!r}"


def open_regular_file(path: Path | str) -> BinaryIO:
    """``path`` opened for reading, binary, if it is a regular file (links followed): otherwise
    ``IsADirectoryError`` or :class:`NotARegularFile`, at once, whatever waits at its other end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "special file")
            raise NotARegularFile(None, f"not a regular file but a {kind}", str(path))
        os.set_blocking(fd, True)  # Linux ignores O_NONBLOCK for a regular file's reads; not every system does
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path | str) -> bytes:
    """The bytes of regular file ``path`` (:func:`open_regular_file`)."""
    with open_regular_file(path) as handle:
        return handle.read()
