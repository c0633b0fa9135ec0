-- =============================================================================
-- Quiet hours without a race. private.claim_deliveries (20261128001300) deferred the pending
-- deliveries of owners inside quiet hours, then picked due deliveries in a later statement: a
-- message another connection fanned out (or resumed) in between was picked before it could be
-- deferred, and sent at night. The pick now checks the owner's quiet hours itself; the deferral
-- stays (it records when the night ends, which the worker sleeps until).
-- The function is otherwise unchanged.
-- =============================================================================

create or replace function private.claim_deliveries(
  p_worker text,
  p_limit integer,
  p_lease_seconds double precision,
  p_sender text,
  p_spacing_min_s double precision,
  p_spacing_max_s double precision,
  p_hourly_cap integer,
  p_daily_cap integer,
  p_warmup_days integer,
  p_quiet_start time,
  p_quiet_end time
)
returns table (
  id uuid, message_id uuid, phone text, contact_name text, idempotency_key text, content text, attempts integer
)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  paced boolean := p_spacing_max_s > 0 or p_hourly_cap > 0 or p_daily_cap > 0;
  allowance integer := p_limit;
  s private.senders;
  used_hour integer;
  used_day integer;
  day_cap integer := p_daily_cap;
  free_at timestamptz;
  quiet_ids uuid[];
  quiet_ends timestamptz[];
  active uuid[];
  per_message integer;
  n integer;
begin
  if p_quiet_start is not null then
    -- Per message first (materialised), so the window is computed once per message, not per row.
    select coalesce(array_agg(q.id), '{}'), coalesce(array_agg(q.until), '{}') into quiet_ids, quiet_ends
    from (
      select m.id, private.quiet_until(p.timezone, p_quiet_start, p_quiet_end) as until
      from public.messages m join public.profiles p on p.id = m.created_by
      where m.status = 'sending'
    ) q
    where q.until is not null;
    if cardinality(quiet_ids) > 0 then
      update public.deliveries d set next_attempt_at = q.until
      from unnest(quiet_ids, quiet_ends) as q (id, until)
      where d.message_id = q.id and d.state = 'pending' and d.next_attempt_at < q.until;
    end if;
  end if;

  if paced then
    insert into private.senders (sender) values (p_sender) on conflict (sender) do nothing;
    select * into s from private.senders where sender = p_sender for update;
    if s.next_send_at > now() then
      return;
    end if;
    if p_spacing_max_s > 0 then
      allowance := 1;
    end if;
    if p_hourly_cap > 0 or p_daily_cap > 0 then
      select coalesce(sum(u.sends) filter (where u.minute > now() - interval '1 hour'), 0)::integer,
             coalesce(sum(u.sends), 0)::integer
        into used_hour, used_day
      from private.sender_usage u
      where u.sender = p_sender and u.minute > now() - interval '1 day';
      if p_warmup_days > 0 and day_cap > 0 then
        -- Day d (from 0) of a new number may use (d + 1) / warm-up days of the daily cap.
        day_cap := least(day_cap, ceil(
          day_cap::numeric
          * (floor(extract(epoch from now() - coalesce(s.first_send_at, now())) / 86400) + 1)
          / p_warmup_days)::integer);
      end if;
      if p_hourly_cap > 0 and used_hour >= p_hourly_cap then
        -- Full: the oldest minute in the window leaves it an hour after it began.
        select min(u.minute) + interval '1 hour' into free_at
        from private.sender_usage u where u.sender = p_sender and u.minute > now() - interval '1 hour';
      end if;
      if day_cap > 0 and used_day >= day_cap then
        select greatest(free_at, min(u.minute) + interval '1 day') into free_at
        from private.sender_usage u where u.sender = p_sender and u.minute > now() - interval '1 day';
      end if;
      if free_at is not null then
        update private.senders set next_send_at = free_at where sender = p_sender;
        return;
      end if;
      if p_hourly_cap > 0 then
        allowance := least(allowance, p_hourly_cap - used_hour);
      end if;
      if day_cap > 0 then
        allowance := least(allowance, day_cap - used_day);
      end if;
    end if;
  end if;

  select coalesce(array_agg(a.id order by a.scheduled_for nulls first, a.id), '{}') into active
  from (
    select m.id, m.scheduled_for
    from public.messages m
    where m.status = 'sending'
      and exists (
        select 1 from public.deliveries d
        where d.message_id = m.id and d.state = 'pending' and d.next_attempt_at <= now()
      )
      -- Checked here too, in this statement's snapshot: a message fanned out or resumed by
      -- another connection after the deferral above must not slip through in its owner's night.
      and (p_quiet_start is null or private.quiet_until(
        (select p.timezone from public.profiles p where p.id = m.created_by), p_quiet_start, p_quiet_end) is null)
    order by m.scheduled_for nulls first, m.id
    limit allowance
    for key share of m skip locked
  ) a;
  per_message := ceil(allowance::numeric / greatest(cardinality(active), 1));

  return query
  with rescued as (
    select d.id from public.deliveries d
    where d.state = 'sending' and d.lease_expires_at < now()
    order by d.lease_expires_at
    limit allowance
    for update skip locked
  ), fresh as (
    select f.id
    from unnest(active) with ordinality as a (message_id, rank)
    cross join lateral (
      select d.id from public.deliveries d
      where d.message_id = a.message_id and d.state = 'pending' and d.next_attempt_at <= now()
      order by d.next_attempt_at
      limit per_message
      for update skip locked
    ) f
    limit greatest(allowance - (select count(*) from rescued), 0)
  ), picked as (
    select id from rescued union all select id from fresh
  ), claimed as (
    update public.deliveries d
    set state = 'sending', attempts = d.attempts + 1, claimed_by = p_worker,
        lease_expires_at = now() + make_interval(secs => p_lease_seconds)
    from picked where d.id = picked.id
    returning d.id, d.message_id, d.phone, d.contact_name, d.idempotency_key, d.attempts
  )
  select c.id, c.message_id, c.phone, c.contact_name, c.idempotency_key, m.content, c.attempts
  from claimed c join public.messages m on m.id = c.message_id;

  get diagnostics n = row_count;
  if paced and n > 0 then
    insert into private.sender_usage as u (sender, minute, sends)
    values (p_sender, date_trunc('minute', now()), n)
    on conflict (sender, minute) do update set sends = u.sends + excluded.sends;
    update private.senders
    set first_send_at = coalesce(first_send_at, now()),
        next_send_at = case when p_spacing_max_s > 0
          then now() + make_interval(secs => p_spacing_min_s + random() * greatest(p_spacing_max_s - p_spacing_min_s, 0))
          else next_send_at end
    where sender = p_sender;
  end if;
end;
$$;
