-- =============================================================================
-- What the messages API reads on its hot paths, kept exact by statement-level
-- triggers so a page of messages is one cheap indexed query:
--   public.message_counts     messages per (owner, status): the list's `total`
--   public.message_audiences  live recipient count of messages not fanned out
--                             yet (public.message_recipient_count, cached)
-- plus public.message_stats(id) and the indexes the list's sorts and the spam
-- guard use. Both tables are written only by these triggers.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- message_counts: one row per owner and status
-- -----------------------------------------------------------------------------
create table public.message_counts (
  created_by uuid not null references auth.users (id) on delete cascade,
  status text not null,
  n integer not null default 0,
  primary key (created_by, status)
);

alter table public.message_counts enable row level security;
revoke all on public.message_counts from anon;
revoke insert, update, delete on public.message_counts from authenticated;
grant select on public.message_counts to authenticated;
grant select, insert, update, delete on public.message_counts to service_role;

create policy "message_counts: read own or admin" on public.message_counts
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

create or replace function private.count_messages()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Rows in (owner, status) order: concurrent statements lock counters in the same order.
  if tg_op = 'INSERT' then
    insert into public.message_counts as c (created_by, status, n)
    select created_by, status, count(*)::integer from new_rows group by 1, 2 order by 1, 2
    on conflict (created_by, status) do update set n = c.n + excluded.n;
  elsif tg_op = 'DELETE' then
    -- Update only: when a user is deleted, the cascade may already have removed their counters,
    -- and re-creating them would violate the foreign key.
    update public.message_counts c set n = c.n - d.n
    from (select created_by, status, count(*)::integer as n from old_rows group by 1, 2 order by 1, 2) d
    where c.created_by = d.created_by and c.status = d.status;
  else
    insert into public.message_counts as c (created_by, status, n)
    select created_by, status, sum(d)::integer
    from (
      select n.created_by, n.status, 1 as d
      from new_rows n join old_rows o on o.id = n.id where o.status is distinct from n.status
      union all
      select o.created_by, o.status, -1
      from new_rows n join old_rows o on o.id = n.id where o.status is distinct from n.status
    ) changes
    group by 1, 2
    order by 1, 2
    on conflict (created_by, status) do update set n = c.n + excluded.n;
  end if;
  return null;
end;
$$;

create trigger messages_count_insert after insert on public.messages
  referencing new table as new_rows
  for each statement execute function private.count_messages();
create trigger messages_count_update after update on public.messages
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.count_messages();
create trigger messages_count_delete after delete on public.messages
  referencing old table as old_rows
  for each statement execute function private.count_messages();

insert into public.message_counts (created_by, status, n)
select created_by, status, count(*)::integer from public.messages group by 1, 2
on conflict (created_by, status) do update set n = excluded.n;

-- -----------------------------------------------------------------------------
-- message_audiences: who a message not yet fanned out would reach, right now.
-- Recomputed (never patched) for the affected messages after each statement that
-- changes a message's groups, a group's members, or whether a contact is reachable.
-- -----------------------------------------------------------------------------
create table public.message_audiences (
  message_id uuid primary key,
  created_by uuid not null,
  recipients integer not null,
  computed_at timestamptz not null default now(),
  foreign key (message_id, created_by) references public.messages (id, created_by) on delete cascade
);

create index message_audiences_created_by_idx on public.message_audiences (created_by);

alter table public.message_audiences enable row level security;
revoke all on public.message_audiences from anon;
revoke insert, update, delete on public.message_audiences from authenticated;
grant select on public.message_audiences to authenticated;
grant select, insert, update, delete on public.message_audiences to service_role;

create policy "message_audiences: read own or admin" on public.message_audiences
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

-- Not fanned out: still editable and without a single delivery (recipient_count counts deliveries).
create or replace function private.refresh_audiences(p_message_ids uuid[])
returns void
language sql
security definer
set search_path = ''
as $$
  insert into public.message_audiences (message_id, created_by, recipients, computed_at)
  select m.id, m.created_by, public.message_recipient_count(m.id), now()
  from public.messages m
  where m.id = any(p_message_ids)
    and m.status in ('draft', 'scheduled', 'paused') and m.recipient_count = 0
  order by m.id
  on conflict (message_id) do update
    set recipients = excluded.recipients, computed_at = excluded.computed_at;
$$;

create or replace function private.audience_after_message_groups()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.refresh_audiences(array(select distinct message_id from new_rows));
  elsif tg_op = 'DELETE' then
    perform private.refresh_audiences(array(select distinct message_id from old_rows));
  else
    perform private.refresh_audiences(array(select message_id from new_rows union select message_id from old_rows));
  end if;
  return null;
end;
$$;

create trigger message_groups_audience_insert after insert on public.message_groups
  referencing new table as new_rows
  for each statement execute function private.audience_after_message_groups();
create trigger message_groups_audience_delete after delete on public.message_groups
  referencing old table as old_rows
  for each statement execute function private.audience_after_message_groups();
