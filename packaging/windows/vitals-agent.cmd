@echo off
rem vitals-agent command line: the embeddable CPython next to this file runs the agent.
"%~dp0python.exe" -m vitals_agent %*
exit /b %ERRORLEVEL%
