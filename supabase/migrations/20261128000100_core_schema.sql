-- =============================================================================
-- whatsched core schema: profiles, contacts, groups, messages, deliveries,
-- notifications and the audit log. Every owner column is `created_by` (the
-- guide's name), except notifications, which belong to `user_id`.
-- =============================================================================

create schema if not exists private;
grant usage on schema private to authenticated, service_role;

-- -----------------------------------------------------------------------------
-- Helpers
-- -----------------------------------------------------------------------------

create or replace function private.touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;

-- Asking Postgres to convert a time is instant; scanning pg_timezone_names costs ~80 ms per call.
create or replace function private.is_timezone(tz text)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
begin
  perform now() at time zone tz;
  return true;
exception when invalid_parameter_value then
  return false;
end;
$$;

-- -----------------------------------------------------------------------------
-- profiles: one per auth.users row
-- -----------------------------------------------------------------------------

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  display_name text not null default '' check (char_length(display_name) <= 200),
  role text not null default 'user' check (role in ('user', 'admin')),
  timezone text not null default 'UTC' check (private.is_timezone(timezone)),
  default_country text not null default 'CL' check (default_country ~ '^[A-Z]{2}$'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create trigger profiles_touch before update on public.profiles
  for each row execute function private.touch_updated_at();

create or replace function private.create_profile_for_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.profiles (id, display_name)
  values (
    new.id,
    coalesce(new.raw_user_meta_data ->> 'name', split_part(coalesce(new.email, ''), '@', 1), '')
  )
  on conflict (id) do nothing;
  return new;
end;
$$;

create trigger on_auth_user_created after insert on auth.users
  for each row execute function private.create_profile_for_user();

-- -----------------------------------------------------------------------------
-- contacts
-- -----------------------------------------------------------------------------

create table public.contacts (
  id uuid primary key default gen_random_uuid(),
  created_by uuid not null default auth.uid() references auth.users (id) on delete cascade,
  name text not null check (char_length(name) between 1 and 200),
  phone text not null check (phone ~ '^\+[1-9]\d{1,14}$'),
  email text check (email is null or (char_length(email) <= 320 and email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$')),
  is_active boolean not null default true,
  opted_out_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint contacts_phone_per_owner unique (created_by, phone),
  constraint contacts_id_owner unique (id, created_by)
);

create index contacts_created_by_created_at_idx on public.contacts (created_by, created_at desc);
create trigger contacts_touch before update on public.contacts
  for each row execute function private.touch_updated_at();

-- -----------------------------------------------------------------------------
-- groups and their members
-- -----------------------------------------------------------------------------

create table public.groups (
  id uuid primary key default gen_random_uuid(),
  created_by uuid not null default auth.uid() references auth.users (id) on delete cascade,
  name text not null check (char_length(btrim(name)) between 1 and 100),
  description text not null default '' check (char_length(description) <= 1000),
  contact_count integer not null default 0 check (contact_count >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint groups_id_owner unique (id, created_by)
);

create unique index groups_name_per_owner on public.groups (created_by, lower(name));
create trigger groups_touch before update on public.groups
  for each row execute function private.touch_updated_at();

-- Both sides belong to the same owner: the composite foreign keys make a cross-owner link impossible.
create table public.group_contacts (
  group_id uuid not null,
  contact_id uuid not null,
  created_by uuid not null default auth.uid(),
  added_at timestamptz not null default now(),
  primary key (group_id, contact_id),
  foreign key (group_id, created_by) references public.groups (id, created_by) on delete cascade,
  foreign key (contact_id, created_by) references public.contacts (id, created_by) on delete cascade
);

create index group_contacts_contact_id_created_by_idx on public.group_contacts (contact_id, created_by);
create index group_contacts_group_id_created_by_idx on public.group_contacts (group_id, created_by);
create index group_contacts_created_by_idx on public.group_contacts (created_by);

-- -----------------------------------------------------------------------------
-- messages
-- -----------------------------------------------------------------------------

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  created_by uuid not null default auth.uid() references auth.users (id) on delete cascade,
  content text not null check (char_length(content) between 1 and 4096),
  scheduled_for timestamptz,
  status text not null default 'draft'
    check (status in ('draft', 'scheduled', 'sending', 'sent', 'paused', 'cancelled', 'failed')),
  sent_at timestamptz,
  recipient_count integer not null default 0,
  delivered_count integer not null default 0,
  failed_count integer not null default 0,
  -- Recurrence (beyond the guide): a 5-field cron expression in the owner's timezone.
  recurrence text check (recurrence is null or char_length(recurrence) <= 100),
  recurrence_parent_id uuid references public.messages (id) on delete set null,
  -- Dispatcher lease: which worker holds the message and until when.
  claimed_by text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint messages_id_owner unique (id, created_by)
);

create index messages_created_by_created_at_idx on public.messages (created_by, created_at desc);
create index messages_due_idx on public.messages (scheduled_for) where status = 'scheduled';
create index messages_sending_lease_idx on public.messages (lease_expires_at) where status = 'sending';
create index messages_recurrence_parent_id_idx on public.messages (recurrence_parent_id);
create trigger messages_touch before update on public.messages
  for each row execute function private.touch_updated_at();

create table public.message_groups (
  message_id uuid not null,
  group_id uuid not null,
  created_by uuid not null default auth.uid(),
  primary key (message_id, group_id),
  foreign key (message_id, created_by) references public.messages (id, created_by) on delete cascade,
  foreign key (group_id, created_by) references public.groups (id, created_by) on delete cascade
);

create index message_groups_group_id_created_by_idx on public.message_groups (group_id, created_by);
create index message_groups_message_id_created_by_idx on public.message_groups (message_id, created_by);
create index message_groups_created_by_idx on public.message_groups (created_by);

-- -----------------------------------------------------------------------------
-- deliveries: one per (message, recipient phone)
-- -----------------------------------------------------------------------------

create table public.deliveries (
  id uuid primary key default gen_random_uuid(),
  message_id uuid not null,
  created_by uuid not null,
  contact_id uuid references public.contacts (id) on delete set null,
  phone text not null check (phone ~ '^\+[1-9]\d{1,14}$'),
  contact_name text,
  state text not null default 'pending'
    check (state in ('pending', 'sending', 'sent', 'delivered', 'read', 'failed', 'cancelled', 'skipped')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error_code text,
  last_error text,
  whatsapp_message_id text,
  idempotency_key text not null,
  claimed_by text,
  lease_expires_at timestamptz,
  sent_at timestamptz,
  delivered_at timestamptz,
  read_at timestamptz,
  failed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint deliveries_one_per_phone unique (message_id, phone),
  constraint deliveries_idempotency_key unique (idempotency_key),
  foreign key (message_id, created_by) references public.messages (id, created_by) on delete cascade
);

-- The composite foreign key to messages gets its own index (cascades and the FK check use it).
create index deliveries_message_id_created_by_idx on public.deliveries (message_id, created_by);
create index deliveries_created_by_idx on public.deliveries (created_by);
create index deliveries_contact_id_idx on public.deliveries (contact_id);
create index deliveries_work_idx on public.deliveries (message_id, next_attempt_at) where state = 'pending';
create index deliveries_sending_lease_idx on public.deliveries (lease_expires_at) where state = 'sending';
create index deliveries_whatsapp_message_id_idx on public.deliveries (whatsapp_message_id)
  where whatsapp_message_id is not null;
create index deliveries_sent_at_idx on public.deliveries (sent_at) where sent_at is not null;
create trigger deliveries_touch before update on public.deliveries
  for each row execute function private.touch_updated_at();

-- -----------------------------------------------------------------------------
-- notifications (the guide's shape)
-- -----------------------------------------------------------------------------

create table public.notifications (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  type text not null check (type in ('success', 'error', 'warning', 'info')),
  title text not null check (char_length(title) between 1 and 200),
  message text not null check (char_length(message) <= 2000),
  is_read boolean not null default false,
  related_entity_type text check (related_entity_type in ('message', 'group', 'contact')),
  related_entity_id uuid,
  created_at timestamptz not null default now()
);

create index notifications_user_id_created_at_idx on public.notifications (user_id, created_at desc);
create index notifications_unread_idx on public.notifications (user_id) where not is_read;

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
  if current_user in ('anon', 'authenticated') then
    raise exception 'the audit log is append-only' using errcode = '42501';
  end if;
  return coalesce(new, old);
end;
$$;

create trigger audit_log_append_only before update or delete on public.audit_log
  for each row execute function private.audit_log_is_append_only();
