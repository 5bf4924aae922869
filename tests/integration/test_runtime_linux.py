"""The built-in runtime on the real kernel: namespaces, mounts, cgroups, users, caps.

Every container is started from a forked helper process that plays the monitor's
part: spawn_container moves its caller into a new pid namespace for its children, which
must never be the pytest process itself.
"""
from __future__ import annotations

import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import needs_root
from engine.core.runtime import caps, cgroups, linux, spec
from engine.core.runtime import rootfs as rootfs_mod

pytestmark = [pytest.mark.root, needs_root]

DOCKER_DEFAULT_CAPEFF = "00000000a80425fb"


@dataclass
class Result:
    status: int | None          # exit code (negative: killed by that signal)
    stdout: str
    stderr: str
    error: dict | None = None   # the JSON from error_fd when the start failed


class Helper:
    """A forked stand-in for the monitor: spawns one process and reports on it.

    Messages on the report pipe, one JSON line each: ``{"pid": N}`` once started (or
    ``{"error": {...}}``), then ``{"status": code}`` when the process is reaped. With
    ``tty`` (the spec asks for a terminal) the helper passes the master the process
    sent on to us (``master``), sized ``winsize`` before the release.
    """

    def __init__(self, spawn, *, stdin: int | None = None, tty: bool = False,
                 winsize: tuple[int, int] | None = None) -> None:
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.report_r, report_w = os.pipe()
        self.master: int | None = None
        ours, theirs = socket.socketpair() if tty else (None, None)
        null = os.open("/dev/null", os.O_RDONLY)
        self.pid = os.fork()
        if self.pid == 0:  # the helper
            try:
                os.close(self.out_r), os.close(self.err_r), os.close(self.report_r)
                spawned = spawn(stdin=null if stdin is None else stdin, stdout=out_w,
                                stderr=err_w)
                os.close(out_w), os.close(err_w)
                if theirs is not None:
                    master = spawned.receive_console()
                    if master >= 0:
                        if winsize:
                            linux.resize_tty(master, *winsize)
                        socket.send_fds(theirs, [b"m"], [master])
                        os.close(master)
                    theirs.close()
                try:
                    spawned.start()
                    os.write(report_w, json.dumps({"pid": spawned.pid}).encode() + b"\n")
                except linux.SpawnError as exc:
                    os.write(report_w, json.dumps(
                        {"pid": spawned.pid, "error": {"message": exc.message,
                                                       "exit_code": exc.exit_code}}
                    ).encode() + b"\n")
                _, status = os.waitpid(spawned.pid, 0)
                os.write(report_w, json.dumps(
                    {"status": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except BaseException as exc:  # report anything to the test
                os.write(report_w, json.dumps({"crash": repr(exc)}).encode() + b"\n")
            finally:
                os._exit(0)
        os.close(out_w), os.close(err_w), os.close(report_w), os.close(null)
        if ours is not None:
            theirs.close()
            ours.settimeout(10)
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
            except TimeoutError:
                fds = []
            ours.close()
            self.master = fds[0] if fds else None
        #: the process's output: the terminal's master, else the stdout pipe
        self.output = self.out_r if self.master is None else self.master
        self._report = b""
        self._early = bytearray()
        self.info = self._next_report(10)
        if "crash" in self.info:
            raise AssertionError(f"helper crashed: {self.info['crash']}")
        self.container_pid: int = self.info["pid"]

    def _next_report(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._report:
            sel = selectors.DefaultSelector()
            sel.register(self.report_r, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("helper did not report in time")
            chunk = os.read(self.report_r, 4096)
            if not chunk:
                raise AssertionError("helper exited without reporting")
            self._report += chunk
        line, _, self._report = self._report.partition(b"\n")
        return json.loads(line)

    def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        """Read the output until ``marker`` shows up (kept for :meth:`wait` too)."""
        deadline = time.monotonic() + timeout
        while marker not in self._early:
            sel = selectors.DefaultSelector()
            sel.register(self.output, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no {marker!r} in {bytes(self._early)!r}")
            chunk = os.read(self.output, 65536)
            if not chunk:
                break
            self._early += chunk
        return bytes(self._early)

    def wait(self, timeout: float = 20) -> Result:
        """Collect output until the process exits; kill it on timeout."""
        chunks: dict[int, bytearray] = {self.out_r: bytearray(), self.err_r: bytearray()}
        chunks[self.output] = self._early
        sel = selectors.DefaultSelector()
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        open_fds = set(chunks)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError("container did not exit in time")
            for key, _ in sel.select(left):
                try:
                    data = os.read(key.fd, 65536)
                except OSError:  # EIO on a pty master once the slave is gone
                    data = b""
                if data:
                    chunks[key.fd] += data
                else:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
        status = None if "error" in self.info else self._next_report(timeout)["status"]
        if "error" in self.info:
            self._next_report(timeout)
        os.waitpid(self.pid, 0)
        result = Result(status, chunks[self.output].decode(errors="replace"),
                        chunks[self.err_r].decode(errors="replace"), self.info.get("error"))
        self.close()
        return result

    def kill(self) -> None:
        try:
            os.kill(self.container_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for fd in (self.out_r, self.err_r, self.report_r, self.master):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


@pytest.fixture
def rootfs(busybox_rootfs, tmp_path) -> Path:
    """A private, writable copy of the busybox rootfs."""
    dst = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, dst, symlinks=True)
    return dst


@pytest.fixture
def make_spec(rootfs):
    """build_spec for the busybox rootfs with a unique id; cgroups removed after."""
    made: list[str] = []

    def make(args: list[str], **kw) -> dict:
        cid = "it-" + uuid.uuid4().hex[:12]
        kw.setdefault("env", [])
        kw.setdefault("hostname", "box")
        s = spec.build_spec(container_id=cid, args=args, rootfs=str(kw.pop("root", rootfs)),
                            cgroups_path=f"engine/{cid}", **kw)
        made.append(s["linux"]["cgroupsPath"])
        return s

    yield make
    for path in made:
        cgroups.destroy(path)


def run(s: dict, **kw) -> Result:
    helper = Helper(lambda **fds: linux.spawn_container(s, **fds), **kw)
    return helper.wait()


def start(s: dict, **kw) -> Helper:
    return Helper(lambda **fds: linux.spawn_container(s, **fds), **kw)


# --- basics ---------------------------------------------------------------------------


def test_echo_hi(make_spec) -> None:
    r = run(make_spec(["echo", "hi"]))
    assert (r.status, r.stdout, r.error) == (0, "hi\n", None)


def test_domainname_and_oom_score_adj(make_spec) -> None:
    r = run(make_spec(["cat", "/proc/sys/kernel/domainname", "/proc/self/oom_score_adj"],
                      domainname="example.org", host_config={"OomScoreAdj": 500}))
    assert r.stdout.split() == ["example.org", "500"]


def test_exit_code_and_stderr(make_spec) -> None:
    r = run(make_spec(["sh", "-c", "echo oops >&2; exit 3"]))
    assert (r.status, r.stdout, r.stderr) == (3, "", "oops\n")


def test_init_is_pid_1_with_hostname(make_spec) -> None:
    r = run(make_spec(["sh", "-c", "echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' '"],
                      hostname="myhost"))
    assert r.stdout.split("\n")[:3] == ["1", "myhost", "sh -c echo $$; hostname; cat "
                                        "/proc/1/cmdline | tr '\\0' ' ' "]


@pytest.mark.parametrize("user, expected", [
    ("", "uid=0(root) gid=0(root)"),
    ("app", "uid=1000(app) gid=1000(app) groups=10(wheel)"),
    ("1000:1000", "uid=1000(app) gid=1000(app)"),
    ("app:wheel", "uid=1000(app) gid=10(wheel)"),
])
def test_user(make_spec, user: str, expected: str) -> None:
    r = run(make_spec(["sh", "-c", "id; echo $HOME"], user=user))
    lines = r.stdout.splitlines()
    assert lines[0].startswith(expected), lines
    assert lines[1] == ("/home/app" if user else "/root")


def test_capabilities_root_and_non_root(make_spec) -> None:
    root = run(make_spec(["grep", "-E", "CapEff|CapBnd", "/proc/self/status"]))
    assert root.stdout.split() == ["CapEff:", DOCKER_DEFAULT_CAPEFF,
                                   "CapBnd:", DOCKER_DEFAULT_CAPEFF]
    app = run(make_spec(["grep", "-E", "CapEff|CapBnd", "/proc/self/status"], user="app"))
    assert app.stdout.split() == ["CapEff:", "0000000000000000",
                                  "CapBnd:", DOCKER_DEFAULT_CAPEFF]
    added = run(make_spec(["grep", "CapEff", "/proc/self/status"],
                          host_config={"CapAdd": ["NET_ADMIN"], "CapDrop": ["CHOWN"]}))
    mask = int(added.stdout.split()[1], 16)
    assert caps.from_mask(mask) == caps.adjust(caps.DEFAULT_CAPS, ["NET_ADMIN"], ["CHOWN"])


def _masked_files() -> list[str]:
    return [p for p in spec.DEFAULT_MASKED_PATHS if os.path.isfile(p)]


@pytest.mark.skipif(not _masked_files(), reason="no maskable file in this kernel's /proc")
def test_masked_and_readonly_paths(make_spec) -> None:
    masked_file = _masked_files()[0]
    script = (f"stat -c %t,%T {masked_file}; ls -A /sys/firmware | wc -l; "
              "echo x > /proc/sys/kernel/domainname && echo writable; "
              "grep -c ' /proc/sys proc ro,' /proc/self/mounts")
    r = run(make_spec(["sh", "-c", script]))
    lines = r.stdout.split()
    assert lines[0] == "1,3"          # /dev/null bound over the file
    assert lines[1] == "0"            # an empty tmpfs over the directory
    assert "writable" not in r.stdout
    assert "Read-only file system" in r.stderr
    assert lines[2] == "1"


def test_privileged_has_all_caps_and_no_masks(make_spec) -> None:
    r = run(make_spec(["sh", "-c", "grep CapEff /proc/self/status; ls -A /sys/firmware"],
                      host_config={"Privileged": True}))
    assert int(r.stdout.split()[1], 16) == caps.to_mask(caps.all_caps())
    assert len(r.stdout.split()) > 2  # /sys/firmware is not masked


def test_dev_and_mounts(make_spec) -> None:
    script = ("ls /dev | tr '\\n' ' '; echo; grep -E ' (/dev/shm|/dev/pts|/sys) ' "
              "/proc/self/mounts | cut -d' ' -f2,3,4; echo x > /dev/null && echo null-ok; "
              "mknod /tmp/kmsg c 1 11 && (cat /tmp/kmsg || echo kmsg-denied); umask; "
              "ls /sys/fs/cgroup | tr '\\n' ' '")
    r = run(make_spec(["sh", "-c", script], host_config={"ShmSize": 1 << 20}))
    lines = r.stdout.splitlines()
    for name in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "fd", "pts",
                 "shm", "mqueue", "stdin", "stdout", "stderr"):
        assert name in lines[0].split(), name
    mounts = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert mounts["/dev/shm"][0] == "tmpfs" and "size=1024k" in mounts["/dev/shm"][1]
    assert mounts["/sys"][0] == "sysfs" and mounts["/sys"][1].startswith("ro,")
    assert mounts["/dev/pts"][0] == "devpts"
    assert "null-ok" in lines
    assert "kmsg-denied" in lines      # the device cgroup allows mknod, not use
    assert "0022" in lines
    assert "memory" in lines[-1].split() and "pids" in lines[-1].split()


# --- terminals ------------------------------------------------------------------------


def _host_devpts() -> int:
    """The device of the host's devpts instance."""
    return os.stat("/dev/pts/ptmx").st_dev


def test_tty_is_the_containers_own_pts(make_spec) -> None:
    script = ("tty; stty size; ls -l /proc/self/fd/0; ls /dev/pts | tr '\\n' ' '; echo; "
              "stat -c %t,%T /dev/console; test -t 1 && test -t 2 && echo all-tty; "
              "read line; echo got $line")
    helper = start(make_spec(["sh", "-c", script], tty=True), tty=True, winsize=(33, 77))
    try:
        assert helper.master is not None
        helper.read_until(b"all-tty")
        # the pty lives in the container's devpts instance, not in the host's
        slave = os.stat(f"/proc/{helper.container_pid}/fd/0")
        assert os.major(slave.st_rdev) == 136 and slave.st_dev != _host_devpts()
        os.write(helper.master, b"hello\n")
    finally:
        r = helper.wait()
    lines = r.stdout.split("\r\n")
    assert r.status == 0 and lines[0] == "/dev/pts/0"
    assert lines[1] == "33 77"
    assert lines[2].endswith("/proc/self/fd/0 -> /dev/pts/0")
    assert lines[3].split() == ["0", "ptmx"]  # only its own pty
    assert lines[4] == "88,0"  # /dev/console is that same pty (136, 0)
    assert lines[5] == "all-tty" and "got hello" in lines


def test_tty_of_a_non_root_user_is_its_own(make_spec) -> None:
    r = run(make_spec(["sh", "-c", "stat -c '%U %g %a' $(tty)"], tty=True, user="app"),
            tty=True)
    assert (r.status, r.stdout.strip()) == (0, "app 5 620")  # the group stays tty (gid 5)


def test_open_pty_pairs_a_master_with_its_slave() -> None:
    master, slave = rootfs_mod.open_pty("/")  # the host's own devpts
    try:
        st = os.fstat(slave)
        assert os.major(st.st_rdev) == 136
        assert os.minor(st.st_rdev) == rootfs_mod.pty_number(master)
        os.write(master, b"ping\n")
        assert os.read(slave, 100) == b"ping\n"
    finally:
        os.close(master), os.close(slave)


@pytest.mark.parametrize("kind", ["fifo", "file", "symlink"])
def test_open_pty_refuses_what_is_not_a_ptmx(tmp_path, kind: str) -> None:
    pts = tmp_path / "dev" / "pts"
    pts.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(pts / "ptmx")
    elif kind == "file":
        (pts / "ptmx").write_text("")
    else:  # a symlink out of the root is resolved inside it, or refused
        (pts / "ptmx").symlink_to("/dev/ptmx")
    with pytest.raises(OSError, match="cannot allocate a terminal"):
        rootfs_mod.open_pty(str(tmp_path))


def test_a_silent_child_is_killed_not_released_without_its_terminal() -> None:
    start_r, start_w = os.pipe()
    error_r, error_w = os.pipe()
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # a child stuck before it sends its master
        os.close(start_w), os.close(error_r), ours.close()
        time.sleep(30)
        os._exit(0)
    os.close(start_r), os.close(error_w), theirs.close()
    spawned = linux.Spawned(pid, start_w, error_r, ours.detach())
    began = time.monotonic()
    assert spawned.receive_console(timeout=0.2) == -1
    with pytest.raises(linux.SpawnError, match="did not set up its terminal"):
        spawned.start()
    _, status = os.waitpid(pid, 0)
    assert os.WTERMSIG(status) == signal.SIGKILL and time.monotonic() - began < 5


def test_tty_without_devpts_fails_cleanly(make_spec) -> None:
    s = make_spec(["true"], tty=True)
    s["mounts"] = [m for m in s["mounts"] if m["destination"] != "/dev/pts"]
    r = run(s, tty=True)
    assert r.error is not None and r.error["exit_code"] == 125
    assert "cannot allocate a terminal" in r.error["message"]


def test_stdin_is_passed(make_spec, tmp_path) -> None:
    data = tmp_path / "input"
    data.write_text("from stdin\n")
    fd = os.open(data, os.O_RDONLY)
    try:
        r = run(make_spec(["cat"]), stdin=fd)
    finally:
        os.close(fd)
    assert r.stdout == "from stdin\n"


def test_workdir_created_env_and_rlimits(make_spec) -> None:
    hc = {"Ulimits": [{"Name": "nofile", "Soft": 1000, "Hard": 2000}],
          "SecurityOpt": ["no-new-privileges"]}
    r = run(make_spec(["sh", "-c", "pwd; echo $FOO; ulimit -n; ulimit -Hn; "
                                   "grep NoNewPrivs /proc/self/status"],
                      cwd="/new/work dir", env=["FOO=bar"], host_config=hc))
    assert r.stdout.split("\n")[:4] == ["/new/work dir", "bar", "1000", "2000"]
    assert r.stdout.split()[-1] == "1"


def test_default_nofile_limit(make_spec) -> None:
    r = run(make_spec(["sh", "-c", "ulimit -n"]))
    # Docker's 1048576, or the host's hard limit when the host refuses to raise it.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert int(r.stdout) in (1048576, hard)


def test_readonly_rootfs_with_writable_bind(make_spec, tmp_path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    mounts = [{"destination": "/data", "type": "bind", "source": str(vol),
               "options": ["rbind", "rw"]},
              {"destination": "/etc/hostname", "type": "bind",
               "source": str(tmp_path / "hostname"), "options": ["rbind", "ro"]}]
    (tmp_path / "hostname").write_text("box\n")
    r = run(make_spec(["sh", "-c", "touch /x || echo ro-root; echo v > /data/f; "
                                   "cat /etc/hostname; echo y > /etc/hostname || echo ro-file"],
                      readonly_rootfs=True, mounts=mounts))
    assert "ro-root" in r.stdout and "ro-file" in r.stdout and "box" in r.stdout
    assert (vol / "f").read_text() == "v\n"


def test_sysctl_in_private_netns(make_spec) -> None:
    r = run(make_spec(["cat", "/proc/sys/net/ipv4/ip_forward"],
                      host_config={"Sysctls": {"net.ipv4.ip_forward": "1"}}))
    assert r.stdout == "1\n"
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host_value = f.read()
    assert host_value in ("0\n", "1\n")  # the host's value is whatever it was


def test_symlinked_mount_destination_stays_in_rootfs(make_spec, rootfs, tmp_path) -> None:
    """``/evil -> /../../../tmp/<name>``: the bind must land in <rootfs>/tmp/<name>."""
    name = "engine-escape-" + uuid.uuid4().hex[:8]
    host_target = Path("/tmp") / name
    os.symlink(f"/../../../tmp/{name}", rootfs / "evil")
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("inside\n")
    mounts = [{"destination": "/evil", "type": "bind", "source": str(src),
               "options": ["rbind", "ro"]}]
    try:
        r = run(make_spec(["cat", f"/tmp/{name}/marker"], mounts=mounts))
        assert r.stdout == "inside\n"
        assert not host_target.exists()
        assert (rootfs / "tmp" / name).is_dir()
    finally:
        if host_target.exists():
            shutil.rmtree(host_target, ignore_errors=True)


def test_missing_binary(make_spec) -> None:
    r = run(make_spec(["nosuchcmd", "arg"]))
    assert r.error == {"message": 'exec: "nosuchcmd": executable file not found in $PATH',
                       "exit_code": 127}
    assert r.status is None


def test_not_executable(make_spec) -> None:
    r = run(make_spec(["/etc/passwd"]))
    assert r.error["exit_code"] == 126
    assert "permission denied" in r.error["message"]


def test_unknown_user_fails_in_build_spec(make_spec) -> None:
    with pytest.raises(ValueError, match="unable to find user ghost"):
        make_spec(["true"], user="ghost")


# --- cgroups --------------------------------------------------------------------------


@pytest.mark.skipif(cgroups.version() != 1, reason="checks v1 files")
def test_limits_are_written_to_v1_cgroups(make_spec) -> None:
    s = make_spec(["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                                "/sys/fs/cgroup/pids/pids.max; echo ready; sleep 30"],
                  host_config={"Memory": 48 << 20, "PidsLimit": 33, "CpuShares": 512,
                               "NanoCpus": 500_000_000})
    path = s["linux"]["cgroupsPath"]
    helper = start(s)
    try:
        helper.read_until(b"ready\n")
        mem = Path("/sys/fs/cgroup/memory", path)
        assert int((mem / "memory.limit_in_bytes").read_text()) == 48 << 20
        assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 96 << 20
        assert (Path("/sys/fs/cgroup/pids", path) / "pids.max").read_text().strip() == "33"
        cpu = Path("/sys/fs/cgroup/cpu", path)
        assert (cpu / "cpu.shares").read_text().strip() == "512"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert helper.container_pid in cgroups.pids(path)
        assert cgroups.stats(path)["pids"]["current"] >= 1
    finally:
        helper.kill()
    r = helper.wait()
    assert r.stdout.split() == [str(48 << 20), "33", "ready"]  # the container's view
    cgroups.destroy(path)
    for ctrl in cgroups.V1_CONTROLLERS:
        assert not Path("/sys/fs/cgroup", ctrl, path).exists()


def test_oom_kill_is_detected(make_spec) -> None:
    s = make_spec(["sh", "-c", "head -c 200m /dev/zero | tail"],
                  host_config={"Memory": 24 << 20, "MemorySwap": 24 << 20})
    r = run(s)
    # The OOM killer picks tail (sh then exits 137) or sh itself (killed: -9).
    assert r.status in (137, -signal.SIGKILL)
    assert cgroups.oom_killed(s["linux"]["cgroupsPath"])


def test_pids_limit_is_enforced(make_spec) -> None:
    r = run(make_spec(["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait"],
                      host_config={"PidsLimit": 4}))
    assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr


# --- exec -----------------------------------------------------------------------------


def test_exec_into_running_container(make_spec) -> None:
    s = make_spec(["sleep", "30"], hostname="exechost")
    path = s["linux"]["cgroupsPath"]
    init = start(s)
    try:
        def exec_(args, user=None, **kw):
            process = {"args": args, "env": ["PATH=/bin"], "cwd": "/",
                       "user": {"uid": 0, "gid": 0, "additionalGids": []},
                       "capabilities": s["process"]["capabilities"]}
            if user:
                uid, gid, gids, _home = linux.resolve_exec_user(init.container_pid, user)
                process["user"] = {"uid": uid, "gid": gid, "additionalGids": gids}
            return Helper(lambda **fds: linux.spawn_exec(
                process, target_pid=init.container_pid, cgroups_path=path, **fds),
                **kw).wait()

        assert exec_(["hostname"]).stdout == "exechost\n"
        cmdline = exec_(["cat", "/proc/1/cmdline"]).stdout
        assert cmdline.split("\0")[:2] == ["sleep", "30"]
        ident = exec_(["sh", "-c", "id -u; echo $$ ; cat /proc/self/cgroup | grep pids"],
                      user="app")
        uid, pid, cg = ident.stdout.split()
        assert uid == "1000" and int(pid) > 1  # in the container's pid namespace
        assert cg.endswith(path)
        missing = exec_(["nothere"])
        assert missing.error["exit_code"] == 127
    finally:
        init.kill()
        init.wait()


def test_exec_tty_is_a_pts_of_the_container(make_spec) -> None:
    s = make_spec(["sh", "-c", "tty; read line"], tty=True)
    init = start(s, tty=True)
    try:
        assert init.read_until(b"\r\n").strip() == b"/dev/pts/0"
        process = {"args": ["sh", "-c", "tty; stty size; ls /dev/pts | tr '\\n' ' '; echo; "
                                        "read line; stty size"],
                   "env": ["PATH=/bin"], "cwd": "/", "terminal": True,
                   "user": {"uid": 0, "gid": 0}}
        ex = Helper(lambda **fds: linux.spawn_exec(
            process, target_pid=init.container_pid, cgroups_path=s["linux"]["cgroupsPath"],
            **fds), tty=True, winsize=(20, 30))
        try:
            ex.read_until(b"ptmx")
            assert os.stat(f"/proc/{ex.container_pid}/fd/0").st_dev != _host_devpts()
            linux.resize_tty(ex.master, 44, 55)
            os.write(ex.master, b"\n")
        finally:
            r = ex.wait()
        lines = r.stdout.split("\r\n")
        assert r.status == 0 and lines[0] == "/dev/pts/1"
        assert lines[1] == "20 30" and lines[2].split() == ["0", "1", "ptmx"]
        assert lines[4] == "44 55"  # resized through the master while it ran
    finally:
        init.kill()
        init.wait()


def test_exec_into_a_missing_process_fails_cleanly() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        missing = int(f.read()) + 1
    with pytest.raises(linux.SpawnError, match="not running"):
        linux.spawn_exec({"args": ["true"]}, target_pid=missing, cgroups_path=None,
                         stdin=0, stdout=1, stderr=2)


def test_resolve_exec_user_stays_in_container(make_spec, rootfs) -> None:
    s = make_spec(["sleep", "30"])
    init = start(s)
    try:
        assert linux.resolve_exec_user(init.container_pid, "app") == (
            1000, 1000, [10], "/home/app")
        with pytest.raises(ValueError, match="unable to find user"):
            linux.resolve_exec_user(init.container_pid, "nobody-here")
    finally:
        init.kill()
        init.wait()


# --- runc accepts our bundles -----------------------------------------------------------


@pytest.fixture
def runc_root(tmp_path):
    state = tmp_path / "runc-state"
    state.mkdir()
    ids: list[str] = []
    yield state, ids
    for cid in ids:
        subprocess.run(["runc", "--root", str(state), "delete", "-f", cid],
                       capture_output=True, timeout=30)


@pytest.mark.clients
@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
@pytest.mark.parametrize("user", ["", "app"])
def test_runc_runs_our_bundle(make_spec, runc_root, tmp_path, user) -> None:
    state, ids = runc_root
    script = "id; grep -E 'CapEff|CapBnd' /proc/self/status; hostname; echo $$"
    s = make_spec(["sh", "-c", script], user=user)
    # This host may refuse to raise RLIMIT_NOFILE even for root: ask for what it allows.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for rl in s["process"]["rlimits"]:
        if rl["type"] == "RLIMIT_NOFILE" and hard != resource.RLIM_INFINITY:
            rl["soft"] = rl["hard"] = min(rl["hard"], hard)
    bundle = tmp_path / "bundle"
    spec.write_bundle(str(bundle), s)
    cid = "engine-test-" + uuid.uuid4().hex[:10]
    ids.append(cid)
    proc = subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle), cid],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    ours = run(s)
    assert ours.status == 0
    assert proc.stdout == ours.stdout  # same identity, capabilities, hostname, pid 1


def test_failed_mount_is_reported_with_its_destination(make_spec, tmp_path) -> None:
    mounts = [{"destination": "/data", "type": "bind", "source": str(tmp_path / "absent"),
               "options": ["rbind"]}]
    r = run(make_spec(["true"], mounts=mounts))
    assert r.error["exit_code"] == 125
    assert r.error["message"] == (f'error mounting "{tmp_path / "absent"}" to rootfs at '
                                  f'"/data": No such file or directory')
