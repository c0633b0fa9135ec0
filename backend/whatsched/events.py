"""The event catalog (contracts/events.json at the repository root): the events a user receives, on
the socket and on Supabase Realtime alike, each with its name, version, topic and JSON Schema.

The runtime takes only names from it (realtime.protocol, imports.progress); `validate` is for tests
and debugging, never on a hot path. clients/js/scripts/generate.mjs makes the TypeScript types and
docs/events.md from the same file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whatsched.contracts import contract_path

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator


def catalog_path() -> Path:
    """contracts/events.json at the repository root."""
    return contract_path("events.json")


def _load() -> dict[str, Any]:
    catalog: dict[str, Any] = json.loads(catalog_path().read_text(encoding="utf-8"))
    return catalog


CATALOG: dict[str, Any] = _load()
EVENTS: dict[str, dict[str, Any]] = CATALOG["events"]
NAMES: tuple[str, ...] = tuple(EVENTS)


class EventError(ValueError):
    """An event that does not match its catalog entry; names the type and the failing path."""

    def __init__(self, event_type: str, path: str, reason: str) -> None:
        super().__init__(f"{event_type} event at {path}: {reason}")
        self.event_type = event_type
        self.path = path
        self.reason = reason


def named(name: str) -> str:
    """`name`, which must be in the catalog: modules name events through this, so an event renamed
    or removed in the catalog fails at import, not in a user's socket."""
    if name not in EVENTS:
        raise LookupError(f"{name!r} is not an event in {catalog_path()}")
    return name


def schema(name: str) -> dict[str, Any]:
    """The event's JSON Schema, standalone (the catalog's shared `$defs` attached)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **EVENTS[named(name)]["schema"],
        "$defs": CATALOG.get("$defs", {}),
    }


@cache
def _validator(name: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # here: the API's processes only need the names

    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(event: Mapping[str, Any]) -> None:
    """Raise EventError unless `event` is a catalog event of its `type` (the most relevant error,
    with its path: `$.notification.timestamp`)."""
    kind = event.get("type") if isinstance(event, Mapping) else None
    if not isinstance(kind, str) or kind not in EVENTS:
        raise EventError(str(kind), "$.type", f"not an event type of the catalog ({', '.join(NAMES)})")
    from jsonschema.exceptions import best_match

    error = best_match(_validator(kind).iter_errors(dict(event)))
    if error is not None:
        raise EventError(kind, error.json_path, error.message)
