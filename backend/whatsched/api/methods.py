"""What the OpenAPI document declares, enforced before routing: 405 Method Not Allowed as HTTP has
it, and single-valued query parameters given once.

Starlette routes a request to the first route whose path matches and answers 405 only when that one
route (each of ours declares one method) refuses the method, with `Allow` naming that route's
method alone. So `PUT /api/messages/dashboard` was read as `PUT /api/messages/{message_id}` and
refused 422 for its id, and `OPTIONS /api/messages` got `Allow: GET` although the resource also
takes POST. Generated clients (openapi-fetch and the like) rely on the document being the truth.

Here a path belongs to one resource: the most specific path template of /openapi.json that matches
it (a literal segment beats a parameter, as OpenAPI matches concrete paths before templated ones).
A request whose method that resource does not declare is answered 405 with our error body and an
`Allow` header listing exactly the methods it declares.

A query parameter the operation declares as one value (not an array) and that comes several times
(`?q=a&q=b`) is refused 422 `validation_error` naming it: FastAPI would silently keep the last one.

Everything else goes on to the router untouched: paths no template matches (404s, the socket, the
undocumented bridge and metrics routes), and every declared method with its parameters.

Installed inside CORSMiddleware: preflights are answered before they get here, and a 405 carries the
CORS headers a browser needs to read it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from whatsched.api.errors import error_response

# What OpenAPI calls an operation, in the order `Allow` lists them (RFC 9110 sets none).
HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
_PARAMETER = re.compile(r"\{[^/{}]+\}")


@dataclass(frozen=True)
class Resource:
    template: str
    regex: re.Pattern[str]
    methods: tuple[str, ...]  # upper case, in HTTP_METHODS order
    single_valued: Mapping[str, frozenset[str]]  # method -> its query parameters that take one value

    @property
    def specificity(self) -> tuple[int, ...]:
        """Per segment, 0 for a literal and 1 for a parameter: the smallest tuple is the most specific."""
        return tuple(int(bool(_PARAMETER.fullmatch(part))) for part in self.template.strip("/").split("/"))

    @property
    def allow(self) -> str:
        return ", ".join(self.methods)


def _regex(template: str) -> re.Pattern[str]:
    parts = _PARAMETER.split(template)
    return re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")


def _takes_many(schema: Mapping[str, Any]) -> bool:
    """Whether a parameter's schema admits an array (`type: array`, or a branch of anyOf/oneOf)."""
    if schema.get("type") == "array" or "array" in (schema.get("type") or []):
        return True
    return any(_takes_many(branch) for key in ("anyOf", "oneOf") for branch in schema.get(key) or [])


def _single_valued(operation: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(
        p["name"]
        for p in operation.get("parameters") or []
        if p.get("in") == "query" and not _takes_many(p.get("schema") or {})
    )


def resources(document: Mapping[str, Any]) -> list[Resource]:
    """One entry per path of an OpenAPI document, most specific first."""
    entries = []
    for template, item in (document.get("paths") or {}).items():
        declared = [m for m in HTTP_METHODS if m in item]
        if declared:
            single = {m.upper(): _single_valued(item[m]) for m in declared}
            entries.append(Resource(template, _regex(template), tuple(m.upper() for m in declared), single))
    return sorted(entries, key=lambda r: r.specificity)


def repeated(query_string: bytes, single_valued: frozenset[str]) -> list[tuple[str, int]]:
    """The single-valued parameters a query string gives more than once, with how many times."""
    if not single_valued or b"&" not in query_string:  # one parameter cannot be repeated
        return []
    counts = Counter(name for name, _ in QueryParams(query_string).multi_items() if name in single_valued)
    return [(name, n) for name, n in counts.items() if n > 1]


Table = dict[int, list[Resource]]


def by_depth(entries: list[Resource]) -> Table:
    """Resources grouped by their number of segments, most specific first in each group: a
    parameter matches one segment, so a path is compared only with templates of its depth."""
    table: Table = {}
    for entry in entries:
        table.setdefault(entry.template.count("/"), []).append(entry)
    return table


def resource_for(path: str, table: Table) -> Resource | None:
    """The most specific resource whose template matches the path, or None."""
    for entry in table.get(path.count("/"), ()):
        if entry.regex.match(path):
            return entry
    return None


class AsDeclared:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._table: Table | None = None

    def _resources(self, scope: Scope) -> Table:
        if self._table is None:  # every router is included once the first request arrives
            self._table = by_depth(resources(scope["app"].openapi()))
        return self._table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not hasattr(scope.get("app"), "openapi"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        resource = resource_for(path, self._resources(scope))
        method: str = scope["method"].upper()
        if resource is None:
            await self.app(scope, receive, send)
            return
        if method not in resource.methods:
            answer = error_response(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {resource.template}; it allows {resource.allow}.",
                headers={"Allow": resource.allow},
            )
            await answer(scope, receive, send)
            return
        twice = repeated(scope.get("query_string", b""), resource.single_valued[method])
        if twice:
            errors = [{"field": name, "message": f"takes one value, given {n} times"} for name, n in twice]
            detail = f"Invalid value for '{errors[0]['field']}': {errors[0]['message']}"
            await error_response(422, "validation_error", detail, errors)(scope, receive, send)
            return
        await self.app(scope, receive, send)
