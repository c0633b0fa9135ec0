-- =============================================================================
-- Derived counts (kept exact by statement-level triggers), realtime events,
-- the dispatcher's claim and fan-out, and the dashboard counts.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- groups.contact_count: one update per statement and group, whatever the batch size
-- -----------------------------------------------------------------------------
create or replace function private.count_group_contacts()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Each row contributes +1 (new) or -1 (old) to its group; an update that moves a member between
  -- groups is both.
  if tg_op = 'INSERT' then
    update public.groups g set contact_count = g.contact_count + d.n
    from (select group_id, count(*)::integer as n from new_rows group by group_id) d
    where g.id = d.group_id;
  elsif tg_op = 'DELETE' then
    update public.groups g set contact_count = greatest(g.contact_count - d.n, 0)
    from (select group_id, count(*)::integer as n from old_rows group by group_id) d
    where g.id = d.group_id;
  else
    update public.groups g set contact_count = greatest(g.contact_count + d.n, 0)
    from (
      select group_id, sum(n)::integer as n
      from (select group_id, 1 as n from new_rows union all select group_id, -1 from old_rows) changes
      group by group_id
      having sum(n) <> 0
    ) d
    where g.id = d.group_id;
  end if;
  return null;
end;
$$;

create trigger group_contacts_count_insert after insert on public.group_contacts
  referencing new table as new_rows
  for each statement execute function private.count_group_contacts();
create trigger group_contacts_count_update after update on public.group_contacts
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.count_group_contacts();
create trigger group_contacts_count_delete after delete on public.group_contacts
  referencing old table as old_rows
  for each statement execute function private.count_group_contacts();

-- The count is the trigger's alone: users can neither seed nor overwrite it.
create or replace function private.keep_group_count()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if not private.acting_as_user() then
    return new;
  end if;
  if tg_op = 'INSERT' then
    new.contact_count := 0;
  else
    new.contact_count := old.contact_count;
  end if;
  return new;
end;
$$;

create trigger groups_keep_count before insert or update on public.groups
  for each row execute function private.keep_group_count();

-- -----------------------------------------------------------------------------
-- messages.recipient_count / delivered_count / failed_count from deliveries.
-- delivered_count counts deliveries WhatsApp accepted (sent, delivered or read).
-- -----------------------------------------------------------------------------
create or replace function private.count_deliveries()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Each row contributes +1 (new) or -1 (old) to its message's totals; one update per message.
  if tg_op = 'INSERT' then
    update public.messages m
    set recipient_count = m.recipient_count + d.total, delivered_count = m.delivered_count + d.ok,
        failed_count = m.failed_count + d.failed
    from (
      select message_id, count(*)::integer as total,
        count(*) filter (where state in ('sent', 'delivered', 'read'))::integer as ok,
        count(*) filter (where state = 'failed')::integer as failed
      from new_rows group by message_id
    ) d
    where m.id = d.message_id;
  elsif tg_op = 'DELETE' then
    update public.messages m
    set recipient_count = m.recipient_count - d.total, delivered_count = m.delivered_count - d.ok,
        failed_count = m.failed_count - d.failed
    from (
      select message_id, count(*)::integer as total,
        count(*) filter (where state in ('sent', 'delivered', 'read'))::integer as ok,
        count(*) filter (where state = 'failed')::integer as failed
      from old_rows group by message_id
    ) d
    where m.id = d.message_id;
  else
    update public.messages m
    set delivered_count = m.delivered_count + d.ok, failed_count = m.failed_count + d.failed
    from (
      select message_id, sum(ok)::integer as ok, sum(failed)::integer as failed
      from (
        select message_id, (state in ('sent', 'delivered', 'read'))::integer as ok,
               (state = 'failed')::integer as failed
        from new_rows
        union all
        select message_id, -(state in ('sent', 'delivered', 'read'))::integer,
               -(state = 'failed')::integer
        from old_rows
      ) changes
      group by message_id
      having sum(ok) <> 0 or sum(failed) <> 0
    ) d
    where m.id = d.message_id;
  end if;
  return null;
end;
$$;

create trigger deliveries_count_insert after insert on public.deliveries
  referencing new table as new_rows
  for each statement execute function private.count_deliveries();
create trigger deliveries_count_update after update on public.deliveries
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.count_deliveries();
create trigger deliveries_count_delete after delete on public.deliveries
  referencing old table as old_rows
  for each statement execute function private.count_deliveries();

-- -----------------------------------------------------------------------------
-- Events: one realtime.send per change, on the owner's private topic user:<uuid>.
-- On Supabase that is a Realtime broadcast; on plain Postgres a pg_notify('realtime').
-- -----------------------------------------------------------------------------
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

