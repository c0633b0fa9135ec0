"""Shared request dependencies: the app's resources and (later) who is calling."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fastapi import Request

from whatsched.bridge_client import BridgeClient
from whatsched.config import Settings


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    bridge: BridgeClient


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res
