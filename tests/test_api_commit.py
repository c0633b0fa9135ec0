"""An answer describes what was committed: a real API process (uvicorn) answers a write only after
its transaction has committed, so a failing commit is the client's error and a follow-up request
on another connection always sees the write."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from api_processes import ApiProcess

from whatsched.config import Settings

# A constraint checked at commit, not at the statement: it fails only when the API commits.
FAILS_AT_COMMIT = """
create or replace function public.test_fails_at_commit() returns trigger
language plpgsql as $$
begin
  raise exception 'refused at commit' using errcode = '23514';
end;
$$;
create constraint trigger test_fails_at_commit after insert on public.contacts
deferrable initially deferred for each row
when (new.name like 'fails at commit%')
execute function public.test_fails_at_commit();
"""
DROP = """
drop trigger if exists test_fails_at_commit on public.contacts;
drop function if exists public.test_fails_at_commit();
"""


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    process = ApiProcess(settings).start()
    try:
        await asyncio.to_thread(process.wait_ready)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{process.port}", timeout=30) as http:
            yield http
    finally:
        process.stop()


async def test_a_write_whose_commit_fails_is_answered_as_a_failure_and_leaves_nothing(
    api: httpx.AsyncClient, admin: asyncpg.Connection, make_user: Any
) -> None:
    user = await make_user()
    await admin.execute(FAILS_AT_COMMIT)
    try:
        name = f"fails at commit {uuid.uuid4().hex[:8]}"
        answer = await api.post("/api/contacts", json={"name": name, "phone": "+56911112222"}, headers=user.headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "validation_error"
        assert await admin.fetchval("select count(*) from public.contacts where name = $1", name) == 0
    finally:
        await admin.execute(DROP)


async def test_a_state_change_is_committed_before_its_answer(
    api: httpx.AsyncClient, admin: asyncpg.Connection, make_user: Any
) -> None:
    user = await make_user()
    group = await admin.fetchval(
        "insert into public.groups (created_by, name) values ($1, 'commit order') returning id", uuid.UUID(user.id)
    )
    contact = await admin.fetchval(
        "insert into public.contacts (created_by, name, phone) values ($1, 'Ana', '+56933334444') returning id",
        uuid.UUID(user.id),
    )
    await admin.execute(
        "insert into public.group_contacts (group_id, contact_id, created_by) values ($1, $2, $3)",
        group,
        contact,
        uuid.UUID(user.id),
    )
    for _ in range(20):
        draft = await api.post(
            "/api/messages", json={"content": "Hola", "group_ids": [str(group)]}, headers=user.headers
        )
        assert draft.status_code == 201, draft.text
        message = draft.json()["id"]
        cancelled = await api.post(f"/api/messages/{message}/cancel", headers=user.headers)
        assert cancelled.status_code == 200, cancelled.text
        # The moment the answer arrives, any other session sees the new status.
        status = await admin.fetchval("select status from public.messages where id = $1", uuid.UUID(message))
        assert status == "cancelled"
