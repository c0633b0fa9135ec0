-- =============================================================================
-- public.message_counts without a hot row.
--
-- 20261128001000 kept one row per (owner, status), so every status change of an owner's message
-- locked that row until its transaction committed: two workers claiming the same owner's
-- messages (scheduled -> sending) waited for each other. Now each transaction adds its changes
-- as its own rows (shard = its transaction id), which nobody else writes, and
-- private.compact_message_counts() (the worker's housekeeping) folds committed rows into
-- shard 0. Readers already sum `n` per owner and status, so they read the same totals.
-- =============================================================================

alter table public.message_counts add column shard bigint not null default 0;
alter table public.message_counts drop constraint message_counts_pkey;
alter table public.message_counts add primary key (created_by, status, shard);

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

-- What was there becomes shard 0 (already so: the new column defaulted to 0).
