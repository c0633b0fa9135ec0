"""A lint of the schema, in SQL over the catalogs: the rules every migration follows.

Each rule is one query that lists its violations; the clean schema lists none, and a violation
planted in a rolled-back transaction is listed (so the query can fail). The last rules read the
migration files themselves: each function, trigger and policy is created in one place only.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping

import asyncpg
import pytest

from whatsched.db.migrate import migrations_dir

# Tables in public without row-level security.
RLS_DISABLED = """
select c.relname::text as name
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relrowsecurity
order by 1
"""

# The policies the lint looks at: every policy in public, and realtime.messages'.
POLICIES = """
select schemaname || '.' || tablename || ': ' || policyname as name, roles, qual, with_check
from pg_policies
where schemaname = 'public' or (schemaname = 'realtime' and tablename = 'messages')
"""

# A call to fn that is not the whole of a scalar subquery `( SELECT fn ...`: evaluated once per
# row instead of once per statement. Counted by occurrences in each expression's deparsed text.
UNWRAPPED_CALLS = f"""
with p as ({POLICIES}),
exprs as (
  select p.name, e.expr from p, lateral (values (p.qual), (p.with_check)) as e (expr) where e.expr is not null
)
select distinct name
from exprs
where (length(expr) - length(replace(expr, $1, ''))) / length($1)
   <> (length(expr) - length(replace(expr, '( SELECT ' || $1, ''))) / length('( SELECT ' || $1)
order by 1
"""

# Policies for anyone but `authenticated` (anon gets nothing; service_role bypasses RLS).
NOT_TO_AUTHENTICATED = f"""
select name from ({POLICIES}) p where roles <> '{{authenticated}}'::name[] order by 1
"""

# Foreign keys (public, private) without an index that serves them. An index serves a foreign key
# when its leading key columns are the key's columns (in any order), or when it is unique on some
# of the key's columns (a lookup by the whole key then finds at most one row through it).
# Partial indexes serve only some rows, so they do not count.
UNINDEXED_FOREIGN_KEYS = """
with fk as (
  select c.conrelid, c.conname, c.conkey
  from pg_constraint c join pg_namespace n on n.oid = c.connamespace
  where c.contype = 'f' and n.nspname in ('public', 'private')
),
idx as (
  select i.indrelid, i.indisunique, i.indnkeyatts,
         (string_to_array(i.indkey::text, ' ')::int2[])[1:i.indnkeyatts] as keycols
  from pg_index i
  where i.indpred is null
)
select fk.conrelid::regclass::text || ' ' || fk.conname as name
from fk
where not exists (
  select 1 from idx
  where idx.indrelid = fk.conrelid
    and (
      (idx.indnkeyatts >= cardinality(fk.conkey)
       and idx.keycols[1:cardinality(fk.conkey)] @> fk.conkey
       and idx.keycols[1:cardinality(fk.conkey)] <@ fk.conkey)
      or (idx.indisunique and idx.keycols <@ fk.conkey)
    )
)
order by 1
"""

# security definer functions in public or private without a pinned search_path.
DEFINER_WITHOUT_SEARCH_PATH = """
select p.oid::regprocedure::text as name
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where n.nspname in ('public', 'private') and p.prosecdef
  and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) as c (setting) where c.setting like 'search_path=%')
order by 1
"""


async def names(conn: asyncpg.Connection, sql: str, *args: object) -> list[str]:
    return [r["name"] for r in await conn.fetch(sql, *args)]


async def planted(conn: asyncpg.Connection, setup: str, sql: str, *args: object) -> list[str]:
    """What the rule lists with `setup` applied, in a transaction that is rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(setup)
        return await names(conn, sql, *args)
    finally:
        await tx.rollback()


PROBE_TABLE = """
create table public.lint_probe (
  id uuid primary key,
  created_by uuid not null references auth.users (id),
  message_id uuid references public.messages (id)
);
create index lint_probe_created_by_partial on public.lint_probe (created_by) where id is not null;
"""


async def test_the_lint_sees_the_schema(owner_conn: asyncpg.Connection) -> None:
    """Guard against a rule passing because it looks at nothing."""
    policies = await names(owner_conn, POLICIES)
    assert len(policies) >= 14
    assert any(p.startswith("realtime.messages: ") for p in policies)
    assert (
        await owner_conn.fetchval(
            "select count(*) from pg_constraint where contype = 'f' and connamespace = 'public'::regnamespace"
        )
        >= 12
    )
    definers = await owner_conn.fetchval(
        "select count(*) from pg_proc where prosecdef and pronamespace in ('public'::regnamespace, 'private'::regnamespace)"
    )
    assert definers >= 5


