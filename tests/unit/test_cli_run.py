"""``engine run``/``create``: the create body, the attach/wait/start sequence, pulls and
exit codes, against a fake daemon."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from cli_fakedaemon import CID, Reply, attach_script, error, invoke, start_daemon, stop_daemon

DOCKER = shutil.which("docker")


@pytest.fixture
def daemon():
    d = start_daemon()
    yield d
    stop_daemon(d)


def compact(value):
    """Drop zero values, as Go's omitempty and zero defaults make them meaningless (but
    keep the empty objects that are set members: ``{"80/tcp": {}}``, ``{"/data": {}}``)."""
    if isinstance(value, dict):
        out = {k: compact(v) for k, v in value.items()}
        return {k: v for k, v in out.items()
                if "/" in k or v not in (None, "", 0, False, [], {})}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


# What docker 28 sends for the reference command line (captured from the real CLI
# against the fake daemon, zero values dropped).
REFERENCE_ARGS = ["run", "-d", "--name", "x", "-e", "A=1", "-p", "8080:80", "-v", "/h:/c:ro",
                  "--memory", "64m", "--cpus", "1.5", "busybox", "sh", "-c", "echo hi"]
REFERENCE_BODY = {
    "Cmd": ["sh", "-c", "echo hi"],
    "Env": ["A=1"],
    "ExposedPorts": {"80/tcp": {}},
    "HostConfig": {
        "Binds": ["/h:/c:ro"],
        "ConsoleSize": [0, 0],
        "Memory": 67108864,
        "MemorySwappiness": -1,
        "NanoCpus": 1500000000,
        "NetworkMode": "default",
        "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
        "RestartPolicy": {"Name": "no"},
    },
    "Image": "busybox",
}


def test_reference_create_body(daemon):
    result = invoke(daemon, *REFERENCE_ARGS)
    assert result.code == 0, result
    assert result.out == CID + "\n"
    req = daemon.one("POST", "/containers/create")
    assert req.q("name") == "x"
    body = req.json()
    assert compact(body) == REFERENCE_BODY
    # the zero values docker always sends are there too
    assert body["HostConfig"]["PortBindings"]["80/tcp"] == [{"HostIp": "", "HostPort": "8080"}]
    assert body["AttachStdout"] is False and body["Tty"] is False
    # detached: no attach and no wait, just start
    assert not daemon.find("POST", r"/containers/.*/attach")
    assert not daemon.find("POST", r"/containers/.*/wait")
    daemon.one("POST", f"/containers/{CID}/start")


FLAG_CASES = [
    REFERENCE_ARGS,
    ["create", "-it", "-p", "127.0.0.1::80/udp", "-p", "8000-8001:80-81", "-P", "--expose",
     "9000-9001", "-v", "/ctr", "-v", "data:/data:rw,z", "--mount",
     "type=bind,src=/a,dst=/b,readonly", "--mount", "type=volume,source=v,target=/v,"
     "volume-opt=a=b", "--mount", "type=tmpfs,dst=/t,tmpfs-size=1m", "--tmpfs",
     "/run:size=1m,noexec", "--restart", "on-failure:3", "--ulimit", "nofile=1024:2048",
     "--log-driver", "json-file", "--log-opt", "max-size=1m", "-l", "a=b", "--label", "c",
     "--memory-swap", "-1", "--memory-reservation", "32m", "-c", "512", "--cpu-quota",
     "1000", "--cpu-period", "10000", "--cpuset-cpus", "0-1", "--pids-limit", "100",
     "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--privileged", "--read-only",
     "--security-opt", "no-new-privileges", "--shm-size", "64m", "--stop-signal", "SIGINT",
     "--stop-timeout", "5", "--sysctl", "net.ipv4.ip_forward=1", "--dns", "1.1.1.1",
     "--dns-search", "x.com", "--dns-option", "ndots:2", "--add-host", "a:1.2.3.4",
     "--group-add", "10", "--init", "--ipc", "host", "--pid", "host", "--uts", "host",
     "--network", "mynet", "--network-alias", "al", "-w", "/w", "-u", "1000:1000",
     "--entrypoint", "/bin/sh", "-h", "hn", "--domainname", "dn", "--oom-kill-disable",
     "--health-cmd", "true", "--health-interval", "5s", "--health-retries", "3",
     "--health-timeout", "2s", "--health-start-period", "1s", "--runtime", "runc",
     "busybox", "-c", "echo hi"],
    ["run", "--rm", "-i", "busybox", "cat"],
    ["run", "-a", "stdout", "busybox", "ls", "-l"],
    ["create", "--entrypoint=", "-e", "ENGINE_TEST_SET", "-e", "ENGINE_TEST_UNSET", "busybox"],
    ["create", "-v", "./rel:/x", "-v", "/a:/b:ro,rshared", "--volumes-from", "other", "busybox"],
    ["create", "-p", "[::1]:80:80", "-p", "8000-8001:80", "-p", "9000:90/sctp", "busybox"],
    ["create", "--restart", "always", "--network", "host", "--init=false", "busybox"],
    ["create", "--device", "/dev/null:/dev/n:r", "--device", "/dev/zero", "-t", "busybox"],
    ["create", "--mount", "type=volume,dst=/data,volume-nocopy", "--ip", "10.0.0.5",
     "--network", "n", "--tmpfs", "/a", "--memory-swappiness", "10", "busybox"],
    ["create", "--blkio-weight", "300", "--cpu-rt-period", "1000", "--cpu-rt-runtime", "500",
     "--device-cgroup-rule", "c 1:3 mr", "--ip6", "2001:db8::33", "--link-local-ip",
     "169.254.1.1", "--network", "n", "--oom-score-adj", "100", "--cgroup-parent", "/x",
     "--cpuset-mems", "0", "--userns", "host", "--cgroupns", "private", "busybox"],
]


def _create_body(daemon, argv, program):
    env = {**os.environ, "DOCKER_HOST": daemon.host, "ENGINE_HOST": daemon.host,
           "ENGINE_TEST_SET": "yes"}
    env.pop("ENGINE_TEST_UNSET", None)
    subprocess.run(program + argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                   timeout=30, cwd="/tmp")
    found = [r for r in daemon.requests if r.path == "/containers/create"]
    assert found, daemon.requests
    req = found[-1]
    daemon.requests.clear()
    body = compact(req.json())
    # the docker CLI builds these two from Go maps: their order is random there
    for holder, key in ((body, "Env"), (body.get("HostConfig", {}), "Binds")):
        if key in holder:
            holder[key] = sorted(holder[key])
    return {k: v for k, v in req.query.items()}, body


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
@pytest.mark.parametrize("argv", FLAG_CASES, ids=lambda a: " ".join(a[:4]))
def test_create_body_matches_the_docker_cli(daemon, argv):
    """The docker CLI and ours, run with the same flags against the same fake daemon,
    send the same create request."""
    theirs = _create_body(daemon, argv, [DOCKER])
    ours = _create_body(daemon, argv, [sys.executable, "-m", "engine.sdk.cli"])
    assert ours == theirs


def test_run_attaches_before_start_and_returns_the_exit_code(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach",
                 Reply(hijack=attach_script([(1, b"hi\n"), (2, b"oops\n")])))
    daemon.route("POST", r"/containers/[^/]+/wait", Reply(200, {"StatusCode": 3}))
    result = invoke(daemon, "run", "busybox", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert result.code == 3
    assert result.out == "hi\n"
    assert result.err == "oops\n"
    order = [(r.method, r.path) for r in daemon.requests]
    assert order == [("POST", "/containers/create"),
                     ("POST", f"/containers/{CID}/attach"),
                     ("POST", f"/containers/{CID}/wait"),
                     ("POST", f"/containers/{CID}/start")]
    attach = daemon.one("POST", r"/containers/.*/attach")
    assert (attach.q("stream"), attach.q("stdin"), attach.q("stdout"), attach.q("stderr")) == \
        ("1", "0", "1", "1")
    assert daemon.one("POST", r"/containers/.*/wait").q("condition") == "next-exit"


def test_run_rm_waits_for_removal(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
    result = invoke(daemon, "run", "--rm", "busybox", "true")
    assert result.code == 0, result
    assert daemon.one("POST", r"/containers/.*/wait").q("condition") == "removed"
    assert daemon.one("POST", "/containers/create").json()["HostConfig"]["AutoRemove"] is True


def test_run_interactive_forwards_stdin(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach",
                 Reply(hijack=attach_script([], echo_stdin=True)))
    result = invoke(daemon, "run", "-i", "busybox", "cat", stdin=b"hello\nworld\n")
    assert result.code == 0, result
    assert result.out == "hello\nworld\n"
    assert daemon.one("POST", r"/containers/.*/attach").q("stdin") == "1"
    body = daemon.one("POST", "/containers/create").json()
    assert body["OpenStdin"] and body["StdinOnce"] and body["AttachStdin"]


def test_run_tty_output_is_not_demultiplexed(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach",
                 Reply(hijack=attach_script([(0, b"raw tty bytes\r\n")], raw=True)))
    result = invoke(daemon, "run", "-t", "busybox")
    assert result.code == 0, result
    assert result.out == "raw tty bytes\r\n"


def test_run_pulls_a_missing_image(daemon):
    attempts = []

    def create(req, m):
        attempts.append(req)
        if len(attempts) == 1:
            return error(404, "No such image: busybox:latest")
        return Reply(201, {"Id": CID, "Warnings": ["something to know"]})

    daemon.route("POST", "/containers/create", create)
    daemon.route("POST", "/images/create", Reply(200, (
        b'{"status":"Pulling from library/busybox","id":"latest"}\n',
        b'{"status":"Pull complete","id":"abc"}\n',
        b'{"status":"Status: Downloaded newer image for busybox:latest"}\n')))
    result = invoke(daemon, "run", "-d", "busybox")
    assert result.code == 0, result
    assert len(attempts) == 2
    assert "Unable to find image 'busybox:latest' locally" in result.err
    assert "Status: Downloaded newer image for busybox:latest" in result.err
    assert "WARNING: something to know" in result.err
    pull = daemon.one("POST", "/images/create")
    assert (pull.q("fromImage"), pull.q("tag")) == ("busybox", "latest")
    assert result.out == CID + "\n"


def test_run_pull_never_fails_with_125(daemon):
    daemon.route("POST", "/containers/create", error(404, "No such image: nope:latest"))
    result = invoke(daemon, "run", "--pull", "never", "nope")
    assert result.code == 125
    assert "No such image: nope:latest" in result.err
    assert not daemon.find("POST", "/images/create")


def test_pull_error_in_stream_is_reported(daemon):
    daemon.route("POST", "/containers/create", error(404, "No such image: nope:latest"))
    daemon.route("POST", "/images/create", Reply(200, (
        b'{"errorDetail":{"message":"pull access denied"},"error":"pull access denied"}\n',)))
    result = invoke(daemon, "run", "nope")
    assert result.code != 0
    assert "pull access denied" in result.err


@pytest.mark.parametrize("message, code", [
    ('exec: "nope": executable file not found in $PATH', 127),
    ("exec /bin/x: no such file or directory", 127),
    ("exec /etc/passwd: permission denied", 126),
    ("cgroup setup failed", 125),
])
def test_start_failures_map_to_docker_exit_codes(daemon, message, code):
    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
    daemon.route("POST", r"/containers/[^/]+/start", error(400, message))
    result = invoke(daemon, "run", "busybox", "nope")
    assert result.code == code
    assert message in result.err
    detached = invoke(daemon, "run", "-d", "busybox", "nope")
    assert detached.code == code


def test_wait_error_is_125(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
    daemon.route("POST", r"/containers/[^/]+/wait",
                 Reply(200, {"StatusCode": 0, "Error": {"Message": "removal failed"}}))
    result = invoke(daemon, "run", "busybox")
    assert result.code == 125 and "removal failed" in result.err


@pytest.mark.parametrize("argv, message", [
    (["run", "--bogus", "busybox"], "unknown flag: --bogus"),
    (["run", "-z", "busybox"], "unknown shorthand flag: 'z' in -z"),
    (["run"], '"run" requires at least 1 argument.'),
    (["run", "--rm", "--restart", "always", "busybox"], "cannot specify both --restart and --rm"),
    (["run", "-m", "lots", "busybox"], 'invalid argument "lots" for "-m, --memory" flag'),
    (["run", "-p", "1:2:3:4", "busybox"], "invalid port format"),
    (["run", "-v", "relative", "busybox"], "invalid volume specification"),
    (["run", "--name"], "flag needs an argument: --name"),
    (["run", "-d", "-a", "stdout", "busybox"], "cannot specify both --attach and --detach"),
    (["create", "--network-alias", "x", "busybox"], "only supported for user-defined networks"),
])
def test_usage_errors_exit_125(daemon, argv, message):
    result = invoke(daemon, *argv)
    assert result.code == 125
    assert message in result.err
    assert not daemon.find("POST", "/containers/create")


def test_flags_after_the_image_belong_to_the_command(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
    invoke(daemon, "run", "--rm", "busybox", "ls", "-l", "--rm", "-d")
    body = daemon.one("POST", "/containers/create").json()
    assert body["Cmd"] == ["ls", "-l", "--rm", "-d"]


def test_combined_short_flags_and_equals_forms(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
    invoke(daemon, "run", "-dP", "-eA=1", "--env=B=2", "-p8080:80", "--rm=false",
           "--name=web", "busybox")
    req = daemon.one("POST", "/containers/create")
    body = req.json()
    assert req.q("name") == "web"
    assert body["Env"] == ["A=1", "B=2"]
    assert body["HostConfig"]["PublishAllPorts"] is True
    assert body["HostConfig"]["AutoRemove"] is False
    assert "80/tcp" in body["HostConfig"]["PortBindings"]


def test_env_file_and_cidfile(daemon, tmp_path, monkeypatch):
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nX=1\n\nFROM_HOST\nMISSING_VAR\n")
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("MISSING_VAR", raising=False)
    cidfile = tmp_path / "cid"
    result = invoke(daemon, "create", "--env-file", str(env_file), "-e", "Y=2",
                    "--cidfile", str(cidfile), "busybox")
    assert result.code == 0, result
    body = daemon.one("POST", "/containers/create").json()
    assert body["Env"] == ["X=1", "FROM_HOST=h", "Y=2"]
    assert cidfile.read_text() == CID
    again = invoke(daemon, "create", "--cidfile", str(cidfile), "busybox")
    assert again.code == 125 and "container ID file found" in again.err


def test_create_prints_id_and_reports_daemon_errors(daemon):
    ok = invoke(daemon, "create", "busybox")
    assert ok.code == 0 and ok.out == CID + "\n"
    daemon.route("POST", "/containers/create", error(409, 'Conflict. The container name "/x" '
                                                          "is already in use"))
    bad = invoke(daemon, "create", "--name", "x", "busybox")
    assert bad.code == 125
    assert "is already in use" in bad.err


def test_created_body_is_valid_json_for_every_case(daemon):
    for argv in FLAG_CASES:
        daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
        result = invoke(daemon, *argv, stdin=b"")
        assert result.code == 0, (argv, result)
        json.dumps(daemon.find("POST", "/containers/create")[-1].json())


def test_attach_failure_is_a_run_failure(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach", error(409, "container is paused"))
    result = invoke(daemon, "run", "busybox")
    assert result.code == 125
    assert "container is paused" in result.err
    assert not daemon.find("POST", r"/containers/.*/start")


def test_wait_answered_only_after_exit(daemon):
    """A daemon may hold back the wait response (headers included) until the
    container exits; run must still start it."""
    import threading

    started = threading.Event()

    def start(req, m):
        started.set()
        return Reply(204)

    def wait(req, m):
        assert started.wait(10), "the container was never started"
        return Reply(200, {"StatusCode": 9})

    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([(1, b"x")])))
    daemon.route("POST", r"/containers/[^/]+/start", start)
    daemon.route("POST", r"/containers/[^/]+/wait", wait)
    result = invoke(daemon, "run", "busybox")
    assert result.code == 9 and result.out == "x"


def test_wait_error_after_start(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach", Reply(hijack=attach_script([])))
    daemon.route("POST", r"/containers/[^/]+/wait", error(404, "No such container: gone"))
    result = invoke(daemon, "run", "busybox")
    assert result.code == 125 and "No such container: gone" in result.err
