"""A real daemon pulling and pushing through the API (also killed in the middle of a
pull), and the ``docker`` CLI's pull, push and login against engine with ``engine
registry serve`` (loopback only)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from aiohttp import web
from conftest import Daemon, needs_root, new_daemon_dir
from engine.registry.htpasswd import bcrypt_hash
from engine.registry.server import Settings, make_app
from test_registry_peers import engine_registry

pytestmark = [pytest.mark.root, needs_root]

DOCKER = shutil.which("docker")


@pytest.fixture
def registry(tmp_path):
    reg = engine_registry(tmp_path / "registry")
    yield reg
    reg.stop()


def lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def test_daemon_pushes_and_pulls_through_the_api(fresh_daemon, registry):
    d = fresh_daemon
    repo = f"{registry.host}/busybox"
    q = urllib.parse.urlencode({"repo": repo, "tag": "latest"})
    assert d.request("POST", f"/images/busybox:latest/tag?{q}")[0] == 201
    status, body = d.request("POST", f"/images/{repo}/push?tag=latest")
    assert status == 200, body
    pushed = lines(body)
    assert not [m for m in pushed if "error" in m], pushed
    digest = pushed[-1]["aux"]["Digest"]
    # without a tag every local tag of the repository is pushed
    q = urllib.parse.urlencode({"repo": repo, "tag": "extra"})
    assert d.request("POST", f"/images/busybox:latest/tag?{q}")[0] == 201
    status, body = d.request("POST", f"/images/{repo}/push")
    tags = sorted(m["aux"]["Tag"] for m in lines(body) if "aux" in m)
    assert status == 200 and tags == ["extra", "latest"], body
    image_id = json.loads(d.request("GET", "/images/busybox/json")[1])["Id"]
    # a second daemon, with nothing in its stores, pulls it
    other = Daemon(new_daemon_dir()).start()
    try:
        check_pull(other, repo, digest, image_id)
    finally:
        other.cleanup()


def check_pull(d: Daemon, repo: str, digest: str, image_id: str) -> None:
    status, body = d.request(
        "POST", f"/images/create?fromImage={urllib.parse.quote(repo)}&tag=latest")
    assert status == 200, body
    pulled = lines(body)
    statuses = [m.get("status") for m in pulled]
    assert "Pulling fs layer" in statuses and "Pull complete" in statuses
    assert statuses[-2:] == [f"Digest: {digest}",
                             f"Status: Downloaded newer image for {repo}:latest"]
    layer = next(m for m in pulled if m.get("status") == "Pulling fs layer")
    assert layer["progressDetail"] == {} and len(layer["id"]) == 12
    status, body = d.request("GET", f"/images/{repo}:latest/json")
    info = json.loads(body)
    assert info["Id"] == image_id
    assert info["RepoTags"] == [f"{repo}:latest"]
    assert info["RepoDigests"] == [f"{repo}@{digest}"]
    # the registry's description of it
    status, body = d.request("GET", f"/distribution/{repo}:latest/json")
    assert status == 200 and json.loads(body)["Descriptor"]["digest"] == digest


def test_pull_errors_before_and_inside_the_stream(fresh_daemon, tmp_path):
    tamper = {"on": False}

    storage = Settings(tmp_path / "reg").storage

    @web.middleware
    async def corrupt(request, handler):
        """While ``tamper["on"]``, every blob comes back as zeros of the right length."""
        if tamper["on"] and request.method == "GET" and "/blobs/sha256:" in request.path:
            digest = request.path.rsplit("/", 1)[1]
            return web.Response(body=bytes(storage.blob_path(digest).stat().st_size))
        return await handler(request)

    reg = ThreadedRegistry(tmp_path / "reg", corrupt)
    d = fresh_daemon
    try:
        status, body = d.request("POST", f"/images/create?fromImage={reg.host}/nothing&tag=x")
        assert status == 404, body
        assert "not found" in json.loads(body)["message"]
        status, body = d.request("POST", "/images/nothing-local/push")
        assert status == 404
        # a corrupted blob is found once the stream has started: its last line says so
        q = urllib.parse.urlencode({"repo": f"{reg.host}/bb", "tag": "v1"})
        assert d.request("POST", f"/images/busybox/tag?{q}")[0] == 201
        assert "aux" in lines(d.request("POST", f"/images/{reg.host}/bb/push?tag=v1")[1])[-1]
        tamper["on"] = True
        status, body = d.request("POST", f"/images/create?fromImage={reg.host}/bb&tag=v2")
        assert status == 404  # no such tag: still before the stream
        assert d.request("POST", f"/images/{reg.host}/bb:v1/tag?repo={reg.host}/bb&tag=v2"
                         )[0] == 201
        assert "aux" in lines(d.request("POST", f"/images/{reg.host}/bb/push?tag=v2")[1])[-1]
        assert d.request("DELETE", f"/images/{reg.host}/bb:v2")[0] == 200
        status, body = d.request("POST", f"/images/create?fromImage={reg.host}/bb&tag=v2")
        assert status == 200
        last = lines(body)[-1]
        assert "digest mismatch" in last["error"] and last["errorDetail"]["message"]
        assert d.request("GET", f"/images/{reg.host}/bb:v2/json")[0] == 404
    finally:
        reg.stop()


@pytest.mark.parametrize("auth", [(), ("--token",)], ids=["basic", "token"])
def test_auth_checks_credentials_against_the_registry(fresh_daemon, tmp_path, auth):
    """Login, push and pull through the daemon (raw API and docker-py) against a
    registry that wants basic credentials, or bearer tokens from its token service."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"bob:{bcrypt_hash('pw')}\n")
    reg = engine_registry(tmp_path / "reg", "--htpasswd", str(htpasswd), *auth)
    try:
        ok = fresh_daemon.request("POST", "/auth", {"username": "bob", "password": "pw",
                                                    "serveraddress": reg.host})
        assert ok[0] == 200 and json.loads(ok[1]) == {"Status": "Login Succeeded",
                                                     "IdentityToken": ""}
        bad = fresh_daemon.request("POST", "/auth", {"username": "bob", "password": "no",
                                                     "serveraddress": reg.host})
        assert bad[0] == 401, bad
        # push with X-Registry-Auth: the fixture's request() has no headers, so use a
        # raw request over the socket
        repo = f"{reg.host}/private"
        q = urllib.parse.urlencode({"repo": repo, "tag": "v1"})
        assert fresh_daemon.request("POST", f"/images/busybox/tag?{q}")[0] == 201
        status, body = fresh_daemon.request("POST", f"/images/{repo}/push?tag=v1")
        assert status == 401 or any("error" in m for m in lines(body))
        header = base64.urlsafe_b64encode(json.dumps(
            {"username": "bob", "password": "pw", "serveraddress": reg.host}).encode()).decode()
        status, body = raw_request(fresh_daemon, "POST", f"/images/{repo}/push?tag=v1",
                                   {"X-Registry-Auth": header})
        assert status == 200 and "aux" in lines(body)[-1], body
        docker_py_login_and_pull(fresh_daemon, reg.host, repo)
    finally:
        reg.stop()


