"""The hand-written API client against a fake daemon on a unix socket."""
from __future__ import annotations

import io
import json
import socket

import pytest
from cli_fakedaemon import Reply, attach_script, error, frame, start_daemon, stop_daemon
from engine.sdk.client import (
    APIClient,
    APIError,
    ConnectError,
    HostError,
    demux,
    encode_params,
    resolve_host,
)


@pytest.fixture
def daemon():
    d = start_daemon()
    yield d
    stop_daemon(d)


@pytest.fixture
def api(daemon):
    with APIClient(daemon.host, timeout=10) as client:
        yield client


def test_host_resolution(monkeypatch):
    monkeypatch.delenv("ENGINE_HOST", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert resolve_host() == "unix:///run/engine/engine.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/docker.sock")
    assert resolve_host() == "unix:///tmp/docker.sock"
    monkeypatch.setenv("ENGINE_HOST", "unix:///tmp/engine.sock")
    assert resolve_host() == "unix:///tmp/engine.sock"
    assert resolve_host("unix:///x.sock") == "unix:///x.sock"
    assert resolve_host("/abs.sock") == "unix:///abs.sock"


def test_tcp_without_tls_is_refused():
    with pytest.raises(HostError, match="TLS"):
        APIClient("tcp://127.0.0.1:2375")
    with pytest.raises(HostError, match="only unix"):
        APIClient("ssh://host")


def test_encode_params():
    assert encode_params({"all": True, "size": False, "x": None, "name": "a b"}) == \
        "all=1&size=0&name=a%20b"
    assert encode_params({"filters": {"status": {"running": True}}}) == \
        "filters=%7B%22status%22%3A%7B%22running%22%3Atrue%7D%7D"
    assert encode_params([("names", "a"), ("names", "b:1")]) == "names=a&names=b%3A1"


def test_get_json_and_version_prefix(daemon, api):
    daemon.route("GET", "/info", Reply(200, {"ID": "abc", "NCPU": 2}))
    resp = api.get("/info")
    assert resp.status == 200 and resp.json() == {"ID": "abc", "NCPU": 2}
    assert resp.headers["content-type"] == "application/json"
    assert daemon.requests[-1].path == "/info"


def test_post_json_body(daemon, api):
    api.post("/containers/create", {"name": "x"}, body={"Image": "busybox"})
    req = daemon.one("POST", "/containers/create")
    assert req.json() == {"Image": "busybox"}
    assert req.q("name") == "x"
    assert req.headers["Content-Type"] == "application/json"


def test_keep_alive_reuses_one_connection(daemon, api):
    daemon.route("GET", "/version", Reply(200, {"Version": "1"}))
    seen = set()
    original = api._connect

    def counting():
        sock = original()
        seen.add(id(sock))
        return sock

    api._connect = counting
    for _ in range(5):
        assert api.get("/version").json() == {"Version": "1"}
    assert len(seen) == 1


def test_error_message_from_json_body(daemon, api):
    daemon.route("GET", r"/containers/nope/json", error(404, "No such container: nope"))
    with pytest.raises(APIError) as exc:
        api.get("/containers/nope/json")
    assert exc.value.status == 404
    assert exc.value.message == "No such container: nope"
    assert str(exc.value) == "Error response from daemon: No such container: nope"
    # the connection stays usable after an error
    daemon.route("GET", "/version", Reply(200, {"Version": "1"}))
    assert api.get("/version").json()["Version"] == "1"


def test_error_with_plain_text_body(daemon, api):
    daemon.route("GET", "/boom", Reply(500, b"something broke\n"))
    with pytest.raises(APIError, match="something broke"):
        api.get("/boom")


def test_chunked_response_and_stream(daemon, api):
    daemon.route("GET", "/events", Reply(200, (b'{"a":', b'1}\n{"a":2}', b'\n{"a":3}\n')))
    assert api.get("/events").body == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert list(api.json_lines("GET", "/events")) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert b"".join(api.stream("GET", "/events")) == b'{"a":1}\n{"a":2}\n{"a":3}\n'


