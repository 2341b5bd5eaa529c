"""The COM apartment of the agent's threads (Windows): bleak's WinRT backend needs a multithreaded
apartment (MTA). pywin32's ``pythoncom`` initialises the importing thread as a single-threaded apartment
(STA) unless ``sys.coinit_flags`` says otherwise, after which WinRT callbacks would need a message pump
that an asyncio loop does not run (bleak then hangs or raises). :func:`use_mta` sets the flag before any
pywin32 COM import; :func:`apartment` reads the thread's apartment back (tests, ``service status``).
"""

from __future__ import annotations

import sys

COINIT_MULTITHREADED = 0x0


def use_mta() -> None:
    """Make pywin32 initialise COM as MTA in this process (no effect off Windows, or once pythoncom is
    already imported: then :func:`apartment` tells what the thread got)."""
    if sys.platform == "win32" and "pythoncom" not in sys.modules:
        sys.coinit_flags = COINIT_MULTITHREADED  # type: ignore[attr-defined]


def apartment() -> str | None:
    """The calling thread's COM apartment: ``"MTA"``, ``"STA"``, ``"MAINSTA"``, ``"NA"``, ``"none"``
    (COM not initialised on this thread), or None off Windows."""
    if sys.platform != "win32":
        return None
    import ctypes

    kind = ctypes.c_int()
    qualifier = ctypes.c_int()
    hr = ctypes.windll.ole32.CoGetApartmentType(ctypes.byref(kind), ctypes.byref(qualifier))
    if hr != 0:  # CO_E_NOTINITIALIZED and friends
        return "none"
    return {0: "STA", 1: "MTA", 2: "NA", 3: "MAINSTA"}.get(kind.value, f"type{kind.value}")
