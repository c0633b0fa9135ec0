-- =============================================================================
-- The dispatcher's database operations, one section per verb (like graphile-worker):
--   claim_messages     scheduled messages about to fall due become `sending`, fanned out
--   claim_deliveries   a batch of due deliveries becomes `sending` under a lease, within the
--                      sender's pacing (spacing, hourly/daily caps, warm-up, the ramp after a
--                      health pause) and the owners' quiet hours; expired leases (a crashed
--                      worker) are taken over; a paused or blocked number's work waits
--   complete_deliveries  a batch the bridge accepted becomes `sent`, in one statement
--   fail_deliveries    a batch the bridge refused: retry with backoff, or `failed` (a refusal
--                      for restricted_new_chats is a health fact of the number)
--   finish_messages    `sending` messages with no open delivery become `sent` or `failed`
--   apply_ack          WhatsApp's acks move deliveries forward (never backwards); a `failed`
--                      ack is a health fact of the number
--   next_wake_at       when the dispatcher has something to do next
-- Counters stay derived by the delivery triggers; nothing here writes them.
-- notify_dispatcher wakes a sleeping worker when a message is scheduled or resumed.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Pacing state per WhatsApp number (private: only the worker reads or writes it)
-- -----------------------------------------------------------------------------
create table private.senders (
  sender text primary key,                     -- the number the bridge reports, or 'default'
  first_send_at timestamptz,                   -- warm-up counts days from here
  next_send_at timestamptz not null default now()  -- no claim before this (spacing or a full cap)
);

-- Sends per minute: hourly and daily caps sum a sliding window of these.
create table private.sender_usage (
  sender text not null references private.senders (sender) on delete cascade,
  minute timestamptz not null,
  sends integer not null check (sends >= 0),
  primary key (sender, minute)
);

grant select, insert, update, delete on private.senders, private.sender_usage to service_role;

-- -----------------------------------------------------------------------------
-- Quiet hours: the end of the window when `tz`'s local time is inside [p_start, p_end), else null.
-- A window whose start is after its end spans midnight ("21:00-08:00").
-- -----------------------------------------------------------------------------
create or replace function private.quiet_until(tz text, p_start time, p_end time)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  local_now timestamp := now() at time zone tz;
  t time := local_now::time;
  window_end timestamp;
begin
  if p_start is null or p_end is null or p_start = p_end then
    return null;
  end if;
  if not (case when p_start < p_end then t >= p_start and t < p_end else t >= p_start or t < p_end end) then
    return null;
  end if;
  window_end := local_now::date + p_end;
  if window_end <= local_now then
    window_end := window_end + interval '1 day';
  end if;
  return window_end at time zone tz;
end;
$$;

-- -----------------------------------------------------------------------------
-- claim_messages: scheduled messages due within p_ahead_s become `sending` and get one delivery
-- per distinct active phone across their groups, due at scheduled_for. Fanning out a few seconds
-- ahead takes the fan-out (the costly insert) off the critical path: at scheduled_for the
-- first sends are one claim away, and nothing is sent before it. One update for the batch, one
-- insert for all their deliveries.
-- -----------------------------------------------------------------------------

create or replace function private.claim_messages(p_limit integer, p_ahead_s double precision)
returns setof uuid
language plpgsql
set search_path = ''
as $$
declare
  started uuid[];
begin
  with due as (
    select id from public.messages
    where status = 'scheduled' and scheduled_for <= now() + make_interval(secs => p_ahead_s)
    order by scheduled_for
    limit p_limit
    for update skip locked
  ), moved as (
    update public.messages m
    set status = 'sending'
    from due where m.id = due.id
    returning m.id
  )
  select coalesce(array_agg(id), '{}') into started from moved;

  if cardinality(started) > 0 then
    insert into public.deliveries
      (message_id, created_by, contact_id, phone, contact_name, idempotency_key, next_attempt_at)
    select distinct on (m.id, c.phone)
      m.id, m.created_by, c.id, c.phone, c.name, m.id::text || ':' || c.phone, greatest(m.scheduled_for, now())
    from public.messages m
    join public.message_groups mg on mg.message_id = m.id
    join public.group_contacts gc on gc.group_id = mg.group_id
    join public.contacts c on c.id = gc.contact_id
    where m.id = any(started) and c.can_receive
    order by m.id, c.phone, c.created_at
    on conflict (message_id, phone) do nothing;
  end if;
  return query select unnest(started);
