"""The cross-language contracts in contracts/ at the repository root: where they are, and the values
of contracts/limits.json (the E.164 pattern, the longest WhatsApp message id, the bridge's
connection states and a number's states), which the database, the backend and the bridge check
alike. The backend takes these values from here, never from its own copy; tests/test_contracts.py
holds the schema and the Python types to them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def contract_path(name: str) -> Path:
    """contracts/<name> at the repository root, found by walking up from the package (installed
    editable from the checkout, or into a virtualenv inside it)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "contracts" / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"contracts/{name} not found above {here}")


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(contract_path(name).read_text(encoding="utf-8"))
    return loaded


LIMITS: dict[str, Any] = _load("limits.json")
E164_PATTERN: str = LIMITS["e164_pattern"]
WHATSAPP_MESSAGE_ID_MAX_CHARS: int = LIMITS["whatsapp_message_id_max_chars"]
CONNECTION_STATES: tuple[str, ...] = tuple(LIMITS["connection_states"])
NUMBER_STATES: tuple[str, ...] = tuple(LIMITS["number_states"])
