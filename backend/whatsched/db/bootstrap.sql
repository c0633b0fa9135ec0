-- Supabase-compatible bootstrap for plain PostgreSQL (embedded default, CI, self-hosted).
-- Creates what a hosted Supabase project already has, with Supabase's own definitions,
-- so the migrations in supabase/migrations run unchanged on both. Idempotent.
-- Never applied to a Supabase database (whatsched.db.bootstrap detects one).

-- ---------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  -- The login role the API and worker use: it owns nothing and can only become the three above.
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

-- GoTrue's role (supabase/postgres migrations/db/init-scripts/00000000000001-auth-schema.sql):
-- it owns the auth tables and is the only API-side role that may touch them. Supabase creates it
-- `noinherit createrole login noreplication`; here nobody logs in as it (the local auth provider
-- becomes it from `authenticator`, below), and it gets no CREATEROLE: on PostgreSQL 15 that would
-- let whoever can become it grant itself any non-superuser role (pg_execute_server_program, ...).
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
    create role supabase_auth_admin nologin noinherit noreplication;
  end if;
  -- Realtime's owner role (supabase/realtime 20260707120000_restrict_realtime_schema).
  if not exists (select 1 from pg_roles where rolname = 'supabase_realtime_admin') then
    create role supabase_realtime_admin nologin noinherit noreplication;
  end if;
  -- Storage's owner role (supabase/postgres init-scripts/00000000000002-storage-schema.sql).
  if not exists (select 1 from pg_roles where rolname = 'supabase_storage_admin') then
    create role supabase_storage_admin nologin noinherit noreplication;
  end if;
end
$$;

-- LOCAL ONLY: on Supabase `authenticator` cannot become supabase_auth_admin (GoTrue logs in as it
-- directly). Here our login role is what the local auth provider, standing in for GoTrue, runs as,
-- so it may `set role supabase_auth_admin` (whatsched.auth.local.auth_admin_tx).
grant supabase_auth_admin to authenticator;

-- Role settings as Supabase has them (ALTER ROLE ... SET only when different, so concurrent
-- bootstraps of several databases on one server do not update the same pg_db_role_setting row):
-- init-scripts/00000000000000-initial-schema.sql gives the API roles short statement timeouts
-- (PostgREST applies an impersonated role's settings; so does whatsched.db.pool for user_tx);
-- 00000000000001-auth-schema.sql and 20220322085208_gotrue-session-limit.sql set GoTrue's.
-- Not mirrored: Supabase's `authenticator` statement_timeout/lock_timeout of 8s
-- (20221028101028, 20231130133139): here `authenticator` is also the login of our worker and
-- imports, which on Supabase log in as `postgres`, without them.
do $$
declare
  wanted record;
begin
  for wanted in
    select * from (values
      ('anon', 'statement_timeout', '3s'),
      ('authenticated', 'statement_timeout', '8s'),
      ('supabase_auth_admin', 'search_path', 'auth'),
      ('supabase_auth_admin', 'idle_in_transaction_session_timeout', '60000')
    ) as w (role_name, setting, value)
  loop
    if not exists (
      select 1 from pg_db_role_setting s
      where s.setrole = wanted.role_name::regrole and s.setdatabase = 0
        and wanted.setting || '=' || wanted.value = any (s.setconfig)
    ) then
      execute format('alter role %I set %s = %L', wanted.role_name, wanted.setting, wanted.value);
    end if;
  end loop;
end
$$;

-- ---------------------------------------------------------------------------
-- Schemas and default privileges (Supabase grants broadly and relies on RLS)
-- ---------------------------------------------------------------------------
create schema if not exists extensions;
create schema if not exists auth;
create schema if not exists realtime;
create schema if not exists supabase_migrations;

grant usage on schema public, extensions to anon, authenticated, service_role;
grant usage on schema auth, realtime to anon, authenticated, service_role;

alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- auth: GoTrue's tables (the columns GoTrue stores) and Supabase's helper functions
-- ---------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                 where n.nspname = 'auth' and t.typname = 'aal_level') then
    create type auth.aal_level as enum ('aal1', 'aal2', 'aal3');
  end if;
end
$$;

