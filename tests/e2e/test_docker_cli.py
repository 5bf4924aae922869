"""Acceptance with the real ``docker`` CLI, unchanged, against our daemon.

Each test names its containers and images uniquely and removes them when it ends, so
the tests share one session daemon (``engine_daemon``); the live-restore tests have a
daemon of their own (``fresh_daemon``) because they kill it.
"""
from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import secrets
import select
import shutil
import signal
import struct
import subprocess
import tarfile
import termios
import time
from pathlib import Path

import pytest

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [pytest.mark.root, pytest.mark.clients]


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout.decode().strip()


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def names(docker):
    """Unique container names; every container made under one is removed at the end."""
    made: list[str] = []

    def new(prefix: str = "t") -> str:
        n = uid(prefix)
        made.append(n)
        return n

    yield new
    if made:
        docker("rm", "-f", "-v", *made)


@pytest.fixture
def images(docker):
    """Unique image references, removed (forcibly) at the end."""
    made: list[str] = []

    def new(prefix: str = "img") -> str:
        ref = f"{uid(prefix)}:latest"
        made.append(ref)
        return ref

    yield new
    if made:
        docker("rmi", "-f", *made)


def inspect(docker, name: str, template: str) -> str:
    return out(docker("inspect", "-f", template, name, check=True))


def container_gone(docker, name: str) -> bool:
    return docker("inspect", name).returncode != 0


# ---------------------------------------------------------------- run, attach, TTY


