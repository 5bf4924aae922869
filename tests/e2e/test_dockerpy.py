"""Acceptance with docker-py (the ``docker`` package from PyPI), unchanged."""
from __future__ import annotations

import io
import secrets
import tarfile
import time

import pytest

docker = pytest.importorskip("docker")
from docker.errors import APIError, ContainerError, ImageNotFound, NotFound  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.clients]


def uid(prefix: str = "py") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def client(engine_daemon):
    c = docker.DockerClient(base_url=engine_daemon.host, version="1.41", timeout=60)
    made: list = []
    c.made = made  # containers to remove when the test ends
    yield c
    for ctr in made:
        try:
            ctr.remove(force=True, v=True)
        except NotFound:
            pass
    c.close()


def track(client, ctr):
    client.made.append(ctr)
    return ctr


def test_run_attached_and_detached(client):
    assert client.containers.run("busybox", ["echo", "hello"], remove=True) == b"hello\n"
    with pytest.raises(ContainerError) as exc:
        client.containers.run("busybox", ["sh", "-c", "echo oops >&2; exit 3"], remove=True)
    assert exc.value.exit_status == 3 and b"oops" in exc.value.stderr

    name = uid()
    ctr = track(client, client.containers.run(
        "busybox", ["sh", "-c", "echo started; sleep 60"], detach=True, name=name,
        environment={"X": "1"}, labels={"suite": "py"}))
    ctr.reload()
    assert ctr.status == "running" and ctr.name == name
    assert ctr.labels == {"suite": "py"}
    assert "X=1" in ctr.attrs["Config"]["Env"]
    assert client.containers.get(name).id == ctr.id
    assert ctr.id in [c.id for c in client.containers.list(filters={"label": "suite=py"})]
    ctr.stop(timeout=1)
    ctr.reload()
    assert ctr.status == "exited"


def test_logs_stream_follow_and_wait(client):
    ctr = track(client, client.containers.run(
        "busybox", ["sh", "-c", "for i in 1 2 3; do echo n$i; sleep 0.2; done; exit 2"],
        detach=True))
    lines = [chunk for chunk in ctr.logs(stream=True, follow=True)]
    assert b"".join(lines) == b"n1\nn2\nn3\n"
    assert ctr.wait(timeout=10) == {"StatusCode": 2, "Error": None}
    assert ctr.logs(tail=1) == b"n3\n"
    assert ctr.logs(timestamps=True).split(b" ", 1)[1].startswith(b"n1\n")


