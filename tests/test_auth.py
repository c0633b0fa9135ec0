"""Authentication: login, refresh rotation and reuse, logout, me, tampered tokens, login limits."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from whatsched.api.deps import Resources
from whatsched.auth.tokens import issue_access_token


async def _login(client: httpx.AsyncClient, email: str, password: str, ip: str = "10.0.0.1") -> httpx.Response:
    # Each test uses its own forwarded IP only where proxies are trusted; here the limit key is the peer.
    return await client.post("/api/auth/login", json={"email": email, "password": password})


def _client_from(app: Any, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_login_returns_a_supabase_shaped_session(app: Any, make_user: Any, admin: Any) -> None:
    user = await make_user()
    async with _client_from(app, "10.1.0.1") as client:
        resp = await _login(client, user.email, user.password)
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) >= {"access_token", "token_type", "expires_in", "expires_at", "refresh_token", "user"}
    assert body["token_type"] == "bearer"
    assert body["user"]["id"] == user.id and body["user"]["email"] == user.email
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    for claim in (
        "iss",
        "aud",
        "exp",
        "iat",
        "sub",
        "role",
        "aal",
        "session_id",
        "email",
        "phone",
        "app_metadata",
        "user_metadata",
        "amr",
        "is_anonymous",
    ):
        assert claim in claims, claim
    assert claims["aud"] == "authenticated" and claims["role"] == "authenticated" and claims["sub"] == user.id
    assert body["expires_at"] - body["expires_in"] == pytest.approx(time.time(), abs=10)
    logged = await admin.fetchval(
        "select count(*) from audit_log where action = 'login_success' and actor_id = $1::uuid", user.id
    )
    assert logged == 1


async def test_wrong_password_and_unknown_email_get_the_same_401(app: Any, make_user: Any) -> None:
    user = await make_user()
    async with _client_from(app, "10.1.0.2") as client:
        wrong = await _login(client, user.email, "not the password")
        unknown = await _login(client, "nobody-" + uuid.uuid4().hex + "@example.com", "whatever")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "invalid_credentials"


async def test_sixth_login_in_fifteen_minutes_is_limited_even_with_the_right_password(app: Any, make_user: Any) -> None:
    user = await make_user()
    async with _client_from(app, "10.1.0.3") as client:
        for _ in range(5):
            assert (await _login(client, user.email, "wrong password")).status_code == 401
        sixth = await _login(client, user.email, user.password)
    assert sixth.status_code == 429
    assert sixth.json()["code"] == "rate_limited"
    assert int(sixth.headers["Retry-After"]) > 0
    assert sixth.headers["X-RateLimit-Limit"] == "5"
    async with _client_from(app, "10.1.0.4") as other_ip:
        assert (await _login(other_ip, user.email, user.password)).status_code == 200


async def test_successful_logins_use_none_of_the_budget_an_office_can_log_in_at_nine(app: Any, make_user: Any) -> None:
    staff = [await make_user() for _ in range(10)]
    async with _client_from(app, "10.1.0.9") as office:
        answers = [await _login(office, u.email, u.password) for u in staff]
        assert [r.status_code for r in answers] == [200] * 10
        assert {r.headers["X-RateLimit-Remaining"] for r in answers} == {"5"}
        # Failures still count, and the budget they spend is what is left for everyone behind the address.
        wrong = [await _login(office, staff[0].email, "wrong password") for _ in range(5)]
        assert [r.headers["X-RateLimit-Remaining"] for r in wrong] == ["4", "3", "2", "1", "0"]
        assert (await _login(office, staff[1].email, staff[1].password)).status_code == 429


async def test_refresh_rotates_and_reuse_revokes_the_session(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    first = await client.post("/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert first.status_code == 200
    rotated = first.json()["refresh_token"]
    assert rotated != user.refresh_token
    reused = await client.post("/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reused.status_code == 401 and reused.json()["code"] == "refresh_token_reused"
    # The whole session is gone: the newer token no longer works either.
    after = await client.post("/api/auth/refresh", json={"refresh_token": rotated})
    assert after.status_code == 401


async def test_logout_then_refresh_fails(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    out = await client.post("/api/auth/logout", headers=user.headers)
    assert out.status_code == 204
    again = await client.post("/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert again.status_code == 401


async def test_me_returns_the_user_with_profile(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user(admin=True)
    resp = await client.get("/api/auth/me", headers=user.headers)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "private, max-age=300"
    body = resp.json()
    assert body["id"] == user.id
    assert body["profile"] == {
        "display_name": user.email.split("@")[0],
        "role": "admin",
        "timezone": "UTC",
        "default_country": "CL",
    }


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _good_claims(user_id: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": user_id,
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 600,
        "iss": "http://127.0.0.1:8000/auth/v1",
    }


def _tampered_tokens(res: Resources, user_id: str) -> dict[str, str]:
    key = res.local_key
    assert key is not None
    claims = _good_claims(user_id)
    other = ec.generate_private_key(ec.SECP256R1())
    public_pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    valid = jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid})
    head, _payload, sig = valid.split(".")
    return {
        "alg_none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + ".",
        "wrong_key": jwt.encode(claims, other, algorithm="ES256", headers={"kid": key.kid}),
        # HS256 signed with the public key as the secret (algorithm confusion).
        "hs256_with_public_key": _hs256_raw(claims, public_pem, key.kid),
        "expired": jwt.encode(
            {**claims, "iat": claims["iat"] - 7200, "exp": claims["iat"] - 3600},
            key.private,
            algorithm="ES256",
            headers={"kid": key.kid},
        ),
        "wrong_aud": jwt.encode({**claims, "aud": "anon"}, key.private, algorithm="ES256", headers={"kid": key.kid}),
        "unknown_kid": jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": "not-a-known-kid"}),
        "missing_sub": jwt.encode(
            {k: v for k, v in claims.items() if k != "sub"}, key.private, algorithm="ES256", headers={"kid": key.kid}
        ),
        "payload_swapped": head + "." + _b64({**claims, "sub": str(uuid.uuid4())}) + "." + sig,
        "garbage": "not.a.token",
    }


def _hs256_raw(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    import hashlib
    import hmac

    signing_input = _b64({"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + _b64(claims)
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


TAMPERED = [
    "alg_none",
    "wrong_key",
    "hs256_with_public_key",
    "expired",
    "wrong_aud",
    "unknown_kid",
    "missing_sub",
    "payload_swapped",
    "garbage",
]


@pytest.mark.parametrize("kind", TAMPERED)
async def test_tampered_tokens_are_refused(
    kind: str, client: httpx.AsyncClient, res: Resources, make_user: Any
) -> None:
    user = await make_user()
    token = _tampered_tokens(res, user.id)[kind]
    resp = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert resp.json()["code"] == "invalid_token"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_a_correctly_signed_token_is_accepted(client: httpx.AsyncClient, res: Resources, make_user: Any) -> None:
    user = await make_user()
    key = res.local_key
    assert key is not None
    token, _ = issue_access_token(
        key,
        issuer=res.settings.effective_public_url + "/auth/v1",
        user={"id": user.id, "email": user.email},
        session_id=str(uuid.uuid4()),
        lifetime_s=60,
    )
    assert (await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_no_token_is_401(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/auth/me")
    assert resp.status_code == 401 and resp.json()["code"] == "unauthenticated"


async def test_jwks_publishes_the_local_public_key(client: httpx.AsyncClient, res: Resources) -> None:
    body = (await client.get("/auth/v1/.well-known/jwks.json")).json()
    assert res.local_key is not None
    assert [k["kid"] for k in body["keys"]] == [res.local_key.kid]
    assert "d" not in body["keys"][0]
