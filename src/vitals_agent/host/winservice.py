"""The Windows service (pywin32): install, remove, start, stop, status, and the service process itself.

The service's program is the embeddable CPython running ``python.exe -m vitals_agent service host
--config FILE``; that process hands its main thread to the service control dispatcher
(``servicemanager.StartServiceCtrlDispatcher``), which calls :meth:`AgentWinService.SvcRun` on a
service thread. There the agent runs on its own asyncio loop (proactor), exactly as ``vitals-agent
run`` does; the stop control sets the loop's stop event from the dispatcher's thread.

* Start type automatic (delayed: the network and USB drivers are up first); restart on failure (5 s,
  5 s, then 60 s; the count resets after a day). A configuration problem is not a failure to restart
  into: the service stops with service-specific code 78 and says why in the event log.
* Account: ``NT AUTHORITY\\LocalService`` by default (no network credentials, no admin rights), or a
  named account (``--account``; the password comes from ``VITALS_AGENT_SERVICE_PASSWORD`` or a prompt).
  ``service install`` creates the data folder with an ACL for that account, SYSTEM and Administrators.
* Status: SERVICE_START_PENDING until the agent reports ready (devices started, sender running), then
  SERVICE_RUNNING; SERVICE_STOP_PENDING with a 5 s wait hint on stop.
* Event log (Application, source ``vitals-agent``): started, stopped, and fatal errors, as one line each
  with counts and paths only, never patient data. The detailed log is ``data_dir\\logs\\agent.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

SERVICE_NAME = "vitals-agent"
DISPLAY_NAME = "vitals-agent (exam-room device integration)"
DESCRIPTION = (
    "Reads exam-room vital-sign devices and EKG carts and sends each reading to the EHR as HL7 ORU^R01 "
    "over MLLP, durably."
)
LOCAL_SERVICE = "NT AUTHORITY\\LocalService"
PASSWORD_ENV = "VITALS_AGENT_SERVICE_PASSWORD"  # noqa: S105 - the name of a variable, not a password
EXIT_CONFIG = 78  # same meaning as the Linux unit's RestartPreventExitStatus=78
STOP_WAIT_HINT_MS = 5000
LOG_FILE = "agent.log"
LOG_KEEP = 3
LOG_MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ServiceState:
    """What ``vitals-agent service status`` shows."""

    installed: bool
    state: str = "not installed"
    pid: int | None = None
    start_type: str | None = None
    account: str | None = None
    command: str | None = None
    restart_on_failure: str | None = None
    exit_code: int | None = None

    def lines(self) -> list[str]:
        if not self.installed:
            return [f"{SERVICE_NAME}: not installed (run install.cmd, or `vitals-agent service install`)"]
        out = [f"{SERVICE_NAME}: {self.state}" + (f" (pid {self.pid})" if self.pid else "")]
        for label, value in (
            ("start", self.start_type),
            ("account", self.account),
            ("command", self.command),
            ("on failure", self.restart_on_failure),
            ("last exit code", self.exit_code),
        ):
            if value not in (None, ""):
                out.append(f"  {label}: {value}")
        return out


def service_command(config: Path) -> tuple[str, str]:
    """(program, arguments) the service control manager runs."""
    return sys.executable, f'-m vitals_agent service host --config "{config}"'


def rotate_log(path: Path, keep: int = LOG_KEEP, max_bytes: int = LOG_MAX_BYTES) -> None:
    """At service start: move ``agent.log`` aside when it has grown past ``max_bytes`` (keeps ``keep``)."""
    try:
        if path.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


if sys.platform == "win32":
    import pywintypes
    import servicemanager
    import win32evtlogutil
    import win32security
    import win32service
    import win32serviceutil
    import winerror

    from vitals_agent.errors import VitalsAgentError

    _STATES = {
        win32service.SERVICE_STOPPED: "stopped",
        win32service.SERVICE_START_PENDING: "starting",
        win32service.SERVICE_STOP_PENDING: "stopping",
        win32service.SERVICE_RUNNING: "running",
        win32service.SERVICE_CONTINUE_PENDING: "continuing",
        win32service.SERVICE_PAUSE_PENDING: "pausing",
        win32service.SERVICE_PAUSED: "paused",
    }
    _START_TYPES = {
        win32service.SERVICE_AUTO_START: "automatic",
        win32service.SERVICE_DEMAND_START: "manual",
        win32service.SERVICE_DISABLED: "disabled",
        win32service.SERVICE_BOOT_START: "boot",
        win32service.SERVICE_SYSTEM_START: "system",
    }
    _FAILURE_ACTIONS = {
        "ResetPeriod": 24 * 3600,
        "RebootMsg": "",
        "Command": "",
        "Actions": [
            (win32service.SC_ACTION_RESTART, 5000),
            (win32service.SC_ACTION_RESTART, 5000),
            (win32service.SC_ACTION_RESTART, 60000),
        ],
    }

    class ServiceError(VitalsAgentError):
        """A service control request failed (one line, with what to do)."""

    def _why(exc: pywintypes.error) -> str:
        if exc.winerror == winerror.ERROR_ACCESS_DENIED:
            return "access denied: run it as Administrator"
        if exc.winerror == winerror.ERROR_SERVICE_DOES_NOT_EXIST:
            return f"the {SERVICE_NAME} service is not installed"
        if exc.winerror == winerror.ERROR_SERVICE_EXISTS:
            return f"the {SERVICE_NAME} service is already installed (service remove first)"
        return str(exc.strerror).rstrip(". ")

    @contextlib.contextmanager
    def _scm(access: int = win32service.SC_MANAGER_ALL_ACCESS) -> Any:
        try:
            handle = win32service.OpenSCManager(None, None, access)
        except pywintypes.error as exc:
            raise ServiceError(f"cannot open the service control manager: {_why(exc)}") from None
        try:
            yield handle
        finally:
            win32service.CloseServiceHandle(handle)

    @contextlib.contextmanager
    def _service(access: int = win32service.SERVICE_ALL_ACCESS) -> Any:
        with _scm(win32service.SC_MANAGER_CONNECT) as scm:
            try:
                handle = win32service.OpenService(scm, SERVICE_NAME, access)
            except pywintypes.error as exc:
                raise ServiceError(_why(exc)) from None
            try:
                yield handle
            finally:
                win32service.CloseServiceHandle(handle)

    def install(
        config: Path, data_dir: Path, account: str | None = None, password: str | None = None
    ) -> list[str]:
        """Register the service (automatic start, restart on failure) and its event-log source."""
        program, arguments = service_command(config)
        user = account or LOCAL_SERVICE
        notes: list[str] = []
        with _scm() as scm:
            try:
                handle = win32service.CreateService(
                    scm,
                    SERVICE_NAME,
                    DISPLAY_NAME,
                    win32service.SERVICE_ALL_ACCESS,
                    win32service.SERVICE_WIN32_OWN_PROCESS,
                    win32service.SERVICE_AUTO_START,
                    win32service.SERVICE_ERROR_NORMAL,
                    f'"{program}" {arguments}',
                    None,
                    False,
                    None,
                    user,
                    password if account else None,
                )
            except pywintypes.error as exc:
                raise ServiceError(f"cannot install the service: {_why(exc)}") from None
            try:
                for level, value, what in (
                    (win32service.SERVICE_CONFIG_DESCRIPTION, DESCRIPTION, "description"),
                    (win32service.SERVICE_CONFIG_FAILURE_ACTIONS, _FAILURE_ACTIONS, "restart on failure"),
                    (win32service.SERVICE_CONFIG_DELAYED_AUTO_START_INFO, True, "delayed start"),
                ):
                    try:
                        win32service.ChangeServiceConfig2(handle, level, value)
                    except (pywintypes.error, NotImplementedError) as exc:
                        notes.append(f"warning: could not set {what}: {getattr(exc, 'strerror', exc)}")
            finally:
                win32service.CloseServiceHandle(handle)
        try:
            win32evtlogutil.AddSourceToRegistry(SERVICE_NAME, servicemanager.__file__, "Application")
        except pywintypes.error as exc:
            notes.append(f"warning: event log source not registered: {_why(exc)}")
        prepare_data_dir(data_dir, user)
        notes.append(f"installed service {SERVICE_NAME} (automatic start, runs as {user})")
        notes.append(f"data: {data_dir}; log: {data_dir / 'logs' / LOG_FILE}")
        return notes

    def prepare_data_dir(data_dir: Path, account: str) -> None:
        """Create the data folder for the service account: full control for it, SYSTEM and
        Administrators only (protected ACL, inherited by everything the agent creates inside)."""
        from vitals_agent.host.files import admin_sids, private_dacl, set_dacl

        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            owner = [win32security.LookupAccountName(None, account)[0]]
        except pywintypes.error:
            owner = []  # an account Windows cannot resolve now: the agent makes the folder private itself
        with contextlib.suppress(pywintypes.error):
            set_dacl(data_dir, private_dacl(directory=True, sids=[*owner, *admin_sids()]), protected=True)

    def remove() -> list[str]:
        notes = []
        with contextlib.suppress(ServiceError):
            notes += stop()
        with _service() as handle:
            try:
                win32service.DeleteService(handle)
            except pywintypes.error as exc:
                raise ServiceError(f"cannot remove the service: {_why(exc)}") from None
        with contextlib.suppress(pywintypes.error):
            win32evtlogutil.RemoveSourceFromRegistry(SERVICE_NAME, "Application")
        notes.append(f"removed service {SERVICE_NAME}")
        return notes

    def _wait(handle: Any, wanted: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            state = int(win32service.QueryServiceStatus(handle)[1])
            if state == wanted or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def start(timeout: float = 30.0) -> list[str]:
        with _service() as handle:
            try:
                win32service.StartService(handle, None)
            except pywintypes.error as exc:
                if exc.winerror != winerror.ERROR_SERVICE_ALREADY_RUNNING:
                    raise ServiceError(f"cannot start the service: {_why(exc)}") from None
            state = _wait(handle, win32service.SERVICE_RUNNING, timeout)
        if state != win32service.SERVICE_RUNNING:
            raise ServiceError(
                f"the service is {_STATES.get(state, state)} after {timeout:g} s: see the event log and "
                "the agent's log"
            )
        return [f"{SERVICE_NAME}: running"]

    def stop(timeout: float = 10.0) -> list[str]:
        """Ask the service to stop and wait until it has (``net stop`` returns earlier under Wine)."""
        with _service() as handle:
            try:
                win32service.ControlService(handle, win32service.SERVICE_CONTROL_STOP)
            except pywintypes.error as exc:
                if exc.winerror != winerror.ERROR_SERVICE_NOT_ACTIVE:
                    raise ServiceError(f"cannot stop the service: {_why(exc)}") from None
            started = time.monotonic()
            state = _wait(handle, win32service.SERVICE_STOPPED, timeout)
        if state != win32service.SERVICE_STOPPED:
            raise ServiceError(f"the service did not stop within {timeout:g} s")
        return [f"{SERVICE_NAME}: stopped ({time.monotonic() - started:.1f} s)"]

    def reload() -> list[str]:
        """Ask the running service to read its configuration again (SERVICE_CONTROL_PARAMCHANGE)."""
        with _service(win32service.SERVICE_PAUSE_CONTINUE | win32service.SERVICE_QUERY_STATUS) as handle:
            try:
                win32service.ControlService(handle, win32service.SERVICE_CONTROL_PARAMCHANGE)
            except pywintypes.error as exc:
                if exc.winerror == winerror.ERROR_SERVICE_NOT_ACTIVE:
                    raise ServiceError(
                        "the service is not running: it reads the configuration when it starts"
                    ) from None
                raise ServiceError(f"cannot ask the service to reload: {_why(exc)}") from None
        return [f"{SERVICE_NAME}: asked to read its configuration again"]

    def status() -> ServiceState:
        try:
            with _service(win32service.SERVICE_QUERY_STATUS | win32service.SERVICE_QUERY_CONFIG) as handle:
                info = cast(dict[str, int], win32service.QueryServiceStatusEx(handle))
                config = win32service.QueryServiceConfig(handle)
                try:
                    actions = win32service.QueryServiceConfig2(
                        handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS
                    )
                except (pywintypes.error, NotImplementedError):
                    actions = None
        except ServiceError as exc:
            if "not installed" in str(exc):
                return ServiceState(installed=False)
            raise
        restart = None
        if actions and actions.get("Actions"):
            restart = ", ".join(
                f"restart after {delay / 1000:g} s"
                if kind == win32service.SC_ACTION_RESTART
                else f"action {kind}"
                for kind, delay in actions["Actions"]
            )
        exit_code = info.get("ServiceSpecificExitCode") or info.get("Win32ExitCode") or None
        return ServiceState(
            installed=True,
            state=_STATES.get(info["CurrentState"], str(info["CurrentState"])),
            pid=info.get("ProcessId") or None,
            start_type=_START_TYPES.get(config[1], str(config[1])),
            account=config[7],
            command=config[3],
            restart_on_failure=restart,
            exit_code=exit_code,
        )

    # ------------------------------------------------------------------------------------ the service

    def event_log(kind: str, text: str) -> None:
        """One line to the Windows event log (Application, source vitals-agent). No patient data."""
        with contextlib.suppress(Exception):
            {"info": servicemanager.LogInfoMsg, "warning": servicemanager.LogWarningMsg}.get(
                kind, servicemanager.LogErrorMsg
            )(f"{SERVICE_NAME}: {text}")

    class AgentWinService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION
        config_path: Path | None = None
        runner: Callable[[AgentWinService], int] | None = None  # runs the agent; set by host_service

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._loop: asyncio.AbstractEventLoop | None = None
            self._stop: asyncio.Event | None = None
            self._stop_requested = threading.Event()
            self._reload: Callable[[], None] | None = None  # the agent's request_reload, once it runs

        def GetAcceptedControls(self) -> int:
            # and "read your configuration again" (SERVICE_CONTROL_PARAMCHANGE: `service reload`,
            # `config pull`, `sc control vitals-agent paramchange`): Windows' SIGHUP
            accepted = super().GetAcceptedControls()  # type: ignore[no-untyped-call]
            return int(accepted) | win32service.SERVICE_ACCEPT_PARAMCHANGE

        def SvcOther(self, control: int) -> None:
            if control != win32service.SERVICE_CONTROL_PARAMCHANGE:
                return
            loop, reload = self._loop, self._reload
            if loop is not None and reload is not None:
                with contextlib.suppress(RuntimeError):  # the loop already ended
                    loop.call_soon_threadsafe(reload)

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            self._stop_requested.set()
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None:
                with contextlib.suppress(RuntimeError):  # the loop already ended
                    loop.call_soon_threadsafe(stop.set)

        SvcShutdown = SvcStop

        def SvcRun(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_START_PENDING, waitHint=30000)
            code = self.SvcDoRun()
            if code == EXIT_CONFIG:
                self.ReportServiceStatus(
                    win32service.SERVICE_STOPPED,
                    win32ExitCode=winerror.ERROR_SERVICE_SPECIFIC_ERROR,
                    svcExitCode=EXIT_CONFIG,
                )
            else:
                self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)

        def SvcDoRun(self) -> int:
            try:
                assert self.runner is not None
                return self.runner(self)
            except BaseException as exc:  # a bug: say so, then let the SCM restart us (failure actions)
                event_log("error", f"stopped by an unexpected error: {type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    import traceback

                    traceback.print_exc(file=sys.stderr)
                    sys.stderr.flush()
                os._exit(1)

        def ready(self, event: str, status_text: str) -> None:
            if event == "ready":
                self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            elif event == "stopping":
                self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)

    def open_log(folder: Path) -> TextIO:
        from vitals_agent import host

        host.private_dir(folder)
        path = folder / LOG_FILE
        rotate_log(path)
        stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the service
        sys.stderr = stream  # tracebacks of a bug land in the log too (a service has no console)
        return stream

    def host_service(config: Path, runner: Callable[[AgentWinService], int]) -> int:
        """Run as the service process (called by the service control manager through ``service host``);
        ``runner(service)`` runs the agent on the service thread. Returns when the service has stopped."""
        from vitals_agent.host import com

        com.use_mta()
        AgentWinService.config_path = config
        AgentWinService.runner = staticmethod(runner)
        servicemanager.Initialize(SERVICE_NAME, servicemanager.__file__)
        servicemanager.PrepareToHostSingle(AgentWinService)
        try:
            servicemanager.StartServiceCtrlDispatcher()  # type: ignore[no-untyped-call]
        except pywintypes.error as exc:
            if exc.winerror == winerror.ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
                raise ServiceError(
                    "`service host` is what the Windows service runs; from a console use "
                    "`vitals-agent run --config FILE` or `vitals-agent service start`"
                ) from None
            raise
        return 0

else:
    from vitals_agent.host import PlatformError

    def _unsupported(action: str) -> NoReturn:
        raise PlatformError(
            f"`vitals-agent service {action}` manages the Windows service; on Linux install "
            "deploy/vitals-agent.service with systemd (see the README)"
        )

    def install(
        config: Path, data_dir: Path, account: str | None = None, password: str | None = None
    ) -> list[str]:
        _unsupported("install")

    def remove() -> list[str]:
        _unsupported("remove")

    def start(timeout: float = 30.0) -> list[str]:
        _unsupported("start")

    def stop(timeout: float = 10.0) -> list[str]:
        _unsupported("stop")

    def reload() -> list[str]:
        _unsupported("reload")

    def status() -> ServiceState:
        _unsupported("status")

    def host_service(config: Path, runner: Callable[[Any], int]) -> int:
        _unsupported("host")
