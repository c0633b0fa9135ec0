"""Replies and opt-outs follow the number (issue 20): a reply belongs to the number it reached and
to the users who wrote to that phone from it; an opt-out keyword acts on every user's contact
while users share the deployment's numbers, and, with self-service numbers, on the contacts of
the users of the owner's numbers only, so one business's STOP never silences another's customers.
Silence is a health fact: a number whose first messages to new contacts mostly got no reply.
Through the bridge's signed event route (the path a reply really takes) and in SQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from bridge_process import new_message, new_owner, numbers
from test_number_health import as_service, bare_number, facts, number_row
from test_whatsapp_numbers import post_event, self_service  # noqa: F401 (a fixture)

from whatsched.config import Settings


async def wrote_from(
    admin: asyncpg.Connection, owner: uuid.UUID, number: str, phone: str, minutes_ago: float = 0
) -> None:
    """The ledger row the claim writes when `owner`'s delivery to `phone` leaves from `number`."""
    message = await new_message(admin, owner, [phone])
    await admin.execute(
        "insert into private.send_ledger (created_by, sender, phone, message_id, at)"
        " values ($1, $2, $3, $4, clock_timestamp() - $5 * interval '1 minute')",
        owner,
        number,
        phone,
        message,
        minutes_ago,
    )


async def reply(client: httpx.AsyncClient, settings: Settings, number: str | None, phone: str, text: str) -> None:
    event: dict[str, Any] = {
        "type": "inbound_message",
        "phone": phone,
        "text": text,
        "whatsapp_message_id": "wa-" + uuid.uuid4().hex,
    }
    if number is not None:
        event["number_id"] = number
    resp = await post_event(client, settings, event)
    assert resp.status_code == 204, resp.text


async def kept(admin: asyncpg.Connection, phone: str) -> set[tuple[uuid.UUID, str | None]]:
    rows = await admin.fetch("select created_by, number_id::text from public.replies where phone = $1", phone)
    return {(r["created_by"], r["number_id"]) for r in rows}


async def opted_out(admin: asyncpg.Connection, phone: str) -> set[uuid.UUID]:
    rows = await admin.fetch(
        "select created_by from public.contacts where phone = $1 and opted_out_at is not null", phone
    )
    return {r["created_by"] for r in rows}


async def test_a_reply_belongs_to_the_number_it_reached(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings
) -> None:
    a, b = await bare_number(admin, "A"), await bare_number(admin, "B")
    ana, bruno = await new_owner(admin), await new_owner(admin)
    (phone,) = numbers(1, 701)
    await wrote_from(admin, ana, a, phone)
    await wrote_from(admin, bruno, b, phone)

    await reply(client, settings, a, phone, "gracias")
    assert await kept(admin, phone) == {(ana, a)}
    await reply(client, settings, b, phone, "ok")
    assert await kept(admin, phone) == {(ana, a), (bruno, b)}
    # A reply to the default number (a bridge that names none) reaches neither of them.
    await reply(client, settings, None, phone, "hola?")
    assert len(await admin.fetch("select 1 from public.replies where phone = $1", phone)) == 2


async def test_shared_numbers_an_opt_out_holds_for_every_user(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings
) -> None:
    a = await bare_number(admin, "Compartido")
    ana, bruno = await new_owner(admin), await new_owner(admin)
    (phone,) = numbers(1, 702)
    await wrote_from(admin, ana, a, phone)
    await new_message(admin, bruno, [phone])  # bruno has the phone as a contact, never wrote from `a`

    await reply(client, settings, a, phone, "STOP")
    assert await opted_out(admin, phone) == {ana, bruno}
    await reply(client, settings, a, phone, "ALTA")
    assert await opted_out(admin, phone) == set()


