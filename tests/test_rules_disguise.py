"""Rules that see through disguise (issue 19, classes 3, 4 and 5), each tried on both paths:
through /api and as supabase-js runs it (SQL as `authenticated` with the user's claims, one
transaction per call), each refusal beside a positive control on the same path, so a database that
refused everything could not pass.

- Class 3: contact and group names are cleaned and checked by Postgres (triggers), the contacts
  import included; a contact name holding a link is refused; near-duplicate group names meet the
  unique index.
- Class 4: no tags at all: whatever HTML's tokenizer would start a tag with is refused, in any
  script, with any handler name.
- Class 5: the spam guard counts on a normalised form (NFKC, invisible characters removed): styled
  capitals, bare domains, shorteners, runs of one character, the word list, and duplicates that
  differ by a zero-width character.

Then the SQL the dispatcher's exit check runs: private.render and private.exit_problems.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from test_import_files import book, counts, imported
from test_rules_both_paths import api_draft, api_error, direct, direct_draft, direct_error, later, reachable_group

from whatsched.api.deps import Resources
from whatsched.db.pool import service_tx, user_tx
from whatsched.rules import publish_settings

SCHEDULE = "select status from public.schedule_message($1::uuid, $2)"


def phone() -> str:
    return f"+1558{uuid.uuid4().int % 10**7:07d}"


async def direct_refusal(res: Resources, user: Any, sql: str, *args: Any) -> asyncpg.PostgresError:
    """The database's refusal of one supabase-js call, whole (code in HINT, fields in DETAIL)."""
    with pytest.raises(asyncpg.PostgresError) as err:
        await direct(res, user, sql, *args)
    return err.value


# -----------------------------------------------------------------------------------------------
# Class 3: names are cleaned in Postgres, whichever path writes them
# -----------------------------------------------------------------------------------------------

INSERT_CONTACT = "insert into public.contacts (name, phone) values ($1, $2) returning name"
INSERT_GROUP = "insert into public.groups (name, description) values ($1, $2) returning name, description"


