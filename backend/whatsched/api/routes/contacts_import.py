"""POST /api/contacts/import: a CSV, TXT, XLSX, XLS or ODS file of contacts, imported all or nothing.

The body is read here, as it streams, with the byte limit enforced on the way in (so FastAPI's own
form parsing is not used, and the multipart schema is documented by hand). The import itself is
`whatsched.imports.service`, shared with `whatsched contacts import`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from whatsched.api.deps import CallerDep, ResourcesDep
from whatsched.api.errors import ApiError, responses
from whatsched.imports import phone_pool, service, upload
from whatsched.imports.refusal import ImportRefused


@asynccontextmanager
async def _lifespan(_app: object) -> AsyncIterator[None]:
    yield
    # uvicorn ends by re-raising SIGTERM, so atexit never runs: join the parsing workers here.
    await asyncio.to_thread(phone_pool.POOL.shutdown, True)


router = APIRouter(prefix="/api/contacts", tags=["contacts"], lifespan=_lifespan)


class InvalidRow(BaseModel):
    row: int = Field(description="Row number as a spreadsheet shows it (the header is row 1).")
    column: str = Field(description="The column's header in the file.")
    value: str = Field(description="The cell as it was in the file.")
    reason: str


class ImportAnswer(BaseModel):
    import_id: str = Field(description="Also in the import_progress events of this import.")
    total_rows: int = Field(description="Data rows in the file; blank rows are not counted.")
    created: int = Field(description="New contacts.")
    updated: int = Field(description="Existing contacts updated (on_duplicate=update).")
    skipped_duplicates: int = Field(
        description="Rows not written because their phone repeats one earlier in the file (the last one wins "
        "with on_duplicate=update) or, with on_duplicate=skip, is already in your contacts."
    )
    invalid_count: int = Field(
        description="Rows refused: invalid, non-mobile or empty phone, bad email, name too long."
    )
    invalid: list[InvalidRow] = Field(description="The first 1,000 refused rows, in file order.")
    groups_updated: int = Field(description="Groups of group_ids that gained at least one contact.")
    dry_run: bool = Field(description="True when nothing was written (the counts are what a real import would do).")


UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "CSV/TXT (UTF-8, UTF-16 or Windows-1252; , ; tab or | separated), XLSX, XLS or ODS. "
            "Headers in English or Spanish: name/nombre (or first + last name), phone/teléfono/celular/"
            "móvil/whatsapp/número, email/correo.",
        },
        "group_ids": {
            "type": "array",
            "items": {"type": "string", "format": "uuid"},
            "description": "Groups every contact of the file is added to (repeat the field or separate with commas).",
        },
        "default_country": {
            "type": "string",
            "pattern": "^[A-Za-z]{2}$",
            "description": "Country of national numbers (ISO 3166, e.g. CL); default: your profile's default_country.",
        },
        "on_duplicate": {
            "type": "string",
            "enum": ["skip", "update"],
            "default": "skip",
            "description": "A phone already in your contacts: leave it (skip) or update its name and email (update).",
        },
        "dry_run": {"type": "boolean", "default": False, "description": "Answer the counts without writing anything."},
        "mapping": {
            "type": "string",
            "description": 'JSON object naming the columns, e.g. {"phone": "Celular", "name": "Cliente", "email": "Mail"}.',
        },
        "sheet": {"type": "string", "description": "Workbook sheet to read (default: the first)."},
        "import_id": {"type": "string", "format": "uuid", "description": "Your id for this import's progress events."},
    },
}

_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _options(form: upload.Upload) -> service.ImportOptions:
    on_duplicate = (form.first("on_duplicate") or "skip").strip().lower()
    if on_duplicate not in ("skip", "update"):
        raise service.invalid_option("on_duplicate", "must be skip or update")
    dry_run_text = (form.first("dry_run") or "false").strip().lower()
    if dry_run_text not in _BOOLEANS:
        raise service.invalid_option("dry_run", "must be true or false")
    import_id = service.check_import_id(form.first("import_id"))
    return service.ImportOptions(
        group_ids=service.check_group_ids(form.fields.get("group_ids", [])),
        default_country=service.check_country(form.first("default_country")),
        on_duplicate="update" if on_duplicate == "update" else "skip",
        dry_run=_BOOLEANS[dry_run_text],
        mapping=service.parse_mapping(form.first("mapping")),
        sheet=(form.first("sheet") or "").strip() or None,
        **({"import_id": import_id} if import_id else {}),
    )


@router.post(
    "/import",
    response_model=ImportAnswer,
    summary="Import contacts from CSV or Excel",
    responses={
        **responses(400, 401, 404, 413, 415, 422),
        200: {"description": "The import's counts (nothing was written when dry_run is true)."},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": UPLOAD_SCHEMA}}}},
)
async def import_contacts(request: Request, who: CallerDep, res: ResourcesDep) -> JSONResponse:
    """All or nothing: every valid row is written in one transaction, or none is. Refusals: 422
    `unsupported_file` / `unreadable_file` / `no_phone_column` / `sheet_not_found`; 413
    `file_too_large` / `too_many_rows` / `zip_bomb`; 404 `related_not_found` for a group that is
    not yours. Progress goes to your WebSocket as `import_progress` events
    `{type, import_id, stage, processed, total}` with stage `reading`, `importing` (rows handled so
    far, a few updates a second), then `done` or `failed`; the answer still comes at the end."""
    settings = res.settings
    try:
        form = await upload.receive(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            settings.import_max_bytes,
        )
        options = _options(form)
        result = await service.run_import(
            res.pool,
            service.Actor(who.id, who.claims, who.ip, who.user_agent),
            form.data,
            form.filename,
            options,
            max_rows=settings.import_max_rows,
        )
    except ImportRefused as refused:
        raise ApiError(refused.status, refused.code, refused.detail, refused.errors) from None
    timing = ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in result.timings.items())
    return JSONResponse(result.answer(), headers={"Server-Timing": timing})
