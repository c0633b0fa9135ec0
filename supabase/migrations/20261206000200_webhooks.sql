-- =============================================================================
-- Webhooks (issue #21): every event a user receives on the socket and on Realtime, also POSTed to
-- the endpoints they register, signed as the Standard Webhooks specification says.
--
--   public.webhook_endpoints        an owner's URL, event-type filter, enabled or not; owner_id
--                                   null: deployment-wide (admins), receiving every user's events
--   private.webhook_secrets         each endpoint's secret (`whsec_` + base64 of 32 random bytes)
--                                   and, during a rotation's grace period, the previous one
--   public.webhook_deliveries       the outbox: one row per event per endpoint, written by
--                                   private.broadcast in the transaction of the change it reports
--                                   (rolled back with it, never lost once committed); its id is the
--                                   `webhook-id` header, the receiver's idempotency key
--   public.webhook_attempts         each attempt: status code, latency, error
--   private.event_types             the event names endpoints may filter on (contracts/events.json
--                                   is their source; a test holds the two together)
--   private.address_is_private      loopback, private, link-local, metadata and other addresses no
--                                   webhook may reach unless settings.webhook_allow_private
--   public.create_webhook_endpoint, rotate_webhook_secret, replay_webhook_deliveries,
--   ping_webhook_endpoint           the actions, for the API and supabase-js alike
--   private.enqueue_webhooks        the outbox's writer (private.broadcast calls it)
--   private.claim_webhook_deliveries, finish_webhook_delivery, next_webhook_at
--                                   what the workers do (service_role): claim due rows with
--                                   FOR UPDATE SKIP LOCKED and a lease, record each attempt, retry
--                                   on the specification's schedule, disable what is gone
--
-- Delivery: attempts at 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h after each
-- failure (each delay with ±10 % jitter, never sooner than a Retry-After the receiver sent); a 2xx
-- is delivered, a 410 disables the endpoint, anything else (a redirect included) is a failure.
-- An endpoint that has failed without a success for settings.webhook_disable_after_days days is
-- disabled, and its owner (or, for a deployment-wide one, every admin) told. Order between one
-- endpoint's events is not promised: retries and several workers reorder them.
--
-- Refusals (SQLSTATE class WS, stable code in HINT, fields in DETAIL):
--   WS403 forbidden (a deployment-wide endpoint, for a user)
--   WS404 webhook_not_found (absent, or not the caller's); related_not_found (a replay's delivery_id)
--   WS428 validation_error (url, event_types, description, grace_hours);
--         webhook_url_not_allowed (a URL on a loopback, private, link-local or metadata address)
-- Audited: webhook.create | webhook.update | webhook.delete | webhook.rotate_secret |
--   webhook.disable (by the database: no actor, the reason) [webhook].
-- =============================================================================

alter table private.settings
  add column webhook_allow_private boolean not null default false,
  add column webhook_disable_after_days double precision not null default 5
    check (webhook_disable_after_days > 0);

-- -----------------------------------------------------------------------------
-- Tables
-- -----------------------------------------------------------------------------

create table public.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  -- Whose events it receives; null: every user's (deployment-wide, admins only).
  owner_id uuid references auth.users (id) on delete cascade,
  created_by uuid references auth.users (id) on delete set null,
  url text not null check (char_length(url) <= 2000),
  description text check (char_length(description) <= 500),
  -- The event types it receives (private.event_types); empty: all of them.
  event_types text[] not null default '{}',
  enabled boolean not null default true,
  -- Why the database disabled it (a 410, days of failures); cleared when it is enabled again.
  disabled_reason text check (char_length(disabled_reason) <= 2000),
  -- The first failure since its last success (null: the last attempt succeeded).
  failing_since timestamptz,
  secret_rotated_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index webhook_endpoints_owner_id_idx on public.webhook_endpoints (owner_id);
create index webhook_endpoints_created_by_idx on public.webhook_endpoints (created_by);
-- The outbox's writer looks for enabled endpoints on every event.
create index webhook_endpoints_enabled_idx on public.webhook_endpoints (owner_id) where enabled;

create trigger webhook_endpoints_touch before update on public.webhook_endpoints
  for each row execute function private.touch_updated_at();

create table private.webhook_secrets (
  endpoint_id uuid primary key references public.webhook_endpoints (id) on delete cascade,
  secret text not null,
  previous_secret text,
  previous_until timestamptz
);

create table public.webhook_deliveries (
  id uuid primary key default gen_random_uuid(),
  endpoint_id uuid not null references public.webhook_endpoints (id) on delete cascade,
  event_type text not null,
  -- The request body, fixed at the event so every attempt signs and sends the same bytes:
  -- {"type", "timestamp", "data": the event as the socket and Realtime carry it}.
  body text not null check (octet_length(body) <= 262144),
  state text not null default 'pending' check (state in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  leased_by text check (char_length(leased_by) <= 200),
  leased_until timestamptz,
  last_status_code integer,
  last_error text check (char_length(last_error) <= 2000),
  delivered_at timestamptz,
  created_at timestamptz not null default now()
);

create index webhook_deliveries_endpoint_created_idx on public.webhook_deliveries (endpoint_id, created_at desc);
create index webhook_deliveries_due_idx on public.webhook_deliveries (next_attempt_at) where state = 'pending';

create table public.webhook_attempts (
  id bigint generated always as identity primary key,
  delivery_id uuid not null references public.webhook_deliveries (id) on delete cascade,
  attempt integer not null,
  at timestamptz not null default now(),
  status_code integer,
  latency_ms integer,
  error text check (char_length(error) <= 2000)
);

create index webhook_attempts_delivery_id_idx on public.webhook_attempts (delivery_id, attempt);

-- -----------------------------------------------------------------------------
-- Rules
-- -----------------------------------------------------------------------------

-- The event types of contracts/events.json (tests/test_webhooks.py compares them).
create or replace function private.event_types()
returns text[]
language sql
immutable
set search_path = ''
as $$
  select array['message_status_update', 'message_progress', 'new_notification', 'import_progress',
               'whatsapp_status', 'reply_received', 'webhook_test'];
$$;

-- An address no webhook may reach by default: loopback, private (RFC 1918, unique local),
-- link-local (cloud metadata at 169.254.169.254 included), carrier-grade NAT, "this network",
-- multicast, reserved, and IPv4 mapped into IPv6 the same way. The workers check every address a
-- URL's host resolves to with it, just before each attempt.
create or replace function private.address_is_private(p_address inet)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select case
    when family(p_address) = 6 and p_address << '::ffff:0:0/96'::inet
      then private.address_is_private(('0.0.0.0'::inet + (p_address - '::ffff:0.0.0.0'::inet)))
    else p_address << any (array[
      '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12',
      '192.0.0.0/24', '192.168.0.0/16', '198.18.0.0/15', '224.0.0.0/3',
      '::/127', 'fc00::/7', 'fe80::/10', 'ff00::/8', '64:ff9b::/96', '2001:db8::/32']::inet[])
      or p_address = any (array['0.0.0.0', '::', '::1', 'fd00:ec2::254']::inet[])
  end;
$$;

-- What is wrong with a webhook URL (null: nothing): its form, or a host that names a private
-- address literally (localhost, *.localhost, *.internal, an IP). A name that resolves to one is
-- refused by the workers at each attempt (the database cannot resolve names).
create or replace function private.webhook_url_problem(p_url text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  host text := lower((regexp_match(p_url, '^https?://(?:[^/?#@]*@)?(\[[^]]+\]|[^/?#:]+)'))[1]);
  address inet;
begin
  if p_url !~ '^https?://[^[:space:]]+$' or host is null then
    return 'must be an http:// or https:// URL';
  end if;
  if p_url ~ '^https?://[^/?#]*@' then
    return 'must not hold a user name or password';
  end if;
  if (select s.webhook_allow_private from private.current_settings() s) then
    return null;
  end if;
  if host = 'localhost' or host ~ '\.(localhost|internal|local)$' then
    return format('%s is a private host (WEBHOOK_ALLOW_PRIVATE is off)', host);
  end if;
  begin
    address := btrim(host, '[]')::inet;
  exception when others then
    return null;  -- a name: checked when resolved
  end;
  if private.address_is_private(address) then
    return format('%s is a loopback, private, link-local or metadata address (WEBHOOK_ALLOW_PRIVATE is off)', host);
  end if;
  return null;
end;
$$;

-- Every write of an endpoint, on every path: its URL and filter are valid, and only an admin
-- has a deployment-wide one.
create or replace function private.check_webhook_endpoint()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  problem text := private.webhook_url_problem(new.url);
  unknown text[] := array(select t from unnest(new.event_types) t where t <> all (private.event_types()));
begin
  if problem is not null then
    raise exception 'The webhook URL is not allowed: %.', problem
      using errcode = 'WS428', hint = case when problem like '%private%' or problem like '%loopback%'
                                           then 'webhook_url_not_allowed' else 'validation_error' end,
      detail = jsonb_build_array(jsonb_build_object('field', 'url', 'message', problem))::text;
  end if;
  if cardinality(unknown) > 0 then
    raise exception 'Unknown event types: %.', array_to_string(unknown, ', ')
      using errcode = 'WS428', hint = 'validation_error',
      detail = jsonb_build_array(jsonb_build_object(
        'field', 'event_types',
        'message', format('unknown: %s; known: %s', array_to_string(unknown, ', '),
                          array_to_string(private.event_types(), ', '))))::text;
  end if;
  new.event_types := array(select distinct t from unnest(new.event_types) t order by t);
  if private.acting_as_user() and not (select private.is_admin()) then
    if new.owner_id is distinct from (select auth.uid()) then
      raise exception 'Only an admin may have a deployment-wide webhook, or one for another user.'
        using errcode = 'WS403', hint = 'forbidden';
    end if;
  end if;
  if tg_op = 'UPDATE' and new.enabled and not old.enabled then
    new.disabled_reason := null;
    new.failing_since := null;
  end if;
  return new;
end;
$$;

create trigger webhook_endpoints_check before insert or update on public.webhook_endpoints
  for each row execute function private.check_webhook_endpoint();

-- -----------------------------------------------------------------------------
-- Who sees what
-- -----------------------------------------------------------------------------

alter table public.webhook_endpoints enable row level security;
alter table public.webhook_deliveries enable row level security;
alter table public.webhook_attempts enable row level security;

revoke all on public.webhook_endpoints, public.webhook_deliveries, public.webhook_attempts from anon, authenticated;
grant select, delete on public.webhook_endpoints to authenticated;
grant update (url, description, event_types, enabled) on public.webhook_endpoints to authenticated;
grant select on public.webhook_deliveries, public.webhook_attempts to authenticated;
grant select, insert, update, delete on public.webhook_endpoints, public.webhook_deliveries,
  public.webhook_attempts, private.webhook_secrets to service_role;

-- A user's own endpoints; an admin's: all (deployment-wide ones included).
create or replace function private.owns_webhook(p_endpoint_id uuid)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.webhook_endpoints e
    where e.id = p_endpoint_id and (e.owner_id = (select auth.uid()) or (select private.is_admin())));
$$;

create policy "webhook_endpoints: own or admin" on public.webhook_endpoints
  for all to authenticated
  using (owner_id = (select auth.uid()) or (select private.is_admin()))
  with check (owner_id = (select auth.uid()) or (select private.is_admin()));

create policy "webhook_deliveries: of own endpoints" on public.webhook_deliveries
  for select to authenticated
  using ((select private.owns_webhook(endpoint_id)));

create policy "webhook_attempts: of own endpoints" on public.webhook_attempts
  for select to authenticated
  using (exists (select 1 from public.webhook_deliveries d where d.id = delivery_id));

-- -----------------------------------------------------------------------------
-- Actions (callable by authenticated; the rules inside)
-- -----------------------------------------------------------------------------

create or replace function private.new_webhook_secret()
returns text
language sql
volatile
set search_path = ''
as $$
  -- 32 bytes from two version-4 UUIDs (244 random bits): no extension needed.
  select 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64');
$$;

-- The caller's endpoint, locked; a missing or foreign one is not found.
create or replace function private.owned_webhook(p_endpoint_id uuid)
returns public.webhook_endpoints
language plpgsql
security definer
set search_path = ''
as $$
declare
  e public.webhook_endpoints;
begin
  select * into e from public.webhook_endpoints w where w.id = p_endpoint_id for update;
  if not found or not ((select auth.uid()) is null or e.owner_id = (select auth.uid()) or (select private.is_admin())) then
    raise exception 'Webhook % was not found.', p_endpoint_id using errcode = 'WS404', hint = 'webhook_not_found';
  end if;
  return e;
end;
$$;

-- A new endpoint and its secret, shown this once: {"endpoint": {...}, "secret": "whsec_..."}.
-- p_deployment_wide: for every user's events (admins only).
create or replace function public.create_webhook_endpoint(
  p_url text, p_event_types text[] default '{}', p_description text default null,
  p_deployment_wide boolean default false
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  e public.webhook_endpoints;
  secret text := private.new_webhook_secret();
begin
  if (select auth.uid()) is null then
    raise exception 'A webhook belongs to a signed-in user.' using errcode = '42501';
  end if;
  if p_deployment_wide and not (select private.is_admin()) then
    raise exception 'Only an admin may add a deployment-wide webhook.' using errcode = 'WS403', hint = 'forbidden';
  end if;
  insert into public.webhook_endpoints (owner_id, created_by, url, description, event_types)
  values (case when p_deployment_wide then null else (select auth.uid()) end, (select auth.uid()),
          btrim(p_url), nullif(btrim(p_description), ''), coalesce(p_event_types, '{}'))
  returning * into e;
  insert into private.webhook_secrets (endpoint_id, secret) values (e.id, secret);
  return jsonb_build_object('endpoint', to_jsonb(e), 'secret', secret);
end;
$$;

-- A new secret, shown this once; the previous one still signs (a second signature) for
-- p_grace_hours, so receivers can switch without losing an event.
create or replace function public.rotate_webhook_secret(p_endpoint_id uuid, p_grace_hours double precision default 24)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  e public.webhook_endpoints := private.owned_webhook(p_endpoint_id);
  fresh text := private.new_webhook_secret();
begin
  if p_grace_hours is null or p_grace_hours < 0 or p_grace_hours > 24 * 7 then
    raise exception 'The grace period is 0 to 168 hours.' using errcode = 'WS428', hint = 'validation_error',
      detail = jsonb_build_array(jsonb_build_object('field', 'grace_hours', 'message', 'between 0 and 168'))::text;
  end if;
  update private.webhook_secrets s
  set previous_secret = s.secret, previous_until = now() + make_interval(secs => p_grace_hours * 3600),
      secret = fresh
  where s.endpoint_id = e.id;
  update public.webhook_endpoints w set secret_rotated_at = now() where w.id = e.id;
  return fresh;
end;
$$;

-- Sends events again, with their ids unchanged (a receiver that kept one ignores it): one
-- delivery, or every delivery of the endpoint created in [p_since, p_until). Their schedule starts
-- afresh. How many were queued.
create or replace function public.replay_webhook_deliveries(
  p_endpoint_id uuid, p_delivery_id uuid default null, p_since timestamptz default null,
  p_until timestamptz default null
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  e public.webhook_endpoints := private.owned_webhook(p_endpoint_id);
  n integer;
begin
  if p_delivery_id is null and p_since is null then
    raise exception 'Name a delivery, or the start of a time range.' using errcode = 'WS428', hint = 'validation_error',
      detail = jsonb_build_array(jsonb_build_object('field', 'since', 'message', 'a delivery_id or since is required'))::text;
  end if;
  update public.webhook_deliveries d
  set state = 'pending', attempts = 0, next_attempt_at = now(), leased_by = null, leased_until = null
  where d.endpoint_id = e.id
    and (p_delivery_id is null or d.id = p_delivery_id)
    and (p_since is null or d.created_at >= p_since)
    and (p_until is null or d.created_at < p_until);
  get diagnostics n = row_count;
  if p_delivery_id is not null and n = 0 then
    raise exception 'Delivery % of webhook % was not found.', p_delivery_id, p_endpoint_id
      using errcode = 'WS404', hint = 'related_not_found',
      detail = jsonb_build_array(jsonb_build_object('field', 'delivery_id', 'message', 'not a delivery of this webhook'))::text;
  end if;
  if n > 0 then
    perform pg_notify('whatsched_webhooks', '');
  end if;
  return n;
end;
$$;

-- A webhook_test event to this endpoint alone (whatever its filter); the delivery's id.
create or replace function public.ping_webhook_endpoint(p_endpoint_id uuid)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  e public.webhook_endpoints := private.owned_webhook(p_endpoint_id);
  delivery uuid;
begin
  insert into public.webhook_deliveries (endpoint_id, event_type, body)
  values (e.id, 'webhook_test', private.webhook_body('webhook_test',
          jsonb_build_object('type', 'webhook_test', 'webhook_id', e.id, 'timestamp', private.utc_iso(now()))))
  returning id into delivery;
  perform pg_notify('whatsched_webhooks', '');
  return delivery;
end;
$$;

-- -----------------------------------------------------------------------------
-- The outbox
-- -----------------------------------------------------------------------------

-- The Standard Webhooks envelope of an event.
create or replace function private.webhook_body(p_event text, p_payload jsonb)
returns text
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('type', p_event, 'timestamp', private.utc_iso(clock_timestamp()), 'data', p_payload)::text;
$$;

-- The endpoints an event goes to: on a user's topic, that user's and the deployment-wide ones; on
-- the WhatsApp topic (a number's status), the deployment-wide ones and those of the users who may
-- use the number. Each filtered by its event types. Called by private.broadcast, so the rows are
-- written in the transaction of the change.
create or replace function private.enqueue_webhooks(p_payload jsonb, p_event text, p_topic text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  n integer;
  owner uuid;
begin
  if not exists (select 1 from public.webhook_endpoints e where e.enabled) then
    return;  -- the common case costs one index probe
  end if;
  if p_topic like 'user:%' then
    owner := substr(p_topic, 6)::uuid;
  end if;
  insert into public.webhook_deliveries (endpoint_id, event_type, body)
  select e.id, p_event, private.webhook_body(p_event, p_payload)
  from public.webhook_endpoints e
  where e.enabled
    and (cardinality(e.event_types) = 0 or p_event = any (e.event_types))
    and (e.owner_id is null
         or e.owner_id = owner
         or (p_topic = 'whatsapp' and exists (
               select 1 from public.whatsapp_numbers w
               where w.id = (p_payload ->> 'number_id')::uuid
                 and (w.shared or w.owner_id = e.owner_id
                      or exists (select 1 from public.whatsapp_number_users u
                                 where u.number_id = w.id and u.user_id = e.owner_id)
                      or exists (select 1 from public.profiles p where p.id = e.owner_id and p.role = 'admin')))));
  get diagnostics n = row_count;
  if n > 0 then
    perform pg_notify('whatsched_webhooks', '');
  end if;
end;
$$;

-- Due deliveries of enabled endpoints, leased to p_worker for p_lease_s seconds (a worker that
-- dies leaves them to the next after the lease): with the URL, the exact body, the attempt's
-- number and the secrets to sign with (the previous one too during a rotation's grace period).
create or replace function private.claim_webhook_deliveries(p_worker text, p_limit integer, p_lease_s double precision)
returns table (id uuid, endpoint_id uuid, url text, body text, attempt integer, secrets text[])
language sql
volatile
security definer
set search_path = ''
as $$
  with due as (
    select d.id from public.webhook_deliveries d
    join public.webhook_endpoints e on e.id = d.endpoint_id
    where d.state = 'pending' and d.next_attempt_at <= now() and e.enabled
      and (d.leased_until is null or d.leased_until < now())
    order by d.next_attempt_at, d.id
    limit p_limit
    for update of d skip locked
  )
  update public.webhook_deliveries d
  set attempts = d.attempts + 1, leased_by = p_worker,
      leased_until = now() + make_interval(secs => p_lease_s)
  from due, public.webhook_endpoints e, private.webhook_secrets s
  where d.id = due.id and e.id = d.endpoint_id and s.endpoint_id = e.id
  returning d.id, d.endpoint_id, e.url, d.body, d.attempts,
            array_remove(array[s.secret, case when s.previous_until > now() then s.previous_secret end], null);
$$;

-- When the next delivery falls due (null: none pending), for a worker's sleep.
create or replace function private.next_webhook_at()
returns timestamptz
language sql
stable
security definer
set search_path = ''
as $$
  select min(greatest(d.next_attempt_at, coalesce(d.leased_until, '-infinity')))
  from public.webhook_deliveries d join public.webhook_endpoints e on e.id = d.endpoint_id
  where d.state = 'pending' and e.enabled;
$$;

-- The seconds after each failed attempt before the next one (the specification's schedule).
create or replace function private.webhook_retry_delays()
returns double precision[]
language sql
immutable
set search_path = ''
as $$
  select array[5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]::double precision[];
$$;

-- One attempt's outcome (p_status_code null: no answer; p_error why). Returns the delivery's
-- state: delivered (2xx), pending (a retry is due at next_attempt_at), failed (410, or the
-- schedule is spent). A 410 disables the endpoint; a failure that keeps it failing for
-- webhook_disable_after_days disables it too, with a notification.
create or replace function private.finish_webhook_delivery(
  p_id uuid, p_worker text, p_attempt integer, p_status_code integer, p_latency_ms integer, p_error text,
  p_retry_after_s double precision default null
)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  d public.webhook_deliveries;
  e public.webhook_endpoints;
  delays double precision[] := private.webhook_retry_delays();
  ok boolean := p_status_code between 200 and 299;
  gone boolean := p_status_code = 410;
  outcome text;
  why text;
begin
  select * into d from public.webhook_deliveries w where w.id = p_id for update;
  if not found or d.attempts <> p_attempt or d.leased_by is distinct from p_worker then
    return null;  -- replayed or taken over since: this attempt no longer decides
  end if;
  insert into public.webhook_attempts (delivery_id, attempt, status_code, latency_ms, error)
  values (d.id, p_attempt, p_status_code, p_latency_ms, left(p_error, 2000));
  outcome := case when ok then 'delivered' when gone or p_attempt > cardinality(delays) then 'failed' else 'pending' end;
  update public.webhook_deliveries w
  set state = outcome, leased_by = null, leased_until = null, last_status_code = p_status_code,
      last_error = left(p_error, 2000), delivered_at = case when ok then now() end,
      next_attempt_at = case when outcome = 'pending' then now() + make_interval(secs => greatest(
        delays[p_attempt] * (0.9 + random() * 0.2), least(coalesce(p_retry_after_s, 0), 86400))) else w.next_attempt_at end
  where w.id = d.id;

  update public.webhook_endpoints w
  set failing_since = case when ok then null else coalesce(w.failing_since, now()) end
  where w.id = d.endpoint_id
  returning * into e;
  if gone then
    why := 'the receiver answered 410 Gone';
  elsif not ok and e.failing_since < now() - make_interval(secs => (select s.webhook_disable_after_days * 86400
                                                                       from private.current_settings() s)) then
    why := format('failing since %s without a success', private.utc_iso(e.failing_since));
  end if;
  if why is not null and e.enabled then
    update public.webhook_endpoints w set enabled = false, disabled_reason = why where w.id = e.id;
    insert into public.notifications (user_id, type, title, message)
    select u.id, 'error', 'Webhook desactivado',
           left(format('El webhook %s (%s) se desactivó: %s. Revísalo y actívalo de nuevo; los eventos pendientes esperan.',
                       e.url, e.id, why), 2000)
    from (select e.owner_id as id where e.owner_id is not null
          union select p.id from public.profiles p where e.owner_id is null and p.role = 'admin') u;
  end if;
  return outcome;
end;
$$;

revoke all on function
  private.event_types(), private.address_is_private(inet), private.webhook_url_problem(text),
  private.owns_webhook(uuid), private.new_webhook_secret(), private.owned_webhook(uuid),
  private.webhook_body(text, jsonb), private.enqueue_webhooks(jsonb, text, text),
  private.claim_webhook_deliveries(text, integer, double precision), private.next_webhook_at(),
  private.webhook_retry_delays(),
  private.finish_webhook_delivery(uuid, text, integer, integer, integer, text, double precision),
  public.create_webhook_endpoint(text, text[], text, boolean),
  public.rotate_webhook_secret(uuid, double precision),
  public.replay_webhook_deliveries(uuid, uuid, timestamptz, timestamptz),
  public.ping_webhook_endpoint(uuid)
  from public, anon;
revoke all on function
  private.enqueue_webhooks(jsonb, text, text), private.claim_webhook_deliveries(text, integer, double precision),
  private.next_webhook_at(),
  private.finish_webhook_delivery(uuid, text, integer, integer, integer, text, double precision)
  from authenticated;
grant execute on function
  private.event_types(), private.owns_webhook(uuid), private.webhook_url_problem(text),
  private.address_is_private(inet),
  public.create_webhook_endpoint(text, text[], text, boolean),
  public.rotate_webhook_secret(uuid, double precision),
  public.replay_webhook_deliveries(uuid, uuid, timestamptz, timestamptz),
  public.ping_webhook_endpoint(uuid)
  to authenticated, service_role;
grant execute on function
  private.enqueue_webhooks(jsonb, text, text), private.claim_webhook_deliveries(text, integer, double precision),
  private.next_webhook_at(), private.webhook_retry_delays(),
  private.finish_webhook_delivery(uuid, text, integer, integer, integer, text, double precision)
  to service_role;

-- -----------------------------------------------------------------------------
-- Audit: created, changed, deleted, its secret rotated, disabled by the database
-- -----------------------------------------------------------------------------

create or replace function private.audit_webhook()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  action text;
  details jsonb;
begin
  if tg_op = 'INSERT' then
    action := 'create';
    details := jsonb_build_object('url', new.url, 'event_types', new.event_types, 'owner', new.owner_id);
  elsif tg_op = 'DELETE' then
    if old.owner_id is not null and not exists (select 1 from auth.users u where u.id = old.owner_id) then
      return null;  -- gone with its owner's account
    end if;
    action := 'delete';
    details := jsonb_build_object('url', old.url, 'owner', old.owner_id);
  elsif new.secret_rotated_at is distinct from old.secret_rotated_at then
    action := 'rotate_secret';
    details := '{}'::jsonb;
  elsif old.enabled and not new.enabled and new.disabled_reason is not null then
    action := 'disable';
    details := jsonb_build_object('reason', new.disabled_reason);
  elsif (new.url, new.description, new.event_types, new.enabled)
        is distinct from (old.url, old.description, old.event_types, old.enabled) then
    action := 'update';
    details := jsonb_build_object(
      'from', jsonb_build_object('url', old.url, 'event_types', old.event_types, 'enabled', old.enabled),
      'to', jsonb_build_object('url', new.url, 'event_types', new.event_types, 'enabled', new.enabled));
  else
    return null;  -- the workers' bookkeeping (failing_since)
  end if;
  perform private.write_audit(
    (select auth.uid()), 'webhook.' || action, 'webhook', array[coalesce(new.id, old.id)::text],
    array[jsonb_strip_nulls(details)]);
  return null;
end;
$$;

create trigger webhook_endpoints_audit after insert or update or delete on public.webhook_endpoints
  for each row execute function private.audit_webhook();

revoke all on function private.audit_webhook(), private.check_webhook_endpoint() from public, anon, authenticated;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on table public.webhook_endpoints is 'URLs that receive a user''s events by POST, signed as Standard Webhooks says; owner_id null: deployment-wide (admins).';
comment on column public.webhook_endpoints.owner_id is 'Whose events it receives; null: every user''s (deployment-wide, admins only).';
comment on column public.webhook_endpoints.created_by is 'The user who added it (an admin, for a deployment-wide one).';
comment on column public.webhook_endpoints.url is 'Where the events are POSTed; never a loopback, private, link-local or metadata address unless settings allow it.';
comment on column public.webhook_endpoints.event_types is 'The event types it receives (private.event_types); empty: all of them.';
comment on column public.webhook_endpoints.enabled is 'Whether events are sent to it; the database disables it after a 410 or days of failures.';
comment on column public.webhook_endpoints.disabled_reason is 'Why the database disabled it (a 410, days of failures); cleared when it is enabled again.';
comment on column public.webhook_endpoints.failing_since is 'The first failure since its last success; null: the last attempt succeeded.';
comment on column public.webhook_endpoints.secret_rotated_at is 'When its signing secret was last rotated (public.rotate_webhook_secret).';

comment on table public.webhook_deliveries is 'The webhook outbox: one row per event per endpoint, written in the transaction of the change it reports; its id is the webhook-id header.';
comment on column public.webhook_deliveries.endpoint_id is 'The endpoint it is sent to.';
comment on column public.webhook_deliveries.event_type is 'The event''s type (private.event_types).';
comment on column public.webhook_deliveries.body is 'The request body, fixed at the event so every attempt signs and sends the same bytes.';
comment on column public.webhook_deliveries.state is 'pending (to send, or a retry is due) | delivered (a 2xx) | failed (a 410, or the retry schedule is spent).';
comment on column public.webhook_deliveries.attempts is 'Attempts made so far.';
comment on column public.webhook_deliveries.next_attempt_at is 'When the next attempt is due (the retry schedule, never before a Retry-After).';
comment on column public.webhook_deliveries.leased_by is 'The worker sending it now.';
comment on column public.webhook_deliveries.leased_until is 'When another worker may take it over.';
comment on column public.webhook_deliveries.last_status_code is 'The HTTP status of the last attempt; null: no answer.';
comment on column public.webhook_deliveries.last_error is 'What went wrong in the last attempt.';
comment on column public.webhook_deliveries.delivered_at is 'When a 2xx answered it.';

comment on table public.webhook_attempts is 'Each attempt at a webhook delivery: status code, latency, error.';
comment on column public.webhook_attempts.delivery_id is 'The delivery attempted.';
comment on column public.webhook_attempts.attempt is 'Its number among the delivery''s attempts, from 1.';
comment on column public.webhook_attempts.at is 'When it was made.';
comment on column public.webhook_attempts.status_code is 'The HTTP status answered; null: no answer.';
comment on column public.webhook_attempts.latency_ms is 'How long the receiver took to answer, in milliseconds.';
comment on column public.webhook_attempts.error is 'What went wrong; null when it succeeded.';

comment on function public.create_webhook_endpoint(text, text[], text, boolean) is 'Register an endpoint for the caller''s events (p_deployment_wide: every user''s, admins only); returns it and its secret, shown this once.';
comment on function public.rotate_webhook_secret(uuid, double precision) is 'A new signing secret, shown this once; the previous one still signs for p_grace_hours, so receivers can switch without losing an event.';
comment on function public.replay_webhook_deliveries(uuid, uuid, timestamptz, timestamptz) is 'Send events again with their ids unchanged: one delivery, or the endpoint''s deliveries created in [p_since, p_until); returns how many were queued.';
comment on function public.ping_webhook_endpoint(uuid) is 'Send a webhook_test event to this endpoint alone (whatever its filter); returns the delivery''s id.';
