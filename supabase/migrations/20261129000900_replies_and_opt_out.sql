-- =============================================================================
-- Replies and automatic opt-out. A reply belongs to the number it reached, and so to the users
-- who wrote to that phone from it; a keyword acts on the contacts of the users it concerns.
--
--   public.replies.number_id   the WhatsApp number a reply reached (the bridge that received it)
--   public.reply_kind          what a whole message means: opt_out, opt_in or reply
--   private.opt_out_scope      the users whose contacts a keyword that reached a number acts on
--   private.record_reply       one incoming WhatsApp message: stored for the users who wrote to
--                              the sender from that number lately, and opt-out/opt-in applied
--                              to the contacts with the sender's phone in the number's scope
--                              (an opt-out is also a health fact of the number it reached:
--                              20261129000650_whatsapp_numbers)
--   private.judge_unanswered   a health fact when most first messages to new contacts got no reply
--   private.skip_opted_out     deliveries not yet sent to an opted-out phone are skipped
--                              (last_error_code `opted_out`); the dispatcher's claim skips
--                              them too, in the statement that would mark them sending
--   reply_received             the realtime event of each stored reply
--
-- Who keeps a reply: each user with a row in private.send_ledger for that phone from the number
-- the reply reached (a delivery the dispatcher marked sending from it) at most
-- private.settings.reply_window_days days (REPLY_WINDOW_DAYS, 30) before the reply arrived;
-- nobody else, whether or not they have the phone as a contact, so adding a phone never shows
-- answers to someone else's campaign, and a reply to one number is not shown to the users who
-- wrote to that phone only from another. The ledger outlives deleted messages. Each copy names
-- that user's contact with the phone (null if none) and that user's last message to it from that
-- number (null if it was deleted since). From a sender nobody wrote to from that number, no reply
-- is kept (a keyword still acts, as below).
--
-- What a keyword does, and for whom (private.opt_out_scope): an opt-out keyword opts out the
-- contacts with that phone (and skips their unsent deliveries) of
--   * every user, when users do not add their own numbers (self_service_numbers off): they all
--     share the deployment's numbers, and a recipient who blocks or reports one harms them all;
--   * with self-service numbers, when it reached a user's own number: that owner and the users
--     assigned to any of the owner's numbers (one business's STOP never silences another's
--     customers); when it reached one of the deployment's numbers: every user, as above.
-- Each owner whose contact it opted out gets a warning notification. An opt-in keyword lifts, for
-- the same users, the opt-outs that a keyword made; one set by hand stays until its owner lifts it.
--
-- The matching rule: the whole message, lowercased, without accents and with every
-- character that is not a letter or a digit turned into a space (spaces collapsed,
-- trimmed), must equal a keyword treated the same way. "STOP", "Stop!!", " baja. " and
-- "No más" match; "¿stop de qué?" is a reply, not an opt-out.
-- =============================================================================

-- The number a reply reached (null: it reached a number since removed).
alter table public.replies
  add column number_id uuid references public.whatsapp_numbers (id) on delete set null;
-- Replies from a phone to a number (private.judge_unanswered), and the foreign key.
create index replies_number_id_phone_idx on public.replies (number_id, phone, received_at);