# -----------------------------------------------------------------------------------------------
# Every public table has row-level security enabled
# -----------------------------------------------------------------------------------------------


async def test_every_public_table_has_rls_enabled(owner_conn: asyncpg.Connection) -> None:
    assert await names(owner_conn, RLS_DISABLED) == []


async def test_rls_rule_lists_a_table_without_rls(owner_conn: asyncpg.Connection) -> None:
    assert "lint_probe" in await planted(owner_conn, PROBE_TABLE, RLS_DISABLED)


# -----------------------------------------------------------------------------------------------
# auth.uid() and private.is_admin() in policies are wrapped in a scalar subquery
# -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["auth.uid()", "private.is_admin()"])
async def test_policies_wrap_calls_in_select(owner_conn: asyncpg.Connection, call: str) -> None:
    assert await names(owner_conn, UNWRAPPED_CALLS, call) == []


async def test_policies_use_both_helpers_wrapped(owner_conn: asyncpg.Connection) -> None:
    """The wrapped form is what the policies actually contain (the deparsed text the rule counts)."""
    texts = " ".join((r["qual"] or "") + " " + (r["with_check"] or "") for r in await owner_conn.fetch(POLICIES))
    assert "( SELECT auth.uid() AS uid)" in texts
    assert "( SELECT private.is_admin() AS is_admin)" in texts


@pytest.mark.parametrize(
    ("call", "using"),
    [
        ("auth.uid()", "created_by = auth.uid()"),
        ("auth.uid()", "created_by = (select auth.uid()) or id = auth.uid()"),
        ("private.is_admin()", "private.is_admin()"),
        ("private.is_admin()", "(select private.is_admin()) or not private.is_admin()"),
    ],
    ids=["uid-bare", "uid-one-of-two-bare", "is-admin-bare", "is-admin-one-of-two-bare"],
)
async def test_wrap_rule_lists_a_bare_call(owner_conn: asyncpg.Connection, call: str, using: str) -> None:
    setup = (
        PROBE_TABLE
        + f"""
      alter table public.lint_probe enable row level security;
      create policy "probe" on public.lint_probe for select to authenticated using ({using});
    """
    )
    assert await planted(owner_conn, setup, UNWRAPPED_CALLS, call) == ["public.lint_probe: probe"]


async def test_wrap_rule_lists_a_bare_call_on_realtime_messages(owner_conn: asyncpg.Connection) -> None:
    setup = """create policy "probe" on realtime.messages for insert to authenticated
               with check (realtime.topic() = 'user:' || auth.uid()::text)"""
    assert await planted(owner_conn, setup, UNWRAPPED_CALLS, "auth.uid()") == ["realtime.messages: probe"]


# -----------------------------------------------------------------------------------------------
# Every policy is `to authenticated`
# -----------------------------------------------------------------------------------------------


async def test_every_policy_is_to_authenticated(owner_conn: asyncpg.Connection) -> None:
    assert await names(owner_conn, NOT_TO_AUTHENTICATED) == []


@pytest.mark.parametrize("roles", ["public", "anon", "authenticated, anon"])
async def test_role_rule_lists_other_roles(owner_conn: asyncpg.Connection, roles: str) -> None:
    setup = (
        PROBE_TABLE
        + f"""
      create policy "probe" on public.lint_probe for select to {roles} using (true);
    """
    )
    assert await planted(owner_conn, setup, NOT_TO_AUTHENTICATED) == ["public.lint_probe: probe"]


# -----------------------------------------------------------------------------------------------
# Every foreign key is served by an index
# -----------------------------------------------------------------------------------------------


async def test_every_foreign_key_has_an_index(owner_conn: asyncpg.Connection) -> None:
    assert await names(owner_conn, UNINDEXED_FOREIGN_KEYS) == []


async def test_fk_rule_lists_unindexed_and_partially_indexed_keys(owner_conn: asyncpg.Connection) -> None:
    found = await planted(owner_conn, PROBE_TABLE, UNINDEXED_FOREIGN_KEYS)
    assert sorted(n for n in found if n.startswith("lint_probe ")) == [
        "lint_probe lint_probe_created_by_fkey",  # only a partial index
        "lint_probe lint_probe_message_id_fkey",
    ]


