-- =============================================================================
-- The message state machine, enforced in the database.
--
-- User transitions (functions below, callable by authenticated, RLS applies):
--   schedule  draft -> scheduled
--   pause     scheduled | sending -> paused
--   resume    paused -> scheduled (nothing sent yet) | sending (fan-out done)
--   cancel    draft | scheduled | paused | sending -> cancelled
--   duplicate any -> a new draft with the same content and groups
-- Worker transitions (service_role only): scheduled -> sending, sending -> sent | failed.
-- sent, cancelled and failed are final. A direct `update ... set status` (supabase-js) follows
-- the same graph and rules: the trigger private.guard_message is where they live.
--
-- Every user's way into sending passes the spam guard of 20261129000400_content_rules again:
-- schedule, resume (to `scheduled` or `sending`), a direct status update, edits of a scheduled or
-- paused message, and groups or members added to a message after it was scheduled. The rate
-- limit applies to draft -> scheduled, the send-time rules to every send time a user sets. The
-- last word is the dispatcher's exit check (20261129000700_dispatch), on the rendered text.
-- A move to `cancelled`, by any path, cancels the deliveries not sent yet.
--
-- Refusals raise a distinct SQLSTATE (class WS) with the stable code in HINT:
--   WS404 message_not_found      WS409 invalid_transition   WS410 not_editable
--   WS422 scheduled_for_required WS423 scheduled_in_past    WS424 scheduled_too_far
--   WS425 no_recipients          WS409 message_sending (deleting a message being sent)
--   WS427 spam_suspected         WS429 rate_limited
-- =============================================================================

-- The send-time rules of scheduling (a minute of grace for clock skew between the client and us).
create or replace function private.check_send_time(p_at timestamptz)
returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if p_at is null then
    raise exception 'scheduled_for is required to schedule a message.'
      using errcode = 'WS422', hint = 'scheduled_for_required',
      detail = '[{"field": "scheduled_for", "message": "is required to schedule a message"}]';
  end if;
  if p_at < now() - interval '1 minute' then
    raise exception 'scheduled_for is in the past.' using errcode = 'WS423', hint = 'scheduled_in_past',
      detail = '[{"field": "scheduled_for", "message": "is in the past"}]';
  end if;
  if p_at > now() + interval '1 year' then
    raise exception 'scheduled_for is more than one year ahead.' using errcode = 'WS424', hint = 'scheduled_too_far',
      detail = '[{"field": "scheduled_for", "message": "is more than one year ahead"}]';
  end if;
end;
$$;

-- Every status change, whoever makes it (API, supabase-js, worker), must follow the graph, and
-- every way a user schedules or reschedules obeys the same send-time rules as schedule_message.
create or replace function private.guard_message()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  as_user boolean := private.acting_as_user();
  fanned_out boolean;
begin
  -- Which columns a user may write at all (not status on insert, never counters, sent_at or
  -- series links) is decided by the column grants of 20261129000200_row_level_security.
  if tg_op = 'INSERT' then
    if as_user and new.scheduled_for is not null then
      perform private.check_send_time(new.scheduled_for);
    end if;
    return new;
  end if;

  if new.status is distinct from old.status then
    if old.status in ('sent', 'cancelled', 'failed') then
      raise exception 'a % message cannot change status', old.status
        using errcode = 'WS409', hint = 'invalid_transition';
    end if;
    if not (
      (old.status = 'draft' and new.status in ('scheduled', 'cancelled'))
      or (old.status = 'scheduled' and new.status in ('paused', 'cancelled'))
      or (old.status = 'sending' and new.status in ('paused', 'cancelled'))
      or (old.status = 'paused' and new.status in ('scheduled', 'sending', 'cancelled'))
      or (not as_user and old.status = 'scheduled' and new.status = 'sending')
      or (not as_user and old.status = 'sending' and new.status in ('sent', 'failed'))
    ) then
      raise exception 'cannot move a message from % to %', old.status, new.status
        using errcode = 'WS409', hint = 'invalid_transition';
    end if;
    -- Resume goes back to `scheduled` before the fan-out and to `sending` after it: a message
    -- never sends without its deliveries.
    if old.status = 'paused' and new.status in ('scheduled', 'sending') then
      select exists (select 1 from public.deliveries d where d.message_id = new.id) into fanned_out;
      if fanned_out <> (new.status = 'sending') then
        raise exception 'a paused message % resumes to %',
          case when fanned_out then 'already fanned out' else 'not fanned out yet' end,
          case when fanned_out then 'sending' else 'scheduled' end
          using errcode = 'WS409', hint = 'invalid_transition';
      end if;
    end if;
  end if;

  if as_user and (new.content, new.scheduled_for, new.recurrence)
                 is distinct from (old.content, old.scheduled_for, old.recurrence)
     and old.status not in ('draft', 'scheduled', 'paused') then
    raise exception 'a % message can no longer be edited', old.status
      using errcode = 'WS410', hint = 'not_editable';
  end if;

  if old.status = 'draft' and new.status = 'scheduled' then
    if as_user then
      perform private.take_rate('schedule');
    end if;
    perform private.check_send_time(new.scheduled_for);
    if public.message_recipient_count(new.id) = 0 then
      raise exception 'the message''s groups reach no active contact' using errcode = 'WS425', hint = 'no_recipients';
    end if;
  elsif as_user and new.scheduled_for is distinct from old.scheduled_for
        and (new.scheduled_for is not null or new.status in ('scheduled', 'paused')) then
    -- A user setting or moving a send time follows the same rules, whatever the status (only a
    -- draft may be without one).
    perform private.check_send_time(new.scheduled_for);
  end if;
  -- The spam guard on every user's way into `scheduled` or `sending` (schedule, resume) and on
  -- edits of a message that is scheduled or paused (it will be resumed into sending).
  if as_user and (
       (new.status in ('scheduled', 'sending') and new.status is distinct from old.status)
       or (new.status in ('scheduled', 'paused')
           and (new.content, new.scheduled_for) is distinct from (old.content, old.scheduled_for))) then
    perform private.refuse_spam(new);
  end if;

  return new;
