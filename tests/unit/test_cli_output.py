"""Output of the listing and inspect commands (``ps``, ``images``, ``inspect``,
``history``, ``network ls``, ``volume ls``): compared with the real docker CLI run
against the same fake daemon when it is installed, and with fixed expectations."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from cli_fakedaemon import Reply, error, invoke, start_daemon, stop_daemon

DOCKER = shutil.which("docker")
needs_docker = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")

NOW = int(time.time())
IMG = "sha256:" + "a1b2c3d4e5f6" + "0" * 52

CONTAINERS = [
    {
        "Id": "4f2e" + "1" * 60, "Names": ["/web"], "Image": "nginx:latest", "ImageID": IMG,
        "Command": "/docker-entrypoint.sh nginx -g 'daemon off;'", "Created": NOW - 5 * 3600,
        "Ports": [
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"PrivatePort": 443, "Type": "tcp"},
            {"IP": "127.0.0.1", "PrivatePort": 8000, "PublicPort": 8000, "Type": "tcp"},
            {"IP": "127.0.0.1", "PrivatePort": 8001, "PublicPort": 8001, "Type": "tcp"},
        ],
        "Labels": {"tier": "front"}, "State": "running",
        "Status": "Up 5 hours", "SizeRw": 1234, "SizeRootFs": 187_000_000,
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {"backend": {}}},
        "Mounts": [{"Type": "volume", "Name": "webdata", "Source": "/var/lib/x", "Driver": "local",
                    "Destination": "/data"}],
    },
    {
        "Id": "9a8b" + "2" * 60, "Names": ["/job", "/web/job-link"], "Image": IMG,
        "ImageID": IMG, "Command": "true", "Created": NOW - 3 * 86400, "Ports": [],
        "Labels": {}, "State": "exited", "Status": "Exited (0) 3 days ago",
        "HostConfig": {"NetworkMode": "none"}, "NetworkSettings": {"Networks": {"none": {}}},
        "Mounts": [],
    },
]

IMAGES = [
    # one repository per image: docker iterates over a map of repositories, so the
    # order of rows from different repositories of one image is random there
    {"Id": "sha256:" + "b" * 64, "ParentId": "", "RepoTags": ["busybox:latest", "busybox:1.36"],
     "RepoDigests": ["busybox@sha256:" + "d" * 64], "Created": NOW - 20 * 86400,
     "Size": 4_261_550, "SharedSize": -1, "VirtualSize": 4_261_550, "Labels": None,
     "Containers": -1},
    {"Id": "sha256:" + "9" * 64, "ParentId": "", "RepoTags": ["reg.local:5000/tools/bb:v1"],
     "RepoDigests": [], "Created": NOW - 400 * 86400, "Size": 12_345_678_901,
     "SharedSize": -1, "Labels": None, "Containers": 2},
    {"Id": "sha256:" + "c" * 64, "ParentId": "", "RepoTags": None, "RepoDigests": None,
     "Created": NOW - 90, "Size": 1_500_000_000, "SharedSize": -1, "Labels": None,
     "Containers": -1},
    {"Id": "sha256:" + "e" * 64, "ParentId": "", "RepoTags": [],
     "RepoDigests": ["alpine@sha256:" + "f" * 64], "Created": NOW - 3 * 3600,
     "Size": 7_800_000, "SharedSize": -1, "Labels": None, "Containers": -1},
]

INSPECT = {
    "Id": CONTAINERS[0]["Id"], "Name": "/web", "Image": IMG,
    "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0},
    "Config": {"Image": "nginx:latest", "Env": ["A=1", "B=2"], "Tty": False,
               "Labels": {"tier": "front"}, "Cmd": ["nginx", "-g", "daemon off;"]},
    "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}},
                        "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                                  "443/tcp": None}},
}

NETWORKS = [
    {"Name": "bridge", "Id": "1f" * 32, "Driver": "bridge", "Scope": "local",
     "EnableIPv6": False, "Internal": False, "Labels": {}},
    {"Name": "backend", "Id": "2e" * 32, "Driver": "bridge", "Scope": "local",
     "EnableIPv6": True, "Internal": True, "Labels": {"env": "prod"}},
]

VOLUMES = {"Volumes": [
    {"Name": "webdata", "Driver": "local", "Mountpoint": "/var/lib/engine/volumes/webdata",
     "Labels": None, "Scope": "local"},
    {"Name": "cache", "Driver": "local", "Mountpoint": "/var/lib/engine/volumes/cache",
     "Labels": {"a": "b"}, "Scope": "local"},
], "Warnings": None}

HISTORY = [
    {"Id": "sha256:" + "b" * 64, "Created": NOW - 20 * 86400,
     "CreatedBy": "/bin/sh -c #(nop)  CMD [\"sh\"]", "Tags": ["busybox:latest"], "Size": 0,
     "Comment": ""},
    {"Id": "<missing>", "Created": NOW - 20 * 86400,
     "CreatedBy": "/bin/sh -c #(nop) ADD file:abcdef0123456789 in / ", "Tags": None,
     "Size": 4_261_550, "Comment": "imported"},
]


@pytest.fixture(scope="module")
def daemon():
    d = start_daemon()
    d.route("GET", "/containers/json", Reply(200, CONTAINERS))
    d.route("GET", "/images/json", Reply(200, IMAGES))
    # later routes win: the catch-all 404s go first
    d.route("GET", r"/containers/[^/]+/json", lambda r, m: error(
        404, f"No such container: {m.group(0).split('/')[2]}"))
    d.route("GET", r"/containers/(web|4f2e1+)/json", Reply(200, INSPECT))
    d.route("GET", r"/images/[^/]+/json", lambda r, m: error(404, "No such image"))
    d.route("GET", r"/images/busybox(:latest)?/json", Reply(200, IMAGES[0]))
    d.route("GET", r"/images/busybox/history", Reply(200, HISTORY))
    d.route("GET", "/networks", Reply(200, NETWORKS))
    d.route("GET", r"/networks/[^/]+", lambda r, m: error(404, "network not found"))
    d.route("GET", "/volumes", Reply(200, VOLUMES))
    d.route("GET", r"/volumes/[^/]+", lambda r, m: error(404, "no such volume"))
    d.route("GET", r"/plugins/[^/]+/json", lambda r, m: error(404, "plugin not found"))
    d.route("GET", "/plugins", Reply(200, []))
    yield d
    stop_daemon(d)


def docker(daemon, *argv):
    env = {**os.environ, "DOCKER_HOST": daemon.host, "TZ": "UTC"}
    proc = subprocess.run([DOCKER, *argv], env=env, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout


COMPARED = [
    ["ps"], ["ps", "-a"], ["ps", "--no-trunc"], ["ps", "-q"], ["ps", "-s"],
    ["ps", "--format", "{{.Names}}\\t{{.Ports}}\\t{{.Label \"tier\"}}"],
    ["ps", "--format", "table {{.ID}}\\t{{.Mounts}}\\t{{.Networks}}\\t{{.State}}\\t{{.Labels}}"],
    ["ps", "--format", "{{.Command}}|{{.Size}}|{{.LocalVolumes}}"],
    ["ps", "--format", "table {{.Image}}\\t{{.Names}}\\t{{.RunningFor}}"],
    ["images"], ["images", "--digests"], ["images", "-q"], ["images", "--no-trunc"],
    ["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}} {{.CreatedSince}}"],
    ["images", "--format", "table {{.Repository}}\\t{{.Digest}}\\t{{.Containers}}"],
    ["inspect", "-f", "{{.State.Status}} {{.Config.Env}} {{json .Config.Labels}}", "web"],
    ["inspect", "--format", "{{range $p, $b := .NetworkSettings.Ports}}{{$p}};{{end}}", "web"],
    ["inspect", "-f", "{{index .Config.Labels \"tier\"}}", "web"],
    ["history", "busybox"], ["history", "--no-trunc", "busybox"], ["history", "-q", "busybox"],
    ["network", "ls"], ["network", "ls", "--no-trunc"], ["network", "ls", "-q"],
    ["volume", "ls"], ["volume", "ls", "-q"], ["port", "web"], ["port", "web", "80"],
]


@needs_docker
@pytest.mark.parametrize("argv", COMPARED, ids=" ".join)
def test_output_matches_the_docker_cli(daemon, argv, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        code, expected = docker(daemon, *argv)
        ours = invoke(daemon, *argv)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert code == 0
    assert ours.code == 0, ours
    assert ours.out == expected


def test_ps_default_table(daemon):
    out = invoke(daemon, "ps").out.splitlines()
    assert out[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                              "PORTS", "NAMES"]
    assert out[1].startswith("4f2e11111111   nginx:latest   ")
    assert '"/docker-entrypoint.…"' in out[1]
    assert "5 hours ago" in out[1]
    assert ("443/tcp, 127.0.0.1:8000-8001->8000-8001/tcp, 0.0.0.0:8080->80/tcp, "
            "[::]:8080->80/tcp") in out[1]
    assert out[1].endswith("   web")
    # the second container's image is an id: truncated; link names are hidden
    assert out[2].startswith("9a8b22222222   a1b2c3d4e5f6   ")
    assert out[2].endswith("job")


def test_ps_query_parameters(daemon):
    daemon.requests.clear()
    invoke(daemon, "ps", "-a", "-n", "3", "-s", "-f", "status=running", "-f", "label=a=b")
    req = daemon.one("GET", "/containers/json")
    assert req.q("all") == "1" and req.q("limit") == "3" and req.q("size") == "1"
    import json

    assert json.loads(req.q("filters")) == {"status": {"running": True}, "label": {"a=b": True}}
    daemon.requests.clear()
    invoke(daemon, "ps", "-l")
    assert daemon.one("GET", "/containers/json").q("limit") == "1"


def test_ps_format_json_and_quiet(daemon):
    import json

    lines = invoke(daemon, "ps", "--format", "json").out.splitlines()
    first = json.loads(lines[0])
    assert first["Names"] == "web" and first["State"] == "running"
    assert invoke(daemon, "ps", "-q", "--no-trunc").out.split() == [c["Id"] for c in CONTAINERS]


def test_images_rows_per_tag(daemon):
    out = invoke(daemon, "images").out.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = [line.split()[:3] for line in out[1:]]
    assert ["busybox", "latest", "b" * 12] in rows
    assert ["busybox", "1.36", "b" * 12] in rows
    assert ["reg.local:5000/tools/bb", "v1", "9" * 12] in rows
    assert ["<none>", "<none>", "c" * 12] in rows
    assert ["alpine", "<none>", "e" * 12] in rows
    assert "4.26MB" in out[1] and "2 weeks ago" in out[1]


def test_inspect_falls_back_to_image(daemon):
    result = invoke(daemon, "inspect", "-f", "{{.Id}} {{.Size}}", "busybox")
    assert result.code == 0, result
    assert result.out == f"sha256:{'b' * 64} 4261550\n"


def test_inspect_json_array_and_missing(daemon):
    import json

    result = invoke(daemon, "inspect", "web", "ghost")
    assert result.code == 1
    assert json.loads(result.out) == [INSPECT]
    assert result.out.startswith("[\n    {\n")
    assert "Error: No such object: ghost" in result.err
    typed = invoke(daemon, "inspect", "--type", "container", "ghost")
    assert typed.code == 1 and "No such container: ghost" in typed.err


def test_inspect_bad_template(daemon):
    result = invoke(daemon, "inspect", "-f", "{{.State.Status", "web")
    assert result.code == 1 and "template parsing error" in result.err


def test_network_and_volume_rows(daemon):
    nets = invoke(daemon, "network", "ls").out.splitlines()
    assert nets[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert nets[1].startswith("2e2e2e2e2e2e   backend ")
    vols = invoke(daemon, "volume", "ls", "--format", "{{.Name}}={{.Labels}}").out
    assert vols == "cache=a=b\nwebdata=\n"


def test_history_table(daemon):
    out = invoke(daemon, "history", "busybox").out.splitlines()
    assert out[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert out[2].startswith("<missing>")
    assert "4.26MB" in out[2] and "imported" in out[2]