create table if not exists auth.users (
  instance_id uuid,
  id uuid not null primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  invited_at timestamptz,
  confirmation_token varchar(255),
  confirmation_sent_at timestamptz,
  recovery_token varchar(255),
  recovery_sent_at timestamptz,
  email_change_token_new varchar(255),
  email_change varchar(255),
  email_change_sent_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_super_admin boolean,
  created_at timestamptz,
  updated_at timestamptz,
  phone text unique default null,
  phone_confirmed_at timestamptz,
  phone_change text default '',
  phone_change_token varchar(255) default '',
  phone_change_sent_at timestamptz,
  confirmed_at timestamptz generated always as (least(email_confirmed_at, phone_confirmed_at)) stored,
  email_change_token_current varchar(255) default '',
  email_change_confirm_status smallint default 0 check (email_change_confirm_status >= 0 and email_change_confirm_status <= 2),
  banned_until timestamptz,
  reauthentication_token varchar(255) default '',
  reauthentication_sent_at timestamptz,
  is_sso_user boolean not null default false,
  deleted_at timestamptz,
  is_anonymous boolean not null default false
);
create unique index if not exists users_email_partial_key on auth.users (email) where (is_sso_user = false);
create index if not exists users_instance_id_idx on auth.users (instance_id);

create table if not exists auth.sessions (
  id uuid not null primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz,
  updated_at timestamptz,
  factor_id uuid,
  aal auth.aal_level,
  not_after timestamptz,
  refreshed_at timestamp,
  user_agent text,
  ip inet,
  tag text
);
create index if not exists sessions_user_id_idx on auth.sessions (user_id);
create index if not exists sessions_not_after_idx on auth.sessions (not_after desc);

create table if not exists auth.refresh_tokens (
  instance_id uuid,
  id bigserial primary key,
  token varchar(255) unique,
  user_id varchar(255),
  revoked boolean,
  created_at timestamptz,
  updated_at timestamptz,
  parent varchar(255),
  session_id uuid references auth.sessions (id) on delete cascade
);
create index if not exists refresh_tokens_instance_id_user_id_idx on auth.refresh_tokens (instance_id, user_id);
create index if not exists refresh_tokens_parent_idx on auth.refresh_tokens (parent);
create index if not exists refresh_tokens_session_id_revoked_idx on auth.refresh_tokens (session_id, revoked);

create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;

-- Who may touch the auth tables, as on Supabase (init-scripts/00000000000001-auth-schema.sql,
-- migrations/20211115181400_update-auth-permissions.sql, 20211124212715_update-auth-owner.sql;
-- GoTrue's 20240612123726_enable_rls_update_grants.up.sql): supabase_auth_admin owns them (and
-- the sequence, which follows its table) and the helper functions; anon, authenticated and
-- service_role only use the schema, never its tables. RLS is on, without policies.
-- Earlier bootstraps granted service_role the tables: revoked here.
alter table auth.users owner to supabase_auth_admin;
alter table auth.sessions owner to supabase_auth_admin;
alter table auth.refresh_tokens owner to supabase_auth_admin;
alter type auth.aal_level owner to supabase_auth_admin;
alter function auth.uid() owner to supabase_auth_admin;
alter function auth.role() owner to supabase_auth_admin;
alter function auth.email() owner to supabase_auth_admin;
alter function auth.jwt() owner to supabase_auth_admin;
grant all privileges on schema auth to supabase_auth_admin;
grant all privileges on all tables in schema auth to supabase_auth_admin;
grant all privileges on all sequences in schema auth to supabase_auth_admin;
revoke all on auth.users, auth.sessions, auth.refresh_tokens from anon, authenticated, service_role;
revoke all on sequence auth.refresh_tokens_id_seq from anon, authenticated, service_role;
alter table auth.users enable row level security;
alter table auth.sessions enable row level security;
alter table auth.refresh_tokens enable row level security;

-- ---------------------------------------------------------------------------
-- realtime: Realtime's messages table (which authorizes private channels), topic() and send(),
-- as supabase/realtime defines them (priv/repo/tenant_schema/realtime/: tables/messages.sql,
-- functions/send.sql, functions/topic.sql, schema.sql; the migrations under
-- lib/realtime/tenants/repo/migrations/ that built them). Locally send() also does a
-- pg_notify('realtime', ...) that the API's hubs LISTEN to.
-- ---------------------------------------------------------------------------
grant create, usage on schema realtime to supabase_realtime_admin with grant option;

