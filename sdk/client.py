"""A small, fast client for the engine (Docker Engine) API over a unix socket.

This module sits on the CLI's hot path, so it imports only ``socket``, ``json`` and
``os`` at module level: no ``http.client`` (which drags in the ``email`` package), no
``asyncio``. It speaks just enough HTTP/1.1 for the Docker API:

* requests with a JSON, bytes or streamed (chunked) body;
* responses framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the end of
  the connection;
* keep-alive: one idle connection is kept and reused;
* connection hijacking for attach and exec (``Connection: Upgrade``, ``Upgrade: tcp``,
  answered by ``101``), after which the socket is a raw bidirectional stream;
* stdcopy demultiplexing of non-TTY output (:func:`demux`).

Example::

    api = APIClient()
    cid = api.post("/containers/create", body={"Image": "busybox"}).json()["Id"]
    for line in api.json_lines("POST", "/images/create", params={"fromImage": "busybox"}):
        print(line.get("status"))
"""
from __future__ import annotations

import json
import os
import socket

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2 ms at start-up; annotations stay strings
    from collections.abc import Iterable, Iterator, Mapping
    from typing import IO, Any

    Params = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
    Body = Mapping[str, Any] | list | bytes | str | IO[bytes] | Iterable[bytes] | None

DEFAULT_HOST = "unix:///run/engine/engine.sock"
USER_AGENT = "engine-cli/0.1"
CHUNK = 64 * 1024


