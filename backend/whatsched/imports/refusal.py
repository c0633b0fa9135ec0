"""Why an import is refused as a whole: an HTTP status, a stable code and a sentence (no FastAPI here,
so the CLI and the route share it)."""

from __future__ import annotations


class ImportRefused(Exception):
    """The file (or the options) cannot be imported at all; nothing was written."""

    def __init__(self, status: int, code: str, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []


def unsupported(detail: str) -> ImportRefused:
    return ImportRefused(422, "unsupported_file", detail, [{"field": "file", "message": detail}])


def unreadable(detail: str) -> ImportRefused:
    return ImportRefused(422, "unreadable_file", detail, [{"field": "file", "message": detail}])


def too_large(code: str, detail: str) -> ImportRefused:
    return ImportRefused(413, code, detail, [{"field": "file", "message": detail}])
