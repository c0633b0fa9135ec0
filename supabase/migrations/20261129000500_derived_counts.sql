-- =============================================================================
-- Derived counts, kept exact by statement-level triggers (one update per statement,
-- whatever the batch size) and written by nobody else:
--   groups.contact_count        members of each group
--   messages.recipient_count,
--   delivered_count, failed_count   from the message's deliveries
--   public.message_counts       messages per owner and status (the list's `total`)
--   public.message_audiences    live recipient count of messages not fanned out yet
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
-- message_counts: each transaction writes only its own rows (shard = its transaction id), so two
-- workers changing one owner's messages never wait on a shared counter row.
-- -----------------------------------------------------------------------------
create or replace function private.count_messages()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- This transaction's own rows: no other transaction writes them, so no one waits on them.
  mine bigint := (pg_current_xact_id()::text)::bigint;
begin
  if tg_op = 'INSERT' then
    insert into public.message_counts as c (created_by, status, shard, n)
    select created_by, status, mine, count(*)::integer from new_rows group by 1, 2
    on conflict (created_by, status, shard) do update set n = c.n + excluded.n;
  elsif tg_op = 'DELETE' then
    -- When a user is deleted, the cascade removes their counters; adding rows for them again
    -- would violate the foreign key, so only owners who still exist are counted down.
    insert into public.message_counts as c (created_by, status, shard, n)
    select o.created_by, o.status, mine, -count(*)::integer
    from old_rows o
    where exists (select 1 from auth.users u where u.id = o.created_by)
    group by 1, 2
    on conflict (created_by, status, shard) do update set n = c.n + excluded.n;
  else
    insert into public.message_counts as c (created_by, status, shard, n)
    select created_by, status, mine, sum(d)::integer
    from (
      select n.created_by, n.status, 1 as d
      from new_rows n join old_rows o on o.id = n.id where o.status is distinct from n.status
      union all
      select o.created_by, o.status, -1
      from new_rows n join old_rows o on o.id = n.id where o.status is distinct from n.status
    ) changes
    group by 1, 2
    on conflict (created_by, status, shard) do update set n = c.n + excluded.n;
  end if;
  return null;
end;
$$;

-- Fold committed transaction rows into shard 0. Rows another compaction holds are skipped (it

create trigger messages_count_insert after insert on public.messages
  referencing new table as new_rows
  for each statement execute function private.count_messages();
create trigger messages_count_update after update on public.messages
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.count_messages();
create trigger messages_count_delete after delete on public.messages
  referencing old table as old_rows
  for each statement execute function private.count_messages();

-- folds them); rows of transactions still running are not visible yet. Returns rows folded.
create or replace function private.compact_message_counts(p_limit integer default 10000)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  folded integer;
begin
  with picked as (
    select c.created_by, c.status, c.shard from public.message_counts c
    where c.shard <> 0
    limit p_limit
    for update skip locked
  ), gone as (
    delete from public.message_counts c
    using picked p
    where c.created_by = p.created_by and c.status = p.status and c.shard = p.shard
    returning c.created_by, c.status, c.n
  ), summed as (
    select created_by, status, sum(n)::integer as n, count(*)::integer as rows from gone group by 1, 2
  ), kept as (
    insert into public.message_counts as c (created_by, status, shard, n)
    select created_by, status, 0, n from summed order by 1, 2
    on conflict (created_by, status, shard) do update set n = c.n + excluded.n
  )
  select coalesce(sum(rows), 0)::integer into folded from summed;
  return folded;
end;
$$;

revoke all on function private.compact_message_counts(integer) from public;
grant execute on function private.compact_message_counts(integer) to service_role;
-- -----------------------------------------------------------------------------
-- message_audiences: recomputed for the affected messages after each statement that changes a
-- message's groups, a group's members, or whether a contact is reachable.
-- -----------------------------------------------------------------------------
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
    where (n.can_receive, n.phone) is distinct from (o.can_receive, o.phone)
  ));
  return null;
end;
$$;

create trigger contacts_audience_update after update on public.contacts
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.audience_after_contacts();

revoke all on function private.refresh_audiences(uuid[]) from public, anon, authenticated;
