-- =============================================================================
-- The guide's rules on what a user may send, enforced where every caller passes:
-- the API and supabase-js alike. One definition each:
--
--   private.settings            the numbers the rules use (written from the
--                               environment by `whatsched migrate` and at start-up)
--   private.clean_content       line breaks, NFC, control characters, trim,
--                               1-4096 characters, HTML/script refused
--   private.clean_message       trigger: messages.content is always clean
--   private.spam_rules          the spam guard (public.spam_check: its verdict on a
--                               message, which preview shows)
--   private.take_rate           per-user limits per minute: scheduling, group creation
--   public.rate_limit_status    what is left of a limit (the X-RateLimit-* headers)
--
-- Refusals raise SQLSTATE class WS with the stable code in HINT and, where the
-- API names fields, a JSON array of {field, message} in DETAIL:
--   WS426 content_empty | content_too_long | html_not_allowed
--   WS427 spam_suspected (DETAIL: one entry per rule that fired)
--   WS429 rate_limited   (DETAIL: {"limit", "remaining", "reset", "retry_after"})
-- =============================================================================

-- -----------------------------------------------------------------------------
-- Settings: one row. Defaults are the documented ones; whatsched writes the
-- environment's values here, so both paths apply the same numbers.
-- -----------------------------------------------------------------------------
create table private.settings (
  id boolean primary key default true check (id),
  send_daily_cap integer not null default 1000 check (send_daily_cap >= 0),
  schedule_per_minute integer not null default 10 check (schedule_per_minute > 0),
  group_create_per_minute integer not null default 5 check (group_create_per_minute > 0),
  -- Whole-message keywords of replies (20261129000900_replies_and_opt_out), matched ignoring case,
  -- accents and punctuation.
  opt_out_keywords text[] not null
    default '{baja,stop,alto,cancelar,desuscribir,unsubscribe,"no mas",parar,stopall,end,quit}',
  opt_in_keywords text[] not null default '{alta,start,unstop,suscribir,subscribe}',
  updated_at timestamptz not null default now()
);

insert into private.settings default values;

grant select, update on private.settings to service_role;

create or replace function private.current_settings()
returns private.settings
language sql
stable
security definer
set search_path = ''
as $$
  select * from private.settings where id;
$$;

revoke all on function private.current_settings() from public, anon;
grant execute on function private.current_settings() to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Content
-- -----------------------------------------------------------------------------

