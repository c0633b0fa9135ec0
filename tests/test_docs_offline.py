"""The API documentation works with no network but the API's own: /docs, /swagger and /redoc load
Swagger UI and ReDoc from the API (the pinned fastapi-offline files under /docs/static/), under a
Content-Security-Policy that allows this origin only.

The browser test drives headless Chromium over the DevTools protocol (websockets) with every other
address blocked three ways: a dead proxy for everything but loopback, a host resolver that resolves
no name, and request interception that fails (and records) any request not for the API. It then
waits until the rendered page shows the schedule operation."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from whatsched.api import docs

CHROMIUM = os.environ.get("CHROME_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
OPERATION = "POST /api/messages/{message_id}/schedule"
RENDER_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------------------
# The pages themselves (no browser)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/swagger", "/redoc"])
async def test_pages_reference_only_our_own_assets(client: httpx.AsyncClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status_code == 200
    html = resp.text
    assert "/docs/static/" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "a page still loads something from elsewhere"
    assert "googleapis" not in html and "jsdelivr" not in html
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "http" not in csp  # no other origin is allowed


@pytest.mark.parametrize("name", docs.ASSETS)
async def test_assets_are_served_from_the_pinned_package(client: httpx.AsyncClient, name: str) -> None:
    resp = await client.get(f"{docs.STATIC_PATH}/{name}")
    assert resp.status_code == 200
    assert resp.content == (docs.assets_dir() / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# A minimal DevTools protocol client
# ---------------------------------------------------------------------------------------------


class DevTools:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.on_event: Any = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            else:
                self.events.append(message)
                if self.on_event is not None:
                    self.on_event(message)

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self.ws.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[DevTools]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set CHROME_PATH)")
    import websockets

    profile = tempfile.TemporaryDirectory(prefix="whatsched-docs-chromium-")
    dead_proxy = "127.0.0.1:9"  # the discard port: nothing listens, so every proxied request fails
    proc = await asyncio.create_subprocess_exec(
        *[
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile.name}",
            "--remote-debugging-port=0",
            # Everything but loopback goes to a proxy that is not there (loopback bypasses proxies)...
            f"--proxy-server=http://{dead_proxy}",
            # ...no name resolves (so no DNS leaves the machine either)...
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = Path(profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start its DevTools endpoint (exit code {proc.returncode})")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
        tools = DevTools(ws)
        try:
            yield tools
        finally:
            await tools.close()
    finally:
        # The whole session (start_new_session): Chromium's helper processes too, which otherwise
        # may still write into the profile while it is removed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await _gone(proc.pid)
        profile.cleanup()


async def _gone(group: int, within: float = 10.0) -> None:
    """Wait until no process of the group is left (SIGKILL what lingers past `within`)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        await asyncio.sleep(0.05)


def normalized(text: str) -> str:
    """Rendered text without whitespace or zero-width characters, lower case: Swagger UI puts the
    method and the path in separate elements, ReDoc shows the method as a lower-case badge."""
    return re.sub(r"[\s\u200b\u200c\u200d\ufeff]+", "", text).lower()


async def render(tools: DevTools, url: str, origin: str, expect: str) -> tuple[str, list[str], list[str]]:
    """Open `url` in a new tab; wait until its text contains `expect` (normalized). Returns the text,
    the URLs that were blocked (anything not under `origin`) and the console's errors."""
    target = (await tools.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
    session = (await tools.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    blocked: list[str] = []
    errors: list[str] = []
    pending: set[asyncio.Task[Any]] = set()

    def on_event(event: dict[str, Any]) -> None:
        if event.get("sessionId") != session:
            return
        method, params = event["method"], event.get("params", {})
        if method == "Fetch.requestPaused":
            request_url = params["request"]["url"]
            if request_url.startswith(origin + "/"):
                call = tools.call("Fetch.continueRequest", {"requestId": params["requestId"]}, session)
            else:
                blocked.append(request_url)
                call = tools.call(
                    "Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"}, session
                )
            task = asyncio.get_running_loop().create_task(call)
            pending.add(task)
            task.add_done_callback(pending.discard)
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
        elif method == "Runtime.exceptionThrown":
            errors.append(f"exception: {params['exceptionDetails'].get('text')}")

    tools.on_event = on_event
    try:
        await tools.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]}, session)
        await tools.call("Log.enable", {}, session)
        await tools.call("Runtime.enable", {}, session)
        await tools.call("Page.enable", {}, session)
        await tools.call("Page.navigate", {"url": url}, session)
        wanted = normalized(expect)
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        text = ""
        while time.monotonic() < deadline:
            answer = await tools.call(
                "Runtime.evaluate",
                {"expression": "document.body ? document.body.innerText : ''", "returnByValue": True},
                session,
            )
            text = str(answer.get("result", {}).get("value") or "")
            if wanted in normalized(text):
                break
            await asyncio.sleep(0.25)
        return text, blocked, errors
    finally:
        tools.on_event = None
        for task in list(pending):
            with contextlib.suppress(BaseException):
                await task
        await tools.call("Target.closeTarget", {"targetId": target})


REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/docs", "/swagger", "/redoc"])
async def test_docs_render_in_a_browser_that_can_reach_only_the_api(browser: DevTools, api_url: str, path: str) -> None:
    text, blocked, errors = await render(browser, api_url + path, api_url, OPERATION)
    assert normalized(OPERATION) in normalized(text), (
        f"{path} did not render {OPERATION!r} within {RENDER_TIMEOUT_S} s; blocked {blocked}; console {errors};"
        f" text: {text[:500]!r}"
    )
    assert blocked == [], f"{path} tried to load from outside the API: {blocked}"
    violations = [
        e
        for e in errors
        if ("Content Security Policy" in e or "Refused to" in e)
        # ReDoc's bundle hard-codes its "API docs by Redocly" footer logo on its CDN; the policy stops
        # it (that is the point) and nothing the reader needs depends on it. Anything else fails.
        and REDOC_LOGO not in e
    ]
    assert violations == [], f"{path} broke its own Content-Security-Policy: {violations}"