async def test_fk_rule_wants_the_leading_columns(owner_conn: asyncpg.Connection) -> None:
    setup = """
      create table public.lint_probe (
        a uuid not null, b uuid not null, c text,
        foreign key (a, b) references public.messages (id, created_by)
      );
      create index lint_probe_b_a_c on public.lint_probe (c, a, b);
      create index lint_probe_a_c on public.lint_probe (a, c);
    """
    assert await planted(owner_conn, setup, UNINDEXED_FOREIGN_KEYS) == ["lint_probe lint_probe_a_b_fkey"]
    served = setup + "create index lint_probe_b_a on public.lint_probe (b, a, c);"
    assert await planted(owner_conn, served, UNINDEXED_FOREIGN_KEYS) == []


# -----------------------------------------------------------------------------------------------
# Every security definer function pins its search_path
# -----------------------------------------------------------------------------------------------


async def test_every_security_definer_function_pins_search_path(owner_conn: asyncpg.Connection) -> None:
    assert await names(owner_conn, DEFINER_WITHOUT_SEARCH_PATH) == []


async def test_search_path_rule_lists_an_unpinned_definer(owner_conn: asyncpg.Connection) -> None:
    setup = """
      create function private.lint_probe() returns int language sql security definer as $$ select 1 $$;
      create function public.lint_probe_pinned() returns int language sql security definer
        set search_path = '' as $$ select 1 $$;
      create function public.lint_probe_invoker() returns int language sql as $$ select 1 $$;
    """
    assert await planted(owner_conn, setup, DEFINER_WITHOUT_SEARCH_PATH) == ["private.lint_probe()"]


# -----------------------------------------------------------------------------------------------
# Each function, trigger and policy is created once, in one migration file
# -----------------------------------------------------------------------------------------------
# Until the first release a change to an object edits its one definition: nothing is redefined by
# a later file (or later in the same file), so nothing is dropped to be replaced either. Read from
# the files' text, since the catalogs keep only the last definition.

# String literals are kept whole (a '--' in one is not a comment); comments become a space.
SQL_COMMENT_OR_STRING = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
IDENT = r'(?:"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)'
QUALIFIED = rf"{IDENT}(?:\s*\.\s*{IDENT})?"
CREATE_FUNCTION = re.compile(rf"\bcreate\s+(?:or\s+replace\s+)?function\s+(?P<name>{QUALIFIED})\s*\(", re.I)
CREATE_TRIGGER = re.compile(
    rf"\bcreate\s+(?:or\s+replace\s+)?(?:constraint\s+)?trigger\s+(?P<name>{IDENT})"
    rf"\s+(?:before|after|instead\s+of)\b[^;]*?\bon\s+(?P<table>{QUALIFIED})",
    re.I,
)
CREATE_POLICY = re.compile(rf"\bcreate\s+policy\s+(?P<name>{IDENT})\s+on\s+(?P<table>{QUALIFIED})", re.I)
DROP_FUNCTION = re.compile(r"\bdrop\s+function\b", re.I)


def without_comments(sql: str) -> str:
    return SQL_COMMENT_OR_STRING.sub(lambda m: m[0] if m[0].startswith("'") else " ", sql)


def identifier(text: str) -> str:
    """An identifier as Postgres resolves it: quoted ones as written, the others in lower case."""
    parts = re.findall(r'"(?:[^"]|"")+"|[^\s."]+', text)
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts)


def created_objects(sql: str) -> list[str]:
    """The functions (by schema.name), triggers and policies (by name and table) that `sql`
    creates, once per create statement."""
    text = without_comments(sql)
    found = [f"function {identifier(m['name'])}" for m in CREATE_FUNCTION.finditer(text)]
    found += [f"trigger {identifier(m['name'])} on {identifier(m['table'])}" for m in CREATE_TRIGGER.finditer(text)]
    found += [f'policy "{identifier(m["name"])}" on {identifier(m["table"])}' for m in CREATE_POLICY.finditer(text)]
    return found


