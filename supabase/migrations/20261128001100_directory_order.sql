-- =============================================================================
-- The groups and contacts API: names in the order people read them, and the
-- indexes its default (by name) sorts use.
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
