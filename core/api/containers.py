"""/containers/...: create, start, stop, attach, logs, archive and the rest."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import struct

from aiohttp import web

from engine.sdk.errors import Conflict, EngineError, InvalidArgument, NotFound

from ..util import ZERO_TIME, parse_since, rfc3339
from . import archive
from .util import (
    body_json,
    encode,
    frame,
    hijack,
    json_response,
    qbool,
    qfilters,
    qint,
    splice,
    svc,
)


_FRAME = struct.Struct(">BxxxI")  # Docker's stdcopy header


def _cs(request):
    return svc(request).containers


_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


async def list_(request: web.Request) -> web.Response:
    cs = _cs(request)
    filters = qfilters(request)
    status = filters.get("status") or []
    for v in status:  # a list, or Docker's older {"value": true} map
        if v not in _STATUSES:
            raise InvalidArgument(f"Invalid filter 'status={v}'")
    return json_response(cs.list(all_=qbool(request, "all"), limit=qint(request, "limit", -1),
                                 filters=filters, size=qbool(request, "size")))


async def create(request: web.Request) -> web.Response:
    body = await body_json(request)
    name = request.query.get("name")
    cid, warnings = await _cs(request).create(name, body, request.query.get("platform", ""))
    return json_response({"Id": cid, "Warnings": warnings}, status=201)


async def inspect(request: web.Request) -> web.Response:
    return json_response(_cs(request).inspect(request.match_info["id"], qbool(request, "size")))


async def start(request: web.Request) -> web.Response:
    await _cs(request).start(request.match_info["id"])
    return web.Response(status=204)


async def stop(request: web.Request) -> web.Response:
    t = qint(request, "t")
    await _cs(request).stop(request.match_info["id"], t, request.query.get("signal"))
    return web.Response(status=204)


async def restart(request: web.Request) -> web.Response:
    await _cs(request).restart(request.match_info["id"], qint(request, "t"))
    return web.Response(status=204)


async def kill(request: web.Request) -> web.Response:
    await _cs(request).kill(request.match_info["id"], request.query.get("signal"))
    return web.Response(status=204)


async def pause(request: web.Request) -> web.Response:
    await _cs(request).pause(request.match_info["id"])
    return web.Response(status=204)


async def unpause(request: web.Request) -> web.Response:
    await _cs(request).unpause(request.match_info["id"])
    return web.Response(status=204)


async def wait(request: web.Request) -> web.StreamResponse:
    cs = _cs(request)
    ref = request.match_info["id"]
    cs.get(ref)  # 404 before the 200 goes out
    condition = request.query.get("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise InvalidArgument(f'invalid condition: "{condition}"')  # and this 400
    # Docker sends the headers at once, then the body when the condition is met.
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        res = await cs.wait(ref, condition)
    except NotFound:
        res = {"StatusCode": 0, "Error": None}
    except EngineError as e:  # the status line is gone: the error goes in the body
        res = {"StatusCode": -1, "Error": {"Message": e.message}}
    try:
        await resp.write(encode(res) + b"\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client gave up waiting
    return resp


async def remove(request: web.Request) -> web.Response:
    if qbool(request, "link"):
        raise InvalidArgument("legacy links are not supported")
    await _cs(request).remove(request.match_info["id"], force=qbool(request, "force"),
                              volumes=qbool(request, "v"))
    return web.Response(status=204)


async def rename(request: web.Request) -> web.Response:
    await _cs(request).rename(request.match_info["id"], request.query.get("name", ""))
    return web.Response(status=204)


async def resize(request: web.Request) -> web.Response:
    await _cs(request).resize(request.match_info["id"], qint(request, "h", 0), qint(request, "w", 0))
    return web.Response(status=200)


async def prune(request: web.Request) -> web.Response:
    return json_response(await _cs(request).prune(qfilters(request)))


async def update(request: web.Request) -> web.Response:
    body = await body_json(request)
    warnings = await _cs(request).update(request.match_info["id"], body)
    return json_response({"Warnings": warnings})


# ---------------------------------------------------------------- attach & logs


async def attach(request: web.Request) -> web.StreamResponse:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    if c.state.status == "paused":
        raise Conflict("You cannot attach to a paused container, unpause it first")
    want_in = qbool(request, "stdin")
    want_out = qbool(request, "stdout")
    want_err = qbool(request, "stderr")
    tty = bool(c.config.get("Tty"))
    logs = qbool(request, "logs")
    stream = qbool(request, "stream")
    client = await hijack(request, multiplexed=not tty)
    cw = client[1]
    if logs:
        drv = svc(request).plugins.log(c.log_driver)
        if drv.can_read:
            async for e in drv.read(cs.log_context(c)):
                if (e.stream == "stdout" and want_out) or (e.stream == "stderr" and want_err):
                    cw.write(e.data if tty else frame(1 if e.stream == "stdout" else 2, e.data))
            await cw.drain()
    if not stream:
        cw.close()
        return web.Response()
    try:
        backend = await cs.attach(c.id, want_in, want_out, want_err)
    except Exception:
        cw.close()
        raise
    await splice(client, backend[:2], stdin=want_in)
    return web.Response()


async def logs(request: web.Request) -> web.StreamResponse:
    s = svc(request)
    cs = s.containers
    c = cs.get(request.match_info["id"])
    want_out = qbool(request, "stdout")
    want_err = qbool(request, "stderr")
    if not (want_out or want_err):
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    drv = s.plugins.log(c.log_driver)
    if not drv.can_read:
        raise InvalidArgument('configured logging driver does not support reading')
    follow = qbool(request, "follow")
    ts = qbool(request, "timestamps")
    tail_q = request.query.get("tail", "all")
    try:
        tail = -1 if tail_q in ("all", "") else int(tail_q)
    except ValueError:
        tail = -1
    since = parse_since(request.query.get("since"))
    until = parse_since(request.query.get("until"))
    tty = bool(c.config.get("Tty"))
    rt = cs.runtime(c)
    follow = follow and c.state.running

    def stopped() -> bool:
        return rt.exited.is_set() or c.id not in cs.containers

    args = dict(since_ns=int(since * 1e9), until_ns=int(until * 1e9), tail=tail,
                follow=follow, stopped=stopped)
    batches = drv.read_batches(cs.log_context(c), **args, with_time=ts)
    # A driver that refuses (no such log, reading disabled) does so on its first entry:
    # wait a moment for it so the refusal is a plain HTTP error, not a broken stream.
    first = asyncio.ensure_future(batches.__anext__())
    done, _ = await asyncio.wait({first}, timeout=0.2)
    if done and first.exception() is not None and \
            not isinstance(first.exception(), StopAsyncIteration):
        raise first.exception()
    resp = web.StreamResponse(headers={
        "Content-Type": "application/vnd.docker.raw-stream" if tty
        else "application/vnd.docker.multiplexed-stream"})
    await resp.prepare(request)
    pack = _FRAME.pack

    def frames(batch: list) -> bytes:
        """A batch of entries as the stream carries them: one stdcopy frame per entry
        (as Docker sends them: clients may rely on an entry per frame), raw with a
        TTY; with the time in front when asked for."""
        if not (want_out and want_err):
            batch = [e for e in batch if (e.stream == "stdout") == want_out]
        if ts:
            datas = [rfc3339(ns=e.time_ns).encode() + b" " + e.data for e in batch]
        else:
            datas = [e.data for e in batch]
        if tty:
            return b"".join(datas)
        return b"".join([pack(1 if e.stream == "stdout" else 2, len(d)) + d
                         for e, d in zip(batch, datas)])

    try:
        try:
            batch = await first
        except StopAsyncIteration:
            pass
        else:
            chunk = frames(batch)
            if chunk:
                await resp.write(chunk)
            async for batch in batches:
                chunk = frames(batch)
                if chunk:
                    await resp.write(chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        return resp
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- processes & files


async def top(request: web.Request) -> web.Response:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    if not c.state.running:
        raise Conflict(f"Container {c.id} is not running")
    from ..runtime import cgroups

    from ..containers import cgroup_path

    pids = await cs.run(cgroups.pids, cgroup_path(c.id))
    args = request.query.get("ps_args") or "-ef"
    if not pids:
        return json_response({"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                              "Processes": []})
    proc = await asyncio.create_subprocess_exec(
        "ps", *args.split(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise InvalidArgument(f"ps: {err.decode().strip()}")
    lines = out.decode().splitlines()
    titles = lines[0].split()
    try:
        pid_col = titles.index("PID")
    except ValueError:
        raise InvalidArgument("Couldn't find PID field in ps output") from None
    procs = []
    want = set(pids)
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > pid_col and fields[pid_col].isdigit() and int(fields[pid_col]) in want:
            procs.append(fields)
    return json_response({"Titles": titles, "Processes": procs})


_STATS_INTERVAL = 1.0  # seconds between two samples, as Docker's collector


def _host_cpu_ns() -> int:
    """The host's total CPU time (all CPUs, all modes) in nanoseconds: Docker's
    ``system_cpu_usage``, the denominator of the CLI's CPU percentage."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]  # user nice system idle iowait irq softirq
    ticks = os.sysconf("SC_CLK_TCK") or 100
    return sum(int(x) for x in fields) * 1_000_000_000 // ticks


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _stats_sample(cgroup: str) -> dict:
    """One sample in Docker's StatsJSON shape (without name, id and the pre* fields)."""
    from ..runtime import cgroups

    st = cgroups.stats(cgroup)
    mem, cpu, pids = st["memory"], st["cpu"], st["pids"]
    return {
        "read": rfc3339(),
        "pids_stats": {"current": pids["current"], **({"limit": pids["limit"]}
                                                       if pids["limit"] else {})},
        "blkio_stats": {k: None for k in (
            "io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
            "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
            "io_time_recursive", "sectors_recursive")},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu["usage_total"],
                          "percpu_usage": cpu["percpu"] or None,
                          "usage_in_kernelmode": cpu["usage_system"],
                          "usage_in_usermode": cpu["usage_user"]},
            "system_cpu_usage": _host_cpu_ns(),
            "online_cpus": os.cpu_count() or 1,
            "throttling_data": cpu["throttling"],
        },
        "memory_stats": {"usage": mem["usage"], "max_usage": mem["max_usage"],
                         "stats": mem["stats"], "limit": mem["limit"] or _host_memory()},
    }


