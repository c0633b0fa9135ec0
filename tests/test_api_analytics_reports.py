"""Analytics (dashboard, messages, groups) on seeded data, admin scope, and report exports in CSV
and XLSX, read back with csv and openpyxl, with formula injection neutralised."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import httpx
import openpyxl
import pytest

from whatsched.api.deps import Resources
from whatsched.db.pool import user_tx

TODAY = datetime.now(UTC).date()
EVIL_NAME = '=HYPERLINK(A1&B1,"click")'  # names hold no links, so no address in it


def _at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def _day(days_ago: int) -> date:
    return TODAY - timedelta(days=days_ago)


@dataclass
class Seeded:
    g1: str
    g2: str
    m1: str
    m2: str
    m3: str
    c1: str


async def _seed(admin: asyncpg.Connection, owner: str) -> Seeded:
    """Written as the system would (admin connection):
    G1 = {c1, c2, c3 (inactive)}, G2 = {c1}
    M1 sent, created D-3, to G1: c1 delivered (sent D-2), c2 failed (D-2)
    M2 draft, created D-1, to G2
    M3 sent, created D-3, to G2: c1 read (sent D-1)
    """

    async def contact(name: str, phone: str, active: bool = True) -> str:
        return str(
            await admin.fetchval(
                "insert into public.contacts (created_by, name, phone, is_active) values ($1, $2, $3, $4) returning id",
                uuid.UUID(owner),
                name,
                phone,
                active,
            )
        )

    async def group(name: str, members: list[str]) -> str:
        gid = await admin.fetchval(
            "insert into public.groups (created_by, name) values ($1, $2) returning id", uuid.UUID(owner), name
        )
        await admin.execute(
            "insert into public.group_contacts (group_id, contact_id, created_by) select $1, unnest($2::uuid[]), $3",
            gid,
            members,
            uuid.UUID(owner),
        )
        return str(gid)

    async def message(content: str, status: str, created: datetime, groups: list[str]) -> str:
        mid = await admin.fetchval(
            "insert into public.messages (created_by, content, status, created_at) values ($1, $2, $3, $4) returning id",
            uuid.UUID(owner),
            content,
            status,
            created,
        )
        await admin.execute(
            "insert into public.message_groups (message_id, group_id, created_by) select $1, unnest($2::uuid[]), $3",
            mid,
            groups,
            uuid.UUID(owner),
        )
        return str(mid)

    async def delivery(mid: str, cid: str, state: str, at: datetime) -> None:
        phone = await admin.fetchval("select phone from public.contacts where id = $1::uuid", cid)
        await admin.execute(
            """insert into public.deliveries (message_id, created_by, contact_id, phone, state, idempotency_key,
                                              sent_at, failed_at, created_at)
               values ($1::uuid, $2::uuid, $3::uuid, $4, $5, $1 || ':' || $4,
                       case when $5 = 'failed' then null else $6::timestamptz end,
                       case when $5 = 'failed' then $6::timestamptz end, $6::timestamptz)""",
            mid,
            owner,
            cid,
            phone,
            state,
            at,
        )

    base = 10_000_000 + int(uuid.uuid4().int % 80_000_000)
    c1 = await contact("Ana", f"+569{base}")
    c2 = await contact(EVIL_NAME, f"+569{base + 1}")
    c3 = await contact("Dormido", f"+569{base + 2}", active=False)
    g1 = await group("Alfa", [c1, c2, c3])
    g2 = await group("Beta", [c1])
    m1 = await message("Oferta de verano", "sent", _at(_day(3), 12), [g1])
    m2 = await message("Borrador", "draft", _at(_day(1), 9), [g2])
    m3 = await message("-2+3+cmd|' /C calc'!A0", "sent", _at(_day(3), 15), [g2])
    await delivery(m1, c1, "delivered", _at(_day(2), 10))
    await delivery(m1, c2, "failed", _at(_day(2), 11))
    await delivery(m3, c1, "read", _at(_day(1), 8))
    return Seeded(g1, g2, m1, m2, m3, c1)


@pytest.fixture
async def seeded_user(make_user: Any, admin: asyncpg.Connection) -> tuple[Any, Seeded]:
    user = await make_user()
    return user, await _seed(admin, user.id)


def _series(body: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {p["date"]: {k: v for k, v in p.items() if k != "date"} for p in body["series"]}


# -----------------------------------------------------------------------------------------------
# Analytics
# -----------------------------------------------------------------------------------------------


async def test_dashboard_counts_and_series(client: httpx.AsyncClient, seeded_user: Any) -> None:
    user, _ = seeded_user

    resp = await client.get("/api/analytics/dashboard", headers=user.headers)

    assert resp.status_code == 200
    body = resp.json()
    assert body["scope"] == "mine" and body["timezone"] == "UTC"
    totals = body["totals"]
    assert totals["messages"]["total"] == 3 and totals["messages"]["sent"] == 2 and totals["messages"]["draft"] == 1
    assert totals["contacts"] == 3 and totals["active_contacts"] == 2 and totals["groups"] == 2
    assert totals["deliveries"]["ok"] == 2 and totals["deliveries"]["failed"] == 1
    assert body["success_rate"] == pytest.approx(0.6667)
    series = _series(body)
    assert len(body["series"]) == 30
    assert body["series"][-1]["date"] == TODAY.isoformat()
    assert series[_day(3).isoformat()] == {"messages_created": 2, "sent": 0, "failed": 0}
    assert series[_day(2).isoformat()] == {"messages_created": 0, "sent": 1, "failed": 1}
    assert series[_day(1).isoformat()] == {"messages_created": 1, "sent": 1, "failed": 0}
    assert sum(p["sent"] for p in body["series"]) == 2
    # The test settings point the bridge at a port nothing listens on.
    assert body["whatsapp"]["status"] == "unreachable"
    assert body["system"] is None


async def test_messages_analytics_in_a_range(client: httpx.AsyncClient, seeded_user: Any) -> None:
    user, seeded = seeded_user
    wide = f"from={_day(3).isoformat()}&to={_day(1).isoformat()}"

    resp = await client.get(f"/api/analytics/messages?{wide}", headers=user.headers)
    narrow = (
        await client.get(
            f"/api/analytics/messages?from={_day(2).isoformat()}&to={_day(1).isoformat()}", headers=user.headers
        )
    ).json()

    assert resp.status_code == 200
    body = resp.json()
    assert body["from"] == _day(3).isoformat() and body["to"] == _day(1).isoformat()
    assert [p["date"] for p in body["series"]] == [_day(3).isoformat(), _day(2).isoformat(), _day(1).isoformat()]
    assert body["totals"] == {"messages_created": 3, "sent": 2, "failed": 1, "success_rate": pytest.approx(0.6667)}
    assert body["by_status"]["sent"] == 2 and body["by_status"]["draft"] == 1 and body["by_status"]["paused"] == 0
    top = body["top_messages"]
    assert [m["id"] for m in top] == [seeded.m1, seeded.m3, seeded.m2]
    assert [m["recipient_count"] for m in top] == [2, 1, 0]
    assert top[0]["delivered_count"] == 1 and top[0]["failed_count"] == 1
    assert narrow["totals"]["messages_created"] == 1 and narrow["by_status"]["draft"] == 1
    assert narrow["by_status"]["sent"] == 0 and [m["id"] for m in narrow["top_messages"]] == [seeded.m2]


async def test_messages_analytics_refuses_a_backwards_range(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    resp = await client.get(
        f"/api/analytics/messages?from={_day(1).isoformat()}&to={_day(5).isoformat()}", headers=user.headers
    )
    too_long = await client.get(
        f"/api/analytics/messages?from={_day(400).isoformat()}&to={_day(0).isoformat()}", headers=user.headers
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "from"
    assert too_long.status_code == 422


@pytest.mark.parametrize(
    ("first", "last"),
    [
        ("-infinity", "2026-01-01"),
        ("2026-01-01", "infinity"),
        ("2026-03-01", "2026-01-01"),
        ("2020-01-01", "2026-01-01"),
    ],
)
@pytest.mark.parametrize("function", ["analytics_daily", "analytics_messages"])
async def test_the_sql_functions_refuse_endless_or_long_ranges_for_supabase_js_callers_too(
    res: Resources, make_user: Any, function: str, first: str, last: str
) -> None:
    """What PostgREST would run for supabase.rpc(...): the range is checked in SQL, quickly."""
    user = await make_user()
    with pytest.raises(asyncpg.InvalidParameterValueError):
        async with user_tx(res.pool, user.claims) as conn:
            await conn.fetch(f"select * from public.{function}('{first}'::date, '{last}'::date)", timeout=5)
    async with user_tx(res.pool, user.claims) as conn:
        days = await conn.fetch("select * from public.analytics_daily('2026-01-01', '2026-12-31')")
    assert len(days) == 365


async def test_groups_reach(client: httpx.AsyncClient, seeded_user: Any) -> None:
    user, seeded = seeded_user

    resp = await client.get("/api/analytics/groups", headers=user.headers)

    assert resp.status_code == 200
    body = resp.json()
    assert body["total"] == 2
    alfa, beta = body["items"]
    assert alfa["id"] == seeded.g1 and beta["id"] == seeded.g2
    assert {k: alfa[k] for k in ("contacts", "active_contacts", "messages", "messages_sent")} == {
        "contacts": 3,
        "active_contacts": 2,
        "messages": 1,
        "messages_sent": 1,
    }
    assert (alfa["deliveries"], alfa["deliveries_ok"], alfa["deliveries_failed"]) == (2, 1, 1)
    assert alfa["failure_rate"] == pytest.approx(0.5)
    assert (beta["contacts"], beta["messages"], beta["messages_sent"], beta["deliveries"]) == (1, 2, 1, 1)
    assert beta["failure_rate"] == 0


async def test_scope_all_is_for_admins_only(client: httpx.AsyncClient, seeded_user: Any, admin: Any) -> None:
    user, _ = seeded_user
    for path in ("/api/analytics/dashboard", "/api/analytics/messages", "/api/analytics/groups"):
        resp = await client.get(path + "?scope=all", headers=user.headers)
        assert resp.status_code == 403, path
        assert resp.json()["code"] == "forbidden"
    refused = await client.get("/api/reports/export?type=contacts&scope=all", headers=user.headers)
    assert refused.status_code == 403
    audited = await admin.fetchval(
        "select count(*) from public.audit_log where actor_id = $1::uuid and action = 'analytics.read_all'", user.id
    )
    assert audited == 0


async def test_an_admin_sees_everyone_and_is_audited(
    client: httpx.AsyncClient, seeded_user: Any, make_user: Any, admin: Any
) -> None:
    _, seeded = seeded_user
    boss = await make_user(admin=True)

    mine = (await client.get("/api/analytics/dashboard", headers=boss.headers)).json()
    everyone = await client.get("/api/analytics/dashboard?scope=all", headers=boss.headers)
    wide = f"from={_day(3).isoformat()}&to={_day(1).isoformat()}&scope=all"
    messages = (await client.get(f"/api/analytics/messages?{wide}", headers=boss.headers)).json()

    assert everyone.status_code == 200
    body = everyone.json()
    assert body["scope"] == "all"
    assert mine["totals"]["messages"]["total"] == 0
    assert body["totals"]["messages"]["total"] >= 3 and body["totals"]["contacts"] >= 3
    assert sum(messages["by_status"].values()) >= 3
    assert messages["series"][0]["messages_created"] >= 2
    # Admins also get this process's metrics, on both scopes.
    for answer in (mine, body):
        system = answer["system"]
        assert system is not None
        assert system["memory_bytes"] is None or system["memory_bytes"] > 0
        assert isinstance(system["bridge_errors"], dict) and system["websocket_connections"] >= 0
    seen: set[str] = set()
    page = 1
    while True:
        groups = (
            await client.get(f"/api/analytics/groups?scope=all&page={page}&page_size=100", headers=boss.headers)
        ).json()
        seen |= {g["id"] for g in groups["items"]}
        if page * 100 >= groups["total"]:
            break
        page += 1
    assert {seeded.g1, seeded.g2} <= seen
    audited = await admin.fetch(
        "select details from public.audit_log where actor_id = $1::uuid and action = 'analytics.read_all'", boss.id
    )
    assert sorted(json.loads(r["details"])["view"] for r in audited) == sorted(
        ["dashboard", "messages"] + ["groups"] * page
    )


# -----------------------------------------------------------------------------------------------
# Exports
# -----------------------------------------------------------------------------------------------


def _read_csv(resp: httpx.Response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(resp.content.decode("utf-8-sig"))))


def _read_xlsx(resp: httpx.Response) -> list[dict[str, Any]]:
    book = openpyxl.load_workbook(io.BytesIO(resp.content), read_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    header = [str(h) for h in rows[0]]
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]


async def test_contacts_csv_is_streamed_and_neutralised(
    client: httpx.AsyncClient, seeded_user: Any, admin: Any
) -> None:
    user, seeded = seeded_user

    resp = await client.get("/api/reports/export?format=csv&type=contacts", headers=user.headers)

    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == f'attachment; filename="whatsched-contacts-{TODAY.isoformat()}.csv"'
    rows = _read_csv(resp)
    assert len(rows) == 3
    by_name = {r["name"]: r for r in rows}
    assert "'" + EVIL_NAME in by_name and EVIL_NAME not in by_name
    ana = by_name["Ana"]
    assert ana["id"] == seeded.c1 and ana["phone"].startswith("+569")  # a plain number stays importable
    assert ana["groups"] == "Alfa; Beta" and ana["is_active"] == "true"
    assert ana["created_at (UTC)"].endswith("Z")
    assert by_name["Dormido"]["is_active"] == "false"
    audited = await admin.fetchrow(
        "select entity_id, details from public.audit_log where actor_id = $1::uuid and action = 'report.export'",
        user.id,
    )
    assert audited["entity_id"] == "contacts" and json.loads(audited["details"])["format"] == "csv"


async def test_messages_xlsx_opens_and_neutralises(client: httpx.AsyncClient, seeded_user: Any) -> None:
    user, seeded = seeded_user

    resp = await client.get("/api/reports/export?format=xlsx&type=messages", headers=user.headers)

    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert resp.headers["content-disposition"] == f'attachment; filename="whatsched-messages-{TODAY.isoformat()}.xlsx"'
    rows = _read_xlsx(resp)
    assert [r["id"] for r in rows] == [seeded.m1, seeded.m3, seeded.m2]  # by creation time
    m1, m3, _ = rows
    assert m1["content"] == "Oferta de verano" and m1["recipient_count"] == 2 and m1["groups"] == "Alfa"
    assert m3["content"] == "'-2+3+cmd|' /C calc'!A0"
    assert m1["created_at (UTC)"] == _at(_day(3), 12).replace(tzinfo=None)


async def test_a_bare_export_is_the_messages_csv(client: httpx.AsyncClient, seeded_user: Any) -> None:
    """The guide names GET /api/reports/export without parameters: it answers the messages report."""
    user, seeded = seeded_user
    resp = await client.get("/api/reports/export", headers=user.headers)
    assert resp.status_code == 200
    assert resp.headers["content-disposition"] == f'attachment; filename="whatsched-messages-{TODAY.isoformat()}.csv"'
    assert [r["id"] for r in _read_csv(resp)] == [seeded.m1, seeded.m3, seeded.m2]


async def test_deliveries_csv_in_a_day_range(client: httpx.AsyncClient, seeded_user: Any) -> None:
    user, seeded = seeded_user
    day = _day(1).isoformat()

    resp = await client.get(f"/api/reports/export?format=csv&type=deliveries&from={day}&to={day}", headers=user.headers)
    xlsx = await client.get("/api/reports/export?format=xlsx&type=deliveries", headers=user.headers)

    rows = _read_csv(resp)
    assert [(r["message_id"], r["state"]) for r in rows] == [(seeded.m3, "read")]
    assert [r["state"] for r in _read_xlsx(xlsx)] == ["delivered", "failed", "read"]


async def test_an_empty_export_still_has_its_header(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    csv_resp = await client.get("/api/reports/export?format=csv&type=deliveries", headers=user.headers)
    xlsx_resp = await client.get("/api/reports/export?format=xlsx&type=contacts", headers=user.headers)
    assert csv_resp.content.decode("utf-8-sig").splitlines()[0].startswith("id,message_id,contact_name,phone,state")
    book = openpyxl.load_workbook(io.BytesIO(xlsx_resp.content), read_only=True)
    assert next(book.worksheets[0].iter_rows(values_only=True))[:3] == ("id", "name", "phone")


async def test_exports_show_only_your_rows_unless_an_admin_asks_for_all(
    client: httpx.AsyncClient, seeded_user: Any, make_user: Any
) -> None:
    _, seeded = seeded_user
    stranger, boss = await make_user(), await make_user(admin=True)

    theirs = _read_csv(await client.get("/api/reports/export?type=contacts", headers=stranger.headers))
    own = _read_csv(await client.get("/api/reports/export?type=contacts", headers=boss.headers))
    everyone = _read_csv(await client.get("/api/reports/export?type=contacts&scope=all", headers=boss.headers))

    assert theirs == [] and own == []
    assert seeded.c1 in {r["id"] for r in everyone}


@pytest.mark.parametrize(
    "query",
    ["format=pdf&type=contacts", "format=csv&type=passwords", "type=", "type=contacts&from=2026-02-30"],
)
async def test_bad_export_parameters_are_422(client: httpx.AsyncClient, make_user: Any, query: str) -> None:
    user = await make_user()
    resp = await client.get(f"/api/reports/export?{query}", headers=user.headers)
    assert resp.status_code == 422 and resp.json()["code"] == "validation_error"
