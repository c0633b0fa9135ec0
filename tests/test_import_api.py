"""Contacts import: duplicates, dry runs, all-or-nothing writes, refusals (type, size, rows, zip
bombs, groups), other users' contacts, the audit, progress events and the CLI, against the real
database."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openpyxl
import psutil
import pytest
from api_processes import ApiProcess
from test_import_files import ANA, BOB, CAROL, DAVID, URL, book, counts, imported, post_import, xlsx
from websockets.asyncio.client import connect

from whatsched.api.deps import Resources
from whatsched.config import Settings
from whatsched.imports import normalize, phone_pool, writer

ROOT = Path(__file__).resolve().parent.parent


async def add_contact(admin: asyncpg.Connection, owner: str, phone: str, name: str, email: str | None = None) -> None:
    await admin.execute(
        "insert into contacts (created_by, name, phone, email) values ($1, $2, $3, $4)", owner, name, phone, email
    )


async def add_group(admin: asyncpg.Connection, owner: str, name: str | None = None) -> str:
    value = await admin.fetchval(
        "insert into groups (created_by, name) values ($1, $2) returning id::text",
        owner,
        name or "g-" + uuid.uuid4().hex[:8],
    )
    return str(value)


async def members(admin: asyncpg.Connection, group_id: str) -> set[str]:
    rows = await admin.fetch(
        "select c.phone from group_contacts gc join contacts c on c.id = gc.contact_id where gc.group_id = $1", group_id
    )
    return {r["phone"] for r in rows}


async def totals(admin: asyncpg.Connection) -> tuple[int, int, int]:
    row = await admin.fetchrow(
        "select (select count(*) from contacts)::int, (select count(*) from group_contacts)::int,"
        " (select count(*) from audit_log where action = 'contacts.import')::int"
    )
    assert row is not None
    return row[0], row[1], row[2]


DUPLICATES = f"nombre,telefono,correo\nAna 1,{ANA},ana1@example.com\nBob,{BOB},\nAna 2,+56 9 1234 5678,\nAna 3,0056912345678,ana3@example.com\n"


# ---------------------------------------------------------------------------------------------
# Duplicates
# ---------------------------------------------------------------------------------------------


async def test_duplicates_in_file_skip_keeps_the_first(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    body = await imported(client, user, DUPLICATES.encode())
    assert counts(body) == (4, 2, 0, 2, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana 1", "ana1@example.com"), BOB: ("Bob", None)}


async def test_duplicates_in_file_update_keeps_the_last(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    body = await imported(client, user, DUPLICATES.encode(), on_duplicate="update")
    assert counts(body) == (4, 2, 0, 2, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana 3", "ana3@example.com"), BOB: ("Bob", None)}


async def test_existing_contacts_skip_leaves_them_alone(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    await add_contact(admin, user.id, ANA, "Ana antes", "antes@example.com")
    await add_contact(admin, user.id, CAROL, "Carol antes")
    text = f"name,phone,email\nAna nueva,{ANA},nueva@example.com\nBob,{BOB},\nCarol nueva,{CAROL},\n"
    body = await imported(client, user, text.encode())
    assert counts(body) == (3, 1, 0, 2, 0, 0)
    assert await book(admin, user.id) == {
        ANA: ("Ana antes", "antes@example.com"),
        BOB: ("Bob", None),
        CAROL: ("Carol antes", None),
    }


async def test_existing_contacts_update_changes_what_the_file_says(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    await add_contact(admin, user.id, ANA, "Ana antes", "antes@example.com")
    await add_contact(admin, user.id, CAROL, "Carol antes", "carol@example.com")
    await add_contact(admin, user.id, DAVID, "David antes")
    # Ana: new name and email; Carol: new name, blank email keeps hers; David: no name keeps his.
    text = f"name,phone,email\nAna nueva,{ANA},nueva@example.com\nBob,{BOB},\nCarol nueva,{CAROL},\n,{DAVID},d@example.com\n"
    body = await imported(client, user, text.encode(), on_duplicate="update")
    assert counts(body) == (4, 1, 3, 0, 0, 0)
    assert await book(admin, user.id) == {
        ANA: ("Ana nueva", "nueva@example.com"),
        BOB: ("Bob", None),
        CAROL: ("Carol nueva", "carol@example.com"),
        DAVID: ("David antes", "d@example.com"),
    }


async def test_another_users_contacts_are_never_touched(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    owner, other = await make_user(), await make_user()
    await add_contact(admin, other.id, ANA, "De otro", "otro@example.com")
    before = await admin.fetchrow("select id, name, email, updated_at from contacts where created_by = $1", other.id)
    for mode, name in (("skip", "Ana mía"), ("update", "Ana mía 2")):
        text = f"name,phone,email\n{name},{ANA},mia@example.com\n"
        body = await imported(client, owner, text.encode(), on_duplicate=mode)
        assert body["created"] == (1 if mode == "skip" else 0)
        assert body["updated"] == (0 if mode == "skip" else 1)  # the second run updates the owner's own copy
    assert await book(admin, owner.id) == {ANA: ("Ana mía 2", "mia@example.com")}
    after = await admin.fetchrow("select id, name, email, updated_at from contacts where created_by = $1", other.id)
    assert after == before
    assert await book(admin, other.id) == {ANA: ("De otro", "otro@example.com")}


async def test_an_admin_import_writes_only_their_own_contacts(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    boss, other = await make_user(admin=True), await make_user()
    await add_contact(admin, other.id, ANA, "De otro")
    body = await imported(client, boss, f"name,phone\nJefa,{ANA}\n".encode(), on_duplicate="update")
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, boss.id) == {ANA: ("Jefa", None)}
    assert await book(admin, other.id) == {ANA: ("De otro", None)}


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------


async def test_group_ids_receive_every_contact_of_the_file(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    first, second = await add_group(admin, user.id), await add_group(admin, user.id)
    await add_contact(admin, user.id, CAROL, "Carol antes")
    text = f"name,phone\nAna,{ANA}\nBob,{BOB}\nCarol,{CAROL}\nMal,123\n"
    body = await imported(client, user, text.encode(), group_ids=f"{first}, {second}")
    assert counts(body) == (4, 2, 0, 1, 1, 2)
    assert await members(admin, first) == await members(admin, second) == {ANA, BOB, CAROL}
    count = await admin.fetchval("select contact_count from groups where id = $1", first)
    assert count == 3
    # Again, as repeated fields: nothing new to add anywhere.
    body = await imported(client, user, text.encode(), group_ids=[first, second])
    assert counts(body) == (4, 0, 0, 3, 1, 0)


async def test_someone_elses_group_is_not_found_and_nothing_is_written(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user, other = await make_user(), await make_user()
    theirs = await add_group(admin, other.id)
    mine = await add_group(admin, user.id)
    for ids in (theirs, str(uuid.uuid4()), f"{mine},{theirs}"):
        response = await post_import(client, user, f"name,phone\nAna,{ANA}\n".encode(), group_ids=ids)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "related_not_found"
    assert await book(admin, user.id) == {}
    assert await members(admin, theirs) == set()
    response = await post_import(client, user, f"name,phone\nAna,{ANA}\n".encode(), group_ids="not-a-uuid")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "group_ids"


# ---------------------------------------------------------------------------------------------
# Dry run and all-or-nothing
# ---------------------------------------------------------------------------------------------


async def test_dry_run_answers_the_same_and_writes_nothing(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id)
    await add_contact(admin, user.id, BOB, "Bob antes")
    text = f"name,phone\nAna,{ANA}\nBob,{BOB}\nAna otra vez,{ANA}\nMal,abc\n"
    before = await totals(admin)
    dry = await imported(client, user, text.encode(), group_ids=group, on_duplicate="update", dry_run="true")
    assert await totals(admin) == before
    assert await book(admin, user.id) == {BOB: ("Bob antes", None)}
    assert dry["dry_run"] is True
    real = await imported(client, user, text.encode(), group_ids=group, on_duplicate="update")
    assert real["dry_run"] is False
    assert counts(dry) == counts(real) == (4, 1, 1, 1, 1, 1)
    assert dry["invalid"] == real["invalid"]
    assert await book(admin, user.id) == {ANA: ("Ana otra vez", None), BOB: ("Bob", None)}


async def test_a_failure_after_the_copy_leaves_no_rows(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id)
    seen: dict[str, int] = {}

    async def failing_link(conn: asyncpg.Connection, group_ids: Any) -> int:
        # The contacts are in the transaction by now: prove it, then fail.
        seen["inside"] = await conn.fetchval("select count(*) from contacts where created_by = $1", user.id)
        raise asyncpg.exceptions.ConnectionFailureError("the connection broke mid-import")

    monkeypatch.setattr(writer, "link_groups", failing_link)
    before = await totals(admin)
    response = await post_import(client, user, f"name,phone\nAna,{ANA}\nBob,{BOB}\n".encode(), group_ids=group)
    assert response.status_code == 503, response.text
    assert seen["inside"] == 2
    assert await totals(admin) == before
    assert await book(admin, user.id) == {}


async def test_a_group_that_vanishes_mid_import_leaves_no_rows(
    client: httpx.AsyncClient,
    make_user: Any,
    admin: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    res: Resources,
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id)
    await add_contact(admin, user.id, CAROL, "Carol antes")
    upsert = writer.upsert_contacts

    async def upsert_then_delete_group(conn: asyncpg.Connection, on_duplicate: Any) -> tuple[int, int]:
        written = await upsert(conn, on_duplicate)
        other = await asyncpg.connect(res.settings.database_url)
        try:
            await other.execute("delete from groups where id = $1", group)
        finally:
            await other.close()
        return written

    monkeypatch.setattr(writer, "upsert_contacts", upsert_then_delete_group)
    text = f"name,phone\nAna,{ANA}\nCarol nueva,{CAROL}\n"
    response = await post_import(client, user, text.encode(), group_ids=group, on_duplicate="update")
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "related_not_found"
    assert await book(admin, user.id) == {CAROL: ("Carol antes", None)}


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


async def test_unsupported_and_unreadable_files(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    docx = io.BytesIO()
    with zipfile.ZipFile(docx, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    cases = [
        ("report.pdf", b"%PDF-1.7\n...", 422, "unsupported_file"),
        ("photo.png", png, 422, "unsupported_file"),
        ("photo.csv", png, 422, "unreadable_file"),
        ("book.xlsx", b"name,phone\nAna,+56912345678\n", 422, "unreadable_file"),
        ("book.xlsx", b"PK\x03\x04 this is not really a zip", 422, "unreadable_file"),
        ("letter.docx", docx.getvalue(), 422, "unsupported_file"),
        ("letter.csv", docx.getvalue(), 422, "unsupported_file"),
        ("old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, 422, "unreadable_file"),
        ("empty.csv", b"", 422, "unreadable_file"),
        ("blank.csv", b"\n\n  \n", 422, "unreadable_file"),
    ]
    for filename, content, status, code in cases:
        response = await post_import(client, user, content, filename)
        assert (response.status_code, response.json()["code"]) == (status, code), (filename, response.text)
        assert response.json()["detail"]
    assert await book(admin, user.id) == {}


async def test_a_line_of_a_million_separators_is_not_a_million_columns(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    # A header that wide is refused; a data row that long only loses its unnamed fields.
    response = await post_import(client, user, ("phone" + "," * 1_000_000 + "\n" + ANA + "\n").encode())
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "unreadable_file" and "columns" in response.json()["detail"]
    body = await imported(client, user, (f"name,phone\nAna,{ANA}\nBob,{BOB}" + "," * 1_000_000 + "\n").encode())
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana", None), BOB: ("Bob", None)}


async def test_a_sheet_too_big_to_convert_is_refused_before_converting(
    client: httpx.AsyncClient, make_user: Any
) -> None:
    user = await make_user()
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["name", "phone"])
    sheet.append(["Ana", ANA])
    sheet.cell(row=5000, column=999, value="x")  # A1:ALK5000 is about 5 million cells to convert
    out = io.BytesIO()
    workbook.save(out)
    response = await post_import(client, user, out.getvalue(), "sparse.xlsx")
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "file_too_large" and "cells" in response.json()["detail"]
    sheet.cell(row=5000, column=999, value=None)
    sheet.cell(row=3, column=2000, value="x")
    out = io.BytesIO()
    workbook.save(out)
    response = await post_import(client, user, out.getvalue(), "wide.xlsx")
    assert response.status_code == 422 and "columns" in response.json()["detail"]


async def test_file_name_with_path_traversal_is_only_a_name(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    body = await imported(client, user, f"name,phone\nAna,{ANA}\n".encode(), "../../../../tmp/evil.csv")
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    details = await admin.fetchval(
        "select details from audit_log where actor_id = $1 and action = 'contacts.import'", user.id
    )
    assert json.loads(details)["file"] == "evil.csv"


async def test_import_is_audited_with_its_counts(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id)
    body = await imported(
        client, user, f"name,phone\nAna,{ANA}\nAna,{ANA}\nMal,1\n".encode(), "clientes.csv", group_ids=group
    )
    row = await admin.fetchrow(
        "select entity_type, details, ip::text as ip from audit_log where actor_id = $1 and action = 'contacts.import'",
        user.id,
    )
    assert row is not None
    details = json.loads(row["details"])
    assert details == {
        "import_id": body["import_id"],
        "file": "clientes.csv",
        "type": "csv",
        "total_rows": 3,
        "created": 1,
        "updated": 0,
        "skipped_duplicates": 1,
        "invalid_count": 1,
        "groups_updated": 1,
        "group_ids": [group],
        "on_duplicate": "skip",
    }
    assert row["entity_type"] == "contact" and row["ip"].startswith("127.0.0.1")


async def test_file_over_the_byte_limit_is_refused(
    client: httpx.AsyncClient,
    make_user: Any,
    admin: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    res: Resources,
) -> None:
    user = await make_user()
    monkeypatch.setattr(res.settings, "import_max_bytes", 2000)
    small = ("name,phone\n" + f"Ana,{ANA}\n" * 50).encode()
    big = ("name,phone\n" + "".join(f"N{i},+5691{i:07d}\n" for i in range(200))).encode()
    assert len(small) < 2000 < len(big)
    assert (await post_import(client, user, small)).status_code == 200

    response = await post_import(client, user, big)
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"
    assert "limit" in response.json()["detail"]

    # Chunked, with no Content-Length: refused while streaming, before the end of the body is read.
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        for i in range(1000):
            sent.append(i)
            yield b"N,+56912345678\n" * 20
        yield b"\r\n" + boundary + b"--\r\n"

    response = await client.post(
        URL, headers={**user.headers, "Content-Type": "multipart/form-data; boundary=xyz"}, content=body()
    )
    assert response.status_code == 413 and response.json()["code"] == "file_too_large"
    assert len(sent) < 1000  # the server stopped reading early
    assert await book(admin, user.id) == {ANA: ("Ana", None)}


async def test_declared_content_length_over_the_limit_is_refused_unread(
    client: httpx.AsyncClient, make_user: Any, monkeypatch: pytest.MonkeyPatch, res: Resources
) -> None:
    user = await make_user()
    monkeypatch.setattr(res.settings, "import_max_bytes", 1000)
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(1)
        yield b"x" * 10

    response = await client.post(
        URL,
        headers={
            **user.headers,
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(50 * 1024 * 1024),
        },
        content=body(),
    )
    assert response.status_code == 413 and response.json()["code"] == "file_too_large"


async def test_too_many_rows_is_refused(
    client: httpx.AsyncClient,
    make_user: Any,
    admin: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    res: Resources,
) -> None:
    user = await make_user()
    monkeypatch.setattr(res.settings, "import_max_rows", 10)
    rows = "".join(f"N{i},+5691{i:07d}\n" for i in range(10))
    # Ten rows (blank lines do not count) are fine; eleven are not.
    body = await imported(client, user, ("name,phone\n\n" + rows + "\n\n").encode())
    assert body["total_rows"] == 10
    response = await post_import(client, user, ("name,phone\n" + rows + f"X,{ANA}\n").encode())
    assert response.status_code == 413 and response.json()["code"] == "too_many_rows"
    sheet = xlsx({"S": [["name", "phone"]] + [[f"N{i}", f"+5691{i:07d}"] for i in range(11)]})
    response = await post_import(client, user, sheet, "big.xlsx")
    assert response.status_code == 413 and response.json()["code"] == "too_many_rows"
    assert len(await book(admin, user.id)) == 10


def _zip_with(name: str, payload_size: int) -> bytes:
    """An archive holding `name` of `payload_size` zero bytes, written in pieces (never in memory whole)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
        with archive.open(name, "w", force_zip64=False) as entry:
            piece = b"\x00" * (1024 * 1024)
            for _ in range(payload_size // len(piece)):
                entry.write(piece)
    return out.getvalue()


def _lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """Rewrite the uncompressed size of `name` in the central directory and the local header."""
    patched = bytearray(data)
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = archive.getinfo(name)
    struct.pack_into("<I", patched, info.header_offset + 22, declared)  # local header: uncompressed size
    position = data.find(b"PK\x01\x02")
    while position != -1:
        name_len = struct.unpack_from("<H", data, position + 28)[0]
        if data[position + 46 : position + 46 + name_len] == name.encode():
            struct.pack_into("<I", patched, position + 24, declared)  # central directory: uncompressed size
        position = data.find(b"PK\x01\x02", position + 4)
    return bytes(patched)


async def test_zip_bomb_by_ratio_is_refused(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    bomb = _zip_with("xl/worksheets/sheet1.xml", 64 * 1024 * 1024)
    assert len(bomb) < 200_000  # 64 MB of zeros in well under 1 MB
    response = await post_import(client, user, bomb, "bomb.xlsx")
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "zip_bomb"
    assert await book(admin, user.id) == {}


async def test_zip_bomb_that_lies_about_its_size_is_refused(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    # 8 MB of zeros declared as 1 KB: the directory looks harmless, only inflating tells.
    honest = _zip_with("xl/worksheets/sheet1.xml", 8 * 1024 * 1024)
    liar = _lie_about_size(honest, "xl/worksheets/sheet1.xml", 1024)
    assert zipfile.ZipFile(io.BytesIO(liar)).getinfo("xl/worksheets/sheet1.xml").file_size == 1024
    response = await post_import(client, user, liar, "liar.xlsx")
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "zip_bomb"


async def test_request_shape_errors(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    response = await client.post(URL, files={"file": ("a.csv", b"phone\n+56912345678\n")})
    assert response.status_code == 401
    response = await client.post(URL, headers=user.headers, json={"file": "x"})
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    response = await client.post(
        URL, headers=user.headers, data={"on_duplicate": "skip"}, files={"other": ("a.csv", b"x")}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "file"
    for field, value in (
        ("on_duplicate", "merge"),
        ("dry_run", "maybe"),
        ("mapping", "[1]"),
        ("mapping", '{"foo": "x"}'),
    ):
        response = await post_import(client, user, f"phone\n{ANA}\n".encode(), **{field: value})
        assert response.status_code == 422, (field, value)
        assert response.json()["errors"][0]["field"] == field


async def test_openapi_documents_the_import(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/api/contacts/import"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "group_ids", "default_country", "on_duplicate", "dry_run", "mapping", "sheet"} <= set(
        schema["properties"]
    )
    assert {"200", "401", "404", "413", "422"} <= set(operation["responses"])
    answer = spec["components"]["schemas"]["ImportAnswer"]["properties"]
    assert {
        "total_rows",
        "created",
        "updated",
        "skipped_duplicates",
        "invalid_count",
        "invalid",
        "groups_updated",
    } <= set(answer)


# ---------------------------------------------------------------------------------------------
# A large file: the process pool, progress events outside the transaction
# ---------------------------------------------------------------------------------------------


def _messy_phone(rng: random.Random, n: int) -> tuple[str, str]:
    digits = f"{n:08d}"
    e164 = "+569" + digits
    style = rng.randrange(4)
    raw = [e164, f"9 {digits[:4]} {digits[4:]}", f"0056 9 {digits[:4]}-{digits[4:]}", f"(9) {digits[:4]}.{digits[4:]}"][
        style
    ]
    return raw, e164


def _large_book(rows: int) -> tuple[bytes, set[str]]:
    """A CSV of `rows` contacts with distinct numbers in assorted formats, and their E.164 forms."""
    rng = random.Random(6)
    lines, expected = ["nombre,celular"], set()
    for i in range(rows):
        raw, e164 = _messy_phone(rng, 10_000_000 + i * 7)
        lines.append(f"Persona {i},{raw}")
        expected.add(e164)
    return ("\n".join(lines) + "\n").encode(), expected


async def test_large_file_progress_is_delivered_before_commit(
    client: httpx.AsyncClient,
    make_user: Any,
    admin: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    prepared: Any,
) -> None:
    user = await make_user()
    rows = max(normalize.PARALLEL_MIN_DISTINCT + 2000, 12_000)  # enough distinct numbers for the process pool
    content, expected = _large_book(rows)

    events: list[dict[str, Any]] = []
    first_batch_reported = asyncio.Event()

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event = json.loads(payload)
        if event.get("event") == "import_progress" and event.get("topic") == f"user:{user.id}":
            events.append(event["payload"])
            if event["payload"]["stage"] == "importing" and event["payload"]["processed"] > 0:
                first_batch_reported.set()

    listener = await asyncpg.connect(prepared.admin_url)
    await listener.add_listener("realtime", on_notify)
    upsert = writer.upsert_contacts
    calls: list[int] = []

    async def upsert_after_progress_arrives(conn: asyncpg.Connection, on_duplicate: Any) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 2:
            # The import's transaction is open here, with the first batch written: its progress
            # event can only have arrived if it was sent outside that transaction.
            await asyncio.wait_for(first_batch_reported.wait(), timeout=10)
        return await upsert(conn, on_duplicate)

    monkeypatch.setattr(writer, "upsert_contacts", upsert_after_progress_arrives)
    try:
        body = await imported(client, user, content, "grande.csv", import_id="5f0c6a36-7d0a-4a43-9a43-1b6a1c1f9e10")
        await asyncio.sleep(0.2)
    finally:
        await listener.close()
    assert counts(body) == (rows, len(expected), 0, rows - len(expected), 0, 0)
    assert set(await book(admin, user.id)) == expected
    assert {e["import_id"] for e in events} == {"5f0c6a36-7d0a-4a43-9a43-1b6a1c1f9e10"} == {body["import_id"]}
    stages = [e["stage"] for e in events]
    assert stages[0] == "reading" and stages[-1] == "done"
    assert set(stages) == {"reading", "importing", "done"} and len(calls) >= 2
    assert events[-1] == {
        "type": "import_progress",
        "import_id": body["import_id"],
        "stage": "done",
        "processed": rows,
        "total": rows,
    }
    assert all(e["processed"] <= e["total"] for e in events if e["stage"] != "reading")
    assert phone_pool.POOL.executor is not None  # the distinct numbers went through the pool


async def test_failed_import_reports_a_failed_stage(client: httpx.AsyncClient, make_user: Any, prepared: Any) -> None:
    user = await make_user()
    events: list[dict[str, Any]] = []
    listener = await asyncpg.connect(prepared.admin_url)
    await listener.add_listener("realtime", lambda *a: events.append(json.loads(a[3])["payload"]))
    try:
        response = await post_import(client, user, b"nombre\nAna\n")
        await asyncio.sleep(0.2)
    finally:
        await listener.close()
    assert response.status_code == 422
    mine = [e for e in events if e.get("type") == "import_progress"]
    assert [e["stage"] for e in mine][-1] == "failed"


async def test_progress_reaches_the_users_websocket(settings: Settings, make_user: Any) -> None:
    user = await make_user()
    api = ApiProcess(settings).start()
    try:
        await asyncio.to_thread(api.wait_ready)
        async with connect(api.ws_url(user.id), proxy=None) as ws:
            await ws.send(json.dumps({"type": "auth", "token": user.token}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "auth_ok"}
            text = "nombre,telefono\n" + "".join(f"P{i},+5691{i:07d}\n" for i in range(3000))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", headers=user.headers) as http:
                response = await http.post(URL, files={"file": ("c.csv", text.encode())}, timeout=60)
            assert response.status_code == 200, response.text
            import_id = response.json()["import_id"]
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["stage"] != "done":
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame.get("type") == "import_progress":
                    frames.append(frame)
    finally:
        api.stop()
    assert {f["import_id"] for f in frames} == {import_id}
    assert frames[0]["stage"] == "reading"
    assert frames[-1] == {
        "type": "import_progress",
        "import_id": import_id,
        "stage": "done",
        "processed": 3000,
        "total": 3000,
    }


WORKERS_SCRIPT = """
import os, sys
from whatsched.imports import phone_pool
if __name__ == "__main__":
    pids = sorted({f.result() for f in phone_pool.POOL.warm()} | {f.result() for f in phone_pool.POOL.warm()})
    print(" ".join(map(str, pids)), flush=True)
    os._exit(0)  # no atexit, no shutdown: as if the API process were killed
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_parsing_workers_exit_when_the_api_process_dies(tmp_path: Path) -> None:
    script = tmp_path / "pool_owner.py"
    script.write_text(WORKERS_SCRIPT)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    pids = [int(p) for p in done.stdout.split()]
    assert pids and all(pid != os.getpid() for pid in pids), done.stderr
    for _ in range(100):
        if all(_gone(pid) for pid in pids):
            break
        await asyncio.sleep(0.1)
    assert all(_gone(pid) for pid in pids)


async def test_a_pool_whose_worker_died_while_idle_is_replaced(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    """A parsing worker killed between imports (the OOM killer, an operator) breaks the pool: the
    next import starts a fresh one instead of failing."""
    user = await make_user()
    victim = phone_pool.POOL.warm()[0].result(timeout=30)
    broken = phone_pool.POOL.executor
    os.kill(victim, 9)
    for _ in range(100):  # the pool notices the death on its own thread
        try:
            assert broken is not None
            broken.submit(os.getpid).result(timeout=5)
        except BrokenProcessPool:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the pool did not notice its dead worker")
    content, expected = _large_book(normalize.PARALLEL_MIN_DISTINCT + 2000)
    body = await imported(client, user, content, "grande.csv")
    assert counts(body) == (len(expected), len(expected), 0, 0, 0, 0)
    assert set(await book(admin, user.id)) == expected
    assert phone_pool.POOL.executor is not None and phone_pool.POOL.executor is not broken


async def test_a_worker_dying_mid_import_leaves_the_rest_to_the_api_process(
    client: httpx.AsyncClient,
    make_user: Any,
    admin: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that dies with parse jobs queued: the numbers not yet parsed are parsed in the API
    process, and the import answers as if nothing happened."""
    user = await make_user()
    submit, submitted = phone_pool.PhonePool.submit, []

    def submit_then_die(pool: phone_pool.PhonePool, fn: Any, *args: Any) -> Any:
        submitted.append(fn)
        if len(submitted) == 3:  # the worker that takes this exits at once, other jobs still queued
            submit(pool, os._exit, 1)
        return submit(pool, fn, *args)

    monkeypatch.setattr(phone_pool.PhonePool, "submit", submit_then_die)
    content, expected = _large_book(3 * normalize.PARALLEL_MIN_DISTINCT)
    with caplog.at_level("WARNING", logger="whatsched.imports"):
        body = await imported(client, user, content, "grande.csv")
    assert "the phone parsing pool broke; parsing in the API process" in caplog.text
    assert counts(body) == (len(expected), len(expected), 0, 0, 0, 0)
    assert set(await book(admin, user.id)) == expected
    assert len(submitted) > 3


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


async def test_cli_imports_a_file_for_a_user(
    settings: Settings, make_user: Any, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    user = await make_user()
    group = await add_group(admin, user.id, "Clientes VIP")
    await add_contact(admin, user.id, BOB, "Bob antes")
    path = tmp_path / "contactos.csv"
    path.write_text(f"Nombre;Teléfono\nAna;9 1234 5678\nBob nuevo;{BOB}\nMal;12\n", encoding="cp1252")
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "APP_DATABASE_URL": settings.app_database_url or "",
        "DATA_DIR": str(settings.data_dir),
    }
    command = [sys.executable, "-m", "whatsched.cli", "contacts", "import", str(path)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory() as workdir:  # no stray .env is read
            return subprocess.run([*command, *args], env=env, cwd=workdir, capture_output=True, text=True, timeout=120)

    dry = await asyncio.to_thread(run, "--user", user.email, "--group", "clientes vip", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    answer = json.loads(dry.stdout)
    assert (answer["created"], answer["updated"], answer["invalid_count"], answer["dry_run"]) == (1, 0, 1, True)
    assert await book(admin, user.id) == {BOB: ("Bob antes", None)}

    done = await asyncio.to_thread(run, "--user", user.email.upper(), "--group", group, "--on-duplicate", "update")
    assert done.returncode == 0, done.stderr
    assert "rows 3 · created 1 · updated 1 · skipped duplicates 0 · invalid 1 · groups updated 1" in done.stdout
    assert "row 4, Teléfono: '12'" in done.stdout
    assert await book(admin, user.id) == {ANA: ("Ana", None), BOB: ("Bob nuevo", None)}
    assert await members(admin, group) == {ANA, BOB}
    actor = await admin.fetchval(
        "select actor_id::text from audit_log where action = 'contacts.import' and details->>'file' = 'contactos.csv'"
        " and actor_id = $1",
        user.id,
    )
    assert actor == user.id

    refused = await asyncio.to_thread(run, "--user", "nobody@example.com")
    assert refused.returncode == 1 and "nobody@example.com" in refused.stderr
