"""Moving images in and out of the store: import, load, save and commit.

``save`` writes what ``docker save`` (25+) writes: a docker-archive (``manifest.json``,
``repositories``) whose files are laid out as an OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/…``), so both ``docker load`` and OCI tools (skopeo)
read it. Layers are the original blobs decompressed, so their digests are the diff ids.

``load`` accepts docker-archives (any layout: ``<id>/layer.tar`` or ``blobs/sha256``)
and OCI image layout archives. Every regular file of the archive is streamed into the
content store (verified against its name when the name is a digest), then the images are
created; tags are applied only once every image of the archive was stored, and a failure
removes the images this load created, so no tag ever points to a half-loaded image.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import platform as _platform
import shlex
import tarfile
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from engine.sdk.errors import EngineError, InvalidArgument, NotFound

from . import reference
from .archive import _Unsafe, split_path
from .compression import decompressed, detect
from .fsutil import CHUNK, parse_digest, sha256_digest
from .images import Image, ImageLayer, ImageStore

MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

_ENGINE_VERSION = "engine"
_MAX_METADATA = 16 << 20  # manifest.json, index.json and configs are read into memory


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def host_platform() -> tuple[str, str]:
    """``(os, architecture)`` of this host in OCI terms."""
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "amd64",
        "aarch64": "arm64",
        "armv7l": "arm",
        "i686": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)
    return "linux", arch


def _parse_platform(value: str | None) -> tuple[str, str, str]:
    os_name, arch = host_platform()
    variant = ""
    if value:
        parts = value.split("/")
        if len(parts) > 3 or not all(parts):
            raise InvalidArgument(f"invalid platform {value!r}")
        os_name = parts[0]
        if len(parts) > 1:
            arch = parts[1]
        if len(parts) > 2:
            variant = parts[2]
    return os_name, arch, variant


# -- Dockerfile-like changes (docker import/commit --change) ---------------------------


def _json_or_shell(arg: str) -> list[str]:
    arg = arg.strip()
    if arg.startswith("["):
        try:
            value = json.loads(arg)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", arg]


def _pairs(instruction: str, arg: str) -> dict[str, str]:
    words = shlex.split(arg)
    if not words:
        raise InvalidArgument(f"{instruction} requires at least one argument")
    if "=" not in words[0]:
        # legacy form: ENV key value with spaces
        key, _, value = arg.strip().partition(" ")
        return {key: value.strip()}
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{instruction}: expected key=value, got {word!r}")
        out[key] = value
    return out


def apply_changes(config: dict[str, Any], changes: Iterable[str]) -> dict[str, Any]:
    """Apply ``docker import/commit --change`` instructions to a container config."""
    cfg = copy.deepcopy(config)
    for change in changes:
        change = change.strip()
        if not change:
            continue
        instruction, _, arg = change.partition(" ")
        instruction = instruction.upper()
        arg = arg.strip()
        if instruction == "CMD":
            cfg["Cmd"] = _json_or_shell(arg)
        elif instruction == "ENTRYPOINT":
            cfg["Entrypoint"] = _json_or_shell(arg)
        elif instruction == "ENV":
            env = [e for e in cfg.get("Env") or []]
            for key, value in _pairs("ENV", arg).items():
                env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            cfg["Env"] = env
        elif instruction == "LABEL":
            labels = dict(cfg.get("Labels") or {})
            labels.update(_pairs("LABEL", arg))
            cfg["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for port in arg.split():
                number, _, proto = port.partition("/")
                if not number.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                    raise InvalidArgument(f"EXPOSE: invalid port {port!r}")
                ports[f"{number}/{proto or 'tcp'}"] = {}
            cfg["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            volumes = dict(cfg.get("Volumes") or {})
            paths = json.loads(arg) if arg.startswith("[") else arg.split()
            for path in paths:
                volumes[str(path)] = {}
            cfg["Volumes"] = volumes
        elif instruction == "WORKDIR":
            cfg["WorkingDir"] = arg
        elif instruction == "USER":
            cfg["User"] = arg
        elif instruction == "STOPSIGNAL":
            cfg["StopSignal"] = arg
        else:
            raise InvalidArgument(f"{instruction} is not a valid change command")
    return cfg


# -- import and commit -----------------------------------------------------------------


def _layer_media_type(path: Path) -> str:
    with open(path, "rb") as f:
        kind = detect(f.read(6))
    if kind == "gzip":
        return MT_DOCKER_LAYER_GZIP
    if kind == "none":
        return MT_DOCKER_LAYER
    return f"{MT_OCI_LAYER}+{kind}"


def import_rootfs(
    images: ImageStore,
    stream: BinaryIO,
    *,
    repo_tag: str | None = None,
    changes: Iterable[str] = (),
    message: str = "",
    platform: str | None = None,
) -> Image:
    """``docker import``: a root filesystem tar (maybe compressed) becomes a one-layer image."""
    os_name, arch, variant = _parse_platform(platform)
    if repo_tag:
        reference.parse(repo_tag)
    container_cfg = apply_changes({}, changes)
    blob, _ = images.content.ingest(stream)
    layer = None
    try:
        media_type = _layer_media_type(images.content.path(blob))
        layer = images.layers.register(images.content.path(blob), None)
        now = _now()
        config: dict[str, Any] = {
            "architecture": arch,
            "os": os_name,
            "created": now,
            "docker_version": _ENGINE_VERSION,
            "comment": message,
            "config": container_cfg,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": now, "comment": message or "Imported from -"}],
        }
        if variant:
            config["variant"] = variant
        img = images.create(_encode(config), [(blob, media_type)])
    except BaseException:
        _discard(images, blob, layer.chain_id if layer is not None else None)
        raise
    if repo_tag:
        images.tag(img.id, repo_tag)
        img = images.get(img.id)
    return img


def commit(
    images: ImageStore,
    diff_tar: str | Path,
    base_image: str | None,
    container_config: dict[str, Any],
    *,
    repo_tag: str | None = None,
    author: str = "",
    comment: str = "",
    changes: Iterable[str] = (),
    container_id: str = "",
) -> Image:
    """``docker commit``: a container's diff tar on top of its image becomes a new image.

    The new config is the base image's with ``container_config`` (plus ``changes``) as
    its runtime config, one more history entry and one more diff id.
    """
    if repo_tag:
        reference.parse(repo_tag)
    base: Image | None = images.get(base_image) if base_image else None
    if base is not None:
        config = images.config(base)
    else:
        os_name, arch = host_platform()
        config = {"architecture": arch, "os": os_name, "rootfs": {"type": "layers", "diff_ids": []}}
    now = _now()
    cmd = container_config.get("Cmd") or []
    entry: dict[str, Any] = {
        "created": now,
        "created_by": " ".join(cmd) if isinstance(cmd, list) else str(cmd),
    }
    if author:
        entry["author"] = author
    if comment:
        entry["comment"] = comment
    config.update(
        {
            "created": now,
            "author": author,
            "comment": comment,
            "config": apply_changes(container_config or config.get("config") or {}, changes),
            "container": container_id,
            "container_config": container_config,
            "docker_version": _ENGINE_VERSION,
            "history": [*(config.get("history") or []), entry],
        }
    )
    with open(diff_tar, "rb") as f:
        blob, _ = images.content.ingest(f)
    try:
        diff_id = _uncompressed_digest(images.content.path(blob))
        diff_ids = [*config["rootfs"]["diff_ids"], diff_id]
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        layer_blobs = [(layer.digest, layer.media_type) for layer in base.layers] if base else []
        layer_blobs.append((blob, _layer_media_type(images.content.path(blob))))
        img = images.create(_encode(config), layer_blobs, parent=base.id if base else "")
    except BaseException:
        _discard(images, blob, None)
        raise
    if repo_tag:
        images.tag(img.id, repo_tag)
        img = images.get(img.id)
    return img


def _uncompressed_digest(path: Path) -> str:
    h = hashlib.sha256()
    with decompressed(path) as raw:
        while chunk := raw.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# -- save --------------------------------------------------------------------------------


class _ArchiveWriter:
    """Adds files to the output tar once each (blobs are shared between images)."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self.tf = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self.written: set[str] = set()
        for d in ("blobs/", "blobs/sha256/"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            self.tf.addfile(ti)

    def add_bytes(self, name: str, data: bytes) -> None:
        if name in self.written:
            return
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), 0o644
        self.tf.addfile(ti, io.BytesIO(data))
        self.written.add(name)

    def add_file(self, name: str, path: Path) -> None:
        if name in self.written:
            return
        with open(path, "rb") as f:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = os.fstat(f.fileno()).st_size, 0o644
            self.tf.addfile(ti, f)
        self.written.add(name)

    def close(self) -> None:
        self.tf.close()


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{parse_digest(digest)}"


