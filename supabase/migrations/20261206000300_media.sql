-- =============================================================================
-- Attachments (issue #22): images, videos, audio and documents a message carries, with its
-- content as their caption.
--
--   storage bucket `media`          private, in Supabase Storage (the bootstrap gives plain
--                                   PostgreSQL Storage's own tables); each user writes and reads only
--                                   under their own folder `<user id>/...`, admins read all
--   public.media                    what we know of each file: owner, storage path, the MIME type
--                                   detected from its bytes (never from its name or the client),
--                                   kind, size, SHA-256, original name, width and height of images,
--                                   and its state: pending (uploaded straight to Storage, not yet
--                                   checked), ready, rejected (why in `problem`)
--   private.media_problem           the limits: a type on the allow-list (settings.media_types),
--                                   at most settings.media_max_<kind>_bytes, not empty
--   private.record_media            a file the API checked (service only): ready, or refused
--   public.register_media           a file a frontend uploaded with supabase-js: pending until a
--                                   worker checked its bytes (private.finish_media_check)
--   public.messages.media_id        a message's one attachment; its content is then an optional
--                                   caption. Checked on every path: the owner's own file, ready
--                                   and within today's limits when the message is scheduled, and
--                                   again at the exit (20261129000700_dispatch, the claim)
--   a file a scheduled, paused or sending message uses cannot be deleted, nor one that is all a
--   draft holds
--
-- Refusals (SQLSTATE class WS, stable code in HINT, fields in DETAIL):
--   WS404 media_not_found (absent, or not the caller's); related_not_found (a message's media_id)
--   WS409 media_in_use (deleting a file a scheduled, paused or sending message uses, or a draft's
--         only content)
--   WS431 media_empty | media_too_large | media_type_not_allowed | media_type_mismatch |
--         media_not_ready (422: DETAIL names the field, the limit and what was found)
-- =============================================================================

alter table private.settings
  add column media_max_image_bytes bigint not null default 5242880 check (media_max_image_bytes > 0),
  add column media_max_video_bytes bigint not null default 16777216 check (media_max_video_bytes > 0),
  add column media_max_audio_bytes bigint not null default 16777216 check (media_max_audio_bytes > 0),
  add column media_max_document_bytes bigint not null default 104857600 check (media_max_document_bytes > 0),
  -- The types WhatsApp takes (Meta's list for the Cloud API), as detected from the bytes.
  add column media_types text[] not null default '{image/jpeg,image/png,image/webp,video/mp4,video/3gpp,audio/mpeg,audio/ogg,audio/mp4,audio/aac,audio/amr,application/pdf,application/vnd.openxmlformats-officedocument.wordprocessingml.document,application/vnd.openxmlformats-officedocument.spreadsheetml.sheet,application/vnd.openxmlformats-officedocument.presentationml.presentation,application/msword,application/vnd.ms-excel,application/vnd.ms-powerpoint}';

-- -----------------------------------------------------------------------------
-- The bucket and its policies (as Supabase documents them for per-user folders)
-- -----------------------------------------------------------------------------

insert into storage.buckets (id, name, public, file_size_limit)
values ('media', 'media', false, 104857600)
on conflict (id) do nothing;

create policy "media bucket: users write their own folder" on storage.objects
  for insert to authenticated
  with check (bucket_id = 'media' and (storage.foldername(name))[1] = (select auth.uid())::text);

create policy "media bucket: users read their own folder, admins all" on storage.objects
  for select to authenticated
  using (bucket_id = 'media'
         and ((storage.foldername(name))[1] = (select auth.uid())::text or (select private.is_admin())));

create policy "media bucket: users replace their own files" on storage.objects
  for update to authenticated
  using (bucket_id = 'media' and (storage.foldername(name))[1] = (select auth.uid())::text)
  with check (bucket_id = 'media' and (storage.foldername(name))[1] = (select auth.uid())::text);

create policy "media bucket: users delete their own files" on storage.objects
  for delete to authenticated
  using (bucket_id = 'media' and (storage.foldername(name))[1] = (select auth.uid())::text);

-- -----------------------------------------------------------------------------
-- public.media
-- -----------------------------------------------------------------------------

create table public.media (
  id uuid primary key default gen_random_uuid(),
  created_by uuid not null references auth.users (id) on delete cascade,
  bucket text not null default 'media',
  -- `<created_by>/<id>/<file name>` in the bucket.
  path text not null check (char_length(path) <= 1024),
  original_name text not null check (char_length(original_name) between 1 and 255),
  state text not null default 'pending' check (state in ('pending', 'ready', 'rejected')),
  problem text check (char_length(problem) <= 2000),
  -- Detected from the bytes (never from the name or the client), with its kind.
  mime_type text check (char_length(mime_type) <= 200),
  kind text check (kind in ('image', 'video', 'audio', 'document')),
  size_bytes bigint check (size_bytes >= 0),
  sha256 text check (sha256 ~ '^[0-9a-f]{64}$'),
  width integer check (width > 0),
  height integer check (height > 0),
  checked_at timestamptz,
  created_at timestamptz not null default now(),
  constraint media_path_once unique (bucket, path),
  constraint media_ready_is_known check (state <> 'ready' or (mime_type is not null and kind is not null
                                                                and size_bytes > 0 and sha256 is not null))
);

create index media_created_by_created_at_idx on public.media (created_by, created_at desc);
-- The workers' queue of files uploaded straight to Storage.
create index media_pending_idx on public.media (created_at) where state = 'pending';

alter table public.media enable row level security;
revoke all on public.media from anon, authenticated;
grant select, delete on public.media to authenticated;
grant select, insert, update, delete on public.media to service_role;

create policy "media: own or admin" on public.media
  for select to authenticated
  using (created_by = (select auth.uid()) or (select private.is_admin()));

create policy "media: delete own" on public.media
  for delete to authenticated
  using (created_by = (select auth.uid()));

-- A file's kind from its MIME type.
create or replace function private.media_kind(p_mime_type text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case split_part(p_mime_type, '/', 1)
    when 'image' then 'image' when 'video' then 'video' when 'audio' then 'audio' else 'document' end;
$$;

-- What is wrong with a file of this type and size under today's settings (null: nothing), as
-- {code, field, message}.
create or replace function private.media_problem(p_mime_type text, p_size bigint)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select case
    when p_size is null or p_size = 0 then
      jsonb_build_object('code', 'media_empty', 'field', 'file', 'message', 'the file is empty')
    when p_mime_type is null or not (p_mime_type = any (s.media_types)) then
      jsonb_build_object('code', 'media_type_not_allowed', 'field', 'file', 'message',
        format('type %s is not allowed; allowed: %s', coalesce(p_mime_type, 'unknown'), array_to_string(s.media_types, ', ')))
    when p_size > limits.bytes then
      jsonb_build_object('code', 'media_too_large', 'field', 'file', 'message',
        format('%s bytes; the limit for %s is %s bytes', p_size, private.media_kind(p_mime_type), limits.bytes))
  end
  from private.current_settings() s
  cross join lateral (select case private.media_kind(p_mime_type)
                        when 'image' then s.media_max_image_bytes when 'video' then s.media_max_video_bytes
                        when 'audio' then s.media_max_audio_bytes else s.media_max_document_bytes end as bytes) limits;
$$;

create or replace function private.raise_media_problem(p_problem jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'The file was refused: %.', p_problem ->> 'message'
    using errcode = 'WS431', hint = p_problem ->> 'code',
    detail = jsonb_build_array(jsonb_build_object('field', p_problem ->> 'field', 'message', p_problem ->> 'message'))::text;
end;
$$;

-- A file the API received and checked (the bytes already stored at p_path): ready, or refused with
-- WS431 and nothing kept. Service only: the API has just read the bytes.
create or replace function private.record_media(
  p_owner uuid, p_id uuid, p_path text, p_original_name text, p_mime_type text, p_size bigint,
  p_sha256 text, p_width integer, p_height integer
)
returns public.media
language plpgsql
security definer
set search_path = ''
as $$
declare
  problem jsonb := private.media_problem(p_mime_type, p_size);
  m public.media;
begin
  if problem is not null then
    perform private.raise_media_problem(problem);
  end if;
  insert into public.media (id, created_by, path, original_name, state, mime_type, kind, size_bytes, sha256,
                            width, height, checked_at)
  values (p_id, p_owner, p_path, left(p_original_name, 255), 'ready', p_mime_type, private.media_kind(p_mime_type),
          p_size, p_sha256, p_width, p_height, now())
  returning * into m;
  return m;
end;
$$;

-- A file the caller uploaded to the bucket with supabase-js (storage.from('media').upload(path)):
-- it must be in their own folder and exist. It is `pending` until a worker checked its bytes.
create or replace function public.register_media(p_path text, p_original_name text default null)
returns public.media
language plpgsql
security definer
set search_path = ''
as $$
declare
  me uuid := (select auth.uid());
  m public.media;
begin
  if me is null then
    raise exception 'A file belongs to a signed-in user.' using errcode = '42501';
  end if;
  if (storage.foldername(p_path))[1] is distinct from me::text
     or not exists (select 1 from storage.objects o where o.bucket_id = 'media' and o.name = p_path) then
    raise exception 'No file of yours at %.', p_path using errcode = 'WS404', hint = 'media_not_found',
      detail = jsonb_build_array(jsonb_build_object('field', 'path', 'message', 'not a file in your folder of the media bucket'))::text;
  end if;
  insert into public.media (created_by, path, original_name)
  values (me, p_path, left(coalesce(nullif(btrim(p_original_name), ''), storage.filename(p_path)), 255))
  on conflict (bucket, path) do update set original_name = public.media.original_name
  returning * into m;
  perform pg_notify('whatsched_media', m.id::text);
  return m;
end;
$$;

-- Pending files for a worker to check, locked so two workers do not read the same one.
create or replace function private.claim_media_checks(p_limit integer)
returns setof public.media
language sql
volatile
security definer
set search_path = ''
as $$
  select * from public.media m where m.state = 'pending'
  order by m.created_at limit p_limit
  for update skip locked;
$$;

-- A worker's verdict on a pending file: ready (its facts), or rejected with the problem (a file
-- missing from Storage, bytes that are not what the name says, a type not allowed, too large).
create or replace function private.finish_media_check(
  p_id uuid, p_mime_type text, p_size bigint, p_sha256 text, p_width integer, p_height integer,
  p_problem text default null
)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  problem jsonb := case when p_problem is null then private.media_problem(p_mime_type, p_size) end;
  why text := coalesce(p_problem, problem ->> 'message');
begin
  update public.media m
  set state = case when why is null then 'ready' else 'rejected' end, problem = why,
      mime_type = p_mime_type, kind = case when p_mime_type is not null then private.media_kind(p_mime_type) end,
      size_bytes = p_size, sha256 = p_sha256, width = p_width, height = p_height, checked_at = now()
  where m.id = p_id and m.state = 'pending';
  return case when why is null then 'ready' else 'rejected' end;
end;
$$;

-- A file a scheduled, paused or sending message uses stays (deleting it would strand the message),
-- and so does one that is all a draft holds (no caption); from other messages it is detached.
create or replace function private.keep_media_in_use()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if exists (select 1 from public.messages m
             where m.media_id = old.id
               and (m.status in ('scheduled', 'paused', 'sending') or (m.status = 'draft' and m.content = ''))) then
    raise exception 'File % is attached to a message that is scheduled, paused or being sent, or is all a draft holds.', old.id
      using errcode = 'WS409', hint = 'media_in_use';
  end if;
  return old;
end;
$$;

create trigger media_keep_in_use before delete on public.media
  for each row execute function private.keep_media_in_use();

-- -----------------------------------------------------------------------------
-- A message's attachment
-- -----------------------------------------------------------------------------

alter table public.messages
  add column media_id uuid references public.media (id) on delete set null;
create index messages_media_id_idx on public.messages (media_id);
grant insert (media_id), update (media_id) on public.messages to authenticated;

-- On every path: the attachment is the owner's own file; when a user schedules the message (or
-- gives a scheduled one a new file) it must be ready and within today's limits. The worker's own
-- writes (a recurring message's next occurrence) are not refused here: the claim holds at the
-- exit what may not leave (media_unavailable), so a send never stalls on a refusal.
create or replace function private.check_message_media()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  m public.media;
  problem jsonb;
begin
  if new.media_id is null then
    return new;
  end if;
  select * into m from public.media x where x.id = new.media_id;
  if not found or m.created_by <> new.created_by then
    raise exception 'File % was not found.', new.media_id using errcode = 'WS404', hint = 'related_not_found',
      detail = jsonb_build_array(jsonb_build_object('field', 'media_id', 'message', 'not a file of yours'))::text;
  end if;
  if new.status in ('scheduled', 'sending') and private.acting_as_user() then
    if m.state <> 'ready' then
      raise exception 'File % is not ready to send (%).', m.id, coalesce(m.problem, m.state)
        using errcode = 'WS431', hint = 'media_not_ready',
        detail = jsonb_build_array(jsonb_build_object('field', 'media_id', 'message',
          format('the file is %s%s', m.state, coalesce(': ' || m.problem, ''))))::text;
    end if;
    problem := private.media_problem(m.mime_type, m.size_bytes);
    if problem is not null then
      perform private.raise_media_problem(problem || jsonb_build_object('field', 'media_id'));
    end if;
  end if;
  return new;
end;
$$;

create trigger messages_check_media before insert or update of media_id, status on public.messages
  for each row execute function private.check_message_media();

-- A message that may still be sent needs its text again when its attachment is taken away
-- (private.clean_message refuses an empty content without one).
create trigger messages_clean_caption before update of media_id on public.messages
  for each row when (new.media_id is null and old.media_id is not null and new.status in ('draft', 'scheduled', 'paused'))
  execute function private.clean_message();

-- The attachment as the claim hands it to the worker (null: a text message, or a file that cannot
-- leave: not ready, gone, or outside today's limits).
create or replace function private.media_to_send(p_media_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('id', m.id, 'sha256', m.sha256, 'size', m.size_bytes, 'mime_type', m.mime_type,
                            'filename', m.original_name, 'kind', m.kind, 'path', m.path)
  from public.media m
  where m.id = p_media_id and m.state = 'ready' and private.media_problem(m.mime_type, m.size_bytes) is null;
$$;

revoke all on function
  private.media_kind(text), private.media_problem(text, bigint), private.raise_media_problem(jsonb),
  private.record_media(uuid, uuid, text, text, text, bigint, text, integer, integer),
  public.register_media(text, text), private.claim_media_checks(integer),
  private.finish_media_check(uuid, text, bigint, text, integer, integer, text),
  private.keep_media_in_use(), private.check_message_media(), private.media_to_send(uuid)
  from public, anon;
revoke all on function
  private.record_media(uuid, uuid, text, text, text, bigint, text, integer, integer),
  private.claim_media_checks(integer), private.finish_media_check(uuid, text, bigint, text, integer, integer, text),
  private.media_to_send(uuid)
  from authenticated;
grant execute on function public.register_media(text, text), private.media_kind(text),
  private.media_problem(text, bigint), private.raise_media_problem(jsonb)
  to authenticated, service_role;
grant execute on function
  private.record_media(uuid, uuid, text, text, text, bigint, text, integer, integer),
  private.claim_media_checks(integer), private.finish_media_check(uuid, text, bigint, text, integer, integer, text),
  private.media_to_send(uuid)
  to service_role;

-- -----------------------------------------------------------------------------
-- Comments (Supabase Studio and the generated types show them)
-- -----------------------------------------------------------------------------

comment on table public.media is 'Attachments: each file a user uploaded, what its bytes are, and whether it may be sent.';
comment on column public.media.bucket is 'The Storage bucket that holds its bytes (media).';
comment on column public.media.path is 'Its path in the bucket: <user id>/<file id>/<name>.';
comment on column public.media.original_name is 'The name it was uploaded with (WhatsApp shows it for a document).';
comment on column public.media.state is 'pending (uploaded straight to Storage, not yet checked) | ready | rejected (why in problem).';
comment on column public.media.problem is 'Why it was rejected.';
comment on column public.media.mime_type is 'Its type as detected from its bytes, never from its name or the client.';
comment on column public.media.kind is 'How WhatsApp sends it: image | video | audio | document.';
comment on column public.media.size_bytes is 'Its size in bytes, as stored and sent.';
comment on column public.media.sha256 is 'The SHA-256 of its bytes, as stored and sent (hex).';
comment on column public.media.width is 'An image''s width in pixels.';
comment on column public.media.height is 'An image''s height in pixels.';
comment on column public.media.checked_at is 'When its bytes were inspected.';
comment on column public.messages.media_id is 'The message''s attachment (public.media); its content is then an optional caption.';
comment on function public.register_media(text, text) is 'Register a file the caller uploaded to the media bucket with supabase-js; it is pending until a worker checked its bytes.';