def test_json_lines_without_newlines(daemon, api):
    daemon.route("POST", "/images/load", Reply(200, (b'{"stream":"a"}{"stream"', b':"b"}',)))
    assert [m["stream"] for m in api.json_lines("POST", "/images/load")] == ["a", "b"]


def test_json_lines_multibyte_split_across_chunks(daemon, api):
    text = '{"status":"café ☕"}\n'.encode()
    daemon.route("GET", "/events", Reply(200, (text[:15], text[15:17], text[17:])))
    assert list(api.json_lines("GET", "/events")) == [{"status": "café ☕"}]


def test_json_lines_malformed(daemon, api):
    daemon.route("GET", "/events", Reply(200, (b'{"a":1}\nnot json\n',)))
    with pytest.raises(ConnectError, match="malformed JSON"):
        list(api.json_lines("GET", "/events"))


def test_file_body_is_sent_chunked(daemon, api):
    daemon.route("POST", "/images/load", Reply(200, {}))
    payload = b"x" * 200_000
    api.post("/images/load", body=io.BytesIO(payload),
             headers={"Content-Type": "application/x-tar"})
    req = daemon.one("POST", "/images/load")
    assert req.headers.get("Transfer-Encoding") == "chunked"
    assert req.body == payload


def test_head_has_no_body(daemon, api):
    daemon.route("HEAD", r"/containers/x/archive",
                 Reply(200, b"", {"X-Docker-Container-Path-Stat": "e30="}))
    resp = api.head("/containers/x/archive", {"path": "/etc"})
    assert resp.body == b"" and resp.headers["x-docker-container-path-stat"] == "e30="


def test_hijack_is_bidirectional(daemon, api):
    daemon.route("POST", r"/containers/x/attach",
                 Reply(hijack=attach_script([(2, b"bye\n")], echo_stdin=True)))
    sock = api.hijack("POST", "/containers/x/attach", {"stream": 1, "stdin": 1})
    sock.sendall(b"hello\n")
    sock.close_write()
    frames = list(demux(sock))
    sock.close()
    assert frames == [(1, b"hello\n"), (2, b"bye\n")]
    req = daemon.one("POST", "/containers/x/attach")
    assert req.headers["Connection"] == "Upgrade" and req.headers["Upgrade"] == "tcp"


def test_hijack_error_status_raises(daemon, api):
    daemon.route("POST", r"/containers/x/attach", error(409, "container is not running"))
    with pytest.raises(APIError, match="not running"):
        api.hijack("POST", "/containers/x/attach")


def test_demux_frames_from_reader():
    data = frame(1, b"out") + frame(2, b"err") + frame(1, b"")
    assert list(demux(io.BytesIO(data))) == [(1, b"out"), (2, b"err"), (1, b"")]
    with pytest.raises(ConnectError):
        list(demux(io.BytesIO(frame(1, b"abcdef")[:-2])))


def test_connect_error_names_the_socket(tmp_path):
    api = APIClient(f"unix://{tmp_path}/missing.sock")
    with pytest.raises(ConnectError, match="Cannot connect to the engine daemon"):
        api.get("/_ping")


def test_server_closing_idle_connection_is_retried(daemon, api):
    daemon.route("GET", "/version", Reply(200, {"Version": "1"}))
    api.get("/version")
    assert api._idle is not None
    api._idle.shutdown(socket.SHUT_RDWR)  # as if the daemon had dropped it
    assert api.get("/version").json() == {"Version": "1"}


def test_send_then_read_later(daemon, api):
    import threading

    release = threading.Event()

    def slow(req, m):
        release.wait(10)
        return Reply(200, {"StatusCode": 0})

    daemon.route("POST", r"/containers/x/wait", slow)
    pending = api.send("POST", "/containers/x/wait", {"condition": "next-exit"})
    assert pending.wait_head(0.05) is False  # the daemon holds everything back
    release.set()
    assert pending.wait_head(5) is True
    assert json.loads(pending.read()) == {"StatusCode": 0}
    daemon.route("POST", r"/containers/y/wait", error(404, "No such container: y"))
    with pytest.raises(APIError, match="No such container"):
        api.send("POST", "/containers/y/wait").read()
