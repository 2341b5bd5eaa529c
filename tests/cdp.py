"""Drive a real headless Chromium over the Chrome DevTools Protocol (tests only): open a page, read its DOM,
click an element with real mouse events, take a screenshot.

Chromium is started with ``--remote-debugging-port=0`` in its own process group and a throw-away profile;
the DevTools address is read from its stderr; the protocol runs over aiohttp's WebSocket client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.kit.wait import until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Tab:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = await self.ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection ended: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result
            self.events.append(data)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href.indexOf('code=') < 0")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> None:
        async def true() -> bool:
            return bool(await self.evaluate(f"!!({expression})"))

        await until(true, timeout, f"the page: {expression}", interval=0.05)

    async def click(self, selector: str) -> None:
        """A real click: mouse pressed and released at the centre of the element."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    async def press(self, key: str) -> None:
        """A real key press (down and up) as a keyboard sends it: ``Tab``, ``Shift+Tab``, ``Enter``,
        ``Space``, ``ArrowDown``, or one printable character."""
        modifiers = 0
        if key.startswith("Shift+"):
            modifiers, key = 8, key.removeprefix("Shift+")
        special = {"Tab": (9, ""), "Enter": (13, "\r"), "Space": (32, " "), "ArrowDown": (40, "")}
        if key in special:
            code, text = special[key]
            name, dom = (" ", "Space") if key == "Space" else (key, key)
        else:
            code, text, name, dom = ord(key.upper()), key, key, f"Key{key.upper()}"
        down: dict[str, Any] = {
            "type": "keyDown" if text else "rawKeyDown",
            "key": name,
            "code": dom,
            "windowsVirtualKeyCode": code,
            "nativeVirtualKeyCode": code,
            "modifiers": modifiers,
        }
        if text:
            down["text"] = text
        await self.send("Input.dispatchKeyEvent", **down)
        await self.send(
            "Input.dispatchKeyEvent",
            type="keyUp",
            key=name,
            code=dom,
            windowsVirtualKeyCode=code,
            modifiers=modifiers,
        )

    async def type(self, text: str) -> None:
        """Text typed into the focused field (as an input method commits it)."""
        await self.send("Input.insertText", text=text)

    async def focused(self) -> dict[str, Any]:
        """What has the keyboard focus: tag, name, type, aria-label, text."""
        result: dict[str, Any] = await self.evaluate(
            "(() => { const e = document.activeElement; return {tag: e.tagName.toLowerCase(),"
            " name: e.getAttribute('name') || '', label: e.getAttribute('aria-label') || '',"
            " text: (e.textContent || '').trim(), form: e.form ? (e.form.id || e.form.action) : ''}; })()"
        )
        return result

    async def tab_to(self, matches: Any, limit: int = 60) -> dict[str, Any]:
        """Press Tab until the focused element satisfies ``matches(focused)``; fail after ``limit``."""
        for _ in range(limit):
            await self.press("Tab")
            here = await self.focused()
            if matches(here):
                return here
        raise AssertionError(f"Tab never reached the element (last: {await self.focused()})")

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))


@contextlib.asynccontextmanager
async def browser(width: int = 1100, height: int = 900) -> AsyncIterator[Tab]:
    """One headless Chromium with one tab."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert proc.stderr is not None
            port = 0
            async with asyncio.timeout(30):
                while not port:
                    line = (await proc.stderr.readline()).decode("utf-8", "replace")
                    if not line:
                        raise AssertionError("chromium exited before DevTools listened")
                    found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                    port = int(found.group(1)) if found else 0
            drain = asyncio.create_task(_drain(proc.stderr))
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json(content_type=None)
                page = next(t for t in targets if t.get("type") == "page")
                async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    tab = Tab(ws)
                    await tab.send("Page.enable")
                    await tab.send("Runtime.enable")
                    yield tab
            drain.cancel()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
