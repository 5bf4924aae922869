"""Pull and push progress as users see it, and the pushed gzip read by a Go decoder: a
real daemon, ``engine registry serve`` on loopback, the ``docker`` and ``engine`` CLIs
on a pseudo-terminal (bars redrawn in place) and on a pipe (plain lines), and skopeo
decompressing the layers engine compressed."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tarfile
import termios
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import Daemon, needs_root, new_daemon_dir
from test_registry_peers import engine_registry

pytestmark = [pytest.mark.root, needs_root]

DOCKER = shutil.which("docker")
SKOPEO = shutil.which("skopeo")
ENGINE = str(Path(sys.executable).with_name("engine"))


def on_terminal(argv: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` on a 160-column pseudo-terminal; return its status and output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not data:
                break
            out += data
        return proc.wait(timeout=10), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def mixed_rootfs(seed: int) -> bytes:
    """A 3 MB layer: random bytes (stored by the encoder) and text (deflated)."""
    rnd = random.Random(seed)
    files = {"random.bin": rnd.randbytes(1_500_000),
             "words.txt": b"".join(b"%d lorem ipsum dolor sit amet\n" % i
                                   for i in range(60_000))}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_image(daemon, ref: str, tar: bytes) -> None:
    repo, _, tag = ref.rpartition(":")
    q = urllib.parse.urlencode({"fromSrc": "-", "repo": repo, "tag": tag})
    status, body = daemon.request("POST", f"/images/create?{q}", tar)
    assert status == 200, body


@pytest.fixture
def registry(tmp_path):
    reg = engine_registry(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def puller():
    """A second, empty daemon to pull into (the pushing one keeps the blobs it sent)."""
    d = Daemon(new_daemon_dir()).start()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.mark.clients
@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_docker_and_engine_cli_show_progress_bars_on_a_terminal(fresh_daemon, puller,
                                                                 registry):
    ref = f"{registry.host}/progress/img:v1"
    import_image(fresh_daemon, ref, mixed_rootfs(1))
    env = fresh_daemon.env
    code, out = on_terminal([DOCKER or "docker", "push", ref], env)
    assert code == 0, out
    assert "\x1b[" in out and ": Pushed" in out and "v1: digest: sha256:" in out
    # docker draws its own bars from the daemon's progressDetail
    code, out = on_terminal([DOCKER or "docker", "pull", ref], puller.env)
    assert code == 0, out
    assert "Downloading [" in out and "MB" in out and "Pull complete" in out

    tagged = f"{registry.host}/progress/img:v2"
    assert subprocess.run([ENGINE, "tag", ref, tagged], env=env).returncode == 0
    assert subprocess.run([ENGINE, "push", tagged], env=env, capture_output=True).returncode == 0
    fresh = Daemon(new_daemon_dir()).start()
    try:
        code, out = on_terminal([ENGINE, "pull", tagged], fresh.env)
    finally:
        fresh.cleanup()
    assert code == 0, out
    assert "\x1b[1A" in out and "\x1b[2K" in out
    assert "Downloading [" in out and "Pull complete" in out
    assert out.rstrip().endswith(tagged)


def test_engine_cli_prints_plain_lines_on_a_pipe(fresh_daemon, puller, registry):
    ref = f"{registry.host}/progress/plain:v1"
    import_image(fresh_daemon, ref, mixed_rootfs(2))
    env = fresh_daemon.env
    push = subprocess.run([ENGINE, "push", ref], env=env, capture_output=True, text=True,
                          timeout=120)
    assert push.returncode == 0, push.stderr
    assert "\x1b" not in push.stdout
    layer_lines = [line for line in push.stdout.splitlines() if ": " in line and
                   not line.startswith(("The push", "v1:"))]
    assert [line.split(": ", 1)[1] for line in layer_lines] == ["Preparing", "Pushed"]
    pull = subprocess.run([ENGINE, "pull", ref], env=puller.env, capture_output=True,
                          text=True, timeout=120)
    assert pull.returncode == 0, pull.stderr
    assert "\x1b" not in pull.stdout and "Downloading" not in pull.stdout
    statuses = [line.split(": ", 1)[1] for line in pull.stdout.splitlines()
                if line[:12].isalnum() and len(line.split(": ", 1)[0]) == 12]
    assert statuses == ["Pulling fs layer", "Verifying Checksum", "Download complete",
                        "Extracting", "Pull complete"]


@pytest.mark.clients
@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")
def test_go_decodes_the_layers_engine_compressed(fresh_daemon, registry, tmp_path):
    """skopeo (Go's gzip reader) decompresses what the daemon's encoder wrote, and the
    result hashes to the layer's diff id."""
    ref = f"{registry.host}/progress/go:v1"
    tar = mixed_rootfs(3)
    import_image(fresh_daemon, ref, tar)
    status, body = fresh_daemon.request("POST", f"/images/{ref.rsplit(':', 1)[0]}/push?tag=v1")
    assert status == 200 and b'"error"' not in body, body
    dest = tmp_path / "copy"
    copy = subprocess.run([SKOPEO or "skopeo", "--insecure-policy", "copy",
                           "--src-tls-verify=false", "--dest-decompress", f"docker://{ref}",
                           f"dir:{dest}"], capture_output=True, text=True, timeout=120)
    assert copy.returncode == 0, copy.stderr
    manifest = json.loads((dest / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    data = (dest / layer["digest"].removeprefix("sha256:")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(tar).hexdigest()