async def test_names_are_cleaned_by_postgres_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    user = await make_user()
    dirty = "\t Ana\n\x1b[31m  Pérez\u202e\u200b "
    # supabase-js: control characters, bidi overrides and zero-width spaces go, spaces collapse.
    assert await direct(res, user, INSERT_CONTACT, dirty, phone()) == "Ana [31m Pérez"
    resp = await client.post("/api/contacts", json={"name": dirty, "phone": phone()}, headers=user.headers)
    assert resp.status_code == 201 and resp.json()["name"] == "Ana [31m Pérez", resp.text
    # A rename by either path is cleaned the same way.
    contact = resp.json()["id"]
    rename = "update public.contacts set name = $2 where id = $1::uuid returning name"
    assert await direct(res, user, rename, contact, "  Ana\u2066  María\u2069 ") == "Ana María"
    resp = await client.put(f"/api/contacts/{contact}", json={"name": "Cafe\u0301\r\nCentral"}, headers=user.headers)
    assert resp.json()["name"] == "Caf\u00e9 Central", resp.text

    sql = f"with g as ({INSERT_GROUP}) select row_to_json(g)::text from g"
    row = await direct(res, user, sql, "  Clientes\tVIP \x07", " x\r\n")
    assert row == '{"name":"Clientes VIP","description":"x"}'
    resp = await client.post(
        "/api/groups",
        json={"name": " Socios\u202e  2026 ", "description": " Los de\r\nsiempre\u200b\x07 "},
        headers=user.headers,
    )
    assert resp.status_code == 201, resp.text
    assert (resp.json()["name"], resp.json()["description"]) == ("Socios 2026", "Los de\nsiempre")

    # Positive control: clean names are stored exactly as given, on both paths.
    for name in ("María José O'Higgins-Núñez", "Sr.Pérez", "Ana (ana@example.com)", "山田 太郎"):
        assert await direct(res, user, INSERT_CONTACT, name, phone()) == name
        resp = await client.post("/api/contacts", json={"name": name, "phone": phone()}, headers=user.headers)
        assert resp.status_code == 201 and resp.json()["name"] == name, resp.text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("   ", "must not be empty"),
        ("\u202e\x07\u200b\t", "must not be empty"),
        ("x" * 201, "longer than 200 characters"),
        ("Ana www.promo.cl", "must not contain a link"),
        ("Ofertas bit.ly/3xYz", "must not contain a link"),
        ("Visita ejemplo.com", "must not contain a link"),
        ("Juan https://a.example", "must not contain a link"),
        ("Ana ｐｒｏｍｏ．ｃｌ", "must not contain a link"),  # fullwidth: a domain once NFKC folds it
        ("Ana pro\u200bmo.cl", "must not contain a link"),  # a zero-width space hides nothing
        ("Ana promo\u2488cl", "must not contain a link"),  # ⒈ is "1." once NFKC folds it
    ],
)
async def test_a_bad_contact_name_is_refused_on_both_paths_with_the_field(
    client: httpx.AsyncClient, res: Resources, make_user: Any, name: str, message: str
) -> None:
    user = await make_user()
    err = await direct_refusal(res, user, INSERT_CONTACT, name, phone())
    assert err.sqlstate == "WS428" and err.hint == "validation_error"
    assert f'"field": "name", "message": "{message}' in (err.detail or "")
    resp = await client.post("/api/contacts", json={"name": name, "phone": phone()}, headers=user.headers)
    assert api_error(resp, 422) == "validation_error"
    assert resp.json()["errors"][0]["field"] == "name" and resp.json()["errors"][0]["message"].startswith(message)
    # Nor may a rename bring it in.
    contact = await direct(
        res, user, "insert into public.contacts (name, phone) values ('Ana', $1) returning id", phone()
    )
    sql = "update public.contacts set name = $2 where id = $1::uuid"
    assert await direct_error(res, user, sql, contact, name) == "validation_error"
    resp = await client.put(f"/api/contacts/{contact}", json={"name": name}, headers=user.headers)
    assert api_error(resp, 422) == "validation_error"
    assert await direct(res, user, "select array_agg(name) from public.contacts") == ["Ana"]
    # Positive control: the same calls with a clean name succeed.
    assert await direct(res, user, sql, contact, "Ana Luisa") is None
    resp = await client.post("/api/contacts", json={"name": "Ana Luisa", "phone": phone()}, headers=user.headers)
    assert resp.status_code == 201, resp.text


async def test_bad_group_names_and_descriptions_are_refused_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    user = await make_user()
    cases = [("\x07 \u202e", "", "name"), ("g" * 101, "", "name"), ("Equipo", "d" * 1001, "description")]
    for name, description, field in cases:
        err = await direct_refusal(res, user, INSERT_GROUP, name, description)
        assert err.sqlstate == "WS428" and f'"field": "{field}"' in (err.detail or ""), err
        resp = await client.post("/api/groups", json={"name": name, "description": description}, headers=user.headers)
        assert api_error(resp, 422) == "validation_error" and resp.json()["errors"][0]["field"] == field
    # A group name may hold a domain (it is never sent to anyone). Positive control on both paths.
    assert await direct(res, user, "insert into public.groups (name) values ('Clientes de promo.cl') returning name")
    resp = await client.post("/api/groups", json={"name": "Equipo", "description": "d" * 1000}, headers=user.headers)
    assert resp.status_code == 201, resp.text


