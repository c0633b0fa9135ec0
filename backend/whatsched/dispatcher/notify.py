"""The user's notifications (the guide's shape, in the guide's language) for what the dispatcher
did: a message sent, partly sent or not sent at all, and WhatsApp disconnecting while messages
wait. Each is one set-based insert; the notifications trigger relays them to the user's socket."""

from __future__ import annotations

from uuid import UUID

import asyncpg

# The most frequent error of a message's failed deliveries says why, in one word.
FINISHED = """
insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)
select
  m.created_by,
  case when m.status = 'failed' then 'error' when m.failed_count > 0 then 'warning' else 'success' end,
  case when m.status = 'failed' then 'Mensaje no enviado'
       when m.failed_count > 0 then 'Mensaje enviado parcialmente'
       else 'Mensaje enviado' end,
  case
    when m.recipient_count = 0 then format('«%s» no tenía destinatarios.', p.preview)
    when m.status = 'failed' then format('«%s» no se pudo enviar a ninguno de sus %s destinatarios%s.',
                                         p.preview, m.recipient_count, e.why)
    when m.failed_count > 0 then format('«%s» se envió a %s de %s destinatarios; %s fallaron%s.',
                                        p.preview, m.delivered_count, m.recipient_count, m.failed_count, e.why)
    else format('«%s» se envió a %s destinatarios.', p.preview, m.delivered_count)
  end,
  'message',
  m.id
from public.messages m
cross join lateral (
  select case when char_length(m.content) > 40 then left(m.content, 40) || '…' else m.content end as preview
) p
cross join lateral (
  select coalesce(
    (select format(' (error más frecuente: %s)', d.last_error_code)
     from public.deliveries d
     where d.message_id = m.id and d.state = 'failed' and d.last_error_code is not null
     group by d.last_error_code order by count(*) desc, d.last_error_code limit 1),
    '') as why
) e
where m.id = any($1::uuid[]) and m.status in ('sent', 'failed')
"""

DISCONNECTED = """
insert into public.notifications (user_id, type, title, message)
select created_by, 'warning', 'WhatsApp desconectado',
  format('WhatsApp se desconectó%s. Los envíos quedan en espera hasta que se reconecte; tienes %s mensaje(s)'
         ' programados o en envío.',
         case when $1::text is null or $1::text = '' then '' else ' (' || left($1::text, 200) || ')' end, count(*))
from public.messages
where status in ('scheduled', 'sending')
group by created_by
"""


async def finished(conn: asyncpg.Connection, message_ids: list[UUID]) -> None:
    """One notification per finished message: success, partial failure (warning) or failure (error)."""
    await conn.execute(FINISHED, message_ids)


async def disconnected(conn: asyncpg.Connection, reason: str | None) -> int:
    """A warning to every user with scheduled or sending messages; returns how many were told."""
    status: str = await conn.execute(DISCONNECTED, reason)
    return int(status.rsplit(" ", 1)[-1])