def test_exec_run(client):
    ctr = track(client, client.containers.run("busybox", ["sleep", "60"], detach=True))
    res = ctr.exec_run(["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert res.exit_code == 4 and b"out\n" in res.output and b"err\n" in res.output
    res = ctr.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
    assert res.output == (b"out\n", b"err\n")
    res = ctr.exec_run("id -u", user="1000", workdir="/tmp", environment={"E": "v"})
    assert (res.exit_code, res.output) == (0, b"1000\n")
    res = ctr.exec_run(["sh", "-c", "stty size; exit 3"], tty=True)
    assert res.exit_code == 3 and b"\r\n" in res.output  # a terminal's line discipline
    res = ctr.exec_run("no-such-binary")
    assert res.exit_code == 127 and b"executable file not found" in res.output


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o640
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_put_and_get_archive(client):
    for running in (False, True):
        if running:
            ctr = track(client, client.containers.run("busybox", ["sleep", "60"], detach=True))
        else:
            ctr = track(client, client.containers.create("busybox", ["true"]))
        assert ctr.put_archive("/tmp", _tar({"d/f.txt": b"payload", "top": b"t"}))
        stream, stat = ctr.get_archive("/tmp/d")
        assert stat["name"] == "d" and stat["mode"] & (1 << 31)  # a directory
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tf:
            assert tf.extractfile("d/f.txt").read() == b"payload"
            assert tf.getmember("d/f.txt").mode & 0o777 == 0o640
        with pytest.raises(NotFound):
            ctr.get_archive("/no/such/path")
        with pytest.raises(NotFound):
            ctr.put_archive("/no/such/dir", _tar({"x": b"x"}))


def test_images_list_get_tag_remove(client):
    img = client.images.get("busybox")
    assert "busybox:latest" in img.tags
    repo = uid("pyimg")
    assert img.tag(repo, "v1")
    try:
        assert client.images.get(f"{repo}:v1").id == img.id
        assert [i.id for i in client.images.list(name=repo)] == [img.id]
        assert [i["RepoTags"] for i in client.api.images(name=repo)] == [[f"{repo}:v1"]]
        assert img.id in [i.id for i in client.images.list()]
    finally:
        client.images.remove(f"{repo}:v1")
    with pytest.raises(ImageNotFound):
        client.images.get(f"{repo}:v1")
    with pytest.raises(ImageNotFound):
        client.images.get("no-such-image-xyz")
    # busybox itself is in use by containers of other tests or not: removing it by id
    # without force is refused while a container (even a stopped one) uses it
    ctr = track(client, client.containers.create("busybox", ["true"]))
    with pytest.raises(APIError) as exc:
        client.images.remove(img.id)
    assert exc.value.status_code == 409
    assert ctr.image.id == img.id


def test_stats(client):
    ctr = track(client, client.containers.run("busybox", ["sleep", "60"], detach=True,
                                              mem_limit="48m"))
    st = ctr.stats(stream=False)  # two samples a second apart: precpu is filled
    assert st["id"] == ctr.id and st["name"] == ctr.attrs["Name"]
    assert st["memory_stats"]["limit"] == 48 << 20
    assert st["memory_stats"]["usage"] > 0
    assert st["pids_stats"]["current"] == 1
    assert st["precpu_stats"]["system_cpu_usage"] < st["cpu_stats"]["system_cpu_usage"]
    one = ctr.stats(stream=False, one_shot=True)
    assert one["cpu_stats"]["online_cpus"] >= 1
    assert one["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    first = next(ctr.stats(decode=True))  # the stream's first object
    assert first["memory_stats"]["limit"] == 48 << 20


def test_list_filters(client, tmp_path):
    tag = uid("f")
    first, second, third = (
        track(client, client.containers.create(
            "busybox", ["true"], name=f"{tag}-{i}", labels={"f": tag},
            volumes={str(tmp_path): {"bind": f"/mnt/{i}", "mode": "rw"}} if i == 1 else None))
        for i in range(3))

    def names(**filters):
        return sorted(c.name for c in client.containers.list(
            all=True, filters={"label": f"f={tag}", **filters}))

    assert names(since=first.id) == [second.name, third.name]
    assert names(before=third.name) == [first.name, second.name]
    assert names(since=first.id, before=third.id) == [second.name]
    assert names(volume="/mnt/1") == [second.name]
    assert names(volume=str(tmp_path)) == [second.name]
    assert names(name=f"^/?{tag}-2$") == [third.name]
    with pytest.raises(APIError) as exc:
        client.containers.list(all=True, filters={"name": "("})
    assert exc.value.status_code == 400
    with pytest.raises(NotFound):
        client.containers.list(all=True, filters={"since": "no-such-container-xyz"})


def test_containers_prune(client):
    keep = track(client, client.containers.run("busybox", ["sleep", "60"], detach=True))
    gone = track(client, client.containers.create("busybox", ["true"], labels={"p": uid()}))
    res = client.containers.prune(filters={"label": f"p={gone.labels['p']}"})
    assert res["ContainersDeleted"] == [gone.id]
    with pytest.raises(NotFound):
        client.containers.get(gone.id)
    keep.reload()
    assert keep.status == "running"


def test_attach_socket(client):
    ctr = track(client, client.containers.create(
        "busybox", ["sh", "-c", "read line; echo got:$line"], stdin_open=True))
    sock = client.api.attach_socket(ctr.id, params={"stdin": 1, "stdout": 1, "stream": 1})
    raw = sock._sock
    raw.settimeout(10)
    ctr.start()
    raw.sendall(b"ping\n")
    data = b""
    deadline = time.monotonic() + 10
    while b"got:ping" not in data and time.monotonic() < deadline:
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    # not a TTY: stdout comes in stdcopy frames (stream 1, big-endian length)
    assert data.startswith(b"\x01\x00\x00\x00") and b"got:ping\n" in data
    assert ctr.wait(timeout=10)["StatusCode"] == 0


def test_events_window(client):
    since = time.time()
    ctr = client.containers.run("busybox", ["true"], detach=True, name=uid())
    ctr.wait(timeout=10)
    ctr.remove()
    time.sleep(0.1)
    until = time.time()
    events = list(client.events(since=since, until=until, decode=True,
                                filters={"container": ctr.id}))
    actions = [e["Action"] for e in events if e["Type"] == "container"]
    assert [a for a in actions if a in ("create", "start", "die", "destroy")] == \
        ["create", "start", "die", "destroy"]
    # the image filter takes container events by the image they were made from
    by_image = list(client.events(since=since, until=until, decode=True,
                                  filters={"image": "busybox", "event": "destroy"}))
    assert ctr.id in [e["Actor"]["ID"] for e in by_image]
    die = next(e for e in events if e["Action"] == "die")
    assert die["Actor"]["ID"] == ctr.id and die["Actor"]["Attributes"]["exitCode"] == "0"
    assert since - 1 <= die["time"] <= until + 1


def test_errors(client, engine_daemon):
    with pytest.raises(APIError) as exc:
        client.containers.create("busybox", name="bad/name")
    assert exc.value.status_code == 400
    with pytest.raises(ImageNotFound):
        client.containers.create("no-such-image-xyz:1")
    name = uid()
    track(client, client.containers.create("busybox", ["true"], name=name))
    with pytest.raises(APIError) as exc:
        client.containers.create("busybox", name=name)
    assert exc.value.status_code == 409 and "already in use" in str(exc.value)
    with pytest.raises(NotFound):
        client.containers.get("no-such-container-xyz")
    with pytest.raises(APIError) as exc:
        client.api.wait(name, condition="bogus")
    assert exc.value.status_code == 400 and "invalid condition" in str(exc.value)
    with pytest.raises(APIError) as exc:
        client.containers.list(filters={"status": "bogus"})
    assert exc.value.status_code == 400
    assert name in [c.name for c in client.containers.list(all=True,
                                                           filters={"status": "created"})]
    assert engine_daemon.request("POST", "/containers/create", b'{"Image": ')[0] == 400