def _write_uncompressed_layer(images: ImageStore, out: _ArchiveWriter, layer: ImageLayer) -> int:
    """Add a layer as an uncompressed tar named by its diff id; return its size."""
    name = _blob_name(layer.diff_id)
    src = images.content.path(layer.digest)
    if not src.is_file():
        raise NotFound(f"layer blob {layer.digest} of an image is missing")
    if layer.digest == layer.diff_id:
        out.add_file(name, src)
        return src.stat().st_size
    fd, tmp = tempfile.mkstemp(prefix="save-", dir=images.content.tmp_dir)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, decompressed(src) as raw:
            while chunk := raw.read(CHUNK):
                h.update(chunk)
                f.write(chunk)
        if "sha256:" + h.hexdigest() != layer.diff_id:
            raise EngineError(f"layer blob {layer.digest} does not match diff id {layer.diff_id}")
        out.add_file(name, Path(tmp))
        return os.stat(tmp).st_size
    finally:
        os.unlink(tmp)


def _select(images: ImageStore, refs: list[str]) -> dict[str, list[str]]:
    """Image id -> normalised tags to save, in the order asked.

    ``name:tag`` saves that tag, a bare ``name`` every tag of that repository (as
    ``docker save`` does), an id the image without tags.
    """
    chosen: dict[str, list[str]] = {}
    for ref in refs:
        try:
            r: reference.Reference | None = reference.parse(ref)
        except InvalidArgument:
            r = None
        if r is not None and not r.tag and not r.digest:
            repo_tags = [
                (tag, img.id)
                for img in images.list()
                for tag in map(reference.normalize, img.repo_tags)
                if reference.parse(tag).name == r.name
            ]
            if repo_tags:
                for tag, image_id in sorted(repo_tags):
                    tags = chosen.setdefault(image_id, [])
                    if tag not in tags:
                        tags.append(tag)
                continue
        img = images.get(ref)
        tags = chosen.setdefault(img.id, [])
        if r is not None and r.tag and str(r) in map(reference.normalize, img.repo_tags):
            if str(r) not in tags:
                tags.append(str(r))
    return chosen


