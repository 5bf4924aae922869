"""What the OCI distribution spec and Docker's image formats define, shared by client and server.

Media types of manifests, indexes, configs and layers; the grammar of repository names,
tags and digests; the error codes of the distribution API with their HTTP statuses.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# -- media types ---------------------------------------------------------------------

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_OCI_EMPTY = "application/vnd.oci.empty.v1+json"

#: Manifests of one image.
IMAGE_MANIFESTS = (MT_DOCKER_MANIFEST, MT_OCI_MANIFEST)
#: Manifests that list other manifests (one per platform).
INDEX_MANIFESTS = (MT_DOCKER_LIST, MT_OCI_INDEX)
#: Everything a client accepts, in order of preference.
MANIFEST_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
#: Layers that are not distributed by registries (their bytes live elsewhere).
FOREIGN_LAYERS = (
    MT_DOCKER_FOREIGN,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)

#: The largest manifest either side handles (the distribution spec's suggested limit).
MANIFEST_LIMIT = 4 * 1024 * 1024

# -- names ---------------------------------------------------------------------------

NAME_MAX = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
#: Any algorithm the spec's grammar allows (only sha256 is supported for content).
ANY_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def valid_name(name: str) -> bool:
    """A repository name the distribution spec allows (lower case, no ``..``, not too long)."""
    return len(name) <= NAME_MAX and NAME_RE.match(name) is not None


def valid_tag(tag: str) -> bool:
    return TAG_RE.match(tag) is not None


def valid_digest(digest: str) -> bool:
    """A ``sha256:`` digest with 64 lower-case hex digits."""
    return DIGEST_RE.match(digest) is not None


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def media_type_of(doc: dict[str, Any], content_type: str = "") -> str:
    """The media type of a manifest: its ``mediaType`` field, else the HTTP content type,
    else guessed from its shape (an OCI manifest or index may omit the field)."""
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    ct = content_type.split(";")[0].strip()
    if ct in MANIFEST_TYPES:
        return ct
    if "manifests" in doc:
        return MT_OCI_INDEX
    return MT_OCI_MANIFEST


# -- errors --------------------------------------------------------------------------

#: Error code -> HTTP status, from the distribution spec.
ERROR_STATUS = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "TAG_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "RANGE_INVALID": 416,
}
