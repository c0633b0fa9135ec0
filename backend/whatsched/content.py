"""Per-recipient rendering of a message's content: the one content rule that runs in Python.

Cleaning, HTML refusal and the spam guard are rules a supabase-js caller can reach, so Postgres
owns them (supabase/migrations/20261129000400_content_rules.sql). Rendering happens only when the
worker sends (and in the API's preview): ``{{name}}`` (spaces allowed inside the braces:
``{{ name }}``) becomes the recipient's name; nothing else changes. A missing name renders as an
empty string.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{\{\s*name\s*\}\}")


def render(content: str, contact_name: str | None) -> str:
    """The text one recipient receives: every ``{{name}}`` replaced by their name."""
    name = contact_name or ""
    return _PLACEHOLDER.sub(lambda _: name, content)
