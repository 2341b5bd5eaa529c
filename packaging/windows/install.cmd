@echo off
rem Install vitals-agent (run as Administrator from the unpacked zip):
rem   copies the program to %ProgramFiles%\vitals-agent, creates %ProgramData%\vitals-agent\agent.toml
rem   from the example when there is none (an existing configuration is never overwritten), and installs
rem   and configures the Windows service "vitals-agent" (automatic start, restart on failure). It does not
rem   start the service: edit agent.toml, check it, then start it (the last lines printed say how).
setlocal EnableExtensions
set "SRC=%~dp0app"
set "DEST=%ProgramFiles%\vitals-agent"
set "CONF=%ProgramData%\vitals-agent"
if not exist "%SRC%\python.exe" (
  echo error: %SRC%\python.exe is missing: run install.cmd from the unpacked zip
  exit /b 1
)
if exist "%DEST%\python.exe" (
  echo stopping the running service before the upgrade
  "%DEST%\python.exe" -m vitals_agent service stop >nul 2>&1
)
xcopy "%SRC%" "%DEST%\" /E /I /Q /Y >nul
if errorlevel 1 (
  echo error: cannot copy the program to %DEST% ^(run install.cmd as Administrator^)
  exit /b 1
)
if not exist "%CONF%" mkdir "%CONF%"
if not exist "%CONF%\agent.toml" (
  copy /Y "%DEST%\agent.example.toml" "%CONF%\agent.toml" >nul
  echo created %CONF%\agent.toml from the example: edit it before starting the service
) else (
  echo kept the existing %CONF%\agent.toml
)
"%DEST%\python.exe" -m vitals_agent service install --config "%CONF%\agent.toml" %*
if errorlevel 1 exit /b 1
echo installed to %DEST%
echo next: "%DEST%\vitals-agent.cmd" check-config "%CONF%\agent.toml"
echo then: "%DEST%\vitals-agent.cmd" service start   and   "%DEST%\vitals-agent.cmd" service status
exit /b 0
