-- =============================================================================
-- The guide's rules on what a user may send, enforced where every caller passes:
-- the API and supabase-js alike. One definition each:
--
--   private.settings            the numbers the rules use (written from the
--                               environment by `whatsched migrate` and at start-up)
--   private.clean_content       line breaks, NFC, control characters, trim,
--                               1-4096 characters, HTML/script refused (private.find_html)
--   private.clean_message       trigger: messages.content is always clean
--   private.spam_form           the text the spam guard reads: NFKC, invisible characters gone
--   private.text_spam_rules     the guard's rules on a text alone (links, capitals, runs, words)
--   private.spam_rules          the spam guard (public.spam_check: its verdict on a
--                               message, which preview shows)
--   private.render              a message's text for one recipient ({{name}} filled in)
--   private.exit_problems       every content rule a rendered text breaks (the dispatcher's
--                               claim runs it on each delivery it marks sending)
--   private.take_rate           per-user limits per minute: scheduling, group creation
--   public.rate_limit_status    what is left of a limit (the X-RateLimit-* headers)
--   private.contact_name,       names and descriptions as stored: cleaned and checked by
--   private.group_name, ...     triggers on contacts and groups (and by the contacts import)
--
-- Refusals raise SQLSTATE class WS with the stable code in HINT and, where the
-- API names fields, a JSON array of {field, message} in DETAIL:
--   WS426 content_empty | content_too_long | html_not_allowed
--   WS427 spam_suspected (DETAIL: one entry per rule that fired)
--   WS428 validation_error (a contact's or group's name or description; DETAIL names the field)
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
  -- The spam guard's disguise-proof signals: the longest run of one character allowed, and words
  -- that count as one signal each (matched on the normalised text, whole words, ignoring case
  -- and accents); spam_word_limit of them in one message is spam (0 turns the list off).
  -- (At most 254: a regular expression counts repeats up to 255.)
  spam_max_char_run integer not null default 12 check (spam_max_char_run between 2 and 254),
  spam_words text[] not null default
    '{gratis,"gana dinero","dinero facil","haz clic",urgente,premio,"has ganado",sorteo,"oferta limitada",criptomoneda,prestamo,
      free,"click here","win money","easy money",winner,"you won",prize,"limited offer",crypto,bitcoin,loan,viagra,casino}',
  spam_word_limit integer not null default 3 check (spam_word_limit >= 0),
  -- Derived from spam_words (private.settings_word_forms): each entry as a LIKE pattern with its
  -- vowels as `_`, the spam guard's quick first test on text whose only accents are Latin-1's.
  spam_word_patterns text[] not null default '{}',
  -- A reply is kept for the users who sent that phone a message within this many days.
  reply_window_days integer not null default 30 check (reply_window_days >= 1),
  -- Users may add and connect their own WhatsApp numbers (20261129000650_whatsapp_numbers).
  self_service_numbers boolean not null default false,
  -- A WhatsApp number's health (20261129000650_whatsapp_numbers): each fact weighs its kind's
  -- weight, halved every health_half_life_minutes; at health_pause_score the number is paused.
  -- After a resume, for health_ramp_hours, its caps and batches are health_ramp_share of the
  -- usual and its spacing 1 / health_ramp_share times as long. The README justifies the defaults.
  health_half_life_minutes double precision not null default 60 check (health_half_life_minutes > 0),
  health_pause_score double precision not null default 2.5 check (health_pause_score > 0),
  health_weight_restricted double precision not null default 1 check (health_weight_restricted >= 0),
  health_weight_failed_ack double precision not null default 0.5 check (health_weight_failed_ack >= 0),
  health_weight_disconnect double precision not null default 1 check (health_weight_disconnect >= 0),
  health_weight_opt_out double precision not null default 0.5 check (health_weight_opt_out >= 0),
  -- Silence (private.judge_unanswered): of the first messages a number sent to new contacts over
  -- a day, each at least health_unanswered_wait_hours old, health_unanswered_share or more got no
  -- reply, with at least health_unanswered_min of them: one fact of health_weight_unanswered an hour.
  health_weight_unanswered double precision not null default 1 check (health_weight_unanswered >= 0),
  health_unanswered_share double precision not null default 0.8
    check (health_unanswered_share > 0 and health_unanswered_share <= 1),
  health_unanswered_min integer not null default 20 check (health_unanswered_min >= 1),
  health_unanswered_wait_hours double precision not null default 6 check (health_unanswered_wait_hours >= 0),
  health_ramp_hours double precision not null default 24 check (health_ramp_hours >= 0),
  health_ramp_share double precision not null default 0.25 check (health_ramp_share > 0 and health_ramp_share <= 1),
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

