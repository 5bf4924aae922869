"""The registry server's storage: content-addressed files, repositories as links.

Layout under ``root``::

    blobs/sha256/<hex>                                   every blob and manifest, once
    uploads/<uuid>/data, uploads/<uuid>/name             blob uploads in progress
    repositories/<name>/_layers/<hex>                    the repository may serve this blob
    repositories/<name>/_manifests/revisions/<hex>       a manifest of the repository (its
                                                         file holds the media type)
    repositories/<name>/_manifests/tags/<tag>            the digest the tag points to
    repositories/<name>/_referrers/<subject>/<hex>       descriptor of a manifest whose
                                                         ``subject`` is ``<subject>``

A blob becomes visible only once its bytes were hashed, compared with the digest the
client claimed, fsynced and renamed into place; every small file (links, tags) is
written to a temp file and renamed. Deleting a blob or manifest only drops the links:
:meth:`Storage.gc` removes the blobs that no manifest references any more.

All methods are synchronous and safe to call from several threads at once; the server
runs them in an executor. Errors are :class:`DistributionError` carrying the spec's code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from engine.sdk.files import atomic_write as _atomic_write
from engine.sdk.files import fsync_dir

from . import spec

_CHUNK = 1 << 20


class DistributionError(Exception):
    """An error of the distribution API: ``code`` is one of :data:`spec.ERROR_STATUS`."""

    def __init__(
        self, code: str, message: str, detail: Any = None, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status or spec.ERROR_STATUS.get(code, 400)

    def body(self) -> dict[str, Any]:
        """The JSON error document the spec defines."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return {"errors": [err]}


def atomic_write(path: Path, data: bytes) -> None:
    _atomic_write(path, data, make_parents=True)


def _hex(digest: str) -> str:
    if not spec.valid_digest(digest):
        if not digest.startswith("sha256:") and spec.ANY_DIGEST_RE.match(digest):
            raise DistributionError("UNSUPPORTED", f"unsupported digest algorithm: {digest}",
                                    status=400)
        raise DistributionError("DIGEST_INVALID", f"invalid digest {digest!r}")
    return digest[len("sha256:"):]


def check_name(name: str) -> None:
    """Raise NAME_INVALID unless ``name`` is a valid repository name."""
    if not spec.valid_name(name):
        raise DistributionError("NAME_INVALID", f"invalid repository name {name!r}",
                                detail={"name": name})