async def test_near_duplicate_group_names_meet_the_unique_index_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    user = await make_user()
    assert await direct(res, user, "insert into public.groups (name) values ('GA') returning name") == "GA"
    for near in ("GA ", " ga", "G\u200bA", "\ufeffGA", "GA\u202e"):
        assert await direct_error(res, user, "insert into public.groups (name) values ($1)", near) == "23505", near
    resp = await client.post("/api/groups", json={"name": "G\u200bA "}, headers=user.headers)
    body = resp.json()
    assert api_error(resp, 409) == "duplicate_group_name" and body["errors"][0]["field"] == "name"
    # Positive control: a name that differs in more than invisible characters is another group.
    resp = await client.post("/api/groups", json={"name": "GA 2"}, headers=user.headers)
    assert resp.status_code == 201, resp.text


async def test_the_import_reports_bad_names_per_row_and_stores_the_rest_cleaned(
    client: httpx.AsyncClient, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    a, b, c, d, e = "+56911110001", "+56911110002", "+56911110003", "+56911110004", "+56911110005"
    text = (
        "name,phone\n"  # row 1
        f'"  Ana\u202e   Pérez\u200b",{a}\n'  # 2: cleaned
        f"Promo bit.ly/x,{b}\n"  # 3: a link
        f"{'x' * 201},{c}\n"  # 4: too long
        f'"\u202e\t ",{d}\n'  # 5: blank once clean: named by its phone
        f"Bea,{e}\n"  # 6
    )
    body = await imported(client, user, text.encode())
    assert counts(body) == (5, 3, 0, 0, 2, 0)
    assert [(i["row"], i["column"], i["reason"].split(" (")[0]) for i in body["invalid"]] == [
        (3, "name", "name must not contain a link"),
        (4, "name", "name longer than 200 characters"),
    ]
    assert await book(admin, user.id) == {a: ("Ana Pérez", None), d: (d, None), e: ("Bea", None)}
    # Update mode: a row renaming a contact to a refused name is reported, the contact keeps its name.
    body = await imported(client, user, f"name,phone\nwww.ana.cl,{a}\nBeatriz,{e}\n".encode(), on_duplicate="update")
    assert (body["updated"], body["invalid_count"]) == (1, 1)
    assert (await book(admin, user.id))[a] == ("Ana Pérez", None)


async def test_names_the_triggers_skip_are_exactly_what_the_rule_would_store(admin: asyncpg.Connection) -> None:
    """The triggers and the import skip clean_name for plain names (private.plain_name): every name
    it calls plain must come out of the rule unchanged and unrefused, whatever it is made of."""
    rng = random.Random(19)
    pool = [*"aZñÉ9 '-,.:", "\u200b", "\u00a0", "\u202e", "\x07", "\u2488", "\uff0e", "ª", "e\u0301", "Ж", "山"]
    names = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    names += ["Ana", "Ana María", "O'Higgins-Núñez, José", "x" * 100, "x" * 101, "Sr.Pérez", " Ana", "Ana  María"]
    wrong = await admin.fetch(
        """select n from unnest($1::text[]) as n
           where private.plain_name(n)
             and ((private.contact_name(n)).name is distinct from n or (private.contact_name(n)).problem is not null
                  or (private.group_name(n)).name is distinct from n or (private.group_name(n)).problem is not null)""",
        names,
    )
    assert wrong == []
    # Positive control: the sample holds both kinds.
    plain = await admin.fetchval(
        "select count(*) filter (where private.plain_name(n)) from unnest($1::text[]) n", names
    )
    assert 100 < plain < len(names) - 100


# -----------------------------------------------------------------------------------------------
# Class 4: no tags at all
# -----------------------------------------------------------------------------------------------

# (content, what the error names)
TAG_SHAPES = [
    ("<ſcript>alert(1)</ſcript>", "<ſcript>"),  # the long s upper-cases to S: <SCRIPT>
    ("<İmg src=x onerror=alert(1)>", "onerror>"),  # dotted I lower-cases to i
    ("<a_b onx=1>", "<a_b onx>"),
    ("<ñ>hola</ñ>", "<ñ>"),
    ("hola <Ж", "<ж>"),
    # Runs script when a page sets it as innerHTML (script tags would not; an image's error does).
    ("<img src=x onerror=alert(document.domain)>", "<img src onerror>"),
    ("<img/src/onerror=alert(1)>", "<img src onerror>"),
    ("<svg><animate onbegin=alert(1) attributeName=x dur=1s>", "<svg>"),
    ("<details open ontoggle=alert(1)>", "<details open ontoggle>"),
    ("<x onanynewevent=alert(1)>", "<x onanynewevent>"),
    ("</ſcript>", "<ſcript>"),
    ("<!doctype html>", "<!doctype"),
    ("<![CDATA[x]]>", "<![cdata["),
    ('<?xml version="1.0"?>', "<?xml"),
    ("<3 onload=alert(1)>", "onload="),  # a handler inside an open `<`, whatever follows it
    ("java\tscript:alert(1)", "javascript:"),  # URL parsers drop the tab
]

PLAIN_TEXT = ["te quiero <3", "a < b y b > c", "x<5", "si x <= 3", "< b", "corazón roto </3", "precio <10 USD>"]


@pytest.mark.parametrize(("content", "found"), TAG_SHAPES)
async def test_tag_like_sequences_are_refused_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection, content: str, found: str
) -> None:
    user = await make_user()
    resp = await client.post("/api/messages", json={"content": content}, headers=user.headers)
    assert api_error(resp, 422) == "html_not_allowed" and resp.json()["errors"][0]["field"] == "content"
    err = await direct_refusal(res, user, "insert into public.messages (content) values ($1)", content)
    assert err.hint == "html_not_allowed" and found in str(err), str(err)
    # An edit of a clean draft cannot bring it in either.
    mid = await direct_draft(res, user, "Texto limpio")
    assert await direct_error(
        res, user, "update public.messages set content = $2 where id = $1::uuid", mid, content
    ) == ("html_not_allowed")
    resp = await client.put(f"/api/messages/{mid}", json={"content": content}, headers=user.headers)
    assert api_error(resp, 422) == "html_not_allowed"
    assert await admin.fetchval("select private.find_html($1)", content) is not None


