-- =============================================================================
-- Events leave the database: every status, progress and notification change is one
-- realtime.send on the owner's private topic user:<uuid> (a Realtime broadcast on
-- Supabase, a pg_notify('realtime') on plain Postgres), which the API processes
-- relay to their WebSocket clients.
--
-- Events go only onto one's own topic. private.broadcast is the service's and the
-- security definer triggers' (which name the topic of the row's owner), never a user's;
-- a user's request that reaches it anyway (a trigger on their behalf) may name only
-- their own topic (admins: any). The one event a user sends directly is their import's
-- progress (private.send_import_progress), and it goes to their own topic only.
-- =============================================================================

create or replace function private.utc_iso(t timestamptz)
returns text
language sql
immutable
set search_path = ''
as $$
  select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
$$;

-- One way out for every event: realtime.send (a Realtime broadcast on Supabase, a pg_notify on
-- plain Postgres), and the webhooks' outbox. Hosted Supabase's realtime.send stores the broadcast without a NOTIFY, so there
-- we also notify, for the API processes' WebSocket hubs that LISTEN on 'realtime'.
create or replace function private.broadcast(payload jsonb, event text, topic text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Whatever runs on a user's request reaches only that user's topic (an admin's: any). The claims
  -- say whose request it is (current_user is this function's owner, so acting_as_user() cannot).
  if (select auth.uid()) is not null
     and topic is distinct from 'user:' || (select auth.uid())::text
     and not (select private.is_admin()) then
    raise exception 'An event may go only to your own topic, not %.', topic using errcode = '42501';
  end if;
  perform realtime.send(payload, event, topic, true);
  if to_regclass('realtime.schema_migrations') is not null then
    perform pg_notify(
      'realtime',
      jsonb_build_object('topic', topic, 'event', event, 'payload', payload, 'private', true)::text
    );
  end if;
  -- The same event to the webhooks that subscribe to it, in this transaction (20261206000200_webhooks).
  perform private.enqueue_webhooks(payload, event, topic);
end;
$$;

revoke all on function private.broadcast(jsonb, text, text) from public, anon, authenticated;
grant execute on function private.broadcast(jsonb, text, text) to service_role;

-- import_progress of the caller's own import, on the caller's own topic: the one event a user
-- sends (the API, as that user, outside the import's transaction so it is seen at once).
create or replace function private.send_import_progress(
  p_import_id uuid, p_stage text, p_processed integer, p_total integer
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  if (select auth.uid()) is null then
    raise exception 'Import progress belongs to a signed-in user.' using errcode = '42501';
  end if;
  if p_stage is null or p_stage not in ('reading', 'importing', 'done', 'failed')
     or p_processed is null or p_processed < 0 or p_total is null or p_total < 0 then
    raise exception 'Not an import progress: stage %, % of %.', p_stage, p_processed, p_total
      using errcode = '22023';
  end if;
  perform private.broadcast(
    jsonb_build_object(
      'type', 'import_progress',
      'import_id', p_import_id,
      'stage', p_stage,
      'processed', p_processed,
      'total', p_total
    ),
    'import_progress', 'user:' || (select auth.uid())::text
  );
end;
$$;

revoke all on function private.send_import_progress(uuid, text, integer, integer) from public, anon;
grant execute on function private.send_import_progress(uuid, text, integer, integer) to authenticated;

create or replace function private.emit_message_events()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.status is distinct from old.status then
    perform private.broadcast(
      jsonb_build_object(
        'type', 'message_status_update',
        'message_id', new.id,
        'status', new.status,
        'timestamp', private.utc_iso(now())
      ),
      'message_status_update', 'user:' || new.created_by::text
    );
  end if;
  if (new.recipient_count, new.delivered_count, new.failed_count)
     is distinct from (old.recipient_count, old.delivered_count, old.failed_count) then
    perform private.broadcast(
      jsonb_build_object(
        'type', 'message_progress',
        'message_id', new.id,
        'sent', new.delivered_count,
        'total', new.recipient_count,
        'failed', new.failed_count
      ),
      'message_progress', 'user:' || new.created_by::text
    );
  end if;
  return null;
end;
$$;

create trigger messages_emit_events after update on public.messages
  for each row execute function private.emit_message_events();

-- Trigger functions: nobody calls them (a trigger runs them whatever the grants).
revoke all on function private.emit_message_events() from public, anon, authenticated;

create or replace function private.emit_notification_event()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.broadcast(
    jsonb_build_object(
      'type', 'new_notification',
      'notification', jsonb_build_object(
        'id', new.id,
        'type', new.type,
        'title', new.title,
        'message', new.message,
        'timestamp', private.utc_iso(new.created_at),
        'related_entity_type', new.related_entity_type,
        'related_entity_id', new.related_entity_id
      )
    ),
    'new_notification', 'user:' || new.user_id::text
  );
  return null;
end;
$$;

create trigger notifications_emit_event after insert on public.notifications
  for each row execute function private.emit_notification_event();

revoke all on function private.emit_notification_event() from public, anon, authenticated;
