"""The WhatsApp numbers API: list, add, change, remove, assign to users, act on (start, stop,
restart, log out), resume one its health paused, and read a number's QR code.

Each route calls the database's function for it (whatsched.whatsapp.numbers), in the caller's
transaction, so a supabase-js caller meets the same rules: a number the caller may not use is a 404
number_not_found, managing one they may only use is a 403 forbidden, and every action is audited by
the database (whatsapp_number.*). Admins manage every number; with SELF_SERVICE_NUMBERS a user adds
numbers of their own (never shared) and manages those.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response

from whatsched.api.common import pg_json
from whatsched.api.deps import UserConn
from whatsched.api.errors import ApiError, responses
from whatsched.whatsapp import numbers
from whatsched.whatsapp.models import (
    NumberAction,
    NumberCommand,
    NumberCreate,
    NumberQr,
    NumberUpdate,
    WhatsAppNumber,
)

router = APIRouter(prefix="/api/whatsapp/numbers", tags=["whatsapp numbers"])


@router.get("", response_model=list[WhatsAppNumber], responses=responses(401, 422))
async def list_numbers(conn: UserConn) -> Response:
    """The numbers you may send from (shared, assigned to you, your own); admins see all. The
    default number comes first."""
    return pg_json(await numbers.list_numbers(conn))


@router.post("", response_model=WhatsAppNumber, status_code=201, responses=responses(400, 401, 403, 422))
async def add_number(body: NumberCreate, conn: UserConn) -> Response:
    """A new number, `stopped` until started. Admins only, unless SELF_SERVICE_NUMBERS is on: then
    a user's number is theirs alone (not shared, seen by them and admins). 403 forbidden otherwise."""
    return pg_json(await numbers.add_number(conn, body.label, body.shared), 201)


@router.get("/{number_id}", response_model=WhatsAppNumber, responses=responses(401, 404, 422))
async def get_number(number_id: UUID, conn: UserConn) -> Response:
    text = await numbers.number_json(conn, str(number_id))
    if text is None:
        raise ApiError(404, "number_not_found", f"WhatsApp number {number_id} was not found.")
    return pg_json(text)


@router.put("/{number_id}", response_model=WhatsAppNumber, responses=responses(400, 401, 403, 404, 422))
async def update_number(number_id: UUID, body: NumberUpdate, conn: UserConn) -> Response:
    """Partial update of label and shared (only an admin shares a number)."""
    return pg_json(await numbers.update_number(conn, str(number_id), body.label, body.shared))


@router.delete("/{number_id}", status_code=204, response_class=Response, responses=responses(401, 403, 404, 409, 422))
async def remove_number(number_id: UUID, conn: UserConn) -> Response:
    """Removes the number (409 number_is_default for the default one). Its messages then leave from
    their owner's default number, else the deployment's."""
    await numbers.remove_number(conn, str(number_id))
    return Response(status_code=204)


@router.put(
    "/{number_id}/users/{user_id}", status_code=204, response_class=Response, responses=responses(401, 403, 404, 422)
)
async def assign_number(number_id: UUID, user_id: UUID, conn: UserConn) -> Response:
    """Lets the user send from a number that is not shared (admins; repeating it changes nothing).
    404 related_not_found when there is no such user."""
    await numbers.assign(conn, str(number_id), str(user_id))
    return Response(status_code=204)


@router.delete(
    "/{number_id}/users/{user_id}", status_code=204, response_class=Response, responses=responses(401, 403, 404, 422)
)
async def unassign_number(number_id: UUID, user_id: UUID, conn: UserConn) -> Response:
    """Takes the number away from the user (admins). 404 assignment_not_found when it was not theirs."""
    if not await numbers.unassign(conn, str(number_id), str(user_id)):
        raise ApiError(404, "assignment_not_found", f"WhatsApp number {number_id} is not assigned to user {user_id}.")
    return Response(status_code=204)


@router.get("/{number_id}/qr", response_model=NumberQr, responses=responses(401, 403, 404, 422))
async def number_qr(number_id: UUID, conn: UserConn) -> Response:
    """The QR code to scan while the number is `qr_needed` (null otherwise): admins, and the owner
    of a self-service number."""
    qr, status = await numbers.qr_code(conn, str(number_id))
    answer = NumberQr.model_validate({"number_id": str(number_id), "status": status, "qr_code": qr})
    return pg_json(answer.model_dump_json())


@router.post("/{number_id}/resume", response_model=WhatsAppNumber, responses=responses(401, 403, 404, 409, 422))
async def resume_number(number_id: UUID, conn: UserConn) -> Response:
    """Resumes a number its health paused (admins; the owner of a self-service number): its status
    returns to what the bridge last said, its health score starts again from zero, and for
    HEALTH_RAMP_HOURS it sends at a lower pace. 409 number_not_paused when it is not paused."""
    return pg_json(await numbers.resume(conn, str(number_id)))


@router.post(
    "/{number_id}/{action}", response_model=NumberCommand, status_code=202, responses=responses(401, 403, 404, 422)
)
async def act_on_number(number_id: UUID, action: NumberAction, conn: UserConn) -> Response:
    """Queues start, stop, restart or logout for the number's bridge (a worker runs it; the
    number's status follows as the bridge reports it). 202 with the command."""
    return pg_json(await numbers.request_action(conn, str(number_id), action), 202)