class PtySession:
    """The docker CLI running on the slave side of a real pseudo-terminal."""

    def __init__(self, env: dict[str, str], args: list[str], rows: int = 24, cols: int = 80):
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        self.proc = subprocess.Popen(
            [DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.buf = b""

    def resize(self, rows: int, cols: int) -> None:
        # the kernel sends SIGWINCH to the terminal's foreground process group
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; got {self.buf!r}")
            if not self._read(left):
                raise AssertionError(f"EOF before {needle!r}; got {self.buf!r}")
        return self.buf

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return True
        try:
            chunk = os.read(self.master, 4096)
        except OSError as e:
            if e.errno == errno.EIO:  # the slave side is closed
                return False
            raise
        self.buf += chunk
        return bool(chunk)

    def finish(self, timeout: float = 15.0) -> int | None:
        """Read until the CLI closes the terminal; its exit code (None if it had to be
        killed)."""
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                break
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_run_it_tty_size_resize_and_exit_code(docker, engine_daemon, names):
    name = names()
    s = PtySession(engine_daemon.env, ["run", "-it", "--rm", "--name", name, "busybox", "sh"],
                   rows=31, cols=97)
    try:
        s.read_until(b"# ")
        s.write(b"stty size\r")
        s.read_until(b"31 97")
        # The CLI forwards SIGWINCH as a resize call, but only once it has set up its
        # handler, a moment after its first resize: until the size arrives, change it
        # again (the kernel signals a change only) and look.
        for _ in range(20):
            s.resize(39, 119)
            s.resize(40, 120)
            s.write(b"stty size\r")
            try:
                s.read_until(b"40 120", timeout=0.5)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"the new size never reached the container: {s.buf!r}")
        s.write(b"exit 7\r")
    finally:
        code = s.finish()
    assert code == 7, s.buf
    wait_for(lambda: container_gone(docker, name))


def test_run_it_detach_keys_then_attach(docker, engine_daemon, names):
    name = names()
    s = PtySession(engine_daemon.env, ["run", "-it", "--name", name, "busybox", "sh"])
    try:
        s.read_until(b"# ")
        s.write(b"echo one\r")
        s.read_until(b"one\r\n")
        s.write(b"\x10\x11")  # ctrl-p ctrl-q: the CLI leaves, the shell goes on
    finally:
        code = s.finish()
    assert code == 0
    assert inspect(docker, name, "{{.State.Running}}") == "true"
    a = PtySession(engine_daemon.env, ["attach", name])
    try:
        time.sleep(0.5)  # the attach is made before anything is typed
        a.write(b"echo two; exit 4\r")
        a.read_until(b"two\r\n")
    finally:
        code = a.finish()
    assert code == 4
    assert inspect(docker, name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 4"


def test_run_i_pipes_stdin(docker):
    p = docker("run", "-i", "--rm", "busybox", "cat", input=b"hi\nthere\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"hi\nthere\n"


def test_run_detached_logs_follow_and_stop(docker, names):
    name = names()
    cid = out(docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                     "for i in 1 2 3; do echo line$i; sleep 0.2; done", check=True))
    assert len(cid) == 64
    p = docker("logs", "-f", name, timeout=20)
    assert p.stdout == b"line1\nline2\nline3\n"
    assert inspect(docker, name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"

    long = names()
    docker("run", "-d", "--name", long, "busybox", "sleep", "60", check=True)
    t0 = time.monotonic()
    assert out(docker("stop", "-t", "1", long, check=True)) == long
    assert time.monotonic() - t0 < 8
    # pid 1 without a handler ignores SIGTERM: the stop ends with SIGKILL after 1 s
    assert inspect(docker, long, "{{.State.Running}} {{.State.ExitCode}}") == "false 137"


def test_exec_with_and_without_tty(docker, engine_daemon, names):
    name = names()
    docker("run", "-d", "--name", name, "busybox", "sleep", "60", check=True)
    p = docker("exec", name, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (p.returncode, p.stdout, p.stderr) == (5, b"out\n", b"err\n")
    p = docker("exec", "-i", name, "cat", input=b"piped\n")
    assert p.stdout == b"piped\n"
    p = docker("exec", "-e", "FOO=bar", "-w", "/tmp", "-u", "1000", name,
               "sh", "-c", "echo $FOO $(pwd) $(id -u)")
    assert out(p) == "bar /tmp 1000"

    s = PtySession(engine_daemon.env, ["exec", "-it", name, "sh"], rows=20, cols=60)
    try:
        s.read_until(b"# ")
        s.write(b"stty size; exit 9\r")
        s.read_until(b"20 60")
    finally:
        code = s.finish()
    assert code == 9

    assert docker("exec", name, "no-such-binary").returncode == 127
    p = docker("exec", "-u", "nosuchuser", name, "true")
    assert p.returncode == 126 and b"unable to find user nosuchuser" in p.stdout + p.stderr


def test_run_tty_is_the_containers_pts(engine_daemon):
    s = PtySession(engine_daemon.env, ["run", "-t", "--rm", "busybox", "tty"])
    code = s.finish()
    assert code == 0 and s.buf.strip() == b"/dev/pts/0", s.buf


def test_run_tty_has_the_clients_size_from_the_start(engine_daemon):
    # the size travels in HostConfig.ConsoleSize: a command that runs at once sees it,
    # before any resize the CLI sends after start
    s = PtySession(engine_daemon.env, ["run", "-t", "--rm", "busybox", "stty", "size"],
                   rows=33, cols=101)
    code = s.finish()
    assert code == 0 and s.buf.strip() == b"33 101", s.buf


def test_exec_tty_is_named_inside_the_container(docker, engine_daemon, names):
    name = names()
    docker("run", "-d", "--name", name, "busybox", "sleep", "60", check=True)
    s = PtySession(engine_daemon.env, ["exec", "-it", name, "tty"])
    code = s.finish()
    assert code == 0 and b"/dev/pts/" in s.buf, s.buf


# ---------------------------------------------------------------- cp


def test_cp_both_ways(docker, names, tmp_path):
    stopped, running = names(), names()
    docker("create", "--name", stopped, "busybox", "true", check=True)
    docker("run", "-d", "--name", running, "busybox", "sleep", "60", check=True)
    src = tmp_path / "hello.txt"
    src.write_text("hello\n")
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_text("A")
    (d / "sub" / "b").write_text("B")

    for c in (stopped, running):
        docker("cp", str(src), f"{c}:/tmp/hello.txt", check=True)
        docker("cp", str(d), f"{c}:/tmp/", check=True)
        back = tmp_path / f"back-{c}"
        back.mkdir()
        docker("cp", f"{c}:/tmp/hello.txt", str(back / "h"), check=True)
        assert (back / "h").read_text() == "hello\n"
        docker("cp", f"{c}:/tmp/dir", str(back), check=True)
        assert (back / "dir" / "a").read_text() == "A"
        assert (back / "dir" / "sub" / "b").read_text() == "B"
    p = docker("exec", running, "cat", "/tmp/hello.txt", "/tmp/dir/sub/b")
    assert p.stdout == b"hello\nB"

    # to stdout as a tar
    p = docker("cp", f"{running}:/tmp/dir", "-", check=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tf:
        assert {"dir", "dir/a", "dir/sub", "dir/sub/b"} <= set(tf.getnames())

    assert docker("cp", f"{running}:/nope", str(tmp_path)).returncode != 0


def test_cp_with_volumes_of_a_stopped_container(docker, names, tmp_path):
    name, vol = names(), uid("vol")
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "f").write_text("into the volume")
    try:
        docker("create", "--name", name, "-v", f"{vol}:/data", "-v", f"{ro}:/ro:ro",
               "busybox", "cat", "/data/f", check=True)
        docker("cp", str(tmp_path / "f"), f"{name}:/data/f", check=True)
        p = docker("cp", str(tmp_path / "f"), f"{name}:/ro/f")
        assert p.returncode != 0 and b"Read-only" in p.stderr
        assert not (ro / "f").exists()
        assert docker("start", "-a", name).stdout == b"into the volume"
        p = docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "cat", "/data/f")
        assert p.stdout == b"into the volume"
        docker("cp", f"{name}:/data/f", str(tmp_path / "back"), check=True)
        assert (tmp_path / "back").read_text() == "into the volume"
        # nothing stays mounted on the host once the copy is done
        with open("/proc/self/mounts") as f:
            assert str(ro) not in f.read()
    finally:
        docker("rm", "-f", name)
        docker("volume", "rm", "-f", vol)


def test_cp_symlink_stays_inside_container(docker, names, tmp_path):
    name = names()
    victim = tmp_path / "victim"
    victim.mkdir()
    docker("run", "-d", "--name", name, "busybox", "sh", "-c",
           f"mkdir -p {victim} && ln -s {victim} /escape && ln -s /etc/passwd /pw && sleep 60",
           check=True)
    wait_for(lambda: docker("exec", name, "test", "-L", "/escape").returncode == 0)
    (tmp_path / "payload").write_text("owned")
    docker("cp", str(tmp_path / "payload"), f"{name}:/escape/payload", check=True)
    assert not (victim / "payload").exists()
    assert docker("exec", name, "cat", f"{victim}/payload").stdout == b"owned"
    # a link that climbs with ".." stops at the container's root
    marker = f"climb-{secrets.token_hex(4)}"
    docker("exec", name, "ln", "-s", "../../../../../../../tmp", "/climb", check=True)
    docker("cp", str(tmp_path / "payload"), f"{name}:/climb/{marker}", check=True)
    assert not Path("/tmp", marker).exists()
    assert docker("exec", name, "cat", f"/tmp/{marker}").stdout == b"owned"
    # reading through a symlinked parent directory stays inside too
    docker("exec", name, "ln", "-s", "/", "/rootlink", check=True)
    p = docker("cp", f"{name}:/rootlink/etc/passwd", "-", check=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tf:
        assert b"app:x:1000" in tf.extractfile("passwd").read()
    # reading through a symlink pointing at /etc/passwd gives the container's file
    dst = tmp_path / "pw"
    docker("cp", "-L", f"{name}:/pw", str(dst), check=True)
    assert "app:x:1000" in dst.read_text()
    assert dst.read_text() != Path("/etc/passwd").read_text()


# ---------------------------------------------------------------- ps, inspect, lifecycle


def test_ps_inspect_rename_and_lifecycle_verbs(docker, names):
    a, b = names(), names()
    docker("run", "-d", "--name", a, "--label", "suite=e2e", "busybox", "sh", "-c",
           "trap 'exit 42' USR1; while true; do sleep 0.1; done", check=True)
    docker("create", "--name", b, "busybox", "true", check=True)
    ps = out(docker("ps", "--format", "{{.Names}} {{.Status}}", "--filter", f"name={a}"))
    assert ps.startswith(f"{a} Up ")
    assert b not in out(docker("ps", "--format", "{{.Names}}"))
    lines = out(docker("ps", "-a", "--format", "{{.Names}} {{.Status}}")).splitlines()
    assert f"{b} Created" in lines
    assert inspect(docker, a, "{{.Config.Image}} {{index .Config.Labels \"suite\"}}") == \
        "busybox e2e"
    assert inspect(docker, a, "{{.State.Running}} {{.Name}}") == f"true /{a}"
    data = json.loads(out(docker("inspect", a)))
    assert data[0]["Config"]["Cmd"][0:2] == ["sh", "-c"]
    assert data[0]["State"]["Pid"] > 0

    renamed = names()
    docker("rename", a, renamed, check=True)
    assert inspect(docker, renamed, "{{.Name}}") == f"/{renamed}"
    assert container_gone(docker, a)

    # pause / unpause / top
    docker("pause", renamed, check=True)
    assert inspect(docker, renamed, "{{.State.Status}} {{.State.Paused}}") == "paused true"
    assert docker("exec", renamed, "true").returncode != 0
    docker("unpause", renamed, check=True)
    assert inspect(docker, renamed, "{{.State.Status}}") == "running"
    top = out(docker("top", renamed, check=True))
    assert "trap" in top and "PID" in top.splitlines()[0]

    # kill -s, restart, rm -f
    docker("kill", "-s", "USR1", renamed, check=True)
    wait_for(lambda: inspect(docker, renamed, "{{.State.Status}}") == "exited")
    assert inspect(docker, renamed, "{{.State.ExitCode}}") == "42"
    docker("restart", "-t", "1", renamed, check=True)
    assert inspect(docker, renamed, "{{.State.Running}}") == "true"
    pid1 = inspect(docker, renamed, "{{.State.Pid}}")
    docker("restart", "-t", "1", renamed, check=True)
    assert inspect(docker, renamed, "{{.State.Pid}}") != pid1
    docker("kill", renamed, check=True)
    assert docker("wait", renamed).stdout == b"137\n"
    docker("start", renamed, check=True)
    assert docker("rm", renamed).returncode != 0  # running: needs -f
    docker("rm", "-f", renamed, check=True)
    assert container_gone(docker, renamed)


def test_wait_diff_export(docker, names, tmp_path):
    name = names()
    docker("run", "--name", name, "busybox", "sh", "-c",
           "echo x > /tmp/new; rm /etc/os-release; mkdir /added; exit 4")
    assert docker("wait", name).stdout == b"4\n"
    diff = set(out(docker("diff", name)).splitlines())
    assert {"A /tmp/new", "D /etc/os-release", "A /added", "C /tmp", "C /etc"} <= diff
    rw, total = map(int, out(docker("inspect", "-s", "-f", "{{.SizeRw}} {{.SizeRootFs}}",
                                    name, check=True)).split())
    image_size = int(inspect(docker, "busybox", "{{.Size}}"))
    assert rw > 0 and total == rw + image_size
    tar = tmp_path / "fs.tar"
    docker("export", "-o", str(tar), name, check=True)
    with tarfile.open(tar) as tf:
        members = set(tf.getnames())
        assert tf.extractfile("tmp/new").read() == b"x\n"
    assert "bin/busybox" in members and "etc/passwd" in members
    assert "etc/os-release" not in members


# ---------------------------------------------------------------- logs


def test_logs_tail_since_timestamps(docker, names):
    name = names()
    docker("run", "--name", name, "busybox", "sh", "-c",
           "echo one; echo two >&2; sleep 1.2; echo three", check=True)
    p = docker("logs", name)
    assert p.stdout == b"one\nthree\n" and p.stderr == b"two\n"
    assert docker("logs", "--tail", "1", name).stdout == b"three\n"
    assert docker("logs", "--tail", "0", name).stdout == b""
    started = inspect(docker, name, "{{.State.StartedAt}}")
    p = docker("logs", "-t", name)
    first = p.stdout.decode().splitlines()[0]
    stamp, _, text = first.partition(" ")
    assert text == "one" and stamp.endswith("Z") and stamp[:10] == started[:10]
    # --since as a unix timestamp half a second after start: only "three"
    from datetime import datetime

    st = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00").timestamp()
    p = docker("logs", "--since", f"{st + 0.6:.3f}", name)
    assert p.stdout == b"three\n" and p.stderr == b""


# ---------------------------------------------------------------- images


def test_images_tag_rmi_refused_while_used(docker, names, images):
    ref = images("tagged")
    since = time.time()
    docker("tag", "busybox", ref, check=True)
    repo = ref.split(":")[0]
    listed = out(docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))
    assert f"{ref} " in listed
    bid = inspect(docker, "busybox", "{{.Id}}")
    assert inspect(docker, ref, "{{.Id}}") == bid
    assert out(docker("images", "-q", repo)) == bid.split(":")[1][:12]

    # an image whose only tag is used by a container
    solo = images("solo")
    docker("tag", "busybox", solo, check=True)
    c = names()
    docker("create", "--name", c, solo, "true", check=True)
    docker("rmi", ref, check=True)  # just an untag: another reference stays
    assert docker("inspect", ref).returncode != 0
    p = docker("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
               "--filter", "type=image", "--filter", f"image={repo}",
               "--format", "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}")
    assert out(p).splitlines() == [f"tag {bid} {ref}", f"untag {bid} {ref}"]
    p = docker("rmi", bid.split(":")[1][:12])
    assert p.returncode != 0
    assert b"conflict" in p.stderr.lower() or b"being used" in p.stderr
    docker("rmi", solo, check=True)  # untag only: busybox:latest still refers to it
    assert docker("image", "inspect", "busybox").returncode == 0


def test_rmi_of_an_image_in_use(docker, names, images, busybox_tar):
    ref = images("inuse")
    docker("import", str(busybox_tar), ref, check=True)
    iid = inspect(docker, ref, "{{.Id}}")
    c = names()
    docker("create", "--name", c, ref, "true", check=True)
    p = docker("rmi", ref)
    assert p.returncode == 1
    assert b"container is using its referenced image" in p.stderr
    # a running container's image: -f only untags it, and its id cannot be forced
    r = names()
    docker("run", "-d", "--name", r, iid, "sleep", "60", check=True)
    assert out(docker("ps", "--filter", f"name={c}", "-a", "--format", "{{.Image}}")) == ref
    p = docker("rmi", "-f", ref, check=True)
    assert out(p) == f"Untagged: {ref}"
    assert inspect(docker, iid, "{{.Id}}") == iid
    # the name no longer leads to the image: ps shows its id
    assert out(docker("ps", "--filter", f"name={c}", "-a", "--format", "{{.Image}}")) == \
        iid.removeprefix("sha256:")[:12]
    p = docker("rmi", "-f", iid)
    assert p.returncode == 1 and b"being used by running container" in p.stderr
    # once nothing runs it, -f deletes it although a stopped container refers to it
    docker("rm", "-f", r, check=True)
    p = docker("rmi", "-f", iid, check=True)
    assert f"Deleted: {iid}" in out(p)
    assert docker("start", "-a", c).returncode == 0  # the container kept its layers


def test_save_load_import_commit(docker, names, images, tmp_path, busybox_tar):
    ref = images("saved")
    docker("tag", "busybox", ref, check=True)
    tar = tmp_path / "img.tar"
    docker("save", "-o", str(tar), ref, check=True)
    with tarfile.open(tar) as tf:
        assert "manifest.json" in tf.getnames()
    docker("rmi", ref, check=True)
    p = docker("load", "-i", str(tar), check=True)
    assert f"Loaded image: {ref}" in out(p)
    p = docker("run", "--rm", ref, "echo", "loaded")
    assert out(p) == "loaded", p.stderr

    imported = images("imported")
    p = docker("import", "-c", "CMD [\"echo\", \"from-import\"]", str(busybox_tar), imported,
               check=True)
    assert out(p).startswith("sha256:")
    p = docker("run", "--rm", imported)
    assert out(p) == "from-import", p.stderr

    c = names()
    docker("run", "--name", c, "busybox", "sh", "-c", "echo committed > /marker", check=True)
    committed = images("committed")
    p = docker("commit", "-c", "ENV COMMITTED=1", c, committed, check=True)
    assert out(p).startswith("sha256:")
    p = docker("run", "--rm", committed, "sh", "-c", "cat /marker; echo $COMMITTED")
    assert p.stdout == b"committed\n1\n"

    # committed without a name: a dangling image, listed as <none> by the CLI
    iid = out(docker("commit", c, check=True))
    try:
        dangling = out(docker("images", "--filter", "dangling=true", "--no-trunc",
                              "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"))
        assert f"{iid} <none>:<none>" in dangling.splitlines()
    finally:
        docker("rmi", iid)


# ---------------------------------------------------------------- events


def test_events_window(docker, names):
    name = names()
    since = time.time()
    docker("run", "-d", "--name", name, "busybox", "sleep", "60", check=True)
    docker("stop", "-t", "0", name, check=True)
    docker("rm", name, check=True)
    time.sleep(0.1)
    until = time.time()
    p = docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
               "--filter", f"container={name}", "--format",
               "{{.Type}} {{.Action}} {{index .Actor.Attributes \"signal\"}}", timeout=20)
    assert p.returncode == 0, p.stderr
    # sleep ignores SIGTERM as pid 1: the stop sends SIGKILL after its timeout
    assert [line.strip() for line in out(p).splitlines()] == [
        "container create", "container start", "container kill 15", "container kill 9",
        "container die", "container stop", "container destroy"]
    # the window is closed: nothing before since, nothing after until
    p = docker("events", "--since", f"{until + 0.5:.3f}", "--until", f"{until + 0.6:.3f}",
               "--filter", f"container={name}", timeout=20)
    assert p.returncode == 0 and p.stdout == b""


# ---------------------------------------------------------------- errors


def test_name_conflict_is_409(docker, names, engine_daemon):
    name = names()
    docker("create", "--name", name, "busybox", "true", check=True)
    p = docker("create", "--name", name, "busybox", "true")
    assert p.returncode != 0
    assert b"Conflict" in p.stderr and b"already in use" in p.stderr
    status, body = engine_daemon.request("POST", f"/containers/create?name={name}",
                                         {"Image": "busybox"})
    assert status == 409
    assert name in json.loads(body)["message"]


def test_bad_input(docker, engine_daemon):
    before = out(docker("ps", "-aq"))
    p = docker("run", "--name", "a/b", "busybox", "true")
    assert p.returncode == 125
    assert b"Invalid container name" in p.stderr
    status, body = engine_daemon.request("POST", "/containers/create?name=x/y",
                                         {"Image": "busybox"})
    assert status == 400 and "Invalid container name" in json.loads(body)["message"]

    p = docker("run", "--rm", "--pull", "never", "no-such-image-xyz", "true")
    assert p.returncode == 125
    assert b"No such image" in p.stderr
    p = docker("run", "--rm", "no-such-image-xyz:1", "true")
    assert p.returncode == 125
    assert b"Unable to find image" in p.stderr
    status, body = engine_daemon.request("POST", "/containers/create",
                                         {"Image": "no-such-image-xyz"})
    assert status == 404 and "No such image" in json.loads(body)["message"]

    status, body = engine_daemon.request("POST", "/containers/create", b"{not json")
    assert status == 400 and json.loads(body)["message"]
    status, body = engine_daemon.request("POST", "/containers/create", b"[1, 2]")
    assert status == 400
    for bad in ({"Image": 123}, {"Image": "busybox", "Env": "A=1"},
                {"Image": "busybox", "Cmd": [1]}, {"Image": "busybox", "Tty": "yes"},
                {"Image": "busybox", "Labels": {"a": 1}},
                {"Image": "busybox", "HostConfig": {"Memory": "1g"}},
                {"Image": "busybox", "HostConfig": []}):
        status, body = engine_daemon.request("POST", "/containers/create", bad)
        assert status == 400, (bad, body)
        assert json.loads(body)["message"]
    p = docker("run", "--restart", "always:3", "busybox", "true")
    assert p.returncode == 125 and b"maximum retry count" in p.stderr
    status, body = engine_daemon.request("POST", "/containers/create", {
        "Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "on-failure",
                                                             "MaximumRetryCount": -1}}})
    assert status == 400 and b"cannot be negative" in body
    assert out(docker("ps", "-aq")) == before


