"""Contacts import: the files people really have, one test per quirk, through POST /api/contacts/import
against the real database, with the exact counts the answer gives and the contacts that result.
Fixture files are generated here (openpyxl, pandas/odfpy, str.encode), never committed."""

from __future__ import annotations

import io
from typing import Any

import asyncpg
import httpx
import openpyxl
import pandas as pd
import pytest

URL = "/api/contacts/import"

# One Chilean mobile written the ways people write it, and what each must become.
ANA, BOB, CAROL, DAVID = "+56912345678", "+56987654321", "+56955512345", "+56944433322"


async def post_import(
    client: httpx.AsyncClient,
    user: Any,
    content: bytes,
    filename: str = "contacts.csv",
    **fields: Any,
) -> httpx.Response:
    data: dict[str, Any] = {}
    for key, value in fields.items():
        data[key] = [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
    files = {"file": (filename, content, "application/octet-stream")}
    return await client.post(URL, headers=user.headers, files=files, data=data)


def counts(body: dict[str, Any]) -> tuple[int, int, int, int, int, int]:
    """(total_rows, created, updated, skipped_duplicates, invalid_count, groups_updated)"""
    return (
        body["total_rows"],
        body["created"],
        body["updated"],
        body["skipped_duplicates"],
        body["invalid_count"],
        body["groups_updated"],
    )


async def book(admin: asyncpg.Connection, user_id: str) -> dict[str, tuple[str, str | None]]:
    """The user's contacts as phone -> (name, email)."""
    rows = await admin.fetch("select phone, name, email from contacts where created_by = $1", user_id)
    return {r["phone"]: (r["name"], r["email"]) for r in rows}


async def imported(
    client: httpx.AsyncClient, user: Any, content: bytes, filename: str = "contacts.csv", **fields: Any
) -> dict[str, Any]:
    response = await post_import(client, user, content, filename, **fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def xlsx(sheets: dict[str, list[list[Any]]]) -> bytes:
    workbook = openpyxl.Workbook()
    first = True
    for title, rows in sheets.items():
        sheet = workbook.active if first else workbook.create_sheet()
        assert sheet is not None
        sheet.title = title
        first = False
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def ods(sheets: dict[str, pd.DataFrame]) -> bytes:
    out = io.BytesIO()
    with pd.ExcelWriter(out, engine="odf") as writer:
        for title, frame in sheets.items():
            frame.to_excel(writer, sheet_name=title, index=False)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------


async def test_utf8_csv(client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection) -> None:
    user = await make_user()
    text = f"name,phone,email\nÁngela Núñez,{ANA},angela@example.com\nBjörk Guðmundsdóttir,{BOB},\n"
    body = await imported(client, user, text.encode("utf-8"))
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {
        ANA: ("Ángela Núñez", "angela@example.com"),
        BOB: ("Björk Guðmundsdóttir", None),
    }


async def test_utf8_with_bom(client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection) -> None:
    user = await make_user()
    # Excel's "CSV UTF-8" starts with a BOM: the first header must still be recognised as `nombre`.
    text = f"nombre;telefono\nÑandú Peña;{ANA}\n"
    body = await imported(client, user, b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ñandú Peña", None)}


async def test_utf16_tab_separated_from_excel(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    # Excel's "Unicode Text": UTF-16 LE with a BOM, tab-separated, CRLF line ends.
    text = f"Nombre\tCelular\r\nJosé Muñoz\t{ANA}\r\nZoë Łukasz\t{BOB}\r\n"
    content = text.encode("utf-16")
    assert content[:2] == b"\xff\xfe"
    body = await imported(client, user, content, "contactos.txt")
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("José Muñoz", None), BOB: ("Zoë Łukasz", None)}


async def test_windows_1252_accents(client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection) -> None:
    user = await make_user()
    # ’ (0x92) exists only in Windows-1252; the accents are Latin-1's own bytes.
    text = f"Nombre,Teléfono\nBernardo O’Higgins,{ANA}\nMaría Begoña Ibáñez,{BOB}\n"
    content = text.encode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")
    body = await imported(client, user, content)
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Bernardo O’Higgins", None), BOB: ("María Begoña Ibáñez", None)}


async def test_latin1_bytes_windows_1252_leaves_undefined(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    # 0x81 is undefined in Windows-1252: such a file is read as Latin-1.
    content = b"nombre,telefono\n" + "Gonzalo Ñuñez\x81".encode("latin-1") + f",{ANA}\n".encode()
    body = await imported(client, user, content)
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Gonzalo Ñuñez", None)}  # the control byte is blanked


# ---------------------------------------------------------------------------------------------
# Delimiters and headers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=["comma", "semicolon", "tab", "pipe"])
async def test_delimiter_is_detected(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection, delimiter: str
) -> None:
    user = await make_user()
    rows = [
        ["name", "phone", "email"],
        ["Pérez, Ana", ANA, "ana@example.com"],
        ["Bob", BOB, ""],
        ["Carol", CAROL, "c@example.org"],
    ]
    # A comma inside a quoted name must not confuse the detection.
    lines = [delimiter.join(f'"{c}"' if "," in c else c for c in row) for row in rows]
    body = await imported(client, user, ("\n".join(lines) + "\n").encode())
    assert counts(body) == (3, 3, 0, 0, 0, 0)
    assert await book(admin, user.id) == {
        ANA: ("Pérez, Ana", "ana@example.com"),
        BOB: ("Bob", None),
        CAROL: ("Carol", "c@example.org"),
    }


async def test_spanish_headers_any_case_and_accent(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    text = f"Notas,NOMBRE,Correo,Teléfono\nvip,Ana,ana@example.com,{ANA}\n,Bob,bob@example.com,{BOB}\n"
    body = await imported(client, user, text.encode())
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana", "ana@example.com"), BOB: ("Bob", "bob@example.com")}


@pytest.mark.parametrize(
    "header",
    ["telefono", "TELÉFONO", "Celular", "móvil", "MOVIL", "WhatsApp", "Número", "phone", "Mobile Phone", "e-Phone"],
)
async def test_phone_header_synonyms(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection, header: str
) -> None:
    user = await make_user()
    body = await imported(client, user, f"nombre,{header}\nAna,{ANA}\n".encode())
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana", None)}


async def test_first_and_last_name_columns(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    text = f"Nombre,Apellido,Celular,E-mail\nAna,Pérez,{ANA},ana@example.com\nBob,,{BOB},\n"
    body = await imported(client, user, text.encode())
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana Pérez", "ana@example.com"), BOB: ("Bob", None)}

    user = await make_user()
    text = f"First Name;Last Name;Phone\nGrace;Hopper;{CAROL}\n"
    body = await imported(client, user, text.encode())
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {CAROL: ("Grace Hopper", None)}


async def test_explicit_mapping(client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection) -> None:
    user = await make_user()
    text = f"Col A,Col B,Col C\nAna,{ANA},ana@example.com\n"
    mapping = '{"name": "col a", "phone": "Col B", "email": "Col C"}'
    body = await imported(client, user, text.encode(), mapping=mapping)
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana", "ana@example.com")}

    response = await post_import(client, user, text.encode(), mapping='{"phone": "Celular"}')
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_column"
    assert "'Col A', 'Col B', 'Col C'" in response.json()["detail"]


async def test_no_phone_column_names_the_columns_found(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    response = await post_import(client, user, b"Nombre,Correo,Ciudad\nAna,ana@example.com,Talca\n")
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "no_phone_column"
    assert "'Nombre', 'Correo', 'Ciudad'" in body["detail"]
    assert body["errors"][0]["field"] == "file"
    assert await book(admin, user.id) == {}


# ---------------------------------------------------------------------------------------------
# Phone numbers
# ---------------------------------------------------------------------------------------------


async def test_national_numbers_use_default_country(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    text = "nombre,telefono\nAna,9 1234 5678\nBob,612 34 56 78\n"
    # The profile's default country (CL) when the request names none.
    body = await imported(client, user, text.encode())
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert set(await book(admin, user.id)) == {"+56912345678", "+56612345678"}

    user = await make_user()
    body = await imported(client, user, text.encode(), default_country="es")
    # In Spain 9xx numbers are fixed lines: refused; 6xx are mobiles.
    assert counts(body) == (2, 1, 0, 0, 1, 0)
    assert await book(admin, user.id) == {"+34612345678": ("Bob", None)}
    assert body["invalid"] == [
        {
            "row": 2,
            "column": "telefono",
            "value": "9 1234 5678",
            "reason": "not a mobile number (WhatsApp needs a mobile line)",
        }
    ]

    user = await make_user()
    await admin.execute("update profiles set default_country = 'ES' where id = $1", user.id)
    body = await imported(client, user, text.encode())
    assert counts(body) == (2, 1, 0, 0, 1, 0)

    response = await post_import(client, user, text.encode(), default_country="XX")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "default_country"


async def test_00_prefix_dots_dashes_parentheses(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    text = (
        "name,phone\n"
        "a,0056912345678\n"
        "b,9.8765.4321\n"
        "c,+56 9 5551-2345\n"
        "d,(9) 4443-3322\n"
        "e,+56 (9) 1111-2222\n"
        "f,0034 612-345-678\n"
        "g,+1 (415) 555.2671\n"
    )
    body = await imported(client, user, text.encode())
    assert counts(body) == (7, 7, 0, 0, 0, 0)
    assert sorted(await book(admin, user.id)) == sorted(
        [ANA, BOB, CAROL, DAVID, "+56911112222", "+34612345678", "+14155552671"]
    )


async def test_invalid_rows_are_reported_with_row_column_value_reason(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    long_name = "x" * 201
    text = (
        "Nombre,Teléfono,Correo\n"  # row 1
        f"Ana,{ANA},ana@example.com\n"  # 2
        "Bob,12345,\n"  # 3
        "Carol,,\n"  # 4
        "David,hola,\n"  # 5
        "Eve,+44 20 7946 0958,\n"  # 6 (a London fixed line)
        f"Frank,{BOB},not-an-email\n"  # 7
        f"{long_name},{CAROL},\n"  # 8
    )
    body = await imported(client, user, text.encode())
    assert counts(body) == (7, 1, 0, 0, 6, 0)
    assert body["invalid"] == [
        {"row": 3, "column": "Teléfono", "value": "12345", "reason": "wrong length for a number of its country"},
        {"row": 4, "column": "Teléfono", "value": "", "reason": "empty phone number"},
        {"row": 5, "column": "Teléfono", "value": "hola", "reason": "not a phone number"},
        {
            "row": 6,
            "column": "Teléfono",
            "value": "+44 20 7946 0958",
            "reason": "not a mobile number (WhatsApp needs a mobile line)",
        },
        {"row": 7, "column": "Correo", "value": "not-an-email", "reason": "not a valid email address"},
        {"row": 8, "column": "Nombre", "value": long_name[:199] + "…", "reason": "name longer than 200 characters"},
    ]
    assert await book(admin, user.id) == {ANA: ("Ana", "ana@example.com")}


async def test_invalid_list_stops_at_1000_but_the_count_does_not(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    text = "name,phone\n" + "".join(f"n{i},{i}\n" for i in range(1500)) + f"ok,{ANA}\n"
    body = await imported(client, user, text.encode())
    assert counts(body) == (1501, 1, 0, 0, 1500, 0)
    assert len(body["invalid"]) == 1000
    assert body["invalid"][0]["row"] == 2 and body["invalid"][-1]["row"] == 1001


# ---------------------------------------------------------------------------------------------
# Blank rows, trailing columns, names
# ---------------------------------------------------------------------------------------------


async def test_blank_lines_and_trailing_empty_columns(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    text = (
        "\n"  # row 1: blank before the header
        "nombre;celular;;;\n"  # row 2: header with trailing separators
        f"Ana;{ANA};;;\n"  # 3
        "\n"  # 4
        ";;;;\n"  # 5: only separators
        f"Bob;{BOB}\n"  # 6: no trailing separators at all
        "   \n"  # 7
        "Carol;123;;;\n"  # 8
        "\n\n"
    )
    body = await imported(client, user, text.encode())
    assert counts(body) == (3, 2, 0, 0, 1, 0)
    assert body["invalid"][0]["row"] == 8
    assert await book(admin, user.id) == {ANA: ("Ana", None), BOB: ("Bob", None)}


async def test_rows_longer_than_the_header_are_read(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    text = f"name,phone\nAna,{ANA}\nBob,{BOB},,,\nCarol,{CAROL},,\n"
    body = await imported(client, user, text.encode())
    assert counts(body) == (3, 3, 0, 0, 0, 0)


async def test_formula_payloads_are_stored_as_plain_text(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    payloads = [
        "=cmd|' /C calc'!A0",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "+1+cmd|' /C calc'!A0",
        '=HYPERLINK("http://x","y")',
    ]
    phones = [ANA, BOB, CAROL, DAVID]
    lines = ["name,phone"] + ['"' + p.replace('"', '""') + '",' + ph for p, ph in zip(payloads, phones, strict=True)]
    body = await imported(client, user, ("\n".join(lines) + "\n").encode())
    # A contact's name may not hold a link (it is rendered into every message to them): the
    # HYPERLINK payload is refused for its URL, the others are stored as the text they are.
    assert counts(body) == (4, 3, 0, 0, 1, 0)
    assert [(i["row"], i["column"]) for i in body["invalid"]] == [(5, "name")]
    assert body["invalid"][0]["reason"].startswith("name must not contain a link")
    stored = {ph: (p, None) for p, ph in zip(payloads[:3], phones[:3], strict=True)}
    assert await book(admin, user.id) == stored


async def test_a_name_repeated_on_several_rows_is_cleaned_or_refused_on_each_row(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    # Postgres judges each distinct name once per batch; every row still gets its own verdict.
    user = await make_user()
    text = f'name,phone\n"Ana  Pérez ",{ANA}\nsee www.example.com,{BOB}\n"Ana  Pérez ",{CAROL}\nsee www.example.com,{DAVID}\n'
    body = await imported(client, user, text.encode())
    assert counts(body) == (4, 2, 0, 0, 2, 0)
    assert [(i["row"], i["column"]) for i in body["invalid"]] == [(3, "name"), (5, "name")]
    assert await book(admin, user.id) == {ANA: ("Ana Pérez", None), CAROL: ("Ana Pérez", None)}


async def test_a_row_without_a_name_is_named_by_its_phone(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    body = await imported(client, user, f"phone\n{ANA}\n".encode())
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: (ANA, None)}


# ---------------------------------------------------------------------------------------------
# Workbooks
# ---------------------------------------------------------------------------------------------


async def test_xlsx_first_sheet_and_named_sheet(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    content = xlsx(
        {
            "Clientes": [
                [None, None],
                ["Nombre", "Celular"],  # header on row 2, below an empty row
                ["Ana", 56912345678],  # a number cell, as Excel stores typed digits
                [None, None],
                ["Bob", "+56 9 8765 4321"],
                ["Carol", 912345678.0],  # a float cell: the same as Ana once normalised
            ],
            "Proveedores": [["name", "whatsapp"], ["Dora", "+56 9 4443 3322"]],
        }
    )
    user = await make_user()
    body = await imported(client, user, content, "libro.xlsx")
    assert counts(body) == (3, 2, 0, 1, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana", None), BOB: ("Bob", None)}

    user = await make_user()
    body = await imported(client, user, content, "libro.xlsx", sheet="proveedores")
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {DAVID: ("Dora", None)}

    response = await post_import(client, user, content, "libro.xlsx", sheet="Otra")
    assert response.status_code == 422
    assert response.json()["code"] == "sheet_not_found"
    assert "Clientes, Proveedores" in response.json()["detail"]


async def test_xlsx_invalid_rows_use_sheet_row_numbers(client: httpx.AsyncClient, make_user: Any) -> None:
    content = xlsx({"Hoja1": [["Nombre", "Teléfono"], ["Ana", "123"], [None, None], ["Bob", "abc"]]})
    user = await make_user()
    body = await imported(client, user, content, "x.xlsx")
    assert counts(body) == (2, 0, 0, 0, 2, 0)
    assert [i["row"] for i in body["invalid"]] == [2, 4]


async def test_ods_first_sheet_and_named_sheet(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    content = ods(
        {
            "Contactos": pd.DataFrame(
                {"NOMBRE": ["Ana", "Bob"], "Móvil": [ANA, "9 8765 4321"], "Correo": ["a@example.com", None]}
            ),
            "Otra": pd.DataFrame({"Nombre": ["Carol"], "Teléfono": ["(9) 5551 2345"]}),
        }
    )
    user = await make_user()
    body = await imported(client, user, content, "contactos.ods")
    assert counts(body) == (2, 2, 0, 0, 0, 0)
    assert await book(admin, user.id) == {ANA: ("Ana", "a@example.com"), BOB: ("Bob", None)}

    user = await make_user()
    body = await imported(client, user, content, "contactos.ods", sheet="Otra")
    assert counts(body) == (1, 1, 0, 0, 0, 0)
    assert await book(admin, user.id) == {CAROL: ("Carol", None)}


async def test_content_wins_over_the_extension(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    content = xlsx({"S": [["name", "phone"], ["Ana", ANA]]})
    body = await imported(client, user, content, "export.csv")  # an XLSX saved with the wrong name
    assert counts(body) == (1, 1, 0, 0, 0, 0)