-- What HTML or script the text holds, as the API names it ("<a href>", "<!--", "javascript:",
-- "onclick="); null when there is none. Content is plain text, so anything HTML's tokenizer would
-- start a tag with is refused, whatever the tag: `<` or `</` then a letter of any script (`<ſcript>`
-- and `<İmg` become ASCII under case mapping), `<!` and `<?`. Letters are ICU's (private.name_order)
-- where Postgres has ICU, so the database's locale cannot make `<Ж` look like prose. `<3`,
-- `a < b` and `x<5` stay text.
create or replace function private.find_html(p_text text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  m text[];
begin
  -- Each search needs its character (`<`, `:` or `=`): most texts skip most of them.
  if strpos(p_text, '<') > 0 then
    -- A start or end tag: its name up to a space, `/` or `>`, then attributes up to `>` (or the
    -- end of the text: a tag left open still opens one in the page around it).
    m := regexp_match(p_text collate private.name_order, '</?([[:alpha:]][^\s/>]*)([^>]*)');
    if m is not null then
      return '<' || concat_ws(' ', lower(m[1]), (
        select string_agg(lower(a.name), ' ')
        from (
          select x[1] as name
          from regexp_matches(m[2], '([^\s"''<>/=]+)(?:\s*=\s*(?:"[^"]*"|''[^'']*''|[^\s"''=<>`]+))?', 'g') as x
          limit 8
        ) a)) || '>';
    end if;
    m := regexp_match(p_text, '<(!--|!\[cdata\[|![a-z]*|\?[a-z]*)', 'i');
    if m is not null then
      return '<' || lower(m[1]);
    end if;
  end if;
  if strpos(p_text, ':') > 0 then
    -- URL parsers drop tabs and line breaks, so `java<TAB>script:` runs as javascript: does.
    m := regexp_match(p_text,
      '\y((?:j[\t\n\r]*a[\t\n\r]*v[\t\n\r]*a|v[\t\n\r]*b)[\t\n\r]*s[\t\n\r]*c[\t\n\r]*r[\t\n\r]*i[\t\n\r]*p[\t\n\r]*t)\s*:'
      '|\y(d[\t\n\r]*a[\t\n\r]*t[\t\n\r]*a)\s*:\s*text/html', 'i');
    if m is not null then
      return case when m[1] is not null then lower(regexp_replace(m[1], '\s', '', 'g')) || ':' else 'data:text/html' end;
    end if;
  end if;
  if strpos(p_text, '=') > 0 then
    -- An event handler, any name: inside a `<` left open (`<3 onload=...>`), or after a quote that
    -- would close an attribute value the text is pasted into (`" onmouseover=...`).
    m := regexp_match(p_text,
      '<[^<>]*?[\s/"''`](on[a-z][^\s"''<>/=]*)\s*=|["''`][\s/]*(on[a-z][^\s"''<>/=]*)\s*=', 'i');
    if m is not null then
      return lower(coalesce(m[1], m[2])) || '=';
    end if;
    -- In running text a bare `on…=` may be prose ("online = true"): there the DOM's handler names count.
    m := regexp_match(p_text,
      '(?<![[:alnum:]_-])(on(?:click|dblclick|auxclick|contextmenu|mouse\w+|pointer\w+|touch\w+|key\w+|load\w*'
      '|unload|beforeunload|error|focus\w*|blur|change|input|invalid|submit|reset|select\w*|abort|drag\w*|drop'
      '|scroll\w*|resize|wheel|copy|cut|paste|animation\w+|transition\w+|toggle|show|play\w*|pause|ended'
      '|message\w*|hashchange|popstate|storage|beforeprint|afterprint|search|begin|end|repeat|online|offline'
      '|pageshow|pagehide|canplay\w*|durationchange|emptied|seek\w+|stalled|suspend|timeupdate|volumechange'
      '|waiting|progress|ratechange|securitypolicyviolation|formdata|cancel|close|slotchange|beforeinput'
      '|beforetoggle|webkit\w+))\s*=', 'i');
    if m is not null then
      return lower(m[1]) || '=';
    end if;
  end if;
  return null;
end;
$$;

-- The content as stored and sent, or a WS426 refusal saying why:
--   line breaks become \n and Unicode NFC; control characters go (except \n and \t), and so do
--   bidi overrides and isolates (they make text display as something it is not);
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
  cleaned := regexp_replace(cleaned, '[\u0001-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]', '', 'g');
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

-- Whoever writes messages.content (the API, supabase-js, the worker), it is stored clean. A message
-- with an attachment (media_id, 20261206000300_media) may have no text: its content is the
-- caption, and an empty one is stored as ''.
create or replace function private.clean_message()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  code text;
begin
  new.content := private.clean_content(new.content);
  return new;
exception when sqlstate 'WS426' then
  get stacked diagnostics code = pg_exception_hint;
  if code <> 'content_empty' or new.media_id is null then
    raise;
  end if;
  new.content := '';
  return new;
end;
$$;

create trigger messages_clean_content before insert or update of content on public.messages
  for each row execute function private.clean_message();

-- -----------------------------------------------------------------------------
-- What the spam guard reads: the text as it would look once the disguise is off.
-- -----------------------------------------------------------------------------

-- Invisible and format characters (Unicode Cf: soft hyphen, zero-width spaces and joiners, bidi
-- controls, word joiners, BOM, tag characters; plus variation selectors, Mongolian and Khmer
-- invisibles, the combining grapheme joiner and Hangul fillers) removed, then NFKC, so styled or
-- fullwidth letters and digits (𝐇𝐎𝐋𝐀, ＨＯＬＡ) become plain ones and a zero-width character
-- neither splits a word nor makes two copies of a text differ. Latin-1 text without its
-- compatibility characters (most Spanish and English) is its own form: one scan decides it.
create or replace function private.spam_form(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select case
    when p_text !~ '[^\u0001-\u009f\u00a1-\u00a7\u00a9\u00ab\u00ac\u00ae\u00b0\u00b1\u00b6\u00b7\u00bb\u00bf-\u00ff]'
      then p_text
    else (
      select case when v is nfkc normalized then v else normalize(v, nfkc) end
      from regexp_replace(p_text,
        '[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5\u180b-\u180f'
        '\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb'
        '\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a'
        '\U000e0000-\U000e007f\U000e0100-\U000e01ef]', '', 'g') as v)
  end;
$$;

-- Whether a text in spam_form holds more than p_limit links: URLs (http://, https://, www.), bare
-- domains under a common top-level domain (`example.com`, `promo.cl/x`; "Sr.Pérez" and "a.m." are
-- prose) and the common link shorteners (bit.ly, t.co, ...). An e-mail address is not a link.
-- Every link holds "://", "www." or a letter or digit, a dot and two letters, so a quick count of
-- those decides most texts without the full search.
create or replace function private.more_links_than(p_form text, p_limit integer)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
  select regexp_count(p_form, '://|www\.|[[:alnum:]]\.[[:alpha:]]{2}', 1, 'i') > p_limit
    and regexp_count(p_form,
      '\y(?:https?://|www\.)[^\s<>"'']+'
      '|(?<![[:alnum:]_@.-])'
      '(?:(?:bit\.ly|bitly\.com|t\.co|tinyurl\.com|goo\.gl|ow\.ly|is\.gd|v\.gd|buff\.ly|cutt\.ly|rb\.gy'
      '|shorturl\.at|t\.ly|tiny\.cc|rebrand\.ly|s\.id|lnkd\.in|bl\.ink|short\.io|t\.me|wa\.me)'
      '|(?:[[:alnum:]](?:[[:alnum:]-]*[[:alnum:]])?\.)+'
      '(?:com|net|org|info|biz|edu|gov|gob|mil|io|co|me|tv|cc|ly|gl|gd|ws|ai|gg|xyz|top|club|online|site'
      '|shop|store|live|link|click|app|dev|vip|win|bet|icu|buzz|tech|pro|mobi|cfd|sbs|cyou|rest|lat|tk|ml'
      '|ga|cf|gq|pw|su|ru|cn|us|uk|es|mx|ar|cl|pe|ve|ec|uy|py|bo|br|fr|eu|ca|au))'
      '(?![[:alnum:]_-])(?:[/?#][^\s<>"'']*)?',
      1, 'i') > p_limit;
$$;

-- Lowercase, accents removed, anything but letters and digits as single spaces, trimmed: the
-- form spam words are stored and matched in ("¡GRATIS!" and "Préstamo" match gratis, prestamo).
create or replace function private.word_form(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select btrim(regexp_replace(
    regexp_replace(lower(normalize(p_text, nfd)), '[\u0300-\u036f]+', '', 'g'),
    '[^[:alnum:]]+', ' ', 'g'));
$$;

-- settings.spam_words is kept in word_form, so the guard compares without converting the list,
-- and spam_word_patterns follows it.
create or replace function private.settings_word_forms()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.spam_words := array(
    select distinct f from unnest(new.spam_words) as w, private.word_form(private.spam_form(w)) as f
    where f <> '' order by f);
  new.spam_word_patterns := array(
    select '%' || replace(translate(w, 'aeiou', '_____'), ' ', '%') || '%'
    from unnest(new.spam_words) with ordinality as u (w, i) order by i);
  return new;
end;
$$;

create trigger settings_word_forms before insert or update of spam_words on private.settings
  for each row execute function private.settings_word_forms();

-- The row inserted above predates the trigger.
update private.settings set spam_words = spam_words;

-- The spam guard's rules on a text alone, in this order, empty when it looks fine (all counted on
-- its spam_form):
--   too_many_links       more than 3 links (URLs, bare domains, shorteners)
--   shouting             more than 70 % of the letters are uppercase, among at least 20
--   repeated_characters  a run of more than settings.spam_max_char_run of one non-space character
--   spam_words           at least settings.spam_word_limit distinct entries of settings.spam_words,
--                        as whole words (0 turns the rule off)
-- The dispatcher runs this on every delivery (exit_problems), so each rule first asks a question
-- one quick scan answers (are there 15 capitals at all? a stretch long enough for a run? enough
-- entries' words anywhere in the text?) and searches exactly only when the answer is yes.
create or replace function private.text_spam_rules(p_text text, p_settings private.settings)
returns text[]
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  form text := private.spam_form(p_text);
  run integer := p_settings.spam_max_char_run + 1;
  uppers integer;
  lowers integer;
  bare text;
  folded text;
  entry text;
  candidates text[] := '{}'::text[];
  hits integer;
  rules text[] := '{}'::text[];
begin
  if private.more_links_than(form, 3) then
    rules := rules || 'too_many_links'::text;
  end if;
  -- More than 70 % capitals means at least 15 of them, and fewer than 3/7 as many lowercase
  -- letters: ordinary text has those, which a scan for that many says without counting them all.
  if form ~ '([[:upper:]][^[:upper:]]*){15}' then
    uppers := char_length(form) - char_length(regexp_replace(form, '[[:upper:]]+', '', 'g'));
    if ceil(uppers * 3 / 7.0) > 255 or form !~ format('([[:lower:]][^[:lower:]]*){%s}', ceil(uppers * 3 / 7.0)) then
      lowers := char_length(form) - char_length(regexp_replace(form, '[[:lower:]]+', '', 'g'));
      if uppers + lowers >= 20 and uppers > 0.70 * (uppers + lowers) then
        rules := rules || 'shouting'::text;
      end if;
    end if;
  end if;
  -- A run of one character lies within letters, digits or other non-spaces alone.
  if form ~ format('[[:alpha:]]{%1$s}|[[:digit:]]{%1$s}|[^[:alpha:][:digit:]\s]{%1$s}', run)
     and form ~ format('([^\s])\1{%s}', run - 1) then
    rules := rules || 'repeated_characters'::text;
  end if;
  if p_settings.spam_word_limit > 0 then
    -- The entries worth a close look, found by a quick test on the lowercase text; then each of
    -- those as whole words in the text without accents (word_form's matching, without building
    -- it). Loops of simple expressions: a query here would cost more than the tests it runs.
    bare := lower(form);
    if bare !~ '[^\u0001-\u007f]' then
      folded := bare;  -- ASCII: nothing to take off
    elsif bare !~ '[\u0100-\u1fff\u2126\u212a\u212b\u3040-\u30ff\uac00-\ud7a3\uf900-\ufb4f]' then
      -- None of the letters beyond Latin-1 that decompose is here, and in Latin-1 only vowels, ñ,
      -- ç, ý and ÿ lose an accent: with those four made plain, an entry can be in the text only
      -- where its pattern (vowels as any one character) is.
      if bare ~ '[ñçýÿ]' then
        bare := replace(replace(replace(replace(bare, 'ñ', 'n'), 'ç', 'c'), 'ý', 'y'), 'ÿ', 'y');
      end if;
      if bare like any (p_settings.spam_word_patterns) then
        for i in 1 .. cardinality(p_settings.spam_words) loop
          if bare like p_settings.spam_word_patterns[i] then
            candidates := candidates || p_settings.spam_words[i];
          end if;
        end loop;
      end if;
    else
      folded := regexp_replace(normalize(bare, nfd), '[\u0300-\u036f]+', '', 'g');
    end if;
    if folded is not null then
      foreach entry in array p_settings.spam_words loop
        if strpos(folded, split_part(entry, ' ', 1)) > 0 then
          candidates := candidates || entry;
        end if;
      end loop;
    end if;
    if cardinality(candidates) >= p_settings.spam_word_limit then
      folded := coalesce(folded, regexp_replace(normalize(lower(form), nfd), '[\u0300-\u036f]+', '', 'g'));
      hits := 0;
      foreach entry in array candidates loop
        -- Entries are letters, digits and single spaces (word_form): safe inside a pattern.
        if folded ~ ('(^|[^[:alnum:]])' || replace(entry, ' ', '[^[:alnum:]]+') || '($|[^[:alnum:]])') then
          hits := hits + 1;
        end if;
      end loop;
      if hits >= p_settings.spam_word_limit then
        rules := rules || 'spam_words'::text;
      end if;
    end if;
  end if;
  return rules;
end;
$$;

-- -----------------------------------------------------------------------------
-- The send ledger: one row per delivery the dispatcher marks `sending`, written by the claim
-- at clock_timestamp(). No user reads, writes or deletes it, and it has no foreign key to the
-- message: deleting sent messages does not lower the daily cap's count, and replies find who
-- wrote to a phone. Housekeeping forgets rows older than the longest window that reads them.
-- -----------------------------------------------------------------------------
create table private.send_ledger (
  id bigint generated always as identity primary key,
  created_by uuid not null references auth.users (id) on delete cascade,
  sender text not null,
  phone text not null,
  message_id uuid not null,
  at timestamptz not null default clock_timestamp()
);

create index send_ledger_created_by_at_idx on private.send_ledger (created_by, at);
create index send_ledger_phone_at_idx on private.send_ledger (phone, at);
-- A number's sends of a day (private.judge_unanswered).
create index send_ledger_sender_at_idx on private.send_ledger (sender, at);
create index send_ledger_at_idx on private.send_ledger (at);

grant select, insert, delete on private.send_ledger to service_role;

-- How many deliveries the owner's messages started in the last 24 hours (by the clock), from the
-- ledger. A user may count only their own (admins and the worker, without claims, any owner's).
create or replace function private.sends_last_day(p_owner uuid)
returns integer
language sql
stable
security definer
set search_path = ''
as $$
  select count(*)::integer from private.send_ledger
  where created_by = p_owner and at > clock_timestamp() - interval '24 hours'
    and (p_owner = (select auth.uid()) or (select auth.uid()) is null or private.is_admin());
$$;

-- -----------------------------------------------------------------------------
-- The spam guard: the rules a message breaks if sent at p_at (default: its own
-- scheduled_for, else now), in this order, empty when it looks fine:
--   duplicate_recent  the same owner has the same content (compared in spam_form, so an
--                     invisible character does not make it new) scheduled or sent to one of
--                     the same groups with a send time within 24 hours of this one's
--   ...               the text's own rules (private.text_spam_rules)
--   daily_cap         the owner's sends of the last 24 hours (the ledger), plus their deliveries
--                     still pending, plus this message's recipients if it is not fanned out yet,
--                     exceed the daily cap (private.settings; 0 turns it off, as it turns off
--                     the per-number cap of the dispatcher)
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
  settings as (
    select private.current_settings() as s
  ),
  facts as (
    select
      exists (
        select 1 from public.messages o
        join public.message_groups og on og.message_id = o.id
        where o.created_by = p_owner and o.id <> p_message_id
          and o.id not in (select id from series)
          and o.status in ('scheduled', 'sending', 'sent', 'paused')
          and coalesce(o.sent_at, o.scheduled_for) between p_at - interval '24 hours' and p_at + interval '24 hours'
          and og.group_id in (select group_id from public.message_groups where message_id = p_message_id)
          and private.spam_form(o.content) = private.spam_form(p_content)
      ) as duplicate_recent,
      private.text_spam_rules(p_content, st.s) as text_rules,
      -- This message's own pending deliveries are among the owner's once it is fanned out.
      private.sends_last_day(p_owner)
        + (select count(*) from public.deliveries d where d.created_by = p_owner and d.state = 'pending')
        + case when exists (select 1 from public.deliveries d where d.message_id = p_message_id) then 0
               else public.message_recipient_count(p_message_id) end
        > nullif((st.s).send_daily_cap, 0) as daily_cap
    from settings st
  )
  select array_remove(array[case when duplicate_recent then 'duplicate_recent' end], null)
    || text_rules
    || array_remove(array[case when daily_cap then 'daily_cap' end], null)
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
  s private.settings;
begin
  if cardinality(rules) > 0 then
    s := private.current_settings();
    raise exception 'The message looks like spam (%); change it before scheduling.', array_to_string(rules, ', ')
      using errcode = 'WS427', hint = 'spam_suspected',
      detail = (
        select jsonb_agg(jsonb_build_object('field', r, 'message', case r
          when 'duplicate_recent' then 'identical content was scheduled or sent to one of these groups within 24 hours'
          when 'too_many_links' then 'more than 3 links (web addresses, domains or shortened links)'
          when 'shouting' then 'more than 70 % of the letters are uppercase'
          when 'repeated_characters' then format('one character repeated more than %s times in a row',
                                                 s.spam_max_char_run)
          when 'spam_words' then format('%s or more words or phrases often used in spam', s.spam_word_limit)
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
-- At the exit: the text one recipient receives, and the rules it must still meet. The
-- dispatcher's claim runs both on every delivery it marks sending (20261129000700_dispatch).
-- -----------------------------------------------------------------------------

-- The text one recipient receives: every {{name}} (spaces allowed inside the braces: {{ name }})
-- becomes their name, null as ''. The name goes in literally: backslashes are escaped, the only
-- character regexp_replace's replacement reads (`\1`, `\&`); `&` and `$1` mean nothing to it.
-- The spaces are Python's \s, which rendering matched before it moved here.
create or replace function private.render(p_content text, p_name text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select regexp_replace(p_content,
    '\{\{[\t-\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*name'
    '[\t-\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*\}\}',
    replace(coalesce(p_name, ''), '\', '\\'), 'g');
$$;

-- Every content rule a rendered text breaks, without raising; empty when it may be sent:
--   content_empty        nothing but spaces (and what clean_content strips)
--   content_too_long     more than 4096 characters
--   control_characters   anything clean_content would strip (control characters, bidi
--                        overrides and isolates)
--   html_not_allowed     private.find_html finds something
--   ...                  then private.text_spam_rules
-- Run per delivery inside the claim, so each rule is one scan of the text.
create or replace function private.exit_problems(p_text text, p_settings private.settings)
returns text[]
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  problems text[] := '{}'::text[];
begin
  if p_text is null
     or p_text ~ '^[\s\u0001-\u0008\u000b-\u001f\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202a-\u202f\u205f\u2066-\u2069\u3000]*$'
  then
    return array['content_empty'];
  end if;
  if char_length(p_text) > 4096 then
    problems := problems || 'content_too_long'::text;
  end if;
  if p_text ~ '[\u0001-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]' then
    problems := problems || 'control_characters'::text;
  end if;
  if private.find_html(p_text) is not null then
    problems := problems || 'html_not_allowed'::text;
  end if;
  return problems || private.text_spam_rules(p_text, p_settings);
end;
$$;

-- -----------------------------------------------------------------------------
-- Per-user limits per sliding minute, counted in Postgres so they hold on every path.
-- A hit belongs to the caller's transaction: a refused action leaves none behind.
-- -----------------------------------------------------------------------------
-- Stamped with the clock, not the transaction's start: a long transaction cannot backdate a hit.
create table private.rate_events (
  user_id uuid not null references auth.users (id) on delete cascade,
  action text not null check (action in ('schedule', 'group_create')),
  at timestamptz not null default clock_timestamp()
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
  -- The clock, not the transaction's start: a long transaction sees the minute as it is now.
  with clock as (
    select clock_timestamp() as now
  ),
  used as (
    select count(*)::integer as n, min(at) as oldest from private.rate_events, clock
    where user_id = (select auth.uid()) and action = p_action and at > clock.now - interval '1 minute'
  )
  select jsonb_build_object(
    'limit', private.rate_limit(p_action),
    'remaining', greatest(private.rate_limit(p_action) - used.n, 0),
    'reset', ceil(extract(epoch from coalesce(used.oldest, clock.now) + interval '1 minute'))::bigint,
    'retry_after', greatest(ceil(extract(epoch from
      coalesce(used.oldest, clock.now) + interval '1 minute' - clock.now)), 1)::integer
  )
  from used, clock;
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
  delete from private.rate_events where user_id = uid and action = p_action and at <= clock_timestamp() - interval '1 minute';
  status := public.rate_limit_status(p_action);
  if (status ->> 'remaining')::integer = 0 then
    raise exception 'Too many requests; retry in % s.', status ->> 'retry_after'
      using errcode = 'WS429', hint = 'rate_limited', detail = status::text;
  end if;
  insert into private.rate_events (user_id, action) values (uid, p_action);
end;
$$;

-- What a user's statements run (the door's checks, spam_check and preview's rendering).
revoke all on function
  private.find_html(text), private.clean_content(text), private.spam_form(text), private.more_links_than(text, integer),
  private.word_form(text), private.text_spam_rules(text, private.settings), private.sends_last_day(uuid),
  private.spam_rules(uuid, uuid, text, timestamptz), private.refuse_spam(public.messages),
  private.render(text, text), private.rate_limit(text), private.take_rate(text), public.rate_limit_status(text)
  from public, anon;
grant execute on function
  private.find_html(text), private.clean_content(text), private.spam_form(text), private.more_links_than(text, integer),
  private.word_form(text), private.text_spam_rules(text, private.settings), private.sends_last_day(uuid),
  private.spam_rules(uuid, uuid, text, timestamptz), private.refuse_spam(public.messages),
  private.render(text, text), private.rate_limit(text), private.take_rate(text), public.rate_limit_status(text)
  to authenticated, service_role;

-- Only the dispatcher's claim judges rendered texts.
revoke all on function private.exit_problems(text, private.settings) from public, anon, authenticated;
grant execute on function private.exit_problems(text, private.settings) to service_role;

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

-- -----------------------------------------------------------------------------
-- Names and descriptions of contacts and groups, as people type them through any path: stored
-- clean, or refused with WS428 validation_error and the field in DETAIL (the API answers 422).
-- -----------------------------------------------------------------------------

-- A name as stored, and what is wrong with it (null: nothing). One line, as people read it:
-- NFC; line breaks, tabs and every other Unicode space become one space; other control
-- characters, bidi overrides and isolates, and the invisible characters no name needs (zero-width
-- space, word joiner, BOM) go; trimmed. Then 1 to p_limit characters, and unless
-- p_links_allowed no link as the spam guard counts them. "GA " and "G<U+200B>A" are "GA", so
-- near-duplicates meet the unique index on group names. Most names need none of the cleaning,
-- which one scan tells.
create or replace function private.clean_name(p_raw text, p_limit integer, p_links_allowed boolean,
                                              out name text, out problem text)
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  if p_raw !~ '[\u0001-\u001f\u007f-\u00a0\u1680\u2000-\u200b\u2028-\u202f\u205f\u2060\u2066-\u2069\u3000\ufeff]|^ | $|  '
     and p_raw is nfc normalized then
    name := p_raw;
  else
    name := btrim(regexp_replace(regexp_replace(normalize(p_raw, nfc),
      '[\u0001-\u0008\u000e-\u001b\u007f-\u0084\u0086-\u009f\u200b\u202a-\u202e\u2060\u2066-\u2069\ufeff]', '', 'g'),
      '[\t-\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ');
  end if;
  problem := case
    when name is null or name = '' then 'must not be empty'
    when char_length(name) > p_limit then format('longer than %s characters', p_limit)
    when not p_links_allowed and private.more_links_than(private.spam_form(name), 0)
      then 'must not contain a link (a web address, domain or shortened link)'
  end;
end;
$$;

-- Free text (a description): line breaks kept as \n, tabs kept, NFC, the same characters as in
-- names removed, Unicode spaces trimmed at both ends; at most 1000 characters.
create or replace function private.group_description(p_raw text, out description text, out problem text)
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  description := regexp_replace(regexp_replace(
    normalize(replace(replace(p_raw, E'\r\n', E'\n'), E'\r', E'\n'), nfc),
    '[\u0001-\u0008\u000b-\u001f\u007f-\u009f\u200b\u202a-\u202e\u2060\u2066-\u2069\ufeff]', '', 'g'),
    '^[\t\n \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$',
    '', 'g');
  problem := case when char_length(description) > 1000 then 'longer than 1000 characters' end;
end;
$$;

-- Whether a name is already as clean_name stores it, within both tables' limits and without a
-- link: words of letters, digits, apostrophes, commas and hyphens, single spaces between them,
-- at most 100 characters, and NFKC (so no character hides a dot: `⒈` is "1."). Most names are;
-- the triggers and the contacts import skip clean_name for them (an import of 100,000 names would
-- otherwise pay for it twice per name).
create or replace function private.plain_name(p_name text)
returns boolean
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  return p_name ~ '^[[:alnum:]'',-]+( [[:alnum:]'',-]+)*$' and char_length(p_name) <= 100 and p_name is nfkc normalized;
end;
$$;

-- A contact's name: at most 200 characters and no link (a name is rendered into every message
-- sent to that contact). The trigger and the contacts import both ask this.
create or replace function private.contact_name(p_raw text, out name text, out problem text)
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  checked record := private.clean_name(p_raw, 200, false);
begin
  name := checked.name;
  problem := checked.problem;
end;
$$;

-- A group's name: at most 100 characters.
create or replace function private.group_name(p_raw text, out name text, out problem text)
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
  checked record := private.clean_name(p_raw, 100, true);
begin
  name := checked.name;
  problem := checked.problem;
end;
$$;

-- The contacts import's question for a batch of raw names: each as the trigger would store it
-- and why it would refuse it (contact_name), in the order given. One call per batch.
create or replace function private.contact_names(p_raw text[], out names text[], out problems text[])
language sql
immutable
parallel safe
set search_path = ''
as $$
  -- contact_name runs once per name that needs it (a composite's two fields read in the select
  -- list would call it twice), and never for a plain one: `offset 0` keeps the planner from
  -- inlining the subqueries, which would compute plain_name twice and call contact_name anyway.
  select coalesce(array_agg(case when u.plain then u.raw else c.name end order by u.i), '{}'),
         coalesce(array_agg(case when u.plain then null else c.problem end order by u.i), '{}')
  from (select r.raw, r.i, coalesce(private.plain_name(r.raw), false) as plain
        from unnest(p_raw) with ordinality as r (raw, i) offset 0) as u
  left join lateral (select * from private.contact_name(u.raw) where not u.plain offset 0) as c on true;
$$;

create or replace function private.refuse_field(p_field text, p_problem text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'Invalid value for ''%'': %', p_field, p_problem
    using errcode = 'WS428', hint = 'validation_error',
    detail = jsonb_build_array(jsonb_build_object('field', p_field, 'message', p_problem))::text;
end;
$$;

create or replace function private.clean_contact()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  checked record;
begin
  checked := private.contact_name(new.name);
  if checked.problem is not null then
    perform private.refuse_field('name', checked.problem);
  end if;
  new.name := checked.name;
  return new;
end;
$$;

create trigger contacts_clean_name before insert on public.contacts
  for each row when (not coalesce(private.plain_name(new.name), false)) execute function private.clean_contact();
-- Stored names are clean: an update that leaves the name as it was has nothing to check.
create trigger contacts_clean_renamed before update of name on public.contacts
  for each row when (new.name is distinct from old.name and not coalesce(private.plain_name(new.name), false))
  execute function private.clean_contact();

create or replace function private.clean_group()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  checked record;
begin
  checked := private.group_name(new.name);
  if checked.problem is not null then
    perform private.refuse_field('name', checked.problem);
  end if;
  new.name := checked.name;
  if new.description is not null then
    checked := private.group_description(new.description);
    if checked.problem is not null then
      perform private.refuse_field('description', checked.problem);
    end if;
    new.description := checked.description;
  end if;
  return new;
end;
$$;

create trigger groups_clean_text before insert on public.groups
  for each row execute function private.clean_group();
create trigger groups_clean_changed_text before update of name, description on public.groups
  for each row when ((new.name, new.description) is distinct from (old.name, old.description))
  execute function private.clean_group();

revoke all on function
  private.clean_name(text, integer, boolean), private.plain_name(text), private.contact_name(text),
  private.contact_names(text[]), private.group_name(text), private.group_description(text),
  private.refuse_field(text, text)
  from public, anon;
grant execute on function
  private.clean_name(text, integer, boolean), private.plain_name(text), private.contact_name(text),
  private.contact_names(text[]), private.group_name(text), private.group_description(text),
  private.refuse_field(text, text)
  to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on function public.spam_check(uuid, timestamptz) is 'The spam guard''s verdict on a message sent at p_at (default: its scheduled_for, else now): the rules it breaks, empty when none, null when the caller cannot see it.';
comment on function public.rate_limit_status(text) is 'What is left of the caller''s per-minute limit for p_action (schedule | group_create): {limit, remaining, reset, retry_after}, the X-RateLimit-* headers.';