# ---------------------------------------------------------------- restart policies, OOM


def test_restart_on_failure_gives_up(docker, names):
    name = names()
    docker("run", "-d", "--name", name, "--restart", "on-failure:2", "busybox",
           "sh", "-c", "exit 3", check=True)

    def done():
        s = inspect(docker, name, "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}")
        return s if s == "exited 2 3" else None

    wait_for(done, timeout=15)
    time.sleep(1)  # and it stays down
    assert inspect(docker, name, "{{.State.Status}} {{.RestartCount}}") == "exited 2"


def test_restart_always_survives_kill(docker, names):
    name = names()
    docker("run", "-d", "--name", name, "--restart", "always", "busybox", "sleep", "60",
           check=True)
    pid = inspect(docker, name, "{{.State.Pid}}")
    os.kill(int(pid), signal.SIGKILL)  # dies outside the API: the policy applies

    def back():
        status, new_pid = inspect(docker, name, "{{.State.Status}} {{.State.Pid}}").split()
        return status == "running" and new_pid not in (pid, "0")

    wait_for(back, timeout=15)
    assert int(inspect(docker, name, "{{.RestartCount}}")) >= 1
    # docker kill is a manual stop: no restart
    docker("kill", name, check=True)
    time.sleep(1)
    assert inspect(docker, name, "{{.State.Status}}") == "exited"


