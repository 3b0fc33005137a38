"""What authentication costs a request: ``python -m tests.bench.auth_cost``.

Verifies 2,000 distinct tokens with the service's own Authenticator (HS256 with a secret, RS256 with a PEM
key), then the same tokens again (remembered until they expire, as a client that reuses its token is served).
"""

from __future__ import annotations

import asyncio
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth import Authenticator
from app.settings import Settings

SECRET = "x" * 40
TOKENS = 2_000
ROUNDS = 5


def _no_jwks() -> None:
    raise AssertionError("no JWKS here")


async def main() -> None:
    now = int(time.time())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = [
        ("HS256", {"SOMA_JWT_SECRET": SECRET}, SECRET, "HS256"),
        ("RS256", {"SOMA_JWT_PUBLIC_KEY": pem.decode()}, key, "RS256"),
    ]
    for name, env, signing_key, algorithm in cases:
        settings = Settings.from_env({"SOMA_AUTH_REQUIRED": "1", **env}).auth()
        verifier = Authenticator(settings, _no_jwks)  # type: ignore[arg-type]
        tokens = [
            jwt.encode({"tenant": "t", "sub": str(n), "exp": now + 600}, signing_key, algorithm=algorithm)
            for n in range(TOKENS)
        ]
        began = time.perf_counter()
        for token in tokens:
            await verifier.principal(token)
        first = (time.perf_counter() - began) / TOKENS
        began = time.perf_counter()
        for _ in range(ROUNDS):
            for token in tokens:
                await verifier.principal(token)
        again = (time.perf_counter() - began) / (TOKENS * ROUNDS)
        print(f"{name}: first verification {first * 1e6:.1f} µs, a remembered token {again * 1e6:.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
