"""The guide's hot reads without FastAPI's per-request machinery.

On a hot read, FastAPI spends more CPU on itself than the whole read costs a bare ASGI server:
routing through the included routers, solving the dependencies, validating a dozen query
parameters that almost every request leaves at their defaults (scripts/bench_api.py measures the
API against the same read served by a bare ASGI application: its "HTTP floor").

A route marked `@fast_lane` is still declared, documented and served by FastAPI. This middleware
calls the *same endpoint function* directly when a request leaves FastAPI nothing to decide:

- a GET on the route's path whose path parameters are UUIDs (hyphenated), with a bearer token that
  verifies, and no query parameter but `page` and `page_size`, each given once as digits within
  the bounds PagingDep declares;
- the endpoint's other parameters get their declared defaults, its CallerDep the verified
  caller (deps.caller itself), its ResourcesDep the app's resources, its PagingDep the page.

Anything else (a filter, a bad id or page, no token or an invalid one) goes on to FastAPI, which
validates and answers it as it always did. An exception the endpoint raises is answered by the
handler the app registered for its class (errors.install), as FastAPI would answer it. The scope
gets the matched route, so the metrics label the request by its template.

Installed as the innermost middleware: CORS, the 405 check, cache headers, ETags and timing
apply to its answers as to FastAPI's. tests/test_fast_lane.py holds its answers equal to FastAPI's.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from whatsched.api import deps
from whatsched.api.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__whatsched_fast_lane__"
# The one spelling of a UUID the lane reads itself (uuid.UUID accepts hyphens anywhere, pydantic
# does not); any other goes to FastAPI, which decides.
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def fast_lane(endpoint: F) -> F:
    """Mark a GET endpoint for the fast lane (put it below the route decorator)."""
    setattr(endpoint, MARK, True)
    return endpoint


@dataclass(frozen=True)
class Bounds:
    default: int
    low: int
    high: int


@dataclass(frozen=True)
class Paging:
    """An endpoint's PagingDep: its parameter name and the bounds page_params declares."""

    name: str
    page: Bounds
    page_size: Bounds

    def read(self, query: bytes) -> deps.PageParams | None:
        """The page a query string asks for (the defaults for what it leaves out), or None when it
        holds anything FastAPI must judge."""
        given: dict[bytes, int] = {}
        for pair in query.split(b"&") if query else ():
            name, _, value = pair.partition(b"=")
            if name not in (b"page", b"page_size") or name in given or not value.isdigit() or len(value) > 9:
                return None
            given[name] = int(value)
        page = given.get(b"page", self.page.default)
        size = given.get(b"page_size", self.page_size.default)
        if not (self.page.low <= page <= self.page.high and self.page_size.low <= size <= self.page_size.high):
            return None
        return deps.PageParams(page=page, page_size=size)


@dataclass(frozen=True)
class FastRoute:
    route: APIRoute
    defaults: dict[str, Any]  # the endpoint's query parameters, at their declared defaults
    path_params: tuple[str, ...]  # UUIDs
    who: str
    res: str | None
    paging: Paging | None


def _bounds(dependant: Dependant, name: str) -> Bounds:
    field = next(f for f in dependant.query_params if f.name == name)
    low = next(m.ge for m in field.field_info.metadata if hasattr(m, "ge"))
    high = next(m.le for m in field.field_info.metadata if hasattr(m, "le"))
    return Bounds(int(field.default), int(low), int(high))


def compile_route(route: APIRoute) -> FastRoute:
    """What the fast lane needs to call this route's endpoint; refuses a route it cannot serve."""
    d = route.dependant
    unsupported = d.body_params or d.header_params or d.cookie_params or d.request_param_name
    if route.methods != {"GET"} or unsupported or d.websocket_param_name or d.response_param_name:
        raise RuntimeError(f"{route.path}: the fast lane serves GETs of path, query and known dependencies only")
    for field in d.path_params:
        if field.field_info.annotation is not uuid.UUID:
            raise RuntimeError(f"{route.path}: the fast lane parses UUID path parameters only")
    named: dict[Any, str] = {}
    paging: Paging | None = None
    for sub in d.dependencies:
        if sub.call not in (deps.caller, deps.resources, deps.page_params) or sub.name is None:
            raise RuntimeError(f"{route.path}: the fast lane cannot provide the dependency {sub.call!r}")
        named[sub.call] = sub.name
        if sub.call is deps.page_params:
            paging = Paging(sub.name, _bounds(sub, "page"), _bounds(sub, "page_size"))
    if deps.caller not in named:
        raise RuntimeError(f"{route.path}: the fast lane serves authenticated reads only")
    return FastRoute(
        route=route,
        defaults={f.name: f.default for f in d.query_params},
        path_params=tuple(f.name for f in d.path_params),
        who=named[deps.caller],
        res=named.get(deps.resources),
        paging=paging,
    )


def marked_routes(routers: Iterable[APIRouter]) -> list[FastRoute]:
    return [
        compile_route(r)
        for router in routers
        for r in router.routes
        if isinstance(r, APIRoute) and getattr(r.endpoint, MARK, False)
    ]


class FastLane:
    def __init__(self, app: ASGIApp, routers: Iterable[APIRouter]) -> None:
        self.app = app
        routes = marked_routes(routers)
        self.exact = {r.route.path: r for r in routes if not r.path_params}
        self.templated = [r for r in routes if r.path_params]

    def _match(self, path: str) -> tuple[FastRoute, dict[str, Any]] | None:
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for candidate in self.templated:
            found = candidate.route.path_regex.match(path)
            if found:
                values = [found[name] for name in candidate.path_params]
                if not all(CANONICAL_UUID.fullmatch(value) for value in values):
                    return None
                return candidate, {
                    name: uuid.UUID(value) for name, value in zip(candidate.path_params, values, strict=True)
                }
        return None

    async def _call(self, scope: Scope, receive: Receive) -> tuple[APIRoute, Request, dict[str, Any]] | None:
        """The route, request and arguments to call its endpoint with, or None when FastAPI must
        judge the request."""
        matched = self._match(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if matched is None:
            return None
        route, path_params = matched
        query: bytes = scope.get("query_string", b"")
        page: deps.PageParams | None = None
        if route.paging is None:
            if query:  # a route without paging reads no query parameter here
                return None
        else:
            page = route.paging.read(query)
            if page is None:
                return None
        request = Request(scope, receive)
        try:
            who = await deps.caller(request)
        except ApiError:  # no token, or one that does not verify: FastAPI answers 401
            return None
        kwargs: dict[str, Any] = {**route.defaults, **path_params, route.who: who}
        if route.res is not None:
            kwargs[route.res] = deps.resources_of(request)
        if route.paging is not None:
            kwargs[route.paging.name] = page
        return route.route, request, kwargs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = await self._call(scope, receive)
        if call is None:
            await self.app(scope, receive, send)
            return
        route, request, kwargs = call
        scope["route"] = route
        try:
            response = await route.endpoint(**kwargs)
        except Exception as exc:
            handler = _handler(scope, exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)


def _handler(scope: Scope, exc: Exception) -> Callable[..., Any] | None:
    """The exception handler the app registered for this exception's class or its nearest base."""
    handlers: dict[Any, Callable[..., Any]] = scope["app"].exception_handlers
    return next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