def test_memory_limit_oom(docker, names):
    name = names()
    p = docker("run", "--name", name, "--memory", "32m", "busybox", "sh", "-c",
               "dd if=/dev/zero of=/dev/null bs=128M count=1", timeout=30)
    assert p.returncode == 137, p.stderr
    assert inspect(docker, name, "{{.State.OOMKilled}} {{.State.ExitCode}}") == "true 137"
    assert inspect(docker, name, "{{.HostConfig.Memory}}") == str(32 << 20)


def test_update_reaches_the_cgroup(docker, names):
    name = names()
    docker("run", "-d", "--name", name, "--memory", "32m", "busybox", "sleep", "60",
           check=True)
    docker("update", "--memory", "64m", "--pids-limit", "20", name, check=True)
    mem = out(docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name, check=True))
    assert mem.endswith("/ 64MiB")  # the limit the cgroup reports
    docker("update", "--restart", "on-failure:3", name, check=True)
    assert inspect(docker, name, "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} "
                                 "{{.HostConfig.RestartPolicy.Name}}") == f"{64 << 20} 20 on-failure"
    p = docker("update", "--memory", "1m", name)
    assert p.returncode != 0 and b"Minimum memory limit" in p.stderr


def test_stats(docker, names):
    name, stopped = names(), names()
    docker("run", "-d", "--name", name, "--memory", "64m", "busybox", "sleep", "60",
           check=True)
    docker("create", "--name", stopped, "busybox", "true", check=True)
    p = docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.PIDs}}",
               name, stopped, check=True)
    lines = sorted(out(p).splitlines())
    running = next(line for line in lines if line.startswith(name + " "))
    assert running.endswith(" / 64MiB 1"), lines
    assert f"{stopped} 0B / 0B 0" in lines


