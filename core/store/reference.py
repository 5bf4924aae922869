"""Image references: parsing, normalisation and the short "familiar" form.

Follows the grammar of the distribution reference library that Docker uses::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ("/" path-component)*
    domain    := host [":" port]   (a first component with "." or ":", or "localhost")

Names without a domain live on ``docker.io``; single-component names there get the
``library/`` prefix. Docker shows the familiar form (``busybox:latest``) to users and
stores the normalised one (``docker.io/library/busybox:latest``).
"""

from __future__ import annotations

import re

import msgspec
from engine.sdk.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?$|^\[[a-fA-F0-9:]+\](?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")


class Reference(msgspec.Struct, frozen=True):
    """A parsed, normalised reference. ``tag`` and ``digest`` may be empty."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The full repository name, ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_default_tag(self) -> Reference:
        """The same reference with ``:latest`` when it has neither tag nor digest."""
        if self.tag or self.digest:
            return self
        return Reference(self.domain, self.path, DEFAULT_TAG, "")


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(ref: str) -> Reference:
    """Parse and normalise ``ref``; raise InvalidArgument when it is not a valid reference."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("invalid reference format: empty reference")
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidArgument(f"invalid reference format: bad digest in {ref!r}")
    if digest.startswith("sha256:") and not _SHA256.match(digest):
        raise InvalidArgument(f"invalid reference format: bad sha256 digest in {ref!r}")
    name, tag = rest, ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid reference format: bad tag {tag!r} in {ref!r}")
    if not name:
        raise InvalidArgument(f"invalid reference format: no name in {ref!r}")
    domain, path = _split_domain(name)
    if domain != DEFAULT_DOMAIN and not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid reference format: bad registry {domain!r} in {ref!r}")
    for comp in path.split("/"):
        if not _COMPONENT.match(comp):
            if comp.lower() != comp and _COMPONENT.match(comp.lower()):
                raise InvalidArgument(
                    f"invalid reference format: repository name ({path}) must be lowercase"
                )
            raise InvalidArgument(
                f"invalid reference format: bad name component {comp!r} in {ref!r}"
            )
    if len(f"{domain}/{path}") > NAME_MAX:
        raise InvalidArgument(f"invalid reference format: name longer than {NAME_MAX} characters")
    return Reference(domain, path, tag, digest)


def normalize(ref: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox:latest`` (tag added when none given)."""
    return str(parse(ref).with_default_tag())


def familiar_name(r: Reference) -> str:
    """The repository name as Docker prints it (``busybox``, ``me/app``, ``host:5000/x``)."""
    if r.domain == DEFAULT_DOMAIN:
        return r.path[len(OFFICIAL_PREFIX) :] if r.path.startswith(OFFICIAL_PREFIX) else r.path
    return r.name


def familiar(ref: str) -> str:
    """``docker.io/library/busybox:latest`` -> ``busybox:latest``."""
    r = parse(ref)
    out = familiar_name(r)
    if r.tag:
        out += ":" + r.tag
    if r.digest:
        out += "@" + r.digest
    return out