-- Lowercase, accents removed, non-alphanumerics as single spaces, trimmed.
create or replace function private.keyword_form(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select btrim(regexp_replace(
    translate(lower(normalize(p_text, nfc)),
              'áàâäãåéèêëíìîïóòôöõúùûüýÿñç',
              'aaaaaaeeeeiiiiooooouuuuyync'),
    '[^[:alnum:]]+', ' ', 'g'));
$$;

create or replace function public.reply_kind(p_text text)
returns text
language sql
stable
set search_path = ''
as $$
  select case
    when private.keyword_form(p_text) = any (
      select private.keyword_form(k) from unnest(s.opt_out_keywords) as k) then 'opt_out'
    when private.keyword_form(p_text) = any (
      select private.keyword_form(k) from unnest(s.opt_in_keywords) as k) then 'opt_in'
    else 'reply'
  end
  from private.current_settings() s;
$$;

-- Deliveries of these owners' messages to this phone that are not sent yet never will be.
create or replace function private.skip_opted_out(p_phone text, p_owners uuid[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  n integer;
begin
  perform private.lock_messages_of(array(
    select d.id from public.deliveries d
    where d.phone = p_phone and d.created_by = any(p_owners) and d.state = 'pending'));
  update public.deliveries d
  set state = 'skipped', last_error_code = 'opted_out',
      last_error = 'The recipient asked not to be messaged', lease_expires_at = null
  where d.phone = p_phone and d.created_by = any(p_owners) and d.state = 'pending';
  get diagnostics n = row_count;
  return n;
end;
$$;

-- The users whose contacts a keyword that reached this number acts on; null means every user.
create or replace function private.opt_out_scope(p_number_id uuid)
returns uuid[]
language sql
stable
security definer
set search_path = ''
as $$
  select case when s.self_service_numbers and n.owner_id is not null then
    array(select n.owner_id
          union
          select u.user_id from public.whatsapp_number_users u
          join public.whatsapp_numbers o on o.id = u.number_id
          where o.owner_id = n.owner_id)
  end
  from private.current_settings() s
  left join public.whatsapp_numbers n on n.id = p_number_id;
$$;

-- One incoming message to a number (null: the default number, for a bridge that knows nothing of
-- numbers). Returns how many users kept it (0: nobody wrote to the sender from that number within
-- the window, and no reply was stored). A repeated WhatsApp message id stores nothing new, and its
-- keyword finds the contacts already opted out (or in).
create or replace function private.record_reply(
  p_phone text, p_text text, p_whatsapp_message_id text, p_received_at timestamptz,
  p_number_id uuid default null
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  kind text := public.reply_kind(p_text);
  keyword text := left(btrim(p_text), 100);
  received timestamptz := coalesce(p_received_at, now());
  since timestamptz := received - make_interval(days => (select s.reply_window_days from private.current_settings() s));
  reached uuid := coalesce(p_number_id, (select n.id from public.whatsapp_numbers n where n.is_default));
  -- The ledger's names for that number: its id, and 'default' for sends claimed without one.
  senders text[] := array[reached::text]
    || case when exists (select 1 from public.whatsapp_numbers n where n.id = reached and n.is_default)
            then array['default'] else '{}'::text[] end;
  scope uuid[] := private.opt_out_scope(reached);
  kept integer;
  contact record;
begin
  -- The writers of the window from that number, each with their latest send to this phone.
  with writers as (
    select distinct on (l.created_by) l.created_by, l.message_id
    from private.send_ledger l
    where l.phone = p_phone and l.at >= since and l.sender = any(senders)
    order by l.created_by, l.at desc, l.id desc
  ),
  stored as (
    insert into public.replies (created_by, contact_id, phone, text, kind, message_id, whatsapp_message_id,
                                received_at, number_id)
    select
      w.created_by,
      (select c.id from public.contacts c where c.created_by = w.created_by and c.phone = p_phone),
      p_phone, left(p_text, 4096), kind,
      (select m.id from public.messages m where m.id = w.message_id),
      p_whatsapp_message_id, received, reached
    from writers w
    on conflict (created_by, whatsapp_message_id) do nothing
    returning 1
  )
  select count(*) into kept from stored;

  if kind = 'opt_out' then
    for contact in
      update public.contacts c
      set opted_out_at = received, opted_out_keyword = keyword
      where c.phone = p_phone and c.opted_out_at is null
        and (scope is null or c.created_by = any(scope))
      returning c.id, c.created_by, c.name
    loop
      insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)
      values (contact.created_by, 'warning', 'Contacto dado de baja',
              format('%s (%s) escribió "%s" y no recibirá más mensajes.', contact.name, p_phone, keyword),
              'contact', contact.id);
    end loop;
    -- (contacts_skip_after_opt_out skips their unsent deliveries, as for an opt-out by hand)
    -- A health fact of the number it reached, once per WhatsApp message (a repeat keeps nothing
    -- new) and only from someone it wrote to.
    if kept > 0 and reached is not null then
      insert into private.number_health_events (number_id, kind, weight, evidence)
      values (reached, 'opt_out', private.health_weight('opt_out'),
              jsonb_build_object('phone', p_phone, 'keyword', keyword));
    end if;
  elsif kind = 'opt_in' then
    update public.contacts c
    set opted_out_at = null, opted_out_keyword = null
    where c.phone = p_phone and c.opted_out_at is not null
      and c.opted_out_keyword is not null  -- a hand-made opt-out is the owner's to lift
      and (scope is null or c.created_by = any(scope));
  end if;
  return kept;
end;
$$;

-- Silence as a health fact. A number's first message to a phone is its first send to it in the
-- ledger, to a phone whose replies had never reached it; it is unanswered while no reply from
-- that phone reached the number after it. Over the first messages sent in the 24 hours that end
-- health_unanswered_wait_hours ago (each has had that long to be answered): at least
-- health_unanswered_min of them, health_unanswered_share or more unanswered, is one `unanswered`
-- fact (the counts as evidence), at most one an hour per number. Paused, blocked and stopped
-- numbers are left alone. The workers call it every few minutes; returns the numbers given a fact.
create or replace function private.judge_unanswered()
returns setof uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  cfg private.settings := private.current_settings();
  until_at timestamptz := now() - make_interval(secs => cfg.health_unanswered_wait_hours * 3600);
begin
  -- Two workers judging at once would count the same hour twice.
  perform pg_advisory_xact_lock(hashtext('private.judge_unanswered'));
  return query
  with firsts as (
    select n.id as number_id, l.phone,
           not exists (select 1 from public.replies r
                       where r.number_id = n.id and r.phone = l.phone and r.received_at >= l.at) as unanswered
    from public.whatsapp_numbers n
    join private.send_ledger l on l.sender = n.id::text
      and l.at >= until_at - interval '24 hours' and l.at < until_at
    where n.status not in ('paused', 'blocked', 'stopped')
      and not exists (select 1 from private.number_health_events e
                      where e.number_id = n.id and e.kind = 'unanswered' and e.at > now() - interval '1 hour')
      and not exists (select 1 from private.send_ledger p
                      where p.sender = l.sender and p.phone = l.phone and (p.at, p.id) < (l.at, l.id))
      and not exists (select 1 from public.replies r
                      where r.number_id = n.id and r.phone = l.phone and r.received_at < l.at)
  ), judged as (
    select f.number_id, count(*) as first_messages, count(*) filter (where f.unanswered) as unanswered
    from firsts f group by f.number_id
  )
  insert into private.number_health_events (number_id, kind, weight, evidence)
  select j.number_id, 'unanswered', private.health_weight('unanswered'),
         jsonb_build_object('first_messages', j.first_messages, 'unanswered', j.unanswered,
                            'share', round(j.unanswered::numeric / j.first_messages, 2))
  from judged j
  where j.first_messages >= cfg.health_unanswered_min
    and j.unanswered >= cfg.health_unanswered_share * j.first_messages
  returning number_id;
end;
$$;

revoke all on function
  private.skip_opted_out(text, uuid[]), private.record_reply(text, text, text, timestamptz, uuid),
  private.opt_out_scope(uuid), private.judge_unanswered()
  from public, anon, authenticated;
grant execute on function
  private.skip_opted_out(text, uuid[]), private.record_reply(text, text, text, timestamptz, uuid),
  private.opt_out_scope(uuid), private.judge_unanswered()
  to service_role;
grant execute on function public.reply_kind(text) to authenticated, service_role;
revoke execute on function public.reply_kind(text) from anon, public;

-- A contact whose opt-out is lifted by hand loses the keyword that caused it.
create or replace function private.forget_opt_out_keyword()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.opted_out_at is null then
    new.opted_out_keyword := null;
  end if;
  return new;
end;
$$;

create trigger contacts_forget_opt_out_keyword before update of opted_out_at on public.contacts
  for each row execute function private.forget_opt_out_keyword();

-- An opt-out set by hand (API or supabase-js) skips what was not sent yet, like one by reply.
create or replace function private.skip_after_opt_out()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  c record;
begin
  for c in
    select n.phone, n.created_by from new_rows n join old_rows o on o.id = n.id
    where n.opted_out_at is not null and o.opted_out_at is null
  loop
    perform private.skip_opted_out(c.phone, array[c.created_by]);
  end loop;
  return null;
end;
$$;

create trigger contacts_skip_after_opt_out after update on public.contacts
  referencing old table as old_rows new table as new_rows
  for each statement execute function private.skip_after_opt_out();

-- reply_received on the owner's topic, as every other event.
create or replace function private.emit_reply_event()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.broadcast(
    jsonb_build_object(
      'type', 'reply_received',
      'reply', jsonb_build_object(
        'id', new.id,
        'contact_id', new.contact_id,
        'phone', new.phone,
        'text', new.text,
        'kind', new.kind,
        'message_id', new.message_id,
        'received_at', private.utc_iso(new.received_at)
      )
    ),
    'reply_received', 'user:' || new.created_by::text
  );
  return null;
end;
$$;

create trigger replies_emit_event after insert on public.replies
  for each row execute function private.emit_reply_event();

revoke all on function private.emit_reply_event() from public, anon, authenticated;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on column public.replies.number_id is 'The WhatsApp number the reply reached; null: a number since removed.';
comment on function public.reply_kind(text) is 'What a whole message means: opt_out or opt_in when it equals a keyword (ignoring case, accents and punctuation), else reply.';
