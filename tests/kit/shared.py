"""The project's shared reference tree (``../shared``: samples and reference documents).

Core tests build their own vectors from the specifications; the tests that also read ``../shared`` skip
without it, with a reason starting :data:`NEEDS_SHARED` (so ``-ra`` says exactly what was not run and why).
When the tree *is* there, such a skip is a defect (a renamed sample, a wrong path): under ``CI`` the
suite's ``conftest.py`` turns it into a failure.

``VITALS_AGENT_SHARED`` points the suite at another copy of the tree (a git worktree's ``..`` is not the
main checkout's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VITALS_AGENT_SHARED") or REPO.parent / "shared")
NEEDS_SHARED = "needs ../shared"


def shared_file(*parts: str) -> Path:
    """``../shared/<parts>``; skips the calling test (reason: :data:`NEEDS_SHARED` ...) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{NEEDS_SHARED}: {path} is not there")
    return path


def shared_present() -> bool:
    return SHARED.is_dir()