_EMPTY_CPU = {
    "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
    "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
}


async def stats(request: web.Request) -> web.StreamResponse:
    """``docker stats``: one JSON object per second (``stream``, the default), or one
    object whose ``precpu_stats`` is a second older (``stream=0``), or a single
    sample at once (``stream=0&one-shot=1``). A container that is not running has
    zeroed stats, as in Docker."""
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    stream = qbool(request, "stream", True)
    one_shot = qbool(request, "one-shot") and not stream
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    pre_cpu: dict = _EMPTY_CPU
    pre_read = ZERO_TIME
    first = True
    try:
        while True:
            if c.state.status == "running" and c.id in cs.containers:
                sample = await cs.run(_stats_sample, f"engine/{c.id}")
            else:
                sample = {"read": ZERO_TIME, "cpu_stats": _EMPTY_CPU,
                          "memory_stats": {}, "pids_stats": {}, "blkio_stats": {}}
                if not stream:
                    first = False  # nothing to prime
            out = {**sample, "preread": pre_read, "precpu_stats": pre_cpu,
                   "name": c.name, "id": c.id}
            pre_cpu, pre_read = sample["cpu_stats"], sample["read"]
            if stream or one_shot or not first:
                await resp.write(encode(out) + b"\n")
                if not stream:
                    break
            first = False
            await asyncio.sleep(_STATS_INTERVAL)
    except (ConnectionResetError, asyncio.CancelledError):
        return resp
    await resp.write_eof()
    return resp


