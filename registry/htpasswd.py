"""Who may do what on the registry server: htpasswd users and per-repository permissions.

The htpasswd file holds ``user:hash`` lines with bcrypt hashes (``htpasswd -B``, as the
reference registry requires). They are checked with the ``bcrypt`` package when it is
installed, else with the C library's ``crypt(3)`` (libxcrypt knows bcrypt).

The access file is JSON, mapping a user name (``*`` for any authenticated user,
``anonymous`` for requests without credentials) to repository patterns (``fnmatch``
style) per action::

    {"alice": {"pull": ["*"], "push": ["alice/*"]}, "anonymous": {"pull": ["public/*"]}}

Without an access file every authenticated user may pull and push everything; without an
htpasswd file the registry is open to everyone.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import threading
import warnings
from pathlib import Path

ANONYMOUS = "anonymous"
ACTIONS = ("pull", "push")


def _bcrypt_check(password: str, hashed: str) -> bool:
    try:
        import bcrypt  # type: ignore[import-not-found]
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        result = crypt.crypt(password, hashed)
        return result is not None and hmac.compare_digest(result, hashed)
    try:
        return bool(bcrypt.checkpw(password.encode(), hashed.encode()))
    except ValueError:
        return False


def bcrypt_hash(password: str, rounds: int = 5) -> str:
    """A bcrypt hash for an htpasswd line (tests and tools)."""
    try:
        import bcrypt
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << rounds))
    return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode())


class Htpasswd:
    """Users and their bcrypt hashes, read once; successful checks are cached."""

    def __init__(self, path: str | Path) -> None:
        self.users: dict[str, str] = {}
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            user, _, hashed = line.partition(":")
            if hashed.startswith(("$2y$", "$2b$", "$2a$")):
                self.users[user] = hashed
        self._ok: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        """True when ``password`` is the user's (slow: bcrypt; call from an executor)."""
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            if key in self._ok:
                return True
        if not _bcrypt_check(password, hashed):
            return False
        with self._lock:
            self._ok.add(key)
        return True


class Access:
    """Per-user repository patterns for ``pull`` and ``push``."""

    def __init__(self, rules: dict[str, dict[str, list[str]]] | None = None) -> None:
        self.rules = rules

    @classmethod
    def load(cls, path: str | Path) -> Access:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: access rules must be a JSON object")
        rules: dict[str, dict[str, list[str]]] = {}
        for user, perms in doc.items():
            if not isinstance(perms, dict):
                raise ValueError(f"{path}: rules of {user!r} must be an object")
            rules[user] = {a: [str(p) for p in perms.get(a, [])] for a in ACTIONS}
        return cls(rules)

    def allowed(self, user: str | None, action: str, repo: str, *, auth_enabled: bool) -> bool:
        """May ``user`` (None: anonymous) do ``action`` on repository ``repo``?"""
        if not auth_enabled:
            return True
        if self.rules is None:
            return user is not None
        keys = [ANONYMOUS] if user is None else [user, "*"]
        for key in keys:
            for pattern in self.rules.get(key, {}).get(action, []):
                if fnmatch.fnmatchcase(repo, pattern):
                    return True
        return False
