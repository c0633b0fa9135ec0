"""Cleaning of the names and descriptions people type: pure functions, no I/O."""

from __future__ import annotations

import unicodedata

_LINE_SPACE = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x1f\x85")
# Bidirectional overrides and isolates can make a name display as something it is not.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_KEEP_IN_TEXT = frozenset("\n\t")


def clean_name(raw: str, limit: int) -> str:
    """NFC, control characters removed (line breaks and tabs become spaces), runs of spaces
    collapsed, trimmed; ValueError unless 1..limit characters remain."""
    text = unicodedata.normalize("NFC", raw)
    text = "".join(
        " " if ch in _LINE_SPACE else ch
        for ch in text
        if ch in _LINE_SPACE or (unicodedata.category(ch) not in ("Cc", "Cs") and ch not in _BIDI)
    )
    text = " ".join(text.split())
    if not text:
        raise ValueError("must not be empty")
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters (it has {len(text)})")
    return text


def clean_text(raw: str, limit: int) -> str:
    """Free text (a description): line breaks kept, other control characters removed, trimmed."""
    text = unicodedata.normalize("NFC", raw.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(
        ch for ch in text if ch in _KEEP_IN_TEXT or (unicodedata.category(ch) not in ("Cc", "Cs") and ch not in _BIDI)
    )
    text = text.strip()
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters (it has {len(text)})")
    return text