end;
$$;

-- -----------------------------------------------------------------------------
-- claim_deliveries: one batch of work for one worker, in one round trip. Its input is one
-- named request (private.claim_request, read from JSON by private.read_claim_request: a key
-- left out is "off"), and it runs in steps, each a function below:
--   0. a paused or blocked number claims nothing (its deliveries wait, pending); a number
--      resumed after a health pause is paced by ramp_request (a share of its caps and batch,
--      its spacing longer) until its ramp_until;
--   1. (the worker calls claim_messages just before, so a message falling due mid-campaign
--      starts within one batch);
--   2. defer_quiet_hours: the due work of owners inside quiet hours waits for the end of their
--      window;
--   3. take_allowance: the sender's pacing (row-locked, so every worker shares it): nothing
--      before next_send_at, one delivery per claim with spacing, no more than the caps allow;
--   4. due_messages: the sending messages with due work, locked `for key share skip locked`;
--   5. the claim itself: deliveries whose lease expired (they may have reached the bridge, which
--      replays them by idempotency key), then due pending deliveries round-robin across
--      messages (fair: every due message gets its first sends in the first batch); each is
--      rendered for its recipient and checked at the exit (private.exit_problems: length, HTML,
--      control characters, the spam guard's text rules) in the statement that marks it
--      `sending`. An opted-out recipient is skipped (`opted_out`); a text that breaks a rule is
--      held (`skipped`, last_error_code `held_by_rules`, the rules in last_error) and its owner
--      told once per message; the rest become `sending` under a lease, each written to the
--      send ledger;
--   6. in the same statement: the sender's usage and, with spacing, its next send time.
-- Every delivery the claim decided on is returned (body null: skipped or held), so the worker
-- knows it made progress and which messages may now be finished.
-- The message rows are locked `for key share skip locked`: a pause or cancel (which locks the
-- message `for update`) either commits before the claim (nothing claimed) or after it (this
-- batch was claimed first), so a pause stops the worker within the batch in flight.
-- Pacing is off when spacing and both caps are 0.
-- -----------------------------------------------------------------------------

create type private.claim_request as (
  worker text,                       -- who holds the lease
  batch_limit integer,               -- at most this many deliveries
  lease_seconds double precision,    -- how long before another worker may take a delivery over
  number_id uuid,                    -- the WhatsApp number sending (default: the default number);
                                     -- only messages that leave from it (private.message_number)
  sender text,                       -- whose pacing applies (default: the number's id)
  spacing_min_s double precision,    -- random pause between two sends (0: off)
  spacing_max_s double precision,
  hourly_cap integer,                -- sends per hour of the number (0: off)
  daily_cap integer,                 -- sends per day of the number (0: off)
  warmup_days integer,               -- days over which a new number ramps up to daily_cap (0: off)
  quiet_start time,                  -- quiet hours in each owner's timezone (null: off)
  quiet_end time
);

-- The request from JSON, by name: unknown keys are refused, missing ones are off.
create or replace function private.read_claim_request(p_request jsonb)
returns private.claim_request
language plpgsql
stable
set search_path = ''
as $$
declare
  unknown text;
  r private.claim_request;
begin
  select string_agg(k, ', ') into unknown
  from jsonb_object_keys(p_request) k
  where k not in ('worker', 'batch_limit', 'lease_seconds', 'number_id', 'sender', 'spacing_min_s', 'spacing_max_s',
                  'hourly_cap', 'daily_cap', 'warmup_days', 'quiet_start', 'quiet_end');
  if unknown is not null then
    raise exception 'unknown claim request keys: %', unknown using errcode = '22023';
  end if;
  r := jsonb_populate_record(null::private.claim_request, p_request);
  if r.worker is null or r.batch_limit is null or r.lease_seconds is null then
    raise exception 'a claim request needs worker, batch_limit and lease_seconds' using errcode = '22023';
  end if;
  r.number_id := coalesce(r.number_id, (select n.id from public.whatsapp_numbers n where n.is_default));
  r.sender := coalesce(r.sender, r.number_id::text, 'default');
  r.spacing_min_s := coalesce(r.spacing_min_s, 0);
  r.spacing_max_s := coalesce(r.spacing_max_s, 0);
  r.hourly_cap := coalesce(r.hourly_cap, 0);
  r.daily_cap := coalesce(r.daily_cap, 0);
  r.warmup_days := coalesce(r.warmup_days, 0);
  return r;
end;
$$;

-- Step 0: after a resume (public.resume_whatsapp_number), until the number's ramp_until, its
-- batch and caps are private.settings.health_ramp_share of the request's (at least 1) and its
-- spacing 1 / share times as long: the number comes back at a lower pace.
create or replace function private.ramp_request(r private.claim_request)
returns private.claim_request
language plpgsql
stable
set search_path = ''
as $$
declare
  share double precision;
begin
  select s.health_ramp_share into share
  from private.current_settings() s, public.whatsapp_numbers n
  where n.id = r.number_id and n.ramp_until > now();
  if share is null or share >= 1 then
    return r;
  end if;
  r.batch_limit := greatest(1, floor(r.batch_limit * share))::integer;
  r.hourly_cap := case when r.hourly_cap > 0 then greatest(1, ceil(r.hourly_cap * share)) else 0 end::integer;
  r.daily_cap := case when r.daily_cap > 0 then greatest(1, ceil(r.daily_cap * share)) else 0 end::integer;
  r.spacing_min_s := r.spacing_min_s / share;
  r.spacing_max_s := r.spacing_max_s / share;
  return r;
end;
$$;

-- Step 2: owners inside quiet hours get their due work moved to the end of their window. Per
-- message first (materialised), so the window is computed once per message, not per row.
create or replace function private.defer_quiet_hours(r private.claim_request)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if r.quiet_start is null then
    return;
  end if;
  update public.deliveries d set next_attempt_at = q.until
  from (
    select m.id, private.quiet_until(p.timezone, r.quiet_start, r.quiet_end) as until
    from public.messages m join public.profiles p on p.id = m.created_by
    where m.status = 'sending'
  ) q
  where q.until is not null and d.message_id = q.id and d.state = 'pending' and d.next_attempt_at < q.until;
end;
$$;

-- Step 3: how many deliveries the sender may send now (0: none; with a full cap its next_send_at
-- moves to when the window frees). Holds the sender's row lock until the claim commits.
create or replace function private.take_allowance(r private.claim_request)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  allowance integer := r.batch_limit;
  s private.senders;
  used_hour integer;
  used_day integer;
  day_cap integer := r.daily_cap;
  free_at timestamptz;
begin
  if not (r.spacing_max_s > 0 or r.hourly_cap > 0 or r.daily_cap > 0) then
    return allowance;
  end if;
  insert into private.senders (sender) values (r.sender) on conflict (sender) do nothing;
  select * into s from private.senders where sender = r.sender for update;
  if s.next_send_at > now() then
    return 0;
  end if;
  if r.spacing_max_s > 0 then
    allowance := 1;
  end if;
  if r.hourly_cap = 0 and r.daily_cap = 0 then
    return allowance;
  end if;
  select coalesce(sum(u.sends) filter (where u.minute > now() - interval '1 hour'), 0)::integer,
         coalesce(sum(u.sends), 0)::integer
    into used_hour, used_day
  from private.sender_usage u
  where u.sender = r.sender and u.minute > now() - interval '1 day';
  if r.warmup_days > 0 and day_cap > 0 then
    -- Day d (from 0) of a new number may use (d + 1) / warm-up days of the daily cap.
    day_cap := least(day_cap, ceil(
      day_cap::numeric
      * (floor(extract(epoch from now() - coalesce(s.first_send_at, now())) / 86400) + 1)
      / r.warmup_days)::integer);
  end if;
  if r.hourly_cap > 0 and used_hour >= r.hourly_cap then
    -- Full: the oldest minute in the window leaves it an hour after it began.
    select min(u.minute) + interval '1 hour' into free_at
    from private.sender_usage u where u.sender = r.sender and u.minute > now() - interval '1 hour';
  end if;
  if day_cap > 0 and used_day >= day_cap then
    select greatest(free_at, min(u.minute) + interval '1 day') into free_at
    from private.sender_usage u where u.sender = r.sender and u.minute > now() - interval '1 day';
  end if;
  if free_at is not null then
    update private.senders set next_send_at = free_at where sender = r.sender;
    return 0;
  end if;
  if r.hourly_cap > 0 then
    allowance := least(allowance, r.hourly_cap - used_hour);
  end if;
  if day_cap > 0 then
    allowance := least(allowance, day_cap - used_day);
  end if;
  return allowance;
end;
$$;

-- Step 4: up to p_allowance sending messages of the request's number with due work, oldest
-- first, key-share locked.
create or replace function private.due_messages(r private.claim_request, p_allowance integer)
returns uuid[]
language sql
set search_path = ''
as $$
  select coalesce(array_agg(a.id order by a.scheduled_for nulls first, a.id), '{}')
  from (
    select m.id, m.scheduled_for
    from public.messages m
    where m.status = 'sending'
      and private.message_number(m) = r.number_id
      and exists (
        select 1 from public.deliveries d
        where d.message_id = m.id and d.state = 'pending' and d.next_attempt_at <= now()
      )
      -- Checked here too, in this statement's snapshot: a message fanned out or resumed by
      -- another connection after the deferral must not slip through in its owner's night.
      and (r.quiet_start is null or private.quiet_until(
        (select p.timezone from public.profiles p where p.id = m.created_by), r.quiet_start, r.quiet_end) is null)
    order by m.scheduled_for nulls first, m.id
    limit p_allowance
    for key share of m skip locked
  ) a;
$$;

create or replace function private.claim_deliveries(p_request jsonb)
returns table (
  id uuid, message_id uuid, phone text, idempotency_key text, body text, attempts integer, state text,
  media jsonb
)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  r private.claim_request := private.ramp_request(private.read_claim_request(p_request));
  cfg private.settings := private.current_settings();
  paced boolean := r.spacing_max_s > 0 or r.hourly_cap > 0 or r.daily_cap > 0;
  allowance integer;
  active uuid[];
  per_message integer;
begin
  if exists (select 1 from public.whatsapp_numbers n where n.id = r.number_id and n.status in ('paused', 'blocked')) then
    return;
  end if;
  perform private.defer_quiet_hours(r);
  allowance := private.take_allowance(r);
  if allowance <= 0 then
    return;
  end if;
  active := private.due_messages(r, allowance);
  per_message := ceil(allowance::numeric / greatest(cardinality(active), 1));

  return query
  with rescued as (
    -- Taken over only by a claim for the number the message leaves from.
    select d.id from public.deliveries d
    where d.state = 'sending' and d.lease_expires_at < now()
      and (select private.message_number(m) = r.number_id from public.messages m where m.id = d.message_id)
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
  ), batch as (
    select d.id, d.message_id, d.created_by, d.phone, d.contact_name
    from (select id from rescued union all select id from fresh) p
    join public.deliveries d on d.id = p.id
  ), attachments as (
    -- The attachment as it leaves (20261206000300_media), once per message of the batch: null
    -- when it may not (not ready, gone, outside today's limits).
    select m.id as message_id, private.media_to_send(m.media_id) as media
    from public.messages m
    where m.media_id is not null and m.id in (select b.message_id from batch b)
  ), rendered as (
    -- What this recipient would receive, and whether they may receive anything at all (an
    -- opt-out that arrived since the fan-out, by a reply or by hand).
    select b.id, b.message_id, b.created_by, b.phone,
           private.render(m.content, b.contact_name) as body,
           exists (select 1 from public.contacts c
                   where c.created_by = b.created_by and c.phone = b.phone and c.opted_out_at is not null)
             as opted_out,
           m.media_id, a.media
    from batch b
    join public.messages m on m.id = b.message_id
    left join attachments a on a.message_id = b.message_id
  ), judged as (
    -- The last check before the bridge call, on the text (an attachment's caption, which may be
    -- empty) and the file that will leave the number.
    select x.*,
           case when x.opted_out then null
                when x.media_id is null then private.exit_problems(x.body, cfg)
                else array_remove(private.exit_problems(x.body, cfg), 'content_empty')
                     || case when x.media is null then array['media_unavailable'] else '{}'::text[] end
           end as problems
    from rendered x
  ), verdict as (
    select j.*, case when j.opted_out then 'opted_out'
                     when cardinality(j.problems) > 0 then 'held_by_rules' end as refusal
    from judged j
  ), claimed as (
    update public.deliveries d
    set state = case when v.refusal is null then 'sending' else 'skipped' end,
        attempts = d.attempts + (v.refusal is null)::integer,
        claimed_by = case when v.refusal is null then r.worker else d.claimed_by end,
        lease_expires_at = case when v.refusal is null then now() + make_interval(secs => r.lease_seconds) end,
        last_error_code = coalesce(v.refusal, d.last_error_code),
        last_error = case v.refusal
          when 'opted_out' then 'The recipient asked not to be messaged'
          when 'held_by_rules' then 'Held: the text for this recipient breaks the rules ('
                                    || array_to_string(v.problems, ', ') || ')'
          else d.last_error end
    from verdict v where d.id = v.id
    returning d.id, d.message_id, d.created_by, d.phone, d.idempotency_key, d.attempts, d.state
  ), ledger as (
    insert into private.send_ledger (created_by, sender, phone, message_id)
    select c.created_by, r.sender, c.phone, c.message_id from claimed c where c.state = 'sending'
  ), used as (
    -- Step 6: the sender's usage (the caps' sliding window) and, with spacing, its next send.
    insert into private.sender_usage as u (sender, minute, sends)
    select r.sender, date_trunc('minute', now()), count(*)::integer from claimed c
    where c.state = 'sending' and paced
    having count(*) > 0
    on conflict (sender, minute) do update set sends = u.sends + excluded.sends
    returning u.sender
  ), spaced as (
    update private.senders
    set first_send_at = coalesce(first_send_at, now()),
        next_send_at = case when r.spacing_max_s > 0
          then now() + make_interval(secs => r.spacing_min_s + random() * greatest(r.spacing_max_s - r.spacing_min_s, 0))
          else next_send_at end
    where sender = (select sender from used)
  ), told as (
    -- One notification per message, when its first delivery is held (this statement's snapshot
    -- does not see the holds it makes).
    insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)
    select h.created_by, 'warning', 'Envío retenido',
           format('Parte de un mensaje no se envió: el texto de algunos destinatarios no cumple las reglas (%s). '
                  'Revisa el nombre de esos contactos o el contenido del mensaje.', h.rules),
           'message', h.message_id
    from (
      select v.message_id, v.created_by,
             (select string_agg(distinct p, ', ') from verdict v2, unnest(v2.problems) p
              where v2.message_id = v.message_id and v2.refusal = 'held_by_rules') as rules
      from verdict v
      where v.refusal = 'held_by_rules'
      group by v.message_id, v.created_by
    ) h
    where not exists (
      select 1 from public.deliveries d
      where d.message_id = h.message_id and d.last_error_code = 'held_by_rules'
    )
  )
  select c.id, c.message_id, c.phone, c.idempotency_key,
         case when c.state = 'sending' then v.body end, c.attempts, c.state,
         case when c.state = 'sending' then v.media end
  from claimed c join verdict v on v.id = c.id;

end;
$$;

-- lock_messages_of: lock the messages of these deliveries in id order before touching the
-- deliveries. The counter trigger then updates rows this transaction already holds, so two
-- workers (or lanes) completing batches that span the same messages cannot deadlock: every
-- writer takes message rows in id order, and a message before its deliveries.
-- -----------------------------------------------------------------------------
create or replace function private.lock_messages_of(p_delivery_ids uuid[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform 1 from public.messages m
  where m.id in (select d.message_id from public.deliveries d where d.id = any(p_delivery_ids))
  order by m.id
  for no key update of m;
end;
$$;

-- -----------------------------------------------------------------------------
-- complete_deliveries: the bridge accepted these sends. Whoever holds the lease, a send the
-- bridge confirmed is sent; an ack that arrived first (delivered, read) is not undone.
-- -----------------------------------------------------------------------------
create or replace function private.complete_deliveries(p_ids uuid[], p_whatsapp_message_ids text[])
returns integer
language plpgsql
set search_path = ''
as $$
declare
  n integer;
begin
  perform private.lock_messages_of(p_ids);
  update public.deliveries d
  set state = case when d.state in ('pending', 'sending') then 'sent' else d.state end,
      whatsapp_message_id = coalesce(d.whatsapp_message_id, r.whatsapp_message_id),
      sent_at = coalesce(d.sent_at, now()),
      lease_expires_at = null
  from unnest(p_ids, p_whatsapp_message_ids) as r (id, whatsapp_message_id)
  where d.id = r.id and d.state in ('pending', 'sending', 'sent', 'delivered', 'read');
  get diagnostics n = row_count;
  return n;
end;
$$;

-- -----------------------------------------------------------------------------
-- fail_deliveries: the bridge refused these sends. Permanent errors and the last attempt fail;
-- others wait an exponential backoff with jitter (base * 2^(attempts-1), capped, times 0.5..1).
-- Only the lease holder may fail a delivery: after a takeover the new holder decides.
-- A delivery of a message cancelled meanwhile is cancelled rather than retried.
-- A refusal for restricted_new_chats (WhatsApp's error 463: the number may not start new chats)
-- is a health fact of the message's number, written in the same statement.
-- -----------------------------------------------------------------------------
create or replace function private.fail_deliveries(
  p_worker text,
  p_ids uuid[],
  p_codes text[],
  p_errors text[],
  p_permanent boolean[],
  p_max_attempts integer,
  p_retry_base_s double precision,
  p_retry_max_s double precision
)
returns table (id uuid, state text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
  perform private.lock_messages_of(p_ids);
  return query
  with refused as (
    update public.deliveries d
    set state = case
          when r.permanent or d.attempts >= p_max_attempts then 'failed'
          when m.status = 'cancelled' then 'cancelled'
          else 'pending' end,
        failed_at = case when r.permanent or d.attempts >= p_max_attempts then now() else d.failed_at end,
        next_attempt_at = case
          when r.permanent or d.attempts >= p_max_attempts or m.status = 'cancelled' then d.next_attempt_at
          else now() + make_interval(secs => least(p_retry_max_s, p_retry_base_s * power(2, d.attempts - 1))
                                             * (0.5 + random() / 2)) end,
        last_error_code = r.code,
        last_error = left(r.error, 500),
        lease_expires_at = null
    from unnest(p_ids, p_codes, p_errors, p_permanent) as r (id, code, error, permanent),
         public.messages m
    where d.id = r.id and m.id = d.message_id and d.state = 'sending' and d.claimed_by = p_worker
    returning d.id, d.state, d.message_id, d.phone, r.code, r.error
  ), facts as (
    insert into private.number_health_events (number_id, kind, weight, evidence)
    select private.message_number(m), 'restricted_new_chats', private.health_weight('restricted_new_chats'),
           jsonb_build_object('phone', f.phone, 'message_id', f.message_id, 'delivery_id', f.id,
                              'error', left(f.error, 300))
    from refused f join public.messages m on m.id = f.message_id
    where f.code = 'restricted_new_chats'
  )
  select f.id, f.state from refused f;
end;
$$;

-- -----------------------------------------------------------------------------
-- finish_messages: `sending` messages with no pending or sending delivery end: `sent` when any
-- delivery succeeded, `failed` when none did. Null ids: every such message (the sweep).
-- Run in its own transaction after the completion commits, so of two workers finishing the
-- last deliveries side by side the later one always sees them all.
-- -----------------------------------------------------------------------------
create or replace function private.finish_messages(p_message_ids uuid[])
returns table (
  id uuid, created_by uuid, status text, recurrence text, scheduled_for timestamptz, timezone text
)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
begin
  perform 1 from public.messages m
  where m.status = 'sending' and (p_message_ids is null or m.id = any(p_message_ids))
  order by m.id
  for no key update;
  return query
  with done as (
    update public.messages m
    set status = case when m.delivered_count > 0 then 'sent' else 'failed' end,
        sent_at = case when m.delivered_count > 0 then now() else m.sent_at end
    where m.status = 'sending'
      and (p_message_ids is null or m.id = any(p_message_ids))
      and not exists (
        select 1 from public.deliveries d where d.message_id = m.id and d.state in ('pending', 'sending')
      )
    returning m.id, m.created_by, m.status, m.recurrence, m.scheduled_for
  )
  select done.id, done.created_by, done.status, done.recurrence, done.scheduled_for,
         coalesce(p.timezone, 'UTC')
  from done left join public.profiles p on p.id = done.created_by;
end;
$$;

-- -----------------------------------------------------------------------------
-- apply_ack: WhatsApp's word on one message. The delivery is found by the WhatsApp id or, when
-- the ack beats the worker's completion, by the idempotency key. States only move forward
-- (sent < delivered < read); `failed` only before `delivered`. A `failed` that moves a delivery
-- is a health fact of its message's number.
-- -----------------------------------------------------------------------------
create or replace function private.apply_ack(
  p_whatsapp_message_id text, p_idempotency_key text, p_ack text, p_at timestamptz
)
returns table (message_id uuid, previous_state text, state text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  target_message uuid;
begin
  if p_ack not in ('sent', 'delivered', 'read', 'failed') then
    return;
  end if;
  select d.message_id into target_message from public.deliveries d
  where d.whatsapp_message_id = p_whatsapp_message_id
     or (p_idempotency_key is not null and d.idempotency_key = p_idempotency_key)
  limit 1;
  if target_message is null then
    return;
  end if;
  -- Message before delivery, like every other writer (see lock_messages_of).
  perform 1 from public.messages m where m.id = target_message for no key update;
  return query
  with target as (
    select d.id, d.state,
      (p_ack = 'sent' and d.state in ('pending', 'sending'))
      or (p_ack = 'delivered' and d.state in ('pending', 'sending', 'sent'))
      or (p_ack = 'read' and d.state in ('pending', 'sending', 'sent', 'delivered'))
      or (p_ack = 'failed' and d.state in ('pending', 'sending', 'sent')) as moves
    from public.deliveries d
    where d.whatsapp_message_id = p_whatsapp_message_id
       or (p_idempotency_key is not null and d.idempotency_key = p_idempotency_key)
    for update
  ), acked as (
    -- An ack that does not move the state may still refine a time (WhatsApp's clock is the one
    -- that saw it happen), so sent_at <= delivered_at <= read_at holds whatever arrived first.
    update public.deliveries d
    set state = case when t.moves then p_ack else d.state end,
        whatsapp_message_id = coalesce(d.whatsapp_message_id, p_whatsapp_message_id),
        sent_at = case when p_ack <> 'failed' then least(coalesce(d.sent_at, p_at), p_at) else d.sent_at end,
        delivered_at = case when p_ack in ('delivered', 'read') then least(coalesce(d.delivered_at, p_at), p_at)
                            else d.delivered_at end,
        read_at = case when p_ack = 'read' then least(coalesce(d.read_at, p_at), p_at) else d.read_at end,
        failed_at = case when p_ack = 'failed' and t.moves then p_at else d.failed_at end,
        last_error_code = case when p_ack = 'failed' and t.moves then 'whatsapp_failed' else d.last_error_code end,
        last_error = case when p_ack = 'failed' and t.moves then 'WhatsApp reported the message as not delivered'
                          else d.last_error end,
        lease_expires_at = case when t.moves then null else d.lease_expires_at end
    from target t
    where d.id = t.id
      and (t.moves or (p_ack <> 'failed' and t.state in ('sent', 'delivered', 'read')))
    returning d.id, d.message_id, d.phone, t.state as previous_state, d.state, t.moves
  ), facts as (
    insert into private.number_health_events (number_id, kind, weight, evidence)
    select private.message_number(m), 'failed_ack', private.health_weight('failed_ack'),
           jsonb_build_object('phone', a.phone, 'message_id', a.message_id, 'delivery_id', a.id,
                              'whatsapp_message_id', p_whatsapp_message_id)
    from acked a join public.messages m on m.id = a.message_id
    where p_ack = 'failed' and a.moves
  )
  select a.message_id, a.previous_state, a.state from acked a;
end;
$$;

-- -----------------------------------------------------------------------------
-- next_wake_at: the earliest of a scheduled message to start (p_ahead_s before it is due), a
-- pending delivery of a sending message becoming due (its scheduled_for, a retry, the end of
-- quiet hours; not before the sender's next_send_at when pacing applies, p_sender not null),
-- and a lease expiring.
-- -----------------------------------------------------------------------------
create or replace function private.next_wake_at(p_sender text, p_ahead_s double precision)
returns timestamptz
language sql
stable
set search_path = ''
as $$
  select least(
    (select min(m.scheduled_for) - make_interval(secs => p_ahead_s) from public.messages m
     where m.status = 'scheduled'),
    (select case when w.at is null then null
                 else greatest(w.at, (select s.next_send_at from private.senders s where s.sender = p_sender)) end
     from (select min(d.next_attempt_at) as at
           from public.deliveries d join public.messages m on m.id = d.message_id
           where d.state = 'pending' and m.status = 'sending'
             -- A paused or blocked number's work waits for a person (looked up only when one is).
             and case when exists (select 1 from public.whatsapp_numbers n where n.status in ('paused', 'blocked'))
                      then private.message_number(m) not in (
                        select n.id from public.whatsapp_numbers n where n.status in ('paused', 'blocked'))
                      else true end) w),
    (select min(d.lease_expires_at) from public.deliveries d where d.state = 'sending')
  );
$$;

-- -----------------------------------------------------------------------------
-- Wake the dispatcher when a message becomes due-able (scheduled or resumed).
-- -----------------------------------------------------------------------------
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
-- Only the worker (service_role) runs these.
-- -----------------------------------------------------------------------------
revoke all on function
  private.quiet_until(text, time, time),
  private.lock_messages_of(uuid[]),
  private.claim_messages(integer, double precision),
  private.read_claim_request(jsonb),
  private.ramp_request(private.claim_request),
  private.defer_quiet_hours(private.claim_request),
  private.take_allowance(private.claim_request),
  private.due_messages(private.claim_request, integer),
  private.claim_deliveries(jsonb),
  private.complete_deliveries(uuid[], text[]),
  private.fail_deliveries(text, uuid[], text[], text[], boolean[], integer, double precision, double precision),
  private.finish_messages(uuid[]),
  private.apply_ack(text, text, text, timestamptz),
  private.next_wake_at(text, double precision)
  from public, anon, authenticated;
grant execute on function
  private.quiet_until(text, time, time),
  private.lock_messages_of(uuid[]),
  private.claim_messages(integer, double precision),
  private.read_claim_request(jsonb),
  private.ramp_request(private.claim_request),
  private.defer_quiet_hours(private.claim_request),
  private.take_allowance(private.claim_request),
  private.due_messages(private.claim_request, integer),
  private.claim_deliveries(jsonb),
  private.complete_deliveries(uuid[], text[]),
  private.fail_deliveries(text, uuid[], text[], text[], boolean[], integer, double precision, double precision),
  private.finish_messages(uuid[]),
  private.apply_ack(text, text, text, timestamptz),
  private.next_wake_at(text, double precision)
  to service_role;
