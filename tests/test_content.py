"""Message content rules: cleaning, HTML refusal, rendering and the spam guard (pure functions)."""

from __future__ import annotations

import pytest

from whatsched import content
from whatsched.content import ContentError, SpamFacts, clean, render, spam_rules


def test_clean_normalises_to_nfc_and_keeps_newlines_and_tabs() -> None:
    decomposed = "Cafe\u0301\r\nline\ttab\rend"
    assert clean(decomposed) == "Caf\u00e9\nline\ttab\nend"


def test_clean_removes_control_characters_and_trims() -> None:
    assert clean("  \x00Hola\x07 \x1b[31mmundo\x7f\u0085  \n") == "Hola [31mmundo"


@pytest.mark.parametrize("raw", ["", "   ", "\x00\x01\n\t", "\u0007"])
def test_empty_after_cleaning_is_refused(raw: str) -> None:
    with pytest.raises(ContentError) as err:
        clean(raw)
    assert err.value.code == "content_empty"


def test_length_is_counted_after_cleaning() -> None:
    assert len(clean("a" * 4096 + "\x00" * 50)) == 4096
    with pytest.raises(ContentError) as err:
        clean("a" * 4097)
    assert err.value.code == "content_too_long"
    assert "4097" in err.value.message


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        ("hola <script>alert(1)</script>", "<script>"),
        ("en <b>negrita</b>", "<b>"),
        ('mira <a href="https://x.example">esto</a>', "<a href>"),
        ("<IMG SRC=x onerror=alert(1)>", "<img src onerror>"),
        ("</div>", "<div>"),
        ("<br/>", "<br>"),
        ("clic: javascript:alert(1)", "javascript:"),
        ("VBScript:msgbox", "vbscript:"),
        ("data:text/html;base64,PHNjcmlwdD4=", "data:text/html"),
        ('texto " onmouseover="alert(1)', "onmouseover="),
        ("<!-- oculto -->", "<!--"),
        ("<xss contenteditable onbeforeinput=alert(1)>x</xss>", "<xss contenteditable onbeforeinput>"),
        ("<x onwebkitanimationend=alert(1) style=animation-name:y>", "<x onwebkitanimationend style>"),
        ("<custom-el>hola</custom-el>", "<custom-el>"),
        ('<y title="z">', "<y title>"),
    ],
)
def test_html_and_script_are_refused_naming_what_was_found(raw: str, found: str) -> None:
    with pytest.raises(ContentError) as err:
        clean(raw)
    assert err.value.code == "html_not_allowed"
    assert f"(found {found})" in err.value.message


@pytest.mark.parametrize(
    "raw",
    [
        "a < b and b > c",
        "te quiero <3",
        "x<y and y>z",
        "precio <10 USD> oferta",
        "online = true",
        "visita https://example.com/?a=1&b=2",
        "email: ana@example.com",
    ],
)
def test_plain_text_with_angle_brackets_and_links_passes(raw: str) -> None:
    assert clean(raw) == raw


def test_render_replaces_the_name_placeholder_with_spaces_allowed() -> None:
    assert render("Hola {{name}}, {{ name }} y {{  name\t}}!", "Ana") == "Hola Ana, Ana y Ana!"
    assert render("Hola {{name}}", None) == "Hola "
    assert render("{{nombre}} {{ Name }} {name}", "Ana") == "{{nombre}} {{ Name }} {name}"
    # The name is inserted literally, even if it looks like a pattern.
    assert render("Hola {{name}}", r"\1 $0 {{name}}") == r"Hola \1 $0 {{name}}"


def _facts(**overrides: object) -> SpamFacts:
    base: dict[str, object] = {"duplicate_recent": False, "deliveries_last_24h": 0, "recipients": 10, "daily_cap": 1000}
    base.update(overrides)
    return SpamFacts(**base)  # type: ignore[arg-type]


def test_an_ordinary_message_breaks_no_rule() -> None:
    assert spam_rules("Hola {{name}}, la reunión es mañana a las 10. https://example.com", _facts()) == []


def test_each_spam_rule_has_its_stable_name() -> None:
    assert spam_rules("hola", _facts(duplicate_recent=True)) == ["duplicate_recent"]
    links = "a https://a.example b http://b.example c www.c.example d https://d.example"
    assert spam_rules(links, _facts()) == ["too_many_links"]
    assert spam_rules("https://a.example http://b.example www.c.example", _facts()) == []
    assert spam_rules("COMPRA AHORA ESTA OFERTA INCREIBLE YA", _facts()) == ["shouting"]
    assert spam_rules("OK SI", _facts()) == []  # too few letters to judge
    assert spam_rules("hola", _facts(deliveries_last_24h=995, recipients=6)) == ["daily_cap"]
    assert spam_rules("hola", _facts(deliveries_last_24h=995, recipients=5)) == []
    assert set(content.RULE_MESSAGES) == set(content.RULES)


def test_shouting_is_measured_among_letters_only() -> None:
    # 21 letters, 15 uppercase (71 %): shouting; digits and punctuation do not count.
    assert content.is_shouting("ABCDEFGHIJKLMNO abcdef 1234567890!!!")
    # 20 letters, 14 uppercase (70 %): not more than 70 %.
    assert not content.is_shouting("ABCDEFGHIJKLMN abcdef")
