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
-- sent, cancelled and failed are final.
--
-- Refusals raise a distinct SQLSTATE (class WS) with the stable code in HINT:
--   WS404 message_not_found      WS409 invalid_transition   WS410 not_editable
--   WS422 scheduled_for_required WS423 scheduled_in_past    WS424 scheduled_too_far
--   WS425 no_recipients
-- =============================================================================

create or replace function private.acting_as_user()
returns boolean
language sql
stable
set search_path = ''
as $$
  select current_user in ('anon', 'authenticated');
$$;

-- Every status change, whoever makes it (API, supabase-js, worker), must follow the graph.
create or replace function private.guard_message()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  as_user boolean := private.acting_as_user();
begin
  if tg_op = 'INSERT' then
    if as_user and (new.status <> 'draft' or new.recipient_count <> 0 or new.delivered_count <> 0
                    or new.failed_count <> 0 or new.sent_at is not null or new.claimed_by is not null) then
      raise exception 'a new message starts as a draft with no deliveries'
        using errcode = 'WS409', hint = 'invalid_transition';
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
  end if;

  if as_user then
    if (new.content, new.scheduled_for, new.recurrence) is distinct from (old.content, old.scheduled_for, old.recurrence)
       and old.status not in ('draft', 'scheduled', 'paused') then
      raise exception 'a % message can no longer be edited', old.status
        using errcode = 'WS410', hint = 'not_editable';
    end if;
    -- Counters, send times and leases belong to the worker.
    new.recipient_count := old.recipient_count;
    new.delivered_count := old.delivered_count;
    new.failed_count := old.failed_count;
    new.sent_at := old.sent_at;
    new.claimed_by := old.claimed_by;
    new.lease_expires_at := old.lease_expires_at;
  end if;
  return new;
end;
$$;

create trigger messages_guard before insert or update on public.messages
  for each row execute function private.guard_message();

-- Groups of a message change only while it is still editable.
create or replace function private.guard_message_groups()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  current_status text;
begin
  select status into current_status from public.messages
  where id = coalesce(new.message_id, old.message_id);
  if current_status is not null and current_status not in ('draft', 'scheduled', 'paused')
     and private.acting_as_user() then
    raise exception 'the groups of a % message can no longer be changed', current_status
      using errcode = 'WS410', hint = 'not_editable';
  end if;
  return coalesce(new, old);
end;
$$;

create trigger message_groups_guard before insert or delete on public.message_groups
  for each row execute function private.guard_message_groups();

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
  where mg.message_id = p_message_id and c.is_active and c.opted_out_at is null;
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
  at timestamptz := coalesce(p_scheduled_for, m.scheduled_for);
begin
  if m.status <> 'draft' then
    raise exception 'only a draft can be scheduled; this message is %', m.status
      using errcode = 'WS409', hint = 'invalid_transition';
  end if;
  if at is null then
    raise exception 'scheduled_for is required to schedule a message'
      using errcode = 'WS422', hint = 'scheduled_for_required';
  end if;
  -- A minute of grace for clock skew between the client and us.
  if at < now() - interval '1 minute' then
    raise exception 'scheduled_for is in the past' using errcode = 'WS423', hint = 'scheduled_in_past';
  end if;
  if at > now() + interval '1 year' then
    raise exception 'scheduled_for is more than one year ahead' using errcode = 'WS424', hint = 'scheduled_too_far';
  end if;
  if public.message_recipient_count(p_message_id) = 0 then
    raise exception 'the message''s groups reach no active contact' using errcode = 'WS425', hint = 'no_recipients';
  end if;
  update public.messages set status = 'scheduled', scheduled_for = at
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
  set status = case when fanned_out then 'sending' else 'scheduled' end,
      -- A resumed message is picked up by any worker at once.
      lease_expires_at = null, claimed_by = null
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
  update public.messages set status = 'cancelled' where id = p_message_id returning * into m;
  perform private.cancel_pending_deliveries(p_message_id);
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
  insert into public.messages (created_by, content, recurrence)
  values (m.created_by, m.content, m.recurrence)
  returning * into copy;
  insert into public.message_groups (message_id, group_id, created_by)
  select copy.id, mg.group_id, mg.created_by from public.message_groups mg where mg.message_id = p_message_id;
  return copy;
end;
$$;

-- Pending deliveries of a cancelled message are cancelled in one statement (security definer:
-- users cannot write deliveries directly).
create or replace function private.cancel_pending_deliveries(p_message_id uuid)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  n integer;
begin
  update public.deliveries set state = 'cancelled'
  where message_id = p_message_id and state = 'pending'
    and exists (select 1 from public.messages where id = p_message_id and status = 'cancelled');
  get diagnostics n = row_count;
  return n;
end;
$$;

revoke all on function private.cancel_pending_deliveries(uuid) from public;
grant execute on function private.cancel_pending_deliveries(uuid) to authenticated, service_role;
grant execute on function
  public.schedule_message(uuid, timestamptz), public.pause_message(uuid), public.resume_message(uuid),
  public.cancel_message(uuid), public.duplicate_message(uuid), public.message_recipient_count(uuid)
  to authenticated, service_role;
revoke execute on function
  public.schedule_message(uuid, timestamptz), public.pause_message(uuid), public.resume_message(uuid),
  public.cancel_message(uuid), public.duplicate_message(uuid), public.message_recipient_count(uuid)
  from anon, public;