end;
$$;

create trigger messages_guard before insert or update on public.messages
  for each row execute function private.guard_message();

-- A message being sent cannot be deleted by a user (pause or cancel it first), whatever the path.
create or replace function private.guard_message_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if old.status = 'sending' and private.acting_as_user() then
    raise exception 'the message is being sent; pause or cancel it before deleting it'
      using errcode = 'WS409', hint = 'message_sending';
  end if;
  return old;
end;
$$;

create trigger messages_guard_delete before delete on public.messages
  for each row execute function private.guard_message_delete();

-- Groups of a message change only while it is still editable. The message row is share-locked so
-- a claim (which fans out from these groups) either sees the change or comes after it.
create or replace function private.guard_message_groups()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  current_status text;
begin
  if not private.acting_as_user() then
    return coalesce(new, old);
  end if;
  for current_status in
    select m.status from public.messages m
    where m.id in (new.message_id, old.message_id)
    order by m.id
    for share
  loop
    if current_status not in ('draft', 'scheduled', 'paused') then
      raise exception 'the groups of a % message can no longer be changed', current_status
        using errcode = 'WS410', hint = 'not_editable';
    end if;
  end loop;
  return coalesce(new, old);
end;
$$;

create trigger message_groups_guard before insert or update or delete on public.message_groups
  for each row execute function private.guard_message_groups();

-- Who receives a scheduled or paused message (not fanned out yet) changes when a group is added
-- to it or members to one of its groups: the spam guard runs again (duplicate_recent, the daily
-- cap), as at schedule time. One statement-level trigger per table, so a bulk insert (an import
-- adding its rows to a group) checks each message once.
create or replace function private.recheck_audiences(p_message_ids uuid[])
returns void
language plpgsql
set search_path = ''
as $$
declare
  m public.messages;
begin
  if not private.acting_as_user() then
    return;
  end if;
  for m in
    select * from public.messages msg
    where msg.id = any(p_message_ids) and msg.status in ('scheduled', 'paused')
      and not exists (select 1 from public.deliveries d where d.message_id = msg.id)
    order by msg.id
  loop
    perform private.refuse_spam(m);
  end loop;
end;
$$;

create or replace function private.recheck_message_audience()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform private.recheck_audiences(array(select distinct message_id from new_rows));
  return null;
end;
$$;

create trigger message_groups_recheck after insert on public.message_groups
  referencing new table as new_rows
  for each statement execute function private.recheck_message_audience();

create or replace function private.recheck_group_audience()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform private.recheck_audiences(array(
    select distinct mg.message_id from public.message_groups mg
    where mg.group_id in (select group_id from new_rows)));
  return null;
end;
$$;

create trigger group_contacts_recheck after insert on public.group_contacts
  referencing new table as new_rows
  for each statement execute function private.recheck_group_audience();

-- -----------------------------------------------------------------------------
-- Recipients: distinct active, not opted-out contacts across a message's groups.
-- -----------------------------------------------------------------------------
create or replace function public.message_recipient_count(p_message_id uuid)
returns integer
language sql
stable
set search_path = ''
as $$
  select count(distinct c.phone)::integer
  from public.message_groups mg
  join public.group_contacts gc on gc.group_id = mg.group_id
  join public.contacts c on c.id = gc.contact_id
  where mg.message_id = p_message_id and c.can_receive;
$$;

-- -----------------------------------------------------------------------------
-- Transitions
-- -----------------------------------------------------------------------------
create or replace function private.lock_message(p_message_id uuid)
returns public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages;
begin
  select * into m from public.messages where id = p_message_id for update;
  if not found then
    raise exception 'message % not found', p_message_id using errcode = 'WS404', hint = 'message_not_found';
  end if;
  return m;
end;
$$;

