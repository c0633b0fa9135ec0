"""The local provider's signing key: ES256 generated once under DATA_DIR, or HS256 from JWT_SECRET."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class SigningKey:
    algorithm: str  # "ES256" or "HS256"
    kid: str
    private: Any  # EllipticCurvePrivateKey or bytes (HS256 secret)
    public: Any  # EllipticCurvePublicKey or bytes

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public half as a JWKS; empty for a shared secret, which must never be published."""
        if self.algorithm != "ES256":
            return {"keys": []}
        numbers = self.public.public_numbers()
        return {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": _b64(numbers.x.to_bytes(32, "big")),
                    "y": _b64(numbers.y.to_bytes(32, "big")),
                    "kid": self.kid,
                    "alg": "ES256",
                    "use": "sig",
                    "key_ops": ["verify"],
                }
            ]
        }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _kid_for(public_pem: bytes) -> str:
    return hashlib.sha256(public_pem).hexdigest()[:16]


def load_or_create_es256(folder: Path) -> SigningKey:
    """Generated on first start and kept (mode 0600) so tokens survive restarts."""
    path = folder / "jwt-es256.pem"
    if path.exists():
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(tmp, path)  # concurrent first starts: the last writer wins, and each reloads below
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = private.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey("ES256", _kid_for(public_pem), private, public)


def hs256(secret: str) -> SigningKey:
    raw = secret.encode()
    return SigningKey("HS256", "hs256-" + hashlib.sha256(raw).hexdigest()[:8], raw, raw)


def local_signing_key(data_dir: Path, jwt_secret: str | None) -> SigningKey:
    if jwt_secret:
        return hs256(jwt_secret)
    return load_or_create_es256(data_dir / "keys")


def jwks_json(key: SigningKey) -> str:
    return json.dumps(key.jwks())
