"""One settings object: whatsched.config.Settings with its `realtime` and `dispatch` sections, read
from the environment names the README and .env.example document, and .env.example lists exactly
the variables the model reads (plus those only the bridge reads)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from whatsched.config import DispatchSettings, RealtimeSettings, Settings

REPO = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = REPO / ".env.example"
BRIDGE_CONFIG = REPO / "bridge" / "src" / "config.js"


def model_names() -> set[str]:
    names = {name.upper() for name in Settings.model_fields if name not in ("realtime", "dispatch")}
    names |= {name.upper() for name in RealtimeSettings.model_fields}
    for name, field in DispatchSettings.model_fields.items():
        alias = field.validation_alias
        env = getattr(alias, "choices", [None])[0] if alias is not None else None
        names.add(str(env) if isinstance(env, str) else "DISPATCH_" + name.upper())
    return names


def example_names() -> set[str]:
    pattern = re.compile(r"^([A-Z][A-Z0-9_]*)=", re.M)
    return set(pattern.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))


def bridge_names() -> set[str]:
    """Variables the bridge reads itself (its own config.js)."""
    return set(re.findall(r"env\.([A-Z][A-Z0-9_]*)", BRIDGE_CONFIG.read_text(encoding="utf-8")))


def test_env_example_lists_every_variable_the_settings_read_and_nothing_else() -> None:
    missing = model_names() - example_names()
    unknown = example_names() - model_names() - bridge_names()
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert not unknown, f".env.example lists variables no setting reads: {sorted(unknown)}"


def test_sections_read_their_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_SEND_QUEUE", "64")
    monkeypatch.setenv("DISPATCH_LANES", "3")
    monkeypatch.setenv("SEND_WARMUP_DAYS", "7")
    monkeypatch.setenv("SEND_DAILY_CAP", "12")
    monkeypatch.setenv("NUMBER_MEMORY_CAP_MB", "800")
    monkeypatch.setenv("NUMBER_MAX_RESTARTS_PER_HOUR", "5")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.realtime.ws_send_queue == 64
    assert (settings.dispatch.lanes, settings.dispatch.warmup_days) == (3, 7)
    assert (settings.dispatch.memory_cap_mb, settings.dispatch.max_restarts_per_hour) == (800, 5)
    assert settings.send_daily_cap == 12
