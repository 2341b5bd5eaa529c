"""The single-instance lock primitive on an open lock file (``agent/instance.py`` holds the policy).

POSIX: ``flock`` on the whole file. Windows: ``msvcrt.locking`` on one byte far past the file's content
(Windows locks are mandatory: locking the bytes that hold the pid would stop the second agent from
reading who holds it). Either way the operating system drops the lock when the process ends, however it
ends, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import os
import sys

_LOCK_OFFSET = 1 << 20  # Windows: the locked byte, beyond any pid text


def try_lock(fd: int) -> bool:
    """Exclusive, non-blocking lock on the open file ``fd``; False when another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_at(fd: int, size: int, offset: int) -> bytes:
    if sys.platform == "win32":
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)
    return os.pread(fd, size, offset)


def write_at(fd: int, data: bytes, offset: int) -> None:
    if sys.platform == "win32":
        os.lseek(fd, offset, os.SEEK_SET)
        os.write(fd, data)
        return
    os.pwrite(fd, data, offset)


def lock_exclusive(fd: int) -> None:
    """Wait for an exclusive lock on the open file ``fd`` (one writer at a time across processes)."""
    if sys.platform == "win32":
        import msvcrt

        position = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for ~10 s, then raises OSError
        finally:
            os.lseek(fd, position, os.SEEK_SET)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)


def unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        position = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        finally:
            os.lseek(fd, position, os.SEEK_SET)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