create or replace function public.schedule_message(p_message_id uuid, p_scheduled_for timestamptz default null)
returns public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages := private.lock_message(p_message_id);
begin
  if m.status <> 'draft' then
    raise exception 'only a draft can be scheduled; this message is %', m.status
      using errcode = 'WS409', hint = 'invalid_transition';
  end if;
  -- private.guard_message applies the rules: WS422 required, WS423 past, WS424 too far, WS425 no recipients.
  update public.messages set status = 'scheduled', scheduled_for = coalesce(p_scheduled_for, m.scheduled_for)
  where id = p_message_id
  returning * into m;
  return m;
end;
$$;

create or replace function public.pause_message(p_message_id uuid)
returns public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages := private.lock_message(p_message_id);
begin
  if m.status not in ('scheduled', 'sending') then
    raise exception 'only a scheduled or sending message can be paused; this message is %', m.status
      using errcode = 'WS409', hint = 'invalid_transition';
  end if;
  update public.messages set status = 'paused' where id = p_message_id returning * into m;
  return m;
end;
$$;

create or replace function public.resume_message(p_message_id uuid)
returns public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages := private.lock_message(p_message_id);
  fanned_out boolean;
begin
  if m.status <> 'paused' then
    raise exception 'only a paused message can be resumed; this message is %', m.status
      using errcode = 'WS409', hint = 'invalid_transition';
  end if;
  select exists (select 1 from public.deliveries where message_id = p_message_id) into fanned_out;
  update public.messages
  set status = case when fanned_out then 'sending' else 'scheduled' end
  where id = p_message_id
  returning * into m;
  return m;
end;
$$;

create or replace function public.cancel_message(p_message_id uuid)
returns public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages := private.lock_message(p_message_id);
begin
  if m.status not in ('draft', 'scheduled', 'paused', 'sending') then
    raise exception 'a % message cannot be cancelled', m.status
      using errcode = 'WS409', hint = 'invalid_transition';
  end if;
  -- (messages_cancel_pending cancels its deliveries not sent yet)
  update public.messages set status = 'cancelled' where id = p_message_id returning * into m;
  return m;
end;
$$;

create or replace function public.duplicate_message(p_message_id uuid)
returns public.messages
language plpgsql
set search_path = ''
as $$
declare
  m public.messages := private.lock_message(p_message_id);
  copy public.messages;
begin
  -- The copy keeps the message's WhatsApp number while the caller may still use it, and its
  -- attachment (20261206000300_media).
  insert into public.messages (created_by, content, recurrence, number_id, media_id)
  values (m.created_by, m.content, m.recurrence,
          case when private.can_use_number(m.number_id) then m.number_id end, m.media_id)
  returning * into copy;
  insert into public.message_groups (message_id, group_id, created_by)
  select copy.id, mg.group_id, mg.created_by from public.message_groups mg where mg.message_id = p_message_id;
  return copy;
end;
$$;

-- A message cancelled by any path (cancel_message, or `update ... set status = 'cancelled'` through
-- supabase-js) leaves nothing to send: its pending deliveries are cancelled in the same statement.
-- Security definer: users cannot write deliveries directly; the trigger acts only on the row the
-- caller was allowed to update.
create or replace function private.cancel_pending_deliveries()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.deliveries set state = 'cancelled', lease_expires_at = null
  where message_id = new.id and state = 'pending';
  return null;
end;
$$;

create trigger messages_cancel_pending after update of status on public.messages
  for each row when (new.status = 'cancelled' and old.status is distinct from 'cancelled')
  execute function private.cancel_pending_deliveries();

grant execute on function
  public.schedule_message(uuid, timestamptz), public.pause_message(uuid), public.resume_message(uuid),
  public.cancel_message(uuid), public.duplicate_message(uuid), public.message_recipient_count(uuid)
  to authenticated, service_role;
revoke execute on function
  public.schedule_message(uuid, timestamptz), public.pause_message(uuid), public.resume_message(uuid),
  public.cancel_message(uuid), public.duplicate_message(uuid), public.message_recipient_count(uuid)
  from anon, public;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on function public.message_recipient_count(uuid) is 'How many distinct phones the message would reach now: the members of its groups who can receive.';
comment on function public.schedule_message(uuid, timestamptz) is 'Schedule a draft (draft -> scheduled) for p_scheduled_for, else its scheduled_for; the send-time rules, the rate limit and the spam guard apply.';
comment on function public.pause_message(uuid) is 'Pause a scheduled or sending message: nothing more is sent until it is resumed.';
comment on function public.resume_message(uuid) is 'Resume a paused message: back to scheduled if nothing was fanned out yet, else to sending; the spam guard applies again.';
comment on function public.cancel_message(uuid) is 'Cancel a draft, scheduled, paused or sending message; its deliveries not sent yet are cancelled.';
comment on function public.duplicate_message(uuid) is 'A new draft with the message''s content, recurrence, groups and WhatsApp number (while the caller may still use it).';