-- -----------------------------------------------------------------------------
-- Fan-out: one delivery per distinct active phone across the message's groups, in one statement.
-- -----------------------------------------------------------------------------
create or replace function private.fan_out(p_message_id uuid)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  n integer;
begin
  insert into public.deliveries (message_id, created_by, contact_id, phone, contact_name, idempotency_key)
  select distinct on (c.phone)
    m.id, m.created_by, c.id, c.phone, c.name, m.id::text || ':' || c.phone
  from public.messages m
  join public.message_groups mg on mg.message_id = m.id
  join public.group_contacts gc on gc.group_id = mg.group_id
  join public.contacts c on c.id = gc.contact_id
  where m.id = p_message_id and c.is_active and c.opted_out_at is null
  order by c.phone, c.created_at
  on conflict (message_id, phone) do nothing;
  get diagnostics n = row_count;
  return n;
end;
$$;

-- -----------------------------------------------------------------------------
-- Claim: due scheduled messages become `sending` (and are fanned out); sending messages whose
-- lease expired (a crashed worker) or was cleared (a resume) are taken over. SKIP LOCKED lets
-- any number of workers claim side by side.
-- -----------------------------------------------------------------------------
create or replace function private.claim_messages(p_worker text, p_limit integer, p_lease_seconds integer)
returns setof public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages;
begin
  for m in
    select * from public.messages
    where (status = 'scheduled' and scheduled_for <= now())
       or (status = 'sending' and (lease_expires_at is null or lease_expires_at < now()))
    order by scheduled_for nulls first
    limit p_limit
    for update skip locked
  loop
    if m.status = 'scheduled' then
      update public.messages set status = 'sending' where id = m.id;
      perform private.fan_out(m.id);
    end if;
    update public.messages
    set claimed_by = p_worker, lease_expires_at = now() + make_interval(secs => p_lease_seconds)
    where id = m.id
    returning * into m;
    return next m;
  end loop;
end;
$$;

-- When the next scheduled message is due (the dispatcher sleeps until then).
create or replace function private.next_due_at()
returns timestamptz
language sql
stable
set search_path = ''
as $$
  select least(
    (select min(scheduled_for) from public.messages where status = 'scheduled'),
    (select min(coalesce(lease_expires_at, now())) from public.messages where status = 'sending')
  );
$$;

revoke all on function private.fan_out(uuid), private.claim_messages(text, integer, integer), private.next_due_at()
  from public, anon, authenticated;
grant execute on function private.fan_out(uuid), private.claim_messages(text, integer, integer), private.next_due_at()
  to service_role;

-- Wake the dispatcher when a message becomes due-able (scheduled or resumed).
create or replace function private.notify_dispatcher()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.status in ('scheduled', 'sending') and new.status is distinct from old.status then
    perform pg_notify('whatsched_dispatch', new.id::text);
  end if;
  return null;
end;
$$;

create trigger messages_notify_dispatcher after update on public.messages
  for each row execute function private.notify_dispatcher();

-- -----------------------------------------------------------------------------
-- Dashboard counts, as the caller sees them (RLS); p_all widens an admin's view to everyone.
-- -----------------------------------------------------------------------------
create or replace function public.dashboard_counts(p_all boolean default false)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with me as (select (select auth.uid()) as uid),
  msg as (
    select status, count(*)::integer as n from public.messages, me
    where p_all or created_by = me.uid group by status
  ),
  dlv as (
    select
      count(*) filter (where state in ('sent', 'delivered', 'read'))::integer as ok,
      count(*) filter (where state = 'failed')::integer as failed,
      count(*) filter (where state in ('pending', 'sending'))::integer as pending,
      count(*) filter (where state in ('delivered', 'read'))::integer as delivered,
      count(*) filter (where state = 'read')::integer as read
    from public.deliveries, me where p_all or created_by = me.uid
  )
  select jsonb_build_object(
    'messages', jsonb_build_object(
      'total', coalesce((select sum(n) from msg), 0),
      'draft', coalesce((select n from msg where status = 'draft'), 0),
      'scheduled', coalesce((select n from msg where status = 'scheduled'), 0),
      'sending', coalesce((select n from msg where status = 'sending'), 0),
      'sent', coalesce((select n from msg where status = 'sent'), 0),
      'paused', coalesce((select n from msg where status = 'paused'), 0),
      'cancelled', coalesce((select n from msg where status = 'cancelled'), 0),
      'failed', coalesce((select n from msg where status = 'failed'), 0)
    ),
    'contacts', (select count(*) from public.contacts, me where p_all or created_by = me.uid),
    'active_contacts', (select count(*) from public.contacts, me
                        where (p_all or created_by = me.uid) and is_active and opted_out_at is null),
    'groups', (select count(*) from public.groups, me where p_all or created_by = me.uid),
    'deliveries', (select to_jsonb(dlv) from dlv),
    'success_rate', (select case when ok + failed = 0 then null
                            else round(ok::numeric / (ok + failed), 4) end from dlv)
  );
$$;

grant execute on function public.dashboard_counts(boolean) to authenticated, service_role;
revoke execute on function public.dashboard_counts(boolean) from anon, public;
