"""The token service of ``engine registry serve --token``: Docker's token flow
(distribution's ``token`` auth), issuer and verifier in one process.

A client that meets ``401`` with ``WWW-Authenticate: Bearer realm=".../token",
service="...",scope="repository:NAME:ACTIONS"`` asks the realm for a token, with basic
credentials (or none, for what anonymous users may do), one ``scope`` parameter per
resource. The answer is a JWT whose ``access`` claim lists what was granted: the
intersection of what was asked and what the access rules allow that user (a request
for more is not refused, it gets less, as Docker's token servers do). The registry then
checks every request against the token's grants.

The JWT is signed with HMAC-SHA256 (``HS256``) under a secret only this process holds
(random at start, unless a file gives it): tokens are opaque to clients, who only carry
them, so the algorithm is the issuer's and verifier's business. A restart voids the
tokens; clients ask again on their next ``401``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

from .storage import DistributionError

#: the resource types and actions a token may grant
_ACTIONS = {"repository": ("pull", "push", "delete", "*"), "registry": ("*",)}


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """``scope`` parameters (each may hold several, space-separated) as Scopes; the
    malformed and unknown ones are dropped, as they grant nothing."""
    out = []
    for value in values:
        for item in value.split():
            kind, sep, rest = item.partition(":")
            name, sep2, actions = rest.rpartition(":")
            known = _ACTIONS.get(kind)
            if not (sep and sep2 and name and known):
                continue
            acts = tuple(a for a in dict.fromkeys(actions.split(",")) if a in known)
            if acts:
                out.append(Scope(kind, name, acts))
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Grants:
    """What a verified token allows: its subject (None: anonymous) and its access."""

    subject: str | None
    access: list[dict] = field(default_factory=list)

    def allows(self, kind: str, name: str, action: str) -> bool:
        for entry in self.access:
            if entry.get("type") == kind and entry.get("name") == name:
                actions = entry.get("actions") or []
                if action in actions or "*" in actions:
                    return True
        return False


class TokenService:
    """Issues and verifies the registry's bearer tokens."""

    def __init__(self, *, service: str = "engine-registry", issuer: str = "engine-registry",
                 ttl: int = 300, secret: bytes | None = None, realm: str = "") -> None:
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.realm = realm  # empty: this server's /token, as the client reached it
        self._secret = secret or secrets.token_bytes(32)

    @classmethod
    def secret_from(cls, path: str) -> bytes:
        """A secret shared by several registry processes: the file's bytes (at least 32)."""
        with open(path, "rb") as f:
            data = f.read().strip()
        if len(data) < 32:
            raise ValueError(f"{path}: a token secret needs at least 32 bytes")
        return data

    def issue(self, subject: str | None, granted: list[Scope]) -> dict:
        """The token endpoint's answer for ``subject`` with ``granted`` access."""
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject or "", "aud": self.service,
                  "iat": now, "nbf": now - 10, "exp": now + self.ttl,
                  "jti": secrets.token_hex(16),
                  "access": [{"type": s.type, "name": s.name, "actions": list(s.actions)}
                             for s in granted]}
        header = {"typ": "JWT", "alg": "HS256"}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = hmac.new(self._secret, signing.encode(), hashlib.sha256).digest()
        token = f"{signing}.{_b64(sig)}"
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": token, "access_token": token, "expires_in": self.ttl,
                "issued_at": issued}

    def verify(self, token: str) -> Grants:
        """The grants of a token this service issued, still valid; UNAUTHORIZED else."""
        try:
            signing, _, sig = token.strip().rpartition(".")
            head, _, body = signing.partition(".")
            header = json.loads(_unb64(head))
            expected = hmac.new(self._secret, signing.encode(), hashlib.sha256).digest()
            if header.get("alg") != "HS256" or not hmac.compare_digest(_unb64(sig), expected):
                raise ValueError("bad signature")
            claims = json.loads(_unb64(body))
        except (ValueError, binascii.Error, UnicodeDecodeError, AttributeError) as exc:
            raise DistributionError("UNAUTHORIZED", f"invalid token: {exc}") from None
        now = time.time()
        if not isinstance(claims, dict) or claims.get("aud") != self.service \
                or claims.get("iss") != self.issuer:
            raise DistributionError("UNAUTHORIZED", "token not issued for this registry")
        if not (claims.get("nbf", 0) <= now < claims.get("exp", 0)):
            raise DistributionError("UNAUTHORIZED", "token expired")
        access = claims.get("access")
        return Grants(claims.get("sub") or None, access if isinstance(access, list) else [])


__all__ = ["Grants", "Scope", "TokenService", "parse_scopes"]
