"""Attachments (issue 22), the files themselves: uploads through the API on the local storage
(the embedded default's), the type read from the bytes, an image's metadata removed, the limits
and the allow-list in Postgres, nothing kept from a refused upload; the bucket's policies and the
media table's RLS on both paths (the API, and supabase-js: SQL as `authenticated` with claims,
which is what Supabase Storage's server runs for a user); delete refused while a scheduled message
uses the file; the bridge's read with its token."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import Image
from test_rules_both_paths import api_error, direct, direct_error, reachable_group

from whatsched.api.deps import Resources
from whatsched.config import Settings
from whatsched.media.storage import LocalStorage

MEDIA = "/api/media"
GPS = 0x8825  # the EXIF tag of the GPS block


def jpeg(size: tuple[int, int] = (64, 48), with_gps: bool = True) -> bytes:
    img = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    if with_gps:
        exif[GPS] = {1: "S", 2: (33.0, 26.0, 0.0), 3: "W", 4: (70.0, 39.0, 0.0)}
    exif[0x010F] = "Camera maker"
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200


async def upload(
    client: httpx.AsyncClient, who: Any, name: str, data: bytes, mime: str = "image/jpeg"
) -> httpx.Response:
    return await client.post(MEDIA, files={"file": (name, data, mime)}, headers=who.headers)


async def stored_rows(admin: asyncpg.Connection, owner: str) -> tuple[int, int]:
    media = await admin.fetchval("select count(*) from public.media where created_by = $1::uuid", owner)
    objects = await admin.fetchval(
        "select count(*) from storage.objects where bucket_id = 'media' and name like $1 || '/%'", owner
    )
    return media, objects


def files_under(settings: Settings, owner: str) -> list[Path]:
    folder = LocalStorage(settings.data_dir).path_of("media", owner)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def test_an_image_is_stored_as_its_bytes_say_without_its_location(
    admin: asyncpg.Connection, client: httpx.AsyncClient, settings: Settings, make_user: Any
) -> None:
    ana = await make_user()
    original = jpeg()
    assert GPS in Image.open(io.BytesIO(original)).getexif()  # positive control: the upload has a location
    resp = await upload(client, ana, "flyer.jpg", original, "application/octet-stream")  # the client's type is ignored
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert (got["mime_type"], got["kind"], got["width"], got["height"], got["state"]) == (
        "image/jpeg",
        "image",
        64,
        48,
        "ready",
    )
    assert got["path"] == f"{ana.id}/{got['id']}/flyer.jpg" and got["original_name"] == "flyer.jpg"
    content = await client.get(f"{MEDIA}/{got['id']}/content", headers=ana.headers)
    assert content.status_code == 200 and content.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(content.content).hexdigest() == got["sha256"] and len(content.content) == got["size_bytes"]
    exif = Image.open(io.BytesIO(content.content)).getexif()
    assert GPS not in exif and 0x010F not in exif
    # The object's row, as Supabase Storage writes it: the user's, in their folder.
    owner = await admin.fetchval(
        "select owner::text from storage.objects where bucket_id = 'media' and name = $1", got["path"]
    )
    assert owner == ana.id
    assert [p.name for p in files_under(settings, ana.id)] == ["flyer.jpg"]
    listed = (await client.get(MEDIA, headers=ana.headers)).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == got["id"]


async def test_the_kind_of_a_type_is_the_databases(admin: asyncpg.Connection) -> None:
    """inspect.kind_of (the name-versus-bytes check) is private.media_kind's rule, for every type
    the allow-list holds and a few it does not."""
    from whatsched.media.inspect import kind_of

    allowed = await admin.fetchval("select media_types from private.settings")
    types = [*allowed, "image/gif", "application/x-executable", "text/plain", "audio/x-wav", "video/webm"]
    kinds = await admin.fetch("select t, private.media_kind(t) as kind from unnest($1::text[]) t", types)
    assert {r["t"]: r["kind"] for r in kinds} == {t: kind_of(t) for t in types}


async def test_a_pdf_is_a_document(client: httpx.AsyncClient, make_user: Any) -> None:
    ana = await make_user()
    resp = await upload(client, ana, "menu.pdf", PDF, "application/pdf")
    assert resp.status_code == 201, resp.text
    assert (resp.json()["mime_type"], resp.json()["kind"], resp.json()["width"]) == (
        "application/pdf",
        "document",
        None,
    )


@pytest.fixture
async def small_images(admin: asyncpg.Connection) -> AsyncIterator[None]:
    await admin.execute("update private.settings set media_max_image_bytes = 600")
    try:
        yield
    finally:
        await admin.execute("update private.settings set media_max_image_bytes = default")


@pytest.mark.parametrize(
    ("name", "data", "code", "found"),
    [
        ("empty.jpg", b"", "media_empty", "empty"),
        ("photo.jpg", ELF, "media_type_mismatch", "application/x-executable"),
        ("notes.pdf", b"just some words, no file format at all", "media_type_not_allowed", "could not be recognised"),
        ("anim.gif", b"GIF89a" + b"\x00" * 64, "media_type_not_allowed", "image/gif"),
        ("big.jpg", jpeg((400, 400)), "media_too_large", "the limit for image is 600 bytes"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "media_type_mismatch", "not a readable image"),
    ],
)
async def test_a_refused_upload_says_why_and_keeps_nothing(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    settings: Settings,
    make_user: Any,
    small_images: None,
    name: str,
    data: bytes,
    code: str,
    found: str,
) -> None:
    ana = await make_user()
    resp = await upload(client, ana, name, data)
    assert api_error(resp, 422) == code
    (error,) = resp.json()["errors"]
    assert error["field"] == "file" and found in error["message"], error
    assert await stored_rows(admin, ana.id) == (0, 0)
    assert files_under(settings, ana.id) == []
    scratch = LocalStorage(settings.data_dir).scratch()
    assert list(scratch.iterdir()) == []


async def test_an_upload_larger_than_any_limit_is_refused_before_it_is_read(
    client: httpx.AsyncClient, make_user: Any
) -> None:
    ana = await make_user()
    resp = await client.post(
        MEDIA,
        content=b"x" * 10,
        headers={
            **ana.headers,
            "content-type": "multipart/form-data; boundary=b",
            "content-length": str(200 * 1024 * 1024),
        },
    )
    assert api_error(resp, 422) == "media_too_large"


async def test_each_user_reaches_only_their_own_files_on_both_paths(
    admin: asyncpg.Connection, client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    ana, bruno = await make_user(), await make_user()
    mine = (await upload(client, ana, "a.jpg", jpeg())).json()
    for path in (f"{MEDIA}/{mine['id']}", f"{MEDIA}/{mine['id']}/content"):
        assert api_error(await client.get(path, headers=bruno.headers), 404) == "media_not_found"
    assert api_error(await client.delete(f"{MEDIA}/{mine['id']}", headers=bruno.headers), 404) == "media_not_found"
    assert (await client.get(MEDIA, headers=bruno.headers)).json()["total"] == 0
    # supabase-js: the table's RLS, and the bucket's policies as Storage's server applies them.
    assert await direct(res, bruno, "select count(*) from public.media where id = $1::uuid", mine["id"]) == 0
    assert await direct(res, bruno, "select count(*) from storage.objects where name = $1", mine["path"]) == 0
    assert await direct(res, ana, "select count(*) from storage.objects where name = $1", mine["path"]) == 1
    assert (
        await direct_error(
            res,
            bruno,
            "insert into storage.objects (bucket_id, name, owner) values ('media', $1, (select auth.uid()))",
            f"{ana.id}/x/intruder.jpg",
        )
        == "42501"
    )
    assert (
        await direct_error(res, bruno, "update public.media set state = 'ready' where id = $1::uuid", mine["id"])
        == "42501"
    )
    assert (
        await direct_error(
            res,
            bruno,
            "select private.record_media((select auth.uid()), gen_random_uuid(), 'x', 'x', 'image/jpeg', 1, $1, 1, 1)",
            "0" * 64,
        )
        == "42501"
    )
    # A file uploaded straight to Storage is registered as pending (a worker checks its bytes);
    # another user's path is not found.
    own = f"{bruno.id}/{uuid.uuid4()}/direct.pdf"
    await direct(
        res,
        bruno,
        "insert into storage.objects (bucket_id, name, owner) values ('media', $1, (select auth.uid()))",
        own,
    )
    registered = await direct(res, bruno, "select to_jsonb(public.register_media($1, 'Carta.pdf'))::text", own)
    assert json.loads(registered)["state"] == "pending" and json.loads(registered)["original_name"] == "Carta.pdf"
    assert await direct_error(res, bruno, "select public.register_media($1)", mine["path"]) == "media_not_found"
    # An admin reads everyone's.
    boss = await make_user(admin=True)
    assert (await client.get(f"{MEDIA}/{mine['id']}", headers=boss.headers)).status_code == 200


async def test_a_file_a_scheduled_message_uses_cannot_be_deleted(
    admin: asyncpg.Connection, client: httpx.AsyncClient, res: Resources, settings: Settings, make_user: Any
) -> None:
    ana = await make_user()
    flyer = (await upload(client, ana, "flyer.jpg", jpeg())).json()
    group = await reachable_group(admin, ana.id)
    message = await direct(
        res,
        ana,
        "insert into public.messages (created_by, content, media_id) values ((select auth.uid()), '', $1::uuid)"
        " returning id::text",
        flyer["id"],
    )
    await direct(
        res,
        ana,
        "insert into public.message_groups (message_id, group_id, created_by) values ($1::uuid, $2::uuid, (select auth.uid()))",
        message,
        group,
    )
    await direct(res, ana, "select public.schedule_message($1::uuid, now() + interval '1 day')", message)
    assert api_error(await client.delete(f"{MEDIA}/{flyer['id']}", headers=ana.headers), 409) == "media_in_use"
    assert await direct_error(res, ana, "delete from public.media where id = $1::uuid", flyer["id"]) == "media_in_use"
    await direct(res, ana, "select public.cancel_message($1::uuid)", message)
    assert (await client.delete(f"{MEDIA}/{flyer['id']}", headers=ana.headers)).status_code == 204
    assert await stored_rows(admin, ana.id) == (0, 0) and files_under(settings, ana.id) == []
    assert await admin.fetchval("select media_id from public.messages where id = $1::uuid", message) is None


async def test_the_bridge_reads_a_file_with_its_token_only(
    client: httpx.AsyncClient, settings: Settings, make_user: Any
) -> None:
    ana = await make_user()
    pdf = (await upload(client, ana, "menu.pdf", PDF, "application/pdf")).json()
    url = f"/api/bridge/media/{pdf['id']}"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=ana.headers)).status_code == 401
    got = await client.get(url, headers={"Authorization": f"Bearer {settings.bridge_token}"})
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == pdf["sha256"]


async def test_a_file_uploaded_straight_to_storage_is_checked_before_it_can_be_sent(
    admin: asyncpg.Connection, res: Resources, settings: Settings, make_user: Any
) -> None:
    from whatsched.media.check import check_pending

    ana = await make_user()
    storage = LocalStorage(settings.data_dir)

    async def stored_by_storage(name: str, data: bytes | None) -> str:
        """What Supabase Storage does for supabase-js's upload(): the object's row as the user, the bytes."""
        path = f"{ana.id}/{uuid.uuid4()}/{name}"
        await direct(
            res,
            ana,
            "insert into storage.objects (bucket_id, name, owner) values ('media', $1, (select auth.uid()))",
            path,
        )
        if data is not None:
            target = storage.path_of("media", path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        row = json.loads(await direct(res, ana, "select to_jsonb(public.register_media($1))::text", path))
        assert row["state"] == "pending"
        return str(row["id"])

    good = await stored_by_storage("foto.jpg", jpeg())
    renamed = await stored_by_storage("foto2.jpg", ELF)
    missing = await stored_by_storage("gone.pdf", None)
    # Not ready yet: a message cannot be scheduled with it.
    message = str(await new_message_with(admin, ana, good))
    assert (
        await direct_error(res, ana, "select public.schedule_message($1::uuid, now() + interval '1 hour')", message)
        == "media_not_ready"
    )

    verdicts = dict(await check_pending(admin, storage, keep_metadata=False, limit=100))
    mine = {good: "ready", renamed: "rejected", missing: "rejected"}
    assert {k: v for k, v in verdicts.items() if k in mine} == mine  # (other tests' pending files too)
    rows = {
        r["id"]: r
        for r in await admin.fetch(
            "select id::text, state, problem, sha256, mime_type, path from public.media where created_by = $1::uuid",
            ana.id,
        )
    }
    assert "application/x-executable" in rows[renamed]["problem"] and "missing" in rows[missing]["problem"]
    stored = storage.path_of("media", rows[good]["path"]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == rows[good]["sha256"] and rows[good]["mime_type"] == "image/jpeg"
    assert GPS not in Image.open(io.BytesIO(stored)).getexif()  # cleaned in place
    await direct(res, ana, "select public.schedule_message($1::uuid, now() + interval '1 hour')", message)
    await direct(res, ana, "select public.cancel_message($1::uuid)", message)


async def new_message_with(admin: asyncpg.Connection, who: Any, media_id: str) -> uuid.UUID:
    from bridge_process import new_message, numbers

    message = await new_message(admin, uuid.UUID(who.id), numbers(2, 809), "Mira")
    await admin.execute("update public.messages set media_id = $2::uuid where id = $1", message, media_id)
    return message


async def test_a_message_carries_a_file_through_the_api(
    admin: asyncpg.Connection, client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    ana, bruno = await make_user(), await make_user()
    flyer = (await upload(client, ana, "flyer.jpg", jpeg())).json()
    theirs = (await upload(client, bruno, "theirs.jpg", jpeg())).json()
    group = await reachable_group(admin, ana.id)
    resp = await client.post(
        "/api/messages", json={"content": "", "media_id": flyer["id"], "group_ids": [group]}, headers=ana.headers
    )
    assert resp.status_code == 201, resp.text
    message = resp.json()
    assert (message["media_id"], message["content"]) == (flyer["id"], "")
    preview = (await client.get(f"/api/messages/{message['id']}/preview", headers=ana.headers)).json()
    assert preview["media"] == {
        "id": flyer["id"],
        "kind": "image",
        "mime_type": "image/jpeg",
        "original_name": "flyer.jpg",
        "size_bytes": flyer["size_bytes"],
        "state": "ready",
        "url": f"/api/media/{flyer['id']}/content",
    }
    # Someone else's file is not found, on both paths; without its file the message needs a text.
    other = await client.put(f"/api/messages/{message['id']}", json={"media_id": theirs["id"]}, headers=ana.headers)
    assert api_error(other, 404) == "related_not_found" and other.json()["errors"][0]["field"] == "media_id"
    assert (
        await direct_error(
            res, ana, "update public.messages set media_id = $2::uuid where id = $1::uuid", message["id"], theirs["id"]
        )
        == "related_not_found"
    )
    bare = await client.put(f"/api/messages/{message['id']}", json={"media_id": None}, headers=ana.headers)
    assert api_error(bare, 422) == "content_empty"
    resp = await client.post(
        f"/api/messages/{message['id']}/schedule",
        json={"scheduled_for": (datetime.now(UTC) + timedelta(days=2)).isoformat()},
        headers=ana.headers,
    )
    assert resp.status_code == 200 and resp.json()["status"] == "scheduled", resp.text
    await client.post(f"/api/messages/{message['id']}/cancel", headers=ana.headers)
    # A text message's preview has no attachment.
    text = (
        await client.post("/api/messages", json={"content": "Hola", "group_ids": [group]}, headers=ana.headers)
    ).json()
    assert text["media_id"] is None
    assert (await client.get(f"/api/messages/{text['id']}/preview", headers=ana.headers)).json()["media"] is None


# -----------------------------------------------------------------------------------------------
# End to end: the real worker hands the real bridge a reference; the simulator records what it sent
# -----------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_scheduled_image_and_a_pdf_reach_whatsapp_byte_identical(
    admin: asyncpg.Connection,
    client: httpx.AsyncClient,
    res: Resources,
    prepared: Any,
    settings: Settings,
    make_user: Any,
    api_url: str,
    tmp_path: Path,
) -> None:
    from bridge_process import BridgeProcess, WorkerProcess, delivery_states, eventually, new_message, numbers, sent_for

    ana = await make_user()
    flyer = (await upload(client, ana, "flyer.jpg", jpeg((320, 200)))).json()
    menu = (await upload(client, ana, "menu.pdf", PDF, "application/pdf")).json()
    messages = {}
    for series, (media, caption) in enumerate(((flyer, "Hola {{name}}, mira el afiche"), (menu, "")), start=801):
        message = str(await new_message(admin, uuid.UUID(ana.id), numbers(3, series), "texto"))
        # The caption and the file set by the owner, as supabase-js would.
        await direct(
            res,
            ana,
            "update public.messages set content = $2, media_id = $3::uuid, recurrence = $4 where id = $1::uuid",
            message,
            caption,
            media["id"],
            "0 9 * * 1" if media is flyer else None,  # the flyer every Monday
        )
        messages[media["id"]] = message
    bridge = BridgeProcess(tmp_path / "bridge", token=settings.bridge_token, events_url=api_url + "/api/bridge/events")
    bridge.start()
    worker = WorkerProcess(
        prepared.admin_url,
        prepared.app_url,
        bridge.url,
        tmp_path / "worker.log",
        token=settings.bridge_token,
        PUBLIC_URL=api_url,
    )
    worker.start()
    try:
        for message in messages.values():
            await direct(res, ana, "select public.schedule_message($1::uuid, now())", message)
        for message in messages.values():
            states = await eventually(
                lambda m=message: delivery_states(admin, uuid.UUID(m)),
                lambda s: sum(s.values()) == 3 and "pending" not in s and "sending" not in s,
                60,
                what="the attachment's sends",
            )
            errors = await admin.fetch(
                "select phone, last_error_code, last_error from public.deliveries where message_id = $1::uuid"
                " and state = 'failed'",
                message,
            )
            assert set(states) <= {"sent", "delivered", "read"}, [dict(e) for e in errors]
        outbox = await bridge.outbox()
        image_sends = sent_for(outbox, uuid.UUID(messages[flyer["id"]]))
        assert len(image_sends) == 3
        for sent in image_sends:
            assert sent["media"] == {
                "sha256": flyer["sha256"],
                "size": flyer["size_bytes"],
                "mime_type": "image/jpeg",
                "filename": "flyer.jpg",
                "kind": "image",
            }
            assert sent["body"].startswith("Hola ") and sent["body"].endswith(", mira el afiche")
        # The flyer's next Monday carries the flyer too; a duplicate of the caption-less menu keeps the menu.
        nxt = await eventually(
            lambda: admin.fetchrow(
                "select id, media_id::text, status from public.messages where recurrence_parent_id = $1::uuid",
                messages[flyer["id"]],
            ),
            lambda r: r is not None,
            30,
            what="the next occurrence",
        )
        assert (nxt["media_id"], nxt["status"]) == (flyer["id"], "scheduled")
        await admin.execute("update public.messages set status = 'cancelled' where id = $1", nxt["id"])
        copy = json.loads(
            await direct(res, ana, "select to_jsonb(public.duplicate_message($1::uuid))::text", messages[menu["id"]])
        )
        assert (copy["media_id"], copy["content"], copy["status"]) == (menu["id"], "", "draft")
        document_sends = sent_for(outbox, uuid.UUID(messages[menu["id"]]))
        assert [(s["media"]["kind"], s["media"]["sha256"], s["body"]) for s in document_sends] == [
            ("document", menu["sha256"], "")
        ] * 3
    finally:
        worker.stop()
        bridge.stop()