def save(images: ImageStore, refs: list[str], fileobj: BinaryIO) -> None:
    """``docker save``: write the images named by ``refs`` as a docker-archive + OCI layout."""
    if not refs:
        raise InvalidArgument("no images to save")
    chosen = _select(images, refs)
    out = _ArchiveWriter(fileobj)
    manifest_json: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image_id, tags in chosen.items():
        img = images.get(image_id)
        config = images.config_bytes(img)
        out.add_bytes(_blob_name(img.id), config)
        layer_descs = []
        for layer in img.layers:
            size = _write_uncompressed_layer(images, out, layer)
            layer_descs.append({"mediaType": MT_OCI_LAYER, "digest": layer.diff_id, "size": size})
        manifest = _encode(
            {
                "schemaVersion": 2,
                "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": MT_OCI_CONFIG, "digest": img.id, "size": len(config)},
                "layers": layer_descs,
            }
        )
        manifest_digest = sha256_digest(manifest)
        out.add_bytes(_blob_name(manifest_digest), manifest)
        desc = {"mediaType": MT_OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest)}
        for tag in tags:
            r = reference.parse(tag)
            index.append(
                {**desc, "annotations": {ANNOTATION_IMAGE_NAME: tag, ANNOTATION_REF_NAME: r.tag}}
            )
            if img.layers:
                repositories.setdefault(reference.familiar_name(r), {})[r.tag] = parse_digest(
                    img.layers[-1].diff_id
                )
        if not tags:
            index.append(desc)
        manifest_json.append(
            {
                "Config": _blob_name(img.id),
                "RepoTags": [reference.familiar(t) for t in tags] or None,
                "Layers": [_blob_name(layer.diff_id) for layer in img.layers],
            }
        )
    out.add_bytes(
        "index.json", _encode({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index})
    )
    out.add_bytes("manifest.json", _encode(manifest_json))
    out.add_bytes("oci-layout", _encode({"imageLayoutVersion": "1.0.0"}))
    if repositories:
        out.add_bytes("repositories", _encode(repositories))
    out.close()