@pytest.mark.parametrize("content", PLAIN_TEXT)
async def test_angle_brackets_in_plain_text_pass_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, content: str
) -> None:
    user = await make_user()
    assert (
        await direct(
            res, user, "select content from public.messages where id = $1::uuid", await direct_draft(res, user, content)
        )
        == content
    )
    resp = await client.post("/api/messages", json={"content": content}, headers=user.headers)
    assert resp.status_code == 201 and resp.json()["content"] == content, resp.text


# -----------------------------------------------------------------------------------------------
# Class 5: heuristics that see through disguise
# -----------------------------------------------------------------------------------------------

DISGUISED = [
    ("𝐂𝐎𝐌𝐏𝐑𝐀 𝐘𝐀 𝐄𝐒𝐓𝐀 𝐎𝐅𝐄𝐑𝐓𝐀 𝐈𝐍𝐂𝐑𝐄𝐈𝐁𝐋𝐄 𝐇𝐎𝐘", "shouting"),  # mathematical bold
    ("ＣＯＭＰＲＡ ＹＡ ＥＳＴＡ ＯＦＥＲＴＡ ＩＮＣＲＥＩＢＬＥ", "shouting"),  # fullwidth
    ("Mira bit.ly/a1, t.co/b2, tinyurl.com/c3 y promo.cl/ofertas hoy", "too_many_links"),
    ("Visiten ejemplo.com, otro.net, tercero.org y cuarto.io esta semana", "too_many_links"),
    ("Hola a todos!!!!!!!!!!!!!!!!!!!!", "repeated_characters"),
    (
        "Hola a todos !\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!\u200b!",
        "repeated_characters",
    ),
    ("¡Préstamo GRATIS! Has ganado, es urgente: responde hoy", "spam_words"),
    ("Crypto loan, easy\u200b money for every winner", "spam_words"),
]


