"""The API's documentation pages, served entirely by the API itself.

FastAPI's default `/docs` and `/redoc` load Swagger UI and ReDoc from a public CDN (and ReDoc its
fonts from Google), so they are blank offline or behind a Content-Security-Policy. Here the same
pages (FastAPI's `get_swagger_ui_html` / `get_redoc_html`) point at the files of a pinned
dependency, `fastapi-offline` (its `static/` folder: swagger-ui-bundle.js, swagger-ui.css,
redoc.standalone.js, favicon.png), served under `/docs/static/`. Each page carries a CSP that
allows nothing but this origin (plus the hash of Swagger UI's inline start-up script), so a
browser that tried to load anything from elsewhere would refuse it.

Pages: `/docs` and `/swagger` (Swagger UI), `/redoc` (ReDoc); the schema stays `/openapi.json`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS_PACKAGE = "fastapi_offline"  # pinned in pyproject.toml
STATIC_PATH = "/docs/static"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
SWAGGER_PATHS = ("/docs", "/swagger")
REDOC_PATH = "/redoc"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def assets_dir() -> Path:
    """The folder of the pinned package's Swagger UI and ReDoc files."""
    folder = Path(str(resources.files(ASSETS_PACKAGE).joinpath("static")))
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{ASSETS_PACKAGE} lacks {', '.join(missing)} in {folder}; reinstall the pinned version")
    return folder


def content_security_policy(html: str) -> str:
    """This origin only; inline scripts only by hash (Swagger UI's start-up call). ReDoc and Swagger
    UI style elements from script (inline styles), ReDoc searches in a blob: worker, and both
    draw icons from data: URLs."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {hashes}".rstrip(),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'self'",
        ]
    )


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = content_security_policy(bytes(page.body).decode())
    page.headers["Cache-Control"] = "no-cache"
    return page


def install(app: FastAPI) -> None:
    """Mount the assets and the three pages (create the app with docs_url=None, redoc_url=None)."""
    app.mount(STATIC_PATH, StaticFiles(directory=assets_dir()), name="docs-static")
    title = app.title

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
                oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_PATH}",
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{STATIC_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )

    async def oauth2_redirect() -> HTMLResponse:
        return _with_csp(get_swagger_ui_oauth2_redirect_html())

    for path in SWAGGER_PATHS:
        app.add_api_route(path, swagger, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.add_api_route(REDOC_PATH, redoc, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.add_api_route(
        OAUTH2_REDIRECT_PATH, oauth2_redirect, methods=["GET"], include_in_schema=False, response_class=HTMLResponse
    )
