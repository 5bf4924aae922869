"""A Docker volume plugin, standard library only, run as a managed plugin.

It listens on ``/run/docker/plugins/volume.sock`` (the daemon bind-mounts its own
socket directory there) and answers Docker's ``VolumeDriver`` protocol. A volume is
a directory under ``$VOLUME_ROOT`` (``/data/volumes``); ``/data`` is the plugin's
``PropagatedMount``, a host directory, so the mount points it answers are host paths
once the daemon translates them. A volume created with ``-o type=tmpfs`` is a tmpfs
the plugin mounts there itself (it has ``CAP_SYS_ADMIN``): the mount reaches the host
through the propagated mount, as a remote filesystem would for a real plugin, and is
gone with the volume, or when the plugin stops. Its state is the directory listing:
nothing to lose on a restart.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socketserver
import sys
from http.server import BaseHTTPRequestHandler

SOCKET = "/run/docker/plugins/volume.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
ROOT = os.environ.get("VOLUME_ROOT", "/data/volumes")


def _path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid volume name {name!r}")
    return os.path.join(ROOT, name)


def _volume(name: str) -> dict:
    return {"Name": name, "Mountpoint": _path(name), "Status": {}}


def activate(_body: dict) -> dict:
    return {"Implements": ["VolumeDriver"]}


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _mount_tmpfs(path: str, size: str) -> None:
    data = f"size={size},mode=0755".encode()
    if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def create(body: dict) -> dict:
    path = _path(body["Name"])
    opts = body.get("Opts") or {}
    kind = opts.get("type", "dir")
    if kind not in ("dir", "tmpfs"):
        return {"Err": f"unknown volume type {kind!r} (dir or tmpfs)"}
    os.makedirs(path, exist_ok=True)
    if kind == "tmpfs" and not os.path.ismount(path):
        try:
            _mount_tmpfs(path, opts.get("size", "64m"))
        except OSError as e:
            os.rmdir(path)
            return {"Err": str(e)}
    return {"Err": ""}


def remove(body: dict) -> dict:
    path = _path(body["Name"])
    if not os.path.isdir(path):
        return {"Err": f"no such volume: {body['Name']}"}
    if os.path.ismount(path) and _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        return {"Err": f"unmount {path}: {os.strerror(ctypes.get_errno())}"}
    shutil.rmtree(path)
    return {"Err": ""}


def mount(body: dict) -> dict:
    path = _path(body["Name"])
    if not os.path.isdir(path):
        return {"Err": f"no such volume: {body['Name']}"}
    return {"Mountpoint": path, "Err": ""}


def unmount(body: dict) -> dict:
    return {"Err": ""}


def get(body: dict) -> dict:
    if not os.path.isdir(_path(body["Name"])):
        return {"Err": f"no such volume: {body['Name']}"}
    return {"Volume": _volume(body["Name"]), "Err": ""}


def list_(_body: dict) -> dict:
    names = sorted(os.listdir(ROOT)) if os.path.isdir(ROOT) else []
    return {"Volumes": [_volume(n) for n in names], "Err": ""}


def capabilities(_body: dict) -> dict:
    return {"Capabilities": {"Scope": "local"}}


METHODS = {
    "/Plugin.Activate": activate,
    "/VolumeDriver.Create": create,
    "/VolumeDriver.Remove": remove,
    "/VolumeDriver.Mount": mount,
    "/VolumeDriver.Path": mount,
    "/VolumeDriver.Unmount": unmount,
    "/VolumeDriver.Get": get,
    "/VolumeDriver.List": list_,
    "/VolumeDriver.Capabilities": capabilities,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # a unix socket has no peer address
        return "daemon"

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's naming)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        method = METHODS.get(self.path)
        if method is None:
            status, answer = 404, {"Err": f"unknown method {self.path}"}
        else:
            try:
                status, answer = 200, method(json.loads(raw or b"{}") or {})
            except (ValueError, KeyError, OSError) as e:
                status, answer = 500, {"Err": str(e)}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"volume plugin: {format % args}\n")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> None:
    os.makedirs(ROOT, exist_ok=True)
    if os.path.exists(SOCKET):
        os.unlink(SOCKET)
    server = Server(SOCKET, Handler)
    # the plugin is its namespace's init: without a handler SIGTERM would be ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"volume plugin: serving on {SOCKET}, volumes in {ROOT}", flush=True)
    try:
        server.serve_forever()
    finally:
        os.unlink(SOCKET)


if __name__ == "__main__":
    main()
