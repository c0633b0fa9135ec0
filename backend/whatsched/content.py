"""Message content: cleaning, HTML refusal, per-recipient rendering and the spam guard.

Everything here is pure (no I/O), so the API and the dispatcher share one definition.

Cleaning (`clean`), applied on create and update:
  - line breaks are normalised to ``\\n`` and Unicode to NFC;
  - control characters are removed, except ``\\n`` and ``\\t``;
  - leading and trailing whitespace is trimmed;
  - the result must be 1 to 4096 characters (`content_empty`, `content_too_long`);
  - HTML or script is refused (`html_not_allowed`), naming what was found: an HTML tag
    (``<script>``, ``<b>``, ``<a href>``), a custom element (``<my-widget>``), any tag with an
    attribute value (``<x onbeforeinput=...>``), a comment or doctype, a ``javascript:``/``vbscript:``/
    ``data:text/html`` URL, or an event handler attribute (``onclick=``).

Rendering (`render`): ``{{name}}`` (spaces allowed inside the braces: ``{{ name }}``) becomes the
recipient's name; nothing else changes. A missing name renders as an empty string.

Spam guard (`spam_rules`): a message is `suspected` when any rule fires; each rule has a stable
name the API reports:
  - ``duplicate_recent``: the same user has identical content scheduled or sent to any of the
    same groups, with a send time within 24 hours of this one's;
  - ``too_many_links``: more than 3 URLs;
  - ``shouting``: more than 70 % of the letters are uppercase, among at least 20 letters;
  - ``daily_cap``: the user's deliveries in the last 24 hours plus this message's recipients
    exceed SEND_DAILY_CAP.
The two rules that need the database take their facts as arguments (`SpamFacts`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_LENGTH = 4096

RULES = ("duplicate_recent", "too_many_links", "shouting", "daily_cap")
MAX_LINKS = 3
SHOUTING_RATIO = 0.70
SHOUTING_MIN_LETTERS = 20


class ContentError(ValueError):
    """Content the API refuses; `code` is the stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# HTML and SVG elements a renderer would act on; `<y and z>` in prose is not one of them.
_HTML_TAGS = frozenset(
    """a abbr address area article aside audio b base bdi bdo blockquote body br button canvas caption
    cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption
    figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins
    kbd label legend li link main map mark marquee menu meta meter nav noscript object ol optgroup option
    output p param picture pre progress q s samp script section select slot small source span strike
    strong style sub summary sup svg table tbody td template textarea tfoot th thead time title tr track
    u ul var video wbr math animate foreignobject image use xmp plaintext listing base applet""".split()
)
# As browsers read a tag: the name right after `<` or `</` (so "a < b > c" is prose).
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9:-]*)((?:\s+[^<>]*?)?)\s*/?\s*>", re.DOTALL)
_ATTR = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?""")
_MARKUP = re.compile(r"<!--|<!\[CDATA\[|<!doctype|<\?xml", re.IGNORECASE)
_SCRIPT_URL = re.compile(r"\b(javascript|vbscript)\s*:|\bdata\s*:\s*text/html", re.IGNORECASE)
_EVENT_HANDLER = re.compile(
    r"(?<![\w-])(on(?:click|dblclick|auxclick|contextmenu|mouse\w+|pointer\w+|touch\w+|key\w+|load\w*|unload"
    r"|beforeunload|error|focus\w*|blur|change|input|invalid|submit|reset|select\w*|abort|drag\w*|drop|scroll\w*"
    r"|resize|wheel|copy|cut|paste|animation\w+|transition\w+|toggle|show|play\w*|pause|ended|message\w*"
    r"|hashchange|popstate|storage|beforeprint|afterprint|search|begin|end|repeat|online|offline|pageshow|pagehide"
    r"|canplay\w*|durationchange|emptied|seek\w+|stalled|suspend|timeupdate|volumechange|waiting|progress|ratechange"
    r"|securitypolicyviolation|formdata|cancel|close|slotchange))\s*=",
    re.IGNORECASE,
)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{\{\s*name\s*\}\}")
_KEEP = frozenset("\n\t")


def find_html(text: str) -> str | None:
    """What HTML or script the text holds, as the API names it (None when there is none)."""
    for match in _TAG.finditer(text):
        tag = match.group(1).lower()
        raw_attrs = match.group(2) or ""
        # A known element; a custom element (a name with a hyphen, which browsers render); or any
        # tag carrying an attribute with a value (an unknown <x onanything=...> still runs it).
        if tag in _HTML_TAGS or "-" in tag or "=" in raw_attrs:
            attrs = [a.lower() for a in _ATTR.findall(raw_attrs)]
            return "<" + " ".join([tag, *attrs]) + ">"
    markup = _MARKUP.search(text)
    if markup:
        return markup.group(0).lower()
    url = _SCRIPT_URL.search(text)
    if url:
        scheme = url.group(1)
        return (scheme.lower() + ":") if scheme else "data:text/html"
    handler = _EVENT_HANDLER.search(text)
    if handler:
        return handler.group(1).lower() + "="
    return None


def clean(raw: str) -> str:
    """The content as stored and sent, or ContentError saying why it is refused."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    # Cc are control characters; Cs lone surrogates, which no database encoding accepts.
    text = "".join(ch for ch in text if ch in _KEEP or unicodedata.category(ch) not in ("Cc", "Cs"))
    text = text.strip()
    if not text:
        raise ContentError("content_empty", "The message content is empty.")
    if len(text) > MAX_LENGTH:
        raise ContentError(
            "content_too_long", f"The message content is {len(text)} characters long; at most {MAX_LENGTH} are allowed."
        )
    found = find_html(text)
    if found:
        raise ContentError("html_not_allowed", f"HTML and scripts are not allowed in messages (found {found}).")
    return text


def render(content: str, contact_name: str | None) -> str:
    """The text one recipient receives: every ``{{name}}`` replaced by their name."""
    name = contact_name or ""
    return _PLACEHOLDER.sub(lambda _: name, content)


def count_links(text: str) -> int:
    return len(_URL.findall(text))


def is_shouting(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha() and (ch.isupper() or ch.islower())]
    if len(letters) < SHOUTING_MIN_LETTERS:
        return False
    upper = sum(1 for ch in letters if ch.isupper())
    return upper / len(letters) > SHOUTING_RATIO


@dataclass(frozen=True)
class SpamFacts:
    """What the database knows: a recent identical message, and the user's volume."""

    duplicate_recent: bool
    deliveries_last_24h: int
    recipients: int
    daily_cap: int


def spam_rules(content: str, facts: SpamFacts) -> list[str]:
    """The names of the rules the message breaks, in RULES order (empty: it looks fine)."""
    fired: list[str] = []
    if facts.duplicate_recent:
        fired.append("duplicate_recent")
    if count_links(content) > MAX_LINKS:
        fired.append("too_many_links")
    if is_shouting(content):
        fired.append("shouting")
    if facts.deliveries_last_24h + facts.recipients > facts.daily_cap:
        fired.append("daily_cap")
    return fired


RULE_MESSAGES = {
    "duplicate_recent": "identical content was scheduled or sent to one of these groups within 24 hours",
    "too_many_links": f"more than {MAX_LINKS} links",
    "shouting": f"more than {int(SHOUTING_RATIO * 100)} % of the letters are uppercase",
    "daily_cap": "this message would exceed your daily sending cap",
}