@pytest.mark.parametrize(("content", "rule"), DISGUISED)
async def test_disguised_spam_is_refused_on_both_paths_naming_the_rule(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection, content: str, rule: str
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    via_api = await api_draft(client, user, content, group)
    resp = await client.post(
        f"/api/messages/{via_api}/schedule", json={"scheduled_for": later(hours=1).isoformat()}, headers=user.headers
    )
    assert api_error(resp, 422) == "spam_suspected"
    assert [e["field"] for e in resp.json()["errors"]] == [rule]
    assert resp.json()["errors"][0]["message"]

    via_sql = await direct_draft(res, user, content, group)
    assert await direct_error(res, user, SCHEDULE, via_sql, later(hours=1)) == "spam_suspected"
    assert await direct(res, user, "select public.spam_check($1::uuid)", via_sql) == [rule]
    preview = await client.get(f"/api/messages/{via_sql}/preview", headers=user.headers)
    assert preview.json()["spam"] == {"verdict": "suspected", "rules": [rule]}


async def test_ordinary_text_with_dots_accents_and_a_few_links_schedules_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    """Positive control of class 5: prose that looks like what the guard now counts."""
    user = await make_user()
    group = await reachable_group(admin, user.id)
    texts = [
        "Hola {{name}}: el Sr.Pérez lo espera a las 10 a.m. en la oficina. ¡Gracias!",
        "Detalles en https://tienda.example.cl/pedidos, bit.ly/3abc y ayuda.com",
        "Oferta gratis para socios: pasa a buscar tu premio...",  # two words of the list, not three
        "Mañana: reunión de 9:00 a 12:00 ✔️✔️✔️ — ¡no faltes!",
    ]
    for text in texts:
        mid = await direct_draft(res, user, text, group)
        assert await direct(res, user, "select public.spam_check($1::uuid)", mid) == [], text
        assert await direct(res, user, SCHEDULE, mid, later(hours=2)) == "scheduled"
    mid = await api_draft(client, user, texts[0].replace("10 a.m.", "11 a.m."), group)
    resp = await client.post(
        f"/api/messages/{mid}/schedule", json={"scheduled_for": later(hours=2).isoformat()}, headers=user.headers
    )
    assert resp.status_code == 200 and resp.json()["status"] == "scheduled", resp.text


async def test_a_zero_width_character_does_not_make_a_duplicate_new_on_both_paths(
    client: httpx.AsyncClient, res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    at = later(hours=3)
    first = await direct_draft(res, user, "Misma noticia para todos", group)
    assert await direct(res, user, SCHEDULE, first, at) == "scheduled"
    for disguised in ("Misma\u200b noticia para todos", "Misma noticia para todos\ufe0f", "Ｍisma noticia para todos"):
        via_sql = await direct_draft(res, user, disguised, group)
        assert await direct(res, user, "select public.spam_check($1::uuid, $2)", via_sql, at) == ["duplicate_recent"]
        assert await direct_error(res, user, SCHEDULE, via_sql, at) == "spam_suspected"
    via_api = await api_draft(client, user, "Misma noticia\u2060 para todos", group)
    resp = await client.post(
        f"/api/messages/{via_api}/schedule", json={"scheduled_for": at.isoformat()}, headers=user.headers
    )
    assert api_error(resp, 422) == "spam_suspected" and resp.json()["errors"][0]["field"] == "duplicate_recent"
    # Positive control: a different text to the same group schedules on both paths.
    other = await direct_draft(res, user, "Otra noticia para todos", group)
    assert await direct(res, user, SCHEDULE, other, at) == "scheduled"
    two_days_on = (at + timedelta(days=2)).isoformat()
    resp = await client.post(
        f"/api/messages/{via_api}/schedule", json={"scheduled_for": two_days_on}, headers=user.headers
    )
    assert resp.status_code == 200, resp.text


async def test_the_run_length_and_the_word_list_follow_the_settings(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    user = await make_user()
    group = await reachable_group(admin, user.id)
    run = await direct_draft(res, user, "Atención: " + "=" * 10, group)
    words = await direct_draft(res, user, "Sorteo: un premio gratis", group)
    check = "select public.spam_check($1::uuid)"
    assert await direct(res, user, check, run) == [] and await direct(res, user, check, words) == ["spam_words"]
    custom = {"spam_max_char_run": 5, "spam_word_limit": 0, "spam_words": "Reunión, ÚLTIMO aviso"}
    await publish_settings(admin, res.settings.model_copy(update=custom))
    try:
        assert await direct(res, user, check, run) == ["repeated_characters"]
        assert await direct(res, user, check, words) == []  # a limit of 0 turns the list off
        stored = await admin.fetchval("select spam_words from private.settings")
        assert stored == ["reunion", "ultimo aviso"]  # kept in the form they are matched in
        await publish_settings(admin, res.settings.model_copy(update={**custom, "spam_word_limit": 2}))
        mid = await direct_draft(res, user, "REUNIÓN — último  aviso", group)
        assert await direct(res, user, check, mid) == ["spam_words"]
    finally:
        await publish_settings(admin, res.settings)
    assert await direct(res, user, check, run) == []


# -----------------------------------------------------------------------------------------------
# The exit check's SQL: private.render and private.exit_problems
# -----------------------------------------------------------------------------------------------


async def render(admin: asyncpg.Connection, content: str, name: str | None) -> str:
    return str(await admin.fetchval("select private.render($1, $2)", content, name))


async def test_render_fills_every_placeholder_with_the_name_taken_literally(admin: asyncpg.Connection) -> None:
    assert await render(admin, "Hola {{name}}, {{ name }} y {{\u00a0name\u3000}}. {{Name}} {{nombre}}", "Ana") == (
        "Hola Ana, Ana y Ana. {{Name}} {{nombre}}"
    )
    assert await render(admin, "Hola {{name}}!", None) == "Hola !"
    for name in (r"\1", r"\&", "&", "$1", r"\\", r"a\0b", "{{name}}", r"\g<0>"):
        assert await render(admin, "<{{name}}> y <{{ name }}>", name) == f"<{name}> y <{name}>", name
    assert await render(admin, "Sin marcador", "Ana") == "Sin marcador"
    # Immutable and parallel safe: the claim may run it in any plan.
    assert await admin.fetchval(
        "select provolatile = 'i' and proparallel = 's' from pg_proc where oid = 'private.render(text, text)'::regprocedure"
    )


@pytest.fixture
async def settings_row(admin: asyncpg.Connection) -> AsyncIterator[Any]:
    """Call exit_problems with the settings as stored, or changed inside a rolled-back transaction."""
    tx = admin.transaction()
    await tx.start()

    async def problems(text: str, **changes: Any) -> list[str]:
        for column, value in changes.items():
            await admin.execute(f"update private.settings set {column} = $1", value)
        return list(await admin.fetchval("select private.exit_problems($1, s) from private.settings s", text))

    try:
        yield problems
    finally:
        await tx.rollback()


async def test_exit_problems_names_every_rule_a_rendered_text_breaks(settings_row: Any) -> None:
    problems = settings_row
    assert await problems("Hola Ana, la reunión es mañana a las 10. https://example.com") == []
    assert await problems(" \u00a0\t\n") == ["content_empty"]
    assert await problems("a " * 2049) == ["content_too_long"]
    assert await problems("Hola Ana\x1b[31m") == ["control_characters"]
    assert await problems("Hola \u202eAna") == ["control_characters"]
    assert await problems("Hola <img src=x onerror=alert(1)>") == ["html_not_allowed"]
    assert await problems("Hola a.cl b.cl c.cl d.cl") == ["too_many_links"]
    assert await problems("HOLA 𝐀𝐍𝐀 𝐓𝐄 𝐄𝐒𝐏𝐄𝐑𝐀𝐌𝐎𝐒 𝐌𝐀Ñ𝐀𝐍𝐀") == ["shouting"]
    assert await problems("Hola " + "a" * 13) == ["repeated_characters"]
    assert await problems("premio gratis, urgente") == ["spam_words"]
    # In order, all at once.
    everything = "VISITA\x07 <b> " + "!" * 20 + " A.CL B.CL C.CL D.CL PREMIO GRATIS URGENTE " + "Z" * 4096
    assert await problems(everything) == [
        "content_too_long",
        "control_characters",
        "html_not_allowed",
        "too_many_links",
        "shouting",
        "repeated_characters",
        "spam_words",
    ]
    # The settings passed in decide (here: the word list off, longer runs allowed).
    assert await problems("premio gratis, urgente " + "a" * 13, spam_word_limit=0, spam_max_char_run=20) == []


async def test_exit_problems_is_the_services_alone(res: Resources, make_user: Any) -> None:
    user = await make_user()
    sql = "select private.exit_problems('hola', private.current_settings())"
    assert await direct_error(res, user, sql) == "42501"
    async with service_tx(res.pool) as conn:
        assert await conn.fetchval(sql) == []
    # Positive control: what users do run (rendering for preview, the spam check) stays theirs.
    assert await direct(res, user, "select private.render('Hola {{name}}', 'Ana')") == "Hola Ana"
    assert await direct(res, user, "select private.text_spam_rules('hola', private.current_settings())") == []


async def test_the_daily_cap_counts_the_ledger_and_pending_deliveries(
    res: Resources, make_user: Any, admin: asyncpg.Connection
) -> None:
    """Sends in the ledger (a day by the clock), deliveries still pending of other messages, and
    this message's recipients (its pending deliveries once fanned out) against the cap."""
    await publish_settings(admin, res.settings.model_copy(update={"send_daily_cap": 6}))
    try:
        user = await make_user()
        message = await direct_draft(res, user, "Aviso del día", await reachable_group(admin, user.id, 2))
        check = "select public.spam_check($1::uuid)"
        assert await direct(res, user, check, message) == []  # 0 + 0 + 2
        await admin.execute(
            "insert into private.send_ledger (created_by, sender, phone, message_id, at)"
            " select $1::uuid, 'default', '+15550000000', gen_random_uuid(), clock_timestamp() - make_interval(hours => h)"
            " from unnest(array[1, 2, 30]) as h",
            user.id,
        )
        assert await direct(res, user, check, message) == []  # 2 within the day + 0 + 2
        other = await direct_draft(res, user, "Otro aviso", await reachable_group(admin, user.id, 3))
        await admin.execute(
            "insert into public.deliveries (message_id, created_by, phone, idempotency_key)"
            " select $1::uuid, $2::uuid, p, gen_random_uuid()::text from unnest(array['+15550000001', '+15550000002',"
            " '+15550000003']) as p",
            other,
            user.id,
        )
        assert await direct(res, user, check, message) == ["daily_cap"]  # 2 + 3 + 2 > 6
        # The ledger is not a user's to read: a user counts their own sends only.
        assert await direct_error(res, user, "select count(*) from private.send_ledger") == "42501"
        stranger = (await make_user()).id
        await admin.execute(
            "insert into private.send_ledger (created_by, sender, phone, message_id)"
            " values ($1::uuid, 'default', '+15550000000', gen_random_uuid())",
            stranger,
        )
        count = "select private.sends_last_day($1::uuid)"
        async with user_tx(res.pool, user.claims) as conn:
            assert (await conn.fetchval(count, user.id), await conn.fetchval(count, stranger)) == (2, 0)
        async with service_tx(res.pool) as conn:
            assert await conn.fetchval(count, stranger) == 1
    finally:
        await publish_settings(admin, res.settings)
