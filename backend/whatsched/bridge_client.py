"""The HTTP client for the Node bridge (aiohttp: it stays fast under concurrency)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

# The bridge's error codes (bridge/src/constants.js ERRORS, checked by tests/test_bridge_contract.py),
# and which of them no retry can change: the number, or the request itself, is wrong.
ERROR_CODES = frozenset(
    {
        "bad_request",
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "payload_too_large",
        "invalid_number",
        "not_registered",
        # WhatsApp restricts this number's new chats (error 463): transient, the number is at fault.
        "restricted_new_chats",
        "rate_limited",
        "send_failed",
        "not_connected",
        # An attachment the bridge fetched is not the file described (size or SHA-256): permanent.
        "media_mismatch",
        # An attachment the bridge could not fetch: transient.
        "media_unavailable",
    }
)
PERMANENT_CODES = frozenset({"not_registered", "invalid_number", "bad_request", "payload_too_large", "media_mismatch"})


class BridgeError(Exception):
    """The bridge refused or failed a call. `code` is the bridge's stable code."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    @property
    def transient(self) -> bool:
        return self.code not in PERMANENT_CODES


@dataclass(frozen=True)
class SendResult:
    whatsapp_message_id: str
    replayed: bool


class BridgeClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with self._http().request(method, self.base_url + path, json=json) as resp:
                try:
                    body: dict[str, Any] = await resp.json(content_type=None)
                except ValueError:
                    body = {}
                if resp.status >= 400:
                    raise BridgeError(
                        str(body.get("code") or "send_failed"),
                        str(body.get("message") or f"bridge answered {resp.status}"),
                        resp.status,
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BridgeError("bridge_unreachable", f"the WhatsApp bridge is unreachable: {exc!r}") from exc

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/status")

    async def send(self, to: str, body: str, idempotency_key: str, media: dict[str, Any] | None = None) -> SendResult:
        """One message; with `media` ({url, sha256, size, mime_type, filename, kind}) an attachment
        whose caption is `body` (may be empty)."""
        payload: dict[str, Any] = {"to": to, "body": body, "idempotency_key": idempotency_key}
        if media is not None:
            payload["media"] = media
        answer = await self._call("POST", "/send", payload)
        return SendResult(str(answer["whatsapp_message_id"]), bool(answer.get("replayed", False)))

    async def logout(self) -> dict[str, Any]:
        return await self._call("POST", "/logout")

    async def session(self, action: str) -> dict[str, Any]:
        """A session command (start, stop, restart, logout); the bridge answers the status after it."""
        return await self._call("POST", f"/session/{action}")

    async def restart(self) -> dict[str, Any]:
        return await self._call("POST", "/restart")
