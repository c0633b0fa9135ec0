"""Webhooks (issue 21): endpoints on both paths (the API, and supabase-js: SQL as `authenticated`
with claims), an outbox written in the transaction of the change, and a real worker process
sending it to a receiver on localhost that verifies every request with the Standard Webhooks
library: signatures, filters, retries and Retry-After, a SIGKILL mid-request (nothing lost, the
`webhook-id` unchanged), 410, rotation, private URLs refused, redirects not followed, replay and
ping, RLS and audit."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web
from bridge_process import BridgeProcess, WorkerProcess, delivery_states, eventually, free_port, new_message, schedule
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from test_rules_both_paths import api_error, direct, direct_error

from whatsched import events
from whatsched.api.deps import Resources
from whatsched.db.setup import Prepared

pytestmark = pytest.mark.slow

HOOKS = "/api/webhooks"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> dict[str, Any]:
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


def verifies(hit: Received, secret: str) -> bool:
    try:
        hit.verified(secret)
    except WebhookVerificationError:
        return False
    return True


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers each request with the next planned answer
    (default 204), after an optional delay, and keeps every request."""

    url: str
    got: list[Received] = field(default_factory=list)
    plan: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    slow_s: float = 0.0  # every unplanned answer waits this long

    def answer(self, status: int, headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        self.plan.append((status, headers or {}, delay))

    def of(self, event_type: str) -> list[Received]:
        return [r for r in self.got if json.loads(r.body)["type"] == event_type]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    box = Receiver(f"http://127.0.0.1:{port}/hook")

    async def handle(request: web.Request) -> web.StreamResponse:
        box.got.append(Received({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        status, headers, delay = box.plan.pop(0) if box.plan else (204, {}, box.slow_s)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers=headers, text="nope" if status >= 300 else "")

    app = web.Application()
    app.router.add_post("/hook", handle)
    app.router.add_get("/elsewhere", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield box
    finally:
        await runner.cleanup()


@pytest.fixture
async def loopback_allowed(admin: asyncpg.Connection) -> AsyncIterator[None]:
    """Tests need a receiver on loopback: WEBHOOK_ALLOW_PRIVATE, in Postgres and in the worker."""
    await admin.execute("update private.settings set webhook_allow_private = true")
    try:
        yield
    finally:
        await admin.execute("update private.settings set webhook_allow_private = false")


@pytest.fixture
def worker(prepared: Prepared, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(bridge_url: str | None = None, **env: str) -> WorkerProcess:
        process = WorkerProcess(
            prepared.admin_url,
            prepared.app_url,
            bridge_url or f"http://127.0.0.1:{free_port()}",  # no bridge: nothing to dispatch
            tmp_path / f"worker-{len(started)}.log",
            **{"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_TIMEOUT_S": "2", **env},
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


async def create(client: httpx.AsyncClient, who: Any, url: str, **body: Any) -> dict[str, Any]:
    resp = await client.post(HOOKS, json={"url": url, **body}, headers=who.headers)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def notify(admin: asyncpg.Connection, user: Any, title: str = "Hola") -> None:
    """A new_notification event for `user` (any notification row emits one)."""
    await admin.execute(
        "insert into public.notifications (user_id, type, title, message) values ($1::uuid, 'info', $2, 'x')",
        user.id,
        title,
    )


async def deliveries(admin: asyncpg.Connection, endpoint_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await admin.fetch(
        "select * from public.webhook_deliveries where endpoint_id = $1::uuid order by created_at, id", endpoint_id
    )
    return rows


# -----------------------------------------------------------------------------------------------
# Signed, filtered, on both paths
# -----------------------------------------------------------------------------------------------


async def test_events_reach_their_endpoints_signed_and_filtered_on_both_paths(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    res: Resources,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
) -> None:
    ana, bruno = await make_user(), await make_user()
    by_api = await create(client, ana, receiver.url, event_types=["new_notification"], description="CRM")
    assert by_api["secret"].startswith("whsec_") and by_api["event_types"] == ["new_notification"]
    bruno_hook = json.loads(await direct(res, bruno, "select public.create_webhook_endpoint($1)::text", receiver.url))
    # The secret is shown once: never in a list or a read, never readable through supabase-js.
    listed = (await client.get(HOOKS, headers=ana.headers)).json()
    assert [h["id"] for h in listed] == [by_api["id"]] and "secret" not in listed[0]
    assert await direct_error(res, ana, "select secret from private.webhook_secrets") == "42501"

    worker()
    await notify(admin, ana, "para Ana")
    await notify(admin, bruno, "para Bruno")
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n >= 2, 30, what="two webhooks")
    await asyncio.sleep(1)
    assert len(receiver.got) == 2
    for hit in receiver.got:
        with pytest.raises(WebhookVerificationError):
            hit.verified("whsec_" + "A" * 43)  # a wrong secret never verifies
    ana_hit = next(r for r in receiver.got if verifies(r, by_api["secret"]))
    payload = ana_hit.verified(by_api["secret"])
    assert payload["type"] == "new_notification" and payload["data"]["notification"]["title"] == "para Ana"
    events.validate(payload["data"])
    bruno_hit = next(r for r in receiver.got if r is not ana_hit)
    assert bruno_hit.verified(bruno_hook["secret"])["data"]["notification"]["title"] == "para Bruno"
    # The webhook-id is the outbox row's id; the log says how it went.
    (row,) = await deliveries(admin, by_api["id"])
    assert ana_hit.id == str(row["id"]) and row["state"] == "delivered"
    log = (await client.get(f"{HOOKS}/{by_api['id']}/deliveries", headers=ana.headers)).json()
    assert log["total"] == 1 and log["items"][0]["attempt_log"][0]["status_code"] == 204
    assert log["items"][0]["attempt_log"][0]["latency_ms"] >= 0
    # Nobody else's: Bruno neither sees nor changes Ana's endpoint, on either path.
    assert (await client.get(f"{HOOKS}/{by_api['id']}", headers=bruno.headers)).status_code == 404
    assert (await client.get(f"{HOOKS}/{by_api['id']}/deliveries", headers=bruno.headers)).status_code == 404
    assert (
        await direct(
            res, bruno, "select count(*) from public.webhook_deliveries where endpoint_id = $1::uuid", by_api["id"]
        )
        == 0
    )
    changed = await direct(
        res,
        bruno,
        "with u as (update public.webhook_endpoints set enabled = false where id = $1::uuid returning 1)"
        " select count(*) from u",
        by_api["id"],
    )
    assert changed == 0
    assert (
        await direct_error(res, bruno, "select public.rotate_webhook_secret($1::uuid)", by_api["id"])
        == "webhook_not_found"
    )
    actions = await admin.fetch(
        "select action from public.audit_log where entity_type = 'webhook' and entity_id = any($1::text[])",
        [by_api["id"], bruno_hook["endpoint"]["id"]],
    )
    assert sorted(a["action"] for a in actions) == ["webhook.create", "webhook.create"]


async def test_a_rolled_back_change_sends_nothing(
    admin: asyncpg.Connection, client: httpx.AsyncClient, make_user: Any, receiver: Receiver, loopback_allowed: None
) -> None:
    ana = await make_user()
    hook = await create(client, ana, receiver.url)
    with pytest.raises(RuntimeError):
        async with admin.transaction():
            await notify(admin, ana)
            raise RuntimeError("rolled back")
    assert await deliveries(admin, hook["id"]) == []
    await notify(admin, ana)
    assert len(await deliveries(admin, hook["id"])) == 1  # positive control


# -----------------------------------------------------------------------------------------------
# Retries, Retry-After, 410, a SIGKILL
# -----------------------------------------------------------------------------------------------


async def test_a_failure_is_retried_on_the_schedule_honouring_retry_after_and_410_disables(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
) -> None:
    ana = await make_user()
    hook = await create(client, ana, receiver.url)
    receiver.answer(500)
    worker()
    await notify(admin, ana)
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n == 1, 30, what="the first attempt")
    (row,) = await eventually(
        lambda: deliveries(admin, hook["id"]), lambda r: r and r[0]["attempts"] == 1 and r[0]["leased_by"] is None
    )
    assert row["state"] == "pending" and row["last_status_code"] == 500
    delay = (
        row["next_attempt_at"]
        - (await admin.fetchval("select at from public.webhook_attempts where delivery_id = $1", row["id"]))
    ).total_seconds()
    assert 4.4 <= delay <= 5.6, delay  # 5 s with ±10 % jitter
    # The retry, 5 s later, carries the same webhook-id and succeeds.
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n == 2, 30, what="the retry")
    assert receiver.got[0].id == receiver.got[1].id == str(row["id"])
    receiver.got[1].verified(hook["secret"])
    await eventually(lambda: deliveries(admin, hook["id"]), lambda r: r[0]["state"] == "delivered")

    # Retry-After longer than the schedule's next step wins.
    receiver.answer(503, {"Retry-After": "120"})
    await notify(admin, ana, "otra")
    await eventually(lambda: deliveries(admin, hook["id"]), lambda r: len(r) == 2 and r[1]["last_status_code"] == 503)
    later = (await deliveries(admin, hook["id"]))[1]
    wait = (later["next_attempt_at"] - datetime.now(UTC)).total_seconds()
    assert 100 <= wait <= 121, wait

    # 410: the endpoint is disabled, its owner told, the audit says why.
    receiver.answer(410)
    await client.post(f"{HOOKS}/{hook['id']}/test", headers=ana.headers)
    got = await eventually(
        lambda: client.get(f"{HOOKS}/{hook['id']}", headers=ana.headers), lambda r: not r.json()["enabled"]
    )
    assert "410" in got.json()["disabled_reason"]
    assert (
        await admin.fetchval(
            "select count(*) from public.notifications where user_id = $1::uuid and title = 'Webhook desactivado'",
            ana.id,
        )
        == 1
    )
    assert await admin.fetchval(
        "select actor_id is null from public.audit_log where action = 'webhook.disable' and entity_id = $1", hook["id"]
    )
    # Nothing is queued for a disabled endpoint; what was pending waits for it to be enabled again.
    sent = len(receiver.got)
    await notify(admin, ana, "mientras tanto")
    assert [d["event_type"] for d in await deliveries(admin, hook["id"])].count("new_notification") == 2
    again = await client.put(f"{HOOKS}/{hook['id']}", json={"enabled": True}, headers=ana.headers)
    assert again.json()["enabled"] and again.json()["disabled_reason"] is None
    await notify(admin, ana, "de vuelta")
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n == sent + 1, 30, what="the next event")
    assert receiver.got[-1].verified(hook["secret"])["data"]["notification"]["title"] == "de vuelta"


async def test_a_sigkill_mid_request_loses_nothing_and_keeps_the_webhook_id(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
) -> None:
    ana = await make_user()
    hook = await create(client, ana, receiver.url)
    receiver.answer(200, delay=30)  # the first request hangs: the worker dies during it
    first = worker()
    for i in range(5):
        await notify(admin, ana, f"evento {i}")
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n >= 1, 30, what="a request in flight")
    first.kill()
    worker()
    got = await eventually(
        lambda: deliveries(admin, hook["id"]), lambda r: len(r) == 5 and all(d["state"] == "delivered" for d in r), 40
    )
    ids = {str(d["id"]) for d in got}
    assert {r.id for r in receiver.got} == ids  # every event, under its own id
    hung = receiver.got[0].id
    assert [r.id for r in receiver.got].count(hung) >= 2  # sent again after the lease, same id
    for hit in receiver.got:
        hit.verified(hook["secret"])


async def test_a_slow_receiver_does_not_delay_the_dispatcher(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    ana = await make_user()
    await create(client, ana, receiver.url)  # every event of Ana's campaign: progress, status, ...
    receiver.slow_s = 5.0
    bridge = BridgeProcess(tmp_path / "bridge")
    bridge.start()
    try:
        worker(bridge.url, WEBHOOK_CONCURRENCY="2", WEBHOOK_TIMEOUT_S="10")
        phones = [f"+5691{n:07d}1" for n in range(1, 11)]
        campaign = await new_message(admin, uuid.UUID(ana.id), phones, "Hola {{name}}")
        started = time.monotonic()
        await schedule(admin, uuid.UUID(ana.id), campaign)
        await eventually(lambda: delivery_states(admin, campaign), lambda s: s == {"sent": 10}, 30, what="the campaign")
        took = time.monotonic() - started
        # Ten sends went out while the receiver had answered at most two requests: sending never
        # waited for it (each webhook takes 5 s, two at a time).
        answered = await admin.fetchval(
            "select count(*) from public.webhook_attempts a join public.webhook_deliveries d on d.id = a.delivery_id"
            " join public.webhook_endpoints e on e.id = d.endpoint_id where e.owner_id = $1::uuid",
            ana.id,
        )
        queued = await admin.fetchval(
            "select count(*) from public.webhook_deliveries d join public.webhook_endpoints e on e.id = d.endpoint_id"
            " where e.owner_id = $1::uuid",
            ana.id,
        )
        assert took < 10 and answered <= 2 < queued, (took, answered, queued)
    finally:
        bridge.stop()


# -----------------------------------------------------------------------------------------------
# Rotation, replay, ping
# -----------------------------------------------------------------------------------------------


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    ana = await make_user()
    hook = await create(client, ana, receiver.url)
    old = hook["secret"]
    rotated = await client.post(f"{HOOKS}/{hook['id']}/rotate-secret", json={"grace_hours": 1}, headers=ana.headers)
    new = rotated.json()["secret"]
    assert rotated.status_code == 200 and new != old and new.startswith("whsec_")
    worker()
    await client.post(f"{HOOKS}/{hook['id']}/test", headers=ana.headers)
    (hit,) = await eventually(lambda: asyncio.sleep(0, list(receiver.got)), lambda g: len(g) == 1, 30)
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert hit.verified(new)["type"] == hit.verified(old)["type"] == "webhook_test"
    events.validate(hit.verified(new)["data"])
    # Without a grace period only the new secret signs.
    await client.post(f"{HOOKS}/{hook['id']}/rotate-secret", json={"grace_hours": 0}, headers=ana.headers)
    newest = await admin.fetchval("select secret from private.webhook_secrets where endpoint_id = $1::uuid", hook["id"])
    await client.post(f"{HOOKS}/{hook['id']}/test", headers=ana.headers)
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n == 2, 30)
    last = receiver.got[1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    last.verified(newest)
    with pytest.raises(WebhookVerificationError):
        last.verified(new)
    assert (
        await admin.fetchval(
            "select count(*) from public.audit_log where action = 'webhook.rotate_secret' and entity_id = $1",
            hook["id"],
        )
        == 2
    )

    # Replay: one delivery again, same id; a time range.
    first_id = receiver.got[0].id
    replay = await client.post(f"{HOOKS}/{hook['id']}/replay", json={"delivery_id": first_id}, headers=ana.headers)
    assert replay.status_code == 202 and replay.json() == {"queued": 1}
    await eventually(lambda: asyncio.sleep(0, len(receiver.got)), lambda n: n == 3, 30)
    assert receiver.got[2].id == first_id
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert (await client.post(f"{HOOKS}/{hook['id']}/replay", json={"since": since}, headers=ana.headers)).json() == {
        "queued": 2
    }
    # No secret ever reaches a log.
    logged = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))  # noqa: ASYNC240 (small log files)
    assert logged and not any(secret in logged for secret in (old, new, newest))
    assert (
        api_error(await client.post(f"{HOOKS}/{hook['id']}/replay", json={}, headers=ana.headers), 422)
        == "validation_error"
    )


# -----------------------------------------------------------------------------------------------
# Refusals
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[fd00:ec2::254]/x",
        "https://metadata.google.internal/computeMetadata/v1/",
    ],
)
async def test_private_urls_are_refused_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, url: str
) -> None:
    ana = await make_user()
    resp = await client.post(HOOKS, json={"url": url}, headers=ana.headers)
    assert api_error(resp, 422) == "webhook_url_not_allowed"
    assert resp.json()["errors"][0]["field"] == "url"
    assert await direct_error(res, ana, "select public.create_webhook_endpoint($1)", url) == "webhook_url_not_allowed"


