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
--   WS409 number_is_default (the default number cannot be removed)
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
  phone text check (phone ~ '^\+[1-9][0-9]{1,14}$'),
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

-- A label as stored (cleaned like a group's name), or a refusal naming the field.
create or replace function private.number_label(p_raw text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  checked record := private.clean_name(p_raw, 100, true);
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
  n public.whatsapp_numbers := private.managed_number(p_number_id);
  added integer;
begin
  if not (select private.is_admin()) then
    raise exception 'Only an admin can assign WhatsApp numbers.' using errcode = 'WS403', hint = 'forbidden';
  end if;
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
  n public.whatsapp_numbers := private.managed_number(p_number_id);
  removed integer;
begin
  if not (select private.is_admin()) then
    raise exception 'Only an admin can assign WhatsApp numbers.' using errcode = 'WS403', hint = 'forbidden';
  end if;
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
-- own blocks and a logout need a person (blocked); a number paused by health stays paused while
-- connected.
create or replace function private.number_status(p_current text, p_status text, p_raw_state text, p_reason text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when p_status = 'connected' and p_current = 'paused' then 'paused'
    when p_status = 'connected' then 'connected'
    when p_status = 'qr_needed' then 'qr_needed'
    when upper(coalesce(p_raw_state, '')) in ('TOS_BLOCK', 'SMB_TOS_BLOCK', 'UNPAIRED', 'UNPAIRED_IDLE')
         or upper(coalesce(p_reason, '')) in ('LOGOUT', 'TOS_BLOCK', 'SMB_TOS_BLOCK', 'UNPAIRED') then 'blocked'
    when p_status in ('initializing', 'starting') then 'starting'
    when p_status = 'stopped' then 'stopped'
    else 'failed'
  end;
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
  frame jsonb;
begin
  select * into n from public.whatsapp_numbers where id = target for update;
  next_status := private.number_status(n.status, p_status, p_raw_state, p_reason);
  update public.whatsapp_numbers
  set status = next_status,
      raw_state = left(p_raw_state, 100),
      -- A phone in E.164 (with or without its '+'); anything else keeps the one known.
      phone = case when p_phone ~ '^\+?[1-9][0-9]{1,14}$' then '+' || ltrim(p_phone, '+') else phone end,
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
-- Grants
-- -----------------------------------------------------------------------------

revoke all on function
  private.can_use_number(uuid), private.message_number(public.messages), private.managed_number(uuid),
  private.number_label(text), private.check_number_choice(),
  public.add_whatsapp_number(text, boolean), public.update_whatsapp_number(uuid, text, boolean),
  public.remove_whatsapp_number(uuid), public.assign_whatsapp_number(uuid, uuid),
  public.unassign_whatsapp_number(uuid, uuid), public.request_number_action(uuid, text),
  public.whatsapp_number_qr(uuid),
  private.reported_number(uuid), private.register_bridge(uuid, text), private.number_status(text, text, text, text),
  private.record_number_status(uuid, text, text, text, text, text), private.claim_number_command(text),
  private.finish_number_command(uuid, text, text)
  from public, anon, authenticated;
grant execute on function
  private.can_use_number(uuid), private.message_number(public.messages), private.managed_number(uuid),
  private.number_label(text),
  public.add_whatsapp_number(text, boolean), public.update_whatsapp_number(uuid, text, boolean),
  public.remove_whatsapp_number(uuid), public.assign_whatsapp_number(uuid, uuid),
  public.unassign_whatsapp_number(uuid, uuid), public.request_number_action(uuid, text),
  public.whatsapp_number_qr(uuid)
  to authenticated, service_role;
grant execute on function
  private.reported_number(uuid), private.register_bridge(uuid, text), private.number_status(text, text, text, text),
  private.record_number_status(uuid, text, text, text, text, text), private.claim_number_command(text),
  private.finish_number_command(uuid, text, text)
  to service_role;
