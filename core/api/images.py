"""/images/... and /commit: local images (pull and push come with the registry work)."""
from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import tempfile

from aiohttp import web

from engine.sdk.errors import Conflict, InvalidArgument

from ..store import reference
from .archive import stream_from_thread
from .util import encode, json_response, qbool, qfilters, svc


def summary(s, image) -> dict:
    """An image in a list. An image without any name is shown, as API 1.41 does, with
    the placeholders the docker CLI recognises as dangling (it skips an image whose
    only tag is ``<none>:<none>`` unless its digest is ``<none>@<none>`` too)."""
    d = s.images.summary(image)
    if not d.get("RepoTags") and not d.get("RepoDigests"):
        d["RepoTags"], d["RepoDigests"] = ["<none>:<none>"], ["<none>@<none>"]
    d["RepoTags"] = d.get("RepoTags") or []
    d["RepoDigests"] = d.get("RepoDigests") or []
    return d


def _in_use(s):
    return s.containers.image_in_use


async def _run(s, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def list_(request: web.Request) -> web.Response:
    s = svc(request)
    filters = qfilters(request)
    out = []
    for im in await _run(s, s.images.list):
        if not _image_matches(s, im, filters):
            continue
        if not qbool(request, "all") and not im.repo_tags and not im.repo_digests and \
                s.images.children(im.id):
            continue  # an intermediate image
        d = summary(s, im)
        refs = filters.get("reference")
        if refs:
            # like Docker, list only the tags the filter asked for
            d["RepoTags"] = _matching_tags(im.repo_tags, list(refs))
        out.append(d)
    out.sort(key=lambda d: d["Created"], reverse=True)
    return json_response(out)


def _matching_tags(tags: list[str], patterns: list[str]) -> list[str]:
    """The tags that a ``reference`` filter pattern matches, as ``repo:tag`` or as the
    repository alone (Docker's FamiliarMatch)."""

    return [t for t in tags
            if any(fnmatch.fnmatch(t, p) or fnmatch.fnmatch(t.rsplit(":", 1)[0], p)
                   for p in patterns)]


def _image_matches(s, im, filters: dict) -> bool:
    def vals(key):
        v = filters.get(key) or []
        return list(v) if isinstance(v, list) else [k for k, on in v.items() if on]

    if vals("dangling"):
        dangling = not im.repo_tags
        if (vals("dangling")[0] in ("true", "1")) != dangling:
            return False
    refs = vals("reference")
    if refs and not _matching_tags(im.repo_tags, refs):
        return False
    labels = vals("label")
    if labels:
        cfg = (s.images.config(im).get("config") or {}).get("Labels") or {}
        for want in labels:
            k, eq, v = want.partition("=")
            if k not in cfg or (eq and cfg[k] != v):
                return False
    return True


async def inspect(request: web.Request) -> web.Response:
    s = svc(request)
    return json_response(await _run(s, s.images.inspect, request.match_info["name"]))


async def history(request: web.Request) -> web.Response:
    s = svc(request)
    return json_response(await _run(s, s.images.history, request.match_info["name"]))


async def tag(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    repo = request.query.get("repo") or ""
    if not repo:
        raise InvalidArgument("repository name must have at least one component")
    ref = repo + (":" + request.query["tag"] if request.query.get("tag") else "")
    img = await _run(s, s.images.get, name)
    await _run(s, s.images.tag, img.id, ref)
    s.events.emit("image", "tag", img.id, {
        "name": reference.familiar(str(reference.parse(ref).with_default_tag()))})
    return web.Response(status=201)


def _delete(s, name: str, force: bool) -> list[dict]:
    """Docker's image delete, with its one conflict that ``force`` cannot override: a
    running container's image. Forcing the removal of its name only untags it; its id
    is refused. (A stopped container's image may be forced away: the container keeps
    its layers.)"""
    if force:
        img = s.images.get(name)
        running = [c.id for c in s.containers.containers.values()
                   if c.image == img.id and c.state.running]
        if running:
            hex_id = img.id.removeprefix("sha256:")
            by_id = name.removeprefix("sha256:")
            if len(by_id) >= 4 and hex_id.startswith(by_id):
                raise Conflict(f"conflict: unable to delete {hex_id[:12]} (cannot be forced) "
                               f"- image is being used by running container {running[0][:12]}")
            s.images.untag(name)
            return [{"Untagged": reference.familiar(
                str(reference.parse(name).with_default_tag()))}]
    return s.images.delete(name, force=force, in_use=_in_use(s))


async def remove(request: web.Request) -> web.Response:
    s = svc(request)
    name = request.match_info["name"]
    image_id = (await _run(s, s.images.get, name)).id
    res = await _run(s, _delete, s, name, qbool(request, "force"))
    for item in res:
        for action, ident in item.items():
            if action == "Untagged":  # as Docker: the image's id, the name it lost
                s.events.emit("image", "untag", image_id, {"name": ident})
            elif action == "Deleted" and ident == image_id:  # (not its layers)
                s.events.emit("image", "delete", ident, {"name": ident})
    return json_response(res)


async def prune(request: web.Request) -> web.Response:
    s = svc(request)
    filters = qfilters(request)
    dangling = True
    if "dangling" in filters:
        v = filters["dangling"]
        v = list(v) if isinstance(v, list) else list(v.keys())
        dangling = v[0] in ("true", "1")
    res = await _run(s, lambda: s.images.prune(dangling_only=dangling, in_use=_in_use(s)))
    return json_response(res)


async def create(request: web.Request) -> web.StreamResponse:
    """``fromSrc`` imports a rootfs tar; ``fromImage`` pulls from a registry."""
    s = svc(request)
    src = request.query.get("fromSrc")
    if src is None:
        from .distribution import pull

        return await pull(request)
    if src != "-":
        raise InvalidArgument("importing from a URL is not supported: pass the tar in the body "
                              "(fromSrc=-)")
    repo = request.query.get("repo") or ""
    tagq = request.query.get("tag") or ""
    repo_tag = (repo + (":" + tagq if tagq else "")) if repo else None
    changes = request.query.getall("changes", [])
    message = request.query.get("message") or ""
    from ..store import transfer

    path = await _spool(s, request)
    try:
        img = await _run(s, lambda: _import(s, transfer, path, repo_tag, changes, message))
    finally:
        os.unlink(path)
    s.events.emit("image", "import", img.id, {"name": repo_tag or img.id})
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(encode({"status": img.id}) + b"\n")
    await resp.write_eof()
    return resp


def _import(s, transfer, path, repo_tag, changes, message):
    with open(path, "rb") as f:
        return transfer.import_rootfs(s.images, f, repo_tag=repo_tag, changes=changes,
                                      message=message)


async def _spool(s, request: web.Request) -> str:
    tmpdir = os.path.join(s.config.data_root, "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=tmpdir, suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                chunk = await request.content.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path


async def load(request: web.Request) -> web.StreamResponse:
    s = svc(request)
    from ..store import transfer

    path = await _spool(s, request)
    try:
        def work():
            with open(path, "rb") as f:
                return transfer.load(s.images, f)
        lines = await _run(s, work)
    finally:
        os.unlink(path)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for line in lines:
        s.events.emit("image", "load", line.split(": ", 1)[-1], {"name": line.split(": ", 1)[-1]})
        await resp.write(encode({"stream": line.rstrip("\n") + "\n"}) + b"\n")
    await resp.write_eof()
    return resp


async def _save(request: web.Request, names: list[str]) -> web.StreamResponse:
    s = svc(request)
    from ..store import transfer

    if not names:
        raise InvalidArgument("no image names given")
    for n in names:
        await _run(s, s.images.get, n)  # 404 before the body starts
    resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
    await resp.prepare(request)
    await stream_from_thread(resp, lambda w: transfer.save(s.images, names, w))
    for n in names:
        s.events.emit("image", "save", n, {"name": n})
    await resp.write_eof()
    return resp


async def get_one(request: web.Request) -> web.StreamResponse:
    return await _save(request, [request.match_info["name"]])


async def get_many(request: web.Request) -> web.StreamResponse:
    return await _save(request, request.query.getall("names", []))


async def commit(request: web.Request) -> web.Response:
    s = svc(request)
    from ..store import transfer

    cs = s.containers
    c = cs.get(request.query.get("container") or "")
    body = await _optional_json(request)
    repo = request.query.get("repo") or ""
    tagq = request.query.get("tag") or ""
    repo_tag = (repo + (":" + tagq if tagq else "")) if repo else None
    pause = qbool(request, "pause", True)
    paused_here = False
    if pause and c.state.status == "running":
        await cs.pause(c.id)
        paused_here = True
    tmpdir = os.path.join(s.config.data_root, "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=tmpdir, suffix=".diff.tar")
    os.close(fd)
    try:
        def work():
            with open(path, "wb") as f:
                cs.layers.diff_tar(c.id, f)
            cfg = dict(c.config)
            cfg.update({k: v for k, v in body.items() if v is not None})
            return transfer.commit(
                s.images, path, c.image, cfg, repo_tag=repo_tag,
                author=request.query.get("author") or "",
                comment=request.query.get("comment") or "",
                changes=request.query.getall("changes", []),
                container_id=c.id)
        img = await _run(s, work)
    finally:
        os.unlink(path)
        if paused_here:
            await cs.unpause(c.id)
    s.events.emit("container", "commit", c.id, {"comment": request.query.get("comment") or "",
                                                "imageName": repo_tag or ""})
    return json_response({"Id": img.id}, status=201)


async def _optional_json(request: web.Request) -> dict:
    data = await request.read()
    if not data.strip():
        return {}
    v = json.loads(data)
    return v if isinstance(v, dict) else {}


ROUTES = [
    ("GET", "/images/json", list_),
    ("POST", "/images/create", create),
    ("POST", "/images/load", load),
    ("POST", "/images/prune", prune),
    ("GET", "/images/get", get_many),
    ("GET", "/images/{name:.+}/json", inspect),
    ("GET", "/images/{name:.+}/history", history),
    ("GET", "/images/{name:.+}/get", get_one),
    ("POST", "/images/{name:.+}/tag", tag),
    ("DELETE", "/images/{name:.+}", remove),
    ("POST", "/commit", commit),
]
