-- =============================================================================
-- Row-level security: owners see and change their rows; admins everything
-- (through private.is_admin()); anon nothing. Policies use (select auth.uid())
-- so Postgres evaluates it once per statement (an initPlan), not per row.
-- A feature added since keeps its policies in its own file (the audit log's:
-- 20261206000100_audit_trail).
-- =============================================================================

create or replace function private.is_admin()
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.profiles
    where id = (select auth.uid()) and role = 'admin'
  );
$$;

revoke all on function private.is_admin() from public;
grant execute on function private.is_admin() to authenticated, service_role;

alter table public.profiles enable row level security;
alter table public.contacts enable row level security;
alter table public.groups enable row level security;
alter table public.group_contacts enable row level security;
alter table public.messages enable row level security;
alter table public.message_groups enable row level security;
alter table public.deliveries enable row level security;
alter table public.notifications enable row level security;
alter table public.message_counts enable row level security;
alter table public.message_audiences enable row level security;
alter table public.sync_operations enable row level security;
alter table public.replies enable row level security;

-- anon gets nothing at all; authenticated gets what the policies allow.
revoke all on all tables in schema public from anon;
revoke all on all sequences in schema public from anon;
grant select, insert, update, delete on all tables in schema public to authenticated, service_role;
-- TRUNCATE ignores RLS and row triggers (an append-only audit log, exact counters): never for
-- users, on these tables nor on later ones (Supabase's default privileges grant `all`).
revoke truncate, references, trigger on all tables in schema public from anon, authenticated;
alter default privileges in schema public revoke truncate, references, trigger on tables from anon, authenticated;
-- Columns only the system writes, and tables only the system changes.
revoke insert, update, delete on public.deliveries from authenticated;
revoke insert, delete on public.profiles from authenticated;
revoke update on public.sync_operations from authenticated;  -- a stored result is final
revoke insert, update, delete on public.message_counts, public.message_audiences from authenticated;
revoke insert, update, delete on public.replies from authenticated;
-- The opt-out keyword is the reply's, never typed by a user.
revoke insert, update on public.contacts from authenticated;
grant insert (id, created_by, name, phone, email, is_active, opted_out_at) on public.contacts to authenticated;
grant update (name, phone, email, is_active, opted_out_at, updated_at) on public.contacts to authenticated;
-- Messages and groups: users write what the guide lets them edit; the state machine and the
-- counters own the rest (status changes go through private.guard_message; counters, sent_at and
-- series links belong to the worker and the triggers). A direct write is refused with 42501.
revoke insert, update on public.messages, public.groups from authenticated;
grant insert (id, created_by, content, scheduled_for, recurrence) on public.messages to authenticated;
grant update (content, scheduled_for, status, recurrence, updated_at) on public.messages to authenticated;
grant insert (id, created_by, name, description) on public.groups to authenticated;
grant update (name, description, updated_at) on public.groups to authenticated;

-- -----------------------------------------------------------------------------
-- profiles
-- -----------------------------------------------------------------------------
create policy "profiles: read own or admin" on public.profiles
  for select to authenticated
  using (id = (select auth.uid()) or (select private.is_admin()));

create policy "profiles: update own or admin" on public.profiles
  for update to authenticated
  using (id = (select auth.uid()) or (select private.is_admin()))
  with check (id = (select auth.uid()) or (select private.is_admin()));

-- Only an admin (or the service) changes a role.
create or replace function private.protect_profile_role()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.role is distinct from old.role
     and private.acting_as_user()
     and not (select private.is_admin()) then
    raise exception 'only an admin can change a role' using errcode = '42501';
  end if;
  new.id := old.id;
  return new;
end;
$$;

create trigger profiles_protect_role before update on public.profiles
  for each row execute function private.protect_profile_role();

-- -----------------------------------------------------------------------------
-- Owned tables: contacts, groups, group_contacts, messages, message_groups
-- -----------------------------------------------------------------------------
create policy "contacts: owner or admin" on public.contacts
  for all to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()))
  with check (created_by = (select auth.uid()) or (select private.is_admin()));

create policy "groups: owner or admin" on public.groups
  for all to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()))
  with check (created_by = (select auth.uid()) or (select private.is_admin()));

create policy "group_contacts: owner or admin" on public.group_contacts
  for all to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()))
  with check (created_by = (select auth.uid()) or (select private.is_admin()));

create policy "messages: owner or admin" on public.messages
  for all to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()))
  with check (created_by = (select auth.uid()) or (select private.is_admin()));

create policy "message_groups: owner or admin" on public.message_groups
  for all to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()))
  with check (created_by = (select auth.uid()) or (select private.is_admin()));

-- Ownership never moves between users.
create or replace function private.keep_owner()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.created_by is distinct from old.created_by then
    raise exception 'the owner of a row cannot change' using errcode = '42501';
  end if;
  return new;
end;
$$;

create trigger contacts_keep_owner before update on public.contacts
  for each row execute function private.keep_owner();
create trigger groups_keep_owner before update on public.groups
  for each row execute function private.keep_owner();
create trigger messages_keep_owner before update on public.messages
  for each row execute function private.keep_owner();

-- -----------------------------------------------------------------------------
-- Derived tables: read-only for users
-- -----------------------------------------------------------------------------
create policy "message_counts: read own or admin" on public.message_counts
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

create policy "message_audiences: read own or admin" on public.message_audiences
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

-- -----------------------------------------------------------------------------
-- deliveries: read-only for users
-- -----------------------------------------------------------------------------
create policy "deliveries: read own or admin" on public.deliveries
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

-- -----------------------------------------------------------------------------
-- notifications
-- -----------------------------------------------------------------------------
create policy "notifications: read own or admin" on public.notifications
  for select to authenticated
  using (user_id = (select auth.uid()) or (select private.is_admin()));

create policy "notifications: create own" on public.notifications
  for insert to authenticated
  with check (user_id = (select auth.uid()));

create policy "notifications: update own" on public.notifications
  for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

create policy "notifications: delete own" on public.notifications
  for delete to authenticated
  using (user_id = (select auth.uid()));

-- -----------------------------------------------------------------------------
-- replies: each user reads the replies kept for them; only the service writes them
-- -----------------------------------------------------------------------------
create policy "replies: read own or admin" on public.replies
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

-- -----------------------------------------------------------------------------
-- sync_operations: users add and forget their results, nobody rewrites them
-- -----------------------------------------------------------------------------
create policy "sync_operations: read own or admin" on public.sync_operations
  for select to authenticated
  using (user_id = (select auth.uid()) or (select private.is_admin()));

create policy "sync_operations: store own" on public.sync_operations
  for insert to authenticated
  with check (user_id = (select auth.uid()));

create policy "sync_operations: forget own" on public.sync_operations
  for delete to authenticated
  using (user_id = (select auth.uid()));

-- -----------------------------------------------------------------------------
-- Realtime: a user may receive broadcasts only on their own private topic `user:<uuid>` and the
-- shared `whatsapp` topic (the connection state every user sees); admins any. Broadcast only:
-- Presence on these topics is not offered (as Supabase's docs write such policies).
-- The row's own topic decides, and it must be the channel joined (realtime.topic(); Realtime's
-- join probe is a row on that channel): a row on another topic is never readable.
-- -----------------------------------------------------------------------------
create policy "realtime: join own user topic" on realtime.messages
  for select to authenticated
  using (
    realtime.messages.extension = 'broadcast'
    and realtime.messages.topic = (select realtime.topic())
    and (
      realtime.messages.topic = 'user:' || (select auth.uid())::text
      or realtime.messages.topic = 'whatsapp'
      or (select private.is_admin())
    )
  );
