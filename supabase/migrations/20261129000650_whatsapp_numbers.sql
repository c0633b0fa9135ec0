-- =============================================================================
-- WhatsApp numbers (issue #20): each number a row, with its own bridge, state and users.
--
--   public.whatsapp_numbers          the numbers: label, phone once known, the bridge that drives
--                                    it, its state (ours) beside whatsapp-web.js's raw one
--   public.whatsapp_number_users     who may use a number that is not shared
--   public.whatsapp_number_commands  start | stop | restart | logout, queued for the workers
--   private.number_qr                the QR code a number waits to have scanned
--   private.can_use_number           whether the caller may send from a number
--   private.message_number           the number a message leaves from: its own, else its owner's
--                                    default, else the deployment's default row
--   public.add_whatsapp_number, update_, remove_, assign_, unassign_, request_number_action,
--   whatsapp_number_qr               every action, for the API and supabase-js alike
--   private.register_bridge, record_number_status, claim_number_command, finish_number_command
--                                    what the bridges report and what the workers do (service_role)
--   private.number_health_events     health: what WhatsApp did to a number (a send refused with
--                                    restricted_new_chats, a `failed` ack, a disconnect, an
--                                    opt-out, first messages left unanswered), written where
--                                    each fact arrives
--   private.health_score             a number's score: the facts' weights, decaying
--   private.judge_health             at private.settings.health_pause_score the number is
--                                    paused, in the transaction of the fact (its owners of
--                                    affected messages and every admin told, whatsapp_status sent)
--   public.resume_whatsapp_number    a person resumes it: back to what the bridge last said, the
--                                    score reset, a ramp of lower pace for health_ramp_hours
--   private.number_watch             what a worker last read from each bridge's GET /status
--                                    (status, raw state and since when, rss_bytes)
--   private.observe_bridges          keeps those readings
--   private.frozen_numbers           the numbers to restart and why: sends unacknowledged past a
--                                    limit, a raw state stuck in OPENING/TIMEOUT, memory over a cap
--                                    at a quiet moment; never paused, blocked or stopped ones
--   private.restart_watched_numbers  queues their `restart` commands (requested_by null, a reason),
--                                    with backoff and an hourly limit, telling admins at the limit
--
-- Who may do what: a user sees and uses the shared numbers, the ones assigned to them and (with
-- SELF_SERVICE_NUMBERS) their own; admins see and manage all. Admins add, change, assign, act on
-- and remove numbers; with private.settings.self_service_numbers a user adds numbers that only
-- they (and admins) see, and manages those. The first row ('Principal', the default) is the
-- deployment's existing number, so a single-number install keeps working unchanged.
--
-- Refusals (SQLSTATE class WS, stable code in HINT, fields in DETAIL):
--   WS403 forbidden (not an admin, nor the owner of a self-service number)
--   WS404 number_not_found (absent, or not one the caller may see)
--   WS409 number_is_default (the default number cannot be removed); number_not_paused (resume)
--   WS428 validation_error (label, action)
--   WS430 number_not_allowed (a message's number_id or a profile's default_number_id the user
--         may not use; DETAIL names the field)
-- The audit entries (whatsapp_number.*) are written by 20261206000100_audit_trail.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Tables
-- -----------------------------------------------------------------------------

create table public.whatsapp_numbers (
  id uuid primary key default gen_random_uuid(),
  label text not null check (char_length(label) between 1 and 100),
  phone text check (phone ~ private.e164_pattern()),
  -- The bridge process that drives it; null for the default row means the deployment's BRIDGE_URL.
  bridge_url text check (bridge_url ~ '^https?://[^[:space:]]+$' and char_length(bridge_url) <= 500),
  status text not null default 'stopped'
    check (status in ('stopped', 'starting', 'qr_needed', 'connected', 'failed', 'paused', 'blocked')),
  raw_state text check (char_length(raw_state) <= 100),
  last_disconnect_reason text check (char_length(last_disconnect_reason) <= 2000),
  last_error text check (char_length(last_error) <= 2000),
  shared boolean not null default true,
  -- A self-service number's owner; null for the deployment's numbers (added by admins).
  owner_id uuid references auth.users (id) on delete cascade,
  is_default boolean not null default false,
  -- What the bridge last said, in our words but without health's pause (a resume goes back to it).
  reported_status text
    check (reported_status in ('stopped', 'starting', 'qr_needed', 'connected', 'failed', 'blocked')),
  -- Health (below): facts before health_reset_at no longer count (a resume); until ramp_until the
  -- number sends at the ramp's lower pace (20261129000700_dispatch, private.ramp_request).
  health_reset_at timestamptz,
  ramp_until timestamptz,
  status_changed_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create unique index whatsapp_numbers_one_default on public.whatsapp_numbers (is_default) where is_default;
create index whatsapp_numbers_owner_id_idx on public.whatsapp_numbers (owner_id);
create index whatsapp_numbers_shared_idx on public.whatsapp_numbers (shared);

create trigger whatsapp_numbers_touch before update on public.whatsapp_numbers
  for each row execute function private.touch_updated_at();

create table public.whatsapp_number_users (
  number_id uuid not null references public.whatsapp_numbers (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (number_id, user_id)
);

create index whatsapp_number_users_user_id_idx on public.whatsapp_number_users (user_id);

create table public.whatsapp_number_commands (
  id uuid primary key default gen_random_uuid(),
  number_id uuid not null references public.whatsapp_numbers (id) on delete cascade,
  action text not null check (action in ('start', 'stop', 'restart', 'logout')),
  requested_by uuid references auth.users (id) on delete set null,
  -- Why, when nobody asked: the watch's automatic restart of a frozen or bloated number.
  reason text check (char_length(reason) <= 2000),
  requested_at timestamptz not null default now(),
  claimed_by text check (char_length(claimed_by) <= 200),
  claimed_at timestamptz,
  done_at timestamptz,
  result text check (char_length(result) <= 2000),
  error text check (char_length(error) <= 2000)
);

create index whatsapp_number_commands_number_id_idx on public.whatsapp_number_commands (number_id, requested_at);
create index whatsapp_number_commands_requested_by_idx on public.whatsapp_number_commands (requested_by);
-- The workers' queue: the commands not done yet.
create index whatsapp_number_commands_open_idx on public.whatsapp_number_commands (number_id, requested_at, id)
  where done_at is null;

create table private.number_qr (
  number_id uuid primary key references public.whatsapp_numbers (id) on delete cascade,
  qr_code text not null,
  updated_at timestamptz not null default now()
);

grant select, insert, update, delete on private.number_qr to service_role;

-- The deployment's existing number: single-number installs keep working with no configuration.
insert into public.whatsapp_numbers (label, is_default, shared) values ('Principal', true, true);

-- A message leaves from one number; a user may pick a default for their messages.
alter table public.messages
  add column number_id uuid references public.whatsapp_numbers (id) on delete set null;
create index messages_number_id_idx on public.messages (number_id);
alter table public.profiles
  add column default_number_id uuid references public.whatsapp_numbers (id) on delete set null;
create index profiles_default_number_id_idx on public.profiles (default_number_id);

grant insert (number_id), update (number_id) on public.messages to authenticated;

-- -----------------------------------------------------------------------------
-- Who may use a number
-- -----------------------------------------------------------------------------

-- The caller may send from it: shared, assigned to them, their own, or they are an admin.
-- Security definer: the check must see numbers and assignments the caller's RLS hides.
create or replace function private.can_use_number(p_number_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.whatsapp_numbers n
    where n.id = p_number_id
      and (n.shared
           or n.owner_id = (select auth.uid())
           or exists (select 1 from public.whatsapp_number_users u
                      where u.number_id = n.id and u.user_id = (select auth.uid()))
           or (select private.is_admin()))
  );
$$;

-- The number a message leaves from (the dispatcher claims per number with it).
create or replace function private.message_number(p_message public.messages)
returns uuid
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(
    p_message.number_id,
    (select p.default_number_id from public.profiles p where p.id = p_message.created_by),
    (select n.id from public.whatsapp_numbers n where n.is_default)
  );
$$;

-- messages.number_id and profiles.default_number_id (tg_argv[0]): a user sets only a number they
-- may use; a message's number changes only while the message is editable.
create or replace function private.check_number_choice()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  chosen uuid := (to_jsonb(new) ->> tg_argv[0])::uuid;
begin
  if not private.acting_as_user() then
    return new;
  end if;
  if tg_op = 'UPDATE' and tg_table_name = 'messages'
     and (to_jsonb(old) ->> 'status') not in ('draft', 'scheduled', 'paused') then
    raise exception 'a % message can no longer be edited', to_jsonb(old) ->> 'status'
      using errcode = 'WS410', hint = 'not_editable';
  end if;
  if chosen is not null and not private.can_use_number(chosen) then
    raise exception 'WhatsApp number % is not one you may send from.', chosen
      using errcode = 'WS430', hint = 'number_not_allowed',
      detail = jsonb_build_array(jsonb_build_object(
        'field', tg_argv[0], 'message', 'not a WhatsApp number you may use'))::text;
  end if;
  return new;
end;
$$;

create trigger messages_check_number before insert on public.messages
  for each row when (new.number_id is not null) execute function private.check_number_choice('number_id');
create trigger messages_check_number_change before update of number_id on public.messages
  for each row when (new.number_id is distinct from old.number_id)
  execute function private.check_number_choice('number_id');
create trigger profiles_check_default_number before update of default_number_id on public.profiles
  for each row when (new.default_number_id is distinct from old.default_number_id)
  execute function private.check_number_choice('default_number_id');

-- -----------------------------------------------------------------------------
-- Row-level security: read what one may use; every write goes through the functions below.
-- -----------------------------------------------------------------------------

alter table public.whatsapp_numbers enable row level security;
alter table public.whatsapp_number_users enable row level security;
alter table public.whatsapp_number_commands enable row level security;

revoke all on public.whatsapp_numbers, public.whatsapp_number_users, public.whatsapp_number_commands
  from anon, authenticated;
grant select on public.whatsapp_numbers, public.whatsapp_number_users, public.whatsapp_number_commands
  to authenticated;
grant select, insert, update, delete on public.whatsapp_numbers, public.whatsapp_number_users,
  public.whatsapp_number_commands to service_role;

create policy "whatsapp_numbers: usable or admin" on public.whatsapp_numbers
  for select to authenticated
  using (
    shared
    or owner_id = (select auth.uid())
    or id in (select u.number_id from public.whatsapp_number_users u where u.user_id = (select auth.uid()))
    or (select private.is_admin())
  );

create policy "whatsapp_number_users: own or admin" on public.whatsapp_number_users
  for select to authenticated
  using (user_id = (select auth.uid()) or (select private.is_admin()));

create policy "whatsapp_number_commands: own or admin" on public.whatsapp_number_commands
  for select to authenticated
  using (requested_by = (select auth.uid()) or (select private.is_admin()));

-- -----------------------------------------------------------------------------
-- Actions (callable by authenticated; the rules inside)
-- -----------------------------------------------------------------------------

-- A number the caller may manage, locked: an admin's any, a self-service owner's own (while the
-- setting is on). Hidden numbers are not found, visible ones not theirs are forbidden.
create or replace function private.managed_number(p_number_id uuid)
returns public.whatsapp_numbers
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers;
begin
  select * into n from public.whatsapp_numbers where id = p_number_id for update;
  if not found or not private.can_use_number(p_number_id) then
    raise exception 'WhatsApp number % was not found.', p_number_id
      using errcode = 'WS404', hint = 'number_not_found';
  end if;
  -- coalesce: a deployment's number has no owner, and a null must not let anyone through.
  if not ((select private.is_admin())
          or coalesce(n.owner_id = (select auth.uid()) and (private.current_settings()).self_service_numbers, false)) then
    raise exception 'Only an admin can manage WhatsApp number %.', p_number_id
      using errcode = 'WS403', hint = 'forbidden';
  end if;
  return n;
end;
$$;

-- A number whose users change (assign, unassign): managed as above, and by an admin only (a
-- self-service owner manages their number but does not hand it to other users).
create or replace function private.assignable_number(p_number_id uuid)
returns public.whatsapp_numbers
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers := private.managed_number(p_number_id);
begin
  if not (select private.is_admin()) then
    raise exception 'Only an admin can assign WhatsApp numbers.' using errcode = 'WS403', hint = 'forbidden';
  end if;
  return n;
end;
$$;

-- A label as stored (cleaned like a group's name), or a refusal naming the field.
create or replace function private.number_label(p_raw text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  checked record := private.group_name(p_raw);
begin
  if checked.problem is not null then
    perform private.refuse_field('label', checked.problem);
  end if;
  return checked.name;
end;
$$;

create or replace function public.add_whatsapp_number(p_label text, p_shared boolean default true)
returns public.whatsapp_numbers
language plpgsql
security definer
set search_path = ''
as $$
declare
  admin boolean := (select private.is_admin());
  n public.whatsapp_numbers;
begin
  if not admin and not ((select auth.uid()) is not null and (private.current_settings()).self_service_numbers) then
    raise exception 'Only an admin can add WhatsApp numbers.' using errcode = 'WS403', hint = 'forbidden';
  end if;
  -- A self-service number is its owner's alone; an admin's belongs to the deployment.
  insert into public.whatsapp_numbers (label, shared, owner_id)
  values (private.number_label(p_label),
          admin and coalesce(p_shared, true),
          case when admin then null else (select auth.uid()) end)
  returning * into n;
  return n;
end;
$$;

-- Null leaves a field as it is. Only an admin shares a number with everyone.
create or replace function public.update_whatsapp_number(p_number_id uuid, p_label text default null,
                                                         p_shared boolean default null)
returns public.whatsapp_numbers
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers := private.managed_number(p_number_id);
begin
  if p_shared is distinct from n.shared and p_shared is not null and not (select private.is_admin()) then
    raise exception 'Only an admin can share a WhatsApp number.' using errcode = 'WS403', hint = 'forbidden';
  end if;
  if p_label is not null or p_shared is not null then
    update public.whatsapp_numbers
    set label = case when p_label is null then label else private.number_label(p_label) end,
        shared = coalesce(p_shared, shared)
    where id = p_number_id
    returning * into n;
  end if;
  return n;
end;
$$;

-- The removed row. Its messages fall back to their owner's default, then the default number.
create or replace function public.remove_whatsapp_number(p_number_id uuid)
returns public.whatsapp_numbers
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers := private.managed_number(p_number_id);
begin
  if n.is_default then
    raise exception 'The default WhatsApp number cannot be removed.' using errcode = 'WS409', hint = 'number_is_default';
  end if;
  delete from public.whatsapp_numbers where id = p_number_id;
  return n;
end;
$$;

-- Admins only. True when the user was not assigned before (a repeat changes nothing).
create or replace function public.assign_whatsapp_number(p_number_id uuid, p_user_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers := private.assignable_number(p_number_id);
  added integer;
begin
  insert into public.whatsapp_number_users (number_id, user_id) values (n.id, p_user_id) on conflict do nothing;
  get diagnostics added = row_count;
  return added > 0;
end;
$$;

-- Admins only. True when the user was assigned.
create or replace function public.unassign_whatsapp_number(p_number_id uuid, p_user_id uuid)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers := private.assignable_number(p_number_id);
  removed integer;
begin
  delete from public.whatsapp_number_users where number_id = n.id and user_id = p_user_id;
  get diagnostics removed = row_count;
  return removed > 0;
end;
$$;

-- Queue a command for the number's bridge (a worker runs it: private.claim_number_command).
create or replace function public.request_number_action(p_number_id uuid, p_action text)
returns public.whatsapp_number_commands
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers;
  c public.whatsapp_number_commands;
begin
  if p_action is null or p_action not in ('start', 'stop', 'restart', 'logout') then
    perform private.refuse_field('action', 'must be one of start, stop, restart, logout');
  end if;
  n := private.managed_number(p_number_id);
  insert into public.whatsapp_number_commands (number_id, action, requested_by)
  values (n.id, p_action, (select auth.uid()))
  returning * into c;
  perform pg_notify('whatsched_number_commands', c.id::text);
  return c;
end;
$$;

-- The QR code to scan (null when none is waiting): admins, and a self-service number's owner.
create or replace function public.whatsapp_number_qr(p_number_id uuid)
returns text
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers;
begin
  select * into n from public.whatsapp_numbers where id = p_number_id;
  if not found or not private.can_use_number(p_number_id) then
    raise exception 'WhatsApp number % was not found.', p_number_id
      using errcode = 'WS404', hint = 'number_not_found';
  end if;
  if not ((select private.is_admin()) or coalesce(n.owner_id = (select auth.uid()), false)) then
    raise exception 'Only an admin can read the QR code of WhatsApp number %.', p_number_id
      using errcode = 'WS403', hint = 'forbidden';
  end if;
  return (select q.qr_code from private.number_qr q where q.number_id = p_number_id);
end;
$$;

-- -----------------------------------------------------------------------------
-- Health: what WhatsApp does to a number, as facts; a decaying score; a pause above the threshold
-- -----------------------------------------------------------------------------

-- One row per fact, written where the fact arrives: private.fail_deliveries (a send refused with
-- restricted_new_chats, WhatsApp's error 463 on a new recipient), private.apply_ack (a `failed`
-- ack), private.record_number_status (a disconnect), private.record_reply (an opt-out, counted
-- against the number it reached) and private.judge_unanswered (first messages to new contacts
-- that mostly got no reply). The weight is its kind's setting
-- when it happened; evidence says what happened (phone, error, raw state).
create table private.number_health_events (
  id bigint generated always as identity primary key,
  number_id uuid not null references public.whatsapp_numbers (id) on delete cascade,
  kind text not null check (kind in ('restricted_new_chats', 'failed_ack', 'disconnect', 'opt_out', 'unanswered')),
  weight double precision not null check (weight >= 0),
  at timestamptz not null default now(),
  evidence jsonb not null default '{}'::jsonb
);

create index number_health_events_number_at_idx on private.number_health_events (number_id, at);

grant select, insert, delete on private.number_health_events to service_role;

-- A kind's weight (private.settings.health_weight_*).
create or replace function private.health_weight(p_kind text)
returns double precision
language sql
stable
set search_path = ''
as $$
  select case p_kind
    when 'restricted_new_chats' then s.health_weight_restricted
    when 'failed_ack' then s.health_weight_failed_ack
    when 'disconnect' then s.health_weight_disconnect
    when 'opt_out' then s.health_weight_opt_out
    when 'unanswered' then s.health_weight_unanswered
  end
  from private.current_settings() s;
$$;

-- The score: each fact since the last resume weighs weight * 2^(-age / half-life). Facts older
-- than ten half-lives (under 0.1 % of their weight) are left out, which bounds the rows read.
-- A user gets the score of a number they may use (0 for others); the service, of any.
create or replace function private.health_score(p_number_id uuid)
returns double precision
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(sum(e.weight * power(0.5, extract(epoch from now() - e.at) / 60 / s.health_half_life_minutes)), 0)
  from private.current_settings() s
  cross join public.whatsapp_numbers n
  join private.number_health_events e on e.number_id = n.id
  where n.id = p_number_id
    and ((select auth.uid()) is null or private.can_use_number(n.id))
    and e.at > now() - make_interval(mins => (10 * s.health_half_life_minutes)::integer)
    and e.at >= coalesce(n.health_reset_at, '-infinity');
$$;

-- After facts are written (a statement-level trigger, so in the transaction of the fact): each
-- number they concern whose score reached health_pause_score is paused (its last raw state
-- kept), unless already paused or blocked. The owners of its scheduled and sending messages and
-- every admin get a notification naming the number and the evidence; whatsapp_status says it.
create or replace function private.judge_health()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  cfg private.settings := private.current_settings();
  n record;
  why text;
begin
  for n in
    update public.whatsapp_numbers w
    set status = 'paused', status_changed_at = now(),
        last_error = format('Paused by health: score %s reached %s', round(j.score::numeric, 2), cfg.health_pause_score)
    from (select distinct f.number_id, private.health_score(f.number_id) as score from new_facts f) j
    where w.id = j.number_id and j.score >= cfg.health_pause_score and w.status not in ('paused', 'blocked')
    returning w.id, w.label, w.phone, w.reported_status, w.owner_id, j.score
  loop
    -- The evidence: each kind's count since the last resume, and the latest fact itself.
    select format('%s. Último: %s', string_agg(format('%s × %s', c.facts, c.kind), ', ' order by c.facts desc, c.kind),
                  (select e.evidence::text from private.number_health_events e
                   join public.whatsapp_numbers w on w.id = e.number_id
                   where e.number_id = n.id and e.at >= coalesce(w.health_reset_at, '-infinity')
                   order by e.at desc, e.id desc limit 1))
      into why
    from (select e.kind, count(*) as facts
          from private.number_health_events e join public.whatsapp_numbers w on w.id = e.number_id
          where e.number_id = n.id and e.at >= coalesce(w.health_reset_at, '-infinity')
            and e.at > now() - make_interval(mins => (10 * cfg.health_half_life_minutes)::integer)
          group by e.kind) c;
    insert into public.notifications (user_id, type, title, message)
    select u.id, 'error', 'Número de WhatsApp pausado',
           left(format('El número %s%s se pausó para protegerlo de un bloqueo de WhatsApp (salud %s, umbral %s): %s. '
                       'Sus envíos esperan. Revisa el número y reanúdalo cuando sea seguro.',
                       n.label, coalesce(' (' || n.phone || ')', ''), round(n.score::numeric, 2),
                       cfg.health_pause_score, why), 2000)
    from (
      select m.created_by as id from public.messages m
      where m.status in ('scheduled', 'sending') and private.message_number(m) = n.id
      union
      select p.id from public.profiles p where p.role = 'admin'
      union
      select n.owner_id where n.owner_id is not null
    ) u;
    perform private.broadcast(
      jsonb_build_object(
        'type', 'whatsapp_status',
        'status', case when n.reported_status in ('connected', 'qr_needed') then n.reported_status
                       else 'disconnected' end,
        'number_id', n.id,
        'number_status', 'paused',
        'reason', left(why, 500)),
      'whatsapp_status', 'whatsapp');
  end loop;
  return null;
end;
$$;

create trigger number_health_events_judge after insert on private.number_health_events
  referencing new table as new_facts
  for each statement execute function private.judge_health();

-- A person resumes a paused number (admins; a self-service number's owner): its status goes back
-- to what the bridge last said, its score starts again from zero, and for health_ramp_hours it
-- sends at the ramp's lower pace. Audited (whatsapp_number.resume); the workers are woken.
create or replace function public.resume_whatsapp_number(p_number_id uuid)
returns public.whatsapp_numbers
language plpgsql
security definer
set search_path = ''
as $$
declare
  n public.whatsapp_numbers := private.managed_number(p_number_id);
  cfg private.settings := private.current_settings();
begin
  if n.status <> 'paused' then
    raise exception 'WhatsApp number % is %, not paused.', p_number_id, n.status
      using errcode = 'WS409', hint = 'number_not_paused';
  end if;
  update public.whatsapp_numbers
  set status = coalesce(reported_status, 'stopped'), status_changed_at = now(), last_error = null,
      health_reset_at = now(),
      ramp_until = now() + make_interval(secs => cfg.health_ramp_hours * 3600)
  where id = n.id
  returning * into n;
  -- Every user's socket hears it when an admin resumes (a user may only broadcast to themselves).
  if (select private.is_admin()) then
    perform private.broadcast(
      jsonb_build_object(
        'type', 'whatsapp_status',
        'status', case when n.status in ('connected', 'qr_needed') then n.status else 'disconnected' end,
        'number_id', n.id,
        'number_status', n.status),
      'whatsapp_status', 'whatsapp');
  end if;
  perform pg_notify('whatsched_dispatch', n.id::text);
  return n;
end;
$$;

-- -----------------------------------------------------------------------------
-- What the bridges report (service_role)
-- -----------------------------------------------------------------------------

-- A number's id as a bridge names it: null is the default row; an unknown id is refused.
create or replace function private.reported_number(p_number_id uuid)
returns uuid
language plpgsql
stable
set search_path = ''
as $$
declare
  found_id uuid;
begin
  select n.id into found_id from public.whatsapp_numbers n
  where (p_number_id is null and n.is_default) or n.id = p_number_id;
  if found_id is null then
    raise exception 'WhatsApp number % was not found.', p_number_id
      using errcode = 'WS404', hint = 'number_not_found';
  end if;
  return found_id;
end;
$$;

-- The bridge process driving a number says where it listens (numbers may run on other machines).
create or replace function private.register_bridge(p_number_id uuid, p_bridge_url text)
returns uuid
language sql
set search_path = ''
as $$
  update public.whatsapp_numbers set bridge_url = p_bridge_url
  where id = private.reported_number(p_number_id) and bridge_url is distinct from p_bridge_url;
  select private.reported_number(p_number_id);
$$;

-- Our state from the bridge's word (the guide's connected | disconnected | qr_needed |
-- initializing, or stopped) and whatsapp-web.js's raw state and disconnect reason: WhatsApp's
-- own blocks and a logout need a person (blocked); a number paused by health stays paused
-- whatever else the bridge reports (a person resumes it), unless WhatsApp blocks it.
create or replace function private.number_status(p_current text, p_status text, p_raw_state text, p_reason text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case when p_current = 'paused' and said.status <> 'blocked' then 'paused' else said.status end
  from (select case
    when p_status = 'connected' then 'connected'
    when p_status = 'qr_needed' then 'qr_needed'
    when upper(coalesce(p_raw_state, '')) in ('TOS_BLOCK', 'SMB_TOS_BLOCK', 'UNPAIRED', 'UNPAIRED_IDLE')
         or upper(coalesce(p_reason, '')) in ('LOGOUT', 'TOS_BLOCK', 'SMB_TOS_BLOCK', 'UNPAIRED') then 'blocked'
    when p_status in ('initializing', 'starting') then 'starting'
    when p_status = 'stopped' then 'stopped'
    else 'failed'
  end as status) said;
$$;

-- Keep what the bridge reported for a number (null: the default one) and broadcast the guide's
-- whatsapp_status event, number_id added (every report: a QR code changes while still qr_needed).
-- Returns the number's status before this report, in our words.
create or replace function private.record_number_status(
  p_number_id uuid, p_status text, p_raw_state text, p_phone text, p_reason text, p_qr text
)
returns text
language plpgsql
set search_path = ''
as $$
declare
  target uuid := private.reported_number(p_number_id);
  n public.whatsapp_numbers;
  next_status text;
  said text;
  frame jsonb;
begin
  select * into n from public.whatsapp_numbers where id = target for update;
  next_status := private.number_status(n.status, p_status, p_raw_state, p_reason);
  said := private.number_status(null, p_status, p_raw_state, p_reason);
  update public.whatsapp_numbers
  set status = next_status,
      reported_status = said,
      raw_state = left(p_raw_state, 100),
      -- A phone in E.164 (with or without its '+'); anything else keeps the one known.
      phone = case when regexp_replace(p_phone, '^\+?', '+') ~ private.e164_pattern()
                   then regexp_replace(p_phone, '^\+?', '+') else phone end,
      last_disconnect_reason = case when p_status = 'connected' then last_disconnect_reason
                                    else coalesce(left(p_reason, 2000), last_disconnect_reason) end,
      last_error = left(p_reason, 2000),
      status_changed_at = case when next_status <> n.status then now() else status_changed_at end
  where id = n.id;
  if p_status = 'qr_needed' and p_qr is not null then
    insert into private.number_qr (number_id, qr_code) values (n.id, p_qr)
    on conflict (number_id) do update set qr_code = excluded.qr_code, updated_at = now();
  else
    delete from private.number_qr where number_id = n.id;
  end if;
  -- A health fact: the number fell into failed or blocked, or changed raw state while there (a
  -- stop someone asked for is not one).
  if said in ('failed', 'blocked')
     and (n.reported_status is distinct from said or n.raw_state is distinct from left(p_raw_state, 100)) then
    insert into private.number_health_events (number_id, kind, weight, evidence)
    values (n.id, 'disconnect', private.health_weight('disconnect'), jsonb_strip_nulls(jsonb_build_object(
      'status', said, 'raw_state', p_raw_state, 'reason', left(p_reason, 500))));
  end if;
  frame := jsonb_build_object(
    'type', 'whatsapp_status',
    'status', case when p_status in ('connected', 'qr_needed') then p_status else 'disconnected' end,
    'number_id', n.id);
  -- The guide shows the QR code to every user; for the default number only (the others': admins, by GET).
  if p_status = 'qr_needed' and p_qr is not null and n.is_default then
    frame := frame || jsonb_build_object('qr_code', p_qr);
  end if;
  perform private.broadcast(frame, 'whatsapp_status', 'whatsapp');
  return n.status;
end;
$$;

-- The oldest command of each number, unless one of that number's is in flight (claimed in the last
-- two minutes and not done): a number's commands run one at a time, in order.
create or replace function private.claim_number_command(p_worker text)
returns setof public.whatsapp_number_commands
language sql
set search_path = ''
as $$
  with oldest as (
    select distinct on (c.number_id) c.id
    from public.whatsapp_number_commands c
    where c.done_at is null
    order by c.number_id, c.requested_at, c.id
  ),
  free as (
    select c.id from public.whatsapp_number_commands c join oldest o on o.id = c.id
    where c.claimed_at is null or c.claimed_at < now() - interval '2 minutes'
    for update of c skip locked
  )
  update public.whatsapp_number_commands c
  set claimed_by = p_worker, claimed_at = now()
  from free f
  where c.id = f.id
  returning c.*;
$$;

create or replace function private.finish_number_command(p_id uuid, p_result text, p_error text)
returns void
language sql
set search_path = ''
as $$
  update public.whatsapp_number_commands
  set done_at = now(), result = left(p_result, 2000), error = left(p_error, 2000)
  where id = p_id and done_at is null;
$$;

-- -----------------------------------------------------------------------------
-- Watched: a frozen or bloated number is restarted (the worker's housekeeping reads each bridge's
-- GET /status, keeps it here, and asks which numbers to restart; the rules are these functions)
-- -----------------------------------------------------------------------------

-- What a worker last read from a number's bridge. raw_state_since: when the bridge's (status,
-- raw state) pair was first seen as it is now. limit_told_at: when admins were last told that
-- the hourly limit held a restart back (once an hour at most).
create table private.number_watch (
  number_id uuid primary key references public.whatsapp_numbers (id) on delete cascade,
  status text check (char_length(status) <= 100),
  raw_state text check (char_length(raw_state) <= 100),
  raw_state_since timestamptz not null default now(),
  rss_bytes bigint check (rss_bytes >= 0),
  observed_at timestamptz not null default now(),
  limit_told_at timestamptz
);

grant select, insert, update, delete on private.number_watch to service_role;

-- Keep the readings, a JSON array of {number_id, status, raw_state, rss_bytes} (unknown ids are
-- ignored: a number removed meanwhile).
create or replace function private.observe_bridges(p_observed jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into private.number_watch as w (number_id, status, raw_state, rss_bytes)
  select n.id, left(o ->> 'status', 100), left(o ->> 'raw_state', 100), round((o ->> 'rss_bytes')::numeric)::bigint
  from jsonb_array_elements(coalesce(p_observed, '[]'::jsonb)) o
  join public.whatsapp_numbers n on n.id = (o ->> 'number_id')::uuid
  on conflict (number_id) do update
  set raw_state_since = case when (w.status, w.raw_state) is not distinct from (excluded.status, excluded.raw_state)
                             then w.raw_state_since else now() end,
      status = excluded.status, raw_state = excluded.raw_state, rss_bytes = excluded.rss_bytes,
      observed_at = now();
$$;

-- Which of p_numbers (the ones just observed) to restart, and why; one row per number, its most
-- telling reason first. A person's states are left alone: paused (health), blocked (WhatsApp's
-- ban, an unpairing) and stopped are never restarted automatically. Time counts from the later
-- of the sighting and the number's last restart or start, so a restart is given its chance.
--   frozen_state     connected, and the bridge's raw state has been OPENING or TIMEOUT for p_state_s
--   unacknowledged   connected, a send of it has waited p_ack_s for a delivered or read ack, a
--                    newer send waits too, and no ack has arrived since the first of them
--   memory           the bridge's rss_bytes is over p_memory_cap_mb and none of its deliveries is
--                    `sending` (a quiet moment)
-- A limit of 0 turns its rule off.
create or replace function private.frozen_numbers(
  p_numbers uuid[], p_ack_s double precision, p_state_s double precision, p_memory_cap_mb double precision
)
returns table (number_id uuid, reason text, evidence jsonb)
language sql
stable
set search_path = ''
as $$
  with watched as (
    select n.id, n.status, w.status as bridge_status, w.raw_state, w.rss_bytes,
           greatest(w.raw_state_since, r.done_at) as state_since,
           greatest(n.status_changed_at, r.done_at) as sends_since
    from public.whatsapp_numbers n
    join private.number_watch w on w.number_id = n.id
    cross join lateral (
      select max(c.done_at) as done_at from public.whatsapp_number_commands c
      where c.number_id = n.id and c.action in ('restart', 'start') and c.done_at is not null
    ) r
    where n.id = any(p_numbers) and n.status not in ('paused', 'blocked', 'stopped')
  ),
  sends as (
    -- The connected numbers' sends since they (re)connected, at most ten limits back.
    select w.id, d.state, d.sent_at, least(d.delivered_at, d.read_at) as acked_at,
           d.delivered_at is null and d.read_at is null and d.state = 'sent' as waiting
    from watched w
    join public.deliveries d
      on d.sent_at >= greatest(w.sends_since, now() - make_interval(secs => 10 * p_ack_s))
    join public.messages m on m.id = d.message_id
    where p_ack_s > 0 and w.status = 'connected' and private.message_number(m) = w.id
  ),
  unacked as (
    select s.id, o.oldest,
           count(*) filter (where s.waiting and s.sent_at >= o.oldest) as waiting,
           count(*) filter (where s.acked_at >= o.oldest) as acked_since
    from sends s
    join (select s2.id, min(s2.sent_at) as oldest from sends s2
          where s2.waiting and s2.sent_at <= now() - make_interval(secs => p_ack_s)
          group by s2.id) o on o.id = s.id
    group by s.id, o.oldest
  ),
  found as (
    select w.id, 1 as rank, 'frozen_state' as reason,
           jsonb_build_object('raw_state', w.raw_state, 'since', w.state_since,
                              'seconds', round(extract(epoch from now() - w.state_since)), 'limit_s', p_state_s) as evidence
    from watched w
    where p_state_s > 0 and w.status = 'connected' and w.bridge_status = 'connected'
      and upper(w.raw_state) in ('OPENING', 'TIMEOUT')
      and w.state_since <= now() - make_interval(secs => p_state_s)
    union all
    select u.id, 2, 'unacknowledged',
           jsonb_build_object('unacknowledged', u.waiting, 'oldest_sent_at', u.oldest, 'limit_s', p_ack_s)
    from unacked u
    where u.waiting >= 2 and u.acked_since = 0
    union all
    select w.id, 3, 'memory',
           jsonb_build_object('rss_mb', round(w.rss_bytes / 1048576.0), 'cap_mb', p_memory_cap_mb)
    from watched w
    where p_memory_cap_mb > 0 and w.rss_bytes > p_memory_cap_mb * 1048576
      and not exists (
        select 1 from public.deliveries d join public.messages m on m.id = d.message_id
        where d.state = 'sending' and private.message_number(m) = w.id)
  )
  select distinct on (f.id) f.id, f.reason, f.evidence from found f order by f.id, f.rank;
$$;

-- Queue a `restart` for each number private.frozen_numbers names (requested_by null, the reason
-- written out; audited as whatsapp_number.restart like a person's, and the workers woken), unless
-- a command of that number is still open, the backoff since the last automatic restart has not
-- passed (p_backoff_s, doubling with each one in the hour) or p_max_per_hour automatic restarts
-- happened in the last hour: then admins (and a self-service number's owner) are told, once an
-- hour. Returns every number named, with its command or why it was held back (held).
create or replace function private.restart_watched_numbers(
  p_numbers uuid[],
  p_ack_s double precision,
  p_state_s double precision,
  p_memory_cap_mb double precision,
  p_max_per_hour integer,
  p_backoff_s double precision
)
returns table (number_id uuid, reason text, command_id uuid, held text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
  f record;
  n public.whatsapp_numbers;
  recent integer;
  last_at timestamptz;
  why text;
  queued uuid;
begin
  for f in select * from private.frozen_numbers(p_numbers, p_ack_s, p_state_s, p_memory_cap_mb) loop
    -- One worker decides for a number at a time; the second sees the first's command.
    select * into n from public.whatsapp_numbers w where w.id = f.number_id for update;
    if not found or n.status in ('paused', 'blocked', 'stopped') then
      continue;
    end if;
    why := case f.reason
      when 'frozen_state' then format('raw state %s for %s s (limit %s s)', f.evidence ->> 'raw_state',
                                      f.evidence ->> 'seconds', f.evidence ->> 'limit_s')
      when 'unacknowledged' then format('%s sends without a delivered ack since %s (limit %s s)',
                                        f.evidence ->> 'unacknowledged', f.evidence ->> 'oldest_sent_at',
                                        f.evidence ->> 'limit_s')
      else format('memory %s MB over the cap of %s MB', f.evidence ->> 'rss_mb', f.evidence ->> 'cap_mb')
    end;
    if exists (select 1 from public.whatsapp_number_commands c where c.number_id = n.id and c.done_at is null) then
      number_id := n.id; reason := f.reason; command_id := null; held := 'command_open';
      return next;
      continue;
    end if;
    select count(*), max(c.requested_at) into recent, last_at
    from public.whatsapp_number_commands c
    where c.number_id = n.id and c.action = 'restart' and c.requested_by is null and c.reason is not null
      and c.requested_at > now() - interval '1 hour';
    if recent >= p_max_per_hour then
      update private.number_watch w set limit_told_at = now()
      where w.number_id = n.id and (w.limit_told_at is null or w.limit_told_at < now() - interval '1 hour');
      if found then
        insert into public.notifications (user_id, type, title, message)
        select u.id, 'error', 'Número de WhatsApp sin reinicio automático',
               left(format('El número %s%s necesita reiniciarse (%s: %s), pero ya se reinició solo %s veces en la '
                           'última hora, el límite. No se reiniciará solo hasta que pase la hora: revísalo y '
                           'reinícialo o detenlo a mano.',
                           n.label, coalesce(' (' || n.phone || ')', ''), f.reason, why, recent), 2000)
        from (select p.id from public.profiles p where p.role = 'admin'
              union select n.owner_id where n.owner_id is not null) u;
      end if;
      number_id := n.id; reason := f.reason; command_id := null; held := 'hourly_limit';
      return next;
      continue;
    end if;
    if last_at is not null and last_at > now() - make_interval(secs => p_backoff_s * power(2, recent - 1)) then
      number_id := n.id; reason := f.reason; command_id := null; held := 'backoff';
      return next;
      continue;
    end if;
    insert into public.whatsapp_number_commands (number_id, action, requested_by, reason)
    values (n.id, 'restart', null, left(f.reason || ': ' || why, 2000))
    returning id into queued;
    perform pg_notify('whatsched_number_commands', queued::text);
    number_id := n.id; reason := f.reason; command_id := queued; held := null;
    return next;
  end loop;
end;
$$;

-- -----------------------------------------------------------------------------
-- Grants
-- -----------------------------------------------------------------------------

revoke all on function
  private.can_use_number(uuid), private.message_number(public.messages), private.managed_number(uuid),
  private.assignable_number(uuid), private.number_label(text), private.check_number_choice(),
  public.add_whatsapp_number(text, boolean), public.update_whatsapp_number(uuid, text, boolean),
  public.remove_whatsapp_number(uuid), public.assign_whatsapp_number(uuid, uuid),
  public.unassign_whatsapp_number(uuid, uuid), public.request_number_action(uuid, text),
  public.whatsapp_number_qr(uuid),
  private.reported_number(uuid), private.register_bridge(uuid, text), private.number_status(text, text, text, text),
  private.record_number_status(uuid, text, text, text, text, text), private.claim_number_command(text),
  private.finish_number_command(uuid, text, text),
  private.health_weight(text), private.health_score(uuid), private.judge_health(),
  public.resume_whatsapp_number(uuid),
  private.observe_bridges(jsonb), private.frozen_numbers(uuid[], double precision, double precision, double precision),
  private.restart_watched_numbers(uuid[], double precision, double precision, double precision, integer, double precision)
  from public, anon, authenticated;
grant execute on function
  private.can_use_number(uuid), private.message_number(public.messages), private.managed_number(uuid),
  private.assignable_number(uuid), private.number_label(text),
  public.add_whatsapp_number(text, boolean), public.update_whatsapp_number(uuid, text, boolean),
  public.remove_whatsapp_number(uuid), public.assign_whatsapp_number(uuid, uuid),
  public.unassign_whatsapp_number(uuid, uuid), public.request_number_action(uuid, text),
  public.whatsapp_number_qr(uuid), public.resume_whatsapp_number(uuid), private.health_score(uuid)
  to authenticated, service_role;
grant execute on function
  private.reported_number(uuid), private.register_bridge(uuid, text), private.number_status(text, text, text, text),
  private.record_number_status(uuid, text, text, text, text, text), private.claim_number_command(text),
  private.finish_number_command(uuid, text, text), private.health_weight(text),
  private.observe_bridges(jsonb), private.frozen_numbers(uuid[], double precision, double precision, double precision),
  private.restart_watched_numbers(uuid[], double precision, double precision, double precision, integer, double precision)
  to service_role;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on table public.whatsapp_numbers is 'The WhatsApp numbers messages leave from, each driven by its own bridge; the first row (''Principal'') is the deployment''s default.';
comment on column public.whatsapp_numbers.label is 'The name people know the number by, 1 to 100 characters.';
comment on column public.whatsapp_numbers.phone is 'The number in E.164, once its bridge has reported it.';
comment on column public.whatsapp_numbers.bridge_url is 'The bridge process that drives it; null for the default row means the deployment''s BRIDGE_URL.';
comment on column public.whatsapp_numbers.status is 'Our state: stopped | starting | qr_needed | connected | failed | paused (by health, until a person resumes it) | blocked (by WhatsApp, or logged out).';
comment on column public.whatsapp_numbers.raw_state is 'whatsapp-web.js''s own state, as the bridge last reported it.';
comment on column public.whatsapp_numbers.last_disconnect_reason is 'The reason the bridge gave for the last disconnect.';
comment on column public.whatsapp_numbers.last_error is 'The last problem the bridge reported, or why health paused the number; cleared by a resume.';
comment on column public.whatsapp_numbers.shared is 'Whether every user may send from it; if not, only its assigned users (whatsapp_number_users), its owner and admins.';
comment on column public.whatsapp_numbers.owner_id is 'A self-service number''s owner; null for the deployment''s numbers (added by admins).';
comment on column public.whatsapp_numbers.is_default is 'The deployment''s default number (one row): a message with no number of its own nor an owner''s default leaves from it.';
comment on column public.whatsapp_numbers.reported_status is 'What the bridge last said, in our words but without health''s pause (a resume goes back to it).';
comment on column public.whatsapp_numbers.health_reset_at is 'Health facts before this no longer count (set by a resume).';
comment on column public.whatsapp_numbers.ramp_until is 'Until then the number sends at the ramp''s lower pace (set by a resume).';
comment on column public.whatsapp_numbers.status_changed_at is 'When status last changed.';

comment on table public.whatsapp_number_users is 'Who may use a number that is not shared, as admins assign them.';
comment on column public.whatsapp_number_users.number_id is 'The number.';
comment on column public.whatsapp_number_users.user_id is 'A user who may send from it.';

comment on table public.whatsapp_number_commands is 'start | stop | restart | logout for a number''s bridge, queued for the workers (one at a time per number), with the outcome.';
comment on column public.whatsapp_number_commands.number_id is 'The number whose bridge runs it.';
comment on column public.whatsapp_number_commands.action is 'start | stop | restart | logout.';
comment on column public.whatsapp_number_commands.requested_by is 'Who asked for it; null: the watch''s automatic restart (see reason), or a user since deleted.';
comment on column public.whatsapp_number_commands.reason is 'Why, when nobody asked: the watch''s automatic restart of a frozen or bloated number.';
comment on column public.whatsapp_number_commands.requested_at is 'When it was queued.';
comment on column public.whatsapp_number_commands.claimed_by is 'The worker that took it.';
comment on column public.whatsapp_number_commands.claimed_at is 'When a worker took it (another may take it two minutes later if it is not done).';
comment on column public.whatsapp_number_commands.done_at is 'When it finished; null: queued or running.';
comment on column public.whatsapp_number_commands.result is 'What the bridge answered.';
comment on column public.whatsapp_number_commands.error is 'Why it failed; null when it did not.';

comment on column public.messages.number_id is 'The WhatsApp number it leaves from; null: its owner''s default, else the deployment''s default (private.message_number).';
comment on column public.profiles.default_number_id is 'The WhatsApp number the user''s messages leave from when they name none; null: the deployment''s default.';

comment on function public.add_whatsapp_number(text, boolean) is 'Add a WhatsApp number (admins; with self-service numbers, a user adds one of their own, not shared).';
comment on function public.update_whatsapp_number(uuid, text, boolean) is 'Change a number''s label or sharing (null leaves a field as it is); only an admin shares a number.';
comment on function public.remove_whatsapp_number(uuid) is 'Remove a number (never the default); its messages fall back to their owner''s default, then the default number.';
comment on function public.assign_whatsapp_number(uuid, uuid) is 'Let a user send from a number that is not shared (admins); true when the user was not assigned before.';
comment on function public.unassign_whatsapp_number(uuid, uuid) is 'Take a number back from a user (admins); true when the user was assigned.';
comment on function public.request_number_action(uuid, text) is 'Queue start, stop, restart or logout for a number''s bridge; a worker runs it.';
comment on function public.whatsapp_number_qr(uuid) is 'The QR code the number waits to have scanned, null when none (admins, and a self-service number''s owner).';
comment on function public.resume_whatsapp_number(uuid) is 'Resume a number paused by health: back to what the bridge last said, its score reset, at the ramp''s lower pace for health_ramp_hours.';