# ---------------------------------------------------------------- run options


def test_user_workdir_env(docker, tmp_path):
    envf = tmp_path / "env"
    envf.write_text("# comment\nFROM_FILE=yes\nSPACED=a b\n")
    p = docker("run", "--rm", "--user", "1000:1000", "-w", "/tmp/work", "-e", "A=1",
               "--env-file", str(envf), "busybox", "sh", "-c",
               'echo "$(id -u):$(id -g) $(pwd) $A $FROM_FILE $SPACED"; touch /tmp/f && ls -ln /tmp/f')
    assert p.returncode == 0, p.stderr
    first, second = out(p).splitlines()
    assert first == "1000:1000 /tmp/work 1 yes a b"
    assert second.split()[2:4] == ["1000", "1000"]
    assert out(docker("run", "--rm", "-u", "app", "busybox", "id", "-un")) == "app"


def test_bind_and_named_volumes(docker, names, tmp_path):
    host = tmp_path / "data"
    host.mkdir()
    (host / "in").write_text("from host")
    p = docker("run", "--rm", "-v", f"{host}:/data", "busybox", "sh", "-c",
               "cat /data/in; echo from container > /data/out")
    assert p.stdout == b"from host"
    assert (host / "out").read_text() == "from container\n"
    p = docker("run", "--rm", "-v", f"{host}:/data:ro", "busybox", "touch", "/data/x")
    assert p.returncode != 0 and not (host / "x").exists()

    vol = uid("vol")
    try:
        docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "sh", "-c",
               "echo kept > /data/f", check=True)
        p = docker("run", "--rm", "-v", f"{vol}:/data", "busybox", "cat", "/data/f")
        assert p.stdout == b"kept\n"
        assert vol in out(docker("volume", "ls", "-q"))
    finally:
        docker("volume", "rm", "-f", vol)


