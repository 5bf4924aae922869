"""Image records and tags.

An image is named by the digest of its config JSON (as Docker does). Its record keeps
the layer blobs it came from (so ``save`` can hand out the original bytes), their diff
ids and chain ids, and its unpacked size. Layout under ``root``::

    images/<id hex>.json   one Image record each (tags are not in it)
    repositories.json      {"refs": {"docker.io/library/busybox:latest": "sha256:..."}}

Tags are the single source of truth for ``RepoTags``/``RepoDigests``; both files are
replaced atomically. The config bytes live in the content store under the image id.
"""

from __future__ import annotations

import builtins
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from engine.sdk.errors import Conflict, InvalidArgument, NotFound

from . import reference
from .content import ContentStore
from .fsutil import atomic_write_json, is_hex_id, parse_digest, sha256_digest
from .layers import LayerStore, chain_ids

InUse = Callable[[str], bool]

#: Media types of layers that are not stored locally (Windows base layers).
_FOREIGN = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)
_SHORT_ID = re.compile(r"^[a-f0-9]{1,64}$")
_ZERO_TIME = "0001-01-01T00:00:00Z"


class ImageLayer(msgspec.Struct, frozen=True):
    """One layer of an image: the blob it came from and the snapshot it became."""

    digest: str
    media_type: str
    diff_id: str
    chain_id: str
    size: int


class Image(msgspec.Struct):
    """An image record. ``repo_tags``/``repo_digests`` are filled in from the tag store."""

    id: str
    layers: list[ImageLayer]
    created: str = ""
    size: int = 0
    parent: str = ""
    last_tag_time: str = ""
    repo_tags: list[str] = msgspec.field(default_factory=list)
    repo_digests: list[str] = msgspec.field(default_factory=list)

    @property
    def top_layer(self) -> str | None:
        """Chain id of the top layer, None for an image without layers."""
        return self.layers[-1].chain_id if self.layers else None


class _Refs(msgspec.Struct):
    refs: dict[str, str] = msgspec.field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime | None:
    """Parse an RFC 3339 timestamp (nanoseconds allowed); None when absent or invalid."""
    if not value:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value)
    if m is None:
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}")
    except ValueError:
        return None


def unix_time(value: str) -> int:
    t = parse_time(value)
    return int(t.timestamp()) if t is not None else 0


def _never(_image_id: str) -> bool:
    return False


