"""The groups API: CRUD and the group's members (list, add many, remove one).

Every route runs in the caller's transaction, so RLS decides what exists: another user's group is
a 404 `group_not_found`, and another user's contact cannot be added (404 `related_not_found`).
Group JSON is built in SQL (whatsched.directory.groups) and sent as is; the response models
below document it.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from fastapi import APIRouter, Query, Response

from whatsched.api.common import pg_json, read_all
from whatsched.api.deps import CallerDep, PagingDep, ResourcesDep, UserConn, caller_tx
from whatsched.api.errors import ApiError, rate_limit_headers, responses
from whatsched.api.fast_lane import fast_lane
from whatsched.directory import contacts, groups
from whatsched.directory.models import (
    ContactPage,
    ContactSort,
    Group,
    GroupCreate,
    GroupPage,
    GroupSort,
    GroupUpdate,
    MembersAdd,
    MembersAdded,
)
from whatsched.rules import rate_limit_status

router = APIRouter(prefix="/api/groups", tags=["groups"])


def _not_found(group_id: str) -> ApiError:
    return ApiError(404, "group_not_found", f"Group {group_id} was not found.")


# -----------------------------------------------------------------------------------------------
# Collection
# -----------------------------------------------------------------------------------------------


@router.get("", response_model=GroupPage, responses=responses(401, 403, 422))
@fast_lane
async def list_groups(
    *,
    q: str | None = Query(None, max_length=200, description="Text in the name (case-insensitive)"),
    sort: GroupSort = Query("name", description="name sorts case-insensitively; ties keep a stable order"),
    scope: Literal["mine", "all"] = Query("mine", description="all: every user's groups (admins only)"),
    paging: PagingDep,
    who: CallerDep,
    res: ResourcesDep,
) -> Response:
    """Your groups, by name unless `sort` says otherwise."""
    filters = groups.GroupFilters(q=q or None)
    async with caller_tx(res, who) as conn:
        if scope == "all":
            await read_all(conn, who, "group", "groups", q)
            filters.everyone = True
        text = await groups.list_groups(conn, filters, sort, paging.page, paging.page_size)
    return pg_json(text)


@router.post("", response_model=Group, status_code=201, responses=responses(400, 401, 409, 422, 429))
async def create_group(body: GroupCreate, who: CallerDep, res: ResourcesDep) -> Response:
    """A new, empty group. Names are unique per user regardless of case (409 duplicate_group_name).
    Limited to 5 per minute per user, counted by the database for every caller (429 with
    Retry-After; X-RateLimit-* headers tell how many remain). Only groups created count."""
    async with caller_tx(res, who) as conn:
        text = await groups.insert_group(conn, body.name, body.description or "")
        limit_headers = rate_limit_headers(await rate_limit_status(conn, "group_create"))
    return pg_json(text, 201, headers=limit_headers)


# -----------------------------------------------------------------------------------------------
# One group
# -----------------------------------------------------------------------------------------------


@router.get(
    "/{group_id}",
    response_model=Group,
    responses={**responses(401, 404, 422), 304: {"description": "Not modified (If-None-Match matched the ETag)"}},
)
async def get_group(group_id: UUID, conn: UserConn) -> Response:
    """Carries an ETag; send it back in If-None-Match to get 304 when nothing changed."""
    text = await groups.group_json(conn, str(group_id))
    if text is None:
        raise _not_found(str(group_id))
    return pg_json(text)


@router.put("/{group_id}", response_model=Group, responses=responses(400, 401, 404, 409, 422))
async def update_group(group_id: UUID, body: GroupUpdate, conn: UserConn) -> Response:
    """Partial update of name and description (409 duplicate_group_name when the name is taken)."""
    sent = body.model_fields_set
    changes: dict[str, str] = {}
    if "name" in sent:
        changes["name"] = body.name
    if "description" in sent:
        changes["description"] = body.description or ""
    text = await groups.update_group(conn, str(group_id), changes)
    if text is None:
        raise _not_found(str(group_id))
    return pg_json(text)


@router.delete("/{group_id}", status_code=204, response_class=Response, responses=responses(401, 404, 422))
async def delete_group(group_id: UUID, conn: UserConn) -> Response:
    """Deletes the group and its memberships (the contacts stay); messages no longer target it.
    The database audits the deletion (group.delete, with the name and contact count)."""
    if await groups.delete_group(conn, str(group_id)) is None:
        raise _not_found(str(group_id))
    return Response(status_code=204)


# -----------------------------------------------------------------------------------------------
# Members
# -----------------------------------------------------------------------------------------------


@router.get("/{group_id}/contacts", response_model=ContactPage, responses=responses(401, 404, 422))
async def list_members(
    *,
    group_id: UUID,
    q: str | None = Query(None, max_length=200, description="Text in the name or email, or digits of the phone"),
    is_active: bool | None = Query(None),
    sort: ContactSort = Query("name"),
    paging: PagingDep,
    conn: UserConn,
) -> Response:
    """The group's contacts, with the same filters and sorts as GET /api/contacts."""
    filters = contacts.ContactFilters(q=q or None, is_active=is_active, member_of=str(group_id))
    text = await contacts.list_contacts(conn, filters, sort, paging.page, paging.page_size)
    if text is None:
        raise _not_found(str(group_id))
    return pg_json(text)


@router.post(
    "/{group_id}/contacts",
    response_model=MembersAdded,
    status_code=201,
    responses={
        **responses(400, 401, 404, 422),
        200: {"model": MembersAdded, "description": "Every contact was a member already"},
    },
)
async def add_members(group_id: UUID, body: MembersAdd, conn: UserConn) -> Response:
    """Adds up to 1000 of your contacts at once (201; 200 when all were members already). When any
    id is not one of your contacts nothing is added: 404 related_not_found lists each such id."""
    requested = [str(c) for c in body.contact_ids]
    result = await groups.add_members(conn, str(group_id), requested)
    if not result.group_found:
        raise _not_found(str(group_id))
    if result.missing:
        position = {cid: i for i, cid in reversed(list(enumerate(requested)))}
        shown = ", ".join(result.missing[:5]) + (", ..." if len(result.missing) > 5 else "")
        raise ApiError(
            404,
            "related_not_found",
            f"{len(result.missing)} of contact_ids are not among your contacts: {shown}.",
            [
                {"field": f"contact_ids.{position[cid]}", "message": f"contact {cid} was not found"}
                for cid in result.missing
            ],
        )
    answer = MembersAdded(added=result.added, already_members=result.distinct_requested - result.added)
    return pg_json(answer.model_dump_json(), 201 if result.added else 200)


@router.delete(
    "/{group_id}/contacts/{contact_id}", status_code=204, response_class=Response, responses=responses(401, 404, 422)
)
async def remove_member(group_id: UUID, contact_id: UUID, conn: UserConn) -> Response:
    """Removes the contact from the group (the contact itself stays). 404 member_not_found when it
    was not a member."""
    group_found, removed = await groups.remove_member(conn, str(group_id), str(contact_id))
    if not group_found:
        raise _not_found(str(group_id))
    if not removed:
        raise ApiError(404, "member_not_found", f"Contact {contact_id} is not a member of group {group_id}.")
    return Response(status_code=204)
