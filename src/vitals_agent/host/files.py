"""Private directories and files: the same guarantee on both platforms, by each platform's means.

POSIX: directories 0700, files 0600 from the first byte (``os.open`` mode, then ``fchmod`` to tighten a
file that existed with wider permissions). Windows: a folder gets a *protected* DACL (no inherited
entries) granting full control to the owner (the account the agent runs as), SYSTEM and Administrators,
and to nobody else, passed on to everything created in it; files carry no entries of their own, so a
file an administrator's tool creates there is still the service account's. :func:`describe_access` reads
it back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; a directory created here is private from the start.
    (Windows: an existing folder keeps its ACL: ``service install`` or the agent made it private when
    it created it, and an administrator's tool must not take it away from the service account.)"""
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    if created and sys.platform == "win32":
        _win_protect(path, directory=True, strict=True)
    return path


def tighten_dir(path: Path) -> None:
    """Make an existing directory private: mode 0700 on POSIX. Windows: nothing (see :func:`private_dir`)."""
    if sys.platform == "win32":
        return
    if stat.S_IMODE(os.stat(path).st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)


NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
"""``os.O_NOFOLLOW`` where it exists (POSIX: never open a planted symlink), else 0."""


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags)`` for a private file: created owner-only, an existing one tightened.

    Windows: a new file inherits its private folder's ACL (owner, SYSTEM, Administrators); an existing
    one loses any entries of its own and inherits that ACL again."""
    if sys.platform == "win32":
        existed = path.exists()
        fd = os.open(path, flags | os.O_BINARY | os.O_NOINHERIT, PRIVATE_FILE_MODE)
        if existed:
            try:
                _win_inherit_only(path)
            except BaseException:
                os.close(fd)
                raise
        return fd
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty and private when missing (before SQLite opens it); tighten it when it is
    not private and we may change it."""
    if not path.exists():
        os.close(open_private(path, os.O_WRONLY | os.O_CREAT | NOFOLLOW))
        return
    if sys.platform == "win32":
        _win_inherit_only(path)
    elif path.stat().st_mode & 0o077 and os.access(path, os.W_OK):
        os.chmod(path, PRIVATE_FILE_MODE)


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable. POSIX: fsync the directory. Windows: nothing to do
    (NTFS journals metadata; :func:`replace_file` asks for write-through)."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_data(fd: int) -> None:
    """Flush a file's data (and the metadata needed to read it back): ``fdatasync`` where there is one,
    else ``fsync`` (Windows: FlushFileBuffers)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def replace_file(src: Path, dst: Path) -> None:
    """Atomically replace ``dst`` with ``src``, durably (the rename survives a power cut)."""
    if sys.platform == "win32":
        import win32file

        win32file.MoveFileEx(
            str(src), str(dst), win32file.MOVEFILE_REPLACE_EXISTING | win32file.MOVEFILE_WRITE_THROUGH
        )
        return
    os.replace(src, dst)
    fsync_dir(dst.parent)


def describe_access(path: Path) -> list[str]:
    """Who may open ``path``, one line each: ``"owner rw-"``-style on POSIX (from the mode bits);
    ``"ALLOW DOMAIN\\name (SID) mask"`` per ACL entry on Windows, first line ``protected`` or
    ``inherits``."""
    if sys.platform == "win32":
        return _win_describe(path)
    mode = path.stat().st_mode
    out = []
    for who, shift in (("owner", 6), ("group", 3), ("other", 0)):
        bits = (mode >> shift) & 7
        out.append(f"{who} {'r' if bits & 4 else '-'}{'w' if bits & 2 else '-'}{'x' if bits & 1 else '-'}")
    return out


def is_private(path: Path) -> bool:
    """Whether only the owner (and, on Windows, SYSTEM and Administrators) may open ``path``."""
    if sys.platform == "win32":
        return _win_is_private(path)
    return path.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------------------------------------ Windows

if sys.platform == "win32":
    import ntsecuritycon
    import pywintypes
    import win32api
    import win32con
    import win32security

    if TYPE_CHECKING:
        from collections.abc import Sequence

        from _win32typing import PyACL, PySID

    _INHERIT = ntsecuritycon.OBJECT_INHERIT_ACE | ntsecuritycon.CONTAINER_INHERIT_ACE

    def _sid_text(sid: PySID) -> str:
        text: str = win32security.ConvertSidToStringSid(sid)
        return text

    def admin_sids() -> list[PySID]:
        """SYSTEM and Administrators: admitted to every private file and folder."""
        return [
            win32security.CreateWellKnownSid(win32security.WinLocalSystemSid, None),
            win32security.CreateWellKnownSid(win32security.WinBuiltinAdministratorsSid, None),
        ]

    def private_sids() -> list[PySID]:
        """The accounts a private file admits: the process owner, SYSTEM, Administrators (no duplicates)."""
        token = win32security.OpenProcessToken(win32api.GetCurrentProcess(), win32con.TOKEN_QUERY)
        try:
            owner = win32security.GetTokenInformation(token, win32security.TokenUser)[0]
        finally:
            win32api.CloseHandle(token)
        unique: dict[str, PySID] = {}
        for sid in [owner, *admin_sids()]:
            unique.setdefault(_sid_text(sid), sid)
        return list(unique.values())

    def private_dacl(*, directory: bool, sids: Sequence[PySID] | None = None) -> PyACL:
        """Full control for ``sids`` (default: :func:`private_sids`); nothing for anyone else.
        A directory's entries are inherited by files and folders created in it."""
        dacl = win32security.ACL()
        for sid in private_sids() if sids is None else sids:
            dacl.AddAccessAllowedAceEx(
                win32security.ACL_REVISION, _INHERIT if directory else 0, ntsecuritycon.FILE_ALL_ACCESS, sid
            )
        return dacl

    def set_dacl(path: Path, dacl: PyACL, *, protected: bool) -> None:
        """Give ``path`` its own ``dacl``: protected (nothing inherited from its folder) or not (the
        folder's entries besides). Raises ``pywintypes.error``."""
        inheritance = (
            win32security.PROTECTED_DACL_SECURITY_INFORMATION
            if protected
            else win32security.UNPROTECTED_DACL_SECURITY_INFORMATION
        )
        win32security.SetNamedSecurityInfo(
            str(path),
            win32security.SE_FILE_OBJECT,
            win32security.DACL_SECURITY_INFORMATION | inheritance,
            None,
            None,
            dacl,
            None,
        )

    def _win_inherit_only(path: Path) -> None:
        """Drop a file's own ACL entries so that it has exactly its folder's (private) ones."""
        # Not ours to change (another account's file): the folder's ACL still guards it.
        with contextlib.suppress(pywintypes.error):
            set_dacl(path, win32security.ACL(), protected=False)

    def _win_protect(path: Path, *, directory: bool, strict: bool) -> None:
        try:
            set_dacl(path, private_dacl(directory=directory), protected=True)
        except pywintypes.error as exc:
            if strict:
                raise PermissionError(exc.winerror, f"cannot make {path} private: {exc.strerror}") from None

    def _dacl(path: Path) -> tuple[bool, list[tuple[int, int, int, PySID]]]:
        sd = win32security.GetNamedSecurityInfo(
            str(path), win32security.SE_FILE_OBJECT, win32security.DACL_SECURITY_INFORMATION
        )
        control, _revision = sd.GetSecurityDescriptorControl()
        protected = bool(control & win32security.SE_DACL_PROTECTED)
        dacl = sd.GetSecurityDescriptorDacl()
        entries = []
        if dacl is not None:
            for i in range(dacl.GetAceCount()):
                (ace_type, ace_flags), mask, sid = dacl.GetAce(i)[:3]
                entries.append((ace_type, ace_flags, mask, sid))
        return protected, entries

    def _account(sid: PySID) -> str:
        try:
            name, domain, _kind = win32security.LookupAccountSid(None, sid)
        except pywintypes.error:
            return _sid_text(sid)
        return f"{domain}\\{name}" if domain else str(name)

    def _win_describe(path: Path) -> list[str]:
        protected, entries = _dacl(path)
        out = ["protected" if protected else "inherits"]
        for ace_type, _flags, mask, sid in entries:
            kind = "ALLOW" if ace_type == win32security.ACCESS_ALLOWED_ACE_TYPE else f"TYPE{ace_type}"
            out.append(f"{kind} {_account(sid)} ({_sid_text(sid)}) 0x{mask & 0xFFFFFFFF:08x}")
        return out

    def _win_is_private(path: Path) -> bool:
        protected, entries = _dacl(path)
        allowed = {_sid_text(s) for s in private_sids()}
        return protected and all(
            ace_type == win32security.ACCESS_ALLOWED_ACE_TYPE and _sid_text(sid) in allowed
            for ace_type, _flags, _mask, sid in entries
        )