class ImageStore:
    """Images by id, and the tags that name them. Synchronous and thread-safe."""

    def __init__(self, root: str | Path, content: ContentStore, layers: LayerStore) -> None:
        self.root = Path(root).absolute()
        self.content = content
        self.layers = layers
        self._images_dir = self.root / "images"
        self._images_dir.mkdir(parents=True, exist_ok=True)
        self._refs_file = self.root / "repositories.json"
        self._lock = threading.RLock()
        self._images: dict[str, Image] = {}
        # chain ids of images being created: deletions must not release them meanwhile
        self._pending: Counter[str] = Counter()
        for path in self._images_dir.glob("*.json"):
            img = msgspec.json.decode(path.read_bytes(), type=Image)
            self._images[img.id] = img
        self._refs: dict[str, str] = {}
        if self._refs_file.exists():
            refs = msgspec.json.decode(self._refs_file.read_bytes(), type=_Refs).refs
            # a tag may only name an image that exists
            self._refs = {r: i for r, i in refs.items() if i in self._images}

    # -- persistence -----------------------------------------------------------------

    def _save_refs(self) -> None:
        atomic_write_json(self._refs_file, _Refs(dict(sorted(self._refs.items()))))

    def _save_image(self, img: Image) -> None:
        stored = msgspec.structs.replace(img, repo_tags=[], repo_digests=[])
        atomic_write_json(self._images_dir / f"{parse_digest(img.id)}.json", stored)

    def _refs_of(self, image_id: str) -> builtins.list[str]:
        return sorted(r for r, i in self._refs.items() if i == image_id)

    def _view(self, img: Image) -> Image:
        tags: builtins.list[str] = []
        digests: builtins.list[str] = []
        for r in self._refs_of(img.id):
            (digests if "@" in r else tags).append(reference.familiar(r))
        return msgspec.structs.replace(img, repo_tags=tags, repo_digests=digests)

    # -- creating ---------------------------------------------------------------------

    def create(
        self, config: bytes, layer_blobs: builtins.list[tuple[str, str]], *, parent: str = ""
    ) -> Image:
        """Store an image from its config bytes and its layer blobs (already in the content store).

        Layers are unpacked once (reused by chain id) and checked against the config's
        ``rootfs.diff_ids``. Returns the existing image if the config is already known.
        """
        try:
            cfg = json.loads(config)
            diff_ids = cfg["rootfs"]["diff_ids"]
            if not isinstance(diff_ids, list):
                raise TypeError("rootfs.diff_ids is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"invalid image config: {exc}") from None
        local = [(d, m) for d, m in layer_blobs if m not in _FOREIGN]
        if len(local) != len(diff_ids):
            raise InvalidArgument(
                f"image config lists {len(diff_ids)} layers but {len(local)} were given"
            )
        for diff_id in diff_ids:
            parse_digest(diff_id)
        had_config = self.content.has(sha256_digest(config))
        image_id = self.content.write(config)
        with self._lock:
            if image_id in self._images:
                return self._view(self._images[image_id])
        new_chains: builtins.list[str] = []
        layers: builtins.list[ImageLayer] = []
        parent_chain: str | None = None
        chains = chain_ids(diff_ids)
        with self._lock:
            self._pending.update(chains)
        try:
            for (blob, media_type), diff_id, chain in zip(local, diff_ids, chains, strict=True):
                existed = self.layers.exists(chain)
                if not existed and not self.content.has(blob):
                    raise InvalidArgument(f"layer blob {blob} is missing")
                src = self.content.path(blob)
                layer = self.layers.register(src, parent_chain, diff_id=diff_id)
                if not existed:
                    new_chains.append(layer.chain_id)
                layers.append(ImageLayer(blob, media_type, diff_id, layer.chain_id, layer.size))
                parent_chain = layer.chain_id
            img = Image(
                image_id,
                layers,
                created=str(cfg.get("created") or ""),
                size=sum(layer.size for layer in layers),
                parent=parent,
            )
            with self._lock:
                if image_id in self._images:
                    return self._view(self._images[image_id])
                self._save_image(img)
                self._images[image_id] = img
            return self._view(img)
        except BaseException:
            with self._lock:
                self._pending.subtract(chains)
                chains = []
                if new_chains:
                    self.layers.release(new_chains[-1], keep=self._referenced_chains())
                if not had_config and image_id not in self._images:
                    self.content.delete(image_id)
            raise
        finally:
            with self._lock:
                self._pending.subtract(chains)
                self._pending = +self._pending  # drop the zero counts

    # -- lookups ----------------------------------------------------------------------

    def _resolve(self, ref: str) -> tuple[str, str | None]:
        """Return ``(image id, normalised ref or None when ref was an id)``."""
        ref = ref.strip()
        with self._lock:
            if ref.startswith("sha256:"):
                hex_part = ref[len("sha256:") :]
                if not _SHORT_ID.match(hex_part):
                    raise InvalidArgument(f"invalid image id {ref!r}")
                return self._by_prefix(hex_part, ref), None
            if is_hex_id(ref):
                if "sha256:" + ref in self._images:
                    return "sha256:" + ref, None
                raise NotFound(f"No such image: {ref}")
            parse_error: InvalidArgument | None = None
            try:
                r = reference.parse(ref).with_default_tag()
            except InvalidArgument as exc:
                parse_error, r = exc, None
            if r is not None and str(r) in self._refs:
                return self._refs[str(r)], str(r)
            if r is not None and r.digest:
                # name@digest where the digest is the image id itself
                if r.digest in self._images:
                    return r.digest, None
            if _SHORT_ID.match(ref):
                try:
                    return self._by_prefix(ref, ref), None
                except NotFound:
                    pass
            if parse_error is not None:
                raise parse_error
            raise NotFound(f"No such image: {reference.familiar(str(r))}")

    def _by_prefix(self, prefix: str, ref: str) -> str:
        matches = [i for i in self._images if i[len("sha256:") :].startswith(prefix)]
        if not matches:
            raise NotFound(f"No such image: {ref}")
        if len(matches) > 1:
            raise InvalidArgument(f"short image id {ref!r} is ambiguous")
        return matches[0]

    def get(self, ref_or_id: str) -> Image:
        """Find an image by id, id prefix, ``name``, ``name:tag`` or ``name@digest``."""
        image_id, _ = self._resolve(ref_or_id)
        with self._lock:
            return self._view(self._images[image_id])

    def exists(self, ref_or_id: str) -> bool:
        try:
            self.get(ref_or_id)
        except (NotFound, InvalidArgument):
            return False
        return True

    def list(self) -> builtins.list[Image]:
        with self._lock:
            return [self._view(img) for img in self._images.values()]

    def children(self, image_id: str) -> builtins.list[str]:
        with self._lock:
            return [i for i, img in self._images.items() if img.parent == image_id]

    def config_bytes(self, image: Image | str) -> bytes:
        image_id = image.id if isinstance(image, Image) else self.get(image).id
        return self.content.read(image_id)

    def config(self, image: Image | str) -> dict[str, Any]:
        """The image's config JSON, decoded."""
        return json.loads(self.config_bytes(image))

    # -- tags -------------------------------------------------------------------------

    def tag(self, image: str, ref: str) -> None:
        """Point ``ref`` (``name[:tag]``, ``:latest`` by default) at ``image``."""
        target = self.get(image)
        r = reference.parse(ref)
        if r.digest:
            raise InvalidArgument(f"refusing to create a tag with a digest reference: {ref}")
        with self._lock:
            self._refs[str(r.with_default_tag())] = target.id
            self._save_refs()
            img = self._images[target.id]
            img.last_tag_time = _now()
            self._save_image(img)

    def add_digest(self, image: str, name: str, digest: str) -> None:
        """Record the registry manifest digest an image was pulled by (``RepoDigests``)."""
        target = self.get(image)
        parse_digest(digest)
        r = reference.parse(name)
        with self._lock:
            self._refs[f"{r.name}@{digest}"] = target.id
            self._save_refs()

    def untag(self, ref: str) -> str:
        """Remove a tag (or digest reference); return the id it pointed to."""
        key = str(reference.parse(ref).with_default_tag())
        with self._lock:
            try:
                image_id = self._refs.pop(key)
            except KeyError:
                raise NotFound(f"No such image: {reference.familiar(key)}") from None
            self._save_refs()
            return image_id

    # -- deleting ---------------------------------------------------------------------

    def _referenced_chains(self) -> set[str]:
        chains = {layer.chain_id for img in self._images.values() for layer in img.layers}
        return chains | set(self._pending)

    def release_unused_layers(self, chain: str) -> builtins.list[str]:
        """Delete ``chain`` and its parents while no image or container uses them."""
        with self._lock:
            try:
                return self.layers.release(chain, keep=self._referenced_chains())
            except Conflict:
                return []

    def _remove_image(self, image_id: str) -> tuple[builtins.list[dict[str, str]], int]:
        """Drop an untagged image, its unreferenced layers and blobs; return (report, bytes)."""
        img = self._images.pop(image_id)
        (self._images_dir / f"{parse_digest(image_id)}.json").unlink(missing_ok=True)
        report = [{"Deleted": image_id}]
        reclaimed = 0
        keep = self._referenced_chains()
        sizes = {layer.chain_id: layer.size for layer in img.layers}
        if img.top_layer is not None:
            try:
                for chain in self.layers.release(img.top_layer, keep=keep):
                    report.append({"Deleted": chain})
                    reclaimed += sizes.get(chain, 0)
            except Conflict:
                pass  # a container still uses a layer: it goes when the container does
        blobs_in_use = {layer.digest for other in self._images.values() for layer in other.layers}
        for blob in [image_id, *(layer.digest for layer in img.layers)]:
            if blob not in blobs_in_use and blob not in self._images and self.content.has(blob):
                self.content.delete(blob)
        return report, reclaimed

    def delete(
        self, ref_or_id: str, force: bool = False, in_use: InUse | None = None
    ) -> builtins.list[dict[str, str]]:
        """Docker's image delete: untag a name, or delete an image by id.

        Returns ``[{"Untagged": ...}, {"Deleted": ...}]`` as the API does. Conflict when
        the image is used by a container (unless ``force``), when an id names an image
        with several tags (unless ``force``) or when other images are built on it.
        """
        in_use = in_use or _never
        with self._lock:
            image_id, key = self._resolve(ref_or_id)
            short = image_id.removeprefix("sha256:")[:12]
            refs = self._refs_of(image_id)
            report: builtins.list[dict[str, str]] = []
            if key is not None:
                if len(refs) == 1 and in_use(image_id) and not force:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{ref_or_id}" (must'
                        f" force) - container is using its referenced image {short}"
                    )
                del self._refs[key]
                self._save_refs()
                report.append({"Untagged": reference.familiar(key)})
                if len(refs) > 1 or self.children(image_id):
                    return report
            else:
                repositories = {reference.parse(r).name for r in refs}
                if len(repositories) > 1 and not force:
                    raise Conflict(
                        f"conflict: unable to delete {short} (must be forced) - image is"
                        " referenced in multiple repositories"
                    )
                if in_use(image_id) and not force:
                    raise Conflict(
                        f"conflict: unable to delete {short} (must be forced) - image is being"
                        " used by a container"
                    )
                if self.children(image_id):
                    raise Conflict(
                        f"conflict: unable to delete {short} (cannot be forced) - image has"
                        " dependent child images"
                    )
                for r in refs:
                    del self._refs[r]
                    report.append({"Untagged": reference.familiar(r)})
                if refs:
                    self._save_refs()
            removed, _ = self._remove_image(image_id)
            return report + removed

    def prune(self, dangling_only: bool = True, in_use: InUse | None = None) -> dict[str, Any]:
        """Delete unused images (only untagged ones when ``dangling_only``).

        Returns Docker's ``{"ImagesDeleted": [...], "SpaceReclaimed": n}``.
        """
        in_use = in_use or _never
        report: builtins.list[dict[str, str]] = []
        reclaimed = 0
        with self._lock:
            progress = True
            while progress:
                progress = False
                for image_id in list(self._images):
                    refs = self._refs_of(image_id)
                    if (dangling_only and refs) or in_use(image_id) or self.children(image_id):
                        continue
                    for r in refs:
                        del self._refs[r]
                        report.append({"Untagged": reference.familiar(r)})
                    if refs:
                        self._save_refs()
                    removed, freed = self._remove_image(image_id)
                    report += removed
                    reclaimed += freed
                    progress = True
        return {"ImagesDeleted": report or None, "SpaceReclaimed": reclaimed}

    # -- API views --------------------------------------------------------------------

    def history(self, ref: str) -> builtins.list[dict[str, Any]]:
        """Docker's ``/images/{name}/history``: newest first."""
        img = self.get(ref)
        cfg = self.config(img)
        entries = cfg.get("history") or []
        layer_sizes = [layer.size for layer in img.layers]
        out: builtins.list[dict[str, Any]] = []
        if not entries:
            entries = [{"created": img.created} for _ in img.layers] or [{"created": img.created}]
            for e in entries:
                e["empty_layer"] = False
        layer_index = 0
        for e in entries:
            size = 0
            if not e.get("empty_layer"):
                size = layer_sizes[layer_index] if layer_index < len(layer_sizes) else 0
                layer_index += 1
            out.append(
                {
                    "Id": "<missing>",
                    "Created": unix_time(e.get("created", "")),
                    "CreatedBy": e.get("created_by", ""),
                    "Tags": None,
                    "Size": size,
                    "Comment": e.get("comment", ""),
                }
            )
        out.reverse()
        out[0]["Id"] = img.id
        out[0]["Tags"] = img.repo_tags or None
        # entries that are the top of a known parent image get its id and tags
        parent = img.parent
        while parent and parent in self._images:
            pimg = self.get(parent)
            pdepth = len(self.config(pimg).get("history") or pimg.layers or [None])
            if 0 < pdepth <= len(out):
                out[len(out) - pdepth]["Id"] = pimg.id
                out[len(out) - pdepth]["Tags"] = pimg.repo_tags or None
            parent = pimg.parent
        return out

    def summary(self, image: Image) -> dict[str, Any]:
        """Docker's ImageSummary, as ``GET /images/json`` lists it."""
        cfg = self.config(image)
        return {
            "Id": image.id,
            "ParentId": image.parent,
            "RepoTags": image.repo_tags,
            "RepoDigests": image.repo_digests,
            "Created": unix_time(image.created),
            "Size": image.size,
            "SharedSize": -1,
            "VirtualSize": image.size,
            "Labels": (cfg.get("config") or {}).get("Labels") or {},
            "Containers": -1,
        }

    def inspect(self, ref: str) -> dict[str, Any]:
        """Docker's ImageInspect (API v1.41)."""
        img = self.get(ref)
        cfg = self.config(img)
        out: dict[str, Any] = {
            "Id": img.id,
            "RepoTags": img.repo_tags,
            "RepoDigests": img.repo_digests,
            "Parent": img.parent,
            "Comment": cfg.get("comment", ""),
            "Created": img.created or _ZERO_TIME,
            "Container": cfg.get("container", ""),
            "ContainerConfig": cfg.get("container_config") or {},
            "DockerVersion": cfg.get("docker_version", ""),
            "Author": cfg.get("author", ""),
            "Config": cfg.get("config"),
            "Architecture": cfg.get("architecture", ""),
            "Os": cfg.get("os", ""),
            "Size": img.size,
            "VirtualSize": img.size,
            "GraphDriver": self.layers.graph_driver(img.top_layer),
            "RootFS": {"Type": "layers", "Layers": [layer.diff_id for layer in img.layers]},
            "Metadata": {"LastTagTime": img.last_tag_time or _ZERO_TIME},
        }
        if cfg.get("variant"):
            out["Variant"] = cfg["variant"]
        if cfg.get("os.version"):
            out["OsVersion"] = cfg["os.version"]
        return out
