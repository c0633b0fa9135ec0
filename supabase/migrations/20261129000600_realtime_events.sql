-- =============================================================================
-- Events leave the database: every status, progress and notification change is one
-- realtime.send on the owner's private topic user:<uuid> (a Realtime broadcast on
-- Supabase, a pg_notify('realtime') on plain Postgres), which the API processes
-- relay to their WebSocket clients.
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
-- plain Postgres). Hosted Supabase's realtime.send stores the broadcast without a NOTIFY, so there
-- we also notify, for the API processes' WebSocket hubs that LISTEN on 'realtime'.
create or replace function private.broadcast(payload jsonb, event text, topic text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform realtime.send(payload, event, topic, true);
  if to_regclass('realtime.schema_migrations') is not null then
    perform pg_notify(
      'realtime',
      jsonb_build_object('topic', topic, 'event', event, 'payload', payload, 'private', true)::text
    );
  end if;
end;
$$;

revoke all on function private.broadcast(jsonb, text, text) from public, anon;
grant execute on function private.broadcast(jsonb, text, text) to authenticated, service_role;

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
