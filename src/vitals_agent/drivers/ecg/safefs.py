"""File operations for the EKG folders that never follow a link the agent did not create.

Anyone who can write to a cart's share can plant symbolic links, FIFOs or hard-to-read files, and can swap
a file between the agent's check and its read. So every operation here works relative to a directory file
descriptor and refuses links at the last path component:

* the configured folder is opened once per pass (a link *in the configured path* is the administrator's
  choice); ``processed/`` and ``failed/`` are opened from it with ``O_NOFOLLOW``: a link there is refused;
* a file is read through ``O_NOFOLLOW | O_NONBLOCK`` (a link fails with ``ELOOP``, a FIFO does not block),
  ``fstat`` of that descriptor must say "regular file", and at most ``limit + 1`` bytes are read from it,
  so a file swapped for a bigger one, a FIFO or ``/dev/zero`` is never read whole;
* new files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing name (a planted link
  included) is never opened, another free name is taken;
* moves are ``rename`` between directory descriptors: it never follows a link at either end.

Names are kept within ``NAME_MAX`` (255 bytes), also with a ``-N`` counter or a ``.reason.txt`` suffix
added: a longer result is shortened in its stem, keeping the extension and a short hash of the original.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

NAME_MAX = 255
REASON_SUFFIX = ".reason.txt"

# POSIX flags (openat-style access relative to a directory descriptor). Windows has neither these flags nor
# dir_fd: the module must still import there (every driver module is loaded at start); the configuration
# refuses EKG folders there in one line (config.schema.NO_EKG_FOLDERS, when not host.HAS_NOFOLLOW_DIRS).
_NOFOLLOW, _NONBLOCK, _NOCTTY = (getattr(os, f, 0) for f in ("O_NOFOLLOW", "O_NONBLOCK", "O_NOCTTY"))
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _NOCTTY | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _NOCTTY | getattr(os, "O_CLOEXEC", 0)


class UnsafeEntryError(OSError):
    """A name that is not a regular file (a link, FIFO, device, directory, socket): never opened or read.
    ``kind`` says what it is, in words."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(errno.EPERM, f"{kind}: not followed or read")


class TooLargeError(OSError):
    """A file larger than the caller's limit (seen through its own descriptor, never read past it)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(errno.EFBIG, f"file too large ({size} bytes > max_file_bytes {limit})")


def kind_of(mode: int) -> str:
    """A file type in words (for logs and reasons)."""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISREG(mode):
        return "regular file"
    return "special file"


# ------------------------------------------------------------------------------------------- directories


def open_dir(path: str | os.PathLike[str]) -> int:
    """Open the configured folder (following links in the configured path: the administrator's choice)."""
    return os.open(path, _DIR_FLAGS)


def open_subdir(parent_fd: int, name: str, *, create: bool = True, mode: int = 0o750) -> int:
    """Open ``name`` under ``parent_fd`` as a directory, creating it when missing; never through a link.

    Raises :class:`UnsafeEntryError` when ``name`` is a link or not a directory."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeEntryError(_lkind(parent_fd, name)) from None
        raise


def _lkind(dir_fd: int, name: str) -> str:
    try:
        return kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return "special file"


OnLink = Callable[[str], None]


def lexists(dir_fd: int, name: str, on_link: OnLink | None = None) -> bool:
    """Whether ``name`` exists under ``dir_fd`` (a dangling link counts: it exists). ``on_link(name)`` is
    called when it is a symbolic link (someone planted it: the caller reports it)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if on_link is not None and stat.S_ISLNK(st.st_mode):
        on_link(name)
    return True


def same_entry(dir_fd: int, name: str, ident: tuple[int, int]) -> bool:
    """Whether ``name`` is still the file whose (st_dev, st_ino) is ``ident`` (not swapped meanwhile)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == ident


# ------------------------------------------------------------------------------------------- reading


@dataclass
class OpenFile:
    """A regular file opened safely: its descriptor and its ``fstat``."""

    fd: int
    st: os.stat_result

    @property
    def ident(self) -> tuple[int, int]:
        return (self.st.st_dev, self.st.st_ino)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OpenFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def read_at_most(self, limit: int) -> bytes:
        """The file's bytes from offset 0, but never more than ``limit + 1`` of them (so a caller sees that
        it is too large without reading it whole)."""
        chunks: list[bytes] = []
        total, offset = 0, 0
        while total <= limit:
            chunk = os.pread(self.fd, min(1024 * 1024, limit + 1 - total), offset)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            offset += len(chunk)
        return b"".join(chunks)


def open_regular(dir_fd: int, name: str) -> OpenFile:
    """Open ``name`` under ``dir_fd`` for reading, only if it is a regular file and not a link.

    Raises :class:`UnsafeEntryError` for a link, FIFO, device, directory or socket (nothing is read from
    it and a FIFO never blocks), other :class:`OSError` as the system reports them."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeEntryError("symbolic link") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
            raise UnsafeEntryError(_lkind(dir_fd, name)) from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeEntryError(kind_of(st.st_mode))
    return OpenFile(fd, st)