-- What HTML or script the text holds, as the API names it ("<a href>", "<!--",
-- "javascript:", "onclick="); null when there is none. A tag is what a browser reads
-- as one: `<` or `</`, a name, then attributes up to `>` ("a < b > c" is prose). It
-- counts when the name is an HTML or SVG element, a custom element (a hyphen), or when
-- it carries an attribute value (`<x onanything=...>` still runs).
create or replace function private.find_html(p_text text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  tag text[];
  found text;
begin
  for tag in
    select m from regexp_matches(p_text, '</?([a-zA-Z][a-zA-Z0-9:-]*)([\s/][^<>]*)?>', 'g') as m
  loop
    if lower(tag[1]) = any ('{a,abbr,address,area,article,aside,audio,b,base,bdi,bdo,blockquote,body,br,
        button,canvas,caption,cite,code,col,colgroup,data,datalist,dd,del,details,dfn,dialog,div,dl,dt,em,
        embed,fieldset,figcaption,figure,font,footer,form,frame,frameset,h1,h2,h3,h4,h5,h6,head,header,hr,
        html,i,iframe,img,input,ins,kbd,label,legend,li,link,main,map,mark,marquee,menu,meta,meter,nav,
        noscript,object,ol,optgroup,option,output,p,param,picture,pre,progress,q,s,samp,script,section,
        select,slot,small,source,span,strike,strong,style,sub,summary,sup,svg,table,tbody,td,template,
        textarea,tfoot,th,thead,time,title,tr,track,u,ul,var,video,wbr,math,animate,foreignobject,image,
        use,xmp,plaintext,listing,applet}'::text[])
       or tag[1] like '%-%'
       or coalesce(tag[2], '') like '%=%' then
      select '<' || concat_ws(' ', lower(tag[1]), string_agg(lower(a[1]), ' ')) || '>' into found
      from regexp_matches(
        coalesce(tag[2], ''),
        '([^\s"''<>/=]+)(?:\s*=\s*(?:"[^"]*"|''[^'']*''|[^\s"''=<>`]+))?', 'g') as a;
      return found;
    end if;
  end loop;
  found := lower((regexp_match(p_text, '<!--|<!\[CDATA\[|<!doctype|<\?xml', 'i'))[1]);
  if found is not null then
    return found;
  end if;
  tag := regexp_match(p_text, '\y(javascript|vbscript)\s*:|\ydata\s*:\s*text/html', 'i');
  if tag is not null then
    return coalesce(lower(tag[1]) || ':', 'data:text/html');
  end if;
  found := lower((regexp_match(p_text,
    '(?<![[:alnum:]_-])(on(?:click|dblclick|auxclick|contextmenu|mouse\w+|pointer\w+|touch\w+|key\w+|load\w*'
    '|unload|beforeunload|error|focus\w*|blur|change|input|invalid|submit|reset|select\w*|abort|drag\w*|drop'
    '|scroll\w*|resize|wheel|copy|cut|paste|animation\w+|transition\w+|toggle|show|play\w*|pause|ended'
    '|message\w*|hashchange|popstate|storage|beforeprint|afterprint|search|begin|end|repeat|online|offline'
    '|pageshow|pagehide|canplay\w*|durationchange|emptied|seek\w+|stalled|suspend|timeupdate|volumechange'
    '|waiting|progress|ratechange|securitypolicyviolation|formdata|cancel|close|slotchange))\s*=', 'i'))[1]);
  if found is not null then
    return found || '=';
  end if;
  return null;
end;
$$;

-- The content as stored and sent, or a WS426 refusal saying why:
--   line breaks become \n and Unicode NFC; control characters go (except \n and \t);
--   leading and trailing whitespace (Unicode's) is trimmed; 1 to 4096 characters remain;
--   HTML or script is refused, naming what was found.
create or replace function private.clean_content(p_raw text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  cleaned text := p_raw;
  found text;
begin
  if cleaned is null then
    raise exception 'The message content is empty.' using errcode = 'WS426', hint = 'content_empty',
      detail = '[{"field": "content", "message": "The message content is empty."}]';
  end if;
  cleaned := replace(replace(cleaned, E'\r\n', E'\n'), E'\r', E'\n');
  cleaned := normalize(cleaned, nfc);
  cleaned := regexp_replace(cleaned, '[\u0001-\u0008\u000b-\u001f\u007f-\u009f]', '', 'g');
  cleaned := regexp_replace(cleaned,
    '^[\s\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+'
    '|[\s\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$', '', 'g');
  if cleaned = '' then
    raise exception 'The message content is empty.' using errcode = 'WS426', hint = 'content_empty',
      detail = '[{"field": "content", "message": "The message content is empty."}]';
  end if;
  if char_length(cleaned) > 4096 then
    raise exception 'The message content is % characters long; at most 4096 are allowed.', char_length(cleaned)
      using errcode = 'WS426', hint = 'content_too_long',
      detail = jsonb_build_array(jsonb_build_object('field', 'content', 'message',
        format('The message content is %s characters long; at most 4096 are allowed.', char_length(cleaned))))::text;
  end if;
  found := private.find_html(cleaned);
  if found is not null then
    raise exception 'HTML and scripts are not allowed in messages (found %).', found
      using errcode = 'WS426', hint = 'html_not_allowed',
      detail = jsonb_build_array(jsonb_build_object('field', 'content', 'message',
        format('HTML and scripts are not allowed in messages (found %s).', found)))::text;
  end if;
  return cleaned;
end;
$$;

-- Whoever writes messages.content (the API, supabase-js, the worker), it is stored clean.
create or replace function private.clean_message()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.content := private.clean_content(new.content);
  return new;
end;
$$;

create trigger messages_clean_content before insert or update of content on public.messages
  for each row execute function private.clean_message();

-- -----------------------------------------------------------------------------
-- The spam guard: the rules a message breaks if sent at p_at (default: its own
-- scheduled_for, else now), in this order, empty when it looks fine:
--   duplicate_recent  the same owner has identical content scheduled or sent to one of
--                     the same groups with a send time within 24 hours of this one's
--   too_many_links    more than 3 URLs
--   shouting          more than 70 % of the letters are uppercase, among at least 20
--   daily_cap         the owner's deliveries in the last 24 hours plus this message's
--                     recipients exceed the daily cap (private.settings; 0 turns it off,
--                     as it turns off the per-number cap of the dispatcher)
-- Security invoker: the caller sees only what RLS shows them (null: no such message).
-- -----------------------------------------------------------------------------
create or replace function private.spam_rules(
  p_owner uuid, p_message_id uuid, p_content text, p_at timestamptz
)
returns text[]
language sql
stable
set search_path = ''
as $$
  with recursive series as (
    -- A recurring message's earlier occurrences are the series itself, not a duplicate of it.
    select m.recurrence_parent_id as id from public.messages m
    where m.id = p_message_id and m.recurrence_parent_id is not null
    union
    select m.recurrence_parent_id from public.messages m join series s on m.id = s.id
    where m.recurrence_parent_id is not null
  ),
  letters as (
    select count(*) filter (where lower(ch) <> upper(ch)) as cased,
           count(*) filter (where lower(ch) <> upper(ch) and ch = upper(ch)) as upper
    from regexp_split_to_table(p_content, '') as ch
  ),
  facts as (
    select
      exists (
        select 1 from public.messages o
        join public.message_groups og on og.message_id = o.id
        where o.created_by = p_owner and o.id <> p_message_id and o.content = p_content
          and o.id not in (select id from series)
          and o.status in ('scheduled', 'sending', 'sent', 'paused')
          and coalesce(o.sent_at, o.scheduled_for) between p_at - interval '24 hours' and p_at + interval '24 hours'
          and og.group_id in (select group_id from public.message_groups where message_id = p_message_id)
      ) as duplicate_recent,
      (select count(*) from regexp_matches(p_content, '\y(?:https?://|www\.)[^\s<>"'']+', 'gi')) > 3
        as too_many_links,
      (select cased >= 20 and upper > 0.70 * cased from letters) as shouting,
      (select count(*) from public.deliveries d
        where d.created_by = p_owner and d.created_at > now() - interval '24 hours'
          and d.state not in ('cancelled', 'skipped'))
        + public.message_recipient_count(p_message_id)
        > nullif((select send_daily_cap from private.current_settings()), 0) as daily_cap
  )
  select array_remove(array[
    case when duplicate_recent then 'duplicate_recent' end,
    case when too_many_links then 'too_many_links' end,
    case when shouting then 'shouting' end,
    case when daily_cap then 'daily_cap' end
  ], null)
  from facts;
$$;

-- The verdict on a message as it stands, sent at p_at (default: its scheduled_for, else now).
-- Security invoker: null when the caller cannot see the message.
create or replace function public.spam_check(p_message_id uuid, p_at timestamptz default null)
returns text[]
language sql
stable
set search_path = ''
as $$
  select private.spam_rules(m.created_by, m.id, m.content, coalesce(p_at, m.scheduled_for, now()))
  from public.messages m where m.id = p_message_id;
$$;

revoke all on function public.spam_check(uuid, timestamptz) from public, anon;
grant execute on function public.spam_check(uuid, timestamptz) to authenticated, service_role;

-- Refuse (WS427 spam_suspected, one DETAIL entry per rule) when the guard fires.
create or replace function private.refuse_spam(p_message public.messages)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  rules text[] := private.spam_rules(
    p_message.created_by, p_message.id, p_message.content, coalesce(p_message.scheduled_for, now()));
begin
  if cardinality(rules) > 0 then
    raise exception 'The message looks like spam (%); change it before scheduling.', array_to_string(rules, ', ')
      using errcode = 'WS427', hint = 'spam_suspected',
      detail = (
        select jsonb_agg(jsonb_build_object('field', r, 'message', case r
          when 'duplicate_recent' then 'identical content was scheduled or sent to one of these groups within 24 hours'
          when 'too_many_links' then 'more than 3 links'
          when 'shouting' then 'more than 70 % of the letters are uppercase'
          else 'this message would exceed your daily sending cap' end) order by o)
        from unnest(rules) with ordinality as u (r, o)
      )::text;
  end if;
end;
$$;

-- The worker's way into `scheduled`: the next occurrence of a recurring message (inserted with its
-- groups). One the guard refuses is paused instead, and its owner is told which rules fired;
-- resuming it runs the guard again. Returns the ids paused.
create or replace function private.hold_spam_occurrences(p_message_ids uuid[])
returns setof uuid
language plpgsql
set search_path = ''
as $$
declare
  m public.messages;
  rules text[];
begin
  for m in select * from public.messages where id = any(p_message_ids) and status = 'scheduled' order by id loop
    rules := private.spam_rules(m.created_by, m.id, m.content, m.scheduled_for);
    if cardinality(rules) > 0 then
      update public.messages set status = 'paused' where id = m.id;
      insert into public.notifications (user_id, type, title, message, related_entity_type, related_entity_id)
      values (m.created_by, 'warning', 'Repetición en pausa',
              format('La siguiente repetición de un mensaje quedó en pausa porque parece spam (%s). '
                     'Revísala y reanúdala si corresponde.', array_to_string(rules, ', ')),
              'message', m.id);
      return next m.id;
    end if;
  end loop;
end;
$$;

revoke all on function private.hold_spam_occurrences(uuid[]) from public, anon, authenticated;
grant execute on function private.hold_spam_occurrences(uuid[]) to service_role;

-- -----------------------------------------------------------------------------
-- Per-user limits per sliding minute, counted in Postgres so they hold on every path.
-- A hit belongs to the caller's transaction: a refused action leaves none behind.
-- -----------------------------------------------------------------------------
create table private.rate_events (
  user_id uuid not null references auth.users (id) on delete cascade,
  action text not null check (action in ('schedule', 'group_create')),
  at timestamptz not null default now()
);

create index rate_events_user_id_action_at_idx on private.rate_events (user_id, action, at);

create or replace function private.rate_limit(p_action text)
returns integer
language sql
stable
set search_path = ''
as $$
  select case p_action
    when 'schedule' then s.schedule_per_minute
    when 'group_create' then s.group_create_per_minute
  end
  from private.current_settings() s;
$$;

-- {limit, remaining, reset (epoch seconds), retry_after} of the caller's limit for p_action.
create or replace function public.rate_limit_status(p_action text)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  with used as (
    select count(*)::integer as n, min(at) as oldest from private.rate_events
    where user_id = (select auth.uid()) and action = p_action and at > now() - interval '1 minute'
  )
  select jsonb_build_object(
    'limit', private.rate_limit(p_action),
    'remaining', greatest(private.rate_limit(p_action) - used.n, 0),
    'reset', ceil(extract(epoch from coalesce(used.oldest, now()) + interval '1 minute'))::bigint,
    'retry_after', greatest(ceil(extract(epoch from coalesce(used.oldest, now()) + interval '1 minute' - now())), 1)::integer
  )
  from used;
$$;

-- Count one action of the caller, or refuse it (WS429) when the last minute is full.
-- Serialised per user and action, so concurrent requests cannot both take the last slot.
create or replace function private.take_rate(p_action text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  uid uuid := (select auth.uid());
  status jsonb;
begin
  if uid is null then
    return;
  end if;
  perform pg_advisory_xact_lock(hashtextextended('rate:' || uid::text || ':' || p_action, 0));
  delete from private.rate_events where user_id = uid and action = p_action and at <= now() - interval '1 minute';
  status := public.rate_limit_status(p_action);
  if (status ->> 'remaining')::integer = 0 then
    raise exception 'Too many requests; retry in % s.', status ->> 'retry_after'
      using errcode = 'WS429', hint = 'rate_limited', detail = status::text;
  end if;
  insert into private.rate_events (user_id, action) values (uid, p_action);
end;
$$;

revoke all on function
  private.find_html(text), private.clean_content(text), private.spam_rules(uuid, uuid, text, timestamptz), private.refuse_spam(public.messages),
  private.rate_limit(text), private.take_rate(text), public.rate_limit_status(text)
  from public, anon;
grant execute on function
  private.find_html(text), private.clean_content(text), private.spam_rules(uuid, uuid, text, timestamptz), private.refuse_spam(public.messages),
  private.rate_limit(text), private.take_rate(text), public.rate_limit_status(text)
  to authenticated, service_role;

-- Group creation by a user counts against group_create_per_minute.
create or replace function private.limit_group_creation()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if private.acting_as_user() then
    perform private.take_rate('group_create');
  end if;
  return new;
end;
$$;

create trigger groups_limit_creation before insert on public.groups
  for each row execute function private.limit_group_creation();
