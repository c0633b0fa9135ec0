"""Access tokens: issued by the local provider with GoTrue's claims; verified the same way for
every provider. The verified claims are what the API hands to Postgres as request.jwt.claims."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import jwt
from jwt import PyJWK

from whatsched.auth.keys import SigningKey

AUDIENCE = "authenticated"
ASYMMETRIC = ("ES256", "RS256")
CACHE_S = 60.0
CACHE_MAX = 10_000


class InvalidToken(Exception):
    """The token is not acceptable; the message says why (for logs, never for the client)."""


def issue_access_token(
    key: SigningKey,
    *,
    issuer: str,
    user: Mapping[str, Any],
    session_id: str,
    lifetime_s: int,
    now: int | None = None,
) -> tuple[str, int]:
    """Returns (token, expires_at). Claims as GoTrue writes them."""
    iat = now if now is not None else int(time.time())
    exp = iat + lifetime_s
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "exp": exp,
        "iat": iat,
        "sub": str(user["id"]),
        "email": user.get("email") or "",
        "phone": user.get("phone") or "",
        "app_metadata": user.get("raw_app_meta_data") or {"provider": "email", "providers": ["email"]},
        "user_metadata": user.get("raw_user_meta_data") or {},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": iat}],
        "session_id": session_id,
        "is_anonymous": bool(user.get("is_anonymous", False)),
    }
    token = jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})
    return token, exp


class Verifier:
    """Verifies access tokens against known keys: the local key, a Supabase project's JWKS
    (cached, refetched once on an unknown kid), and/or a legacy HS256 secret."""

    def __init__(
        self,
        *,
        local_key: SigningKey | None = None,
        hs256_secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._keys: dict[str, tuple[str, Any]] = {}
        if local_key is not None and local_key.algorithm == "ES256":
            self._keys[local_key.kid] = ("ES256", local_key.public)
        self._secret = hs256_secret.encode() if hs256_secret else None
        if local_key is not None and local_key.algorithm == "HS256":
            self._secret = local_key.private
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._last_fetch = 0.0
        # token -> (claims, monotonic time until which they are trusted without re-checking)
        self._verified: dict[str, tuple[dict[str, Any], float]] = {}

    async def _refresh_jwks(self) -> None:
        if not self._jwks_url or time.monotonic() - self._last_fetch < 30:
            return  # at most one refetch per 30 s, so unknown kids cannot hammer the JWKS endpoint
        self._last_fetch = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(self._jwks_url) as resp,
            ):
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        for jwk in body.get("keys", []):
            try:
                parsed = PyJWK.from_dict(jwk)
            except jwt.PyJWTError:
                continue
            if jwk.get("kid") and parsed.algorithm_name in ASYMMETRIC:
                self._keys[jwk["kid"]] = (parsed.algorithm_name, parsed.key)

    async def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token. A verified token is remembered for at most CACHE_S and never
        past its own expiry: checking an ES256 signature is the most expensive step of a read."""
        now = time.monotonic()
        hit = self._verified.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        claims = await self._verify(token)
        if len(self._verified) >= CACHE_MAX:
            self._verified.clear()
        remaining = float(claims["exp"]) - time.time()
        self._verified[token] = (claims, now + min(CACHE_S, max(remaining, 0.0)))
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        if alg in ASYMMETRIC:
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise InvalidToken("asymmetric token without kid")
            if kid not in self._keys:
                await self._refresh_jwks()
            if kid not in self._keys:
                raise InvalidToken("unknown kid")
            expected_alg, key = self._keys[kid]
            if alg != expected_alg:
                raise InvalidToken("algorithm does not match the key")
        elif alg == "HS256":
            if self._secret is None:
                raise InvalidToken("HS256 tokens are not accepted here")
            expected_alg, key = "HS256", self._secret
        else:
            raise InvalidToken(f"algorithm {alg!r} is not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[expected_alg],  # exactly one: no algorithm confusion
                audience=AUDIENCE,
                issuer=self._issuer,
                options={"require": ["exp", "sub", "aud", "iat"]},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        try:
            uuid.UUID(str(claims["sub"]))
        except ValueError as exc:
            raise InvalidToken("sub is not a user id") from exc
        if claims.get("role") != "authenticated":
            raise InvalidToken("role is not authenticated")
        return claims
