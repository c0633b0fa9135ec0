-- =============================================================================
-- Offline sync results (public.sync_operations) and the analytics queries.
--
-- Analytics functions are security invoker: they read as the caller, so RLS
-- decides what they count. p_all widens an admin's view to every user (for
-- anyone else RLS keeps it to their own rows). Days are calendar days in the
-- caller's profile timezone.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- sync_operations: the stored answer of each offline operation, so a replayed
-- client_op_id returns it instead of acting twice
-- -----------------------------------------------------------------------------
create table public.sync_operations (
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  client_op_id text not null check (char_length(client_op_id) between 1 and 100),
  status integer not null check (status between 100 and 599),
  body jsonb,
  created_at timestamptz not null default now(),
  -- Also the index for the user_id policy (its leading column).
  constraint sync_operations_pkey primary key (user_id, client_op_id)
);

-- Pruning old results scans by age.
create index sync_operations_created_at_idx on public.sync_operations (created_at);

alter table public.sync_operations enable row level security;
revoke all on public.sync_operations from anon;
-- A stored result is final: users add results, nobody rewrites them.
revoke update on public.sync_operations from authenticated;
grant select, insert, delete on public.sync_operations to authenticated;
grant select, insert, update, delete on public.sync_operations to service_role;

create policy "sync_operations: read own or admin" on public.sync_operations
  for select to authenticated
  using (user_id = (select auth.uid()) or (select private.is_admin()));

create policy "sync_operations: store own" on public.sync_operations
  for insert to authenticated
  with check (user_id = (select auth.uid()));

create policy "sync_operations: forget own" on public.sync_operations
  for delete to authenticated
  using (user_id = (select auth.uid()));

-- -----------------------------------------------------------------------------
-- Helpers
-- -----------------------------------------------------------------------------

-- The caller's timezone (profile), UTC when unknown.
create or replace function private.caller_timezone()
returns text
language sql
stable
set search_path = ''
as $$
  select coalesce((select timezone from public.profiles where id = (select auth.uid())), 'UTC');
$$;

revoke all on function private.caller_timezone() from public;
grant execute on function private.caller_timezone() to authenticated, service_role;

-- Day-range filters of analytics and exports (all users when an admin reads everything).
create index messages_created_at_idx on public.messages (created_at);
create index deliveries_failed_at_idx on public.deliveries (failed_at) where failed_at is not null;

-- -----------------------------------------------------------------------------
-- Per-day series: messages created, deliveries WhatsApp accepted, deliveries failed
-- -----------------------------------------------------------------------------
create or replace function public.analytics_daily(p_from date, p_to date, p_all boolean default false)
returns table (day date, messages_created integer, sent integer, failed integer)
language sql
stable
set search_path = ''
as $$
  with me as (
    select (select auth.uid()) as uid, private.caller_timezone() as tz
  ),
  bounds as (
    select me.uid, me.tz,
      (p_from::timestamp at time zone me.tz) as lo,
      ((p_to + 1)::timestamp at time zone me.tz) as hi
    from me
  ),
  days as (
    select d::date as day from generate_series(p_from::timestamp, p_to::timestamp, interval '1 day') d
  ),
  created as (
    select (m.created_at at time zone b.tz)::date as day, count(*)::integer as n
    from public.messages m, bounds b
    where (p_all or m.created_by = b.uid) and m.created_at >= b.lo and m.created_at < b.hi
    group by 1
  ),
  accepted as (
    select (d.sent_at at time zone b.tz)::date as day, count(*)::integer as n
    from public.deliveries d, bounds b
    where (p_all or d.created_by = b.uid) and d.state in ('sent', 'delivered', 'read')
      and d.sent_at >= b.lo and d.sent_at < b.hi
    group by 1
  ),
  refused as (
    select (d.failed_at at time zone b.tz)::date as day, count(*)::integer as n
    from public.deliveries d, bounds b
    where (p_all or d.created_by = b.uid) and d.state = 'failed'
      and d.failed_at >= b.lo and d.failed_at < b.hi
    group by 1
  )
  select days.day, coalesce(created.n, 0), coalesce(accepted.n, 0), coalesce(refused.n, 0)
  from days
  left join created using (day)
  left join accepted using (day)
  left join refused using (day)
  order by days.day;
$$;

-- -----------------------------------------------------------------------------
-- Dashboard: public.dashboard_counts plus the last p_days days
-- -----------------------------------------------------------------------------
create or replace function public.analytics_dashboard(p_all boolean default false, p_days integer default 30)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with today as (
    select (now() at time zone private.caller_timezone())::date as day
  ),
  series as (
    select s.* from today, public.analytics_daily(today.day - (p_days - 1), today.day, p_all) s
  )
  select jsonb_build_object(
    'scope', case when p_all then 'all' else 'mine' end,
    'timezone', private.caller_timezone(),
    'totals', public.dashboard_counts(p_all),
    'series', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'date', to_char(day, 'YYYY-MM-DD'), 'messages_created', messages_created, 'sent', sent, 'failed', failed
      ) order by day), '[]'::jsonb)
      from series
    )
  );
$$;