def read_regular(dir_fd: int, name: str, limit: int) -> tuple[bytes, OpenFile]:
    """The whole content of a regular file of at most ``limit`` bytes, and its (closed) :class:`OpenFile`.

    Raises :class:`UnsafeEntryError` or :class:`TooLargeError` (checked on the descriptor before reading,
    and again by reading at most ``limit + 1`` bytes)."""
    with open_regular(dir_fd, name) as handle:
        if handle.st.st_size > limit:
            raise TooLargeError(handle.st.st_size, limit)
        data = handle.read_at_most(limit)
    if len(data) > limit:
        raise TooLargeError(len(data), limit)
    return data, handle


# ------------------------------------------------------------------------------------------- names


def fit_name(name: str, extra_bytes: int = 0) -> str:
    """``name`` shortened so that it plus ``extra_bytes`` more fit in NAME_MAX bytes.

    The stem is cut (at a character boundary) and followed by ``~`` and 8 hex digits of the original
    name's SHA-256, so two long names stay distinct; the extension is kept."""
    raw = os.fsencode(name)
    if len(raw) + extra_bytes <= NAME_MAX:
        return name
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(os.fsencode(dot + ext)) > 16:
        stem, dot, ext = name, "", ""
    budget = NAME_MAX - extra_bytes - len(os.fsencode(tag + dot + ext))
    while stem and len(os.fsencode(stem)) > budget:
        stem = stem[:-1]
    return stem + tag + dot + ext


def free_name(dir_fd: int, name: str, *, reserve: str = "", on_link: OnLink | None = None) -> str:
    """A name under ``dir_fd`` that does not exist (nor does it with ``reserve`` appended): ``name`` itself,
    else ``stem-N.ext``. Every candidate fits NAME_MAX together with ``reserve``. Links met on the way are
    passed to ``on_link``."""
    extra = len(os.fsencode(reserve))
    stem, dot, suffix = name.partition(".")
    for n in range(100_000):
        candidate = fit_name(name if n == 0 else f"{stem}-{n}{dot}{suffix}", extra)
        taken = lexists(dir_fd, candidate, on_link)
        if reserve and lexists(dir_fd, candidate + reserve, on_link):
            taken = True
        if not taken:
            return candidate
    raise OSError(errno.EEXIST, f"no free name for a file in {name!r}'s folder")


# ------------------------------------------------------------------------------------------- writing


def move(src_fd: int, name: str, dst_fd: int, *, reserve: str = "", on_link: OnLink | None = None) -> str:
    """Move ``name`` from ``src_fd`` to a free name in ``dst_fd`` (see :func:`free_name`); returns it.

    ``rename`` never follows a link at either end."""
    target = free_name(dst_fd, name, reserve=reserve, on_link=on_link)
    os.rename(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    return target


def write_new(
    dir_fd: int,
    name: str,
    data: bytes,
    *,
    mode: int = 0o600,
    sync: bool = False,
    reserve: str = "",
    on_link: OnLink | None = None,
) -> str:
    """Create a *new* file ``name`` (or the next free name, see :func:`free_name`) under ``dir_fd`` with
    ``data``; returns the name used. Never opens an existing name: a planted link or file is left as is."""
    for _ in range(100):
        target = free_name(dir_fd, name, reserve=reserve, on_link=on_link)
        try:
            fd = os.open(target, _CREATE_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue  # created meanwhile (a race with whoever else writes there): take another name
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return target
    raise OSError(errno.EEXIST, f"no free name for {name!r}")


def write_exact(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> bool:
    """Create exactly ``name`` (never an existing one, never through a link). False when it exists."""
    try:
        fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)
    return True