def test_volume_filters_and_prune(docker, names):
    tag = uid("suite")
    used, unused, other = uid("vol"), uid("vol"), uid("vol")
    try:
        docker("volume", "create", "--label", f"suite={tag}", used, check=True)
        docker("volume", "create", "--label", f"suite={tag}", unused, check=True)
        docker("volume", "create", other, check=True)
        docker("create", "--name", names(), "-v", f"{used}:/d", "busybox", "true", check=True)
        listed = out(docker("volume", "ls", "-q", "--filter", f"label=suite={tag}")).split()
        assert sorted(listed) == sorted([used, unused])
        dangling = out(docker("volume", "ls", "-q", "--filter", "dangling=true")).split()
        assert unused in dangling and other in dangling and used not in dangling
        p = docker("volume", "rm", used)
        assert p.returncode != 0 and b"volume is in use" in p.stderr
        # API 1.41 prunes named volumes too; the label keeps this to our own
        p = docker("volume", "prune", "-f", "--filter", f"label=suite={tag}", check=True)
        assert unused in out(p) and used not in out(p)
        left = out(docker("volume", "ls", "-q")).split()
        assert used in left and other in left and unused not in left
    finally:
        docker("volume", "rm", "-f", unused, other)


def test_system_prune(docker, names):
    tag = uid("suite")
    stopped, running = names(), names()
    docker("create", "--name", stopped, "--label", f"suite={tag}", "busybox", "true",
           check=True)
    docker("run", "-d", "--name", running, "--label", f"suite={tag}", "busybox", "sleep",
           "60", check=True)
    p = docker("system", "prune", "-f", "--filter", f"label=suite={tag}", check=True)
    assert "Total reclaimed space" in out(p)
    assert container_gone(docker, stopped) and not container_gone(docker, running)