create trigger message_groups_audience_update after update on public.message_groups
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.audience_after_message_groups();

create or replace function private.audience_after_group_contacts()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    perform private.refresh_audiences(array(
      select distinct mg.message_id from public.message_groups mg
      where mg.group_id in (select distinct group_id from new_rows)
    ));
  elsif tg_op = 'DELETE' then
    perform private.refresh_audiences(array(
      select distinct mg.message_id from public.message_groups mg
      where mg.group_id in (select distinct group_id from old_rows)
    ));
  else
    perform private.refresh_audiences(array(
      select distinct mg.message_id from public.message_groups mg
      where mg.group_id in (select group_id from new_rows union select group_id from old_rows)
    ));
  end if;
  return null;
end;
$$;

create trigger group_contacts_audience_insert after insert on public.group_contacts
  referencing new table as new_rows
  for each statement execute function private.audience_after_group_contacts();
create trigger group_contacts_audience_delete after delete on public.group_contacts
  referencing old table as old_rows
  for each statement execute function private.audience_after_group_contacts();
create trigger group_contacts_audience_update after update on public.group_contacts
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.audience_after_group_contacts();

-- A contact becomes (un)reachable: active flag, opt-out, or a phone change (de-duplication by phone).
create or replace function private.audience_after_contacts()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.refresh_audiences(array(
    select distinct mg.message_id
    from new_rows n
    join old_rows o on o.id = n.id
    join public.group_contacts gc on gc.contact_id = n.id
    join public.message_groups mg on mg.group_id = gc.group_id
    where (n.is_active, n.opted_out_at is null, n.phone) is distinct from (o.is_active, o.opted_out_at is null, o.phone)
  ));
  return null;
end;
$$;

create trigger contacts_audience_update after update on public.contacts
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.audience_after_contacts();

revoke all on function private.refresh_audiences(uuid[]) from public, anon, authenticated;

select private.refresh_audiences(array(select id from public.messages));

-- -----------------------------------------------------------------------------
-- Indexes for the list's other sorts, the daily cap and the dashboard series
-- -----------------------------------------------------------------------------
create index messages_created_by_scheduled_for_idx on public.messages (created_by, scheduled_for);
create index messages_created_by_updated_at_idx on public.messages (created_by, updated_at desc);
create index deliveries_created_by_created_at_idx on public.deliveries (created_by, created_at);
create index deliveries_created_by_sent_at_idx on public.deliveries (created_by, sent_at) where sent_at is not null;

-- -----------------------------------------------------------------------------
-- Delivery statistics of one message, as the caller sees it (RLS): null when invisible.
-- -----------------------------------------------------------------------------
create or replace function public.message_stats(p_message_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with msg as (select id from public.messages where id = p_message_id),
  d as (select * from public.deliveries where message_id = (select id from msg)),
  counts as (
    select
      count(*) filter (where state = 'pending')::integer as pending,
      count(*) filter (where state = 'sending')::integer as sending,
      count(*) filter (where state = 'sent')::integer as sent,
      count(*) filter (where state = 'delivered')::integer as delivered,
      count(*) filter (where state = 'read')::integer as read,
      count(*) filter (where state = 'failed')::integer as failed,
      count(*) filter (where state = 'cancelled')::integer as cancelled,
      count(*) filter (where state = 'skipped')::integer as skipped,
      count(*)::integer as total,
      min(sent_at) as first_sent_at,
      max(sent_at) as last_sent_at
    from d
  ),
  timeline as (
    select minute, count(*) filter (where kind = 'sent')::integer as sent,
           count(*) filter (where kind = 'failed')::integer as failed
    from (
      select date_trunc('minute', sent_at) as minute, 'sent' as kind from d where sent_at is not null
      union all
      select date_trunc('minute', failed_at), 'failed' from d where failed_at is not null and state = 'failed'
    ) events
    group by minute
  )
  select jsonb_build_object(
    'message_id', (select id from msg),
    'total', c.total,
    'states', jsonb_build_object(
      'pending', c.pending, 'sending', c.sending, 'sent', c.sent, 'delivered', c.delivered,
      'read', c.read, 'failed', c.failed, 'cancelled', c.cancelled, 'skipped', c.skipped
    ),
    'success_rate', case when c.sent + c.delivered + c.read + c.failed = 0 then null
                         else round((c.sent + c.delivered + c.read)::numeric
                                    / (c.sent + c.delivered + c.read + c.failed), 4) end,
    'first_sent_at', private.utc_iso(c.first_sent_at),
    'last_sent_at', private.utc_iso(c.last_sent_at),
    'timeline', coalesce((
      select jsonb_agg(jsonb_build_object('minute', private.utc_iso(t.minute), 'sent', t.sent, 'failed', t.failed)
                       order by t.minute)
      from timeline t), '[]'::jsonb)
  )
  from counts c
  where exists (select 1 from msg);
$$;

grant execute on function public.message_stats(uuid) to authenticated, service_role;
revoke execute on function public.message_stats(uuid) from anon, public;
