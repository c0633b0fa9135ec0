"""One error body everywhere: {"detail": sentence, "code": snake_case, "errors": [{field, message}]}."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("whatsched.api")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: str
    code: str
    errors: list[FieldError] = []


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all share ErrorBody)."""
    return {status: {"model": ErrorBody} for status in statuses}


class ApiError(Exception):
    """Raise anywhere in a request to answer with this status and body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.headers = headers


def error_response(
    status: int,
    code: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"detail": detail, "code": code, "errors": errors or []}
    return JSONResponse(body, status_code=status, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    502: "bad_gateway",
    503: "service_unavailable",
}


def _field(loc: tuple[Any, ...]) -> str:
    """("body", "operations", 1, "path") -> "operations.1.path": only the first part says where."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or (str(loc[0]) if loc else "")


# The rules' SQLSTATEs (class WS, stable code in HINT) and the standard ones a request can trigger.
_SQLSTATE_STATUS = {
    "WS403": 403,  # forbidden: a WhatsApp number only an admin (or its owner) may manage
    "WS404": 404,
    "WS409": 409,
    "WS410": 409,
    "WS422": 422,
    "WS423": 422,
    "WS424": 422,
    "WS425": 422,
    "WS426": 422,  # content_empty | content_too_long | html_not_allowed
    "WS427": 422,  # spam_suspected
    "WS428": 422,  # validation_error: a contact's or group's name or description (DETAIL names the field)
    "WS429": 429,  # rate_limited
    "WS430": 422,  # number_not_allowed: a WhatsApp number the user may not send from (DETAIL names the field)
    "WS431": 422,  # media_*: an attachment refused (DETAIL names the field, the limit, what was found)
}
_CONSTRAINT_CODES = {
    "contacts_phone_per_owner": ("duplicate_phone", "phone", "A contact with this phone already exists."),
    "groups_name_per_owner": ("duplicate_group_name", "name", "A group with this name already exists."),
}


def rate_limit_headers(status: Mapping[str, Any]) -> dict[str, str]:
    """X-RateLimit-* (and Retry-After when nothing remains) from public.rate_limit_status."""
    headers = {
        "X-RateLimit-Limit": str(status["limit"]),
        "X-RateLimit-Remaining": str(status["remaining"]),
        "X-RateLimit-Reset": str(status["reset"]),
    }
    if status["remaining"] == 0 and "retry_after" in status:
        headers["Retry-After"] = str(status["retry_after"])
    return headers


def _rule_refusal(state: str, exc: asyncpg.PostgresError, message: str) -> JSONResponse:
    """A rule raised in SQL: HINT is the code; DETAIL the fields at fault (a JSON array), or the
    rate limit's state (a JSON object) for WS429."""
    code = getattr(exc, "hint", None) or "conflict"
    try:
        detail = json.loads(getattr(exc, "detail", None) or "null")
    except ValueError:
        detail = None
    if state == "WS429" and isinstance(detail, dict):
        return error_response(429, code, message, headers=rate_limit_headers({**detail, "remaining": 0}))
    errors = [e for e in detail if isinstance(e, dict)] if isinstance(detail, list) else []
    return error_response(_SQLSTATE_STATUS[state], code, message, errors)


def database_error(exc: asyncpg.PostgresError) -> JSONResponse | None:
    """Map a refusal from Postgres to the API's answer; None when it is a genuine server fault."""
    state = exc.sqlstate or ""
    message = getattr(exc, "message", None) or str(exc)
    if state in _SQLSTATE_STATUS:
        return _rule_refusal(state, exc, message)
    if state == "23505":  # unique_violation
        code, field, detail = _CONSTRAINT_CODES.get(
            getattr(exc, "constraint_name", "") or "", ("conflict", "", "This resource already exists.")
        )
        return error_response(409, code, detail, [{"field": field, "message": detail}] if field else [])
    if state == "23503":  # foreign_key_violation: a referenced row is not yours or does not exist
        return error_response(404, "related_not_found", "A referenced resource does not exist.")
    if state in ("22021", "22P05"):  # text Postgres cannot store, e.g. a NUL character (\u0000)
        return error_response(422, "validation_error", "Text must not contain NUL (\\u0000) or unencodable characters.")
    if state in ("23514", "23502") or state.startswith("22"):  # check/not-null, or any data exception: the value sent
        return error_response(422, "validation_error", message)
    if state == "42501":  # insufficient_privilege / RLS
        return error_response(403, "forbidden", "You are not allowed to do this.")
    if state == "57014":  # query_canceled: the statement ran past the role's statement_timeout
        return error_response(
            503,
            "statement_timeout",
            "The request took longer than the database allows; try again, or narrow it (fewer days, a smaller page).",
        )
    if state.startswith("08") or state in ("57P01", "57P02", "57P03", "53300"):
        return error_response(503, "database_unavailable", "The database is unreachable; try again shortly.")
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(asyncpg.PostgresError)
    async def _postgres(_: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        answer = database_error(exc)
        if answer is None:
            raise exc
        return answer

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = exc.errors()
        if any(e.get("type") == "json_invalid" for e in issues):
            return error_response(400, "malformed_json", "The request body is not valid JSON.")
        errors = [{"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", "invalid"))} for e in issues]
        first = errors[0] if errors else {"field": "", "message": "invalid"}
        detail = f"Invalid value for '{first['field']}': {first['message']}" if first["field"] else first["message"]
        return error_response(422, "validation_error", detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    async def _os(_: Request, exc: OSError) -> JSONResponse:
        return error_response(503, "database_unavailable", "The database is unreachable; try again shortly.")

    @app.exception_handler(asyncpg.exceptions.ConnectionDoesNotExistError)
    @app.exception_handler(asyncpg.exceptions.CannotConnectNowError)
    @app.exception_handler(asyncpg.exceptions.InterfaceError)
    @app.exception_handler(asyncpg.exceptions.InternalClientError)
    @app.exception_handler(asyncpg.exceptions.AdminShutdownError)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        return error_response(503, "database_unavailable", "The database is unreachable; try again shortly.")


class UnexpectedErrors:
    """A 500 with the error body for what no handler knows, logged with its traceback.

    Added inside CORSMiddleware, so a browser reads the 500 (an `Exception` handler would run in
    Starlette's outermost layer, where the CORS headers are never added). If the response had
    already started, the exception goes on up and the connection is cut."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            answer = error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")
            await answer(scope, receive, send)