async def test_bad_input_is_refused_with_the_field_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    ana, boss = await make_user(), await make_user(admin=True)
    for body, code in [
        ({"url": "ftp://example.com/x"}, "validation_error"),
        ({"url": "https://user:pw@example.com/x"}, "validation_error"),
        ({"url": "https://example.com/x", "event_types": ["message_sent_maybe"]}, "validation_error"),
    ]:
        assert api_error(await client.post(HOOKS, json=body, headers=ana.headers), 422) == code
        assert (
            await direct_error(
                res, ana, "select public.create_webhook_endpoint($1, $2)", body["url"], body.get("event_types", [])
            )
            == code
        )
    assert (await client.post(HOOKS, json={"url": "x" * 3000}, headers=ana.headers)).status_code == 422
    # Deployment-wide endpoints are an admin's.
    resp = await client.post(HOOKS, json={"url": "https://example.com/x", "deployment_wide": True}, headers=ana.headers)
    assert api_error(resp, 403) == "forbidden"
    wide = await create(client, boss, "https://example.com/all", deployment_wide=True)
    assert wide["deployment_wide"] and wide["owner_id"] is None
    assert (await client.get(f"{HOOKS}/{wide['id']}", headers=ana.headers)).status_code == 404
    # A user cannot write the outbox or the attempts, or insert an endpoint around the function.
    assert (
        await direct_error(
            res,
            ana,
            "insert into public.webhook_endpoints (owner_id, url) values ((select auth.uid()), 'https://e.com')",
        )
        == "42501"
    )
    assert await direct_error(res, ana, "delete from public.webhook_deliveries") == "42501"
    assert await direct_error(res, ana, "select private.claim_webhook_deliveries('x', 1, 1)") == "42501"
    # Updates check the same rules.
    mine = await create(client, ana, "https://example.com/mine")
    resp = await client.put(f"{HOOKS}/{mine['id']}", json={"url": "http://192.168.1.1/"}, headers=ana.headers)
    assert api_error(resp, 422) == "webhook_url_not_allowed"
    assert (
        await direct_error(
            res, ana, "update public.webhook_endpoints set event_types = '{nope}' where id = $1::uuid", mine["id"]
        )
        == "validation_error"
    )
    assert (await client.delete(f"{HOOKS}/{mine['id']}", headers=ana.headers)).status_code == 204
    assert (await client.delete(f"{HOOKS}/{mine['id']}", headers=ana.headers)).status_code == 404


