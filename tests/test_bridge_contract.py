"""The bridge's protocol values, named once on each side, agree: the error codes the Python client
knows are exactly the bridge's (bridge/src/constants.js), and the codes it treats as permanent are
among them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from whatsched.bridge_client import ERROR_CODES, PERMANENT_CODES, BridgeError

BRIDGE = Path(__file__).resolve().parents[1] / "bridge"


def bridge_constants() -> dict[str, object]:
    """constants.js as the bridge itself loads it (node), not parsed by hand."""
    script = (
        "import('./src/constants.js').then(c => process.stdout.write(JSON.stringify("
        "{errors: c.ERRORS, events: c.EVENT_TYPES})))"
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