# -- load --------------------------------------------------------------------------------


class _Archive:
    """The files of an archive being loaded, stored as blobs in the content store."""

    def __init__(self, images: ImageStore) -> None:
        self.content = images.content
        self.files: dict[str, str] = {}  # path -> digest
        self.links: dict[str, str] = {}  # path -> path it points to
        self.added: set[str] = set()  # blobs this load brought into the store

    def read_tar(self, stream: BinaryIO) -> None:
        before = set(self.content.list())
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*")  # type: ignore[call-overload]
            for m in tf:
                self._member(tf, m)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"invalid image archive: {exc}") from exc
        finally:
            self.added = {d for d in self.files.values() if d not in before}

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        try:
            parts = split_path(m.name)
        except _Unsafe as exc:
            raise InvalidArgument(f"refusing archive entry {m.name!r}: {exc}") from None
        path = "/".join(parts)
        if m.isreg():
            src = tf.extractfile(m)
            assert src is not None
            expected = None
            if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
                expected = "sha256:" + parts[2]
                try:
                    parse_digest(expected)
                except InvalidArgument:
                    raise InvalidArgument(
                        f"archive entry {m.name!r} is not named by a digest"
                    ) from None
            digest, _ = self.content.ingest(src, expected=expected, size=m.size)
            self.files[path] = digest
        elif m.issym() or m.islnk():
            # symlinks are relative to their directory, hard links to the archive root
            target = parts[:-1] if m.issym() and not m.linkname.startswith("/") else []
            for comp in m.linkname.split("/"):
                if comp == "..":
                    if not target:
                        raise InvalidArgument(
                            f"refusing archive entry {m.name!r}: link points outside the archive"
                        )
                    target.pop()
                elif comp not in ("", "."):
                    target.append(comp)
            self.links[path] = "/".join(target)

    def digest_of(self, path: str) -> str:
        try:
            parts = split_path(path)
        except _Unsafe:
            raise InvalidArgument(f"archive refers to {path!r}, outside the archive") from None
        name = "/".join(parts)
        for _ in range(16):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                break
            name = self.links[name]
        raise InvalidArgument(f"archive refers to {path!r}, which it does not contain")

    def blob(self, digest: str) -> str:
        """A blob by digest, from the archive or already in the store."""
        name = _blob_name(digest)
        if name in self.files or name in self.links:
            return self.digest_of(name)
        if self.content.has(digest):
            return digest
        raise InvalidArgument(f"archive refers to blob {digest}, which it does not contain")

    def read_json(self, digest: str) -> Any:
        if self.content.size(digest) > _MAX_METADATA:
            raise InvalidArgument(f"archive metadata {digest} is too large")
        try:
            return json.loads(self.content.read(digest))
        except ValueError as exc:
            raise InvalidArgument(f"archive metadata {digest} is not valid JSON: {exc}") from None


class _Plan:
    """One image to create from an archive, and the names to give it."""

    def __init__(self, config: str, layers: list[tuple[str, str]], tags: list[str]) -> None:
        self.config = config
        self.layers = layers
        self.tags = tags


def _plan_docker(arc: _Archive) -> list[_Plan]:
    manifest = arc.read_json(arc.digest_of("manifest.json"))
    if not isinstance(manifest, list):
        raise InvalidArgument("manifest.json is not a list")
    plans = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise InvalidArgument("manifest.json entry without Config")
        layers = []
        for path in entry.get("Layers") or []:
            digest = arc.digest_of(path)
            layers.append((digest, _layer_media_type(arc.content.path(digest))))
        plans.append(
            _Plan(arc.digest_of(entry["Config"]), layers, list(entry.get("RepoTags") or []))
        )
    return plans


