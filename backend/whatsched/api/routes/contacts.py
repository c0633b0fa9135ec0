"""The contacts API: list with filters, create, read, update (including opt-out) and delete.
(POST /api/contacts/import lives in routes/contacts_import.py.)

Every route runs in the caller's transaction, so RLS decides what exists: another user's contact
is a 404 `contact_not_found`. Phones are stored as E.164 (whatsched.phones); a national number is
read in the body's `default_country`, else the caller's profile default_country. Contact JSON is
built in SQL (whatsched.directory.contacts) and sent as is; the response models document it.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query, Response

from whatsched import phones
from whatsched.api.common import pg_json, read_all
from whatsched.api.deps import CallerDep, PagingDep, ResourcesDep, UserConn, caller_tx
from whatsched.api.errors import ApiError, responses
from whatsched.api.fast_lane import fast_lane
from whatsched.directory import contacts
from whatsched.directory.models import Contact, ContactCreate, ContactPage, ContactSort, ContactUpdate

router = APIRouter(prefix="/api/contacts", tags=["contacts"])

# Written in international form ("+56 ...", "0056 ..."): no default country needed.
_INTERNATIONAL = re.compile(r"^\s*(\+|00[\s.\-()/]*[1-9])")


def _not_found(contact_id: str) -> ApiError:
    return ApiError(404, "contact_not_found", f"Contact {contact_id} was not found.")


async def _phone(conn: asyncpg.Connection, raw: str, country: str | None) -> str:
    """E.164, or 422 invalid_phone with the reason. Reads the profile's country only when needed."""
    if country is None and not _INTERNATIONAL.match(raw):
        country = await contacts.profile_country(conn)
    parsed = phones.normalize(raw, country)
    if parsed.e164 is None:
        reason = parsed.reason or "not a phone number"
        raise ApiError(
            422, "invalid_phone", f"The phone number is not valid: {reason}.", [{"field": "phone", "message": reason}]
        )
    return parsed.e164


async def _link(conn: asyncpg.Connection, contact_id: str, group_ids: list[UUID], replace: bool) -> bool:
    """Link the groups (all must be the owner's, else 404 naming each unknown id). True if changed."""
    requested = [str(g) for g in group_ids]
    result = await contacts.link_groups(conn, contact_id, list(dict.fromkeys(requested)), replace)
    if result.missing:
        position = {gid: i for i, gid in reversed(list(enumerate(requested)))}
        raise ApiError(
            404,
            "related_not_found",
            f"{len(result.missing)} of group_ids are not among your groups: {', '.join(result.missing[:5])}.",
            [
                {"field": f"group_ids.{position[gid]}", "message": f"group {gid} was not found"}
                for gid in result.missing
            ],
        )
    return result.changed


async def _contact_or_404(conn: asyncpg.Connection, contact_id: str) -> str:
    text = await contacts.contact_json(conn, contact_id)
    if text is None:
        raise _not_found(contact_id)
    return text


# -----------------------------------------------------------------------------------------------
# Collection
# -----------------------------------------------------------------------------------------------


@router.get("", response_model=ContactPage, responses=responses(401, 403, 422))
@fast_lane
async def list_contacts(
    *,
    q: str | None = Query(None, max_length=200, description="Text in the name or email, or digits of the phone"),
    is_active: bool | None = Query(None),
    group_id: UUID | None = Query(None, description="Only members of this group"),
    sort: ContactSort = Query("name", description="name sorts case-insensitively; ties keep a stable order"),
    scope: Literal["mine", "all"] = Query("mine", description="all: every user's contacts (admins only)"),
    paging: PagingDep,
    who: CallerDep,
    res: ResourcesDep,
) -> Response:
    """Your contacts with their group ids, by name unless `sort` says otherwise."""
    filters = contacts.ContactFilters(q=q or None, is_active=is_active, group_id=str(group_id) if group_id else None)
    async with caller_tx(res, who) as conn:
        if scope == "all":
            await read_all(conn, who, "contact", "contacts", q)
            filters.everyone = True
        text = await contacts.list_contacts(conn, filters, sort, paging.page, paging.page_size)
    assert text is not None  # only a members listing (member_of) can come back empty
    return pg_json(text)


@router.post("", response_model=Contact, status_code=201, responses=responses(400, 401, 404, 409, 422))
async def create_contact(body: ContactCreate, conn: UserConn) -> Response:
    """A new contact. 422 invalid_phone says why a number is refused; 409 duplicate_phone when you
    already have a contact with that number; 404 related_not_found for group ids that are not yours."""
    phone = await _phone(conn, body.phone, body.default_country)
    contact_id = await contacts.insert_contact(
        conn, body.name, phone, str(body.email) if body.email else None, body.is_active, body.opted_out
    )
    if body.group_ids:
        await _link(conn, contact_id, body.group_ids, replace=False)
    return pg_json(await _contact_or_404(conn, contact_id), 201)


# -----------------------------------------------------------------------------------------------
# One contact
# -----------------------------------------------------------------------------------------------


@router.get(
    "/{contact_id}",
    response_model=Contact,
    responses={**responses(401, 404, 422), 304: {"description": "Not modified (If-None-Match matched the ETag)"}},
)
async def get_contact(contact_id: UUID, conn: UserConn) -> Response:
    """Carries an ETag; send it back in If-None-Match to get 304 when nothing changed."""
    return pg_json(await _contact_or_404(conn, str(contact_id)))


@router.put("/{contact_id}", response_model=Contact, responses=responses(400, 401, 404, 409, 422))
async def update_contact(contact_id: UUID, body: ContactUpdate, conn: UserConn) -> Response:
    """Partial update: only the fields present change. group_ids replaces the contact's groups;
    opted_out true marks that the contact asked not to be messaged (it is then never sent to)."""
    cid = str(contact_id)
    sent = body.model_fields_set
    changes: dict[str, Any] = {}
    if "name" in sent:
        changes["name"] = body.name
    if "phone" in sent:
        changes["phone"] = await _phone(conn, body.phone, body.default_country)
    if "email" in sent:
        changes["email"] = str(body.email) if body.email else None
    if "is_active" in sent:
        changes["is_active"] = body.is_active
    if "opted_out" in sent:
        changes["opted_out_at"] = body.opted_out
    if not await contacts.update_contact(conn, cid, changes):
        raise _not_found(cid)
    if "group_ids" in sent and await _link(conn, cid, body.group_ids, replace=True) and not changes:
        await contacts.touch(conn, cid)
    return pg_json(await _contact_or_404(conn, cid))


@router.delete("/{contact_id}", status_code=204, response_class=Response, responses=responses(401, 404, 422))
async def delete_contact(contact_id: UUID, conn: UserConn) -> Response:
    """Deletes the contact and its memberships; its groups' contact_count drops accordingly. The
    database audits the deletion (contact.delete)."""
    if not await contacts.delete_contact(conn, str(contact_id)):
        raise _not_found(str(contact_id))
    return Response(status_code=204)
