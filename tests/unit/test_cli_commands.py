"""The other commands against a fake daemon: logs, exec, start/attach, cp, the
lifecycle verbs, image transfer, events, prune, networks, volumes and plugins."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
from cli_fakedaemon import (
    CID,
    Reply,
    attach_script,
    error,
    frame,
    invoke,
    start_daemon,
    stop_daemon,
)

DOCKER = shutil.which("docker")


@pytest.fixture
def daemon():
    d = start_daemon()
    d.route("GET", r"/containers/[^/]+/json", Reply(200, {
        "Id": CID, "Config": {"Tty": False, "OpenStdin": True},
        "State": {"Running": True, "Paused": False}}))
    yield d
    stop_daemon(d)


def test_logs_demultiplexes_and_passes_options(daemon):
    daemon.route("GET", r"/containers/[^/]+/logs",
                 Reply(200, (frame(1, b"out 1\n") + frame(2, b"err 1\n"), frame(1, b"out 2\n"))))
    result = invoke(daemon, "logs", "--tail", "5", "-t", "--since", "1700000000", "web")
    assert result.code == 0, result
    assert result.out == "out 1\nout 2\n" and result.err == "err 1\n"
    req = daemon.one("GET", r"/containers/.*/logs")
    assert (req.q("tail"), req.q("timestamps"), req.q("since"), req.q("stdout"),
            req.q("stderr")) == ("5", "1", "1700000000", "1", "1")
    assert req.q("follow") is None


def test_logs_of_a_tty_container_are_raw(daemon):
    daemon.route("GET", r"/containers/[^/]+/json", Reply(200, {"Id": CID,
                                                              "Config": {"Tty": True}}))
    daemon.route("GET", r"/containers/[^/]+/logs", Reply(200, b"plain\r\n"))
    assert invoke(daemon, "logs", "web").out == "plain\r\n"


def test_logs_relative_since(daemon):
    daemon.route("GET", r"/containers/[^/]+/logs", Reply(200, b""))
    invoke(daemon, "logs", "--since", "10m", "web")
    since = int(daemon.one("GET", r"/containers/.*/logs").q("since"))
    import time

    assert abs(time.time() - 600 - since) < 5


def test_exec_returns_the_exec_exit_code(daemon):
    daemon.route("POST", r"/containers/[^/]+/exec", Reply(201, {"Id": "e1"}))
    daemon.route("POST", r"/exec/e1/start",
                 Reply(hijack=attach_script([(1, b"inside\n")], echo_stdin=False)))
    daemon.route("GET", r"/exec/e1/json", Reply(200, {"ExitCode": 7, "Running": False}))
    result = invoke(daemon, "exec", "-e", "A=1", "-u", "app", "-w", "/tmp", "web", "sh", "-c",
                    "exit 7")
    assert result.code == 7 and result.out == "inside\n"
    body = daemon.one("POST", r"/containers/web/exec").json()
    assert body["Cmd"] == ["sh", "-c", "exit 7"]
    assert body["Env"] == ["A=1"] and body["User"] == "app" and body["WorkingDir"] == "/tmp"
    assert body["AttachStdout"] and body["AttachStderr"] and not body["AttachStdin"]
    start = daemon.one("POST", "/exec/e1/start")
    assert start.json() == {"Detach": False, "Tty": False}
    assert start.headers["Upgrade"] == "tcp"


def test_exec_interactive_and_detached(daemon):
    daemon.route("POST", r"/containers/[^/]+/exec", Reply(201, {"Id": "e2"}))
    daemon.route("POST", r"/exec/e2/start", Reply(hijack=attach_script([], echo_stdin=True)))
    daemon.route("GET", r"/exec/e2/json", Reply(200, {"ExitCode": 0}))
    result = invoke(daemon, "exec", "-i", "web", "cat", stdin=b"piped\n")
    assert result.code == 0 and result.out == "piped\n"
    daemon.route("POST", r"/exec/e2/start", Reply(200, b""))
    result = invoke(daemon, "exec", "-d", "web", "sleep", "5")
    assert result.code == 0 and result.out == ""
    assert daemon.find("POST", "/exec/e2/start")[-1].json()["Detach"] is True


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_exec_body_matches_the_docker_cli(daemon):
    daemon.route("POST", r"/containers/[^/]+/exec", Reply(201, {"Id": "e3"}))
    daemon.route("POST", r"/exec/e3/start", Reply(200, b""))
    daemon.route("GET", r"/exec/e3/json", Reply(200, {"ExitCode": 0}))
    argv = ["exec", "-d", "-e", "A=1", "--privileged", "-u", "1000", "-w", "/w", "web", "ls"]
    subprocess.run([DOCKER, *argv], env={**os.environ, "DOCKER_HOST": daemon.host},
                   capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    theirs = daemon.find("POST", r"/containers/web/exec")[-1].json()
    invoke(daemon, *argv)
    ours = daemon.find("POST", r"/containers/web/exec")[-1].json()
    for key in ("User", "Privileged", "Tty", "AttachStdin", "AttachStdout", "AttachStderr",
                "Detach", "Env", "WorkingDir", "Cmd"):
        assert ours.get(key) == theirs.get(key), key


def test_start_attach_streams_and_returns_exit_code(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach",
                 Reply(hijack=attach_script([(1, b"started\n")])))
    daemon.route("POST", r"/containers/[^/]+/wait", Reply(200, {"StatusCode": 4}))
    result = invoke(daemon, "start", "-a", "web")
    assert result.code == 4 and result.out == "started\n"
    paths = [r.path for r in daemon.requests if r.method == "POST"]
    assert paths == [f"/containers/{CID}/attach", f"/containers/{CID}/wait",
                     f"/containers/{CID}/start"]


def test_start_several_and_report_failures(daemon):
    daemon.route("POST", r"/containers/bad/start", error(404, "No such container: bad"))
    result = invoke(daemon, "start", "a", "bad", "b")
    assert result.code == 1
    assert result.out == "a\nb\n"
    assert "No such container: bad" in result.err


def test_attach_with_stdin(daemon):
    daemon.route("POST", r"/containers/[^/]+/attach",
                 Reply(hijack=attach_script([], echo_stdin=True)))
    daemon.route("POST", r"/containers/[^/]+/wait", Reply(200, {"StatusCode": 0}))
    result = invoke(daemon, "attach", "web", stdin=b"to the container\n")
    assert result.code == 0 and result.out == "to the container\n"
    assert daemon.one("POST", r"/containers/.*/attach").q("stdin") == "1"


def test_attach_refuses_stopped_container(daemon):
    daemon.route("GET", r"/containers/[^/]+/json", Reply(200, {"Id": CID, "Config": {},
                                                              "State": {"Running": False}}))
    result = invoke(daemon, "attach", "web")
    assert result.code == 1 and "start it first" in result.err


@pytest.mark.parametrize("argv, method, path, query", [
    (["stop", "-t", "3", "a"], "POST", "/containers/a/stop", {"t": "3"}),
    (["restart", "a"], "POST", "/containers/a/restart", {}),
    (["kill", "-s", "HUP", "a"], "POST", "/containers/a/kill", {"signal": "HUP"}),
    (["rm", "-f", "-v", "a"], "DELETE", "/containers/a", {"force": "1", "v": "1"}),
    (["pause", "a"], "POST", "/containers/a/pause", {}),
    (["unpause", "a"], "POST", "/containers/a/unpause", {}),
    (["container", "rm", "a"], "DELETE", "/containers/a", {}),
])
def test_lifecycle_verbs(daemon, argv, method, path, query):
    daemon.route(method, path, Reply(204))
    result = invoke(daemon, *argv)
    assert result.code == 0 and result.out == "a\n"
    req = daemon.one(method, path)
    assert {k: v[-1] for k, v in req.query.items()} == query


def test_rm_reports_each_failure(daemon):
    daemon.route("DELETE", r"/containers/(ok1|ok2)", Reply(204))
    daemon.route("DELETE", r"/containers/gone", error(404, "No such container: gone"))
    result = invoke(daemon, "rm", "ok1", "gone", "ok2")
    assert result.code == 1 and result.out == "ok1\nok2\n"
    assert result.err == "Error response from daemon: No such container: gone\n"


def test_rename_wait_top_diff(daemon):
    daemon.route("POST", r"/containers/a/rename", Reply(204))
    assert invoke(daemon, "rename", "a", "b").code == 0
    assert daemon.one("POST", "/containers/a/rename").q("name") == "b"
    daemon.route("POST", r"/containers/[^/]+/wait", Reply(200, {"StatusCode": 42}))
    assert invoke(daemon, "wait", "a").out == "42\n"
    daemon.route("GET", r"/containers/a/top", Reply(200, {
        "Titles": ["UID", "PID", "CMD"], "Processes": [["root", "1", "sleep 100"]]}))
    assert invoke(daemon, "top", "a").out.splitlines() == ["UID    PID   CMD",
                                                           "root   1     sleep 100"]
    daemon.route("GET", r"/containers/a/changes", Reply(200, [
        {"Path": "/tmp", "Kind": 0}, {"Path": "/tmp/new", "Kind": 1}, {"Path": "/x", "Kind": 2}]))
    assert invoke(daemon, "diff", "a").out == "C /tmp\nA /tmp/new\nD /x\n"


def _tar(entries: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _stat(name: str, is_dir: bool) -> str:
    mode = (1 << 31) | 0o755 if is_dir else 0o644
    doc = {"name": name, "size": 0, "mode": mode, "mtime": "2024-01-01T00:00:00Z",
           "linkTarget": ""}
    return base64.b64encode(json.dumps(doc).encode()).decode()


def test_cp_from_container_file_and_dir(daemon, tmp_path):
    daemon.route("GET", r"/containers/web/archive", lambda r, m: Reply(
        200, _tar({"hosts": b"127.0.0.1 localhost\n"}),
        {"X-Docker-Container-Path-Stat": _stat("hosts", False)})
        if r.q("path") == "/etc/hosts" else Reply(
        200, _tar({"conf": None, "conf/a": b"A", "conf/sub": None, "conf/sub/b": b"B"}),
        {"X-Docker-Container-Path-Stat": _stat("conf", True)}))
    # file to a new name
    assert invoke(daemon, "cp", "web:/etc/hosts", str(tmp_path / "h")).code == 0
    assert (tmp_path / "h").read_text() == "127.0.0.1 localhost\n"
    # file into an existing directory keeps its name
    (tmp_path / "d").mkdir()
    assert invoke(daemon, "cp", "web:/etc/hosts", str(tmp_path / "d")).code == 0
    assert (tmp_path / "d" / "hosts").exists()
    # directory to a new path: the path becomes the directory
    assert invoke(daemon, "cp", "web:/etc/conf", str(tmp_path / "copy")).code == 0
    assert (tmp_path / "copy" / "sub" / "b").read_text() == "B"
    # directory into an existing directory: nested under its own name
    assert invoke(daemon, "cp", "web:/etc/conf", str(tmp_path / "d")).code == 0
    assert (tmp_path / "d" / "conf" / "a").read_text() == "A"
    # a missing destination directory for a file is an error
    bad = invoke(daemon, "cp", "web:/etc/hosts", str(tmp_path / "nope") + "/")
    assert bad.code == 1 and "does not exist" in bad.err
    # "dir/." copies the contents; hidden files keep their names
    daemon.route("GET", r"/containers/web/archive", Reply(
        200, _tar({".": None, "./.hidden": b"H", "./x": b"X"}),
        {"X-Docker-Container-Path-Stat": _stat(".", True)}))
    assert invoke(daemon, "cp", "web:/etc/conf/.", str(tmp_path / "contents")).code == 0
    assert sorted(os.listdir(tmp_path / "contents")) == [".hidden", "x"]


def test_cp_to_container(daemon, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "f.txt").write_text("hello")
    daemon.route("HEAD", r"/containers/web/archive", lambda r, m: Reply(
        200, b"", {"X-Docker-Container-Path-Stat": _stat("tmp", True)})
        if r.q("path") == "/tmp" else error(404, "no such file"))
    daemon.route("PUT", r"/containers/web/archive", Reply(200))
    # into an existing directory
    assert invoke(daemon, "cp", str(src), "web:/tmp").code == 0
    put = daemon.find("PUT", "/containers/web/archive")[-1]
    assert put.q("path") == "/tmp" and put.q("noOverwriteDirNonDir") == "1"
    names = tarfile.open(fileobj=io.BytesIO(put.body)).getnames()
    assert "data" in names and "data/f.txt" in names
    # to a new path: uploaded to the parent under the new name
    assert invoke(daemon, "cp", str(src / "f.txt"), "web:/tmp/renamed.txt").code == 0
    put = daemon.find("PUT", "/containers/web/archive")[-1]
    assert put.q("path") == "/tmp"
    with tarfile.open(fileobj=io.BytesIO(put.body)) as tar:
        assert tar.getnames() == ["renamed.txt"]
        assert tar.extractfile("renamed.txt").read() == b"hello"


def test_cp_tar_stream_to_stdout(daemon):
    payload = _tar({"hosts": b"x"})
    daemon.route("GET", r"/containers/web/archive",
                 Reply(200, payload, {"X-Docker-Container-Path-Stat": _stat("hosts", False)}))
    result = invoke(daemon, "cp", "web:/etc/hosts", "-")
    assert result.code == 0
    assert result.out.encode() == payload


def test_cp_usage_errors(daemon):
    assert invoke(daemon, "cp", "a", "b").code == 125
    assert invoke(daemon, "cp", "x:/a", "y:/b").code == 125


def test_export_save_load_import(daemon, tmp_path):
    daemon.route("GET", r"/containers/web/export", Reply(200, (b"tar-", b"bytes")))
    out = tmp_path / "fs.tar"
    assert invoke(daemon, "export", "-o", str(out), "web").code == 0
    assert out.read_bytes() == b"tar-bytes"

    daemon.route("GET", "/images/get", Reply(200, b"image-tar"))
    assert invoke(daemon, "save", "-o", str(out), "busybox", "alpine:3").code == 0
    assert out.read_bytes() == b"image-tar"
    assert daemon.one("GET", "/images/get").query["names"] == ["busybox", "alpine:3"]

    daemon.route("POST", "/images/load", Reply(200, (
        b'{"stream":"Loaded image: busybox:latest\\n"}\n',)))
    result = invoke(daemon, "load", "-i", str(out))
    assert result.code == 0 and result.out == "Loaded image: busybox:latest\n"
    assert daemon.one("POST", "/images/load").body == b"image-tar"

    daemon.route("POST", "/images/create", Reply(200, (b'{"status":"sha256:abc"}\n',)))
    result = invoke(daemon, "import", "-c", "CMD [\"sh\"]", "-m", "msg", str(out), "bb:v1")
    assert result.code == 0 and result.out == "sha256:abc\n"
    req = daemon.one("POST", "/images/create")
    assert (req.q("fromSrc"), req.q("repo"), req.q("tag"), req.q("message"),
            req.q("changes")) == ("-", "bb", "v1", "msg", 'CMD ["sh"]')
    assert req.body == b"image-tar"


def test_import_from_stdin(daemon):
    daemon.route("POST", "/images/create", Reply(200, (b'{"status":"sha256:def"}\n',)))
    result = invoke(daemon, "import", "-", stdin=b"rootfs-tar")
    assert result.code == 0 and result.out == "sha256:def\n"
    assert daemon.one("POST", "/images/create").body == b"rootfs-tar"


def test_save_refuses_a_terminal(daemon, monkeypatch):
    from engine.sdk.cli import common

    monkeypatch.setattr(common, "is_terminal", lambda stream: True)
    import engine.sdk.cli.transfer as transfer

    monkeypatch.setattr(transfer, "is_terminal", lambda stream: True)
    result = invoke(daemon, "save", "busybox")
    assert result.code == 1 and "cowardly refusing" in result.err


def test_images_commands(daemon):
    daemon.route("DELETE", r"/images/busybox", Reply(200, [
        {"Untagged": "busybox:latest"}, {"Deleted": "sha256:abc"}]))
    result = invoke(daemon, "rmi", "-f", "busybox")
    assert result.out == "Untagged: busybox:latest\nDeleted: sha256:abc\n"
    assert daemon.one("DELETE", "/images/busybox").q("force") == "1"
    daemon.route("POST", r"/images/busybox/tag", Reply(201))
    assert invoke(daemon, "tag", "busybox", "reg:5000/me/bb:v2").code == 0
    tag = daemon.one("POST", "/images/busybox/tag")
    assert (tag.q("repo"), tag.q("tag")) == ("reg:5000/me/bb", "v2")
    daemon.route("POST", "/commit", Reply(201, {"Id": "sha256:new"}))
    result = invoke(daemon, "commit", "-a", "me", "-m", "msg", "-c", "ENV A=1", "web", "img:1")
    assert result.out == "sha256:new\n"
    commit = daemon.one("POST", "/commit")
    assert (commit.q("container"), commit.q("repo"), commit.q("tag"), commit.q("author"),
            commit.q("comment"), commit.q("changes"), commit.q("pause")) == \
        ("web", "img", "1", "me", "msg", "ENV A=1", "1")


def test_pull_prints_progress(daemon):
    daemon.route("POST", "/images/create", Reply(200, (
        b'{"status":"Pulling from library/alpine","id":"3"}\n'
        b'{"status":"Digest: sha256:abc"}\n{"status":"Status: Image is up to date"}\n',)))
    result = invoke(daemon, "pull", "alpine:3")
    assert result.code == 0
    assert result.out == ("3: Pulling from library/alpine\nDigest: sha256:abc\n"
                          "Status: Image is up to date\ndocker.io/library/alpine:3\n")
    pull = daemon.one("POST", "/images/create")
    assert (pull.q("fromImage"), pull.q("tag")) == ("alpine", "3")
    quiet = invoke(daemon, "pull", "-q", "reg.local:5000/team/app")
    assert quiet.out == "reg.local:5000/team/app:latest\n"
    assert invoke(daemon, "pull", "busybox").out.startswith("Using default tag: latest\n")


@pytest.fixture
def utc(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_events_default_format_and_template(daemon, utc):
    event = {"Type": "container", "Action": "start", "Actor": {
        "ID": "abc", "Attributes": {"name": "web", "image": "busybox"}},
        "time": 1700000000, "timeNano": 1700000000123456789}
    daemon.route("GET", "/events", Reply(200, (json.dumps(event).encode() + b"\n",)))
    result = invoke(daemon, "events", "--since", "1699999999", "-f", "type=container")
    assert result.out == ("2023-11-14T22:13:20.123456789Z container start abc "
                          "(image=busybox, name=web)\n")
    req = daemon.one("GET", "/events")
    assert req.q("since") == "1699999999"
    assert json.loads(req.q("filters")) == {"type": {"container": True}}
    result = invoke(daemon, "events", "--format",
                    "{{.Type}}/{{.Action}} {{.Actor.Attributes.name}}")
    assert result.out == "container/start web\n"


def test_version_and_info(daemon):
    daemon.route("GET", "/version", Reply(200, {"Version": "0.1.0", "ApiVersion": "1.41",
                                                 "MinAPIVersion": "1.12", "Os": "linux",
                                                 "Arch": "amd64"}))
    result = invoke(daemon, "version", "--format", "{{.Client.ApiVersion}} {{.Server.Version}}")
    assert result.out == "1.41 0.1.0\n"
    assert "API version:      1.41 (minimum version 1.12)" in invoke(daemon, "version").out
    daemon.route("GET", "/info", Reply(200, {"Containers": 3, "ContainersRunning": 1,
                                              "NCPU": 2, "MemTotal": 2 * 1024 ** 3,
                                              "Plugins": {"Log": ["json-file", "none"]}}))
    info = invoke(daemon, "info").out
    assert " Containers: 3\n  Running: 1\n" in info
    assert " Total Memory: 2GiB" in info and "  Log: json-file none" in info
    assert invoke(daemon, "info", "-f", "{{.NCPU}}").out == "2\n"


def test_prunes_and_df(daemon):
    daemon.route("POST", "/containers/prune", Reply(200, {"ContainersDeleted": ["c1"],
                                                          "SpaceReclaimed": 2000}))
    daemon.route("POST", "/networks/prune", Reply(200, {"NetworksDeleted": ["n1"]}))
    daemon.route("POST", "/volumes/prune", Reply(200, {"VolumesDeleted": ["v1"],
                                                       "SpaceReclaimed": 1000}))
    daemon.route("POST", "/images/prune", Reply(200, {"ImagesDeleted": [
        {"Untagged": "a:1"}, {"Deleted": "sha256:1"}], "SpaceReclaimed": 5_000_000}))
    result = invoke(daemon, "system", "prune", "-af", "--volumes")
    assert result.code == 0, result
    assert "Deleted Containers:\nc1\n" in result.out
    assert "Deleted Networks:\nn1\n" in result.out
    assert "Deleted Volumes:\nv1\n" in result.out
    assert "untagged: a:1\ndeleted: sha256:1\n" in result.out
    assert result.out.endswith("Total reclaimed space: 5.003MB\n") or \
        result.out.endswith("Total reclaimed space: 5MB\n")
    assert json.loads(daemon.one("POST", "/images/prune").q("filters")) == \
        {"dangling": {"false": True}}
    # without --force the prompt is answered from stdin
    no = invoke(daemon, "container", "prune", stdin=b"n\n")
    assert "Are you sure" in no.out and len(daemon.find("POST", "/containers/prune")) == 1
    yes = invoke(daemon, "container", "prune", stdin=b"y\n")
    assert "Total reclaimed space: 2kB" in yes.out
    daemon.route("GET", "/system/df", Reply(200, {
        "LayersSize": 10_000_000, "Images": [{"Size": 10_000_000, "Containers": 0,
                                              "SharedSize": 0}],
        "Containers": [{"SizeRw": 100, "State": "exited"}], "Volumes": [], "BuildCache": []}))
    df = invoke(daemon, "system", "df").out.splitlines()
    assert df[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert df[1].split() == ["Images", "1", "0", "10MB", "10MB", "(100%)"]


@pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")
def test_network_and_volume_create_bodies_match_docker(daemon):
    daemon.route("POST", "/networks/create", Reply(201, {"Id": "n" * 64, "Warning": ""}))
    daemon.route("POST", "/volumes/create", Reply(201, {"Name": "vol1", "Driver": "local"}))
    cases = [["network", "create", "-d", "bridge", "--subnet", "10.9.0.0/24", "--gateway",
              "10.9.0.1", "--ip-range", "10.9.0.128/25", "-o", "mtu=1400", "--label", "a=b",
              "--internal", "--attachable", "net1"],
             ["volume", "create", "-d", "local", "-o", "type=tmpfs", "--label", "x=y", "vol1"]]
    for argv in cases:
        path = "/networks/create" if argv[0] == "network" else "/volumes/create"
        subprocess.run([DOCKER, *argv], env={**os.environ, "DOCKER_HOST": daemon.host},
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        theirs = daemon.find("POST", path)[-1].json()
        result = invoke(daemon, *argv)
        assert result.code == 0, result
        ours = daemon.find("POST", path)[-1].json()
        for key, value in theirs.items():
            if value not in (None, "", False, {}, []):
                assert ours.get(key) == value, (key, ours.get(key), value)


def test_network_volume_plugin_verbs(daemon):
    daemon.route("POST", r"/networks/n1/connect", Reply(200))
    assert invoke(daemon, "network", "connect", "--alias", "db", "--ip", "10.0.0.9",
                  "n1", "web").code == 0
    body = daemon.one("POST", "/networks/n1/connect").json()
    assert body["Container"] == "web"
    assert body["EndpointConfig"]["Aliases"] == ["db"]
    assert body["EndpointConfig"]["IPAMConfig"]["IPv4Address"] == "10.0.0.9"
    daemon.route("POST", r"/networks/n1/disconnect", Reply(200))
    assert invoke(daemon, "network", "disconnect", "-f", "n1", "web").code == 0
    assert daemon.one("POST", "/networks/n1/disconnect").json() == {"Container": "web",
                                                                    "Force": True}
    daemon.route("DELETE", r"/networks/n1", Reply(204))
    assert invoke(daemon, "network", "rm", "n1").out == "n1\n"
    daemon.route("DELETE", r"/volumes/v1", Reply(204))
    assert invoke(daemon, "volume", "rm", "-f", "v1").out == "v1\n"
    assert daemon.one("DELETE", "/volumes/v1").q("force") == "1"
    daemon.route("GET", "/plugins", Reply(200, [{"Id": "p" * 64, "Name": "vol-bind",
                                                  "Enabled": True,
                                                  "Config": {"Description": "bind volumes"}}]))
    out = invoke(daemon, "plugin", "ls").out.splitlines()
    assert out[0].split() == ["ID", "NAME", "DESCRIPTION", "ENABLED"]
    assert out[1].split() == ["p" * 12, "vol-bind", "bind", "volumes", "true"]
    daemon.route("POST", r"/plugins/vol-bind/disable", Reply(200))
    daemon.route("POST", r"/plugins/vol-bind/enable", Reply(200))
    assert invoke(daemon, "plugin", "disable", "vol-bind").out == "vol-bind\n"
    assert invoke(daemon, "plugin", "enable", "vol-bind").out == "vol-bind\n"
    daemon.route("GET", "/plugins/privileges", Reply(200, []))
    daemon.route("POST", "/plugins/pull", Reply(200, (b"{}\n",)))
    daemon.route("POST", r"/plugins/x/enable", Reply(200))
    result = invoke(daemon, "plugin", "install", "--alias", "x", "example/plugin")
    assert result.out == "Installed plugin x\n"
    assert daemon.one("POST", "/plugins/pull").q("remote") == "example/plugin"


def test_global_flags_and_help(daemon):
    from engine.sdk.cli import main

    assert main(["--version"]) == 0
    assert main(["--help"]) == 0
    assert invoke(daemon, "nosuch").code == 125
    assert "is not a engine command" in invoke(daemon, "nosuch").err
    result = invoke(daemon, "run", "--help")
    assert result.code == 0 and "Usage:  engine run [OPTIONS] IMAGE" in result.out
    assert "--publish" in result.out
    assert invoke(daemon, "network").code == 0
    assert invoke(daemon, "network", "bogus").code == 125


def test_unreachable_daemon(tmp_path):
    from cli_fakedaemon import FakeDaemon

    ghost = FakeDaemon(str(tmp_path / "none.sock"))  # never started
    result = invoke(ghost, "ps")
    assert result.code == 1 and "Cannot connect to the engine daemon" in result.err
    result = invoke(ghost, "run", "busybox")
    assert result.code == 125 and "Cannot connect" in result.err


def test_tcp_host_is_refused(daemon):
    from engine.sdk.cli import Cli, main

    err = io.StringIO()
    assert main(["-H", "tcp://127.0.0.1:2375", "ps"], cli=Cli(err=err, out=io.StringIO())) == 1
    assert "TLS" in err.getvalue()


def test_stats_no_stream(daemon):
    sample = {
        "id": CID, "name": "/web",
        "cpu_stats": {"cpu_usage": {"total_usage": 400_000_000}, "system_cpu_usage": 2_000_000_000,
                      "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 200_000_000},
                         "system_cpu_usage": 1_000_000_000},
        "memory_stats": {"usage": 20 * 1024 ** 2, "limit": 100 * 1024 ** 2,
                         "stats": {"inactive_file": 0}},
        "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 500}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 4096},
                                                       {"op": "write", "value": 0}]},
        "pids_stats": {"current": 3},
    }
    daemon.route("GET", r"/containers/web/stats", Reply(200, sample))
    result = invoke(daemon, "stats", "--no-stream", "web")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/",
                                "LIMIT", "MEM", "%", "NET", "I/O", "BLOCK", "I/O", "PIDS"]
    assert lines[1].split() == [CID[:12], "web", "40.00%", "20MiB", "/", "100MiB", "20.00%",
                                "1.5kB", "/", "500B", "4.1kB", "/", "0B", "3"]
    assert daemon.one("GET", "/containers/web/stats").q("stream") == "0"


def test_login_and_logout(daemon):
    daemon.route("POST", "/auth", Reply(200, {"Status": "Login Succeeded"}))
    result = invoke(daemon, "login", "-u", "me", "--password-stdin", "reg.local:5000",
                    stdin=b"s3cret\n")
    assert result.code == 0 and result.out == "Login Succeeded\n"
    assert daemon.one("POST", "/auth").json() == {"username": "me", "password": "s3cret",
                                                  "serveraddress": "reg.local:5000"}
    assert invoke(daemon, "logout", "reg.local:5000").out == \
        "Removing login credentials for reg.local:5000\n"


def test_push_streams_progress(daemon):
    daemon.route("POST", r"/images/reg.local:5000/bb/push", Reply(200, (
        b'{"status":"The push refers to repository [reg.local:5000/bb]"}\n'
        b'{"status":"Pushed","id":"abc"}\n{"status":"v1: digest: sha256:1 size: 527"}\n',)))
    result = invoke(daemon, "push", "reg.local:5000/bb:v1")
    assert result.code == 0, result
    assert result.out.splitlines() == ["The push refers to repository [reg.local:5000/bb]",
                                       "abc: Pushed", "v1: digest: sha256:1 size: 527"]
    req = daemon.one("POST", r"/images/reg.local:5000/bb/push")
    assert req.q("tag") == "v1" and "X-Registry-Auth" in req.headers


def test_container_management_aliases(daemon):
    daemon.route("GET", "/containers/json", Reply(200, []))
    for argv in (["container", "ls", "-a"], ["container", "ps"], ["container", "list"]):
        result = invoke(daemon, *argv)
        assert result.code == 0 and result.out.startswith("CONTAINER ID")
    daemon.route("GET", "/images/json", Reply(200, []))
    assert invoke(daemon, "image", "ls").out.startswith("REPOSITORY")


def test_help_command(daemon):
    result = invoke(daemon, "help", "ps")
    assert result.code == 0 and "Usage:  engine ps [OPTIONS]" in result.out
    result = invoke(daemon, "help", "network", "ls")
    assert result.code == 0 and "Usage:  engine network ls" in result.out


def test_system_df_verbose_and_history_raw(daemon):
    daemon.route("GET", "/system/df", Reply(200, {
        "LayersSize": 4_261_550,
        "Images": [{"Id": "sha256:" + "b" * 64, "RepoTags": ["busybox:latest"], "Created": 0,
                    "Size": 4_261_550, "SharedSize": 0, "Containers": 1}],
        "Containers": [{"Id": CID, "Names": ["/web"], "Image": "busybox", "Command": "sh",
                        "Created": 0, "SizeRw": 12, "State": "running", "Status": "Up",
                        "Mounts": []}],
        "Volumes": [{"Name": "v1", "UsageData": {"Size": 2048, "RefCount": 1}}],
        "BuildCache": []}))
    out = invoke(daemon, "system", "df", "-v").out
    assert "Images space usage:" in out and "busybox" in out
    assert "Containers space usage:" in out and "web" in out
    assert "Local Volumes space usage:" in out and "v1" in out and "2.05kB" in out
    daemon.route("GET", r"/images/busybox/history", Reply(200, [
        {"Id": "sha256:" + "b" * 64, "Created": 0, "CreatedBy": "x", "Size": 4_261_550}]))
    raw = invoke(daemon, "history", "-H=false", "busybox").out.splitlines()
    assert raw[1].split()[1:] == ["1970-01-01T00:00:00Z", "x", "4261550"]


def test_cp_tar_from_stdin(daemon):
    payload = _tar({"a.txt": b"A"})
    daemon.route("HEAD", r"/containers/web/archive",
                 Reply(200, b"", {"X-Docker-Container-Path-Stat": _stat("tmp", True)}))
    daemon.route("PUT", r"/containers/web/archive", Reply(200))
    result = invoke(daemon, "cp", "-", "web:/tmp", stdin=payload)
    assert result.code == 0, result
    put = daemon.one("PUT", "/containers/web/archive")
    assert put.q("path") == "/tmp" and put.body == payload
    daemon.route("HEAD", r"/containers/web/archive", error(404, "not found"))
    missing = invoke(daemon, "cp", "-", "web:/nope", stdin=payload)
    assert missing.code == 1 and "must be a directory" in missing.err


def test_registry_command_hands_over_to_the_registry_server(capsys):
    from engine.sdk.cli import main

    assert main(["registry", "--help"]) == 0
    assert "engine registry serve" in capsys.readouterr().out