async def test_a_name_resolving_to_a_private_address_is_refused_at_the_attempt(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
) -> None:
    ana = await make_user()
    # The database allows loopback here (so the endpoint can be saved); the worker does not, and
    # resolving the name decides.
    by_name = await create(client, ana, receiver.url.replace("127.0.0.1", "localhost"))
    worker(WEBHOOK_ALLOW_PRIVATE="false")
    await client.post(f"{HOOKS}/{by_name['id']}/test", headers=ana.headers)
    (row,) = await eventually(
        lambda: deliveries(admin, by_name["id"]), lambda r: bool(r and r[0]["attempts"] >= 1 and r[0]["last_error"])
    )
    assert "resolves to a loopback, private" in row["last_error"] and row["last_status_code"] is None
    assert receiver.got == []


async def test_a_redirect_is_not_followed(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    make_user: Any,
    receiver: Receiver,
    loopback_allowed: None,
    worker: Callable[..., WorkerProcess],
) -> None:
    ana = await make_user()
    hook = await create(client, ana, receiver.url)
    receiver.answer(302, {"Location": receiver.url.replace("/hook", "/elsewhere")})
    worker()
    await client.post(f"{HOOKS}/{hook['id']}/test", headers=ana.headers)
    (row,) = await eventually(
        lambda: deliveries(admin, hook["id"]), lambda r: bool(r and r[0]["last_status_code"] == 302)
    )
    assert "redirects are not followed" in row["last_error"] and row["state"] == "pending"
    await asyncio.sleep(0.5)
    assert [r.id for r in receiver.got] == [str(row["id"])]  # /elsewhere was never asked


