"""Checking that a file is private, on each platform by its own means (read back independently of the
code under test): POSIX mode bits; on Windows the file's DACL via pywin32 - only the process owner,
SYSTEM (S-1-5-18) and Administrators (S-1-5-32-544) may be granted anything, and nothing is denied."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

SYSTEM_SID = "S-1-5-18"
ADMINISTRATORS_SID = "S-1-5-32-544"


def acl_entries(path: Path) -> tuple[bool, list[tuple[str, str]]]:
    """(DACL protected?, [(ACE kind, SID)]) of ``path`` (Windows only)."""
    assert sys.platform == "win32"
    import win32security

    sd = win32security.GetNamedSecurityInfo(
        str(path), win32security.SE_FILE_OBJECT, win32security.DACL_SECURITY_INFORMATION
    )
    control, _ = sd.GetSecurityDescriptorControl()
    dacl = sd.GetSecurityDescriptorDacl()
    entries = []
    for i in range(dacl.GetAceCount() if dacl is not None else 0):
        ace = dacl.GetAce(i)
        (ace_type, _flags), _mask, sid = ace[0], ace[1], ace[2]
        kind = "allow" if ace_type == win32security.ACCESS_ALLOWED_ACE_TYPE else f"type{ace_type}"
        entries.append((kind, win32security.ConvertSidToStringSid(sid)))
    return bool(control & win32security.SE_DACL_PROTECTED), entries


def owner_sid() -> str:
    assert sys.platform == "win32"
    import win32api
    import win32con
    import win32security

    token = win32security.OpenProcessToken(win32api.GetCurrentProcess(), win32con.TOKEN_QUERY)
    sid = win32security.GetTokenInformation(token, win32security.TokenUser)[0]
    return str(win32security.ConvertSidToStringSid(sid))


def under_wine() -> bool:
    """Whether this Windows is Wine (ntdll exports wine_get_version)."""
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.windll.ntdll, "wine_get_version")


WINE_ACLS = (
    "Wine does not store file ACLs (upstream Wine 8 keeps Unix mode bits only; the xattr store is a "
    "wine-staging patch): the ACL readback needs a real Windows (test_host checks the DACL we set)"
)


def assert_private(path: Path, *, directory: bool = False, inherited: bool = False) -> None:
    """``path`` admits only its owner (and SYSTEM and Administrators on Windows). ``inherited``: a file
    another program created in a private directory (SQLite's -wal), private through inheritance."""
    if sys.platform == "win32":
        if under_wine():
            import pytest

            pytest.skip(WINE_ACLS)
        protected, entries = acl_entries(path)
        allowed = {owner_sid(), SYSTEM_SID, ADMINISTRATORS_SID}
        assert protected or inherited, f"{path}: DACL not protected: {entries}"
        assert entries, f"{path}: empty DACL"
        assert all(kind == "allow" and sid in allowed for kind, sid in entries), f"{path}: {entries}"
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if inherited:
        assert mode & 0o077 == 0, f"{path}: mode {mode:o}"
    else:
        assert mode == (0o700 if directory else 0o600), f"{path}: mode {mode:o}"


def make_public(path: Path) -> None:
    """Widen ``path``'s permissions the platform's way (mode 0644; an Everyone ACE on Windows)."""
    if sys.platform == "win32":
        import ntsecuritycon
        import win32security

        everyone = win32security.CreateWellKnownSid(win32security.WinWorldSid, None)
        sd = win32security.GetNamedSecurityInfo(
            str(path), win32security.SE_FILE_OBJECT, win32security.DACL_SECURITY_INFORMATION
        )
        dacl = sd.GetSecurityDescriptorDacl() or win32security.ACL()
        dacl.AddAccessAllowedAce(win32security.ACL_REVISION, ntsecuritycon.FILE_GENERIC_READ, everyone)
        win32security.SetNamedSecurityInfo(
            str(path),
            win32security.SE_FILE_OBJECT,
            win32security.DACL_SECURITY_INFORMATION | win32security.UNPROTECTED_DACL_SECURITY_INFORMATION,
            None,
            None,
            dacl,
            None,
        )
        return
    os.chmod(path, 0o644)