-- -----------------------------------------------------------------------------
-- Messages in a day range: series, counts per status, top messages by recipients
-- -----------------------------------------------------------------------------
create or replace function public.analytics_messages(
  p_from date, p_to date, p_all boolean default false, p_top integer default 10
)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with me as (
    select (select auth.uid()) as uid, private.caller_timezone() as tz
  ),
  picked as (
    select m.id, m.created_by, m.content, m.status, m.recipient_count, m.delivered_count, m.failed_count,
           m.scheduled_for, m.sent_at, m.created_at
    from public.messages m, me
    where (p_all or m.created_by = me.uid)
      and m.created_at >= (p_from::timestamp at time zone me.tz)
      and m.created_at < ((p_to + 1)::timestamp at time zone me.tz)
  ),
  series as (
    select * from public.analytics_daily(p_from, p_to, p_all)
  ),
  per_status as (
    select status, count(*)::integer as n from picked group by status
  ),
  top as (
    select * from picked order by recipient_count desc, created_at desc, id limit p_top
  )
  select jsonb_build_object(
    'scope', case when p_all then 'all' else 'mine' end,
    'timezone', (select tz from me),
    'from', to_char(p_from, 'YYYY-MM-DD'),
    'to', to_char(p_to, 'YYYY-MM-DD'),
    'totals', (
      select jsonb_build_object(
        'messages_created', coalesce(sum(messages_created), 0),
        'sent', coalesce(sum(sent), 0),
        'failed', coalesce(sum(failed), 0),
        'success_rate', case when coalesce(sum(sent + failed), 0) = 0 then null
                             else round(sum(sent)::numeric / sum(sent + failed), 4) end
      )
      from series
    ),
    'series', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'date', to_char(day, 'YYYY-MM-DD'), 'messages_created', messages_created, 'sent', sent, 'failed', failed
      ) order by day), '[]'::jsonb)
      from series
    ),
    'by_status', (
      select jsonb_object_agg(s.status, coalesce(per_status.n, 0))
      from unnest(array['draft', 'scheduled', 'sending', 'sent', 'paused', 'cancelled', 'failed']) as s(status)
      left join per_status using (status)
    ),
    'top_messages', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'id', id, 'created_by', created_by, 'content', left(content, 200), 'status', status,
        'recipient_count', recipient_count, 'delivered_count', delivered_count, 'failed_count', failed_count,
        'scheduled_for', scheduled_for, 'sent_at', sent_at, 'created_at', created_at
      ) order by recipient_count desc, created_at desc, id), '[]'::jsonb)
      from top
    )
  );
$$;

-- -----------------------------------------------------------------------------
-- Groups: reach of each group (one page, by name)
--   contacts          members; active_contacts: members still reachable
--   messages          messages addressed to the group; messages_sent: of them, sending or sent
--   deliveries        deliveries of those messages to the group's members, by outcome
-- -----------------------------------------------------------------------------
create or replace function public.analytics_groups(
  p_all boolean default false, p_limit integer default 20, p_offset integer default 0
)
returns jsonb
language sql
stable
set search_path = ''
as $$
  with me as (
    select (select auth.uid()) as uid
  ),
  visible as (
    select g.id, g.created_by, g.name, g.contact_count, g.created_at
    from public.groups g, me
    where p_all or g.created_by = me.uid
  ),
  page as (
    select * from visible order by lower(name), id limit p_limit offset p_offset
  ),
  reach as (
    select
      page.*,
      (select count(*)::integer
         from public.group_contacts gc join public.contacts c on c.id = gc.contact_id
        where gc.group_id = page.id and c.is_active and c.opted_out_at is null) as active_contacts,
      msgs.total as messages, msgs.sent as messages_sent,
      dl.total as deliveries, dl.ok as deliveries_ok, dl.failed as deliveries_failed
    from page
    cross join lateral (
      select count(*)::integer as total,
             count(*) filter (where m.status in ('sending', 'sent'))::integer as sent
      from public.message_groups mg join public.messages m on m.id = mg.message_id
      where mg.group_id = page.id
    ) msgs
    cross join lateral (
      select count(*)::integer as total,
             count(*) filter (where d.state in ('sent', 'delivered', 'read'))::integer as ok,
             count(*) filter (where d.state = 'failed')::integer as failed
      from public.message_groups mg
      join public.deliveries d on d.message_id = mg.message_id
      join public.group_contacts gc on gc.group_id = page.id and gc.contact_id = d.contact_id
      where mg.group_id = page.id
    ) dl
  )
  select jsonb_build_object(
    'total', (select count(*) from visible),
    'items', (
      select coalesce(jsonb_agg(jsonb_build_object(
        'id', id, 'name', name, 'created_by', created_by, 'created_at', created_at,
        'contacts', contact_count, 'active_contacts', active_contacts,
        'messages', messages, 'messages_sent', messages_sent,
        'deliveries', deliveries, 'deliveries_ok', deliveries_ok, 'deliveries_failed', deliveries_failed,
        'failure_rate', case when deliveries_ok + deliveries_failed = 0 then null
                             else round(deliveries_failed::numeric / (deliveries_ok + deliveries_failed), 4) end
      ) order by lower(name), id), '[]'::jsonb)
      from reach
    )
  );
$$;

revoke all on function
  public.analytics_daily(date, date, boolean),
  public.analytics_dashboard(boolean, integer),
  public.analytics_messages(date, date, boolean, integer),
  public.analytics_groups(boolean, integer, integer)
  from public, anon;
grant execute on function
  public.analytics_daily(date, date, boolean),
  public.analytics_dashboard(boolean, integer),
  public.analytics_messages(date, date, boolean, integer),
  public.analytics_groups(boolean, integer, integer)
  to authenticated, service_role;