def test_tmpfs_readonly_hostname(docker):
    p = docker("run", "--rm", "--read-only", "--tmpfs", "/run", "--hostname", "box1",
               "busybox", "sh", "-c",
               "hostname; grep ' /run ' /proc/mounts | cut -d' ' -f3; "
               "touch /run/ok && echo tmpfs-writable; touch /nope || echo ro")
    assert p.returncode == 0, p.stderr
    assert out(p).splitlines() == ["box1", "tmpfs", "tmpfs-writable", "ro"]


def test_network_host_and_none(docker):
    host_ns = os.readlink("/proc/self/ns/net")
    p = docker("run", "--rm", "--network", "host", "busybox", "readlink", "/proc/self/ns/net")
    assert out(p) == host_ns
    p = docker("run", "--rm", "--network", "none", "busybox", "sh", "-c",
               "readlink /proc/self/ns/net; ls /sys/class/net")
    ns, *links = out(p).split()
    assert ns != host_ns and links == ["lo"]


# ---------------------------------------------------------------- live restore


def _cli(daemon):
    def run(*args: str, check: bool = False, timeout: float = 30):
        p = subprocess.run([DOCKER, *args], capture_output=True, env=daemon.env,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {args} -> {p.returncode}: {p.stderr.decode()}")
        return p
    return run


def test_live_restore_after_daemon_sigkill(fresh_daemon):
    if not DOCKER:
        pytest.skip("the docker CLI is not installed")
    d = _cli(fresh_daemon)
    d("run", "-d", "--name", "keeps", "busybox", "sh", "-c",
      "echo before; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done", check=True)
    d("run", "-d", "--name", "ends", "busybox", "sh", "-c", "sleep 1; exit 6", check=True)
    d("run", "-d", "--rm", "--name", "gone", "busybox", "sh", "-c", "sleep 1", check=True)
    pid = out(d("inspect", "-f", "{{.State.Pid}}", "keeps", check=True))

    fresh_daemon.stop(signal.SIGKILL)
    time.sleep(1.5)  # "ends" and "gone" exit while no daemon runs
    fresh_daemon.start()

    assert out(d("inspect", "-f", "{{.State.Running}} {{.State.Pid}}", "keeps")) == f"true {pid}"
    assert d("exec", "keeps", "echo", "exec-ok").stdout == b"exec-ok\n"
    assert wait_for(lambda: out(d("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                                  "ends")) == "exited 6")
    wait_for(lambda: d("inspect", "gone").returncode != 0)
    d("stop", "keeps", check=True)
    assert out(d("logs", "keeps")) == "before\nbye"
    assert out(d("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "keeps")) == "exited 0"


def test_restart_policies_when_the_daemon_starts(fresh_daemon):
    if not DOCKER:
        pytest.skip("the docker CLI is not installed")
    d = _cli(fresh_daemon)
    for name, policy in (("al", "always"), ("us", "unless-stopped"), ("of", "on-failure")):
        d("run", "-d", "--name", name, "--restart", policy, "busybox", "sleep", "60",
          check=True)
    d("stop", "-t", "0", "al", "us", "of", check=True)
    fresh_daemon.stop()
    fresh_daemon.start()
    # "always" comes back although it was stopped by hand; the others stay down
    wait_for(lambda: out(d("inspect", "-f", "{{.State.Status}}", "al")) == "running")
    for name in ("us", "of"):
        assert out(d("inspect", "-f", "{{.State.Status}}", name)) == "exited"
