"""A fake Docker Engine API daemon for the client and CLI unit tests.

A threaded HTTP/1.1 server bound to a unix socket in a temporary directory. It records
every request (method, path without the version prefix, query, headers, body) and
answers from a table of canned routes. A route handler may also take over the socket
(``101 UPGRADED``) to play the part of a hijacked attach or exec stream.

It is deliberately independent of the client under test: it is built on the standard
library's ``http.server``, so a bug in our hand-written HTTP client cannot hide behind
the same bug in the server.
"""
from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Reply:
    """A canned answer. ``body`` may be a dict/list (sent as JSON), bytes or a list of
    byte chunks (sent chunked). ``hijack`` takes the raw socket after ``101``."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    hijack: Callable[[socket.socket, Request], None] | None = None


Handler = Callable[[Request, re.Match[str]], Reply]


def error(status: int, message: str) -> Reply:
    return Reply(status, {"message": message})


class FakeDaemon:
    """Routes are matched in reverse order of registration, so a test can override a
    default route by adding its own."""

    def __init__(self, sock_path: str) -> None:
        self.sock_path = sock_path
        self.requests: list[Request] = []
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        ping = {"API-Version": "1.41", "OSType": "linux"}
        self.route("GET", "/_ping", lambda r, m: Reply(200, b"OK", ping))
        self.route("HEAD", "/_ping", lambda r, m: Reply(200, b"", ping))
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    @property
    def host(self) -> str:
        return "unix://" + self.sock_path

    def route(self, method: str, pattern: str, handler: Handler | Reply) -> None:
        if isinstance(handler, Reply):
            reply = handler
            handler = lambda r, m: reply  # noqa: E731
        self.routes.insert(0, (method, re.compile(pattern + "$"), handler))

    def find(self, method: str, path: str) -> list[Request]:
        """Recorded requests with that method whose path matches the regex."""
        rx = re.compile(path + "$")
        return [r for r in self.requests if r.method == method and rx.match(r.path)]

    def one(self, method: str, path: str) -> Request:
        found = self.find(method, path)
        assert len(found) == 1, (method, path, [(r.method, r.path) for r in self.requests])
        return found[0]

    def dispatch(self, req: Request) -> Reply:
        for method, rx, handler in self.routes:
            m = rx.match(req.path)
            if m and method == req.method:
                return handler(req, m)
        return error(404, f"page not found: {req.method} {req.path}")

    def start(self) -> FakeDaemon:
        daemon = self

        class _Handler(_RequestHandler):
            owner = daemon

        self._server = _Server(self.sock_path, _Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client that hung up is fine


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeDaemon

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def address_string(self) -> str:
        return "unix"

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = re.sub(r"^/v\d+\.\d+", "", url.path)
        req = Request(self.command, path, parse_qs(url.query, keep_blank_values=True),
                      {k: v for k, v in self.headers.items()}, self._read_body())
        self.owner.requests.append(req)
        reply = self.owner.dispatch(req)
        if reply.hijack is not None:
            self.send_response(101, "UPGRADED")
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
            self.end_headers()
            self.wfile.flush()
            reply.hijack(self.connection, req)
            self.close_connection = True
            return
        body = reply.body
        headers = dict(reply.headers)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(reply.status)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(body, tuple):  # chunked stream
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in body:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def frame(stream: int, data: bytes) -> bytes:
    """One stdcopy frame, as the daemon multiplexes non-TTY output."""
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


# -- pytest helpers ----------------------------------------------------------------------

CID = "c0ffee" + "0" * 52 + "123456"


def start_daemon() -> FakeDaemon:
    """A fake daemon on a short socket path (unix socket paths are limited to 108
    bytes, pytest's tmp_path may be longer), with the routes every CLI test needs."""
    import tempfile

    d = FakeDaemon(os.path.join(tempfile.mkdtemp(prefix="engcli"), "d.sock"))
    d.route("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    d.route("POST", r"/containers/[^/]+/start", Reply(204))
    d.route("POST", r"/containers/[^/]+/wait", Reply(200, {"StatusCode": 0, "Error": None}))
    return d.start()


def stop_daemon(d: FakeDaemon) -> None:
    d.stop()
    os.rmdir(os.path.dirname(d.sock_path))


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def invoke(d: FakeDaemon, *argv: str, stdin: bytes = b"") -> Result:
    """Run ``engine -H <fake> argv...`` in this process and capture its output.

    stdin is a real pipe so the attach loop can ``select`` on it."""
    import io

    from engine.sdk.cli import Cli, main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    rfd, wfd = os.pipe()

    def feed() -> None:
        view = memoryview(stdin)
        try:
            while view:
                view = view[os.write(wfd, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(wfd)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with os.fdopen(rfd, "r") as stdin_file:
        cli = Cli(host=d.host, out=out, err=err, stdin=stdin_file)
        code = main(list(argv), cli=cli)
    writer.join(5)
    return Result(code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode())


def attach_script(frames: list[tuple[int, bytes]], echo_stdin: bool = False,
                  raw: bool = False) -> Callable[[socket.socket, Request], None]:
    """A hijack handler: optionally read stdin until the client half-closes and echo it
    back on stdout, then send ``frames`` (stdcopy-framed unless ``raw``) and close."""

    def run(sock: socket.socket, req: Request) -> None:
        if echo_stdin:
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.sendall(data if raw else frame(1, data))
        for stream, payload in frames:
            sock.sendall(payload if raw else frame(stream, payload))
        sock.shutdown(socket.SHUT_RDWR)

    return run
