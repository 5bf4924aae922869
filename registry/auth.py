"""Registry credentials, as Docker hands them around.

* ``X-Registry-Auth``: base64url JSON ``{"username", "password", "serveraddress",
  "identitytoken", "registrytoken"}`` sent by clients with pull and push.
* Docker's client config, ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``:
  ``{"auths": {"host:port": {"auth": base64("user:pass")}}}`` (``identitytoken`` too).
* ``WWW-Authenticate`` challenges: ``Basic realm=...`` or ``Bearer realm=...,service=...,
  scope=...`` (Docker's token authentication).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path

import msgspec
from engine.sdk.errors import InvalidArgument

DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API lives.
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
#: The key Docker's config uses for Docker Hub.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"


class Credentials(msgspec.Struct, frozen=True):
    """What a client proves itself with; all fields may be empty (anonymous)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server: str = ""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or
                    self.registry_token)


def _b64decode(value: str) -> bytes:
    value = value.strip()
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        raise InvalidArgument("invalid base64 in registry credentials") from None


def decode_header(value: str | None) -> Credentials | None:
    """Credentials from an ``X-Registry-Auth`` header (None when absent or empty)."""
    if not value or not value.strip():
        return None
    raw = _b64decode(value)
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidArgument("X-Registry-Auth is not base64url JSON") from None
    if not isinstance(doc, dict):
        return None
    creds = from_json(doc)
    return None if creds.empty else creds


def from_json(doc: dict[str, object]) -> Credentials:
    """Credentials from a JSON object with Docker's field names (any case)."""
    low = {k.lower(): v for k, v in doc.items()}

    def field(name: str) -> str:
        v = low.get(name)
        return v if isinstance(v, str) else ""

    return Credentials(username=field("username"), password=field("password"),
                       identity_token=field("identitytoken"),
                       registry_token=field("registrytoken"),
                       server=field("serveraddress"))


def encode_header(creds: Credentials) -> str:
    """The ``X-Registry-Auth`` value for ``creds`` (what docker-py and the CLI send)."""
    doc = {"username": creds.username, "password": creds.password,
           "serveraddress": creds.server}
    if creds.identity_token:
        doc["identitytoken"] = creds.identity_token
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def server_host(server: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000/`` -> ``h:5000``."""
    host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", server.strip()).split("/")[0]
    if host in ("", "index.docker.io", DOCKER_HUB_REGISTRY, "registry.hub.docker.com"):
        return DOCKER_HUB
    return host


def config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env) if env else Path.home() / ".docker"


def from_config(domain: str, directory: str | Path | None = None) -> Credentials | None:
    """Credentials for registry ``domain`` from Docker's ``config.json`` (None if none)."""
    path = Path(directory if directory is not None else config_dir()) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    want = server_host(domain)
    for key, entry in auths.items():
        if server_host(key) != want or not isinstance(entry, dict):
            continue
        username, password = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            user, sep, pw = _b64decode(str(entry["auth"])).decode(errors="replace").partition(":")
            if sep:
                username, password = user, pw
        creds = Credentials(username=str(username), password=str(password),
                            identity_token=str(entry.get("identitytoken") or ""), server=key)
        if not creds.empty:
            return creds
    return None


_PARAM = re.compile(r'([a-zA-Z_][a-zA-Z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


class Challenge(msgspec.Struct, frozen=True):
    """One ``WWW-Authenticate`` challenge: its scheme (lower case) and parameters."""

    scheme: str
    params: dict[str, str] = msgspec.field(default_factory=dict)


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (None when unparseable)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              .replace('\\"', '"') for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)
