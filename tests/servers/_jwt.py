"""JWT-shaped tokens for the stand-ins.

Real Entra tokens are RS256-signed; nothing in amlrelay may verify or parse them, so a
deterministic HMAC stand-in is enough. Determinism matters: a test can compute the token
the identity endpoint will hand out and check that ADO or Key Vault received exactly it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
DEFAULT_OBJECT_ID = "11111111-1111-1111-1111-111111111111"
DEFAULT_CLIENT_ID = "22222222-2222-2222-2222-222222222222"
DEFAULT_ISSUED_AT = 1_700_000_000
DEFAULT_EXPIRES_ON = 4_102_444_800  # 2100-01-01: far enough that no test sees expiry by accident
_SIGNING_KEY = b"amlrelay-loopback-not-a-secret"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_token(
    resource: str,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    object_id: str = DEFAULT_OBJECT_ID,
    tenant_id: str = ZERO_GUID,
    issued_at: int = DEFAULT_ISSUED_AT,
    expires_on: int = DEFAULT_EXPIRES_ON,
    token_id: str | None = None,
) -> str:
    """Return ``header.payload.signature`` for a managed identity token for ``resource``; ``token_id`` (Entra's
    ``uti`` claim) makes two tokens issued in the same second differ, as real ones do."""
    header = {"typ": "JWT", "alg": "HS256", "kid": "amlrelay-loopback"}
    claims = {
        "aud": resource,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_on,
        "appid": client_id,
        "appidacr": "2",
        "idtyp": "app",
        "oid": object_id,
        "sub": object_id,
        "tid": tenant_id,
        "ver": "1.0",
    }
    if token_id is not None:
        claims["uti"] = token_id
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":"), sort_keys=True).encode()) for part in (header, claims)
    )
    signature = hmac.new(_SIGNING_KEY, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def decode_claims(token: str) -> dict[str, Any] | None:
    """Return the claims of a token minted by :func:`mint_token`, or None if it is not one.

    The signature is checked so that a tampered or hand-written token is refused, as a
    real resource server would refuse it.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    expected = hmac.new(_SIGNING_KEY, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(_b64url(expected), parts[2]):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None
