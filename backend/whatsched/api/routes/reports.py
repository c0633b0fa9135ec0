"""Report exports: messages, deliveries or contacts as CSV or Excel, streamed.

CSV rows are streamed from a server-side cursor as they are read; an XLSX workbook is written
(openpyxl write-only mode, off the event loop) to a spooled temporary file, then streamed.
Text cells that a spreadsheet would run as a formula (starting with = + - @, tab or CR) are
prefixed with a single quote, except whole signed numbers such as E.164 phones, which cannot
carry a formula and must survive a round trip through the contacts import. Rows are what the caller's RLS shows, narrowed to their own
unless an admin asks for scope=all. Every export is audited as `report.export`.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from typing import IO, Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from openpyxl import Workbook
from starlette.concurrency import run_in_threadpool

from whatsched.api.common import QueryDate, audit_action
from whatsched.api.deps import Caller, CallerDep, Resources, ResourcesDep
from whatsched.api.errors import ApiError, responses
from whatsched.auth.queries import is_admin
from whatsched.db.pool import user_tx
from whatsched.models import utc_iso
from whatsched.reports import queries

router = APIRouter(prefix="/api/reports", tags=["reports"])

Format = Literal["csv", "xlsx"]
ReportType = Literal["messages", "deliveries", "contacts"]

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
BATCH = 1000  # rows per cursor fetch and per CSV chunk
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # bigger workbooks spill to disk
CHUNK = 64 * 1024
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A whole signed number cannot carry a formula; left as is, phones (+56912345678) stay importable.
PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
# What the report's rows are filtered by: everyone (scope=all), first day, last day.
ReportArgs = tuple[bool, date | None, date | None]


def neutralise(text: str) -> str:
    """A cell a spreadsheet would evaluate as a formula becomes plain text."""
    if text.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, int | float):
        return str(value)
    return neutralise(str(value))


def xlsx_cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        # Excel has no time zones: UTC wall time (the column names say so).
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, UUID):
        return str(value)
    return neutralise(str(value))


def header(columns: list[str]) -> list[str]:
    return [c + " (UTC)" if c.endswith("_at") or c == "scheduled_for" else c for c in columns]


def csv_chunk(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


async def stream_csv(res: Resources, who: Caller, kind: str, args: ReportArgs) -> AsyncIterator[bytes]:
    """Its own transaction, opened when the download starts and closed when it ends or is dropped."""
    async with user_tx(res.pool, who.claims, who.request_headers) as conn:
        report = await queries.open_report(conn, kind, *args)
        # A BOM so Excel reads the file as UTF-8 (names with accents).
        yield "\ufeff".encode() + csv_chunk([header(report.columns)])
        while rows := await report.batch(BATCH):
            yield csv_chunk([[csv_cell(v) for v in row.values()] for row in rows])


async def build_xlsx(conn: asyncpg.Connection, kind: str, args: ReportArgs) -> IO[bytes]:
    book = Workbook(write_only=True)
    sheet = book.create_sheet(kind)
    report = await queries.open_report(conn, kind, *args)
    sheet.append(header(report.columns))

    def append(batch: list[asyncpg.Record]) -> None:
        for row in batch:
            sheet.append([xlsx_cell(v) for v in row.values()])

    while rows := await report.batch(BATCH):
        await run_in_threadpool(append, rows)  # openpyxl is pure Python: keep the event loop free
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # closed by read_chunks
    await run_in_threadpool(book.save, spool)
    return spool


def read_chunks(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := spool.read(CHUNK):
            yield chunk
    finally:
        spool.close()


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The report as a file download",
            "content": {CONTENT_TYPES["csv"]: {}, CONTENT_TYPES["xlsx"]: {}},
        },
        **responses(401, 403, 422),
    },
)
async def export(
    *,
    format: Format = Query("csv", description="csv or xlsx"),
    type: ReportType = Query("messages", description="what to export (default: messages)"),
    from_: QueryDate | None = Query(
        None, alias="from", description="first day of creation (YYYY-MM-DD, your timezone)"
    ),
    to: QueryDate | None = Query(None, description="last day of creation, included"),
    scope: Literal["mine", "all"] = Query("mine", description="all: every user's rows (admins only)"),
    who: CallerDep,
    res: ResourcesDep,
) -> StreamingResponse:
    """Download messages, deliveries or contacts. Times are UTC; text that could run as a spreadsheet
    formula starts with a single quote."""
    if from_ is not None and to is not None and from_ > to:
        raise ApiError(
            422, "validation_error", "`from` is after `to`.", [{"field": "from", "message": "must not be after to"}]
        )
    everyone = scope == "all"
    args: ReportArgs = (everyone, from_, to)
    # Short transactions, one after another, rather than user_conn: the audit must commit even if the
    # download is dropped, and the CSV stream needs its transaction for as long as the client reads.
    async with user_tx(res.pool, who.claims, who.request_headers) as conn:
        if everyone and not await is_admin(conn):
            raise ApiError(403, "forbidden", "Only an admin can export everyone's data.")
        details = {"type": type, "format": format, "from": str(from_ or ""), "to": str(to or ""), "scope": scope}
        await audit_action(conn, who, "report.export", "report", type, details)
    filename = f"whatsched-{type}-{datetime.now(UTC).date().isoformat()}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"}
    if format == "csv":
        return StreamingResponse(stream_csv(res, who, type, args), media_type=CONTENT_TYPES["csv"], headers=headers)
    async with user_tx(res.pool, who.claims, who.request_headers) as conn:
        spool = await build_xlsx(conn, type, args)
    headers["Content-Length"] = str(spool.seek(0, io.SEEK_END))
    spool.seek(0)
    return StreamingResponse(read_chunks(spool), media_type=CONTENT_TYPES["xlsx"], headers=headers)
