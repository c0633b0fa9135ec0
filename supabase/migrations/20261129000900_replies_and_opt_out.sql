-- =============================================================================
-- Replies and automatic opt-out. A reply belongs to whoever wrote to that phone; an opt-out
-- belongs to the number, which every user of the deployment shares.
--
--   public.reply_kind          what a whole message means: opt_out, opt_in or reply
--   private.record_reply       one incoming WhatsApp message: stored for the users who wrote to
--                              the sender lately, and opt-out/opt-in applied to every contact
--                              with the sender's phone
--                              (an opt-out is also a health fact of the number it answered:
--                              20261129000650_whatsapp_numbers)
--   private.skip_opted_out     deliveries not yet sent to an opted-out phone are skipped
--                              (last_error_code `opted_out`); the dispatcher's claim skips
--                              them too, in the statement that would mark them sending
--   reply_received             the realtime event of each stored reply
--
-- Who keeps a reply: each user with a row in private.send_ledger for that phone (a delivery the
-- dispatcher marked sending) at most private.settings.reply_window_days days (REPLY_WINDOW_DAYS,
-- 30) before the reply arrived; nobody else, whether or not they have the phone as a contact, so
-- adding a phone never shows answers to someone else's campaign. The ledger outlives deleted
-- messages. Each copy names that user's contact with the phone (null if none) and that user's
-- last message to it (null if it was deleted since). From a sender nobody wrote to, no reply is
-- kept (a keyword still acts, as below).
--
-- What a keyword does, for everyone: an opt-out keyword opts out every user's contact with that
-- phone (and skips their unsent deliveries), since a recipient who blocks or reports the shared
-- number harms all users; each owner whose contact it opted out gets a warning notification. An
-- opt-in keyword lifts, just as widely, the opt-outs that a keyword made; one set by hand stays
-- until its owner lifts it.
--
-- The matching rule: the whole message, lowercased, without accents and with every
-- character that is not a letter or a digit turned into a space (spaces collapsed,
-- trimmed), must equal a keyword treated the same way. "STOP", "Stop!!", " baja. " and
-- "No más" match; "¿stop de qué?" is a reply, not an opt-out.
-- =============================================================================

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

-- One incoming message. Returns how many users kept it (0: nobody wrote to the sender within
-- the window, and no reply was stored). A repeated WhatsApp message id stores nothing new, and
-- its keyword finds the contacts already opted out (or in).
create or replace function private.record_reply(
  p_phone text, p_text text, p_whatsapp_message_id text, p_received_at timestamptz
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
  kept integer;
  contact record;
begin
  -- The writers of the window, each with their latest send to this phone.
  with writers as (
    select distinct on (l.created_by) l.created_by, l.message_id
    from private.send_ledger l
    where l.phone = p_phone and l.at >= since
    order by l.created_by, l.at desc, l.id desc
  ),
  stored as (
    insert into public.replies (created_by, contact_id, phone, text, kind, message_id, whatsapp_message_id, received_at)
    select
      w.created_by,
      (select c.id from public.contacts c where c.created_by = w.created_by and c.phone = p_phone),
      p_phone, left(p_text, 4096), kind,
      (select m.id from public.messages m where m.id = w.message_id),
      p_whatsapp_message_id, received
    from writers w
    on conflict (created_by, whatsapp_message_id) do nothing
    returning 1
  )
  select count(*) into kept from stored;

  -- Keywords act on the shared number: every user's contact with this phone.
  if kind = 'opt_out' then
    for contact in
      update public.contacts c
      set opted_out_at = received, opted_out_keyword = keyword
      where c.phone = p_phone and c.opted_out_at is null
      returning c.id, c.created_by, c.name
    loop
      insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)
      values (contact.created_by, 'warning', 'Contacto dado de baja',
              format('%s (%s) escribió "%s" y no recibirá más mensajes.', contact.name, p_phone, keyword),
              'contact', contact.id);
    end loop;
    -- (contacts_skip_after_opt_out skips their unsent deliveries, as for an opt-out by hand)
    -- A health fact of each number the writers' last message to this phone left from (once per
    -- WhatsApp message: a repeat keeps nothing new).
    if kept > 0 then
      insert into private.number_health_events (number_id, kind, weight, evidence)
      select n.id, 'opt_out', private.health_weight('opt_out'), jsonb_build_object('phone', p_phone, 'keyword', keyword)
      from public.whatsapp_numbers n
      where n.id::text in (
        select distinct on (l.created_by) l.sender from private.send_ledger l
        where l.phone = p_phone and l.at >= since
        order by l.created_by, l.at desc, l.id desc);
    end if;
  elsif kind = 'opt_in' then
    update public.contacts c
    set opted_out_at = null, opted_out_keyword = null
    where c.phone = p_phone and c.opted_out_at is not null
      and c.opted_out_keyword is not null;  -- a hand-made opt-out is the owner's to lift
  end if;
  return kept;
end;
$$;

revoke all on function
  private.skip_opted_out(text, uuid[]), private.record_reply(text, text, text, timestamptz)
  from public, anon, authenticated;
grant execute on function
  private.skip_opted_out(text, uuid[]), private.record_reply(text, text, text, timestamptz)
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
