-- =============================================================================
-- Counts and analytics, read as the caller.
--
-- Analytics functions are security invoker: they read as the caller, so RLS
-- decides what they count. p_all widens an admin's view to every user (for
-- anyone else RLS keeps it to their own rows). Days are calendar days in the
-- caller's profile timezone. Day ranges are checked here, where every caller
-- (the API and supabase-js) passes: 22023, which the API answers as 422.
-- =============================================================================

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

create or replace function private.check_day_range(p_from date, p_to date, p_max_days integer default 366)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_from is null or p_to is null or not isfinite(p_from) or not isfinite(p_to) then
    raise exception 'a day range needs a finite first and last day' using errcode = '22023';
  end if;
  if p_from > p_to then
    raise exception 'the first day (%) is after the last (%)', p_from, p_to using errcode = '22023';
  end if;
  if p_to - p_from + 1 > p_max_days then
    raise exception 'a day range covers at most % days', p_max_days using errcode = '22023';
  end if;
end;
$$;

revoke all on function private.check_day_range(date, date, integer) from public;
grant execute on function private.check_day_range(date, date, integer) to authenticated, service_role;

-- The same series as before, after the check.
create or replace function public.analytics_daily(p_from date, p_to date, p_all boolean default false)
returns table (day date, messages_created integer, sent integer, failed integer)
language plpgsql
stable
set search_path = ''
as $$
#variable_conflict use_column
begin
  perform private.check_day_range(p_from, p_to);
  return query
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
end;
$$;

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
                        where (p_all or created_by = me.uid) and can_receive),
    'groups', (select count(*) from public.groups, me where p_all or created_by = me.uid),
    'deliveries', (select to_jsonb(dlv) from dlv),
    'success_rate', (select case when ok + failed = 0 then null
                            else round(ok::numeric / (ok + failed), 4) end from dlv),
    -- Account safety: a rising opt-out rate is the early sign of a ban. Opt-outs over the last 30
    -- days per recipient WhatsApp accepted a message for in those days.
    'opt_outs_30d', (select count(*) from public.replies r, me
                     where (p_all or r.created_by = me.uid) and r.kind = 'opt_out'
                       and r.received_at > now() - interval '30 days'),
    'opt_out_rate_30d', (
      select case when reached = 0 then null else round(outs::numeric / reached, 4) end
      from (
        select
          (select count(*) from public.replies r, me
           where (p_all or r.created_by = me.uid) and r.kind = 'opt_out'
             and r.received_at > now() - interval '30 days') as outs,
          (select count(*) from public.deliveries d, me
           where (p_all or d.created_by = me.uid) and d.state in ('sent', 'delivered', 'read')
             and d.sent_at > now() - interval '30 days') as reached
      ) x
    )
  );
$$;

grant execute on function public.dashboard_counts(boolean) to authenticated, service_role;
revoke execute on function public.dashboard_counts(boolean) from anon, public;

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
      count(*) filter (where state = 'skipped' and last_error_code = 'held_by_rules')::integer as held,
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
    -- Held at the exit: the text rendered for these recipients broke a rule, so it never left.
    'held', c.held,
    -- Account safety next to the outcomes: what recipients answered, and how many opted out.
    'replies', (select count(*) from public.replies r where r.message_id = (select id from msg)),
    'opt_outs', (select count(*) from public.replies r where r.message_id = (select id from msg) and r.kind = 'opt_out'),
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
        where gc.group_id = page.id and c.can_receive) as active_contacts,
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

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on function public.analytics_daily(date, date, boolean) is 'Per calendar day in the caller''s timezone, p_from to p_to: messages created, deliveries sent and failed; p_all widens an admin''s view to every user.';
comment on function public.dashboard_counts(boolean) is 'The dashboard''s totals as the caller sees them: messages per status, contacts, groups, deliveries, success rate and 30-day opt-out rate.';
comment on function public.message_stats(uuid) is 'Delivery statistics of one message: counts per state, success rate, held, replies, opt-outs and a per-minute timeline; null when the caller cannot see it.';
comment on function public.analytics_dashboard(boolean, integer) is 'public.dashboard_counts plus the daily series of the last p_days days, in the caller''s timezone.';
comment on function public.analytics_messages(date, date, boolean, integer) is 'Messages created in a day range: totals, daily series, counts per status and the top p_top by recipients.';
comment on function public.analytics_groups(boolean, integer, integer) is 'One page of groups by name with their reach: members, members still reachable, messages, and deliveries by outcome.';
