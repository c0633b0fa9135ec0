-- =============================================================================
-- whatsched core schema: every public table and all their indexes, in one place.
--
--   profiles, contacts, groups, group_contacts, messages, message_groups,
--   deliveries, notifications                  the data (owner column: created_by,
--                                              the guide's name; notifications and
--                                              sync_operations: user_id)
--   message_counts, message_audiences          derived, written only by the triggers of
--                                              20261129000500_derived_counts
--   sync_operations                            the stored answer of each offline operation
--   replies                                    what contacts answered (20261129000900_replies_and_opt_out)
--
-- Private state lives with the feature that owns it: private.settings and
-- private.rate_events with the content rules, private.senders and sender_usage with
-- the dispatcher. A feature added since lands whole in its own file: the WhatsApp
-- numbers in 20261129000650_whatsapp_numbers, public.audit_log with its policies and
-- triggers in 20261206000100_audit_trail.
--
-- Who may read and write what: 20261129000200_row_level_security. Rules on
-- content and sending: 20261129000400_content_rules. Status changes:
-- 20261129000300_message_state_machine.
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

-- Whether the statement runs as a user (the API's user transactions and supabase-js alike) rather
-- than as the service, the worker or an owner: the one test every "users may not" rule uses.
create or replace function private.acting_as_user()
returns boolean
language sql
stable
set search_path = ''
as $$
  select current_user in ('anon', 'authenticated');
$$;

-- A phone number in E.164, the one copy in the schema of contracts/limits.json's e164_pattern
-- (tests/test_contracts.py compares them): every phone column's check and every phone a bridge
-- reports are matched against it. Immutable, so each statement folds it to a constant once.
create or replace function private.e164_pattern()
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select '^\+[1-9][0-9]{1,14}$';
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
  phone text not null check (phone ~ private.e164_pattern()),
  email text check (email is null or (char_length(email) <= 320 and email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$')),
  is_active boolean not null default true,
  opted_out_at timestamptz,
  -- Whether the contact may be messaged: the one definition every recipient query uses.
  -- The keyword of the reply that opted the contact out (null: opted out by hand, or not at all).
  opted_out_keyword text check (opted_out_keyword is null or char_length(opted_out_keyword) <= 100),
  can_receive boolean not null generated always as (is_active and opted_out_at is null) stored,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint contacts_phone_per_owner unique (created_by, phone),
  constraint contacts_id_owner unique (id, created_by)
);

create index contacts_created_by_created_at_idx on public.contacts (created_by, created_at desc);
-- An incoming reply finds every owner's contact with that phone.
create index contacts_phone_idx on public.contacts (phone);
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
  -- Empty only as an attachment's absent caption (private.clean_message decides).
  content text not null check (char_length(content) <= 4096),
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
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint messages_id_owner unique (id, created_by)
);

create index messages_created_by_created_at_idx on public.messages (created_by, created_at desc);
-- The list's other sorts.
create index messages_created_by_scheduled_for_idx on public.messages (created_by, scheduled_for);
create index messages_created_by_updated_at_idx on public.messages (created_by, updated_at desc);
-- Day-range filters of analytics and exports (all users when an admin reads everything).
create index messages_created_at_idx on public.messages (created_at);
-- What the dispatcher starts next.
create index messages_due_idx on public.messages (scheduled_for) where status = 'scheduled';
create index messages_recurrence_parent_id_idx on public.messages (recurrence_parent_id);
-- One next occurrence per recurring message, whoever finishes it.
create unique index messages_one_next_occurrence on public.messages (recurrence_parent_id)
  where recurrence_parent_id is not null;
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
  phone text not null check (phone ~ private.e164_pattern()),
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
-- The daily cap and the dashboard series.
create index deliveries_created_by_created_at_idx on public.deliveries (created_by, created_at);
create index deliveries_created_by_sent_at_idx on public.deliveries (created_by, sent_at) where sent_at is not null;
create index deliveries_failed_at_idx on public.deliveries (failed_at) where failed_at is not null;
-- Open work of one message (finish checks that none is left).
create index deliveries_open_idx on public.deliveries (message_id)
  where state in ('pending', 'sending');
-- The earliest retry or quiet-hours deferral (next_wake_at).
create index deliveries_pending_due_idx on public.deliveries (next_attempt_at)
  where state = 'pending';
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
-- replies: what a recipient wrote back, one row per user who wrote to that phone lately (the
-- same WhatsApp message reaches each of them once). Written only by private.record_reply.
-- -----------------------------------------------------------------------------
create table public.replies (
  id uuid primary key default gen_random_uuid(),
  created_by uuid not null references auth.users (id) on delete cascade,
  contact_id uuid references public.contacts (id) on delete set null,
  phone text not null check (phone ~ private.e164_pattern()),
  text text not null check (char_length(text) <= 4096),
  -- reply | opt_out | opt_in: what the whole text meant (public.reply_kind)
  kind text not null check (kind in ('reply', 'opt_out', 'opt_in')),
  -- The last message sent to this phone by this owner when the reply arrived, if any.
  message_id uuid references public.messages (id) on delete set null,
  whatsapp_message_id text not null check (char_length(whatsapp_message_id) <= 300),
  received_at timestamptz not null,
  created_at timestamptz not null default now(),
  constraint replies_once_per_owner unique (created_by, whatsapp_message_id)
);

create index replies_created_by_received_at_idx on public.replies (created_by, received_at desc);
create index replies_contact_id_idx on public.replies (contact_id);
create index replies_message_id_idx on public.replies (message_id);
-- Opt-outs per day (the dashboard's opt-out rate).
create index replies_opt_outs_idx on public.replies (created_by, received_at) where kind = 'opt_out';

-- -----------------------------------------------------------------------------
-- message_counts: messages per (owner, status), the list's `total`. Each transaction adds its
-- changes as its own rows (shard = its transaction id), which nobody else writes, so status
-- changes never wait on each other; readers sum `n`, private.compact_message_counts folds
-- committed rows into shard 0.
-- -----------------------------------------------------------------------------
create table public.message_counts (
  created_by uuid not null references auth.users (id) on delete cascade,
  status text not null,
  shard bigint not null default 0,
  n integer not null default 0,
  primary key (created_by, status, shard)
);

-- -----------------------------------------------------------------------------
-- message_audiences: who a message not yet fanned out would reach, right now (the cached
-- public.message_recipient_count). Recomputed, never patched, by the triggers of
-- 20261129000500_derived_counts.
-- -----------------------------------------------------------------------------
create table public.message_audiences (
  message_id uuid primary key,
  created_by uuid not null,
  recipients integer not null,
  computed_at timestamptz not null default now(),
  foreign key (message_id, created_by) references public.messages (id, created_by) on delete cascade
);

-- The composite foreign key's own index (the cascade and the FK check use it).
create index message_audiences_message_id_created_by_idx on public.message_audiences (message_id, created_by);
create index message_audiences_created_by_idx on public.message_audiences (created_by);

-- -----------------------------------------------------------------------------
-- sync_operations: the stored answer of each offline operation, so a replayed
-- client_op_id returns it instead of acting twice
-- -----------------------------------------------------------------------------
create table public.sync_operations (
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  client_op_id text not null check (char_length(client_op_id) between 1 and 100),
  status integer not null check (status between 100 and 599),
  body jsonb,
  created_at timestamptz not null default now(),
  -- Also the index for the user_id policy (its leading column).
  constraint sync_operations_pkey primary key (user_id, client_op_id)
);

-- Pruning old results scans by age.
create index sync_operations_created_at_idx on public.sync_operations (created_at);

-- =============================================================================
-- Names in the order people read them, and the indexes the contacts' and groups'
-- default (by name) sorts use.
-- =============================================================================

-- -----------------------------------------------------------------------------
-- private.name_order: the ICU root collation wherever Postgres has ICU (Supabase,
-- distribution builds), so accents do not scatter names (Ángela sorts next to
-- Ana, not after Zoe as under C or C.UTF-8). Built without ICU (the embedded
-- server), it is the database's own collation. The API sorts lower(name) in it,
-- so case never decides the order either way.
-- -----------------------------------------------------------------------------
do $$
begin
  if not exists (
    select 1 from pg_catalog.pg_collation
    where collname = 'name_order' and collnamespace = 'private'::regnamespace
  ) then
    begin
      create collation private.name_order (provider = icu, locale = 'und');
    exception when feature_not_supported then
      execute format(
        'create collation private.name_order (provider = libc, locale = %L)',
        (select datcollate from pg_catalog.pg_database where datname = pg_catalog.current_database())
      );
    end;
  end if;
end;
$$;

-- -----------------------------------------------------------------------------
-- A page of your contacts or groups by name is an index range scan, however
-- large the book. The id ends every sort so equal names keep one order across pages.
-- -----------------------------------------------------------------------------
create index contacts_created_by_name_order_idx
  on public.contacts (created_by, (lower(name)) collate private.name_order, id);
create index groups_created_by_name_order_idx
  on public.groups (created_by, (lower(name)) collate private.name_order, id);

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on table public.profiles is 'One per auth.users row, made when the user signs up: their display name, role, timezone and default country.';
comment on column public.profiles.id is 'The auth.users row this profile belongs to.';
comment on column public.profiles.display_name is 'The name shown for the user (at sign-up: their metadata''s name, else the e-mail before the @).';
comment on column public.profiles.role is 'user | admin: admins see and manage every user''s rows (private.is_admin).';
comment on column public.profiles.timezone is 'The user''s IANA timezone: analytics days, quiet hours and recurrences are in it.';
comment on column public.profiles.default_country is 'The country (ISO 3166 alpha-2) a phone written without its country code is read in.';

comment on table public.contacts is 'A user''s contacts: the people their messages reach, one per phone per owner (created_by).';
comment on column public.contacts.phone is 'The contact''s WhatsApp number in E.164 (+ and up to 15 digits), unique per owner.';
comment on column public.contacts.is_active is 'Set by the owner: an inactive contact receives no message.';
comment on column public.contacts.opted_out_at is 'When the contact opted out (a keyword reply, or by hand); null: not opted out.';
comment on column public.contacts.opted_out_keyword is 'The keyword of the reply that opted the contact out (null: opted out by hand, or not at all).';
comment on column public.contacts.can_receive is 'Whether the contact may be messaged (active and not opted out): the one definition every recipient query uses.';

comment on table public.groups is 'A user''s named lists of contacts; a message is addressed to groups.';
comment on column public.groups.contact_count is 'Members of the group, kept exact by the triggers of 20261129000500_derived_counts.';

comment on table public.group_contacts is 'The members of each group; both sides belong to the same owner (composite foreign keys).';
comment on column public.group_contacts.group_id is 'The group.';
comment on column public.group_contacts.contact_id is 'The contact that is a member of it.';
comment on column public.group_contacts.added_at is 'When the contact was added to the group.';

comment on table public.messages is 'A user''s WhatsApp messages, from draft to sent; status changes follow the state machine of 20261129000300_message_state_machine.';
comment on column public.messages.content is 'The text, cleaned (line breaks, NFC, no control characters or HTML), 1 to 4096 characters; {{name}} becomes each recipient''s name.';
comment on column public.messages.scheduled_for is 'When the message is due to start sending; required to schedule it.';
comment on column public.messages.status is 'draft | scheduled | sending | sent | paused | cancelled | failed; sent, cancelled and failed are final.';
comment on column public.messages.sent_at is 'When sending ended with at least one delivery accepted by WhatsApp; null until then.';
comment on column public.messages.recipient_count is 'Deliveries of the message (its recipients once fanned out), kept exact by the triggers of 20261129000500_derived_counts.';
comment on column public.messages.delivered_count is 'Deliveries WhatsApp accepted (sent, delivered or read), kept exact by the triggers of 20261129000500_derived_counts.';
comment on column public.messages.failed_count is 'Deliveries that failed, kept exact by the triggers of 20261129000500_derived_counts.';
comment on column public.messages.recurrence is 'A 5-field cron expression in the owner''s timezone: each occurrence sent schedules the next; null: sent once.';
comment on column public.messages.recurrence_parent_id is 'The occurrence this one follows in a recurring series; null: the first, or not recurring.';

comment on table public.message_groups is 'The groups a message is addressed to (same owner, by composite foreign keys).';
comment on column public.message_groups.message_id is 'The message.';
comment on column public.message_groups.group_id is 'A group it is addressed to; its members who can receive are recipients.';

comment on table public.deliveries is 'One per (message, recipient phone), made when the message starts sending: what became of it for that recipient; written only by the dispatcher and triggers.';
comment on column public.deliveries.message_id is 'The message delivered.';
comment on column public.deliveries.contact_id is 'The contact it was fanned out to; null once that contact is deleted (phone and contact_name stay).';
comment on column public.deliveries.phone is 'The recipient''s phone in E.164, as it was when the message started sending.';
comment on column public.deliveries.contact_name is 'The contact''s name when the message started sending, which {{name}} renders to.';
comment on column public.deliveries.state is 'pending | sending | sent | delivered | read | failed | cancelled | skipped; sent: WhatsApp accepted it, delivered and read: its acks, skipped: see last_error_code.';
comment on column public.deliveries.attempts is 'How many times a worker has claimed it to send.';
comment on column public.deliveries.next_attempt_at is 'No attempt before this time (a retry''s backoff, the owner''s quiet hours).';
comment on column public.deliveries.last_error_code is 'The stable code of the last failure or skip (such as opted_out or held_by_rules); null: none.';
comment on column public.deliveries.last_error is 'The last failure or skip in words, as the bridge or the rules gave it.';
comment on column public.deliveries.whatsapp_message_id is 'WhatsApp''s id of the sent message, which its acks name.';
comment on column public.deliveries.idempotency_key is 'message id:phone; the bridge replays a send it already made under this key instead of sending twice.';
comment on column public.deliveries.claimed_by is 'The worker that last claimed it.';
comment on column public.deliveries.lease_expires_at is 'While sending: when another worker may take it over (the one that claimed it may have crashed).';
comment on column public.deliveries.sent_at is 'When WhatsApp accepted it.';
comment on column public.deliveries.delivered_at is 'When WhatsApp reported it delivered to the phone.';
comment on column public.deliveries.read_at is 'When WhatsApp reported it read.';
comment on column public.deliveries.failed_at is 'When it failed.';

comment on table public.notifications is 'Notices for one user (the guide''s shape), written when something needs their attention; each new one is pushed by realtime.';
comment on column public.notifications.user_id is 'The user it is for.';
comment on column public.notifications.type is 'success | error | warning | info: how the client shows it.';
comment on column public.notifications.title is 'Its headline, at most 200 characters.';
comment on column public.notifications.message is 'Its text, at most 2000 characters.';
comment on column public.notifications.is_read is 'Whether the user has marked it read.';
comment on column public.notifications.related_entity_type is 'message | group | contact: what it is about, with related_entity_id; null: nothing in particular.';
comment on column public.notifications.related_entity_id is 'The id of the message, group or contact it is about (no foreign key: it may be deleted since).';

comment on table public.replies is 'What a recipient wrote back, one row per user who wrote to that phone lately; written only by private.record_reply.';
comment on column public.replies.created_by is 'The user this copy of the reply is kept for (one who sent that phone a message lately).';
comment on column public.replies.contact_id is 'That user''s contact with the phone; null if none.';
comment on column public.replies.phone is 'The sender''s phone in E.164.';
comment on column public.replies.text is 'What they wrote, at most 4096 characters.';
comment on column public.replies.kind is 'reply | opt_out | opt_in: what the whole text meant (public.reply_kind).';
comment on column public.replies.message_id is 'The last message sent to this phone by this owner when the reply arrived, if any.';
comment on column public.replies.whatsapp_message_id is 'WhatsApp''s id of the incoming message; kept once per owner.';
comment on column public.replies.received_at is 'When the reply arrived, as the bridge reported it.';

comment on table public.message_counts is 'Messages per (owner, status), the list''s total: sum n over the shards; written only by the triggers of 20261129000500_derived_counts.';
comment on column public.message_counts.created_by is 'The owner whose messages are counted.';
comment on column public.message_counts.status is 'The message status counted.';
comment on column public.message_counts.shard is 'The writing transaction''s id, so status changes never wait on each other; 0: rows folded by private.compact_message_counts.';
comment on column public.message_counts.n is 'This shard''s share of the count (a change may be negative).';

comment on table public.message_audiences is 'Who a message not yet fanned out would reach right now (the cached public.message_recipient_count); written only by the triggers of 20261129000500_derived_counts.';
comment on column public.message_audiences.message_id is 'The message, not fanned out yet.';
comment on column public.message_audiences.recipients is 'Distinct phones among its groups'' members who can receive.';
comment on column public.message_audiences.computed_at is 'When recipients was last recomputed.';

comment on table public.sync_operations is 'The stored answer of each offline operation, so a replayed client_op_id returns it instead of acting twice.';
comment on column public.sync_operations.user_id is 'The user who sent the operation.';
comment on column public.sync_operations.client_op_id is 'The client''s id of the operation, unique per user.';
comment on column public.sync_operations.status is 'The HTTP status of the stored answer.';
comment on column public.sync_operations.body is 'The JSON body of the stored answer.';
