"""One agent per data directory, and a data directory the agent can use.

Everything here is a small function so a platform layer can swap the mechanism (the Windows service
needs the same guarantees with ``msvcrt.locking`` and ACLs instead of ``flock`` and owners):

* :func:`prepare_data_dir` makes sure the agent's ``data_dir`` exists, is private (0700: created so, or
  tightened) and belongs to the user the agent runs as, with no file inside owned by someone else (a
  root-owned ``outbox.sqlite3`` left by a run as root stops the service user with "unable to open
  database file"). Problems raise :class:`DataDirError` with the command that fixes them.
* :func:`acquire_instance_lock` takes an exclusive lock on ``data_dir/agent.lock`` before anything else is
  written. The kernel releases it when the process ends, however it ends (a SIGKILL never leaves a stale
  lock), so a second agent on the same ``data_dir`` stops with :class:`AlreadyRunningError` naming the
  running agent's pid, and the first keeps its token, outbox, ports and folders.
* :func:`run_as_data_dir_owner` lets root use the operator tools (``outbox ...``) on a service's
  ``data_dir`` without leaving root-owned files behind: it drops to the directory's owner first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from vitals_agent import host
from vitals_agent.config.filesystem import nearest_existing, read_only
from vitals_agent.errors import ConfigError, VitalsAgentError
from vitals_agent.host import lock as host_lock

LOCK_FILE = "agent.lock"
PRIVATE_MODE = 0o700


class DataDirError(ConfigError):
    """The data directory cannot be used (missing and not creatable, foreign-owned, read-only...).

    A configuration problem: ``vitals-agent run`` exits with the configuration status, so the service
    manager does not restart the agent into the same failure."""

    def __init__(self, message: str) -> None:
        super().__init__([("agent.data_dir", message)])


class AlreadyRunningError(VitalsAgentError):
    """Another agent holds the lock on this data directory."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"another vitals-agent ({who}) is already running on {directory}; stop it first "
            "(as a service: systemctl stop vitals-agent)"
        )