@pytest.mark.usefixtures("self_service")
async def test_self_service_an_opt_out_holds_for_the_owners_numbers_only(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings
) -> None:
    ana, helper, bruno = await new_owner(admin), await new_owner(admin), await new_owner(admin)
    own_a = await bare_number(admin, "Ana")
    own_b = await bare_number(admin, "Bruno")
    await admin.execute(
        "update public.whatsapp_numbers set shared = false, owner_id = $2 where id = $1::uuid", own_a, ana
    )
    await admin.execute(
        "update public.whatsapp_numbers set shared = false, owner_id = $2 where id = $1::uuid", own_b, bruno
    )
    # ana's helper is assigned to ana's number: ana's business.
    await admin.execute(
        "insert into public.whatsapp_number_users (number_id, user_id) values ($1::uuid, $2)", own_a, helper
    )
    (phone,) = numbers(1, 703)
    await wrote_from(admin, ana, own_a, phone)
    await new_message(admin, helper, [phone])
    waiting = await new_message(admin, bruno, [phone])
    await admin.execute("update public.messages set number_id = $2::uuid where id = $1", waiting, own_b)
    await admin.execute(
        "insert into public.deliveries (message_id, created_by, phone, idempotency_key)"
        " values ($1::uuid, $2, $3, $1::text || ':' || $3)",
        waiting,
        bruno,
        phone,
    )

    await reply(client, settings, own_a, phone, "baja")
    assert await opted_out(admin, phone) == {ana, helper}
    # bruno's customer is still bruno's: his contact and his unsent delivery are untouched.
    state = await admin.fetchval("select state from public.deliveries where message_id = $1", waiting)
    assert state == "pending"
    notified = await admin.fetch(
        "select user_id from public.notifications where title = 'Contacto dado de baja' and message like $1",
        f"%{phone}%",
    )
    assert {r["user_id"] for r in notified} == {ana, helper}

    # An opt-in to ana's number lifts ana's business's keyword opt-outs, nobody else's.
    await admin.execute(
        "update public.contacts set opted_out_at = now(), opted_out_keyword = null"
        " where created_by = $1 and phone = $2",
        bruno,
        phone,
    )  # bruno's own opt-out by hand
    await reply(client, settings, own_a, phone, "alta")
    assert await opted_out(admin, phone) == {bruno}

    # A STOP to one of the deployment's numbers still holds for every user.
    deployment = await bare_number(admin, "Despliegue")
    await reply(client, settings, deployment, phone, "stop")
    assert await opted_out(admin, phone) == {ana, helper, bruno}


async def test_an_opt_out_is_a_health_fact_of_the_number_it_reached(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings
) -> None:
    a, b = await bare_number(admin, "Alcanzado"), await bare_number(admin, "Otro")
    ana = await new_owner(admin)
    (phone,) = numbers(1, 704)
    await wrote_from(admin, ana, a, phone, minutes_ago=5)
    await wrote_from(admin, ana, b, phone)  # ana's last message left from b; the STOP reached a
    await reply(client, settings, a, phone, "STOP")
    assert [f["kind"] for f in await facts(admin, a)] == ["opt_out"]
    assert await facts(admin, b) == []


# -----------------------------------------------------------------------------------------------
# Silence: first messages to new contacts without a reply
# -----------------------------------------------------------------------------------------------


@pytest.fixture
async def quick_silence(admin: asyncpg.Connection) -> AsyncIterator[None]:
    """Judged on 4 first messages, answered or not at once (the defaults: 20, after 6 hours)."""
    await admin.execute(
        "update private.settings set health_unanswered_min = 4, health_unanswered_wait_hours = 0,"
        " health_unanswered_share = 0.75"
    )
    try:
        yield
    finally:
        await admin.execute(
            "update private.settings set health_unanswered_min = default, health_unanswered_wait_hours = default,"
            " health_unanswered_share = default"
        )


async def judge(admin: asyncpg.Connection) -> list[str]:
    judged = await as_service(admin, "select coalesce(array_agg(j::text), '{}') from private.judge_unanswered() j")
    return list(judged)


async def test_first_messages_left_unanswered_are_one_fact_an_hour(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings, quick_silence: None
) -> None:
    quiet, chatty = await bare_number(admin, "Callado"), await bare_number(admin, "Conversado")
    ana = await new_owner(admin)
    for number, series in ((quiet, 705), (chatty, 706)):
        for phone in numbers(4, series):
            await wrote_from(admin, ana, number, phone, minutes_ago=10)
    # On `chatty` two of four answered (0.5 < 0.75): no fact; on `quiet` one did (0.75): a fact.
    for phone in numbers(2, 706):
        await reply(client, settings, chatty, phone, "¿quién es?")
    await reply(client, settings, quiet, numbers(1, 705)[0], "hola")

    assert quiet in await judge(admin)
    (fact,) = await facts(admin, quiet, "unanswered")
    assert (fact["weight"], json.loads(fact["evidence"])) == (
        1.0,
        {"first_messages": 4, "unanswered": 3, "share": 0.75},
    )
    assert await facts(admin, chatty, "unanswered") == []
    # Within the hour it is not counted again; alone it does not pause the number.
    assert quiet not in await judge(admin)
    assert len(await facts(admin, quiet, "unanswered")) == 1
    assert (await number_row(admin, quiet))["status"] == "connected"


async def test_only_first_messages_to_new_contacts_count(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings, quick_silence: None
) -> None:
    number = await bare_number(admin, "Conocidos")
    ana = await new_owner(admin)
    phones = numbers(4, 707)
    # The number wrote to three of them two days ago: its sends to them now are not first messages.
    for phone in phones[:3]:
        await wrote_from(admin, ana, number, phone, minutes_ago=2 * 24 * 60)
    for phone in phones:
        await wrote_from(admin, ana, number, phone, minutes_ago=10)
    assert number not in await judge(admin)  # 1 first message (phones[3]) < 4
    # With four more new contacts, none answering, it is a fact.
    for phone in numbers(4, 708):
        await wrote_from(admin, ana, number, phone, minutes_ago=10)
    assert number in await judge(admin)
    (fact,) = await facts(admin, number, "unanswered")
    assert json.loads(fact["evidence"])["first_messages"] == 5
