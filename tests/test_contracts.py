"""contracts/limits.json is the one source of the values every part checks alike: the schema's one
copy of each (private.e164_pattern(), the check constraints) and the Python types are held equal to
it here; the backend and the bridge read it (the bridge's side: test_bridge_contract)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, get_args

import asyncpg
from pydantic import BaseModel, ValidationError

from whatsched import contracts, phones
from whatsched.api.routes.bridge_events import InboundMessage, MessageAck, WhatsAppStatus
from whatsched.api.routes.health import ComponentStatus
from whatsched.whatsapp.models import NumberStatus

ROOT = Path(__file__).resolve().parent.parent
# Phones on both sides of the pattern's edges: digits other than ASCII ones, a trailing newline
# (Python's `$` alone would take it), too short, too long, a leading 0, no '+'.
PHONES = [
    "+12",
    "+1",
    "+56912345678",
    "+123456789012345",
    "+1234567890123456",
    "+0123456",
    "56912345678",
    "+5691234567\n",
    "+1\u0662\u0663\u0664",  # Arabic-Indic digits: Python's and pydantic's \d would take them
    "+56 912345678",
]


def bridge_takes(samples: list[str]) -> list[bool]:
    """Which samples the bridge's E164_PATTERN takes, as the bridge itself loads it (node)."""
    script = (
        "import('./src/constants.js').then(c => process.stdout.write(JSON.stringify("
        f"{json.dumps(samples)}.map(p => c.E164_PATTERN.test(p)))))"
    )
    out = subprocess.run(
        ["node", "-e", script], cwd=ROOT / "bridge", capture_output=True, text=True, check=True, timeout=30
    )
    taken: list[bool] = json.loads(out.stdout)
    return taken


def test_the_backend_reads_the_contract_from_the_repository_root() -> None:
    assert contracts.contract_path("limits.json") == ROOT / "contracts" / "limits.json"
    limits = json.loads((ROOT / "contracts" / "limits.json").read_text(encoding="utf-8"))
    assert contracts.LIMITS == limits
    assert set(limits["fields"]) == set(limits) - {"title", "description", "fields"}  # each value explained


async def test_the_e164_pattern_is_written_once_in_the_schema_and_is_the_contracts(admin: asyncpg.Connection) -> None:
    assert await admin.fetchval("select private.e164_pattern()") == contracts.E164_PATTERN
    checks = await admin.fetch(
        "select c.conrelid::regclass::text as tbl, a.attname as col, pg_get_constraintdef(c.oid) as def"
        " from pg_constraint c join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)"
        " where c.contype = 'c' and a.attname = 'phone' and c.connamespace = 'public'::regnamespace"
    )
    tables = {r["tbl"] for r in checks}
    assert {"contacts", "deliveries", "replies", "whatsapp_numbers"} <= tables, tables
    for r in checks:
        assert "private.e164_pattern()" in r["def"], dict(r)
    # No other copy: no constraint or function body of ours spells the pattern out again.
    copies = await admin.fetch(
        "select conname as name from pg_constraint where pg_get_constraintdef(oid) ~ '\\[1-9\\]'"
        " and connamespace in ('public'::regnamespace, 'private'::regnamespace)"
        " union all select p.proname from pg_proc p where p.prosrc ~ '\\[1-9\\]\\[0-9\\]|\\[1-9\\]\\\\d'"
        " and p.pronamespace in ('public'::regnamespace, 'private'::regnamespace) and p.proname <> 'e164_pattern'"
    )
    assert [r["name"] for r in copies] == []


async def test_the_pattern_means_the_same_in_postgres_python_pydantic_and_the_bridge(
    admin: asyncpg.Connection,
) -> None:
    postgres = await admin.fetchval(
        "select array_agg(p ~ private.e164_pattern() order by i) from unnest($1::text[]) with ordinality as t(p, i)",
        PHONES,
    )
    python = [phones.E164.fullmatch(p) is not None for p in PHONES]

    def pydantic_takes(phone: str) -> bool:
        try:
            InboundMessage(type="inbound_message", phone=phone, text="x", whatsapp_message_id="x")
        except ValidationError:
            return False
        return True

    bridge = bridge_takes(PHONES)
    assert list(postgres) == python == [pydantic_takes(p) for p in PHONES] == bridge
    assert postgres[2] and not postgres[-2]  # the samples do tell a good phone from a bad one


async def test_the_longest_whatsapp_message_id_is_the_contracts_everywhere(admin: asyncpg.Connection) -> None:
    limit = contracts.WHATSAPP_MESSAGE_ID_MAX_CHARS
    definition = await admin.fetchval(
        "select pg_get_constraintdef(c.oid) from pg_constraint c join pg_attribute a"
        " on a.attrelid = c.conrelid and a.attnum = any(c.conkey)"
        " where c.conrelid = 'public.replies'::regclass and c.contype = 'c' and a.attname = 'whatsapp_message_id'"
    )
    assert re.search(rf"char_length\(whatsapp_message_id\) <= {limit}\)", definition), definition

    def takes(model: type[BaseModel], extra: dict[str, Any], length: int) -> bool:
        try:
            model(whatsapp_message_id="x" * length, **extra)
        except ValidationError:
            return False
        return True

    ack = {"type": "message_ack", "ack": "sent"}
    inbound = {"type": "inbound_message", "phone": "+56912345678", "text": "x"}
    for model, extra in ((MessageAck, ack), (InboundMessage, inbound)):
        assert takes(model, extra, limit) and not takes(model, extra, limit + 1), model


async def test_the_number_and_connection_states_are_the_contracts(admin: asyncpg.Connection) -> None:
    async def allowed(column: str) -> set[str]:
        definition = await admin.fetchval(
            "select pg_get_constraintdef(c.oid) from pg_constraint c join pg_attribute a"
            " on a.attrelid = c.conrelid and a.attnum = any(c.conkey)"
            " where c.conrelid = 'public.whatsapp_numbers'::regclass and c.contype = 'c' and a.attname = $1",
            column,
        )
        return set(re.findall(r"'(\w+)'::text", definition))

    numbers = set(contracts.NUMBER_STATES)
    assert await allowed("status") == numbers
    assert await allowed("reported_status") == numbers - {"paused"}  # paused is health's, never the bridge's
    assert set(get_args(NumberStatus)) == numbers
    # What the API takes from a bridge: its words, and `starting` (the number's word for initializing).
    assert set(get_args(WhatsAppStatus.model_fields["status"].annotation)) == {*contracts.CONNECTION_STATES, "starting"}
    # The health check reports a bridge's word as it is (a stopped bridge answered 500 once).
    assert set(contracts.CONNECTION_STATES) <= set(get_args(ComponentStatus))

    # Each word a bridge says becomes one of the number's states (a new word without a mapping
    # would fall to failed unnoticed).
    expected = {
        "connected": "connected",
        "qr_needed": "qr_needed",
        "initializing": "starting",
        "stopped": "stopped",
        "disconnected": "failed",
    }
    assert set(expected) == set(contracts.CONNECTION_STATES)
    mapped = await admin.fetch(
        "select s, private.number_status(null, s, null, null) as n from unnest($1::text[]) as s",
        list(contracts.CONNECTION_STATES),
    )
    assert {r["s"]: r["n"] for r in mapped} == expected
    assert set(expected.values()) <= numbers
