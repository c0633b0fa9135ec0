"""The bridge's protocol values, named once on each side, agree: the error codes the Python client
knows are exactly the bridge's (bridge/src/constants.js), and the codes it treats as permanent are
among them; the limits both take from contracts/limits.json are the file's as the bridge loads it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from whatsched import contracts
from whatsched.bridge_client import ERROR_CODES, PERMANENT_CODES, BridgeError

BRIDGE = Path(__file__).resolve().parents[1] / "bridge"


def bridge_constants() -> dict[str, object]:
    """constants.js as the bridge itself loads it (node), not parsed by hand."""
    script = (
        "import('./src/constants.js').then(c => process.stdout.write(JSON.stringify("
        "{errors: c.ERRORS, events: c.EVENT_TYPES, status: c.STATUS, e164: c.E164_PATTERN.source,"
        " message_id_max: c.MAX_MESSAGE_ID_CHARS})))"
    )
    out = subprocess.run(["node", "-e", script], cwd=BRIDGE, capture_output=True, text=True, check=True, timeout=30)
    loaded: dict[str, object] = json.loads(out.stdout)
    return loaded


def test_the_python_client_knows_exactly_the_bridges_error_codes() -> None:
    errors = bridge_constants()["errors"]
    assert isinstance(errors, dict)
    assert set(errors) == set(ERROR_CODES)
    assert PERMANENT_CODES <= ERROR_CODES
    assert all(errors[code] in (400, 413, 422) for code in PERMANENT_CODES)  # client errors only


def test_transient_means_not_permanent() -> None:
    assert not BridgeError("not_registered", "x").transient
    assert BridgeError("not_connected", "x").transient


def test_the_api_understands_every_event_the_bridge_sends() -> None:
    from whatsched.api.routes.bridge_events import KNOWN

    events = bridge_constants()["events"]
    assert isinstance(events, dict)
    assert set(events.values()) == set(KNOWN)


def test_the_bridge_takes_its_limits_and_statuses_from_the_contract() -> None:
    loaded = bridge_constants()
    assert loaded["e164"] == contracts.E164_PATTERN
    assert loaded["message_id_max"] == contracts.WHATSAPP_MESSAGE_ID_MAX_CHARS
    status = loaded["status"]
    assert isinstance(status, dict)
    assert list(status.values()) == list(contracts.CONNECTION_STATES)
    # The names the bridge's code uses (STATUS.STOPPED, ...) exist.
    assert {"CONNECTED", "DISCONNECTED", "QR_NEEDED", "INITIALIZING", "STOPPED"} <= set(status)