def created_more_than_once(files: Mapping[str, str]) -> list[str]:
    """Each object created by more than one statement, with the files that create it (a file
    once per statement): `function private.f: a.sql, b.sql`."""
    where: dict[str, list[str]] = defaultdict(list)
    for name in sorted(files):
        for obj in created_objects(files[name]):
            where[obj].append(name)
    return [f"{obj}: {', '.join(names)}" for obj, names in sorted(where.items()) if len(names) > 1]


def dropping_functions(files: Mapping[str, str]) -> list[str]:
    return sorted(name for name, sql in files.items() if DROP_FUNCTION.search(without_comments(sql)))


def migration_files() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(migrations_dir().glob("*.sql"))}


def test_the_migration_lint_sees_the_migrations() -> None:
    """Guard against the rules passing because the patterns match nothing."""
    files = migration_files()
    assert len(files) >= 7
    objects = [obj for sql in files.values() for obj in created_objects(sql)]
    kinds = [obj.split()[0] for obj in objects]
    assert kinds.count("function") >= 40 and kinds.count("trigger") >= 30 and kinds.count("policy") >= 20
    assert "function private.claim_messages" in objects
    assert "trigger on_auth_user_created on auth.users" in objects
    assert "trigger messages_guard on public.messages" in objects
    assert 'policy "realtime: join own user topic" on realtime.messages' in objects


def test_every_function_trigger_and_policy_is_created_once() -> None:
    assert created_more_than_once(migration_files()) == []


def test_no_migration_drops_a_function() -> None:
    assert dropping_functions(migration_files()) == []


@pytest.mark.parametrize(
    ("files", "listed"),
    [
        (
            {
                "1_a.sql": "create function private.f(a int) returns int language sql as $$ select a $$;",
                "2_b.sql": 'CREATE OR REPLACE FUNCTION "private".F (b text) RETURNS int AS $$ select 1 $$;',
            },
            ["function private.f: 1_a.sql, 2_b.sql"],
        ),
        (
            {
                "1_a.sql": """
                  create or replace function public.g() returns void language sql as $$ $$;
                  create or replace function
                    public.g() returns void language sql as $$ select 1 $$;""",
            },
            ["function public.g: 1_a.sql, 1_a.sql"],
        ),
        (
            {
                "1_a.sql": "create trigger t_touch before update on public.t for each row execute function f();",
                "2_b.sql": """create or replace trigger T_TOUCH
                                after insert or update of a, b on public.t
                                referencing new table as new_rows
                                for each statement execute function g();""",
            },
            ["trigger t_touch on public.t: 1_a.sql, 2_b.sql"],
        ),
        (
            {
                "1_a.sql": """create policy "p: own" on public.t for select to authenticated using (true);
                              create policy "p: own" on public.u for select to authenticated using (true);""",
                "2_b.sql": 'create policy "p: own" on public.t for update to authenticated using (false);',
            },
            ['policy "p: own" on public.t: 1_a.sql, 2_b.sql'],
        ),
    ],
    ids=["function-two-files", "function-one-file-twice", "trigger-same-table", "policy-same-table"],
)
def test_the_once_rule_lists_an_object_created_twice(files: dict[str, str], listed: list[str]) -> None:
    assert created_more_than_once(files) == listed


def test_the_once_rule_ignores_comments_and_other_tables() -> None:
    files = {
        "1_a.sql": """
          -- create function private.f() would be replaced by 2_b.sql
          /* create policy "p" on public.t */
          create function private.h() returns text language sql as $$ select '--' $$; create function private.f()
            returns void language sql as $$ $$;
          create trigger t_touch before update on public.t for each row execute function private.f();
          create policy "p" on public.t for select to authenticated using (true);""",
        "2_b.sql": """
          create trigger t_touch before update on public.u for each row execute function private.f();
          create policy "p" on public.u for select to authenticated using (true);
          create policy "P" on public.t for select to authenticated using (true);
          create function public.f() returns void language sql as $$ $$;""",
    }
    assert created_objects(files["1_a.sql"]) == [
        "function private.h",
        "function private.f",
        "trigger t_touch on public.t",
        'policy "p" on public.t',
    ]
    assert created_more_than_once(files) == []


def test_the_drop_rule_lists_a_drop_function() -> None:
    files = {
        "1_a.sql": "-- no drop function here\ncreate function private.f() returns int language sql as $$ select 1 $$;",
        "2_b.sql": "DROP\n  FUNCTION IF EXISTS private.f();",
    }
    assert dropping_functions(files) == ["2_b.sql"]