def _oci_name(annotations: dict[str, str]) -> str | None:
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        value = annotations.get(key)
        if not value:
            continue
        try:
            r = reference.parse(value)
        except InvalidArgument:
            continue
        # a bare tag ("latest") parses as a name too: only keep names that say more
        if key == ANNOTATION_REF_NAME and ("/" not in value and ":" not in value):
            continue
        return str(r.with_default_tag())
    return None


def _plan_oci(arc: _Archive) -> list[_Plan]:
    index = arc.read_json(arc.digest_of("index.json"))
    os_name, arch = host_platform()
    plans: list[_Plan] = []

    def visit(desc: dict[str, Any], name: str | None, depth: int) -> None:
        if depth > 4:
            raise InvalidArgument("image index nesting is too deep")
        digest = desc.get("digest", "")
        parse_digest(digest)
        media_type = desc.get("mediaType", "")
        doc = arc.read_json(arc.blob(digest))
        if media_type in (MT_OCI_INDEX, MT_DOCKER_LIST) or "manifests" in doc:
            children = doc.get("manifests") or []
            local = [
                c
                for c in children
                if (c.get("platform") or {}).get("architecture") == arch
                and (c.get("platform") or {}).get("os", os_name) == os_name
            ]
            for child in (local or children)[:1]:
                visit(child, name, depth + 1)
            return
        config = doc.get("config") or {}
        layers = [
            (arc.blob(layer["digest"]), layer.get("mediaType", MT_OCI_LAYER))
            for layer in doc.get("layers") or []
        ]
        plans.append(_Plan(arc.blob(config.get("digest", "")), layers, [name] if name else []))

    for desc in index.get("manifests") or []:
        visit(desc, _oci_name(desc.get("annotations") or {}), 0)
    # one image may be listed once per tag: merge them
    merged: dict[str, _Plan] = {}
    for plan in plans:
        if plan.config in merged:
            merged[plan.config].tags += [t for t in plan.tags if t not in merged[plan.config].tags]
        else:
            merged[plan.config] = plan
    return list(merged.values())


def load(images: ImageStore, stream: BinaryIO) -> list[str]:
    """``docker load``: return lines like ``Loaded image: busybox:latest``."""
    arc = _Archive(images)
    created: list[str] = []
    try:
        arc.read_tar(stream)
        try:
            if "manifest.json" in arc.files or "manifest.json" in arc.links:
                plans = _plan_docker(arc)
            elif "index.json" in arc.files:
                plans = _plan_oci(arc)
            else:
                raise InvalidArgument("not an image archive: no manifest.json or index.json")
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidArgument(f"malformed image archive metadata: {exc!r}") from None
        for plan in plans:
            for tag in plan.tags:
                reference.parse(tag)
        results: list[tuple[str, list[str]]] = []
        for plan in plans:
            existed = images.exists(plan.config)
            img = images.create(arc.content.read(plan.config), plan.layers)
            if not existed:
                created.append(img.id)
            results.append((img.id, plan.tags))
    except BaseException:
        for image_id in reversed(created):
            try:
                images.delete(image_id, force=True)
            except EngineError:
                pass
        _drop_unused(images, arc.added)
        raise
    lines: list[str] = []
    for image_id, tags in results:
        for tag in tags:
            images.tag(image_id, tag)
            lines.append(f"Loaded image: {reference.familiar(reference.normalize(tag))}")
        if not tags:
            lines.append(f"Loaded image ID: {image_id}")
    _drop_unused(images, arc.added)
    return lines


def _discard(images: ImageStore, blob: str, chain: str | None) -> None:
    """Undo a failed import: drop its blob and layer unless an image uses them."""
    if chain is not None:
        images.release_unused_layers(chain)
    _drop_unused(images, {blob})


def _drop_unused(images: ImageStore, added: set[str]) -> None:
    """Delete blobs this load added that no image uses (manifests, legacy json files)."""
    used = {img.id for img in images.list()}
    used |= {layer.digest for img in images.list() for layer in img.layers}
    for digest in added - used:
        try:
            images.content.delete(digest)
        except NotFound:
            pass