async def changes(request: web.Request) -> web.Response:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    items = await cs.run(cs.layers.changes, c.id)
    return json_response([{"Path": p, "Kind": k} for p, k in items] or None)


async def export(request: web.Request) -> web.StreamResponse:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    resp = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
    await resp.prepare(request)
    await archive.stream_from_thread(resp, lambda w: cs.layers.export(c.id, w))
    await resp.write_eof()
    return resp


async def archive_head(request: web.Request) -> web.Response:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    path = request.query.get("path") or ""
    if not path:
        raise InvalidArgument("path must not be empty")
    stat = await cs.run(archive.stat_path, cs, c, path)
    return web.Response(headers={"X-Docker-Container-Path-Stat":
                                 base64.b64encode(json.dumps(stat).encode()).decode()})


async def archive_get(request: web.Request) -> web.StreamResponse:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    path = request.query.get("path") or ""
    if not path:
        raise InvalidArgument("path must not be empty")
    stat = await cs.run(archive.stat_path, cs, c, path)
    resp = web.StreamResponse(headers={
        "Content-Type": "application/x-tar",
        "X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(stat).encode()).decode()})
    await resp.prepare(request)
    await archive.stream_from_thread(resp, lambda w: archive.tar_path(cs, c, path, w))
    await resp.write_eof()
    return resp


async def archive_put(request: web.Request) -> web.Response:
    cs = _cs(request)
    c = cs.get(request.match_info["id"])
    path = request.query.get("path") or ""
    if not path:
        raise InvalidArgument("path must not be empty")
    await archive.extract_to(cs, c, path, request.content,
                             no_overwrite_dir_non_dir=qbool(request, "noOverwriteDirNonDir"))
    return web.Response(status=200)


ROUTES = [
    ("GET", "/containers/json", list_),
    ("POST", "/containers/create", create),
    ("POST", "/containers/prune", prune),
    ("GET", "/containers/{id}/json", inspect),
    ("POST", "/containers/{id}/start", start),
    ("POST", "/containers/{id}/stop", stop),
    ("POST", "/containers/{id}/restart", restart),
    ("POST", "/containers/{id}/kill", kill),
    ("POST", "/containers/{id}/pause", pause),
    ("POST", "/containers/{id}/unpause", unpause),
    ("POST", "/containers/{id}/wait", wait),
    ("DELETE", "/containers/{id}", remove),
    ("POST", "/containers/{id}/rename", rename),
    ("POST", "/containers/{id}/resize", resize),
    ("POST", "/containers/{id}/update", update),
    ("POST", "/containers/{id}/attach", attach),
    ("GET", "/containers/{id}/logs", logs),
    ("GET", "/containers/{id}/top", top),
    ("GET", "/containers/{id}/stats", stats),
    ("GET", "/containers/{id}/changes", changes),
    ("GET", "/containers/{id}/export", export),
    ("HEAD", "/containers/{id}/archive", archive_head),
    ("GET", "/containers/{id}/archive", archive_get),
    ("PUT", "/containers/{id}/archive", archive_put),
]