-- Partitioned by day on inserted_at, as Realtime has it since 20241030150047_messages_partitioning.
-- Earlier bootstraps made a plain table: it is replaced (its rows are ephemeral broadcasts; its
-- policies, created by our migrations, are carried over as Realtime's own migration did).
do $$
declare
  pol record;
begin
  if exists (select 1 from pg_class where oid = to_regclass('realtime.messages') and relkind = 'r') then
    alter table realtime.messages rename to messages_unpartitioned;
    alter index if exists realtime.messages_pkey rename to messages_unpartitioned_pkey;
  end if;
  if to_regclass('realtime.messages') is null then
    create table realtime.messages (
      topic text not null,
      extension text not null,
      payload jsonb,
      event text,
      private boolean default false,
      updated_at timestamp not null default now(),
      inserted_at timestamp not null default now(),
      id uuid not null default gen_random_uuid(),
      binary_payload bytea,
      constraint messages_pkey primary key (id, inserted_at)
    ) partition by range (inserted_at);
    alter table realtime.messages
      add constraint messages_payload_exclusive check (payload is null or binary_payload is null) not valid;
  end if;
  if to_regclass('realtime.messages_unpartitioned') is not null then
    for pol in select * from pg_policies where schemaname = 'realtime' and tablename = 'messages_unpartitioned' loop
      execute format(
        'create policy %I on realtime.messages as %s for %s to %s%s%s',
        pol.policyname,
        pol.permissive,
        pol.cmd,
        (select string_agg(quote_ident(r), ', ') from unnest(pol.roles) as r),
        case when pol.qual is not null then ' using (' || pol.qual || ')' else '' end,
        case when pol.with_check is not null then ' with check (' || pol.with_check || ')' else '' end
      );
    end loop;
    drop table realtime.messages_unpartitioned;
  end if;
end
$$;
create index if not exists messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic)
  where extension = 'broadcast' and private is true;
alter table realtime.messages owner to supabase_realtime_admin;
alter table realtime.messages enable row level security;
-- Supabase grants insert, select, update to anon, authenticated and service_role; we keep anon out
-- of the table and users' writes to their policies (tests/test_schema_rls.py: anon is refused).
grant select, insert on realtime.messages to authenticated, service_role;

-- Realtime's janitor, run by every bootstrap (`whatsched migrate`, `whatsched dev`): the day
-- partitions from yesterday to three days ahead (Realtime.Tenants.create_messages_partitions) and
-- none older than 72 hours (Realtime.Messages.delete_old_messages). Days are the database's
-- (inserted_at is now() as a timestamp without time zone).
do $$
declare
  day date;
  part text;
begin
  for offset_days in -1..3 loop
    day := current_date + offset_days;
    part := 'messages_' || to_char(day, 'YYYY_MM_DD');
    if to_regclass('realtime.' || part) is null then
      execute format(
        'create table realtime.%I partition of realtime.messages for values from (%L) to (%L)',
        part, day::timestamp, (day + 1)::timestamp
      );
      execute format('alter table realtime.%I owner to supabase_realtime_admin', part);
    end if;
  end loop;
  for part in
    select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'realtime.messages'::regclass and c.relname ~ '^messages_\d{4}_\d{2}_\d{2}$'
  loop
    if to_date(substr(part, 10), 'YYYY_MM_DD') < (localtimestamp - interval '72 hours')::date then
      execute format('drop table realtime.%I', part);
    end if;
  end loop;
end
$$;

create or replace function realtime.topic() returns text
language sql stable
as $$
  select nullif(current_setting('realtime.topic', true), '')::text
$$;
alter function realtime.topic() owner to supabase_realtime_admin;
grant execute on function realtime.topic() to anon, authenticated, service_role;

-- Realtime's send (functions/send.sql, last changed by 20260605120000_rename_broadcast_send_warning):
-- a payload without an "id" key gets the message's generated uuid as "id"; the topic goes into
-- realtime.topic for the policies; the row is inserted as the caller (RLS applies); any error
-- becomes a WARNING, never the caller's failure. Two local additions:
-- - pg_notify('realtime', {"topic","event","payload","private"}) for the API's hubs, with the
--   payload as given (no "id"): what private.broadcast notifies on Supabase too, so our sockets
--   get the same frames on both (whatsched.realtime.hub). Only what Realtime would broadcast is
--   relayed: a send whose insert failed (RLS refuses every user's insert) notifies nothing, so
--   the grant Supabase gives every role opens no way onto someone's socket.
-- - no insert when the bootstrap's day partitions have run out (a plain-Postgres server running
--   for days without `whatsched migrate`): nothing here reads the stored copy, and a WARNING on
--   every event would flood the server log. On Supabase, Realtime keeps the partitions. Then
--   only callers RLS does not apply to (the service, our definer functions) are relayed.
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql
as $$
declare
  generated_id uuid;
  final_payload jsonb;
  relay boolean := false;
begin
  begin
    generated_id := gen_random_uuid();
    if payload ? 'id' then
      final_payload := payload;
    else
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    end if;
    execute format('SET LOCAL realtime.topic TO %L', topic);
    if to_regclass('realtime.messages_' || to_char(localtimestamp, 'YYYY_MM_DD')) is not null then
      insert into realtime.messages (id, payload, event, topic, private, extension)
      values (generated_id, final_payload, event, topic, private, 'broadcast');
      relay := true;
    else
      relay := not row_security_active('realtime.messages');
    end if;
  exception
    when others then
      raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
  if relay then
    perform pg_notify(
      'realtime',
      jsonb_build_object('topic', topic, 'event', event, 'payload', payload, 'private', private)::text
    );
  end if;
