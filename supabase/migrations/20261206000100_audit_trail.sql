-- =============================================================================
-- The audit trail: one append-only row per critical action, written by the database whichever
-- path made the change (the API, supabase-js, the worker), so no caller can skip or forge it.
--
--   public.audit_log             the entries; users read their own, admins all, users write none
--   private.request_origin()     the caller's IP and user agent from request.headers (PostgREST
--                                passes them; the API sets the same in each transaction)
--   private.write_audit(...)     the one insert every writer below goes through (owner only)
--   triggers                     table changes: message create, edit, delete, schedule, pause,
--                                resume, cancel; contact and group delete; role changes; an
--                                opt-out lifted by hand
--   private.record_audit(...)    actions that change no table (login, logout, signup, an import
--                                finished, reads of everyone's data, exports): service_role only
--
-- Action names (entity_type in brackets):
--   message.create | message.update | message.delete | message.schedule | message.pause |
--   message.resume | message.cancel [message]; contact.delete | contact.opt_out_lifted [contact];
--   group.delete [group]; profile.role_change [profile]; whatsapp_number.add | .update | .remove |
--   .assign | .unassign | .start | .stop | .restart | .logout | .pause (by health, no actor) |
--   .resume [whatsapp_number]; and, through
--   record_audit, the API's
--   login_success | login_failure | logout | signup | refresh_token_reuse_detected [user],
--   contacts.import [contact], report.export [report], message.read_all | contact.read_all |
--   group.read_all | analytics.read_all.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- audit_log: append-only
-- -----------------------------------------------------------------------------

create table public.audit_log (
  id bigint generated always as identity primary key,
  actor_id uuid references auth.users (id) on delete set null,
  action text not null check (char_length(action) between 1 and 100),
  entity_type text,
  entity_id text,
  ip inet,
  user_agent text check (user_agent is null or char_length(user_agent) <= 500),
  details jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);

create index audit_log_actor_id_created_at_idx on public.audit_log (actor_id, created_at desc);

create or replace function private.audit_log_is_append_only()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- Nobody acting as a user (through the API or supabase-js) may rewrite history.
  if private.acting_as_user() then
    raise exception 'the audit log is append-only' using errcode = '42501';
  end if;
  return coalesce(new, old);
end;
$$;

create trigger audit_log_append_only before update or delete on public.audit_log
  for each row execute function private.audit_log_is_append_only();

-- -----------------------------------------------------------------------------
-- Who may read and write it: users read their own entries, admins all; only the writers below
-- (security definer, as the table's owner) add any. The defaults of a new table (Supabase grants
-- `all`) are taken back first.
-- -----------------------------------------------------------------------------

alter table public.audit_log enable row level security;

revoke all on public.audit_log from anon, authenticated, service_role;
revoke all on sequence public.audit_log_id_seq from anon, authenticated, service_role;
grant select on public.audit_log to authenticated, service_role;

create policy "audit_log: read own or admin" on public.audit_log
  for select to authenticated
  using (actor_id = (select auth.uid()) or (select private.is_admin()));

-- -----------------------------------------------------------------------------
-- The request's origin
-- -----------------------------------------------------------------------------

-- Invalid text is no address (a header says what the client or a proxy wrote, nothing more).
create or replace function private.to_inet(p_text text)
returns inet
language plpgsql
immutable
set search_path = ''
as $$
begin
  return nullif(btrim(p_text), '')::inet;
exception when invalid_text_representation then
  return null;
end;
$$;

-- PostgREST exposes the request's headers as JSON with lowercased names; the API sets the same,
-- with the client IP as it resolved it (trusted proxies). Nulls when the caller has none (the
-- worker, a migration), and for headers that do not parse.
create or replace function private.request_origin(out ip inet, out user_agent text)
language plpgsql
stable
set search_path = ''
as $$
declare
  headers jsonb;
begin
  begin
    headers := nullif(current_setting('request.headers', true), '')::jsonb;
  exception when invalid_text_representation then
    return;
  end;
  if jsonb_typeof(headers) is distinct from 'object' then
    return;
  end if;
  -- x-forwarded-for starts with the client (as it or the first proxy wrote it: a record, not proof).
  ip := coalesce(
    private.to_inet(split_part(headers ->> 'x-forwarded-for', ',', 1)),
    private.to_inet(headers ->> 'x-real-ip')
  );
  user_agent := left(nullif(headers ->> 'user-agent', ''), 500);
end;
$$;

-- -----------------------------------------------------------------------------
-- The writer: one entry per entity id, the actor given, the origin from the request. Security
-- invoker and executable by its owner only: a user calling it has no insert right on the log.
-- -----------------------------------------------------------------------------
create or replace function private.write_audit(
  p_actor_id uuid,
  p_action text,
  p_entity_type text,
  p_entity_ids text[],
  p_details jsonb[]
)
returns void
language sql
set search_path = ''
as $$
  insert into public.audit_log (actor_id, action, entity_type, entity_id, ip, user_agent, details)
  select p_actor_id, p_action, p_entity_type, e.id, o.ip, o.user_agent, coalesce(e.details, '{}'::jsonb)
  from unnest(p_entity_ids, p_details) as e (id, details)
  cross join private.request_origin() as o;
$$;

revoke all on function private.write_audit(uuid, text, text, text[], jsonb[]) from public;

-- -----------------------------------------------------------------------------
-- Rows created or deleted: one entry per row, in one statement however many rows it touched.
-- tg_argv: the action, the entity type, then the columns the entry's details keep (the row's
-- owner is always kept: an admin may act on anyone's rows, the worker on its own).
-- -----------------------------------------------------------------------------
create or replace function private.audit_rows()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  affected jsonb[];
  ids text[];
  details jsonb[];
begin
  if tg_op = 'INSERT' then
    select array_agg(to_jsonb(n)) into affected from new_rows n;
  else
    -- A removed account takes its rows with it: that is not an action on each of them.
    select array_agg(to_jsonb(o)) into affected
    from old_rows o
    where exists (select 1 from auth.users u where u.id = o.created_by);
  end if;
  select array_agg(r ->> 'id'),
         array_agg(jsonb_strip_nulls(
           jsonb_build_object('owner', r -> 'created_by')
           || (select coalesce(jsonb_object_agg(k, r -> k), '{}'::jsonb) from unnest(tg_argv[2:]) k)))
  into ids, details
  from unnest(affected) r;
  perform private.write_audit((select auth.uid()), tg_argv[0], tg_argv[1], ids, details);
  return null;
end;
$$;

create trigger messages_audit_create after insert on public.messages
  referencing new table as new_rows
  for each statement execute function
    private.audit_rows('message.create', 'message', 'status', 'scheduled_for', 'recurrence_parent_id');
create trigger messages_audit_delete after delete on public.messages
  referencing old table as old_rows
  for each statement execute function private.audit_rows('message.delete', 'message', 'status');
create trigger contacts_audit_delete after delete on public.contacts
  referencing old table as old_rows
  for each statement execute function private.audit_rows('contact.delete', 'contact');
create trigger groups_audit_delete after delete on public.groups
  referencing old table as old_rows
  for each statement execute function
    private.audit_rows('group.delete', 'group', 'name', 'contact_count');

-- -----------------------------------------------------------------------------
-- A message edited or moved by a user's verb. One entry per change: a transition that also sets
-- a field (schedule with a new time) is the transition, with the fields in its details. The
-- worker's own steps (scheduled -> sending -> sent | failed) are not critical actions, and the
-- trigger's WHEN keeps them (and every counter update) from reaching the function at all.
-- -----------------------------------------------------------------------------
create or replace function private.audit_message_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  fields text[] := array_remove(array[
    case when new.content is distinct from old.content then 'content' end,
    case when new.scheduled_for is distinct from old.scheduled_for then 'scheduled_for' end,
    case when new.recurrence is distinct from old.recurrence then 'recurrence' end
  ], null);
  verb text := case
    when new.status is not distinct from old.status then 'update'
    when new.status = 'cancelled' then 'cancel'
    when new.status = 'paused' then 'pause'
    when old.status = 'paused' then 'resume'
    when new.status = 'scheduled' then 'schedule'
    else 'update'
  end;
  details jsonb := jsonb_build_object('owner', new.created_by, 'from', old.status, 'to', new.status);
begin
  if cardinality(fields) > 0 then
    details := details || jsonb_build_object('fields', to_jsonb(fields));
  end if;
  if new.scheduled_for is distinct from old.scheduled_for then
    details := details || jsonb_build_object(
      'scheduled_for', jsonb_build_object('from', old.scheduled_for, 'to', new.scheduled_for));
  end if;
  if new.recurrence is distinct from old.recurrence then
    details := details || jsonb_build_object(
      'recurrence', jsonb_build_object('from', old.recurrence, 'to', new.recurrence));
  end if;
  perform private.write_audit(
    (select auth.uid()), 'message.' || verb, 'message', array[new.id::text], array[details]);
  return null;
end;
$$;

create trigger messages_audit_change
  after update of status, content, scheduled_for, recurrence on public.messages
  for each row
  when (
    (new.content, new.scheduled_for, new.recurrence)
      is distinct from (old.content, old.scheduled_for, old.recurrence)
    or (new.status is distinct from old.status
        and (new.status in ('scheduled', 'paused', 'cancelled') or old.status = 'paused'))
  )
  execute function private.audit_message_change();

-- -----------------------------------------------------------------------------
-- An opt-out lifted by a user (the contact asked not to be messaged; someone decided otherwise).
-- The service lifting it on the contact's own opt-in reply is not by hand.
-- -----------------------------------------------------------------------------
create or replace function private.audit_opt_out_lifted()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.write_audit(
    (select auth.uid()), 'contact.opt_out_lifted', 'contact', array[new.id::text],
    array[jsonb_strip_nulls(jsonb_build_object(
      'owner', new.created_by, 'opted_out_at', old.opted_out_at, 'keyword', old.opted_out_keyword))]
  );
  return null;
end;
$$;

-- acting_as_user() in the WHEN runs as the caller (inside the definer function it would not).
create trigger contacts_audit_opt_out_lifted after update of opted_out_at on public.contacts
  for each row
  when (old.opted_out_at is not null and new.opted_out_at is null and private.acting_as_user())
  execute function private.audit_opt_out_lifted();

-- -----------------------------------------------------------------------------
-- Role changes, by an admin or the service (private.protect_profile_role refuses anyone else).
-- -----------------------------------------------------------------------------
create or replace function private.audit_role_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.write_audit(
    (select auth.uid()), 'profile.role_change', 'profile', array[new.id::text],
    array[jsonb_build_object('from', old.role, 'to', new.role)]
  );
  return null;
end;
$$;

create trigger profiles_audit_role_change after update of role on public.profiles
  for each row when (new.role is distinct from old.role)
  execute function private.audit_role_change();

-- -----------------------------------------------------------------------------
-- WhatsApp numbers (20261129000650_whatsapp_numbers): added, changed, removed, assigned and
-- unassigned, each command requested (start, stop, restart, logout), a pause by health (the
-- database's decision: no actor, its reason) and a resume. What the bridges report (status,
-- phone) is not an action. Rows that go with a removed account or number are not either.
-- -----------------------------------------------------------------------------
create or replace function private.audit_whatsapp_number()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  action text;
  number_id uuid;
  details jsonb;
begin
  if tg_table_name = 'whatsapp_numbers' then
    number_id := coalesce(new.id, old.id);
    if tg_op = 'INSERT' then
      action := 'add';
      details := jsonb_build_object('label', new.label, 'shared', new.shared, 'owner', new.owner_id);
    elsif tg_op = 'UPDATE' and new.health_reset_at is distinct from old.health_reset_at then
      action := 'resume';
      details := jsonb_build_object('status', new.status, 'ramp_until', new.ramp_until);
    elsif tg_op = 'UPDATE' and new.status = 'paused' and old.status <> 'paused' then
      action := 'pause';
      details := jsonb_build_object('from', old.status, 'reason', new.last_error);
    elsif tg_op = 'UPDATE' then
      action := 'update';
      details := jsonb_build_object(
        'from', jsonb_build_object('label', old.label, 'shared', old.shared),
        'to', jsonb_build_object('label', new.label, 'shared', new.shared));
    else
      if old.owner_id is not null and not exists (select 1 from auth.users u where u.id = old.owner_id) then
        return null;
      end if;
      action := 'remove';
      details := jsonb_build_object('label', old.label, 'phone', old.phone, 'owner', old.owner_id);
    end if;
  elsif tg_table_name = 'whatsapp_number_users' then
    number_id := coalesce(new.number_id, old.number_id);
    if tg_op = 'DELETE' and (
         not exists (select 1 from public.whatsapp_numbers n where n.id = old.number_id)
         or not exists (select 1 from auth.users u where u.id = old.user_id)) then
      return null;
    end if;
    action := case when tg_op = 'INSERT' then 'assign' else 'unassign' end;
    details := jsonb_build_object('user_id', coalesce(new.user_id, old.user_id));
  else
    number_id := new.number_id;
    action := new.action;
    -- An automatic restart (the watch's) has no actor and says why.
    details := jsonb_build_object('command_id', new.id, 'reason', new.reason);
  end if;
  perform private.write_audit(
    (select auth.uid()), 'whatsapp_number.' || action, 'whatsapp_number', array[number_id::text],
    array[jsonb_strip_nulls(details)]);
  return null;
end;
$$;

create trigger whatsapp_numbers_audit after insert or delete on public.whatsapp_numbers
  for each row execute function private.audit_whatsapp_number();
create trigger whatsapp_numbers_audit_change after update of label, shared on public.whatsapp_numbers
  for each row when ((new.label, new.shared) is distinct from (old.label, old.shared))
  execute function private.audit_whatsapp_number();
create trigger whatsapp_numbers_audit_health after update of status, health_reset_at on public.whatsapp_numbers
  for each row when (new.health_reset_at is distinct from old.health_reset_at
                     or (new.status = 'paused' and old.status <> 'paused'))
  execute function private.audit_whatsapp_number();
create trigger whatsapp_number_users_audit after insert or delete on public.whatsapp_number_users
  for each row execute function private.audit_whatsapp_number();
create trigger whatsapp_number_commands_audit after insert on public.whatsapp_number_commands
  for each row execute function private.audit_whatsapp_number();

-- -----------------------------------------------------------------------------
-- Actions that change no table: the API records them as the service (in the user's own
-- transaction where there is one, so the entry commits with the work). Users cannot call it.
-- -----------------------------------------------------------------------------
create or replace function private.record_audit(
  p_action text,
  p_actor_id uuid,
  p_entity_type text default null,
  p_entity_id text default null,
  p_details jsonb default '{}'::jsonb
)
returns void
language sql
security definer
set search_path = ''
as $$
  select private.write_audit(
    p_actor_id, p_action, p_entity_type, array[p_entity_id], array[coalesce(p_details, '{}'::jsonb)]);
$$;

revoke all on function private.record_audit(text, uuid, text, text, jsonb) from public;
grant execute on function private.record_audit(text, uuid, text, text, jsonb) to service_role;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on table public.audit_log is 'The audit trail: one append-only row per critical action, written by the database whichever path made the change; users read their own entries, admins all.';
comment on column public.audit_log.actor_id is 'Who did it; null: the database itself (such as a health pause), or a user since deleted.';
comment on column public.audit_log.action is 'What was done, such as message.schedule or login_success (the list in this migration''s header).';
comment on column public.audit_log.entity_type is 'The kind of thing acted on: message, contact, group, profile, whatsapp_number, webhook, user or report.';
comment on column public.audit_log.entity_id is 'The id of the thing acted on, as text.';
comment on column public.audit_log.ip is 'The caller''s IP address, from the request''s headers.';
comment on column public.audit_log.user_agent is 'The caller''s user agent, from the request''s headers.';
comment on column public.audit_log.details is 'What changed, or what else the action is worth recording with, as JSON.';
