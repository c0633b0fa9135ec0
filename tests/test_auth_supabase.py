"""The Supabase provider against a fake Supabase Auth that answers with GoTrue's recorded shapes.

The fake checks the requests the official client makes (paths, grant types, apikey, bodies) and
signs access tokens with its own ES256 key, published at /auth/v1/.well-known/jwks.json, so the
API's verifier goes through the real JWKS path.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from whatsched.api.app import create_app
from whatsched.config import Settings
from whatsched.db.embedded import free_port

RECORDED = Path(__file__).parent / "fixtures" / "gotrue"
ANON_KEY = "anon-key-for-tests"
PASSWORD = "right password"


def _recorded(name: str, **values: Any) -> Any:
    text = (RECORDED / f"{name}.json").read_text()
    for key, value in values.items():
        text = text.replace('"{{' + key + '}}"', json.dumps(value)).replace("{{" + key + "}}", str(value))
    return json.loads(text)


@dataclass
class FakeGoTrue:
    """Only what whatsched uses of Supabase Auth."""

    url: str
    key: ec.EllipticCurvePrivateKey
    kid: str
    user_id: str
    email: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    used_refresh: set[str] = field(default_factory=set)
    expired_refresh: set[str] = field(default_factory=set)
    jwks_fetches: int = 0

    def access_token(self, lifetime: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url + "/auth/v1",
            "aud": "authenticated",
            "exp": now + lifetime,
            "iat": now,
            "sub": self.user_id,
            "email": self.email,
            "phone": "",
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": str(uuid.uuid4()),
            "is_anonymous": False,
            "app_metadata": {"provider": "email"},
            "user_metadata": {},
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})

    def session(self) -> dict[str, Any]:
        token = self.access_token()
        return _recorded(
            "session",
            access_token=token,
            expires_at=int(time.time()) + 3600,
            refresh_token=uuid.uuid4().hex[:12],
            user_id=self.user_id,
            email=self.email,
        )

    async def token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(
            {"path": request.path, "query": dict(request.query), "body": body, "apikey": request.headers.get("apikey")}
        )
        api_version = {"X-Supabase-Api-Version": "2024-01-01"}
        if request.query.get("grant_type") == "password":
            if body.get("email") == self.email and body.get("password") == PASSWORD:
                return web.json_response(self.session(), headers=api_version)
            return web.json_response(_recorded("invalid_credentials"), status=400, headers=api_version)
        if request.query.get("grant_type") == "refresh_token":
            presented = body.get("refresh_token")
            if presented in self.expired_refresh:
                return web.json_response(_recorded("session_expired"), status=403, headers=api_version)
            if presented in self.used_refresh:
                return web.json_response(_recorded("refresh_token_already_used"), status=400)
            self.used_refresh.add(presented)
            return web.json_response(self.session(), headers=api_version)
        return web.json_response({"code": "validation_failed", "message": "bad grant"}, status=400)

    async def logout(self, request: web.Request) -> web.Response:
        self.requests.append(
            {"path": request.path, "query": dict(request.query), "authorization": request.headers.get("Authorization")}
        )
        return web.Response(status=204)

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        return web.json_response({"keys": [jwk]})


@pytest.fixture(scope="module")
async def gotrue(admin_module: asyncpg.Connection) -> AsyncIterator[FakeGoTrue]:
    user_id = str(uuid.uuid4())
    email = f"supa-{user_id[:8]}@example.com"
    # The user exists in auth.users as Supabase would have it, so the profile trigger ran.
    await admin_module.execute(
        "insert into auth.users (id, aud, role, email, created_at) values ($1, 'authenticated', 'authenticated', $2,"
        " now())",
        uuid.UUID(user_id),
        email,
    )
    port = free_port()
    fake = FakeGoTrue(
        f"http://127.0.0.1:{port}", ec.generate_private_key(ec.SECP256R1()), "supabase-kid-1", user_id, email
    )
    app = web.Application()
    app.router.add_post("/auth/v1/token", fake.token)
    app.router.add_post("/auth/v1/logout", fake.logout)
    app.router.add_get("/auth/v1/.well-known/jwks.json", fake.jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake
    await runner.cleanup()


@pytest.fixture(scope="module")
async def admin_module(prepared: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(prepared.admin_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def supa_app(settings: Settings, gotrue: FakeGoTrue) -> AsyncIterator[FastAPI]:
    configured = settings.model_copy(
        update={"auth_provider": "supabase", "supabase_url": gotrue.url, "supabase_anon_key": ANON_KEY}
    )
    application = create_app(configured)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def supa(supa_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=supa_app, client=(f"10.9.{uuid.uuid4().int % 250}.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_login_goes_through_the_client_library_and_returns_the_session(
    supa: httpx.AsyncClient, gotrue: FakeGoTrue
) -> None:
    resp = await supa.post("/api/auth/login", json={"email": gotrue.email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["user"]["id"] == gotrue.user_id and body["user"]["email"] == gotrue.email
    sent = gotrue.requests[-1]
    assert sent["path"] == "/auth/v1/token" and sent["query"] == {"grant_type": "password"}
    assert sent["body"]["email"] == gotrue.email and sent["body"]["password"] == PASSWORD
    assert sent["apikey"] == ANON_KEY
    # The access token Supabase issued is verified through the project's JWKS.
    me = await supa.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == gotrue.user_id and me.json()["profile"]["role"] == "user"


async def test_wrong_password_is_the_generic_401(supa: httpx.AsyncClient, gotrue: FakeGoTrue) -> None:
    resp = await supa.post("/api/auth/login", json={"email": gotrue.email, "password": "nope"})
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_credentials"


async def test_refresh_rotation_reuse_and_expired_session(supa: httpx.AsyncClient, gotrue: FakeGoTrue) -> None:
    first = await supa.post("/api/auth/refresh", json={"refresh_token": "tok-a"})
    assert first.status_code == 200 and first.json()["refresh_token"] != "tok-a"
    assert gotrue.requests[-1]["query"] == {"grant_type": "refresh_token"}
    reused = await supa.post("/api/auth/refresh", json={"refresh_token": "tok-a"})
    assert reused.status_code == 401 and reused.json()["code"] == "refresh_token_reused"
    gotrue.expired_refresh.add("tok-old")
    expired = await supa.post("/api/auth/refresh", json={"refresh_token": "tok-old"})
    assert expired.status_code == 401 and expired.json()["code"] == "session_expired"


async def test_logout_revokes_the_session_at_supabase(supa: httpx.AsyncClient, gotrue: FakeGoTrue) -> None:
    token = gotrue.access_token()
    resp = await supa.post("/api/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 204
    sent = gotrue.requests[-1]
    assert sent["path"] == "/auth/v1/logout" and sent["authorization"] == f"Bearer {token}"


async def test_unknown_kid_refetches_the_jwks_once_then_refuses(supa: httpx.AsyncClient, gotrue: FakeGoTrue) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    forged = jwt.encode(
        {
            "sub": gotrue.user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": now + 60,
            "iss": gotrue.url + "/auth/v1",
        },
        other,
        algorithm="ES256",
        headers={"kid": "rotated-kid"},
    )
    resp = await supa.get("/api/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401
    assert gotrue.jwks_fetches >= 1


async def test_a_local_token_is_not_accepted_by_a_supabase_deployment(supa: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    resp = await supa.get("/api/auth/me", headers=user.headers)
    assert resp.status_code == 401