class Storage:
    """Blobs, uploads, manifests and tags of a registry under one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self._blobs = self.root / "blobs" / "sha256"
        self._uploads = self.root / "uploads"
        self._repos = self.root / "repositories"
        for d in (self._blobs, self._uploads, self._repos):
            d.mkdir(parents=True, exist_ok=True)

    # -- paths -----------------------------------------------------------------------

    def _repo(self, name: str) -> Path:
        check_name(name)
        return self._repos / name

    def blob_path(self, digest: str) -> Path:
        return self._blobs / _hex(digest)

    def _layer_link(self, name: str, digest: str) -> Path:
        return self._repo(name) / "_layers" / _hex(digest)

    def _revision(self, name: str, digest: str) -> Path:
        return self._repo(name) / "_manifests" / "revisions" / _hex(digest)

    def _tag(self, name: str, tag: str) -> Path:
        if not spec.valid_tag(tag):
            raise DistributionError("TAG_INVALID", f"invalid tag {tag!r}", detail={"tag": tag})
        return self._repo(name) / "_manifests" / "tags" / tag

    # -- blobs -----------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def repo_blob(self, name: str, digest: str) -> Path:
        """The file of a blob the repository may serve; BLOB_UNKNOWN otherwise."""
        path = self.blob_path(digest)
        if not (self._layer_link(name, digest).exists() or
                self._revision(name, digest).exists()) or not path.is_file():
            raise DistributionError("BLOB_UNKNOWN", f"blob unknown to registry: {digest}",
                                    detail={"digest": digest})
        return path

    def _link_blob(self, name: str, digest: str) -> None:
        link = self._layer_link(name, digest)
        if not link.exists():
            atomic_write(link, b"")

    def delete_blob(self, name: str, digest: str) -> None:
        """Forget a blob in one repository (the bytes go with the next :meth:`gc`)."""
        link = self._layer_link(name, digest)
        try:
            link.unlink()
        except FileNotFoundError:
            raise DistributionError("BLOB_UNKNOWN", f"blob unknown to registry: {digest}",
                                    detail={"digest": digest}) from None

    def mount(self, name: str, digest: str, source: str) -> bool:
        """Link a blob of repository ``source`` into ``name``; False when ``source`` lacks it."""
        check_name(source)
        try:
            self.repo_blob(source, digest)
        except DistributionError:
            return False
        self._link_blob(name, digest)
        return True

    def _commit_blob(self, src: Path, digest: str) -> None:
        """Move a verified, fsynced file into the blob store under ``digest``."""
        final = self.blob_path(digest)
        if final.is_file():
            src.unlink()
            return
        os.chmod(src, 0o644)
        os.rename(src, final)
        fsync_dir(self._blobs)

    def _store_bytes(self, data: bytes) -> str:
        digest = spec.sha256(data)
        if not self.has_blob(digest):
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self._uploads)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._commit_blob(Path(tmp), digest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return digest

    # -- uploads ---------------------------------------------------------------------

    def start_upload(self, name: str) -> str:
        """Open an upload session for repository ``name``; return its id."""
        check_name(name)
        ident = str(uuidlib.uuid4())
        d = self._uploads / ident
        d.mkdir()
        (d / "data").touch()
        atomic_write(d / "name", name.encode())
        return ident

    def _upload_dir(self, name: str, ident: str) -> Path:
        try:
            uuidlib.UUID(ident)
        except ValueError:
            raise DistributionError("BLOB_UPLOAD_UNKNOWN", "blob upload unknown",
                                    detail={"uuid": ident}) from None
        d = self._uploads / ident
        try:
            owner = (d / "name").read_text()
        except FileNotFoundError:
            owner = None
        if owner != name:
            raise DistributionError("BLOB_UPLOAD_UNKNOWN", "blob upload unknown",
                                    detail={"uuid": ident})
        return d

    def upload_size(self, name: str, ident: str) -> int:
        """How many bytes the upload holds so far."""
        return (self._upload_dir(name, ident) / "data").stat().st_size

    @contextlib.contextmanager
    def append(self, name: str, ident: str, start: int | None = None) -> Iterator[BinaryIO]:
        """A file to append a chunk to. ``start`` (from Content-Range) must be the upload's
        current size: chunks come in order, else 416 BLOB_UPLOAD_INVALID."""
        path = self._upload_dir(name, ident) / "data"
        size = path.stat().st_size
        if start is not None and start != size:
            raise DistributionError(
                "BLOB_UPLOAD_INVALID",
                f"chunk starts at {start} but the upload has {size} bytes", status=416)
        with open(path, "ab") as f:
            yield f  # type: ignore[misc]
            f.flush()

    def finish_upload(self, name: str, ident: str, digest: str) -> None:
        """Verify the upload against ``digest`` and make it a blob of ``name``.

        On a mismatch the upload is discarded and nothing is stored (DIGEST_INVALID).
        """
        d = self._upload_dir(name, ident)
        _hex(digest)
        data = d / "data"
        h = hashlib.sha256()
        with open(data, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            os.fsync(f.fileno())
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            shutil.rmtree(d, ignore_errors=True)
            raise DistributionError("DIGEST_INVALID", "provided digest did not match uploaded "
                                    "content", detail={"expected": digest, "actual": actual})
        self._commit_blob(data, digest)
        self._link_blob(name, digest)
        shutil.rmtree(d, ignore_errors=True)

    def cancel_upload(self, name: str, ident: str) -> None:
        shutil.rmtree(self._upload_dir(name, ident), ignore_errors=True)

    # -- manifests -------------------------------------------------------------------

    def resolve(self, name: str, ref: str) -> str:
        """The digest of a manifest by tag or digest; MANIFEST_UNKNOWN when absent."""
        if ref.startswith("sha256:") or ":" in ref:
            if self._revision(name, ref).is_file():
                return ref
        else:
            try:
                digest = self._tag(name, ref).read_text().strip()
            except FileNotFoundError:
                digest = ""
            if digest and self._revision(name, digest).is_file():
                return digest
        if not self._repo(name).is_dir():
            raise DistributionError("NAME_UNKNOWN", "repository name not known to registry",
                                    detail={"name": name})
        raise DistributionError("MANIFEST_UNKNOWN", f"manifest unknown: {ref}",
                                detail={"name": name, "reference": ref})

    def get_manifest(self, name: str, ref: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, digest)`` of a manifest by tag or digest."""
        digest = self.resolve(name, ref)
        media_type = self._revision(name, digest).read_text().strip()
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise DistributionError("MANIFEST_UNKNOWN", f"manifest unknown: {ref}") from None
        return data, media_type, digest

    def put_manifest(self, name: str, ref: str, data: bytes, content_type: str = "") -> str:
        """Validate and store a manifest under a tag or its digest; return its digest."""
        check_name(name)
        if len(data) > spec.MANIFEST_LIMIT:
            raise DistributionError("SIZE_INVALID", "manifest is larger than "
                                    f"{spec.MANIFEST_LIMIT} bytes", status=413)
        digest = spec.sha256(data)
        tag = ""
        if spec.ANY_DIGEST_RE.match(ref):
            _hex(ref)
            if ref != digest:
                raise DistributionError("DIGEST_INVALID", "manifest digest does not match the "
                                        "reference", detail={"expected": ref, "actual": digest})
        else:
            self._tag(name, ref)  # TAG_INVALID
            tag = ref
        doc = self._parse_manifest(data, content_type)
        media_type = spec.media_type_of(doc, content_type)
        self._check_references(name, doc, media_type)
        self._store_bytes(data)
        atomic_write(self._revision(name, digest), media_type.encode())
        subject = doc.get("subject")
        if isinstance(subject, dict) and spec.valid_digest(str(subject.get("digest", ""))):
            self._add_referrer(name, subject["digest"], doc, media_type, digest, len(data))
        if tag:
            atomic_write(self._tag(name, tag), digest.encode())
        return digest

    @staticmethod
    def _parse_manifest(data: bytes, content_type: str) -> dict[str, Any]:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise DistributionError("MANIFEST_INVALID", f"manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            raise DistributionError("MANIFEST_INVALID", "manifest must be a JSON object with "
                                    "schemaVersion 2")
        declared = doc.get("mediaType")
        ct = content_type.split(";")[0].strip()
        if declared and ct in spec.MANIFEST_TYPES and declared != ct:
            raise DistributionError("MANIFEST_INVALID", f"mediaType {declared} does not match "
                                    f"Content-Type {ct}")
        return doc

    def _check_references(self, name: str, doc: dict[str, Any], media_type: str) -> None:
        """Every blob and manifest the document refers to must be in the repository."""

        def bad(what: str) -> DistributionError:
            return DistributionError("MANIFEST_INVALID", f"manifest {what}")

        if media_type in spec.INDEX_MANIFESTS or "manifests" in doc:
            children = doc.get("manifests")
            if not isinstance(children, list):
                raise bad("index has no manifests list")
            for child in children:
                d = child.get("digest") if isinstance(child, dict) else None
                if not isinstance(d, str) or not spec.valid_digest(d):
                    raise bad("index entry has no valid digest")
                if not self._revision(name, d).is_file():
                    raise DistributionError("MANIFEST_BLOB_UNKNOWN", f"manifest {d} unknown to "
                                            "repository", detail={"digest": d})
            return
        config = doc.get("config")
        layers = doc.get("layers", [])
        if not isinstance(config, dict) or not isinstance(layers, list):
            raise bad("has no config descriptor or layers list")
        for desc in [config, *layers]:
            if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
                raise bad("has a descriptor without digest")
            d = desc["digest"]
            if not spec.valid_digest(d):
                raise DistributionError("DIGEST_INVALID", f"invalid digest {d!r} in manifest")
            if desc.get("mediaType") in spec.FOREIGN_LAYERS or desc.get("urls"):
                continue
            if not (self._layer_link(name, d).exists() and self.has_blob(d)):
                raise DistributionError("MANIFEST_BLOB_UNKNOWN", f"blob {d} unknown to "
                                        "repository", detail={"digest": d})

    def _add_referrer(self, name: str, subject: str, doc: dict[str, Any], media_type: str,
                      digest: str, size: int) -> None:
        desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
        artifact = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        if artifact:
            desc["artifactType"] = artifact
        if doc.get("annotations"):
            desc["annotations"] = doc["annotations"]
        path = self._repo(name) / "_referrers" / _hex(subject) / _hex(digest)
        atomic_write(path, json.dumps(desc).encode())

    def delete_manifest(self, name: str, ref: str) -> None:
        """Delete a tag, or a manifest by digest together with the tags naming it."""
        digest = self.resolve(name, ref)
        tags_dir = self._repo(name) / "_manifests" / "tags"
        if not ref.startswith("sha256:"):
            self._tag(name, ref).unlink(missing_ok=True)
            return
        for t in tags_dir.iterdir() if tags_dir.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                if t.read_text().strip() == digest:
                    t.unlink()
        self._revision(name, digest).unlink(missing_ok=True)
        referrers = self._repo(name) / "_referrers"
        for link in referrers.glob(f"*/{_hex(digest)}") if referrers.is_dir() else []:
            link.unlink(missing_ok=True)

    # -- listings --------------------------------------------------------------------

    def tags(self, name: str) -> list[str]:
        repo = self._repo(name)
        if not repo.is_dir():
            raise DistributionError("NAME_UNKNOWN", "repository name not known to registry",
                                    detail={"name": name})
        d = repo / "_manifests" / "tags"
        return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) \
            if d.is_dir() else []

    def catalog(self) -> list[str]:
        """Every repository that has at least one manifest, sorted."""
        out = []
        for revisions in self._repos.glob("**/_manifests/revisions"):
            if any(revisions.iterdir()):
                out.append(revisions.parent.parent.relative_to(self._repos).as_posix())
        return sorted(out)

    def referrers(self, name: str, digest: str, artifact_type: str = "") -> list[dict[str, Any]]:
        """Descriptors of the manifests whose ``subject`` is ``digest``."""
        d = self._repo(name) / "_referrers" / _hex(digest)
        out = []
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if p.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                desc = json.loads(p.read_text())
                if not artifact_type or desc.get("artifactType") == artifact_type:
                    out.append(desc)
        return out

    # -- garbage collection ----------------------------------------------------------

    def _manifest_refs(self, digest: str) -> list[str]:
        """The digests a stored manifest refers to (config, layers, children, subject)."""
        try:
            doc = json.loads(self.blob_path(digest).read_bytes())
        except (FileNotFoundError, ValueError):
            return []
        if not isinstance(doc, dict):
            return []
        descs = [doc.get("config"), *(doc.get("layers") or []), *(doc.get("manifests") or [])]
        return [d["digest"] for d in descs
                if isinstance(d, dict) and spec.valid_digest(str(d.get("digest", "")))]

    def purge_uploads(self, older_than: float = 24 * 3600) -> list[str]:
        """Cancel uploads nobody wrote to for ``older_than`` seconds; return their ids."""
        now = time.time()
        purged = []
        for d in self._uploads.iterdir():
            data = d / "data"
            try:
                idle = now - data.stat().st_mtime if d.is_dir() else now - d.stat().st_mtime
            except FileNotFoundError:
                continue
            if idle > older_than:
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    d.unlink(missing_ok=True)  # a temp file of an interrupted manifest write
                purged.append(d.name)
        return purged

    def gc(self, *, dry_run: bool = False, delete_untagged: bool = False) -> list[str]:
        """Delete every blob no manifest of any repository refers to; return their digests.

        Run it while nothing pushes (as the reference registry requires): an upload in
        flight whose manifest is not there yet would lose its blobs. With
        ``delete_untagged`` manifests that no tag reaches are deleted first.
        """
        marked: set[str] = set()
        for revisions in self._repos.glob("**/_manifests/revisions"):
            repo_dir = revisions.parent.parent
            name = repo_dir.relative_to(self._repos).as_posix()
            roots = ["sha256:" + p.name for p in revisions.iterdir() if len(p.name) == 64]
            if delete_untagged:
                tagged = {t.read_text().strip() for t in (revisions.parent / "tags").glob("*")
                          if not t.name.startswith(".")}
                reach = set(tagged)
                queue = list(tagged)
                while queue:
                    for child in self._manifest_refs(queue.pop()):
                        if child not in reach and (revisions / _hex(child)).exists():
                            reach.add(child)
                            queue.append(child)
                for digest in roots:
                    if digest not in reach and not dry_run:
                        self.delete_manifest(name, digest)
                roots = [d for d in roots if d in reach]
            for digest in roots:
                marked.add(digest)
                marked.update(self._manifest_refs(digest))
        removed = []
        for blob in sorted(self._blobs.iterdir()):
            if len(blob.name) != 64 or "sha256:" + blob.name in marked:
                continue
            removed.append("sha256:" + blob.name)
            if not dry_run:
                blob.unlink(missing_ok=True)
        if not dry_run:
            for link in self._repos.glob("**/_layers/*"):
                if not (self._blobs / link.name).exists():
                    link.unlink(missing_ok=True)
        return removed
