-- =============================================================================
-- Analytics day ranges are checked where every caller passes: in SQL. supabase-js can call
-- public.analytics_daily and public.analytics_messages directly, and a range to 'infinity' made
-- the day series endless (the API already refused it; PostgREST callers did not).
-- Refusals raise 22023 (invalid_parameter_value), which the API answers as 422.
-- =============================================================================

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