def docker_py_login_and_pull(daemon, host: str, repo: str) -> None:
    """docker-py's login, and a pull with auth_config, against the same registry."""
    docker_py = pytest.importorskip("docker")
    anonymous = docker_py.DockerClient(base_url=daemon.host, version="1.41")
    client = docker_py.DockerClient(base_url=daemon.host, version="1.41")
    try:
        with pytest.raises(docker_py.errors.APIError):
            client.login(username="bob", password="wrong", registry=host, reauth=True)
        assert client.login(username="bob", password="pw", registry=host,
                            reauth=True)["Status"] == "Login Succeeded"
        client.images.remove(f"{repo}:v1")
        with pytest.raises(docker_py.errors.APIError):
            anonymous.images.pull(repo, tag="v1")
        img = anonymous.images.pull(repo, tag="v1", auth_config={"username": "bob",
                                                                 "password": "pw"})
        assert f"{repo}:v1" in img.tags
        client.images.remove(f"{repo}:v1")
        assert f"{repo}:v1" in client.images.pull(repo, tag="v1").tags  # login's credentials
    finally:
        client.close()
        anonymous.close()


def raw_request(daemon, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(daemon.sock)
    head = f"{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n" \
           "Content-Length: 0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(head.encode() + b"\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    header, _, rest = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in header.lower():
        out = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        rest = out
    return int(header.split()[1]), rest


@pytest.mark.clients
@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_docker_cli_push_pull_login_and_run(fresh_daemon, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt_hash('secret')}\n")
    reg = engine_registry(tmp_path / "reg", "--htpasswd", str(htpasswd))
    env = fresh_daemon.env

    def docker(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER or "docker", *args], input=input, capture_output=True,
                              env=env, timeout=120)

    try:
        repo = f"{reg.host}/tools/busybox"
        assert docker("tag", "busybox", f"{repo}:1").returncode == 0
        denied = docker("push", f"{repo}:1")
        assert denied.returncode != 0
        login = docker("login", reg.host, "-u", "alice", "--password-stdin", input=b"secret\n")
        assert login.returncode == 0, login.stderr
        assert b"Login Succeeded" in login.stdout
        push = docker("push", f"{repo}:1")
        assert push.returncode == 0, push.stderr
        assert b"1: digest: sha256:" in push.stdout
        assert docker("rmi", f"{repo}:1").returncode == 0
        pull = docker("pull", f"{repo}:1")
        assert pull.returncode == 0, pull.stderr
        assert f"Downloaded newer image for {repo}:1".encode() in pull.stdout
        run = docker("run", "--rm", f"{repo}:1", "echo", "pulled")
        assert run.returncode == 0, run.stderr
        assert run.stdout == b"pulled\n"
        again = docker("pull", f"{repo}:1")
        assert f"Image is up to date for {repo}:1".encode() in again.stdout
    finally:
        reg.stop()