class APIError(Exception):
    """A non-2xx answer from the daemon. ``message`` is the daemon's own text (the
    ``message`` field of its JSON error body when there is one)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"Error response from daemon: {self.message}"

    @property
    def not_found(self) -> bool:
        return self.status == 404


class ConnectError(Exception):
    """The daemon cannot be reached (socket missing, refused, or the host is refused)."""


class HostError(ValueError):
    """The host string names a transport this client does not speak."""


def resolve_host(host: str | None = None) -> str:
    """Return the host to use: the argument, else ``$ENGINE_HOST``, else
    ``$DOCKER_HOST``, else the default socket. Only ``unix://`` hosts (or a bare
    absolute socket path) are accepted."""
    host = host or os.environ.get("ENGINE_HOST") or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    if host.startswith("/"):
        host = "unix://" + host
    if host.startswith("unix://"):
        if len(host) == len("unix://"):
            raise HostError(f"invalid host {host!r}: the socket path is empty")
        return host
    if host.startswith("tcp://") or host.startswith("http://"):
        raise HostError(
            f"refusing to connect to {host}: plain TCP exposes the engine (root) without "
            "TLS, and TLS is not supported by this client; use a unix:// socket")
    raise HostError(f"unsupported host {host!r}: only unix:// sockets are supported")


def encode_params(params: Params) -> str:
    """Encode query parameters the way the Docker API expects them: booleans as
    ``1``/``0``, dicts and lists (filters) as JSON, ``None`` skipped. A sequence of
    pairs allows repeated keys."""
    if not params:
        return ""
    from urllib.parse import quote  # already imported by site on this interpreter

    items = params.items() if hasattr(params, "items") else params
    parts = []
    for key, value in items:
        if value is None:
            continue
        if value is True or value is False:
            value = "1" if value else "0"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"))
        parts.append(f"{quote(str(key), safe='')}={quote(str(value), safe='')}")
    return "&".join(parts)


class _Reader:
    """Buffered reads from a socket that hands back whatever it has over-read, so a
    hijacked stream loses no byte that arrived together with the response headers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self, limit: int = 65536) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > limit:
                raise ConnectError("malformed response from the daemon: line too long")
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectError("the daemon closed the connection mid-response")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_some(self, n: int = CHUNK) -> bytes:
        """Up to ``n`` bytes: from the buffer if it has any, else one ``recv``."""
        if not self.buf:
            return self.sock.recv(n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


class Response:
    """A daemon answer. Headers are keyed in lower case. For a streamed response the
    body is read lazily with :meth:`iter_chunks`; otherwise ``body`` holds it all."""

    def __init__(self, status: int, reason: str, headers: dict[str, str],
                 reader: _Reader, method: str) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = b""
        self._reader: _Reader | None = reader
        self._method = method
        self.reusable = headers.get("connection", "").lower() != "close"
        self.close_after = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def _has_body(self) -> bool:
        return not (self._method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200)

    def iter_chunks(self) -> Iterator[bytes]:
        """Yield the body as it arrives (chunk boundaries are not preserved). A
        response from :meth:`APIClient.open` closes its connection at the end."""
        reader = self._reader
        try:
            yield from self._iter_body()
        finally:
            if self.close_after and reader is not None:
                reader.sock.close()

    def _iter_body(self) -> Iterator[bytes]:
        reader, self._reader = self._reader, None
        if reader is None or not self._has_body():
            return
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = reader.readline()
                if not line:
                    raise ConnectError("the daemon closed the connection mid-response")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while reader.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = reader.read_some(min(remaining, CHUNK))
                    if not data:
                        raise ConnectError("the daemon closed the connection mid-response")
                    remaining -= len(data)
                    yield data
                reader.readline()
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining:
                data = reader.read_some(min(remaining, CHUNK))
                if not data:
                    raise ConnectError("the daemon closed the connection mid-response")
                remaining -= len(data)
                yield data
        else:
            self.reusable = False
            while True:
                data = reader.read_some()
                if not data:
                    return
                yield data

    def read(self) -> bytes:
        if self._reader is not None:
            self.body = b"".join(self.iter_chunks())
        return self.body

    def close(self) -> None:
        """Abandon the unread body of a response from :meth:`APIClient.open`."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.sock.close()


def _error_message(body: bytes, status: int) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return doc["message"]
    text = body.decode("utf-8", "replace").strip()
    return text or f"HTTP {status}"


_DECODER = json.JSONDecoder()


def _json_values(data: bytes) -> Iterator[Any]:
    """The JSON values in ``data``, which may be several written back to back."""
    text = data.decode("utf-8", "replace")
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except ValueError as e:
            raise ConnectError(f"malformed JSON in the daemon's stream: {e}") from None
        yield value


class PendingResponse:
    """A request already sent on its own connection; the answer is read on demand."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        self.sock = sock
        self.method = method
        self._reader = _Reader(sock)

    def wait_head(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the status line and headers, without
        consuming them. True when they are in (or the connection ended)."""
        buf = self._reader.buf
        self.sock.settimeout(timeout)
        try:
            while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
                if not self._reader._fill():
                    break
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(None)
        return True

    def response(self) -> Response:
        """Wait for the status and headers. Non-2xx raises :class:`APIError`."""
        try:
            resp = APIClient._read_head(self._reader, self.method)
        except BaseException:
            self.sock.close()
            raise
        if not resp.ok:
            resp.read()
            self.sock.close()
            raise APIError(resp.status, _error_message(resp.body, resp.status))
        resp.close_after = True
        return resp

    def read(self) -> bytes:
        """Wait for the whole answer and return its body."""
        return self.response().read()

    def close(self) -> None:
        """Abandon the request."""
        self.sock.close()


class HijackedSocket:
    """The raw stream of an attach or exec after the daemon answered ``101``.

    Bytes the daemon sent together with its response headers are returned first by
    :meth:`recv`. ``close_write`` half-closes the connection, telling the daemon that
    stdin has ended."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self._leftover = leftover

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        """True when bytes are buffered already (``select`` would not see them)."""
        return bool(self._leftover)

    def recv(self, n: int = CHUNK) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:n], self._leftover[n:]
            return data
        return self.sock.recv(n)

    def read(self, n: int = CHUNK) -> bytes:
        return self.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HijackedSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class APIClient:
    """Client for the Docker Engine API as served by ``engined``.

    ``host`` defaults to ``$ENGINE_HOST``, then ``$DOCKER_HOST``, then
    ``unix:///run/engine/engine.sock``. ``timeout`` (seconds) applies to connecting and
    to each socket read; ``None`` waits forever (needed for ``wait`` and ``logs -f``).
    """

    def __init__(self, host: str | None = None, version: str = "1.41",
                 timeout: float | None = None) -> None:
        self.host = resolve_host(host)
        self.socket_path = self.host[len("unix://"):]
        self.version = version
        self.timeout = timeout
        self._idle: socket.socket | None = None
        self._idle_reader: _Reader | None = None

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            raise ConnectError(
                f"Cannot connect to the engine daemon at {self.host}. "
                f"Is the daemon running? ({e.strerror or e})") from None
        return sock

    def close(self) -> None:
        if self._idle is not None:
            self._idle.close()
            self._idle = self._idle_reader = None

    def __enter__(self) -> APIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str, params: Params = None) -> str:
        """The request target: version prefix, path and encoded query."""
        prefix = f"/v{self.version}" if self.version else ""
        query = encode_params(params)
        return prefix + path + ("?" + query if query else "")

    # -- requests ------------------------------------------------------------------

    def _send(self, sock: socket.socket, method: str, target: str, body: Body,
              headers: Mapping[str, str] | None, extra: Mapping[str, str]) -> None:
        hdrs = {"Host": "engine", "User-Agent": USER_AGENT}
        hdrs.update(extra)
        data: bytes | None = None
        stream: Iterable[bytes] | None = None
        if body is None:
            if method in ("POST", "PUT"):
                data = b""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode()
        elif isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        elif hasattr(body, "read"):
            reader = body
            stream = iter(lambda: reader.read(CHUNK), b"")  # type: ignore[union-attr]
        else:
            stream = body  # an iterable of byte chunks
        if headers:
            hdrs.update(headers)
        if data is not None:
            hdrs["Content-Length"] = str(len(data))
        elif stream is not None:
            hdrs["Transfer-Encoding"] = "chunked"
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        if data is not None and len(data) < CHUNK:
            sock.sendall(head.encode("latin-1") + data)
            return
        sock.sendall(head.encode("latin-1"))
        if data is not None:
            sock.sendall(data)
        elif stream is not None:
            for chunk in stream:
                if chunk:
                    sock.sendall(b"%x\r\n" % len(chunk) + bytes(chunk) + b"\r\n")
            sock.sendall(b"0\r\n\r\n")

    @staticmethod
    def _read_head(reader: _Reader, method: str) -> Response:
        line = reader.readline()
        if not line:
            raise ConnectError("the daemon closed the connection without answering")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectError(f"malformed response from the daemon: {line[:80]!r}")
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers: dict[str, str] = {}
        while True:
            hline = reader.readline()
            if hline in (b"\r\n", b"\n", b""):
                break
            key, _, value = hline.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        return Response(status, reason, headers, reader, method)

    def send(self, method: str, path: str, params: Params = None, body: Body = None,
             headers: Mapping[str, str] | None = None) -> PendingResponse:
        """Send a request on a fresh connection without waiting for the answer.

        For long polls that must be in place before something else happens: ``run``
        sends ``POST /containers/{id}/wait`` before it starts the container. Docker's
        daemon answers the headers at once (so the client knows the wait is
        registered, see :meth:`PendingResponse.wait_head`) and the body at exit."""
        sock = self._connect()
        try:
            self._send(sock, method, self.url(path, params), body, headers,
                       {"Connection": "close"})
        except BaseException:
            sock.close()
            raise
        return PendingResponse(sock, method)

    def open(self, method: str, path: str, params: Params = None, body: Body = None,
             headers: Mapping[str, str] | None = None) -> Response:
        """Send a request on a fresh connection and return the response with its body
        unread (for streams). Non-2xx raises :class:`APIError`. The connection is
        closed when the body is exhausted or the response is closed."""
        return self.send(method, path, params, body, headers).response()

    def request(self, method: str, path: str, params: Params = None, body: Body = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """Send a request and read the whole response, reusing an idle keep-alive
        connection when there is one. Non-2xx raises :class:`APIError`."""
        target = self.url(path, params)
        resp: Response | None = None
        if self._idle is not None:
            sock, reader = self._idle, self._idle_reader
            self._idle = self._idle_reader = None
            try:
                self._send(sock, method, target, body, headers, {})
                resp = self._read_head(reader, method)  # type: ignore[arg-type]
            except (OSError, ConnectError):
                sock.close()
                if hasattr(body, "read") or (body is not None and not isinstance(
                        body, (bytes, bytearray, str, dict, list))):
                    raise  # a streamed body cannot be sent twice
                resp = None
        if resp is None:
            sock = self._connect()
            reader = _Reader(sock)
            try:
                self._send(sock, method, target, body, headers, {})
                resp = self._read_head(reader, method)
            except BaseException:
                sock.close()
                raise
        try:
            resp.read()
        except BaseException:
            sock.close()
            raise
        if resp.reusable:
            self._idle, self._idle_reader = sock, reader
        else:
            sock.close()
        if not resp.ok:
            raise APIError(resp.status, _error_message(resp.body, resp.status))
        return resp

    def get(self, path: str, params: Params = None, body: Body = None,
            headers: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", path, params, body, headers)

    def post(self, path: str, params: Params = None, body: Body = None,
             headers: Mapping[str, str] | None = None) -> Response:
        return self.request("POST", path, params, body, headers)

    def put(self, path: str, params: Params = None, body: Body = None,
            headers: Mapping[str, str] | None = None) -> Response:
        return self.request("PUT", path, params, body, headers)

    def delete(self, path: str, params: Params = None, body: Body = None,
               headers: Mapping[str, str] | None = None) -> Response:
        return self.request("DELETE", path, params, body, headers)

    def head(self, path: str, params: Params = None, body: Body = None,
             headers: Mapping[str, str] | None = None) -> Response:
        return self.request("HEAD", path, params, body, headers)

    def stream(self, method: str, path: str, params: Params = None, body: Body = None,
               headers: Mapping[str, str] | None = None) -> Iterator[bytes]:
        """Yield the response body in chunks as the daemon sends them."""
        resp = self.open(method, path, params, body, headers)
        try:
            yield from resp.iter_chunks()
        finally:
            resp.close()

    def json_lines(self, method: str, path: str, params: Params = None, body: Body = None,
                   headers: Mapping[str, str] | None = None) -> Iterator[Any]:
        """Yield the JSON values of a streamed response (pull progress, events,
        stats, load output) as each line completes. A line may hold several values
        back to back; a multi-byte character split across chunks is reassembled."""
        buf = b""
        for chunk in self.stream(method, path, params, body, headers):
            buf += chunk
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + 1:]
                yield from _json_values(line)
        yield from _json_values(buf)

    def hijack(self, method: str, path: str, params: Params = None,
               body: Body = None) -> HijackedSocket:
        """Send an upgrade request (attach, exec start) and return the raw stream.

        The daemon answers ``101 UPGRADED`` (or ``200`` on old daemons); any other
        status raises :class:`APIError`."""
        sock = self._connect()
        try:
            self._send(sock, method, self.url(path, params), body, None,
                       {"Connection": "Upgrade", "Upgrade": "tcp"})
            reader = _Reader(sock)
            resp = self._read_head(reader, method)
            if resp.status not in (101, 200):
                resp.read()
                raise APIError(resp.status, _error_message(resp.body, resp.status))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return HijackedSocket(sock, bytes(reader.buf))

    def ping(self) -> Response:
        return self.request("GET", "/_ping")


def demux(src: Any) -> Iterator[tuple[int, bytes]]:
    """Split a stdcopy-multiplexed stream into ``(stream, payload)`` pairs.

    Each frame is an 8-byte header — stream number (0 stdin, 1 stdout, 2 stderr,
    3 system error), three zero bytes, big-endian uint32 payload size — then the
    payload. ``src`` is anything with ``recv(n)`` (a socket) or ``read(n)`` (a file,
    a :class:`HijackedSocket`); the iterator ends at end of stream."""
    read = getattr(src, "recv", None) or src.read
    buf = bytearray()

    def need(n: int) -> bool:
        while len(buf) < n:
            data = read(max(CHUNK, n - len(buf)))
            if not data:
                return False
            buf.extend(data)
        return True

    while True:
        if not need(8):
            if buf:
                raise ConnectError("truncated stream frame header")
            return
        stream = buf[0]
        size = int.from_bytes(buf[4:8], "big")
        if not need(8 + size):
            raise ConnectError("truncated stream frame")
        payload = bytes(buf[8:8 + size])
        del buf[:8 + size]
        yield stream, payload


__all__ = ["APIClient", "APIError", "ConnectError", "HijackedSocket", "HostError",
           "PendingResponse", "Response", "demux", "encode_params", "resolve_host"]
