"""``docker volume create -d local -o type=... -o device=... -o o=...`` on the real
kernel, through a daemon of the test's own and the docker CLI: the filesystem is
mounted on the volume's ``_data`` only while containers use it."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import DOCKER, needs_root

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def daemon(fresh_daemon):
    if not DOCKER:
        pytest.skip("the docker CLI is not installed")
    return fresh_daemon


def docker(daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True,
                          env=daemon.env, timeout=timeout)


def ok(daemon, *args: str) -> str:
    r = docker(daemon, *args)
    assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"
    return r.stdout


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def inspect(daemon, name: str) -> dict:
    return json.loads(ok(daemon, "volume", "inspect", name))[0]


def test_tmpfs_volume_is_mounted_only_while_used(daemon):
    ok(daemon, "volume", "create", "-d", "local", "-o", "type=tmpfs", "-o", "device=tmpfs",
       "-o", "o=size=16m", "tv")
    info = inspect(daemon, "tv")
    assert info["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=16m"}
    data = info["Mountpoint"]
    assert not mounted(data)

    out = ok(daemon, "run", "--rm", "-v", "tv:/data", "busybox", "sh", "-c",
             "df -h /data | tail -1; echo kept > /data/f; cat /data/f")
    assert out.split()[1] == "16.0M", out
    assert out.endswith("kept\n")
    assert not mounted(data)

    # two users: the second sees the first's files; the last one out unmounts
    ok(daemon, "run", "-d", "--name", "holder", "-v", "tv:/data", "busybox", "sh", "-c",
       "echo shared > /data/s; sleep 60")
    try:
        out = ok(daemon, "run", "--rm", "-v", "tv:/data", "busybox", "sh", "-c",
                 "sleep 0.2; cat /data/s")
        assert out == "shared\n"
        assert mounted(data)  # still held by the first container
    finally:
        ok(daemon, "rm", "-f", "holder")
    assert not mounted(data)

    # the data went with the last unmount
    r = docker(daemon, "run", "--rm", "-v", "tv:/data", "busybox", "ls", "-A", "/data")
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr

    # the options survive a daemon restart
    daemon.stop()
    daemon.start()
    assert inspect(daemon, "tv")["Options"]["type"] == "tmpfs"
    out = ok(daemon, "run", "--rm", "-v", "tv:/data", "busybox", "sh", "-c",
             "df -h /data | tail -1")
    assert out.split()[1] == "16.0M", out
    ok(daemon, "volume", "rm", "tv")
    assert not Path(data).exists()


def test_bind_volume_shows_a_host_directory_both_ways(daemon, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "from-host").write_text("hello\n")
    ok(daemon, "volume", "create", "-o", "type=none", "-o", "o=bind", "-o", f"device={host}",
       "bv")
    out = ok(daemon, "run", "--rm", "-v", "bv:/data", "busybox", "sh", "-c",
             "cat /data/from-host; echo back > /data/from-ctr")
    assert out == "hello\n"
    assert (host / "from-ctr").read_text() == "back\n"
    data = inspect(daemon, "bv")["Mountpoint"]
    assert not mounted(data)
    # removing the volume leaves the host directory as it was
    ok(daemon, "volume", "rm", "bv")
    assert sorted(p.name for p in host.iterdir()) == ["from-ctr", "from-host"]


def test_read_only_bind_volume(daemon, tmp_path):
    host = tmp_path / "ro"
    host.mkdir()
    ok(daemon, "volume", "create", "-o", "type=none", "-o", "o=bind,ro", "-o",
       f"device={host}", "rov")
    r = docker(daemon, "run", "--rm", "-v", "rov:/data", "busybox", "touch", "/data/x")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert not (host / "x").exists()
    ok(daemon, "volume", "rm", "rov")


@pytest.fixture
def loop_device(tmp_path):
    """An ext4 image in tmp_path, attached to a free loop device."""
    if not (shutil.which("mkfs.ext4") and shutil.which("losetup")):
        pytest.skip("mkfs.ext4 or losetup is missing")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    r = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no loop device: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_ext4_volume_on_a_loop_device_keeps_its_data(daemon, loop_device):
    ok(daemon, "volume", "create", "-o", "type=ext4", "-o", f"device={loop_device}", "xv")
    data = inspect(daemon, "xv")["Mountpoint"]
    out = ok(daemon, "run", "--rm", "-v", "xv:/data", "busybox", "sh", "-c",
             "ls /data; echo persistent > /data/f")
    assert "lost+found" in out
    assert not mounted(data)
    assert ok(daemon, "run", "--rm", "-v", "xv:/data", "busybox", "cat", "/data/f") == \
        "persistent\n"
    ok(daemon, "volume", "rm", "xv")
    assert not mounted(data)


def test_bad_options_and_failed_mounts_are_clear(daemon, tmp_path):
    r = docker(daemon, "volume", "create", "-o", "typ=tmpfs", "-o", "device=tmpfs", "bad")
    assert r.returncode != 0 and 'invalid option: "typ"' in r.stderr
    r = docker(daemon, "volume", "create", "-o", "type=tmpfs", "bad")
    assert r.returncode != 0 and 'missing required option: "device"' in r.stderr
    r = docker(daemon, "volume", "create", "-o", "type=none", "-o", "o=bind", "-o",
               f"device={tmp_path}/missing", "bad")
    assert r.returncode != 0 and "not an existing directory" in r.stderr
    assert "bad" not in ok(daemon, "volume", "ls", "-q").split()

    ok(daemon, "volume", "create", "-o", "type=ext4", "-o", f"device={tmp_path}/no-such-dev",
       "broken")
    data = inspect(daemon, "broken")["Mountpoint"]
    r = docker(daemon, "run", "--rm", "-v", "broken:/data", "busybox", "true")
    assert r.returncode != 0
    assert "failed to mount local volume" in r.stderr
    assert "no such file or directory" in r.stderr
    assert not mounted(data)
    ok(daemon, "volume", "rm", "broken")


def test_a_restarted_daemon_still_unmounts_after_the_last_user(daemon):
    ok(daemon, "volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o",
       "o=size=4m", "rv")
    data = inspect(daemon, "rv")["Mountpoint"]
    ok(daemon, "run", "-d", "--name", "survivor", "-v", "rv:/data", "busybox", "sleep", "60")
    try:
        assert mounted(data)
        daemon.stop()
        daemon.start()
        assert mounted(data)  # the container outlived the daemon, and so did its volume
    finally:
        ok(daemon, "rm", "-f", "survivor")
    assert not mounted(data)
    ok(daemon, "volume", "rm", "rv")


# Docker copies what the image has at a volume's path into the volume when the volume
# is empty, at container create, through a mount of its own that it lets go at once
# (moby's populateVolumes). So a tmpfs volume never shows the image's files: they were
# copied into a tmpfs that was unmounted again (moby issue 27068); a bind or ext4
# volume keeps them.


def test_image_data_is_not_seen_in_a_tmpfs_volume(daemon):
    out = ok(daemon, "run", "--rm", "--mount", "type=volume,src=cv,dst=/etc,"
             "volume-opt=type=tmpfs,volume-opt=device=tmpfs", "busybox", "ls", "/etc")
    ok(daemon, "volume", "rm", "cv")
    assert "passwd" not in out.split()


def test_image_data_is_copied_into_an_empty_bind_volume(daemon, tmp_path):
    host = tmp_path / "seed"
    host.mkdir()
    ok(daemon, "volume", "create", "-o", "type=none", "-o", "o=bind", "-o", f"device={host}",
       "sv")
    ok(daemon, "run", "--rm", "-v", "sv:/etc", "busybox", "true")
    ok(daemon, "volume", "rm", "sv")
    assert (host / "passwd").is_file()