CATALOG = Path(__file__).resolve().parents[1] / "contracts" / "events.json"


async def test_the_database_knows_exactly_the_catalogs_event_types(admin: asyncpg.Connection) -> None:
    names = sorted(json.loads(CATALOG.read_text(encoding="utf-8"))["events"])
    assert sorted(await admin.fetchval("select private.event_types()")) == names


async def test_an_endpoint_failing_for_days_is_disabled_and_its_owner_told(
    admin: asyncpg.Connection, client: httpx.AsyncClient, make_user: Any, loopback_allowed: None
) -> None:
    ana = await make_user()
    hook = await create(client, ana, "http://127.0.0.1:9/never")
    await notify(admin, ana)

    async def fail_once() -> str:
        # First in line, whatever other tests left pending.
        await admin.execute(
            "update public.webhook_deliveries set next_attempt_at = now() - interval '1 year' where endpoint_id = $1::uuid",
            hook["id"],
        )
        async with admin.transaction():
            await admin.execute("set local role service_role")
            (row,) = await admin.fetch("select * from private.claim_webhook_deliveries('test-worker', 1, 30)")
            state: str = await admin.fetchval(
                "select private.finish_webhook_delivery($1, 'test-worker', $2, 503, 12, 'HTTP 503', null)",
                row["id"],
                row["attempt"],
            )
        await admin.execute(
            "update public.webhook_deliveries set next_attempt_at = now() where endpoint_id = $1::uuid", hook["id"]
        )
        return state

    assert await fail_once() == "pending"
    endpoint = await admin.fetchrow(
        "select enabled, failing_since from public.webhook_endpoints where id = $1::uuid", hook["id"]
    )
    assert endpoint["enabled"] and endpoint["failing_since"] is not None
    # Four days of failures: still on. Past WEBHOOK_DISABLE_AFTER_DAYS (5): off, with a notification.
    await admin.execute(
        "update public.webhook_endpoints set failing_since = now() - interval '4 days' where id = $1::uuid", hook["id"]
    )
    assert await fail_once() == "pending"
    assert await admin.fetchval("select enabled from public.webhook_endpoints where id = $1::uuid", hook["id"])
    await admin.execute(
        "update public.webhook_endpoints set failing_since = now() - interval '6 days' where id = $1::uuid", hook["id"]
    )
    assert await fail_once() == "pending"  # the delivery itself waits for the endpoint to come back
    got = (await client.get(f"{HOOKS}/{hook['id']}", headers=ana.headers)).json()
    assert not got["enabled"] and got["disabled_reason"].startswith("failing since ")
    assert (
        await admin.fetchval(
            "select count(*) from public.notifications where user_id = $1::uuid and title = 'Webhook desactivado'",
            ana.id,
        )
        == 1
    )


async def test_the_private_address_verdict_is_asked_once_per_address(prepared: Prepared) -> None:
    """Each attempt resolves its name anew; Postgres judges an address the sender has not seen
    (private.address_is_private is immutable), and a known address costs no round trip."""
    from whatsched.webhooks.sender import Sender

    sender = Sender(prepared.admin_url, "test", timeout_s=1, concurrency=1, allow_private=False)
    pool = await asyncpg.create_pool(prepared.admin_url, min_size=1, max_size=1)
    sender._pool = pool
    loopback, public = "http://127.0.0.1:9/hook", "http://93.184.216.34/hook"
    refused = await sender._refused_address(loopback)
    assert refused is not None and "127.0.0.1 resolves to a loopback" in refused
    assert await sender._refused_address(public) is None
    await pool.close()
    # Known addresses: the same verdicts without the database.
    assert await sender._refused_address(loopback) == refused
    assert await sender._refused_address(public) is None
    # A new one still goes to Postgres (whose pool is closed now).
    with pytest.raises(asyncpg.InterfaceError):
        await sender._refused_address("http://10.1.2.3/hook")
