"""Message content rules, as Postgres defines them (20261129000400_content_rules): cleaning, HTML
refusal, the spam guard's content rules, and rendering (private.render, what the claim sends)."""

from __future__ import annotations

import asyncpg
import pytest


async def clean(admin: asyncpg.Connection, raw: str) -> str:
    return str(await admin.fetchval("select private.clean_content($1)", raw))


async def refusal(admin: asyncpg.Connection, raw: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as err:
        await clean(admin, raw)
    assert err.value.sqlstate == "WS426"
    return err.value


async def test_clean_normalises_to_nfc_and_keeps_newlines_and_tabs(admin: asyncpg.Connection) -> None:
    decomposed = "Cafe\u0301\r\nline\ttab\rend"
    assert await clean(admin, decomposed) == "Caf\u00e9\nline\ttab\nend"


async def test_clean_removes_control_characters_and_trims(admin: asyncpg.Connection) -> None:
    assert await clean(admin, "  \x01Hola\x07 \x1b[31mmundo\x7f\u0085  \n") == "Hola [31mmundo"
    assert await clean(admin, "\u00a0\u3000 hola \u2003\u202f") == "hola"


@pytest.mark.parametrize("raw", ["", "   ", "\x01\n\t", "\u0007", "\u00a0\u2028"])
async def test_empty_after_cleaning_is_refused(admin: asyncpg.Connection, raw: str) -> None:
    assert (await refusal(admin, raw)).hint == "content_empty"


async def test_length_is_counted_after_cleaning(admin: asyncpg.Connection) -> None:
    assert len(await clean(admin, "a" * 4096 + "\x01" * 50)) == 4096
    err = await refusal(admin, "a" * 4097)
    assert err.hint == "content_too_long"
    assert "4097" in str(err)


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        ("hola <script>alert(1)</script>", "<script>"),
        ("en <b>negrita</b>", "<b>"),
        ('mira <a href="https://x.example">esto</a>', "<a href>"),
        ("<IMG SRC=x onerror=alert(1)>", "<img src onerror>"),
        ("</div>", "<div>"),
        ("<br/>", "<br>"),
        ("<br />", "<br>"),
        ("clic: javascript:alert(1)", "javascript:"),
        ("VBScript:msgbox", "vbscript:"),
        ("data:text/html;base64,PHNjcmlwdD4=", "data:text/html"),
        ('texto " onmouseover="alert(1)', "onmouseover="),
        ("<!-- oculto -->", "<!--"),
        ("<xss contenteditable onbeforeinput=alert(1)>x</xss>", "<xss contenteditable onbeforeinput>"),
        ("<x onwebkitanimationend=alert(1) style=animation-name:y>", "<x onwebkitanimationend style>"),
        ("<custom-el>hola</custom-el>", "<custom-el>"),
        ('<y title="z">', "<y title>"),
        # Plain text only: a letter after `<` starts a tag in HTML's tokenizer, whatever follows.
        ("x<y and y>z", "<y and y>"),
    ],
)
async def test_html_and_script_are_refused_naming_what_was_found(
    admin: asyncpg.Connection, raw: str, found: str
) -> None:
    err = await refusal(admin, raw)
    assert err.hint == "html_not_allowed"
    assert f"(found {found})" in str(err)


@pytest.mark.parametrize(
    "raw",
    [
        "a < b and b > c",
        "te quiero <3",
        "x<5 and y>3",
        "precio <10 USD> oferta",
        "online = true",
        "visita https://example.com/?a=1&b=2",
        "email: ana@example.com",
        "¡Hola, Ángela! ¿Vienes mañana?",
    ],
)
async def test_plain_text_with_angle_brackets_and_links_passes(admin: asyncpg.Connection, raw: str) -> None:
    assert await clean(admin, raw) == raw


async def test_render_replaces_the_name_placeholder_with_spaces_allowed(admin: asyncpg.Connection) -> None:
    async def render(content: str, name: str | None) -> str:
        return str(await admin.fetchval("select private.render($1, $2)", content, name))

    assert await render("Hola {{name}}, {{ name }} y {{  name\t}}!", "Ana") == "Hola Ana, Ana y Ana!"
    assert await render("Hola {{name}}", None) == "Hola "
    assert await render("{{nombre}} {{ Name }} {name}", "Ana") == "{{nombre}} {{ Name }} {name}"
    # The name is inserted literally, even if it looks like a pattern.
    assert await render("Hola {{name}}", r"\1 $0 \& & {{name}}") == r"Hola \1 $0 \& & {{name}}"


async def content_rules(admin: asyncpg.Connection, text: str) -> list[str]:
    """The guard's verdict on text alone: no owner, no groups, no deliveries (a fresh uuid)."""
    rules = await admin.fetchval("select private.spam_rules(gen_random_uuid(), gen_random_uuid(), $1, now())", text)
    return list(rules)


async def test_an_ordinary_message_breaks_no_rule(admin: asyncpg.Connection) -> None:
    assert await content_rules(admin, "Hola {{name}}, la reunión es mañana a las 10. https://example.com") == []


async def test_links_and_shouting_rules(admin: asyncpg.Connection) -> None:
    links = "a https://a.example b http://b.example c www.c.example d https://d.example"
    assert await content_rules(admin, links) == ["too_many_links"]
    assert await content_rules(admin, "https://a.example http://b.example www.c.example") == []
    assert await content_rules(admin, "COMPRA AHORA ESTA OFERTA INCREIBLE YA") == ["shouting"]
    assert await content_rules(admin, "ÁÉÍÓÚ ÑANDÚ ÁRBOL ÉXITO ÓRGANO") == ["shouting"]
    assert await content_rules(admin, "OK SI") == []  # too few letters to judge


async def test_shouting_is_measured_among_letters_only(admin: asyncpg.Connection) -> None:
    # 21 letters, 15 uppercase (71 %): shouting; digits and punctuation do not count.
    assert await content_rules(admin, "ABCDEFGHIJKLMNO abcdef 1234567890!!!") == ["shouting"]
    # 20 letters, 14 uppercase (70 %): not more than 70 %.
    assert await content_rules(admin, "ABCDEFGHIJKLMN abcdef") == []