def user_name(uid: int) -> str:
    """The login name of ``uid``, else the number."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _current_uid() -> int | None:
    """The effective uid, or None where the platform has no POSIX owners."""
    return os.geteuid() if hasattr(os, "geteuid") else None


def _ownership_fix(path: Path, owner: int, me: int) -> str:
    if me == 0:
        name = user_name(owner)
        return f"run the agent as {name} (sudo -u {name} vitals-agent ...), or chown -R root: {path}"
    return f"chown -R {user_name(me)}: {path}"


def _owner_problem(path: Path, st: os.stat_result) -> str | None:
    """A one-line problem when ``path`` (or a file directly in it) belongs to another user."""
    me = _current_uid()
    if me is None:
        return None
    if st.st_uid != me:
        return (
            f"{path} belongs to {user_name(st.st_uid)}, but the agent runs as {user_name(me)}: "
            + _ownership_fix(path, st.st_uid, me)
        )
    if me == 0:
        return None  # root can use what is inside; files it creates are its own
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        return f"cannot list {path}: {exc.strerror or exc}"
    foreign: list[tuple[str, int]] = []
    for entry in entries:
        with contextlib.suppress(OSError):
            owner = entry.stat(follow_symlinks=False).st_uid
            if owner != me:
                foreign.append((entry.name, owner))
    if foreign:
        name, owner = foreign[0]
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        return (
            f"{name}{more} in {path} belong{'s' if not more else ''} to {user_name(owner)}, not to "
            f"{user_name(me)} (left by a run as another user?): {_ownership_fix(path, owner, me)}"
        )
    return None


def _create(path: Path) -> None:
    try:
        path.mkdir(parents=True, mode=PRIVATE_MODE)
    except FileExistsError:
        return
    except PermissionError:
        me = _current_uid()
        hint = (
            f": create it for the agent's user, e.g. install -d -m 0700 -o {user_name(me)} {path}"
            if me is not None
            else ""
        )
        raise DataDirError(f"cannot create {path}: permission denied{hint}") from None
    except OSError as exc:
        raise DataDirError(f"cannot create {path}: {_reason(exc)}") from None
    with contextlib.suppress(OSError):
        os.chmod(path, PRIVATE_MODE)  # mkdir's mode went through the umask


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return (
            "read-only file system (under systemd: run `vitals-agent service sync-unit` so the unit "
            "may write there)"
        )
    return exc.strerror or str(exc)


def prepare_data_dir(path: Path, *, create: bool = True) -> Path:
    """``path`` ready for the agent: exists (created 0700 when ``create``), private, ours.

    Raises :class:`DataDirError` with a one-line fix. A directory with group or other permissions is
    tightened to 0700 (it holds patient data); one that belongs to someone else is refused.
    """
    path = path.expanduser()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise DataDirError(f"{path} does not exist (has the agent ever run with this config?)") from None
        _create(path)
        st = os.stat(path)
    except OSError as exc:
        raise DataDirError(f"cannot use {path}: {_reason(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"{path} is not a directory")
    problem = _owner_problem(path, st)
    if problem:
        raise DataDirError(problem)
    try:
        host.tighten_dir(path)
    except OSError as exc:
        raise DataDirError(f"cannot make {path} private (0700): {_reason(exc)}") from None
    return path


def check_data_dir(path: Path) -> str | None:
    """What :func:`prepare_data_dir` would refuse, without changing anything (for ``check-config``)."""
    path = path.expanduser()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = nearest_existing(path)
        if not os.access(parent, os.W_OK | os.X_OK):
            me = _current_uid()
            who = user_name(me) if me is not None else "this user"
            return (
                f"{path} does not exist and {who} cannot create it in {parent}: "
                f"install -d -m 0700 -o {who} {path}"
            )
        return None
    except OSError as exc:
        return f"cannot use {path}: {_reason(exc)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    problem = _owner_problem(path, st)
    if problem:
        return problem
    if read_only(path):
        return f"{path}: {_reason(OSError(errno.EROFS, 'read-only'))}"
    return None


class InstanceLock:
    """The held lock. :meth:`release` (or process exit, however it happens) frees it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the last descriptor drops the lock


def _try_lock(fd: int) -> bool:
    """Exclusive, non-blocking lock on the open file ``fd``; False when another process holds it."""
    return host_lock.try_lock(fd)


def _holder_pid(fd: int) -> int | None:
    """The pid the lock holder wrote into the lock file (None while it has not written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        return int(host_lock.read_at(fd, 32, 0).decode("ascii").strip() or "0") or None
    return None


def acquire_instance_lock(directory: Path) -> InstanceLock:
    """Lock ``directory`` for this process. Raises :class:`AlreadyRunningError` or :class:`DataDirError`."""
    path = directory / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise DataDirError(f"cannot create the lock file {path}: {_reason(exc)}") from None
    if not _try_lock(fd):
        pid = _holder_pid(fd)
        os.close(fd)
        raise AlreadyRunningError(directory, pid)
    try:
        os.ftruncate(fd, 0)
        host_lock.write_at(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise DataDirError(f"cannot write the lock file {path}: {_reason(exc)}") from None
    return InstanceLock(fd, path)


def run_as_data_dir_owner(directory: Path) -> str | None:
    """As root, become the owner of ``directory`` (uid, gid, groups) before touching its files.

    Operator tools run by root on the service's ``data_dir`` would otherwise create root-owned files
    (SQLite's ``-wal``/``-shm``) that the service user cannot open. Returns the user switched to, or None
    when nothing changed (not root, or the directory is root's or missing).
    """
    me = _current_uid()
    if me != 0:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    if st.st_uid == 0:
        return None
    name = user_name(st.st_uid)
    try:
        import pwd

        groups = os.getgrouplist(name, pwd.getpwuid(st.st_uid).pw_gid)
        gid = pwd.getpwuid(st.st_uid).pw_gid
    except (ImportError, KeyError, OSError):
        groups, gid = [st.st_gid], st.st_gid
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(st.st_uid)
    return name
