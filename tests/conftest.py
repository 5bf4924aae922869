"""Fixtures shared by every test layer.

The test image is built here from Debian's busybox-static: a rootfs with busybox and
its applets, /etc/passwd and /etc/group (root, nobody, and ``app`` uid 1000). No test
reaches the internet.
"""
from __future__ import annotations

import json as _json
import os
import secrets as _secrets
import shutil
import signal as _signal
import socket as _socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import busybox_rootfs as _bbx  # noqa: E402  (scripts/busybox_rootfs.py, standard library only)

PASSWD = _bbx.PASSWD
GROUP = _bbx.GROUP


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root and a real kernel")


def build_busybox_tar(path: Path) -> Path:
    """Write a rootfs tar of busybox to ``path`` (uncompressed) and return it."""
    try:
        return _bbx.build_busybox_tar(path)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory) -> Path:
    """An uncompressed rootfs tar of busybox (bin/, etc/passwd, etc/group, tmp/)."""
    return build_busybox_tar(tmp_path_factory.mktemp("img") / "busybox.tar")


@pytest.fixture(scope="session")
def busybox_rootfs(busybox_tar, tmp_path_factory) -> Path:
    """The same rootfs unpacked into a directory (read-only use: copy it to modify)."""
    root = tmp_path_factory.mktemp("rootfs") / "busybox"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(busybox_tar), "-C", str(root)], check=True)
    return root


# ---------------------------------------------------------------- a real daemon


REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class Daemon:
    """An ``engined`` of our own on a temporary socket, data root and exec root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = str(base / "engine.sock")
        self.host = f"unix://{self.sock}"
        self.data_root = str(base / "data")
        self.exec_root = str(base / "run")
        self.log_path = base / "daemon.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        env["ENGINE_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        env["DOCKER_CONFIG"] = str(self.base / "docker-config")
        return env

    def start(self, *extra: str, timeout: float = 15.0) -> "Daemon":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "engine.core.daemon", "-H", self.host, "--data-root", self.data_root,
             "--exec-root", self.exec_root, *extra],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engined exited: {self.log_path.read_text()[-3000:]}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"engined did not answer: {self.log_path.read_text()[-3000:]}")

    def ping(self) -> bool:
        try:
            return self.request("GET", "/_ping")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | dict | None = None,
                timeout: float = 60) -> tuple[int, bytes]:
        """A minimal HTTP/1.1 request over the unix socket (Connection: close)."""
        if isinstance(body, dict):
            body = _json.dumps(body).encode()
        s = _socket.socket(_socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(self.sock)
        try:
            head = (f"{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n"
                    f"Content-Length: {len(body or b'')}\r\n")
            if body is not None:
                head += "Content-Type: application/json\r\n"
            s.sendall(head.encode() + b"\r\n" + (body or b""))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        finally:
            s.close()
        header, _, rest = data.partition(b"\r\n\r\n")
        status = int(header.split()[1])
        if b"transfer-encoding: chunked" in header.lower():
            out = b""
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                n = int(size_line, 16)
                if n == 0:
                    break
                out += rest[:n]
                rest = rest[n + 2:]
            rest = out
        return status, rest

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def cleanup(self) -> None:
        """Stop the daemon's containers (their monitors outlive it), then unmount and
        delete everything under the base directory."""
        if self.proc and self.proc.poll() is None:
            try:
                status, body = self.request("GET", "/containers/json?all=1", timeout=10)
                for c in _json.loads(body) if status == 200 else []:
                    self.request("DELETE", f"/containers/{c['Id']}?force=1&v=1", timeout=20)
            except (OSError, ValueError):
                pass
        self.stop()
        # anything left (a test that killed the daemon): kill monitors by their pid files
        for pidfile in Path(self.exec_root).glob("*/*/monitor.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), _signal.SIGKILL)
            except (ValueError, OSError):
                pass
        for pidfile in Path(self.exec_root).glob("*/*/pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), _signal.SIGKILL)
            except (ValueError, OSError):
                pass
        mounts = []
        with open("/proc/self/mounts") as f:
            for line in f:
                target = line.split()[1].replace("\\040", " ")
                if target.startswith(str(self.base)):
                    mounts.append(target)
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
        for cg in Path("/sys/fs/cgroup").glob("*/engine"):
            pass  # containers' cgroups are removed by their monitors
        shutil.rmtree(self.base, ignore_errors=True)


def new_daemon_dir() -> Path:
    # short: unix socket paths are limited to 108 bytes
    base = Path("/tmp") / f"eng-{_secrets.token_hex(4)}"
    base.mkdir(mode=0o700)
    return base


def import_busybox(daemon: Daemon, tar: Path, ref: str = "busybox:latest") -> str:
    repo, _, tag = ref.partition(":")
    status, body = daemon.request(
        "POST", f"/images/create?fromSrc=-&repo={repo}&tag={tag or 'latest'}"
        "&changes=CMD%20%5B%22sh%22%5D", tar.read_bytes())
    assert status == 200, body
    return _json.loads(body.splitlines()[-1])["status"]


def _daemon_with_busybox(busybox_tar: Path):
    """Start a daemon of its own, import ``busybox:latest``, yield it, clean it up."""
    if not is_root():
        pytest.skip("needs root and a real kernel")
    d = Daemon(new_daemon_dir()).start()
    try:
        import_busybox(d, busybox_tar)
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="session")
def engine_daemon(busybox_tar):
    """A daemon for the whole session, with ``busybox:latest`` imported."""
    yield from _daemon_with_busybox(busybox_tar)


@pytest.fixture
def fresh_daemon(busybox_tar):
    """A daemon of the test's own (for restart and kill tests), with busybox imported."""
    yield from _daemon_with_busybox(busybox_tar)


DOCKER = shutil.which("docker")


@pytest.fixture
def docker(engine_daemon):
    """Run the real ``docker`` CLI against the session daemon."""
    if not DOCKER:
        pytest.skip("the docker CLI is not installed")

    def run(*args: str, input: bytes | None = None, timeout: float = 60, check: bool = False):
        p = subprocess.run([DOCKER, *args], input=input, capture_output=True,
                           env=engine_daemon.env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {p.returncode}\n"
                                 f"{p.stdout.decode()}\n{p.stderr.decode()}")
        return p

    return run