end;
$$;
alter function realtime.send(jsonb, text, text, boolean) owner to supabase_realtime_admin;
grant execute on function realtime.send(jsonb, text, text, boolean) to anon, authenticated, service_role;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- ---------------------------------------------------------------------------
-- storage: Supabase Storage's buckets and objects tables and its path helpers, as supabase/storage
-- defines them (migrations/tenant/: 0002-storage-schema and the columns added since: 0003
-- path_tokens, 0008 public, 0012 avif_autodetection, 0013/0014 file_size_limit and
-- allowed_mime_types, 0016 version, 0018 owner_id, 0025 user_metadata; RLS 0002/0007; grants 0046;
-- foldername/filename/extension as 0060/0061 left them; direct deletes refused as 0055 does).
-- No Storage server runs here: the API's local storage writes the bytes under DATA_DIR and the
-- objects' rows itself, as the user, so the same policies decide (whatsched.media.storage).
-- ---------------------------------------------------------------------------
create schema if not exists storage;
grant usage on schema storage to anon, authenticated, service_role;

create table if not exists storage.buckets (
  id text not null primary key,
  name text not null,
  owner uuid,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  public boolean default false,
  avif_autodetection boolean default false,
  file_size_limit bigint,
  allowed_mime_types text[],
  owner_id text
);
create unique index if not exists bname on storage.buckets using btree (name);

create table if not exists storage.objects (
  id uuid not null default gen_random_uuid() primary key,
  bucket_id text references storage.buckets (id),
  name text,
  owner uuid,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_accessed_at timestamptz default now(),
  metadata jsonb,
  path_tokens text[] generated always as (string_to_array(name, '/')) stored,
  version text,
  owner_id text,
  user_metadata jsonb
);
create unique index if not exists bucketid_objname on storage.objects using btree (bucket_id, name);
create index if not exists name_prefix_search on storage.objects (name text_pattern_ops);

alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;

create or replace function storage.foldername(name text)
returns text[]
language plpgsql
immutable
as $function$
declare
  _parts text[];
begin
  select string_to_array(name, '/') into _parts;
  return _parts[1 : array_length(_parts, 1) - 1];
end
$function$;

create or replace function storage.filename(name text)
returns text
language plpgsql
immutable
as $function$
declare
  _parts text[];
begin
  select string_to_array(name, '/') into _parts;
  return _parts[array_length(_parts, 1)];
end
$function$;

create or replace function storage.extension(name text)
returns text
language plpgsql
immutable
as $function$
declare
  _parts text[];
  _filename text;
begin
  select string_to_array(name, '/') into _parts;
  select _parts[array_length(_parts, 1)] into _filename;
  return reverse(split_part(reverse(_filename), '.', 1));
end
$function$;

create or replace function storage.protect_delete()
returns trigger
language plpgsql
as $$
begin
  if coalesce(current_setting('storage.allow_delete_query', true), 'false') != 'true' then
    raise exception 'Direct deletion from storage tables is not allowed. Use the Storage API instead.'
      using hint = 'This prevents accidental data loss from orphaned objects.', errcode = '42501';
  end if;
  return null;
end;
$$;

drop trigger if exists protect_buckets_delete on storage.buckets;
create trigger protect_buckets_delete before delete on storage.buckets
  for each statement execute function storage.protect_delete();
drop trigger if exists protect_objects_delete on storage.objects;
create trigger protect_objects_delete before delete on storage.objects
  for each statement execute function storage.protect_delete();

alter schema storage owner to supabase_storage_admin;
alter table storage.buckets owner to supabase_storage_admin;
alter table storage.objects owner to supabase_storage_admin;
alter function storage.foldername(text) owner to supabase_storage_admin;
alter function storage.filename(text) owner to supabase_storage_admin;
alter function storage.extension(text) owner to supabase_storage_admin;
alter function storage.protect_delete() owner to supabase_storage_admin;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;
grant execute on function storage.foldername(text), storage.filename(text), storage.extension(text)
  to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- supabase_migrations: the supabase CLI's history table, so both runners agree
-- ---------------------------------------------------------------------------
create table if not exists supabase_migrations.schema_migrations (
  version text not null primary key
);
alter table supabase_migrations.schema_migrations add column if not exists statements text[];
alter table supabase_migrations.schema_migrations add column if not exists name text;