class ThreadedRegistry:
    """``engine.registry.server`` in a thread of the test, so a test can slow it down."""

    def __init__(self, root, middleware=None) -> None:
        self.loop = asyncio.new_event_loop()
        app = make_app(Settings(root))
        if middleware is not None:
            app.middlewares.append(middleware)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.host = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def random_rootfs_tar(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("data.bin")
        info.size = size
        tf.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def test_pull_killed_midway_resumes_after_restart(fresh_daemon, tmp_path):
    slow = {"on": False, "ranges": []}
    storage = Settings(tmp_path / "reg").storage

    @web.middleware
    async def throttle(request, handler):
        """While ``slow["on"]``, blob downloads trickle out at ~1 MB/s."""
        if request.method != "GET" or "/blobs/sha256:" not in request.path:
            return await handler(request)
        slow["ranges"].append(request.headers.get("Range"))
        if not slow["on"]:
            return await handler(request)
        path = storage.blob_path(request.path.rsplit("/", 1)[1])
        stream = web.StreamResponse(headers={"Content-Length": str(path.stat().st_size)})
        await stream.prepare(request)
        with open(path, "rb") as f:
            while chunk := f.read(64 * 1024):
                await stream.write(chunk)
                await asyncio.sleep(0.06)
        return stream

    reg = ThreadedRegistry(tmp_path / "reg", throttle)
    puller = Daemon(new_daemon_dir()).start()
    try:
        d = fresh_daemon
        repo = f"{reg.host}/big"
        status, body = d.request("POST", f"/images/create?fromSrc=-&repo={repo}&tag=v1",
                                 random_rootfs_tar(3_000_000))
        assert status == 200, body
        status, body = d.request("POST", f"/images/{repo}/push?tag=v1")
        assert status == 200 and "aux" in lines(body)[-1], body

        slow["on"] = True
        downloads = Path(puller.data_root) / "registry" / "downloads"
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=_try_pull(puller, repo)))
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partials = list(downloads.glob("*.partial")) if downloads.is_dir() else []
            if partials and partials[0].stat().st_size > 500_000:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the pull never started writing its download")
        puller.stop(signal.SIGKILL)
        t.join(30)
        kept = partials[0].stat().st_size
        assert 500_000 <= kept < 3_000_000

        slow["on"] = False
        puller.start()
        status, body = puller.request("GET", f"/images/{repo}:v1/json")
        assert status == 404  # no tag for an image that is not there
        status, body = puller.request("POST", f"/images/create?fromImage={repo}&tag=v1")
        assert status == 200 and lines(body)[-1]["status"].startswith("Status: Downloaded"), body
        assert slow["ranges"][-1] == f"bytes={kept}-"
        assert not list(downloads.glob("*.partial"))
        status, body = puller.request("GET", f"/images/{repo}:v1/json")
        assert status == 200
    finally:
        puller.cleanup()
        reg.stop()


def _try_pull(daemon, repo: str):
    try:
        return daemon.request("POST", f"/images/create?fromImage={repo}&tag=v1", timeout=60)
    except OSError as exc:
        return exc


@needs_root
def test_insecure_registries_from_flags_and_config_file_reach_docker_info(tmp_path):
    docker = shutil.which("docker")
    if not docker:
        pytest.skip("the docker CLI is not installed")
    conf = tmp_path / "daemon.json"
    conf.write_text(json.dumps({"insecure-registries": ["10.77.0.0/16"]}))
    d = Daemon(new_daemon_dir()).start("--config-file", str(conf),
                                       "--insecure-registry", "reg.test:5000")
    try:
        p = subprocess.run([docker, "info", "--format", "{{json .RegistryConfig}}"],
                           env=d.env, capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
        rc = json.loads(p.stdout)
        assert rc["InsecureRegistryCIDRs"] == ["127.0.0.0/8", "10.77.0.0/16"]
        assert rc["IndexConfigs"]["reg.test:5000"]["Secure"] is False
    finally:
        d.cleanup()
    bad = Daemon(new_daemon_dir())
    with pytest.raises(RuntimeError, match="invalid insecure registry"):
        bad.start("--insecure-registry", "not a host")
    bad.cleanup()
