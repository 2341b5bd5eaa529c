@echo off
rem Uninstall vitals-agent (run as Administrator): stops and removes the service and deletes the program
rem folder. %ProgramData%\vitals-agent (configuration, outbox, audit log, logs) is kept: it may hold
rem readings not yet acknowledged by the EHR. Delete it by hand once `vitals-agent outbox list` is empty.
setlocal EnableExtensions
set "DEST=%ProgramFiles%\vitals-agent"
if not exist "%DEST%\python.exe" (
  echo vitals-agent is not installed in %DEST%
  exit /b 0
)
"%DEST%\python.exe" -m vitals_agent service remove
if errorlevel 1 exit /b 1
rem cmd.exe keeps running this script from memory; the program folder can go.
rmdir /S /Q "%DEST%"
echo removed %DEST%; kept %ProgramData%\vitals-agent
exit /b 0
