-- =============================================================================
-- Derived counts, kept exact by statement-level triggers (one update per statement,
-- whatever the batch size) and written by nobody else:
--   groups.contact_count        members of each group
--   messages.recipient_count,
--   delivered_count, failed_count   from the message's deliveries
--   public.message_counts       messages per owner and status (the list's `total`)
--   public.message_audiences    live recipient count of messages not fanned out yet
-- Each rule is one statement over private.changes: the rows a statement added count +1, the rows
-- it removed -1, an update is both. Its insert, update and delete triggers share that function
-- and differ only in the transition tables they declare. The functions keep one generic plan
-- (plan_cache_mode): planning again for each statement would cost more than a one-row change.
-- =============================================================================

-- The rows a statement added (new_rows, +1) and removed (old_rows, -1), as one signed set.
-- No `set search_path`, so the planner inlines it into each rule (a `set` makes it a call of its
-- own, doubling a one-row statement's trigger time); it names nothing outside pg_catalog.
create or replace function private.changes(
  p_added anyarray, p_removed anyarray, out r anyelement, out sign integer
)
returns setof record
language sql
immutable
as $$
  -- unnest in the select list keeps each row whole (not expanded and formed again).
  select unnest(p_added), 1
  union all
  select unnest(p_removed), -1;
$$;

-- -----------------------------------------------------------------------------
-- groups.contact_count: a member counts 1 towards its group
-- -----------------------------------------------------------------------------
create or replace function private.count_group_contacts()
returns trigger
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  added public.group_contacts[];
  removed public.group_contacts[];
begin
  if tg_op <> 'DELETE' then added := array(select n::public.group_contacts from new_rows n); end if;
  if tg_op <> 'INSERT' then removed := array(select o::public.group_contacts from old_rows o); end if;
  -- One update per group whose count moves (a member moved out and back is not written).
  update public.groups g set contact_count = greatest(g.contact_count + d.n, 0)
  from (
    select (c.r).group_id, sum(c.sign)::integer as n
    from private.changes(added, removed) c
    group by 1
    having sum(c.sign) <> 0
  ) d
  where g.id = d.group_id;
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
-- messages.recipient_count / delivered_count / failed_count: a delivery counts 1 towards its
-- message's recipients, and towards delivered_count once WhatsApp accepted it (sent, delivered
-- or read) or failed_count once it failed.
-- -----------------------------------------------------------------------------
create or replace function private.count_deliveries()
returns trigger
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  added public.deliveries[];
  removed public.deliveries[];
begin
  if tg_op <> 'DELETE' then added := array(select n::public.deliveries from new_rows n); end if;
  if tg_op <> 'INSERT' then removed := array(select o::public.deliveries from old_rows o); end if;
  -- One update per message whose counters move.
  update public.messages m
  set recipient_count = m.recipient_count + d.total, delivered_count = m.delivered_count + d.ok,
      failed_count = m.failed_count + d.failed
  from (
    select (c.r).message_id, sum(c.sign)::integer as total,
      coalesce(sum(c.sign) filter (where (c.r).state in ('sent', 'delivered', 'read')), 0)::integer as ok,
      coalesce(sum(c.sign) filter (where (c.r).state = 'failed'), 0)::integer as failed
    from private.changes(added, removed) c
    group by 1
  ) d
  where m.id = d.message_id and (d.total, d.ok, d.failed) <> (0, 0, 0);
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
-- message_counts: a message counts 1 towards its owner and status. Each transaction writes only
-- its own rows (shard = its transaction id), so two workers changing one owner's messages never
-- wait on a shared counter row.
-- -----------------------------------------------------------------------------
create or replace function private.count_messages()
returns trigger
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  -- This transaction's own rows: no other transaction writes them, so no one waits on them.
  mine bigint := (pg_current_xact_id()::text)::bigint;
  added public.messages[];
  removed public.messages[];
begin
  if tg_op <> 'DELETE' then added := array(select n::public.messages from new_rows n); end if;
  if tg_op <> 'INSERT' then removed := array(select o::public.messages from old_rows o); end if;
  -- When a user is deleted, the cascade removes their counters; adding rows for them again would
  -- violate the foreign key, so owners who are gone are skipped.
  insert into public.message_counts as mc (created_by, status, shard, n)
  select d.created_by, d.status, mine, d.n
  from (
    select (c.r).created_by, (c.r).status, sum(c.sign)::integer as n
    from private.changes(added, removed) c
    group by 1, 2
    having sum(c.sign) <> 0
  ) d
  where exists (select 1 from auth.users u where u.id = d.created_by)
  on conflict (created_by, status, shard) do update set n = mc.n + excluded.n;
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

-- Fold committed transaction rows into shard 0. Rows another compaction holds are skipped (it
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

-- The messages a changed message_groups row names, before or after.
create or replace function private.audience_after_message_groups()
returns trigger
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  added public.message_groups[];
  removed public.message_groups[];
begin
  if tg_op <> 'DELETE' then added := array(select n::public.message_groups from new_rows n); end if;
  if tg_op <> 'INSERT' then removed := array(select o::public.message_groups from old_rows o); end if;
  perform private.refresh_audiences(array(
    select distinct (c.r).message_id from private.changes(added, removed) c
  ));
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

-- The messages sent to a group a changed group_contacts row names, before or after.
create or replace function private.audience_after_group_contacts()
returns trigger
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  added public.group_contacts[];
  removed public.group_contacts[];
begin
  if tg_op <> 'DELETE' then added := array(select n::public.group_contacts from new_rows n); end if;
  if tg_op <> 'INSERT' then removed := array(select o::public.group_contacts from old_rows o); end if;
  perform private.refresh_audiences(array(
    select distinct mg.message_id from public.message_groups mg
    where mg.group_id in (select (c.r).group_id from private.changes(added, removed) c)
  ));
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
