"""Every public object an operator reads carries a comment: Supabase Studio shows it beside the
table, column or function, and `supabase gen types` puts it in the TypeScript as a doc comment.

Tables, views and the functions `authenticated` may call all need one; so does every column but
the few whose name says it all (SELF_EVIDENT). Each rule is a query over the catalogs that lists
what has none, and a probe planted in a rolled-back transaction shows the query can fail.
"""

from __future__ import annotations

import asyncpg
from test_schema_lint import names, planted

# Columns whose name is the whole story, wherever they appear. Anything else needs a comment.
SELF_EVIDENT = ["id", "created_at", "updated_at", "created_by", "name", "description", "email"]

# Objects that belong to an extension are the extension's to document.
NOT_AN_EXTENSION_MEMBER = """
not exists (select 1 from pg_depend d where d.classid = {catalog}::regclass and d.objid = {oid} and d.deptype = 'e')
"""

RELATIONS = f"""
select c.oid, c.relname::text as relname,
       case when c.relkind in ('v', 'm') then 'view' else 'table' end as kind
from pg_class c
where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
  and {NOT_AN_EXTENSION_MEMBER.format(catalog="'pg_class'", oid="c.oid")}
"""

CALLABLE_FUNCTIONS = f"""
select p.oid, p.oid::regprocedure::text as signature
from pg_proc p
where p.pronamespace = 'public'::regnamespace
  and has_function_privilege('authenticated', p.oid, 'execute')
  and {NOT_AN_EXTENSION_MEMBER.format(catalog="'pg_proc'", oid="p.oid")}
"""

# Every table, view and callable function, commented or not (the rules below filter these).
OBJECTS = f"""
select kind || ' public.' || relname as name, obj_description(oid, 'pg_class') as comment from ({RELATIONS}) r
union all
select 'function public.' || signature, obj_description(oid, 'pg_proc') from ({CALLABLE_FUNCTIONS}) f
"""

COLUMNS = f"""
select 'column public.' || r.relname || '.' || a.attname as name, col_description(r.oid, a.attnum) as comment,
       a.attname::text as column_name
from ({RELATIONS}) r
join pg_attribute a on a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped
"""

UNCOMMENTED_OBJECTS = f"select name from ({OBJECTS}) o where coalesce(btrim(comment), '') = '' order by 1"

# $1: the self-evident column names.
UNCOMMENTED_COLUMNS = f"""
select name from ({COLUMNS}) c
where coalesce(btrim(comment), '') = '' and column_name <> all ($1::text[])
order by 1
"""

HOW = (
    "add `comment on table|view|column|function public.... is '...';` (one sentence, for the operator "
    "reading Supabase Studio) to the Comments section at the end of the migration that creates it"
)


async def test_the_rules_see_the_schema(admin: asyncpg.Connection) -> None:
    """Guard against the rules passing because they look at nothing."""
    objects = await names(admin, OBJECTS)
    assert sum(o.startswith("table ") for o in objects) >= 19
    assert sum(o.startswith("function ") for o in objects) >= 27
    assert "table public.messages" in objects
    assert "function public.schedule_message(uuid,timestamp with time zone)" in objects
    columns = await names(admin, COLUMNS)
    assert len(columns) >= 170
    assert "column public.deliveries.state" in columns


async def test_every_public_table_view_and_callable_function_has_a_comment(admin: asyncpg.Connection) -> None:
    missing = await names(admin, UNCOMMENTED_OBJECTS)
    assert missing == [], f"without a comment: {', '.join(missing)}; {HOW}"


async def test_every_public_column_that_is_not_self_evident_has_a_comment(admin: asyncpg.Connection) -> None:
    missing = await names(admin, UNCOMMENTED_COLUMNS, SELF_EVIDENT)
    assert missing == [], f"without a comment: {', '.join(missing)}; {HOW}"


PROBE = """
create table public.comment_probe (
  id uuid primary key, created_at timestamptz, state text, note text
);
create view public.comment_probe_view as select id, state from public.comment_probe;
create function public.comment_probe_fn(p int) returns int language sql as $$ select p $$;
create function public.comment_probe_hidden() returns int language sql as $$ select 1 $$;
revoke all on function public.comment_probe_hidden() from public, anon, authenticated;
"""

PROBE_COMMENTED = (
    PROBE
    + """
comment on table public.comment_probe is 'A probe.';
comment on column public.comment_probe.state is 'Its state.';
comment on column public.comment_probe.note is 'A note.';
comment on view public.comment_probe_view is 'The probe, seen.';
comment on column public.comment_probe_view.state is 'Its state.';
comment on function public.comment_probe_fn(int) is 'Returns p.';
"""
)


async def test_the_rules_list_a_new_uncommented_table_view_and_function(admin: asyncpg.Connection) -> None:
    objects = await planted(admin, PROBE, UNCOMMENTED_OBJECTS)
    assert [o for o in objects if "comment_probe" in o] == [
        "function public.comment_probe_fn(integer)",  # not comment_probe_hidden: nobody may call it
        "table public.comment_probe",
        "view public.comment_probe_view",
    ]
    columns = await planted(admin, PROBE, UNCOMMENTED_COLUMNS, SELF_EVIDENT)
    assert [c for c in columns if "comment_probe" in c] == [
        "column public.comment_probe.note",  # not id nor created_at: self-evident
        "column public.comment_probe.state",
        "column public.comment_probe_view.state",
    ]


async def test_the_rules_accept_the_probe_once_commented(admin: asyncpg.Connection) -> None:
    assert not [o for o in await planted(admin, PROBE_COMMENTED, UNCOMMENTED_OBJECTS) if "comment_probe" in o]
    columns = await planted(admin, PROBE_COMMENTED, UNCOMMENTED_COLUMNS, SELF_EVIDENT)
    assert not [c for c in columns if "comment_probe" in c]


async def test_a_blank_comment_is_no_comment(admin: asyncpg.Connection) -> None:
    setup = PROBE_COMMENTED + "comment on table public.comment_probe is '  ';"
    assert "table public.comment_probe" in await planted(admin, setup, UNCOMMENTED_OBJECTS)
